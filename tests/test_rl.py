"""The RL stage (rl_tuning.py): each reward on hand-written answers in each style, a short GRPO run that moves the
LoRA weights and logs every reward, resume, the contamination refusal, the saved adapter through inference.py, the
GPU sizes, and the whole demo end to end."""
import json
import os
import subprocess
import sys
import types

import pytest
import torch

from conftest import ROOT
from medreason.rl import grpo, rewards
from medreason.config.errors import UserError
from medreason.answers.prompts import get_style
from medreason.config.run_plan import Plan
from medreason.answers.tags import parse_answer

CPU = Plan("transformers", "cpu", "fp32", False, "adamw_torch")
OPTIONS = {"A": "Vitamin A", "B": "Vitamin C", "C": "Vitamin D", "D": "Vitamin K"}
MCQ = {"answer": "B", "options": OPTIONS}


def answer(text, style="think_response", ended=True, row=MCQ):
    style = get_style(style)
    return rewards.Answer(text, ended, parse_answer(text, style, ended), row, style)


def score(name, *answers):
    return rewards.REWARDS[name].score(list(answers))


# --- rewards on hand-written answers ---------------------------------------------------------------------------------

WRITTEN = {  # per style: (a complete answer naming B, one naming A, one cut before its answer)
    "think_response": ("<think>\nNo vitamin C, no collagen.\n</think>\n<response>\nThe answer is B.\n</response>",
                       "<think>\nGuessing.\n</think>\n<response>\nThe answer is A.\n</response>",
                       "<think>\nCollagen needs a vitamin, so the"),
    "huatuo": ("## Thinking\n\nNo vitamin C, no collagen.\n\n## Final Response\n\nThe answer is B.",
               "## Thinking\n\nGuessing.\n\n## Final Response\n\nThe answer is A.",
               "## Thinking\n\nCollagen needs a vitamin, so the"),
    "r1": ("<think>\nNo vitamin C, no collagen.\n</think>\n\nThe answer is B.",
           "<think>\nGuessing.\n</think>\n\nThe answer is A.", "<think>\nCollagen needs a vitamin, so the"),
    "plain": ("The answer is B (vitamin C).", "The answer is A.", "Collagen needs a vitamin, so the"),
}


@pytest.mark.parametrize("style", list(WRITTEN))
def test_format_correct_and_length_rewards_in_each_style(style):
    right, wrong, cut = answer(WRITTEN[style][0], style), answer(WRITTEN[style][1], style), \
        answer(WRITTEN[style][2], style, ended=False)
    assert score("format", right, wrong, cut) == [1.0, 1.0, 0.0]
    assert score("correct", right, wrong, cut) == [1.0, 0.0, 0.0]
    assert score("length", right, wrong, cut) == [0.0, 0.0, rewards.CUT_PENALTY]


def test_correct_is_zero_when_no_single_option_is_named():
    both = answer("<think>\nx\n</think>\n<response>\nThe answer is B or C.\n</response>")
    none = answer("<think>\nx\n</think>\n<response>\nI cannot tell.\n</response>")
    by_text = answer("<think>\nx\n</think>\n<response>\nVitamin C.\n</response>")
    assert score("correct", both, none, by_text) == [0.0, 0.0, 1.0]


def test_a_looping_answer_gets_the_larger_penalty():
    loop = "<think>\n" + "The patient has scurvy from low vitamin C. " * 12
    assert parse_answer(loop, "think_response", ended=False).status == "looping"
    assert score("length", answer(loop, ended=False)) == [rewards.LOOPING_PENALTY]


def test_verifier_follows_huatuo_scheme_with_the_reference_judge():
    row = {"reference": "Vitamin C deficiency impairs collagen synthesis, causing scurvy."}
    good = answer("<think>\nx\n</think>\n<response>\nVitamin C deficiency impairs collagen synthesis.\n</response>",
                  row=row)
    wrong = answer("<think>\nx\n</think>\n<response>\nIt is caused by too much iron.\n</response>", row=row)
    broken = answer("<think>\nVitamin C deficiency impairs collagen synthesis", ended=False, row=row)
    spec = rewards.verifier_reward(rewards.reference_verifier(get_style("think_response")))
    assert spec.score([good, wrong, broken]) == [rewards.VERIFIED, rewards.WELL_FORMED_WRONG, rewards.BROKEN]


