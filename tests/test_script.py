"""medical_fine_tuning.py run as a user runs it: errors first, then real end-to-end runs on the embedded model."""
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import ROOT, SHARED_SAMPLE, run_script
from medreason.answers.tags import parse_answer

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


def check_metrics_match_samples(out, style):
    """results.json's figures are those of the answers in eval_samples.jsonl, recomputed here: each status is the
    style's parse of its answer, ROUGE-L (rouge-score, stemmed) of each response against its reference, format
    compliance as the share complete, and the status counts. Returns the samples."""
    from rouge_score import rouge_scorer
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    samples = [json.loads(line) for line in (out / "eval_samples.jsonl").read_text().splitlines()]
    assert samples and metrics["eval_samples"] == len(samples)
    for s in samples:  # `ended` (stopped on its own or on the budget) is not saved: one of the two parses
        parses = [parse_answer(s["answer"], style, ended=ended) for ended in (True, False)]
        assert (s["status"], s["thinking"], s["response"]) in {(p.status, p.thinking, p.response) for p in parses}
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(s["reference"], s["answer"] if s["status"] == "no_tags" else s["response"])["rougeL"].fmeasure
             for s in samples]
    assert metrics["rouge_l"] == pytest.approx(sum(rouge) / len(rouge))
    assert metrics["format_compliance"] == pytest.approx(sum(s["status"] == "complete" for s in samples) / len(samples))
    assert metrics["answer_statuses"] == dict(Counter(s["status"] for s in samples))
    return samples


def check_run_folder(out, eval_samples):
    results = json.loads((out / "results.json").read_text())
    metrics = results["metrics"]
    for name in ("rouge_l", "format_compliance", "eval_loss"):
        assert isinstance(metrics[name], float), name
    samples = check_metrics_match_samples(out, json.loads((out / "adapter" / "training_info.json").read_text())
                                          ["prompt_style"])
    assert metrics["rouge_l"] == results["evaluation"]["tuned"]["rouge_l"]["value"]
    assert {"settings", "versions", "timings_s"} <= set(results)
    assert results["versions"]["trl"] and results["timings_s"]["train"] > 0
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
        p.name for p in (out / "adapter").iterdir()}
    assert len(samples) == eval_samples and {"question", "answer", "status", "reference"} <= set(samples[0])
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
    import html
    from medreason.answers.answering import answer_batch
    from medreason.answers.generation import Sampling
    from medreason.answers.prompts import DISCLAIMER
    from medreason.answers.streaming import UNREADABLE
    from medreason.model import for_inference
    from medreason.serve import webchat
    loaded = for_inference.load(str(demo_run[0] / "adapter"))
    question = "What is gout?"
    messages = list(webchat.make_responder(loaded, 0, 32)(question, [], 24, False, 0.6, 0.95, 1.0))[-1]
    assert messages and messages[-1].content.endswith(f"*{DISCLAIMER}*")
    # The page shows the model's own answer (the same greedy answer answer_batch gives), not the disclaimer alone.
    expected, = answer_batch(loaded.model, loaded.tokenizer, [question], loaded.style, 24,
                             sampling=Sampling(False, 0.6, 0.95, 1.0), max_continuations=0, engine="batched")
    page = "\n".join(m.content for m in messages)
    parts = ([html.escape(expected.text, quote=False)] if expected.status in UNREADABLE
             else [p for p in (expected.thinking, expected.response) if p])
    assert parts and all(p in page for p in parts), (expected, page)


# --- what the trainer does when a run ends otherwise: a failed export (exit 5), Ctrl-C; the preference stage's demo --

TINY_RUN = ["--BACKEND=transformers", "--DATASET=demo", "--VAL_SIZE=2", "--EVAL_STEPS=0", "--EVAL_SAMPLES=1",
            "--MAX_NEW_TOKENS=4", "--MAX_SEQ_LENGTH=256", "--REPORT_TO=none", "--TARGET_MODULES=q_proj,v_proj"]


