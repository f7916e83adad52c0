"""medical_fine_tuning.py run as a user runs it: errors first, then real end-to-end runs on the embedded model."""
import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from conftest import ROOT, SHARED_SAMPLE, run_script

FAKE_TOKEN = "hf_FAKEtokenThatMustNeverBeWritten0123456789"


def test_unknown_setting_fails_at_once_with_suggestions():
    result = run_script("--MAX_STEP=5", timeout=120)
    assert result.returncode != 0
    assert "error: Unknown setting --MAX_STEP. Did you mean --MAX_STEPS" in result.stdout
    assert "Traceback" not in result.stdout


def test_bad_data_is_reported_before_any_model_loads(tmp_path):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"Question": "q", "Complex_CoT": "c", "Response": "r"}\n{"Question": oops}\n')
    result = run_script("--BACKEND=transformers", "--MODEL_NAME=embedded", f"--DATASET={bad}", timeout=300)
    assert result.returncode != 0
    assert f"error: {bad}:2: not valid JSON" in result.stdout
    assert "[model]" not in result.stdout and "Traceback" not in result.stdout


def lora_tensors(adapter_dir):
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    assert tensors, "the adapter holds no tensors"
    return tensors


def check_run_folder(out, eval_samples):
    results = json.loads((out / "results.json").read_text())
    metrics = results["metrics"]
    for name in ("rouge_l", "format_compliance", "eval_loss"):
        assert isinstance(metrics[name], float), name
    assert 0.0 <= metrics["rouge_l"] <= 1.0 and 0.0 <= metrics["format_compliance"] <= 1.0
    assert {"settings", "versions", "timings_s"} <= set(results)
    assert results["versions"]["trl"] and results["timings_s"]["train"] > 0
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
        p.name for p in (out / "adapter").iterdir()}
    lines = (out / "eval_samples.jsonl").read_text().splitlines()
    assert len(lines) == eval_samples and {"question", "answer", "status", "reference"} <= set(json.loads(lines[0]))
    return results


