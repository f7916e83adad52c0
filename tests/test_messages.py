"""What a user reads: the estimates (arithmetic, not the wall clock), the lines on over-long prompts and pairs, the
library noise filtered with its reason (the continuous-batching double free: its cause reproduced), and each stage
run on the embedded model printing the project's lines and none of the known noise."""
import copy
import dataclasses
import json
import logging
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED_SAMPLE, run_script
from medreason.config import quiet
from medreason.model import estimates
from medreason.train import preflight
from medreason.model.estimates import Shape
from medreason.config.run_plan import Plan

NOISE = ("ContinuousBatchingLogger", "attempted to free blocks for non-existent request_id",
         "Token indices sequence length is longer", "_C_mxfp8", "torchao", "_pytree", "register_constant",
         "gemm_4bit_forward")
SMALL = Shape(params=100_000_000, layers=20)


# --- the arithmetic of the estimates -----------------------------------------------------------------------------

def test_the_model_shape_counts_the_parameters_a_token_passes(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    shape = estimates.shape_from_config(config)
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert shape.layers == 2 and shape.params == sum(p.numel() for p in model.parameters()) - norms  # tied head
    shape, why = estimates.model_shape(str(tiny_model_dir))
    assert shape.layers == 2 and not why
    missing, why = estimates.model_shape("nobody/not-a-cached-model")
    assert missing is None and "config.json is not on this machine" in why


def test_training_time_is_steps_x_rows_x_tokens_over_the_rate():
    one = estimates.training_seconds(SMALL, 1000, rate=100, precision="fp32", checkpointing=False)
    assert one == pytest.approx(1000 * 4 * SMALL.params / (100e9 * estimates.TRAIN_EFFICIENCY["fp32"]))
    assert estimates.training_seconds(SMALL, 2000, 100, "fp32", False) == pytest.approx(2 * one)
    assert estimates.training_seconds(SMALL, 1000, 200, "fp32", False) == pytest.approx(one / 2)
    assert estimates.training_seconds(SMALL, 1000, 100, "fp32", True) == pytest.approx(1.5 * one)


def test_generation_pays_a_fixed_cost_per_step_and_the_arithmetic_per_token():
    run = estimates.generation_seconds
    base = run(SMALL, answers=8, budget=100, seats=8, prompt_tokens=0, rate=100)
    steps, tokens = 100, 8 * 100 * estimates.ANSWER_FILL  # 8 seats: the longest answer sets the steps
    assert base == pytest.approx(steps * 20 * estimates.STEP_SECONDS_PER_LAYER
                                 + tokens * 2 * SMALL.params / (100e9 * estimates.DECODE_EFFICIENCY))
    # more answers than seats: freed seats refill, so steps = tokens / seats once that exceeds the budget
    many = run(SMALL, 64, 100, 8, 0, 100)
    assert many == pytest.approx(64 * 100 * estimates.ANSWER_FILL / 8 * 20 * estimates.STEP_SECONDS_PER_LAYER
                                 + 8 * (base - steps * 20 * estimates.STEP_SECONDS_PER_LAYER))
    # the batched path runs each batch to its longest answer: 8 batches of 101 steps
    assert run(SMALL, 64, 100, 8, 0, 100, engine="batched") > many
    assert run(SMALL, 0, 100, 8, 0, 100) == 0.0
    assert run(SMALL, 8, 100, 8, prompt_tokens=500, rate=100) > base  # prompts are read too


def preference_cfg(**changes):
    import preference_tuning
    from medreason.config import settings
    cfg, _ = settings.resolve(vars(preference_tuning), [f"--{k}={v}" for k, v in changes.items()],
                              preset_dir=preference_tuning._PRESET_DIR)
    return cfg


def test_the_preference_estimate_grows_with_questions_x_candidates(monkeypatch):
    monkeypatch.setattr("medreason.config.hardware.compute_rate", lambda precision: 150.0)  # a fixed rate: arithmetic only
    cfg = preference_cfg(PRESET="demo")
    plan = Plan("transformers", "cpu", "fp32", False, "adamw_torch")

    def parts(questions, k=cfg.NUM_CANDIDATES):
        asked = dataclasses.replace(cfg, NUM_CANDIDATES=k)  # the settings are frozen: a changed copy
        est = estimates.preference(asked, plan, SMALL, "", questions, 2, 100.0, candidates=True, judge=SMALL, probes=2)
        return {p.name: p for p in est.parts}, est
    four, est = parts(4)
    assert list(four) == ["candidates", "judge", "DPO", "SFT vs DPO"]
    assert est.seconds == pytest.approx(sum(p.seconds for p in four.values()))
    assert "4 questions x 4 answers x <=192(+512) tokens" in four["candidates"].work
    assert f"{4 * 4 + 2} answers x {cfg.JUDGE_SAMPLES} verdicts" in four["judge"].work
    many = parts(56)[0]  # what --DATASET=<58 rows> without the demo's cap asked for: 14x the candidates
    assert many["candidates"].seconds > 5 * four["candidates"].seconds
    assert many["DPO"].seconds == four["DPO"].seconds  # DPO's work is steps x pairs, not questions
    assert est.line().startswith("[estimate] preference stage: about ") and "150 GFLOP/s" in est.line()
    gpu = estimates.preference(cfg, Plan("transformers", "cuda", "bf16", False, "adamw_8bit"), SMALL, "", 4, 2, 100.0,
                               candidates=True, judge=SMALL)
    assert gpu.line() == "[estimate] preference stage: not made: the matmul rate is measured on a CPU, and this run is on cuda"


def test_the_preference_demo_caps_its_questions_and_says_how_to_ask_for_more(tmp_path):
    import preference_tuning
    from medreason.preference import pairs as preference
    cfg = preference_cfg(PRESET="demo", DATASET="rows.jsonl")
    assert cfg.TRAIN_QUESTIONS == 4 and cfg.EVAL_SAMPLES == 2
    train, held = preference.split_held_out(list(range(58)), cfg.EVAL_SAMPLES, cfg.TRAIN_QUESTIONS, cfg.SEED)
    assert (len(train), len(held)) == (4, 2)
    note = preference_tuning.demo_note(cfg)
    assert "at most 4 questions for pairs (--TRAIN_QUESTIONS=N asks more" in note and "2 held out" in note
    assert "handful" not in note and "minutes" not in note  # the minutes come from the [estimate] line


# --- over-long prompts and pairs ---------------------------------------------------------------------------------

def test_over_long_training_rows_are_counted_with_how_much_is_cut(tokenizer, demo_rows, capsys):
    from datasets import Dataset
    from medreason.answers.prompts import get_style, to_conversation
    rows = Dataset.from_list([to_conversation(r, get_style("think_response")) for r in demo_rows[:6]])
    _, stats = preflight.check_lengths(rows, tokenizer, 200, "train")
    out = capsys.readouterr().out
    assert stats["truncated"] > 0 and stats["mean"] <= 200
    assert (f"{stats['truncated']} of 6 rows are longer than MAX_SEQ_LENGTH=200 (by up to {stats['max'] - 200} "
            f"tokens): the trainer cuts their end") in out and f"--MAX_SEQ_LENGTH={stats['max']}" in out


def test_evaluation_says_over_long_prompts_are_answered_whole_and_the_tokenizer_warning_is_dropped(
        tiny_model_dir, tokenizer, capsys):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # a context of 512 tokens
    saved = copy.deepcopy(tokenizer)
    saved.model_max_length = 64  # as Unsloth saves it: the run's MAX_SEQ_LENGTH
    prompts = ["short question", "why? " * 100, "why? " * 300]
    preflight.say_prompt_lengths(model, saved, prompts, "evaluation")
    out = capsys.readouterr().out
    longest = len(saved(prompts[2], add_special_tokens=False)["input_ids"])
    assert (f"[eval] 2 of 3 evaluation prompts are longer than the 64 tokens the adapter was trained on (by up to "
            f"{longest - 64}): they are answered whole, nothing is cut (the model reads up to 512 tokens)") in out
    assert f"1 evaluation prompts exceed the model's context of 512 tokens (by up to {longest - 512})" in out
    preflight.say_prompt_lengths(model, tokenizer, prompts[:1], "evaluation")
    assert capsys.readouterr().out == ""  # nothing over: no line

    # the tokenizer's own warning says "indexing errors" for 64 < n < 512: a false alarm, filtered with its reason
    records = []
    logger = logging.getLogger("transformers.tokenization_utils_base")
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        for installed in (False, True):
            for f in [f for f in logger.filters if isinstance(f, quiet._DropKnown)]:
                logger.removeFilter(f)
            if installed:
                quiet.install()
            saved.deprecation_warnings.pop("sequence-length-is-longer-than-the-specified-maximum", None)
            saved(prompts[1])
            assert any("Token indices" in r.getMessage() for r in records) != installed
            records.clear()
    finally:
        logger.removeHandler(handler)
        quiet.install()


def test_over_long_pairs_say_how_many_trl_cuts_and_by_how_much(tokenizer, capsys):
    from medreason.preference import pairs as preference
    from medreason.preference.pairs import Pair
    from medreason.answers.prompts import get_style
    long_answer = "<think>" + "because " * 120 + "</think><response>x</response>"
    pairs = [Pair("What causes scurvy?", long_answer, "no"), Pair("Dry cough?", "ACE inhibitors.", "Water.")]
    kept, _ = preference.fit_pairs(pairs, get_style("think_response"), tokenizer, max_len=96)
    out = capsys.readouterr().out
    assert len(kept) == 2  # kept, and said: not cut silently
    assert "1 of 2 pairs are longer than MAX_SEQ_LENGTH=96 (by up to " in out
    assert "1 chosen, 0 rejected answers): trl's DPOTrainer keeps their first 96 tokens" in out


# --- the continuous-batching line: its cause ---------------------------------------------------------------------

def test_the_double_free_line_comes_from_cancelling_an_answer_that_already_ended(embedded_dir, tokenizer):
    """generation.py cancels an answer once its closing text is complete. When the token after it ends the answer
    (here: made the end-of-turn token), the request has finished and freed its cache when the cancellation is read,
    and transformers frees it again: a no-op that it logs. Every such line names a request we cancelled, and the
    filter drops exactly those."""
    import torch
    from transformers import AutoModelForCausalLM

    from medreason.answers import generation
    model = AutoModelForCausalLM.from_pretrained(embedded_dir, dtype=torch.float32).eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What causes scurvy?"}], tokenize=False,
                                           add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        generated = model.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False)[0, len(ids):].tolist()
    stop_text = tokenizer.decode(generated[:4], skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert generated[4] not in generated[:4] and stop_text.strip()
    model.generation_config.eos_token_id = generated[4]  # the answer ends right after its closing text
    logger = logging.getLogger("ContinuousBatchingLogger")
    records, handler = [], logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    saved = [f for f in logger.filters if isinstance(f, quiet._DropKnown)]
    for f in saved:
        logger.removeFilter(f)
    try:
        outs = generation.generate(model, tokenizer, [prompt] * 8, 16, 8, progress=False, engine="continuous",
                                   stop_text=stop_text)
        freed = [r for r in records if "attempted to free blocks for non-existent request_id" in r.getMessage()]
        cancelled = set(generation.cancelled_requests())
        records.clear()
        model.generation_config.eos_token_id = tokenizer.eos_token_id  # control: the answer goes on after the tag
        generation.generate(model, tokenizer, [prompt] * 8, 16, 8, progress=False, engine="continuous",
                            stop_text=stop_text)
        assert len(generation.cancelled_requests()) == 8 and not records  # cancelled while running: freed once
    finally:
        logger.removeHandler(handler)
        quiet.install()
    assert all(o.text == stop_text for o in outs)  # every answer stopped at its closing text
    assert freed and {r.getMessage().rsplit(" ", 1)[-1] for r in freed} <= cancelled  # 8 of 8 in runs here
    drop = quiet.KNOWN_HARMLESS["ContinuousBatchingLogger"]
    assert all(drop(r) for r in freed)
    other = logging.LogRecord("ContinuousBatchingLogger", logging.WARNING, "", 0, "CacheAllocator 0 attempted to free "
                              "blocks for non-existent request_id: req_never_cancelled", None, None)
    assert not drop(other)  # a free we did not cause still prints


# --- each stage on the embedded model ----------------------------------------------------------------------------

def stage(script, *args, timeout=900):
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout,
                          env={**__import__("os").environ, "PYTHONUNBUFFERED": "1"})


