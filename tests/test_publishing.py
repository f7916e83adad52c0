"""Model card, upload folder, push failure handling, exports."""
import hashlib
import json

import pytest
import torch

from medreason.model import exports, run_record
from medreason.publish import hub
from medreason.config.errors import UserError
from medreason.evaluate import report
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


PLAN = Plan("unsloth", "cuda", "fp16", True, "adamw_8bit")


def scored(answers: list[str], references: list[str], style="think_response", nll=None, options=None):
    """One model's answers with the metrics evaluate/comparison.score computes from them (the project's own metric
    functions; perplexity from the given (summed NLL, tokens) per answer, as answer_nll returns it)."""
    from medreason.answers.choices import extract_choice
    from medreason.evaluate.comparison import ModelAnswers, mean_metric, perplexity_metric
    from medreason.evaluate.metrics import compliance_flags, rouge_l_scores
    result = ModelAnswers(answers, ended=[True] * len(answers))
    result.metrics["format_compliance"] = mean_metric(compliance_flags(answers, style, result.ended))
    if options:  # multiple-choice rows: (options, right letter) per answer
        letters = [extract_choice(a, opts, style) for a, (opts, _) in zip(answers, options)]
        result.metrics["accuracy"] = mean_metric([float(x == right) for x, (_, right) in zip(letters, options)])
        result.metrics["extraction_rate"] = mean_metric([float(x is not None) for x in letters])
        return result
    result.metrics["rouge_l"] = mean_metric(rouge_l_scores(answers, references, style, result.ended))
    if nll:
        result.metrics["perplexity"] = perplexity_metric(nll)
    return result


def cell(metric: dict) -> str:
    return f"{metric['value']:.3f} [{metric['ci95'][0]:.3f}, {metric['ci95'][1]:.3f}]"


