"""How an exam benchmark is asked and scored. Two protocols, named in every report:

  strict  our default: the run's own prompt style (mcq_question), greedy, the letter from the last explicit answer
          (choices.extract_choice); "A or B", no letter or several letters = an extraction failure, scored wrong
  huatuo  HuatuoGPT-o1's evaluation (FreedomIntelligence/HuatuoGPT-o1 evaluation/eval.py and scorer.py, re-written
          here): its user prompt alone ("Please answer the following multiple-choice question:" + the options),
          sampled at temperature 0.5 / top-p 0.9, one sample per question (seeded); the letter is the first and the
          last one named ("answer is X", else a lone option letter, else an option's text; else the most similar
          option, which counts as an extraction failure but is still scored, as theirs is), and the benchmark's
          accuracy is the better of first-letter and last-letter accuracy, as in their scorer

Accuracy, extraction-failure rate and answer statuses per benchmark with 95% bootstrap intervals; the average over
benchmarks (each weighted equally) with an interval resampling each benchmark's questions.
"""
from __future__ import annotations

import dataclasses
import difflib
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from medreason.answers.answering import answer_batch
from medreason.answers.choices import extract_choice, mcq_question
from medreason.answers.generation import GREEDY, Sampling
from medreason.answers.prompts import PromptStyle
from medreason.config.distributed import is_main
from medreason.config.errors import UserError, set_run_context
from medreason.evaluate import benchmarks
from medreason.evaluate.comparison import mean_metric
from medreason.evaluate.report import benchmark_lines, write_benchmark_report

HUATUO_PROMPT = "Please answer the following multiple-choice question:\n{question}\n{option_str}"
HUATUO_SAMPLING = Sampling(do_sample=True, temperature=0.5, top_p=0.9)  # eval.py's call_model
HUATUO_MAX_NEW_TOKENS = 2000  # eval.py's --max_new_tokens default
PROTOCOLS = ("strict", "huatuo")


@dataclass
class Scored:
    """One benchmark's answers from one model under one protocol."""
    answers: list  # answering.Answer
    letters: list  # the letter scored per answer (None: nothing extracted)
    correct: list[float]
    extracted: list[float]
    metrics: dict = field(default_factory=dict)


def huatuo_question(question: str, options: dict[str, str]) -> str:
    option_str = "\n".join(f"{letter}. {text}" for letter, text in options.items())
    return HUATUO_PROMPT.format(question=question, option_str=option_str)


_ANSWER_IS = re.compile(r"answer is\s*?([A-N])", re.S)


def huatuo_choice(text: str, options: dict[str, str]) -> tuple[str, str, int]:
    """(first letter, last letter, how found): 1 a letter ("answer is X" or a lone option letter), 2 an option's
    text, 3 no letter nor option text (the most similar option's letter: a guess)."""
    if "## Final Response\n\n" in text:
        text = text.split("## Final Response\n\n")[-1]
    found = _ANSWER_IS.findall(text)
    if not found:
        letters = "ABCDEFGHIJKLMN"[:len(options)]
        # A letter standing alone (not the article "a"/"A "), as their non-strict pattern takes it.
        found = [m.group(2) for m in re.finditer(
            r"(\W|^|is )(?![aA] )([" + letters + r"])(?=\W|$)", text, re.S)]
    if found:
        return found[0], found[-1], 1
    lowered = text.lower()
    positions = sorted((lowered.find(v.lower()), k) for k, v in options.items() if v.strip() and v.lower() in lowered)
    if positions:
        last = max(((lowered.rfind(options[k].lower()), k) for _, k in positions))[1]
        return positions[0][1], last, 2
    similar = max(options, key=lambda k: difflib.SequenceMatcher(None, options[k].lower(), lowered).ratio())
    return similar, similar, 3


def ask(rows: list[dict], protocol: str, style: PromptStyle) -> tuple[list[str], PromptStyle, Sampling]:
    """The user turns, the prompt style they are asked in, and the sampling of a protocol."""
    if protocol == "huatuo":
        bare = dataclasses.replace(style, system_prompt="", user_template="{question}")  # their user turn alone
        return [huatuo_question(r["question"], r["options"]) for r in rows], bare, HUATUO_SAMPLING
    return [mcq_question(r["question"], r["options"]) for r in rows], style, GREEDY


