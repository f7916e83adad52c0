"""The preference stage: questions and pairs, candidates, the DPO reference model, training, resume, bad input, and
preference_tuning.py end to end on the embedded model."""
import json
import os
import subprocess
import sys
import types

import pytest
import torch

from conftest import ROOT, run_script
from medreason.evaluate import report
from medreason.preference import dpo, pairs as preference
from medreason.config.errors import UserError
from medreason.evaluate.judging import ReferenceJudge, Verdict
from medreason.preference.pairs import Pair, Question, build_pairs
from medreason.answers.prompts import get_style
from medreason.config.run_plan import Plan

STYLE = get_style("think_response")
CPU = Plan("transformers", "cpu", "fp32", False, "adamw_torch")


def verdicts(*scores):
    return [Verdict(s, "") for s in scores]


# --- pairs -----------------------------------------------------------------------------------------------------

def test_pairs_put_the_best_scored_answer_first_and_drop_ties_and_near_ties():
    questions = [Question(f"q{i}", "ref") for i in range(5)]
    candidates = [["a", "b", "c"], ["a", "b"], ["a", "b"], ["a", "b"], ["a", "b"]]
    scored = [verdicts(0.2, 0.9, 0.5), verdicts(0.7, 0.7), verdicts(0.6, 0.65), verdicts(None, 0.8),
              verdicts(0.9, 0.1)]
    pairs, counts = build_pairs(questions, candidates, scored, min_margin=0.1, judge="test")
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("q0", "b", "a"), ("q4", "a", "b")]
    assert all(p.score_chosen > p.score_rejected and p.margin >= 0.1 for p in pairs)
    assert (counts["pairs"], counts["tie"], counts["near_tie"], counts["unreadable"]) == (2, 1, 1, 1)


def test_identical_answers_are_a_tie_whatever_their_scores():
    pairs, counts = build_pairs([Question("q")], [["same", "same "]], [verdicts(0.1, 0.9)], 0.1, "test")
    assert not pairs and counts["tie"] == 1


def test_no_pairs_left_names_the_fixes():
    _, counts = build_pairs([Question("q")], [["a", "b"]], [verdicts(0.5, 0.5)], 0.1, "test")
    error = preference.no_pairs_error(counts, 0.1, 1)
    assert "no preference pairs left from 1 questions (1 ties" in str(error)
    assert "--NUM_CANDIDATES=4" in str(error) and "--MIN_MARGIN" in str(error) and "--JUDGE=reference" in str(error)


def test_pairs_file_round_trips_and_ultramedical_pairs_are_read(tmp_path):
    written = preference.write_pairs(tmp_path / "pairs.jsonl", [Pair("q1", "good", "bad", 0.9, 0.2, "ref", "j")])
    line = json.loads(written.read_text())
    assert line["margin"] == pytest.approx(0.7) and line["chosen"] == "good"
    layout, pairs = preference.read_source(str(written))
    assert layout == "pairs" and pairs[0].prompt == "q1" and pairs[0].score_chosen == 0.9
    ultra = tmp_path / "ultra.jsonl"  # UltraMedical-Preference: chosen/rejected as conversations
    rows = [{"prompt": "Which drug?", "chosen": [{"role": "user", "content": "Which drug?"},
                                                 {"role": "assistant", "content": "ACE inhibitors."}],
             "rejected": [{"role": "user", "content": "Which drug?"}, {"role": "assistant", "content": "Water."}]},
            {"prompt": "Same?", "chosen": "x", "rejected": "x"}, {"prompt": "", "chosen": "a", "rejected": "b"}]
    ultra.write_text("\n".join(json.dumps(r) for r in rows))
    layout, pairs = preference.read_source(str(ultra))
    assert layout == "pairs" and [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        ("Which drug?", "ACE inhibitors.", "Water.")]