def test_a_classifier_verifier_is_asked_only_about_well_formed_answers(tmp_path, tokenizer):
    """A tiny 2-label classifier whose head is zeroed says P(True) = 0.5 > 0.4 for every input: accepted (1.0);
    the broken answer is never shown to it (0)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=2,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForSequenceClassification(config)
    torch.nn.init.zeros_(model.score.weight)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    verifier = rewards.classifier_verifier(str(tmp_path), "cpu")
    row = {"reference": "Vitamin C."}
    answers = [answer("<think>\nx\n</think>\n<response>\nVitamin C.\n</response>", row=row),
               answer("<think>\nx", ended=False, row=row)]
    assert rewards.huatuo_scores(answers, verifier) == [rewards.VERIFIED, rewards.BROKEN]
    with pytest.raises(UserError, match="cannot be loaded as a classifier.*--VERIFIER=reference"):
        rewards.classifier_verifier(str(tmp_path / "missing"), "cpu")


def test_rewards_are_checked_against_the_data_before_any_model_loads():
    chosen = rewards.choose({"format": 0.5, "correct": 1.0}, grpo.columns_of("mcq"), None)
    assert [(r.name, r.weight) for r in chosen] == [("format", 0.5), ("correct", 1.0)]
    with pytest.raises(UserError, match="'correct' reward reads the rows' answer, options.*multiple-choice rows"):
        rewards.choose({"correct": 1.0}, grpo.columns_of("reasoning"), None)
    with pytest.raises(UserError, match="names 'verifier' but VERIFIER is 'none'"):
        rewards.choose({"verifier": 1.0}, grpo.columns_of("reasoning"), None)
    with pytest.raises(UserError, match="'corect', which is no reward.*@reward"):
        rewards.choose({"corect": 1.0}, grpo.columns_of("mcq"), None)


@pytest.fixture
def added_reward():
    """A reward added the way the README says (a decorated function): the answer's length in hundreds of
    characters. A random model's answers differ in it within a group, so GRPO has an advantage to learn from."""
    @rewards.reward(weight=1.0)
    def chars(answer: rewards.Answer) -> float:
        return len(answer.text) / 100
    yield chars
    rewards.REWARDS.pop("chars")


def test_an_added_reward_is_called_by_trl_under_its_name(added_reward, tokenizer):
    functions, weights = rewards.for_trl(rewards.choose({"format": 0.5, "chars": 2.0}, set(), None),
                                         get_style("think_response"), {tokenizer.eos_token_id})
    assert [f.__name__ for f in functions] == ["format", "chars"] and weights == [0.5, 2.0]
    completions = [[{"role": "assistant", "content": "a a b b"}], [{"role": "assistant", "content": "a b"}]]
    ids = [[105, 106, tokenizer.eos_token_id], [105, 106]]
    assert functions[1](prompts=[None, None], completions=completions, completion_ids=ids) == [0.07, 0.03]
    ended = functions[1].answers(completions, ids, {})
    assert [a.ended for a in ended] == [True, False]


# --- data and contamination ----------------------------------------------------------------------------------------

