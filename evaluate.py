"""Evaluate a fine-tuned adapter against its base model on the same prompts.

    python evaluate.py --adapter outputs/medical-llama-3.2-3b/adapter                     # its held-out rows
    python evaluate.py --adapter <dir> --data ../shared/data/medmcqa_dev.jsonl --limit 50 --output eval/medmcqa
    python evaluate.py --adapter <dir> --benchmarks medqa,medmcqa,pubmedqa,mmlu-pro-health --protocol huatuo

medical-o1 rows (Question, Complex_CoT, Response) get ROUGE-L, format compliance and answer perplexity;
multiple-choice rows (question, options, answer) get accuracy and extraction rate (and format compliance).
Writes results.json, report.md, metrics.png and, when the training log is found, loss_curve.png.
--benchmarks: exam benchmarks (medreason/evaluate/benchmarks.py, or your own configs/benchmarks/*.yaml; --data adds a local
file in our layout) under a named protocol (medreason/evaluate/protocols.py: strict or huatuo), base vs tuned, with intervals.
"""
import argparse
import json
import random
import time
from pathlib import Path

LIMIT = 50  # rows evaluated (seeded sample); 0 = all. A T4 answers ~50 questions in a few minutes
MAX_NEW_TOKENS = 1024  # per answer, when the adapter records no budget of its own (the run's MAX_NEW_TOKENS wins)
ENGINE = "auto"  # "auto": continuous batching where it applies; "continuous" or "batched" (see medreason/answers/generation.py)
BATCH_SIZE = 8  # answers generated together (left-padded, grouped by length); lower it if out of memory
SEED = 3407  # the sample of rows and the bootstrap
PROTOCOL = "strict"  # exam benchmarks: "strict" (greedy, last explicit answer) or "huatuo" (HuatuoGPT-o1's eval)
THINK_BUDGET = 0  # benchmarks: tokens of reasoning before it is closed and the answer asked for; 0 = no budget
ANSWER_BUDGET = 128  # benchmarks: tokens for the answer once the thinking budget closed the reasoning


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--adapter", required=True, help="adapter folder or Hub repo id")
    p.add_argument("--data", type=Path, help="JSONL/JSON/CSV/Parquet rows (default: the run's validation.jsonl)")
    p.add_argument("--limit", type=int, default=LIMIT)
    p.add_argument("--output", type=Path, help="report folder (default: <run>/evaluation)")
    p.add_argument("--max-new-tokens", type=int, help=f"per answer (default: the budget the run trained for, saved "
                                                      f"with the adapter; else {MAX_NEW_TOKENS})")
    p.add_argument("--engine", default=ENGINE, choices=["auto", "continuous", "batched"])
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--base-model", help="base model for the adapter (default: the one it was trained on)")
    p.add_argument("--backend", default="auto", choices=["auto", "unsloth", "transformers"])
    p.add_argument("--no-base", action="store_true", help="evaluate the tuned model only")
    p.add_argument("--safety", action="store_true", help="the project's held-out safety set alone: refusal of unsafe "
                   "asks and over-refusal of safe look-alikes, base vs tuned (--limit: questions of each kind)")
    p.add_argument("--benchmarks", help="comma-separated exam benchmarks: medqa, medmcqa, pubmedqa, mmlu-pro-health, "
                                        "or your own configs/benchmarks/<name>.yaml; --data adds a local file")
    p.add_argument("--protocol", default=PROTOCOL, choices=["strict", "huatuo"])
    p.add_argument("--think-budget", type=int, default=THINK_BUDGET, help="benchmarks: reasoning tokens before the "
                                                                          "answer is asked for (0 = none)")
    p.add_argument("--answer-budget", type=int, default=ANSWER_BUDGET)
    return p.parse_args(argv)


def load_rows(path: Path, limit: int, seed: int):
    from medreason.data import readers
    from medreason.evaluate import comparison
    records = readers.load_records(str(path))
    kind = comparison.detect_kind(records, str(path))
    rows = readers.validate(records, str(path))[0] if kind == "reasoning" else comparison.validate_mcq(records, str(path))
    if limit and limit < len(rows):
        rows = random.Random(seed).sample(rows, limit)
    return rows, kind