def test_question_layouts(tmp_path, demo_rows):
    files = {"o1.jsonl": demo_rows[:3],
             "mcq.jsonl": [{"question": "Scurvy?", "options": {"A": "Iron", "B": "Vitamin C"}, "answer": "B"}],
             "plain.jsonl": [{"question": "What causes scurvy?"}, {"question": ""}]}
    for name, rows in files.items():
        (tmp_path / name).write_text("\n".join(json.dumps(r) for r in rows))
    layout, questions = preference.read_source(str(tmp_path / "o1.jsonl"))
    assert layout == "reasoning" and questions[0].reference == demo_rows[0]["Response"]
    layout, questions = preference.read_source(str(tmp_path / "mcq.jsonl"))
    assert layout == "mcq" and "B. Vitamin C" in questions[0].text and questions[0].correct == "B"
    layout, questions = preference.read_source(str(tmp_path / "plain.jsonl"))
    assert layout == "questions" and len(questions) == 1 and questions[0].reference is None
    (tmp_path / "odd.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(UserError, match="none of the layouts this stage reads"):
        preference.read_source(str(tmp_path / "odd.jsonl"))


def test_held_out_questions_are_seeded_and_never_used_for_pairs():
    rows = list(range(20))
    train, held = preference.split_held_out(rows, 5, None, seed=1)
    assert (train, held) == preference.split_held_out(rows, 5, None, seed=1)
    assert not set(train) & set(held) and len(held) == 5 and len(train) == 15
    assert len(preference.split_held_out(rows, 5, 4, seed=1)[0]) == 4
    with pytest.raises(UserError, match="EVAL_SAMPLES=20 leaves no questions"):
        preference.split_held_out(rows, 20, None, seed=1)


def test_a_prompt_that_fills_the_context_is_refused_before_training(tokenizer):
    long = Pair("why? " * 400, "<think>a</think><response>b</response>", "no")
    short = Pair("Which drug class causes a dry cough?", "ACE inhibitors.", "Water.")
    kept, examples = preference.fit_pairs([long, short], STYLE, tokenizer, max_len=256)
    assert kept == [short] and examples[0]["prompt"][-1]["content"] == short.prompt
    assert examples[0]["chosen"] == [{"role": "assistant", "content": "ACE inhibitors."}]
    with pytest.raises(UserError, match=r"every one of the 1 pairs has a prompt of MAX_SEQ_LENGTH=256 .*Fix: "
                                        r"--MAX_SEQ_LENGTH="):
        preference.fit_pairs([long], STYLE, tokenizer, max_len=256)
    with pytest.raises(UserError, match="every one of the 1 questions"):
        preference.fit_questions([Question(long.prompt)], STYLE, tokenizer, max_len=256)


def test_the_dpo_prompt_is_exactly_the_sft_prompt(tokenizer):
    """trl renders the pair's prompt with the chat template: it must be the prompt the SFT model answers."""
    from medreason.answers.prompts import generation_prompt, tokenize_example
    example = preference.to_dpo_example(Pair("What causes scurvy?", "<think>x</think>", "no"), STYLE, tokenizer)
    ids, n_prompt = tokenize_example(tokenizer, {"prompt": example["prompt"], "completion": example["chosen"]})
    assert tokenizer.decode(ids[:n_prompt]) == generation_prompt(tokenizer, "What causes scurvy?", STYLE)


# --- candidates ----------------------------------------------------------------------------------------------------

def test_candidates_are_sampled_and_reproducible_under_the_seed(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    from medreason.answers.generation import Sampling
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    questions = [Question("What causes scurvy?"), Question("Which drug class causes a dry cough?")]
    sampling = Sampling(do_sample=True, temperature=0.7, top_p=0.95)

    def sample(seed):
        answers = preference.sample_candidates(model, tokenizer, questions, STYLE, 2, 12, 4, sampling, seed)
        return [[a.text for a in per_question] for per_question in answers]
    first = sample(3)
    assert len(first) == 2 and all(len(k) == 2 for k in first)
    assert first == sample(3)
    assert first != sample(4)
    assert first[0][0] != first[0][1]  # two samples of one question differ
    with pytest.raises(UserError, match="NUM_CANDIDATES=1"):
        preference.sample_candidates(model, tokenizer, questions, STYLE, 1, 12, 4, sampling, 3)


def test_no_pairs_left_after_ties_stops_before_training(tiny_model_dir, tokenizer, tmp_path):
    """A random model never writes the answer format: every candidate scores 0, every pair is a tie."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    cfg = types.SimpleNamespace(NUM_CANDIDATES=2, TEMPERATURE=0.7, TOP_P=0.95, SEED=0, MAX_NEW_TOKENS=8,
                                GENERATION_BATCH_SIZE=4, MIN_MARGIN=0.1)
    questions = [Question("What causes scurvy?", "Vitamin C deficiency.")]
    with pytest.raises(UserError, match=r"no preference pairs left from 1 questions \(1 ties"):
        preference.make_pairs(model, tokenizer, questions, STYLE, ReferenceJudge(STYLE), cfg, tmp_path)
    assert (tmp_path / preference.PAIRS_FILE).read_text() == ""  # written, so the empty result can be inspected


# --- DPO ---------------------------------------------------------------------------------------------------------

def dpo_cfg(out, **changes):
    values = dict(BETA=0.1, MAX_SEQ_LENGTH=128, BATCH_SIZE=2, GRAD_ACCUM=1, MAX_STEPS=6, LEARNING_RATE=5e-3,
                  LR_SCHEDULER="constant", WARMUP_STEPS=0, WEIGHT_DECAY=0.0, GRADIENT_CHECKPOINTING=False,
                  SAVE_STEPS=3, SAVE_TOTAL_LIMIT=2, LOGGING_STEPS=1, OUTPUT_DIR=str(out), SEED=0)
    return types.SimpleNamespace(**{**values, **changes})


TRAINING_PAIRS = [Pair(q, "<think>\nThe cause is known.\n</think>\n<response>\nVitamin C deficiency.\n</response>",
                       "bananas bananas bananas") for q in ("What causes scurvy?", "Why do gums bleed in scurvy?",
                                                            "Which vitamin prevents scurvy?", "Scurvy cause?")]


def dpo_trainer(adapter, tokenizer, out, **changes):
    from medreason.preference.dpo import build_dpo_config, build_trainer, load_policy, sft_facts
    cfg = dpo_cfg(out, **changes)
    folder, info = sft_facts(str(adapter))
    model = load_policy(folder, info, CPU, cfg)
    examples = [preference.to_dpo_example(p, STYLE, tokenizer) for p in TRAINING_PAIRS]
    return build_trainer(model, tokenizer, examples, build_dpo_config(cfg, CPU, [], out / "checkpoints"),
                         "transformers")


def logits(model, tokenizer, text="What causes scurvy?"):
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_the_reference_model_is_the_sft_model_not_the_base(tiny_model_dir, tiny_adapter, tokenizer, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    trainer = dpo_trainer(tiny_adapter, tokenizer, tmp_path)
    model = trainer.model
    assert set(model.peft_config) == {dpo.POLICY, dpo.REFERENCE}
    plain_sft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_adapter).eval()
    expected, base = logits(plain_sft, tokenizer), None
    model.eval()
    with plain_sft.disable_adapter():
        base = logits(plain_sft, tokenizer)
    model.set_adapter(dpo.REFERENCE)
    ref = logits(model, tokenizer)
    model.set_adapter(dpo.POLICY)
    assert torch.allclose(ref, expected, atol=1e-5)
    assert (ref - base).abs().max() > 1e-3  # the SFT adapter changes the model: the base would be another reference
    assert not any(p.requires_grad for n, p in model.named_parameters() if f".{dpo.REFERENCE}." in n)
    assert any(p.requires_grad for n, p in model.named_parameters() if f".{dpo.POLICY}." in n)


def test_dpo_moves_the_lora_weights_and_widens_the_margin_on_its_pairs(tiny_adapter, tokenizer, tmp_path):
    trainer = dpo_trainer(tiny_adapter, tokenizer, tmp_path, SAVE_STEPS=100)
    snapshot = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    before = trainer.evaluate(trainer.train_dataset)["eval_rewards/margins"]
    trainer.train()
    after = trainer.evaluate(trainer.train_dataset)["eval_rewards/margins"]
    now = dict(trainer.model.named_parameters())
    policy = [n for n in snapshot if f".{dpo.POLICY}." in n]
    assert policy and all(not torch.equal(snapshot[n], now[n]) for n in policy)  # every policy LoRA matrix moved
    assert all(torch.equal(snapshot[n], now[n]) for n in snapshot if f".{dpo.REFERENCE}." in n)  # ref frozen
    assert before == pytest.approx(0.0, abs=1e-6)  # policy == reference before training
    assert after > before + 0.05, (before, after)
    first, last = report.margins(trainer.state.log_history)
    assert last > first


def test_resuming_continues_the_dpo_adapter_exactly(tiny_adapter, tokenizer, tmp_path):
    """transformers' Trainer reloads only the subfolder adapters of a two-adapter checkpoint; dpo.train restores the
    policy's own weights first, so a resumed run ends where an uninterrupted one does."""
    straight = dpo_trainer(tiny_adapter, tokenizer, tmp_path / "straight", MAX_STEPS=4, SAVE_STEPS=2)
    straight.train()
    first = dpo_trainer(tiny_adapter, tokenizer, tmp_path / "resumed", MAX_STEPS=2, SAVE_STEPS=2)
    first.train()
    resumed = dpo_trainer(tiny_adapter, tokenizer, tmp_path / "resumed", MAX_STEPS=4, SAVE_STEPS=2)
    checkpoint = str(tmp_path / "resumed" / "checkpoints" / "checkpoint-2")
    dpo.train(resumed, checkpoint, tmp_path / "resumed", {"trained_by": {}})
    final = dict(resumed.model.named_parameters())
    for name, value in straight.model.named_parameters():
        if f".{dpo.POLICY}." in name:
            assert torch.allclose(value, final[name], atol=1e-6), name


def test_dpo_config_takes_the_runs_one_precision_decision(tmp_path):
    fp32 = dpo.build_dpo_config(dpo_cfg(tmp_path), CPU, [], tmp_path)
    assert (fp32.fp16, fp32.bf16, fp32.use_cpu, fp32.beta) == (False, False, True, 0.1)
    bf16 = dpo.build_dpo_config(dpo_cfg(tmp_path), Plan("transformers", "cpu", "bf16", False, "adamw_torch"), [],
                                tmp_path)
    assert (bf16.fp16, bf16.bf16) == (False, True)
    with pytest.raises(UserError, match="the DPO trainer refused these settings.*cosin"):
        dpo.build_dpo_config(dpo_cfg(tmp_path, LR_SCHEDULER="cosin"), CPU, [], tmp_path)


def test_the_saved_adapter_is_the_dpo_adapter_alone_and_asks_as_sft_did(tiny_adapter, tokenizer, tmp_path):
    from medreason.model.for_inference import load
    trainer = dpo_trainer(tiny_adapter, tokenizer, tmp_path, MAX_STEPS=1)
    sft_info = json.loads((tiny_adapter / "training_info.json").read_text())
    info = {**sft_info, "stages": [{"stage": "sft"}, {"stage": "dpo"}], "trained_by": {}}
    saved = dpo.save(trainer.model, tokenizer, tmp_path / "adapter", info)
    assert not (saved / dpo.REFERENCE).exists() and (saved / "adapter_model.safetensors").is_file()
    loaded = load(str(saved))
    assert loaded.style.system_prompt == sft_info["system_prompt"] and loaded.kind == "adapter"
    assert torch.allclose(logits(loaded.model, tokenizer), logits(trainer.model.eval(), tokenizer), atol=1e-5)


# --- the script ------------------------------------------------------------------------------------------------

def run_stage(*args, timeout=900, env=None):
    return subprocess.run([sys.executable, str(ROOT / "preference_tuning.py"), *args], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def test_a_missing_sft_adapter_is_one_line_before_any_model_loads(tmp_path):
    result = run_stage("--SFT_ADAPTER=/no/such/run/adapter", f"--OUTPUT_DIR={tmp_path}", "--REPORT_TO=none",
                       timeout=300)
    assert result.returncode == 1
    assert "error: SFT_ADAPTER='/no/such/run/adapter': no such folder" in result.stdout
    assert "Fix: train one first (python medical_fine_tuning.py" in result.stdout
    assert "Traceback" not in result.stdout and "[model]" not in result.stdout


def test_an_unknown_setting_suggests_the_right_one():
    result = run_stage("--NUM_CANDIDATE=4", timeout=300)
    assert result.returncode == 1 and "Did you mean --NUM_CANDIDATES" in result.stdout


@pytest.mark.e2e
def test_the_whole_stage_runs_on_the_embedded_model(tmp_path):
    """The trainer's demo (SFT), then this stage's demo on it: candidates, the embedded judge, pairs, DPO, SFT vs
    DPO, the card; the adapter answers with the SFT prompt."""
    sft = run_script(f"--OUTPUT_DIR={tmp_path / 'sft'}", "--REPORT_TO=none", "--EVAL_SAMPLES=1",
                     "--MAX_NEW_TOKENS=64", timeout=1200)
    assert sft.returncode == 0, sft.stdout[-3000:]
    out = tmp_path / "dpo"
    result = run_stage(f"--SFT_ADAPTER={tmp_path / 'sft' / 'adapter'}", f"--OUTPUT_DIR={out}", timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "configs/preference/demo.yaml" in result.stdout and f"OUTPUT_DIR: {out}" in result.stdout
    pairs = [json.loads(line) for line in (out / preference.PAIRS_FILE).read_text().splitlines()]
    assert pairs and all(p["score_chosen"] - p["score_rejected"] >= 0.1 - 1e-9 for p in pairs)
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["pairs"] == len(pairs) and results["versions"]["trl"]
    assert {"sft", "dpo", "difference", "judge_win_rate"} <= set(results["evaluation"])
    info = json.loads((out / "adapter" / "training_info.json").read_text())
    sft_info = json.loads((tmp_path / "sft" / "adapter" / "training_info.json").read_text())
    assert [s["stage"] for s in info["stages"]] == ["sft", "dpo"]
    assert (info["prompt_style"], info["system_prompt"], info["model_name"]) == (
        sft_info["prompt_style"], sft_info["system_prompt"], "embedded")
    assert not (out / "adapter" / "ref").exists()
    report = (out / "evaluation" / "report.md").read_text()
    assert "| metric | SFT | DPO | difference |" in report and "win rate of DPO over SFT" in report
    card = (out / "model_card.md").read_text()
    assert "## Training: two stages" in card and "**SFT**" in card and "**DPO**" in card and "dpo" in card