def write_rows(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_a_benchmark_question_in_the_training_file_is_refused(tmp_path):
    exam = {"question": "A 23-year-old woman has bleeding gums and perifollicular haemorrhages after months of a "
                        "diet without fruit. Which vitamin is deficient?", "options": OPTIONS, "answer": "B"}
    train = [{"question": f"Training question number {i} about a different topic entirely?", "options": OPTIONS,
              "answer": "A"} for i in range(6)]
    copied = {**exam, "question": exam["question"].upper().replace(" ", "  ")}  # case and spacing differ
    layout, questions = grpo.read_questions(write_rows(tmp_path / "train.jsonl", train + [copied]), None)
    texts, labels = grpo.benchmark_questions(write_rows(tmp_path / "exam.jsonl", [exam]))
    kept, counts = grpo.refuse_contaminated(questions, [], texts, chars=64)
    assert layout == "mcq" and labels == ["exam"] and len(kept) == 6 and counts["refused"] == 1
    assert all("different topic" in q.text for q in kept)
    with pytest.raises(UserError, match="every training question overlaps"):
        grpo.refuse_contaminated(questions[-1:], [], texts, chars=64)


def test_the_shared_instruction_does_not_make_every_question_overlap(tmp_path):
    rows = [{"question": f"Distinct question {i}: which option is right here?", "options": OPTIONS, "answer": "B"}
            for i in range(4)]
    _, questions = grpo.read_questions(write_rows(tmp_path / "q.jsonl", rows), None)
    kept, counts = grpo.refuse_contaminated(questions[:3], questions[3:], [], chars=64)
    assert len(kept) == 3 and counts["refused"] == 0


def test_pairs_are_refused_and_the_demo_questions_are_multiple_choice(tmp_path):
    with pytest.raises(UserError, match="holds preference pairs.*needs questions"):
        grpo.read_questions(write_rows(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}]), None)
    layout, questions = grpo.read_questions("demo", None)
    assert layout == "mcq" and len(questions) >= 30 and all(q.correct in q.options for q in questions)


# --- GRPO ----------------------------------------------------------------------------------------------------------

def rl_cfg(out, **changes):
    values = dict(NUM_GENERATIONS=4, MAX_NEW_TOKENS=12, MAX_SEQ_LENGTH=256, TEMPERATURE=1.0, TOP_P=1.0, BETA=0.0,
                  LOSS_TYPE="dapo", SCALE_REWARDS="group", LEARNING_RATE=5e-3, BATCH_SIZE=4, GRAD_ACCUM=1,
                  MAX_STEPS=2, LR_SCHEDULER="constant", WARMUP_STEPS=0, WEIGHT_DECAY=0.0,
                  GRADIENT_CHECKPOINTING=False, SAVE_STEPS=100, SAVE_TOTAL_LIMIT=2, LOGGING_STEPS=1,
                  OUTPUT_DIR=str(out), SEED=0, USE_VLLM=False, EVAL_BATCH_SIZE=4)
    return types.SimpleNamespace(**{**values, **changes})


def grpo_trainer(adapter, tokenizer, out, names=("format", "correct", "length", "chars"), **changes):
    from medreason.preference.dpo import load_policy, sft_facts
    cfg = rl_cfg(out, **changes)
    folder, info = sft_facts(str(adapter))
    style = get_style("think_response")
    chosen = rewards.choose({n: 1.0 for n in names}, grpo.columns_of("mcq"), None)
    model = load_policy(folder, info, CPU, cfg)
    functions, weights = rewards.for_trl(chosen, style, grpo.stop_ids(model, tokenizer))
    _, questions = grpo.read_questions("demo", None)
    config = grpo.build_grpo_config(cfg, CPU, [], out / "checkpoints", weights)
    return grpo.build_trainer(model, tokenizer, grpo.dataset(questions[:4], style, tokenizer), config, functions)


def lora(model, adapter="default"):
    return {n: p.detach().clone() for n, p in model.named_parameters() if f"lora_" in n and f".{adapter}." in n}


def test_two_grpo_steps_move_the_lora_weights_and_log_every_reward(added_reward, tiny_adapter, tokenizer,
                                                                   tmp_path):
    trainer = grpo_trainer(tiny_adapter, tokenizer, tmp_path)
    timer = grpo.StepTimer(trainer)
    before = lora(trainer.model)
    trainer.train()
    after = lora(trainer.model)
    assert before and all(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)
    logged = [e for e in trainer.state.log_history if "reward" in e]
    assert len(logged) == 2
    for name in ("format", "correct", "length", "chars"):
        assert all(f"rewards/{name}/mean" in e for e in logged), name
    assert all(e["rewards/chars/std"] > 0 for e in logged)  # the signal the update learned from
    summary = timer.summary()
    assert summary["steps_timed"] == 2 and 0 < summary["mean_generation_s"] < summary["mean_total_s"]