def read_history(path: Path) -> list | None:
    """The run's training log for the loss chart; a damaged one is skipped (the chart is optional), not fatal."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        print(f"[eval] {path} is not readable ({type(e).__name__}); the report has no loss curve")
        return None


def main(argv) -> dict:
    args = parse_args(argv)
    from medreason.config import tracking
    from medreason.evaluate import comparison, report
    from medreason.model import for_inference
    from medreason.config.errors import UserError
    tracking.load_secrets()
    if args.safety:  # the safety set alone (medreason/evaluate/safety.py)
        from medreason.evaluate.safety import evaluate_cli
        return evaluate_cli(args)
    if args.benchmarks:  # exam benchmarks under a named protocol (medreason/evaluate/benchmarks.py, protocols.py)
        return run_benchmarks(args)
    run_dir = Path(args.adapter).parent if Path(args.adapter).is_dir() else None
    data_path = args.data or (run_dir / "validation.jsonl" if run_dir else None)
    if not data_path or not data_path.is_file():
        raise UserError(f"no rows to evaluate: {data_path or '--data not given'}. Fix: --data <file of medical-o1 "
                        f"or multiple-choice rows>, e.g. --data ../shared/data/medmcqa_dev.jsonl.")
    rows, kind = load_rows(data_path, args.limit, args.seed)  # before any model loads
    output = args.output or (run_dir / "evaluation" if run_dir else Path("evaluation"))
    print(f"[eval] {len(rows)} {kind} rows from {data_path} -> {output}")
    backend = for_inference.choose_backend(args.backend)
    loaded = for_inference.load(args.adapter, args.base_model, backend)
    if loaded.kind != "adapter" and not args.no_base:
        raise UserError(f"{args.adapter} is a merged model: there is no adapter to disable for the base "
                        f"comparison. Fix: pass the adapter folder, or --no-base.")
    budget, why = loaded.budget(args.max_new_tokens, MAX_NEW_TOKENS)
    print(f"[eval] {budget} new tokens per answer ({why})")
    from medreason.model.estimates import say_evaluation  # rows x models x tokens at this CPU's measured rate
    say_evaluation(loaded, rows, kind, comparison.questions_for(rows, kind), budget, args.batch_size,
                   not args.no_base, args.engine)
    start = time.time()
    results = comparison.compare(loaded.model, loaded.tokenizer, rows, kind, loaded.style, budget, args.batch_size,
                                 seed=args.seed, include_base=not args.no_base, engine=args.engine)
    log_path = run_dir / "log_history.json" if run_dir else None
    history = read_history(log_path) if log_path and log_path.is_file() else None
    meta = {"adapter": str(args.adapter), "base_model": loaded.base_model, "data": str(data_path),
            "max_new_tokens": budget, "engine": args.engine, "seconds": round(time.time() - start, 1)}
    files = report.write_report(output, results, rows, kind, meta, history)
    table = report.metrics_json(results)
    for name, metric in table["tuned"].items():
        base = f"base {table['base'][name]['value']:.3f} -> " if "base" in table else ""
        print(f"  {name:<18} {base}tuned {metric['value']:.3f}  (n = {metric['n']})")
    print(f"[eval] report: {files['report']}")
    return table


def training_rows(info: dict) -> list[dict] | None:
    """The rows the adapter was trained on, when its DATASET (training_info.json) is a readable local file: the
    report checks them against the benchmark questions. None when they cannot be read here."""
    from medreason.data import readers
    source = (info.get("trained_by") or {}).get("DATASET")
    if not source or not Path(source).is_file():
        return None
    try:
        return readers.load_records(source)
    except Exception as e:  # noqa: BLE001 - the check is a note in the report, never a reason to stop
        print(f"[bench] contamination not checked: {source} unreadable ({type(e).__name__})")
        return None


def run_benchmarks(args) -> dict:
    """Exam benchmarks, base vs tuned, under one protocol: results.json, report.md, metrics.png."""
    from medreason.evaluate import benchmarks, protocols, report
    from medreason.model import for_inference
    from medreason.config.errors import UserError
    if args.think_budget < 0 or args.answer_budget < 1:
        raise UserError(f"--think-budget {args.think_budget} / --answer-budget {args.answer_budget}. Fix: a "
                        f"thinking budget of 0 (none) or more tokens, and an answer budget of at least 1.")
    suites = protocols.load_suites(args.benchmarks, args.limit, args.seed, args.data)  # before any model loads
    run_dir = Path(args.adapter).parent if Path(args.adapter).is_dir() else None
    output = args.output or (run_dir / "benchmarks" if run_dir else Path("benchmarks"))
    loaded = for_inference.load(args.adapter, args.base_model, for_inference.choose_backend(args.backend))
    if loaded.kind != "adapter" and not args.no_base:
        raise UserError(f"{args.adapter} is a merged model: there is no adapter to disable for the base "
                        f"comparison. Fix: pass the adapter folder, or --no-base.")
    if args.protocol == "huatuo" and args.max_new_tokens is None:  # the protocol's own budget, as its eval.py
        budget, why = protocols.HUATUO_MAX_NEW_TOKENS, "HuatuoGPT-o1's eval.py default"
    else:
        budget, why = loaded.budget(args.max_new_tokens, MAX_NEW_TOKENS)
    think = args.think_budget or None
    print(f"[bench] protocol {args.protocol}; {budget} new tokens per answer ({why})"
          + (f"; thinking budget {think} + {args.answer_budget} to answer" if think else ""))
    start = time.time()
    table, answered = protocols.evaluate_benchmarks(
        loaded.model, loaded.tokenizer, suites, args.protocol, loaded.style, budget, args.batch_size, args.engine,
        args.seed, think, args.answer_budget, include_base=not args.no_base)
    trained_on = training_rows(loaded.info)
    if trained_on:
        table["contamination"] = benchmarks.contamination(trained_on, suites)
    meta = {"adapter": str(args.adapter), "base_model": loaded.base_model, "max_new_tokens": budget,
            "engine": args.engine, "seconds": round(time.time() - start, 1)}
    files = report.write_benchmark_report(output, table, answered, suites, meta)
    for line in report.benchmark_lines(table):
        print("  " + line)
    print(f"[bench] report: {files['report']}")
    return table


if __name__ == "__main__":
    from medreason.config.errors import run_cli
    run_cli(main)
