"""How long a stage will take, computed from the work it will really do and this machine's measured matmul rate
(`hardware.compute_rate`), printed before the stage starts: every "about N minutes" the project prints comes from here.

The cost model (N = the parameters each token passes through: the layers and the output layer, from config.json):
  training      tokens x 4N FLOPs: forward 2N, backward through the frozen weights 2N (a LoRA's own gradients are
                negligible); x 1.5 with gradient checkpointing (the forward again). At TRAIN_EFFICIENCY of the rate.
  reading       tokens x 2N at READ_EFFICIENCY: eval loss, perplexity, DPO's reference model, prompts before answers
  generation    on a CPU a decoding step is not bound by its matrix products: every step pays a fixed cost per layer
                (dispatch, Python, the cache's bookkeeping: STEP_SECONDS_PER_LAYER, measured), and every answer in
                flight its 2N FLOPs at DECODE_EFFICIENCY of the rate. Continuous batching takes max(longest answer,
                all tokens / seats) steps; the batched path runs each batch to its longest answer.
An answer's length is unknown before it is written: it is taken as ANSWER_FILL of its budget (the longest: all of
it), and the line says the bound. `python -m medreason.model.estimates` measures the generation constants again here.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from medreason.answers.generation import GREEDY, continuous_unavailable, generate
from medreason.answers.prompts import generation_prompt
from medreason.config import hardware
from medreason.model.embedded import EMBEDDED, embedded_model_dir


# Measured on the 2-core AMD EPYC of this project's CI (avx512_bf16; fp32 matmul ~150 GFLOP/s, bf16 ~350) with the
# embedded SmolLM2-135M, torch 2.13 / transformers 5.17; `python -m medreason.model.estimates` prints them again.
STEP_SECONDS_PER_LAYER = 0.0015  # fixed cost of one decoding step, per layer: 32-75 ms / step for 30 layers at 1 seat
DECODE_EFFICIENCY = 0.25  # share of the matmul rate one more answer in flight reaches: 4-13 ms per seat-step, 135M
READ_EFFICIENCY = 0.45  # share of the matmul rate a forward pass over whole sequences reaches
TRAIN_EFFICIENCY = {"fp32": 0.45, "bf16": 0.30}  # of the rate, forward + backward (bench/RESULTS.md: transformers
#                                                  fp32 74-90 tokens/s with checkpointing, Unsloth bf16 197 without)
ANSWER_FILL = 0.55  # an answer's average share of its token budget (4,455 of 32 x 256 tokens, bench/RESULTS.md)
CONTINUATION_TOKENS = 2 * 256  # answering.answer_batch continues an answer cut by its budget twice, 256 tokens each
PREFILL_CHUNK = 256  # prompt tokens a continuous-batching step reads (generation.cache_config's max_batch_tokens)
RUBRIC_TOKENS = 130  # the judge's rubric and system prompt around a question and an answer (judging.RUBRIC)


@dataclass(frozen=True)
class Shape:
    """What a token costs in a model: the parameters it passes through, and the layers a decoding step visits."""
    params: int
    layers: int


@dataclass
class Part:
    name: str
    seconds: float
    work: str  # what is done, in the stage's own counts ("16 answers x <=192 tokens")


@dataclass
class Estimate:
    stage: str
    parts: list[Part] = field(default_factory=list)
    basis: str = ""  # the rate it rests on
    note: str = ""  # what it leaves out, or why none was made

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.parts)

    def line(self) -> str:
        if not self.parts:
            return f"[estimate] {self.stage}: {self.note}"
        detail = "; ".join(f"{p.name} {p.work} ~{_duration(p.seconds)}" for p in self.parts)
        return (f"[estimate] {self.stage}: about {_duration(self.seconds)} on this CPU ({self.basis}): {detail}"
                + (f". {self.note}" if self.note else ""))


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


# --- the model --------------------------------------------------------------------------------------------------

def shape_from_config(config: dict) -> Shape:
    """Parameters per token from a config.json: attention (grouped key/value heads) and MLP per layer, and the output
    layer (the input embedding is a lookup, no arithmetic)."""
    config = config.get("text_config", config)
    h, layers = config["hidden_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or h // heads
    kv = config.get("num_key_value_heads") or heads
    attention = 2 * h * heads * head_dim + 2 * h * kv * head_dim
    mlp = 3 * h * config.get("intermediate_size", 4 * h)
    return Shape(layers * (attention + mlp) + config["vocab_size"] * h, layers)


def model_shape(model_name: str) -> tuple[Shape | None, str]:
    """(shape, "") from the model's config.json (a local folder, "embedded", or the Hub cache), else (None, why)."""
    path = None
    if model_name == EMBEDDED:
        path = Path(embedded_model_dir()) / "config.json"
    elif Path(model_name).expanduser().is_dir():
        path = Path(model_name).expanduser() / "config.json"
    else:
        from huggingface_hub import try_to_load_from_cache
        cached = try_to_load_from_cache(model_name, "config.json")
        path = Path(cached) if isinstance(cached, str) else None
    if path is None or not path.is_file():
        return None, f"{model_name}'s config.json is not on this machine yet (it comes with the download)"
    try:
        return shape_from_config(json.loads(path.read_text())), ""
    except (ValueError, KeyError, TypeError) as e:
        return None, f"{path} does not say the model's size ({type(e).__name__}: {e})"