def run(model, tokenizer, rows: list[dict], protocol: str, style: PromptStyle, max_new_tokens: int,
        batch_size: int, engine: str = "auto", seed: int = 0, think_budget: int | None = None,
        answer_budget: int = 128) -> Scored:
    """Answer the rows under the protocol, through the one engine (answering.answer_batch), and score them."""
    questions, asked_style, sampling = ask(rows, protocol, style)
    # No continuations: an exam answer has its token budget, and the thinking budget is the one repair.
    answers = answer_batch(model, tokenizer, questions, asked_style, max_new_tokens, sampling=sampling,
                           max_continuations=0, engine=engine, seed=seed if sampling.do_sample else None,
                           batch_size=batch_size, think_budget=think_budget, answer_budget=answer_budget)
    return score(rows, answers, protocol, asked_style, seed)


def score(rows: list[dict], answers: list, protocol: str, style, seed: int = 0) -> Scored:
    if protocol == "huatuo":
        picks = [huatuo_choice(a.text, r["options"]) for a, r in zip(answers, rows)]
        first = [float(p[0] == r["answer"]) for p, r in zip(picks, rows)]
        last = [float(p[1] == r["answer"]) for p, r in zip(picks, rows)]
        use_last = sum(last) >= sum(first)
        letters = [p[1] if use_last else p[0] for p in picks]
        correct, extracted = (last if use_last else first), [float(p[2] < 3) for p in picks]
        position = "last" if use_last else "first"
    else:
        letters = [extract_choice(a.text, r["options"], style) for a, r in zip(answers, rows)]
        correct = [float(letter == r["answer"]) for letter, r in zip(letters, rows)]
        extracted, position = [float(letter is not None) for letter in letters], "last explicit"
    scored = Scored(answers, letters, correct, extracted)
    statuses = [a.status for a in answers]
    scored.metrics = {
        "accuracy": mean_metric(correct, seed=seed), "extraction_rate": mean_metric(extracted, seed=seed),
        "extraction_failure": sum(1 - e for e in extracted) / max(len(extracted), 1),
        "letter": position, "statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
        "budget_closed": sum(bool(getattr(a, "budget_closed", False)) for a in answers),
        "mean_tokens": sum(a.tokens for a in answers) / max(len(answers), 1),
        "seconds": max((a.seconds for a in answers), default=0.0), "n": len(answers)}
    return scored


def average(per_benchmark: dict[str, list[float]], resamples: int = 1000, seed: int = 0) -> dict:
    """Mean accuracy over benchmarks (each weighted equally) with a 95% interval that resamples every benchmark's
    questions independently."""
    lists = [v for v in per_benchmark.values() if v]
    if not lists:
        return {"value": float("nan"), "ci95": [float("nan")] * 2, "n": 0}
    value = sum(sum(v) / len(v) for v in lists) / len(lists)
    rng = random.Random(seed)
    stats = sorted(sum(sum(v[rng.randrange(len(v))] for _ in v) / len(v) for v in lists) / len(lists)
                   for _ in range(resamples))
    return {"value": value, "ci95": [stats[int(0.025 * (resamples - 1))], stats[-1 - int(0.025 * (resamples - 1))]],
            "n": sum(len(v) for v in lists), "benchmarks": len(lists)}