def test_resuming_reaches_the_weights_of_a_straight_run(added_reward, tiny_adapter, tokenizer, tmp_path):
    straight = grpo_trainer(tiny_adapter, tokenizer, tmp_path / "straight", MAX_STEPS=4, SAVE_STEPS=2)
    straight.train()
    first = grpo_trainer(tiny_adapter, tokenizer, tmp_path / "resumed", MAX_STEPS=2, SAVE_STEPS=2)
    first.train()
    resumed = grpo_trainer(tiny_adapter, tokenizer, tmp_path / "resumed", MAX_STEPS=4, SAVE_STEPS=2)
    grpo.train(resumed, str(tmp_path / "resumed" / "checkpoints" / "checkpoint-2"), tmp_path / "resumed",
             {"trained_by": {}})
    expected, got = lora(straight.model), lora(resumed.model)
    assert not all(torch.equal(expected[n], lora(first.model)[n]) for n in expected)  # steps 3-4 did move them
    for name in expected:
        assert torch.allclose(expected[name], got[name], atol=1e-6), name


def test_with_beta_the_reference_is_the_sft_adapter_and_the_comparison_uses_it(tiny_adapter, tokenizer, tmp_path):
    from medreason.preference.dpo import REFERENCE
    trainer = grpo_trainer(tiny_adapter, tokenizer, tmp_path, names=("format",), BETA=0.04)
    assert REFERENCE in trainer.model.peft_config
    assert grpo.sft_adapter_name(trainer.model, tiny_adapter) == REFERENCE
    plain = grpo_trainer(tiny_adapter, tokenizer, tmp_path / "b0", names=("format",))
    assert REFERENCE not in plain.model.peft_config
    assert grpo.sft_adapter_name(plain.model, tiny_adapter) == grpo.SFT_ADAPTER_NAME
    assert all(torch.equal(v, lora(plain.model, grpo.SFT_ADAPTER_NAME)[n.replace(".default.", f".{grpo.SFT_ADAPTER_NAME}.")])
               for n, v in lora(plain.model).items())  # before training, "sft" is the policy's start


def test_the_rl_adapter_answers_through_inference_py(tiny_adapter, tokenizer, tmp_path):
    trainer = grpo_trainer(tiny_adapter, tokenizer, tmp_path, names=("format",), MAX_STEPS=1)
    trainer.train()
    sft_info = json.loads((tiny_adapter / "training_info.json").read_text())
    cfg = rl_cfg(tmp_path, DATASET="demo", DATASET_CONFIG=None, TRAIN_QUESTIONS=None, EVAL_SAMPLES=2,
                 BENCHMARKS="", REWARDS={"format": 1.0}, VERIFIER="none", VERIFIER_MODEL="")
    info = grpo.run_info(cfg, CPU, tiny_adapter, sft_info, get_style("think_response"),
                       rewards.choose({"format": 1.0}, set(), None))
    saved = grpo.save(trainer.model, tokenizer, tmp_path / "adapter", info)
    assert [s["stage"] for s in info["stages"]] == ["sft", "rl"] and info["stages"][1]["rewards"] == {"format": 1.0}
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "What causes scurvy?"}) + "\n")
    result = subprocess.run([sys.executable, str(ROOT / "inference.py"), "--adapter", str(saved), "--input",
                             str(questions), "--output", str(tmp_path / "a.jsonl"), "--max-new-tokens", "5",
                             "--max-continuations", "0"], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=600)
    assert result.returncode in (0, 3), result.stdout[-2000:]  # 3: the random model's answer is incomplete
    row, = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert row["question"] == "What causes scurvy?" and 0 < row["tokens"] <= 5


# --- settings and the GPU path --------------------------------------------------------------------------------------

def test_group_size_must_divide_the_completions_per_update(tmp_path):
    with pytest.raises(UserError, match="GRPO trainer refused these settings.*multiple of NUM_GENERATIONS"):
        grpo.build_grpo_config(rl_cfg(tmp_path, BATCH_SIZE=3), CPU, [], tmp_path, [1.0])