@pytest.mark.e2e
def test_unsloth_backend_trains_on_cpu(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = run_script(f"--MODEL_NAME={tiny_model_dir}", "--BACKEND=unsloth", "--MAX_STEPS=3", "--BATCH_SIZE=2",
                        "--GRAD_ACCUM=1", "--MAX_SEQ_LENGTH=256", "--VAL_SIZE=4", "--EVAL_STEPS=2", "--SAVE_STEPS=2",
                        "--EVAL_SAMPLES=2", "--MAX_NEW_TOKENS=8", "--REPORT_TO=none", f"--OUTPUT_DIR={out}",
                        "--DATASET=medreason/demo_data/medical_demo.jsonl", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "backend: unsloth" in result.stdout and "Unsloth" in result.stdout
    check_run_folder(out, eval_samples=2)
    # LoRA B matrices start at zero: non-zero values prove the optimizer updated the adapter.
    lora_b = {k: v for k, v in lora_tensors(out / "adapter").items() if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 16


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The default command (the CPU demo), shortened to a few steps; a fake HF_TOKEN in the environment."""
    out = tmp_path_factory.mktemp("demo") / "run"
    result = run_script(f"--OUTPUT_DIR={out}", "--MAX_STEPS=4", "--EVAL_STEPS=2", "--EVAL_SAMPLES=2",
                        "--MAX_NEW_TOKENS=48", env={"HF_TOKEN": FAKE_TOKEN}, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:]
    return out, result.stdout


@pytest.mark.e2e
def test_demo_runs_end_to_end_and_writes_no_secret(demo_run):
    out, stdout = demo_run
    assert "DEMO MODE" in stdout and "[MASKED: not in the loss]" in stdout
    results = check_run_folder(out, eval_samples=2)
    assert results["settings"]["MODEL_NAME"] == "embedded" and results["settings"]["MAX_STEPS"] == 4
    assert list((out / "wandb").glob("offline-run-*")), "W&B should write offline run files without a key"
    assert (out / "checkpoints" / "checkpoint-4").is_dir()
    assert (out / "evaluation" / "report.md").is_file() and results["evaluation"]["base"]["perplexity"]["n"] == 2
    # The demo's dry-run publish: the exact upload folder, with a card holding this run's real numbers.
    from huggingface_hub import ModelCard
    upload = out / "hub_upload"
    assert {p.name for p in upload.iterdir()} == {p.name for p in (out / "adapter").iterdir()} | {"README.md"}
    card = ModelCard.load(upload / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.license == "apache-2.0"
    tuned = results["evaluation"]["tuned"]
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        "rougeL": round(tuned["rouge_l"]["value"], 4), "perplexity": round(tuned["perplexity"]["value"], 4),
        "format_compliance": round(tuned["format_compliance"]["value"], 4)}
    assert "dry run: nothing uploaded" in stdout
    assert FAKE_TOKEN not in stdout
    for path in out.rglob("*"):
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), f"token written to {path}"


@pytest.mark.e2e
def test_inference_answers_with_the_demo_adapter_offline(demo_run, tmp_path):
    out, _ = demo_run
    info = json.loads((out / "adapter" / "training_info.json").read_text())
    assert info["model_name"] == "embedded" and info["system_prompt"]
    result = subprocess.run([sys.executable, str(ROOT / "inference.py"), "--adapter", str(out / "adapter"),
                             "--question", "What causes iron deficiency anaemia?", "--max-new-tokens", "32"],
                            cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    assert result.returncode in (0, 3), result.stdout[-2000:]  # 3: the answer is incomplete, and says so
    assert "on embedded" in result.stdout and "[status: " in result.stdout and "not medical advice" in result.stdout
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "What is gout?"}) + "\n" + json.dumps({"question": "Why?"}) + "\n")
    batch = subprocess.run([sys.executable, str(ROOT / "inference.py"), "--adapter", str(out / "adapter"),
                            "--input", str(questions), "--max-new-tokens", "16", "--max-continuations", "1"],
                           cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    rows = [json.loads(line) for line in questions.with_suffix(".answers.jsonl").read_text().splitlines()]
    assert [r["question"] for r in rows] == ["What is gout?", "Why?"]
    assert batch.returncode == (0 if all(r["status"] == "complete" for r in rows) else 3)


@pytest.mark.e2e
def test_real_rows_end_to_end_then_resume(tmp_path, real_rows):
    out = tmp_path / "real"
    common = ["--MODEL_NAME=embedded", f"--DATASET={SHARED_SAMPLE}", "--BATCH_SIZE=1", "--GRAD_ACCUM=2",
              "--VAL_SIZE=4", "--EVAL_SAMPLES=2", "--MAX_NEW_TOKENS=24", "--SAVE_STEPS=2", "--EVAL_STEPS=2",
              "--REPORT_TO=none", f"--OUTPUT_DIR={out}"]
    first = run_script(*common, "--MAX_STEPS=2", timeout=900)
    assert first.returncode == 0, first.stdout[-3000:]
    assert "DEMO MODE" not in first.stdout and f"{len(real_rows)} usable rows" in first.stdout
    check_run_folder(out, eval_samples=2)
    second = run_script(*common, "--MAX_STEPS=3", timeout=900)
    assert second.returncode == 0, second.stdout[-3000:]
    assert "resuming from" in second.stdout and "checkpoint-2" in second.stdout
    assert json.loads((out / "results.json").read_text())["settings"]["MAX_STEPS"] == 3


@pytest.mark.e2e
def test_the_full_default_demo_teaches_the_answer_form(tmp_path):
    """The demo exactly as a user runs it (about 3 minutes): the recipe of experiments/LOG.md must keep working."""
    out = tmp_path / "run"
    result = run_script(f"--OUTPUT_DIR={out}", "--REPORT_TO=none", timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:]
    evaluation = json.loads((out / "results.json").read_text())["evaluation"]
    base, tuned = evaluation["base"], evaluation["tuned"]
    assert base["format_compliance"]["value"] == 0.0  # the untrained model never writes the tags
    assert tuned["format_compliance"]["value"] >= 5 / 6, result.stdout[-3000:]  # 6 held-out questions
    assert tuned["rouge_l"]["value"] > base["rouge_l"]["value"]
    assert tuned["perplexity"]["value"] < base["perplexity"]["value"]


@pytest.mark.e2e
def test_the_web_page_answers_with_the_demo_adapter_offline(demo_run):
    """The page's handler on the adapter the demo just trained (what `python app.py --adapter ...` serves)."""
    from medreason.model import for_inference
    from medreason.serve import webchat
    from medreason.answers.prompts import DISCLAIMER
    loaded = for_inference.load(str(demo_run[0] / "adapter"))
    messages = list(webchat.make_responder(loaded, 0, 32)("What is gout?", [], 24, False, 0.6, 0.95, 1.0))[-1]
    assert messages and messages[-1].content.endswith(f"*{DISCLAIMER}*")