def rate_for(precision: str, device: str) -> tuple[float | None, str]:
    """(GFLOP/s, basis) measured on this CPU for the run's precision; (None, why) on a GPU."""
    if device != "cpu":
        return None, f"the matmul rate is measured on a CPU, and this run is on {device}"
    precision = precision if precision in ("fp32", "bf16") else "fp32"
    rate = hardware.compute_rate(precision)
    return rate, f"{precision} matmul measured at {rate:.0f} GFLOP/s"


# --- the arithmetic ---------------------------------------------------------------------------------------------

def training_seconds(shape: Shape, tokens: float, rate: float, precision: str, checkpointing: bool) -> float:
    flops = tokens * 4 * shape.params * (1.5 if checkpointing else 1.0)
    return flops / (rate * 1e9 * TRAIN_EFFICIENCY.get(precision, TRAIN_EFFICIENCY["fp32"]))


def reading_seconds(shape: Shape, tokens: float, rate: float) -> float:
    return tokens * 2 * shape.params / (rate * 1e9 * READ_EFFICIENCY)


def generation_seconds(shape: Shape, answers: int, budget: int, seats: int, prompt_tokens: float, rate: float,
                       engine: str = "continuous", fill: float = ANSWER_FILL) -> float:
    """Seconds to write `answers` answers of at most `budget` tokens, `seats` at a time, each after a prompt of
    `prompt_tokens`: decoding steps x the fixed cost of a step, plus every token's arithmetic."""
    if answers <= 0:
        return 0.0
    seats = max(1, min(seats, answers))
    tokens = answers * budget * fill
    if engine == "continuous":  # freed seats are refilled: all tokens / seats, but never less than the longest
        steps = max(budget, tokens / seats) + answers * prompt_tokens / PREFILL_CHUNK
    else:  # each batch runs to its longest answer; its prompts are read in one step
        steps = math.ceil(answers / seats) * (budget + 1)
    step_cost = shape.layers * STEP_SECONDS_PER_LAYER
    per_token = 2 * shape.params / (rate * 1e9 * DECODE_EFFICIENCY)
    return steps * step_cost + tokens * per_token + reading_seconds(shape, answers * prompt_tokens, rate)


# --- each stage -------------------------------------------------------------------------------------------------