def test_a_t4_gets_the_15_gb_preset_and_a_large_gpu_the_constants(monkeypatch):
    import rl_tuning
    from medreason.config import hardware, settings
    monkeypatch.setattr(hardware, "detect", lambda: hardware.Hardware("cuda", "Tesla T4", (7, 5)))
    monkeypatch.setattr(rl_tuning, "gpu_memory_gib", lambda: 14.7)
    cfg, origins = settings.resolve(vars(rl_tuning), [], automatic=rl_tuning.automatic_preset,
                                    preset_dir=rl_tuning._PRESET_DIR)
    assert cfg.PRESET == "t4" and "15 GB" in origins["PRESET"]
    assert (cfg.NUM_GENERATIONS, cfg.MAX_NEW_TOKENS, cfg.USE_VLLM, cfg.BETA) == (4, 768, False, 0.0)
    assert origins["MAX_SEQ_LENGTH"] == "preset t4"
    assert hardware.choose_precision("auto", hardware.detect(), "unsloth")[0] == "fp16"
    monkeypatch.setattr(rl_tuning, "gpu_memory_gib", lambda: 79.0)
    cfg, origins = settings.resolve(vars(rl_tuning), [], automatic=rl_tuning.automatic_preset,
                                    preset_dir=rl_tuning._PRESET_DIR)
    assert cfg.PRESET == "" and "PRESET" not in origins


def run_stage(*args, timeout=1500):
    return subprocess.run([sys.executable, str(ROOT / "rl_tuning.py"), *args], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_an_unknown_reward_is_one_line_before_any_model_loads(tmp_path, tiny_adapter):
    result = run_stage(f"--SFT_ADAPTER={tiny_adapter}", f"--OUTPUT_DIR={tmp_path}", "--REPORT_TO=none",
                       "--REWARDS={'formatt': 1.0}", timeout=300)
    assert result.returncode == 1 and "REWARDS names 'formatt', which is no reward" in result.stdout
    assert "Traceback" not in result.stdout and "[model]" not in result.stdout


@pytest.mark.e2e
def test_the_whole_stage_runs_on_the_embedded_model(tmp_path):
    """The trainer's demo (SFT), then this stage's demo on it: rewards logged per step, the adapter with every stage
    named, SFT vs RL with intervals and statuses, the reward curves, the card."""
    from conftest import run_script
    sft = run_script(f"--OUTPUT_DIR={tmp_path / 'sft'}", "--REPORT_TO=none", "--EVAL_SAMPLES=1",
                     "--MAX_NEW_TOKENS=64", timeout=1200)
    assert sft.returncode == 0, sft.stdout[-3000:]
    out = tmp_path / "rl"
    result = run_stage(f"--SFT_ADAPTER={tmp_path / 'sft' / 'adapter'}", f"--OUTPUT_DIR={out}", "--MAX_STEPS=2",
                       "--EVAL_SAMPLES=4", "--REPORT_TO=none")
    assert result.returncode == 0, result.stdout[-4000:]
    assert "configs/rl/demo.yaml" in result.stdout and "[rl] step 2/2:" in result.stdout
    results = json.loads((out / "results.json").read_text())
    metrics = results["metrics"]
    assert {"reward_format_first", "reward_correct_last", "reward_length_mean", "accuracy", "sft_accuracy",
            "extraction_rate", "mean_generation_s"} <= set(metrics)
    assert set(results["evaluation"]["statuses"]) == {"sft", "rl"}
    info = json.loads((out / "adapter" / "training_info.json").read_text())
    assert [s["stage"] for s in info["stages"]] == ["sft", "rl"] and info["model_name"] == "embedded"
    assert not (out / "adapter" / "sft").exists()
    report = (out / "evaluation" / "report.md").read_text()
    assert "| metric | SFT | RL | difference |" in report and "## Rewards during training" in report
    assert (out / "evaluation" / "reward_curves.png").is_file()
    card = (out / "model_card.md").read_text()
    assert "## Training: two stages" in card and "**SFT**" in card and "**RL**" in card