def assert_quiet(output: str, *expected: str):
    noisy = [line for line in output.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, noisy[:5]
    # Before the settings, only the libraries' own one-line introductions (Unsloth's banner when it is imported,
    # transformers' "[INFO] Running in WANDB offline mode" under the tests' WANDB_MODE), none of them a warning
    lines = [line for line in output.splitlines() if line.strip()]
    header = next(i for i, line in enumerate(lines) if line.startswith("=" * 20))
    assert header <= 4, f"before the project's settings: {lines[:header]}"
    for text in expected:
        assert text in output, text


@pytest.mark.e2e
def test_each_stage_prints_its_settings_estimate_and_counts_and_no_library_noise(tmp_path):
    if not SHARED_SAMPLE.is_file():
        pytest.skip(f"real medical-o1 rows not found at {SHARED_SAMPLE}")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(SHARED_SAMPLE.read_text().splitlines(keepends=True)[:12]))
    sft = run_script(f"--DATASET={rows}", "--MODEL_NAME=embedded", "--MAX_STEPS=2", "--VAL_SIZE=4",
                     "--EVAL_SAMPLES=2", "--MAX_NEW_TOKENS=48", "--EVAL_STEPS=0", "--SAVE_STEPS=2",
                     "--REPORT_TO=none", "--MAX_SEQ_LENGTH=384", f"--OUTPUT_DIR={tmp_path / 'sft'}", timeout=900)
    assert sft.returncode == 0, sft.stdout[-3000:]
    assert_quiet(sft.stdout, "Settings (constants at the top of medical_fine_tuning.py", "[estimate] training: about",
                 "8 training rows, 4 validation rows", "rows are longer than MAX_SEQ_LENGTH=384 (by up to")
    adapter = tmp_path / "sft" / "adapter"
    ev = stage("evaluate.py", "--adapter", str(adapter), "--data", str(rows), "--limit", "3",
               "--max-new-tokens", "32")
    assert ev.returncode == 0, ev.stdout[-3000:]
    assert "[estimate] evaluation: about" in ev.stdout and "3 questions x 2 models x <=32 tokens" in ev.stdout
    assert not [line for line in ev.stdout.splitlines() if any(n in line for n in NOISE)]
    dpo = stage("preference_tuning.py", f"--SFT_ADAPTER={adapter}", f"--DATASET={rows}", "--TRAIN_QUESTIONS=2",
                "--NUM_CANDIDATES=2", "--EVAL_SAMPLES=1", "--MAX_NEW_TOKENS=32", "--MAX_STEPS=1", "--REPORT_TO=none",
                "--JUDGE_SAMPLES=1", "--MIN_MARGIN=0.0", "--JUDGE=reference", f"--OUTPUT_DIR={tmp_path / 'dpo'}")
    assert "[estimate] preference stage: about" in dpo.stdout and "2 questions x 2 answers x <=32(+512) tokens" in dpo.stdout
    assert "at most 2 questions for pairs (--TRAIN_QUESTIONS=N asks more" in dpo.stdout
    assert_quiet(dpo.stdout, "Settings (constants at the top of preference_tuning.py", "[questions] 2 for pairs")