@pytest.mark.e2e
def test_a_failed_export_exits_with_status_5_and_keeps_the_adapter(tiny_model_dir, tmp_path):
    """README: a failed export is reported (exit status 5) without costing the adapter. The merged folder's
    config.json is taken by a folder, so the real merge fails writing it (as root too, unlike a read-only folder)."""
    out = tmp_path / "run"
    (out / "merged" / "config.json").mkdir(parents=True)
    result = run_script(f"--MODEL_NAME={tiny_model_dir}", *TINY_RUN, "--MAX_STEPS=1", "--SAVE_STEPS=1",
                        f"--OUTPUT_DIR={out}", "--SAVE_MERGED=True", timeout=600)
    assert result.returncode == 5, result.stdout[-3000:]
    assert "[export] merged 16-bit model FAILED (IsADirectoryError" in result.stdout
    assert f"The adapter in {out / 'adapter'} is saved" in result.stdout
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "results.json").is_file()


@pytest.mark.e2e
def test_ctrl_c_during_training_keeps_the_adapter_so_far(tiny_model_dir, tmp_path):
    """SIGINT (Ctrl-C) to a real training run, once its second step is logged: the adapter so far goes to
    OUTPUT_DIR/adapter-interrupted with its run record, the checkpoints stay, and the run says how to resume."""
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "medical_fine_tuning.py"), f"--MODEL_NAME={tiny_model_dir}", *TINY_RUN,
         "--MAX_STEPS=2000", "--SAVE_STEPS=1", "--SAVE_TOTAL_LIMIT=2", "--LOGGING_STEPS=1", f"--OUTPUT_DIR={out}"],
        cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []
    for line in process.stdout:  # the trainer's log of its second step: the first one's checkpoint is saved
        seen.append(line)
        if sum("'loss':" in line for line in seen) == 2:
            break
    process.send_signal(signal.SIGINT)
    output = "".join(seen) + process.communicate(timeout=300)[0]
    assert process.returncode == 1, output[-3000:]
    stopped = re.search(r"\[train\] interrupted at step (\d+): adapter so far saved to (\S+)\. Run the same command "
                        r"again to resume from the newest checkpoint in (\S+)\.", output)
    assert stopped, output[-3000:]
    step, saved = int(stopped.group(1)), Path(stopped.group(2))
    assert 2 <= step < 2000 and saved == out / "adapter-interrupted" and Path(stopped.group(3)) == out / "checkpoints"
    assert (saved / "adapter_model.safetensors").is_file() and (saved / "tokenizer.json").is_file()
    record = json.loads((saved / "training_info.json").read_text())
    assert record["model_name"] == str(tiny_model_dir) and "finished_at_step" not in record  # not a finished adapter
    assert not (out / "adapter").exists() and list((out / "checkpoints").glob("checkpoint-*"))


@pytest.mark.e2e
def test_plain_preference_tuning_starts_the_sft_demo_when_it_has_no_adapter(tmp_path):
    """`python preference_tuning.py` on a CPU, in a folder with no SFT demo yet, runs the trainer's demo as a user
    would (python medical_fine_tuning.py, which prints its own DEMO MODE line) before anything else. Checked up to
    that start: here the demo's OUTPUT_DIR is taken by a file, so the demo stops early and the stage says so."""
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "demo-smollm2-135m").write_text("in the way\n")
    result = subprocess.run([sys.executable, str(ROOT / "preference_tuning.py")], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
    trainer = ROOT / "medical_fine_tuning.py"
    assert (f"[sft] outputs/demo-smollm2-135m/adapter is missing: training the SFT demo first ({trainer}; "
            in result.stdout), result.stdout[-3000:]
    after = result.stdout.split("training the SFT demo first", 1)[1]
    assert "DEMO MODE" in after and "outputs/demo-smollm2-135m" in after  # the trainer's own demo, to that folder
    assert result.returncode == 1 and f"error: the SFT demo ({trainer}) failed; its output is above" in result.stdout