def evaluate_benchmarks(model, tokenizer, suites: dict, protocol: str, style: PromptStyle, max_new_tokens: int,
                        batch_size: int, engine: str = "auto", seed: int = 0, think_budget: int | None = None,
                        answer_budget: int = 128, include_base: bool = True) -> tuple[dict, dict]:
    """Every benchmark (suites: name -> (Benchmark, rows, how they were sampled)) answered by the base model (the
    adapter disabled) and the tuned one. Returns (the results table for results.json/report/card, the Scored
    answers by benchmark and model)."""
    answered: dict[str, dict[str, Scored]] = {}
    models = (["base"] if include_base else []) + ["tuned"]
    for name, (bench, rows, _) in suites.items():
        answered[name] = {}
        for which in models:
            print(f"[bench] {name}: {which} model answering {len(rows)} questions ({protocol} protocol)")
            if which == "base":
                with model.disable_adapter():
                    answered[name][which] = run(model, tokenizer, rows, protocol, style, max_new_tokens, batch_size,
                                                engine, seed, think_budget, answer_budget)
            else:
                answered[name][which] = run(model, tokenizer, rows, protocol, style, max_new_tokens, batch_size,
                                            engine, seed, think_budget, answer_budget)
    table = {"protocol": protocol, "protocol_detail": describe(protocol, max_new_tokens, seed, think_budget),
             "think_budget": think_budget, "answer_budget": answer_budget if think_budget else None,
             "benchmarks": {}, "average": {}}
    for name, (bench, rows, sampled) in suites.items():
        table["benchmarks"][name] = {
            "dataset": bench.label, "dataset_id": bench.dataset, "subset": bench.subset, "split": bench.split,
            "description": bench.description, "n": len(rows), "sampled": sampled,
            "references": [dataclasses.asdict(r) for r in bench.references],
            **{which: scored.metrics for which, scored in answered[name].items()}}
    for which in models:
        table["average"][which] = average({n: answered[n][which].correct for n in answered}, seed=seed)
    return table, answered


def describe(protocol: str, max_new_tokens: int, seed: int, think_budget: int | None = None) -> str:
    tokens = f"a thinking budget of {think_budget} tokens" if think_budget else f"up to {max_new_tokens} new tokens"
    if protocol == "huatuo":
        return (f"HuatuoGPT-o1's prompt and scorer, sampled (temperature {HUATUO_SAMPLING.temperature}, top-p "
                f"{HUATUO_SAMPLING.top_p}), 1 sample per question, seed {seed}, {tokens}; "
                f"accuracy = the better of first-letter and last-letter scoring")
    return (f"the run's prompt style, greedy, {tokens}; the letter from the last explicit "
            f"answer (none or several = extraction failure, scored wrong)")


def load_suites(names: str, limit: int, seed: int, data=None) -> dict:
    """name -> (Benchmark, rows, how they were sampled): every benchmark loaded (and a local file in our layout)
    before any model loads; --limit / BENCHMARK_LIMIT takes a seeded sample stratified by the correct letter."""
    declared = benchmarks.resolve(names) if names else []
    if data:
        if not Path(data).is_file():
            raise UserError(f"--data {data}: no such file. Fix: a JSONL of question/options/answer rows.")
        declared.append(benchmarks.local_file(Path(data)))
    suites = {}
    for bench in declared:
        rows = benchmarks.load(bench)
        chosen = benchmarks.stratified_sample(rows, limit, seed)
        sampled = (f"a seeded (seed {seed}) sample of {len(chosen)} of {len(rows)} rows, stratified by the correct "
                   f"letter" if len(chosen) < len(rows) else f"all {len(rows)} rows")
        print(f"[bench] {bench.name}: {bench.label}: {sampled}")
        suites[bench.name] = (bench, chosen, sampled)
    return suites


def after_training(model, tokenizer, cfg, style: PromptStyle, out, train_rows=None) -> dict | None:
    """The trainer's BENCHMARKS, base vs tuned (strict protocol, BENCHMARK_LIMIT questions each), written to
    <OUTPUT_DIR>/benchmarks (report.md, results.json: the model card's model-index reads it)."""
    names = getattr(cfg, "BENCHMARKS", "")
    if not names or not is_main():
        return None
    set_run_context(step="7. exam benchmarks (the adapter is saved)")
    suites = load_suites(names, cfg.BENCHMARK_LIMIT, cfg.SEED)
    think = getattr(cfg, "THINK_BUDGET", None) or None
    table, answered = evaluate_benchmarks(model, tokenizer, suites, "strict", style, cfg.MAX_NEW_TOKENS,
                                          cfg.EVAL_BATCH_SIZE, seed=cfg.SEED, think_budget=think,
                                          answer_budget=getattr(cfg, "ANSWER_BUDGET", 128))
    if train_rows is not None:
        table["contamination"] = benchmarks.contamination(list(train_rows), suites)
    write_benchmark_report(Path(out) / "benchmarks", table, answered, suites,
                           {"adapter": str(Path(out) / "adapter"), "max_new_tokens": cfg.MAX_NEW_TOKENS})
    for line in benchmark_lines(table):
        print("[bench] " + line)
    return table
