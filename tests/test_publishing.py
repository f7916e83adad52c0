"""Model card, upload folder, push failure handling, exports."""
import hashlib
import json

import pytest
import torch

from medreason.model import exports
from medreason.publish import hub
from medreason.config.errors import UserError
from medreason.evaluate.results import write_results
from medreason.config.run_plan import Plan

FAKE_TOKEN = "hf_FAKEtokenForPublishingTests0123456789"


def test_push_preflight_needs_a_token_and_a_valid_repo_id(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_REPO_ID", raising=False)
    with pytest.raises(UserError, match="PUSH_TO_HUB=True needs a Hugging Face token.*HF_TOKEN.*dry-run"):
        hub.check_push(True, "me/model", True, "run")
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    for bad in ("", "no-namespace", "me/has space", "me/--bad--", "a/b/c"):
        with pytest.raises(UserError, match="not a valid Hub repo id.*Fix"):
            hub.check_push(True, bad, True, "run")
    plan = hub.check_push(True, "me/medical-lora", False, "run")
    assert plan == hub.PushPlan("push", "me/medical-lora", False)
    monkeypatch.setenv("HF_REPO_ID", "me/from-env")
    assert hub.check_push(True, "", True, "run").repo_id == "me/from-env"
    assert hub.check_push("dry-run", "", True, "run").mode == "dry-run"
    with pytest.raises(UserError, match="use False, True or 'dry-run'"):
        hub.check_push("yes", "me/x", True, "run")


@pytest.fixture
def run_dir(tmp_path, tiny_adapter):
    """A run folder as the trainer leaves it: adapter/ and results.json (with an evaluation)."""
    import shutil
    shutil.copytree(tiny_adapter, tmp_path / "adapter")
    metric = lambda v: {"value": v, "ci95": [v - 0.1, v + 0.1], "n": 20}  # noqa: E731
    evaluation = {"base": {"rouge_l": metric(0.21), "format_compliance": metric(0.0), "perplexity": metric(9.5)},
                  "tuned": {"rouge_l": metric(0.34), "format_compliance": metric(0.95), "perplexity": metric(4.25)}}
    evaluation["difference"] = {k: evaluation["tuned"][k]["value"] - evaluation["base"][k]["value"]
                                for k in evaluation["tuned"]}
    settings = {"MODEL_NAME": "unsloth/Llama-3.2-3B-Instruct-bnb-4bit",
                "DATASET": "FreedomIntelligence/medical-o1-reasoning-SFT", "LORA_R": 16, "MAX_STEPS": 200,
                "LEARNING_RATE": 2e-4, "MAX_NEW_TOKENS": 1024}
    plan = Plan("unsloth", "cuda", "fp16", True, "adamw_8bit")
    write_results(tmp_path / "results.json", {"rouge_l": 0.34, "format_compliance": 0.95, "eval_samples": 20},
                  settings, plan, {"train": 60.0}, {"evaluation": evaluation,
                                                     "data": {"train_rows": 1000, "val_rows": 100, "dropped": {}}})
    return tmp_path


def test_card_parses_back_with_the_runs_real_values(run_dir):
    from huggingface_hub import ModelCard
    folder = hub.build_upload_folder(run_dir, "me/medical-lora")
    card = ModelCard.load(folder / "README.md")
    data = card.data
    assert data.library_name == "peft" and data.pipeline_tag == "text-generation"
    assert data.datasets == ["FreedomIntelligence/medical-o1-reasoning-SFT"] and data.language == ["en"]
    assert {"medical", "chain-of-thought", "lora", "trl", "unsloth"} <= set(data.tags)  # the run's backend
    assert data.base_model == json.loads((run_dir / "adapter" / "adapter_config.json").read_text())[
        "base_model_name_or_path"]
    values = {r.metric_type: r.metric_value for r in data.eval_results}
    assert values == {"rougeL": 0.34, "format_compliance": 0.95, "perplexity": 4.25}
    assert "| rouge_l | 0.210 [0.110, 0.310] | 0.340 [0.240, 0.440] | +0.130 |" in card.text
    assert "Not medical advice" in card.text and "python inference.py --adapter me/medical-lora" in card.text
    assert "| `LEARNING_RATE` | `0.0002` |" in card.text


def test_card_reports_shortened_chains_of_thought_only_when_rows_were_shortened(run_dir):
    from huggingface_hub import ModelCard
    assert "shortened" not in ModelCard.load(hub.build_upload_folder(run_dir, "me/x") / "README.md").text
    results = json.loads((run_dir / "results.json").read_text())
    results["settings"]["MAX_THINK_WORDS"] = 120
    results["data"]["shortened_reasoning"] = 900
    (run_dir / "results.json").write_text(json.dumps(results))
    text = ModelCard.load(hub.build_upload_folder(run_dir, "me/x") / "README.md").text
    assert "| `MAX_THINK_WORDS` | `120` |" in text and "shortened to about 120 words" in text and "900 rows" in text


def test_upload_folder_holds_exactly_the_adapter_files_and_the_card(run_dir):
    folder = hub.build_upload_folder(run_dir, "me/medical-lora")
    adapter_files = {p.name for p in (run_dir / "adapter").iterdir() if p.name != "README.md"}
    assert {p.name for p in folder.iterdir()} == adapter_files | {"README.md"}
    assert {"adapter_config.json", "adapter_model.safetensors", "training_info.json"} <= adapter_files


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_a_failed_push_keeps_everything_and_prints_the_retry(run_dir, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)  # HF_HUB_OFFLINE=1 (conftest): the Hub is unreachable
    before = digest(run_dir / "adapter")
    plan = hub.check_push(True, "me/medical-lora", True, "run")
    assert hub.publish(run_dir, plan) is False
    out = capsys.readouterr().out
    assert "FAILED" in out and f"python publish.py --output-dir {run_dir} --repo-id me/medical-lora" in out
    assert digest(run_dir / "adapter") == before
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path
    assert FAKE_TOKEN not in out


def test_merged_export_gives_the_same_logits_as_base_plus_adapter(tiny_model_dir, tiny_adapter, tmp_path, tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    merged_dir = exports.merge_adapter(str(tiny_model_dir), tiny_adapter, tmp_path / "merged")
    assert not (merged_dir / "adapter_config.json").exists()
    batch = tokenizer(["<think>chest pain and sweating", "gout"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                             tiny_adapter).eval()(**batch).logits
        got = AutoModelForCausalLM.from_pretrained(merged_dir).eval()(**batch).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()(**batch).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert not torch.allclose(base, got, atol=1e-4), "the merge must carry the adapter's change"


def test_export_preflight(capsys):
    assert exports.check_exports(False, "", "transformers", "any") == exports.ExportPlan(False, ())
    with pytest.raises(UserError, match="SAVE_GGUF='q5'"):
        exports.check_exports(False, "q5", "unsloth", "any")
    with pytest.raises(UserError, match="needs the Unsloth backend"):  # llama.cpp's exporter works on both (test_gguf)
        exports.check_exports(False, "q4_k_m", "transformers", "any", exporter="unsloth")
    assert exports.check_exports(False, "q4_k_m", "unsloth", "any", exporter="unsloth").gguf == ("q4_k_m",)
    assert "llama.cpp" in capsys.readouterr().out
    # Merging into a pre-quantized base on the transformers backend is refused before training, not after it
    # (offline, the Hub id cannot be read, so its name is the evidence).
    with pytest.raises(UserError, match="SAVE_MERGED=True on the transformers backend.*Fix"):
        exports.check_exports(True, "", "transformers", "unsloth/Llama-3.2-3B-Instruct-bnb-4bit")
    assert exports.check_exports(True, "", "unsloth", "unsloth/Llama-3.2-3B-Instruct-bnb-4bit").merged