def training(cfg, plan, model_path: str, lengths: dict | None, val_rows: int, safety_asks: int = 0) -> Estimate:
    """The trainer: MAX_STEPS x rows per step x tokens per row, the eval loss, and base vs tuned answers (held-out
    questions and safety_asks safety questions)."""
    est = Estimate("training")
    shape, why = model_shape(model_path)
    rate, basis = rate_for(plan.precision, plan.device)
    if shape is None or rate is None or not lengths:
        est.note = "not made: " + (why if shape is None else basis if rate is None else
                                   "the token counts need the model's tokenizer, which this dry run could not load")
        return est
    est.basis = f"{basis}, {shape.params / 1e6:.0f}M parameters per token"
    per_row = min(lengths["mean"], cfg.MAX_SEQ_LENGTH)
    rows_per_step = plan.processes * cfg.BATCH_SIZE * cfg.GRAD_ACCUM
    tokens = cfg.MAX_STEPS * rows_per_step * per_row
    est.parts.append(Part("train", training_seconds(shape, tokens, rate, plan.precision, cfg.GRADIENT_CHECKPOINTING),
                          f"{cfg.MAX_STEPS} steps x {rows_per_step} rows x ~{per_row:.0f} tokens"))
    if val_rows:
        evals = (cfg.MAX_STEPS // cfg.EVAL_STEPS if cfg.EVAL_STEPS else 0) + 1
        est.parts.append(Part("eval loss", reading_seconds(shape, evals * val_rows * per_row, rate),
                              f"{evals} x {val_rows} rows"))
        held_out = min(cfg.EVAL_SAMPLES, val_rows)
        asked = held_out + (safety_asks if held_out else 0)
        prompt = lengths.get("prompt_mean", per_row / 3)
        engine = "batched" if plan.backend == "unsloth" else "continuous"
        seconds = 2 * (generation_seconds(shape, asked, cfg.MAX_NEW_TOKENS, cfg.EVAL_BATCH_SIZE, prompt, rate, engine)
                       + reading_seconds(shape, held_out * per_row, rate))  # + the reference answers' perplexity
        est.parts.append(Part("answers", seconds, f"{asked} questions x 2 models x <={cfg.MAX_NEW_TOKENS} tokens"))
    return est


def evaluation(shape: Shape | None, why: str, rows: int, models: int, budget: int, seats: int, prompt_tokens: float,
               reference_tokens: float, precision: str, device: str, engine: str) -> Estimate:
    """evaluate.py: rows x models answers (and the reference answers' perplexity on medical-o1 rows)."""
    est = Estimate("evaluation")
    rate, basis = rate_for(precision, device)
    if shape is None or rate is None:
        est.note = "not made: " + (why if shape is None else basis)
        return est
    est.basis = f"{basis}, {shape.params / 1e6:.0f}M parameters per token"
    est.parts.append(Part("answers", models * generation_seconds(shape, rows, budget, seats, prompt_tokens, rate,
                                                                 engine),
                          f"{rows} questions x {models} model{'s' if models > 1 else ''} x <={budget} tokens"))
    if reference_tokens:
        est.parts.append(Part("perplexity", models * reading_seconds(shape, rows * reference_tokens, rate),
                              f"{rows} reference answers"))
    return est


def say_evaluation(loaded, rows: list[dict], kind: str, questions: list[str], budget: int, batch_size: int,
                   include_base: bool, engine: str) -> Estimate:
    """evaluate.py's [estimate] line for the loaded model (its own config, dtype and device) and these rows."""
    import torch

    model, tokenizer = loaded.model, loaded.tokenizer
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dtype = next(base.parameters()).dtype
    precision = "bf16" if dtype == torch.bfloat16 or loaded.backend == "unsloth" else "fp32"

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    prompt = sum(count(generation_prompt(tokenizer, q, loaded.style)) for q in questions)
    reference = sum(count(r["Response"]) for r in rows) if kind == "reasoning" else 0
    runs = engine if engine != "auto" else ("batched" if continuous_unavailable(model, GREEDY, None, 0)
                                            else "continuous")
    shape = shape_from_config(base.config.to_dict())
    return say(evaluation(shape, "", len(rows), 2 if include_base else 1, budget, batch_size,
                          prompt / max(len(rows), 1), (prompt + reference) / max(len(rows), 1) if reference else 0,
                          precision, model.device.type, runs))


def preference(cfg, plan, shape: Shape | None, why: str, questions: int, held_out: int, prompt_tokens: float,
               candidates: bool, judge: Shape | None = None, judge_why: str = "",
               reference_tokens: float = 0.0, probes: int = 0) -> Estimate:
    """preference_tuning.py: questions x candidates x tokens (an answer cut by its budget is continued: answering.py),
    the judge's verdicts (judge: its shape when it is a model; each reads the rubric, the question, the answer and
    the reference; probes: the verdicts asked before any candidate), DPO steps x pairs x 2 sequences (policy forward and backward, the frozen reference forward), then
    SFT vs DPO on the held-out questions (their answers, the references' perplexity, the judge)."""
    est = Estimate("preference stage")
    rate, basis = rate_for(plan.precision, plan.device)
    if shape is None or rate is None:
        est.note = "not made: " + (why if shape is None else basis)
        return est
    est.basis = f"{basis}, {shape.params / 1e6:.0f}M parameters per token"
    budget = cfg.MAX_NEW_TOKENS
    longest = budget + CONTINUATION_TOKENS  # a candidate: its budget, then up to two continuations
    answer = longest * ANSWER_FILL
    verdict_prompt = RUBRIC_TOKENS + prompt_tokens + answer + reference_tokens

    def verdicts(n: int) -> float:
        return generation_seconds(judge, n * cfg.JUDGE_SAMPLES, cfg.JUDGE_MAX_NEW_TOKENS, cfg.EVAL_BATCH_SIZE,
                                  verdict_prompt, rate, fill=1.0) if judge else 0.0

    if judge_why:
        est.note = f"the judge is not counted: {judge_why}"
    if candidates:
        k = cfg.NUM_CANDIDATES
        est.parts.append(Part("candidates", generation_seconds(shape, questions * k, longest,
                                                               cfg.GENERATION_BATCH_SIZE, prompt_tokens, rate),
                              f"{questions} questions x {k} answers x <={budget}(+{CONTINUATION_TOKENS}) tokens"))
        if judge:
            n = questions * k + probes
            est.parts.append(Part("judge", verdicts(n), f"{n} answers x {cfg.JUDGE_SAMPLES} verdicts"))
    pairs = plan.processes * cfg.BATCH_SIZE * cfg.GRAD_ACCUM
    sequence = prompt_tokens + answer
    tokens = cfg.MAX_STEPS * pairs * 2 * sequence
    est.parts.append(Part("DPO", training_seconds(shape, tokens, rate, plan.precision, cfg.GRADIENT_CHECKPOINTING)
                          + reading_seconds(shape, tokens, rate),
                          f"{cfg.MAX_STEPS} steps x {pairs} pairs x 2 x ~{sequence:.0f} tokens"))
    if held_out:
        answers = 2 * (generation_seconds(shape, held_out, budget, cfg.EVAL_BATCH_SIZE, prompt_tokens, rate)
                       + reading_seconds(shape, held_out * (prompt_tokens + reference_tokens), rate))
        est.parts.append(Part("SFT vs DPO", answers + verdicts(2 * held_out),
                              f"{held_out} questions x 2 models x <={budget} tokens"))
    return est


def say(estimate: Estimate) -> Estimate:
    print(estimate.line())
    return estimate


# --- measuring the generation constants again ---------------------------------------------------------------------

def calibrate(seats=(1, 8), new_tokens: int = 48) -> dict:
    """Time continuous-batching decoding of the embedded model in fp32 at two seat counts; the fixed cost of a step
    per layer and the per-answer share of the matmul rate follow from the two timings."""
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = str(embedded_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    shape = shape_from_config(model.config.to_dict())
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Explain how the kidneys regulate blood "
                                                                       "pressure, step by step."}],
                                           tokenize=False, add_generation_prompt=True)
    per_step = {}
    for n in seats:
        generate(model, tokenizer, [prompt] * n, 8, n, progress=False, engine="continuous")  # warm-up
        start = time.perf_counter()
        outs = generate(model, tokenizer, [prompt] * n, new_tokens, n, progress=False, engine="continuous",
                        min_new_tokens=0)
        steps = max(o.tokens for o in outs)
        per_step[n] = (time.perf_counter() - start) / max(steps, 1)
    (low, t_low), (high, t_high) = sorted(per_step.items())
    per_seat = max((t_high - t_low) / (high - low), 1e-6)
    rate = hardware.compute_rate("fp32")
    return {"seconds_per_step": per_step, "STEP_SECONDS_PER_LAYER": max(t_low - per_seat * low, 0) / shape.layers,
            "DECODE_EFFICIENCY": 2 * shape.params / (rate * 1e9 * per_seat), "fp32_gflops": rate}


if __name__ == "__main__":
    print(calibrate())