def sft_answers(rows, style):
    """Base: the reference alone (no layout); tuned: the layout with half the reference: the metrics differ."""
    base = scored([r["Response"] for r in rows], [r["Response"] for r in rows], nll=[(40.0, 10)] * len(rows))
    tuned = scored([style.answer(r["Complex_CoT"], " ".join(r["Response"].split()[:12])) for r in rows],
                   [r["Response"] for r in rows], nll=[(20.0, 10), (15.0, 10)] * (len(rows) // 2))
    return {"base": base, "tuned": tuned}


def write_sft_run(out, rows, **settings):
    """results.json, eval_samples.jsonl and validation.jsonl as the trainer writes them (results.write_run), from
    base and tuned answers scored by the project's metrics; settings over medical_fine_tuning.py's defaults."""
    from types import SimpleNamespace

    import medical_fine_tuning
    from medreason.answers.prompts import get_style
    from medreason.config.settings import collect
    from medreason.evaluate.results import write_run
    cfg = SimpleNamespace(**{**collect(vars(medical_fine_tuning)), **settings})
    return write_run(out, cfg=cfg, plan=PLAN, timings={"train": 60.0},
                     comparison=sft_answers(rows, get_style("think_response")), eval_loss=1.5, train_loss=1.7,
                     sample=rows, val_rows=rows, data_info={"train_rows": 1000, "val_rows": len(rows), "dropped": {}},
                     style="think_response")


@pytest.fixture
def run_dir(tmp_path, tiny_adapter, demo_rows):
    """A run folder as the trainer leaves it: adapter/ and what results.write_run writes."""
    import shutil
    shutil.copytree(tiny_adapter, tmp_path / "adapter")
    write_sft_run(tmp_path, demo_rows[:4], LEARNING_RATE=2e-4, MODEL_NAME="unsloth/Llama-3.2-3B-Instruct-bnb-4bit",
                  DATASET="FreedomIntelligence/medical-o1-reasoning-SFT")
    return tmp_path


def test_card_parses_back_with_the_runs_real_values(run_dir):
    from huggingface_hub import ModelCard

    from medreason.answers.prompts import PROMPT_STYLES
    folder = hub.build_upload_folder(run_dir, "me/medical-lora")
    card = ModelCard.load(folder / "README.md")
    data = card.data
    assert data.library_name == "peft" and data.pipeline_tag == "text-generation"
    assert data.datasets == ["FreedomIntelligence/medical-o1-reasoning-SFT"] and data.language == ["en"]
    backend = json.loads((run_dir / "adapter" / "training_info.json").read_text())["backend"]
    assert {"medical", "chain-of-thought", "lora", "trl", backend} <= set(data.tags)  # the adapter's backend
    assert data.base_model == json.loads((run_dir / "adapter" / "adapter_config.json").read_text())[
        "base_model_name_or_path"]
    evaluation = json.loads((run_dir / "results.json").read_text())["evaluation"]
    base, tuned = evaluation["base"], evaluation["tuned"]
    values = {r.metric_type: r.metric_value for r in data.eval_results}
    assert values == {"rougeL": round(tuned["rouge_l"]["value"], 4),
                      "perplexity": round(tuned["perplexity"]["value"], 4),
                      "format_compliance": round(tuned["format_compliance"]["value"], 4)}
    for name in ("rouge_l", "format_compliance", "perplexity"):
        assert base[name]["value"] != tuned[name]["value"]  # so the columns cannot be swapped unseen
        diff = tuned[name]["value"] - base[name]["value"]
        assert f"| {name} | {cell(base[name])} | {cell(tuned[name])} | {diff:+.3f} |" in card.text
    assert "Not medical advice" in card.text and "python inference.py --adapter me/medical-lora" in card.text
    assert "| `LEARNING_RATE` | `0.0002` |" in card.text and "## Training\n" in card.text
    assert PROMPT_STYLES["think_response"].card_text in card.text and "`medical_fine_tuning.py`" in card.text


def test_card_describes_the_answer_layout_the_adapter_was_trained_with(run_dir):
    from medreason.answers.prompts import PROMPT_STYLES
    info_path = run_dir / "adapter" / "training_info.json"
    info_path.write_text(json.dumps({**json.loads(info_path.read_text()), "prompt_style": "huatuo"}))
    text = (hub.build_upload_folder(run_dir, "me/x") / "README.md").read_text()
    assert PROMPT_STYLES["huatuo"].card_text in text and "<response>" not in text.split("## What it is")[0]


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
    merged_dir = exports.save_merged(None, None, "transformers", str(tiny_model_dir), tiny_adapter, tmp_path / "merged")
    assert not (merged_dir / "adapter_config.json").exists()
    assert run_record.read(merged_dir) == run_record.read(tiny_adapter) != {}  # asked as the adapter was trained
    (tmp_path / "blocked").write_text("a file where the merged folder goes")
    with pytest.raises(UserError, match="the merged model was not written to .*blocked"):
        exports.save_merged(None, None, "transformers", str(tiny_model_dir), tiny_adapter, tmp_path / "blocked")
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


# --- the later stages: publish.py's card shows the stage's own evaluation ------------------------------------------

def stage_run(tmp_path, tiny_adapter, script, run_info, **settings):
    """A later stage's run folder: the adapter (the tiny SFT one) with the training_info.json that the stage's own
    run_info builds (every stage named), and the script's settings as resolved defaults."""
    import importlib
    import shutil
    from types import SimpleNamespace

    from medreason.config.settings import collect
    out = tmp_path / script
    shutil.copytree(tiny_adapter, out / "adapter")
    cfg = SimpleNamespace(**{**collect(vars(importlib.import_module(script))), "SFT_ADAPTER": str(tiny_adapter),
                             "OUTPUT_DIR": str(out), **settings})
    sft_info = json.loads((tiny_adapter / "training_info.json").read_text())
    info = run_info(cfg, sft_info)
    (out / "adapter" / "training_info.json").write_text(json.dumps(info, indent=2))  # as save_adapter writes it
    return out, cfg, info


@pytest.fixture
def dpo_run(tmp_path, tiny_adapter, demo_rows):
    """A DPO run as preference_tuning.py leaves it: evaluation/ from report.write_dpo_report, results.json from
    write_results with dpo.run_metrics, on SFT and DPO answers scored by the project's metrics and judged by the
    reference judge (ROUGE-L, no model)."""
    from medreason.answers.prompts import get_style
    from medreason.evaluate.judging import ReferenceJudge
    from medreason.preference import dpo
    from medreason.preference.pairs import Question
    style = get_style("think_response")
    out, cfg, info = stage_run(tmp_path, tiny_adapter, "preference_tuning",
                               lambda cfg, sft: dpo.run_info(cfg, PLAN, tiny_adapter, sft, style), JUDGE="reference")
    rows = demo_rows[:4]
    refs = [r["Response"] for r in rows]
    questions = [Question(r["Question"], r["Response"], row=r) for r in rows]
    results = {"sft": scored([style.answer(r["Complex_CoT"], " ".join(r["Response"].split()[:6])) if i % 2 else
                              r["Response"] for i, r in enumerate(rows)], refs),
               "dpo": scored([style.answer(r["Complex_CoT"], r["Response"]) for r in rows], refs)}
    win = dpo.win_rate(ReferenceJudge(style), questions, results, style)
    log = [{"step": 1, "loss": 0.69, "rewards/margins": 0.01}, {"step": 2, "loss": 0.52, "rewards/margins": 0.4}]
    report.write_dpo_report(out / "evaluation", results, win, questions, {"data": "demo", "kind": "reasoning"}, log)
    comparison, counts = report.dpo_comparison(results, win), {"pairs": 3, "tie": 1, "near_tie": 0}
    write_results(out / "results.json", dpo.run_metrics(comparison, counts, log, 0.6), vars(cfg), PLAN,
                  {"train": 1.0}, {"pairs": counts, "stages": info["stages"], "evaluation": comparison})
    return out


def test_the_card_of_a_dpo_run_shows_the_dpo_evaluation(dpo_run):
    """publish.py (and the card preference_tuning.py writes) on a DPO run: SFT vs DPO from its results.json, both
    stages named; never the SFT card's 'No evaluation was run'."""
    from huggingface_hub import ModelCard
    evaluation = json.loads((dpo_run / "results.json").read_text())["evaluation"]
    sft, dpo = evaluation["sft"], evaluation["dpo"]
    local = hub.write_card(dpo_run).read_text()
    folder = hub.build_upload_folder(dpo_run, "me/med-dpo")
    for text in (local, (folder / "README.md").read_text()):
        assert "No evaluation was run" not in text
        assert "| metric | SFT adapter | this adapter | difference |" in text
        for name in ("rouge_l", "format_compliance"):
            assert sft[name]["value"] != dpo[name]["value"]
            diff = dpo[name]["value"] - sft[name]["value"]
            assert f"| {name} | {cell(sft[name])} | {cell(dpo[name])} | {diff:+.3f} |" in text
        win = evaluation["judge_win_rate"]
        assert f"win rate of DPO over SFT: {win['win_rate']:.2f} ({win['wins']} wins" in text
        assert "## Training: two stages" in text and "2. **DPO** (trl `DPOTrainer`" in text
        assert "3 pairs (1 ties and 0 margins" in text and "the judge (reference) scored" in text
    assert f"--adapter {dpo_run / 'adapter'}" in local
    card = ModelCard.load(folder / "README.md")
    assert {"sft", "dpo", "rlaif"} <= set(card.data.tags)
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        "rougeL": round(dpo["rouge_l"]["value"], 4), "format_compliance": round(dpo["format_compliance"]["value"], 4)}


def test_the_card_of_an_rl_run_shows_the_rl_evaluation(tmp_path, tiny_adapter):
    """rl_tuning.py's results.json (report.write_rl_report, grpo.run_metrics) on multiple-choice questions: the card
    shows SFT vs RL accuracy, every stage named."""
    from medreason.answers.choices import mcq_question
    from medreason.answers.prompts import get_style
    from medreason.evaluate.metrics import status_counts
    from medreason.preference.pairs import Question
    from medreason.rl import grpo, rewards
    style = get_style("think_response")
    out, cfg, info = stage_run(tmp_path, tiny_adapter, "rl_tuning", lambda cfg, sft: grpo.run_info(
        cfg, PLAN, tiny_adapter, sft, style, rewards.choose(cfg.REWARDS, grpo.columns_of("mcq"), None)))
    rows = [{"question": f"Which vitamin, case {i}?", "options": {"A": "thiamine", "B": "niacin", "C": "folate"},
             "answer": "ABCA"[i]} for i in range(4)]
    questions = [Question(mcq_question(r["question"], r["options"]), None, r["options"], r["answer"], r) for r in rows]
    options = [(r["options"], r["answer"]) for r in rows]
    results = {"sft": scored([style.answer("unsure", "A") for _ in rows], [], options=options),
               "rl": scored([style.answer("recall", r["answer"]) for r in rows], [], options=options)}
    statuses = {name: status_counts(a.answers, style, a.ended) for name, a in results.items()}
    log = [{"step": 1, "reward": 0.5, "rewards/format/mean": 1.0}, {"step": 2, "reward": 0.9}]
    names = list(cfg.REWARDS)
    report.write_rl_report(out / "evaluation", results, statuses, questions, {"data": "demo", "kind": "mcq"}, log,
                           names, {})
    comparison, counts = report.rl_comparison(results, statuses), {"train": 6, "held_out": 4, "refused": 1}
    write_results(out / "results.json", grpo.run_metrics(comparison, log, names, 0.1, {}, counts), vars(cfg), PLAN,
                  {"train": 1.0}, {"questions": counts, "stages": info["stages"], "evaluation": comparison})
    text = hub.write_card(out).read_text()
    sft, rl = comparison["sft"]["accuracy"], comparison["rl"]["accuracy"]
    assert (sft["value"], rl["value"]) == (0.5, 1.0)
    assert f"| accuracy | {cell(sft)} | {cell(rl)} | +0.500 |" in text and "No evaluation was run" not in text
    assert "## Training: two stages" in text and "2. **RL** (trl `GRPOTrainer`" in text
    assert "Training questions: 6 (1 refused" in text and "grpo" in text
