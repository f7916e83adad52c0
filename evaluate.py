"""Evaluate a fine-tuned adapter against its base model on the same prompts.

    python evaluate.py --adapter outputs/medical-llama-3.2-3b/adapter                     # its held-out rows
    python evaluate.py --adapter <dir> --data ../shared/data/medmcqa_dev.jsonl --limit 50 --output eval/medmcqa

medical-o1 rows (Question, Complex_CoT, Response) get ROUGE-L, format compliance and answer perplexity;
multiple-choice rows (question, options, answer) get accuracy and extraction rate (and format compliance).
Writes results.json, report.md, metrics.png and, when the training log is found, loss_curve.png.
"""
import argparse
import json
import random
import time
from pathlib import Path

LIMIT = 50  # rows evaluated (seeded sample); 0 = all. A T4 answers ~50 questions in a few minutes
MAX_NEW_TOKENS = 1024  # per answer, when the adapter records no budget of its own (the run's MAX_NEW_TOKENS wins)
ENGINE = "auto"  # "auto": continuous batching where it applies; "continuous" or "batched" (see medreason/generation.py)
BATCH_SIZE = 8  # answers generated together (left-padded, grouped by length); lower it if out of memory
SEED = 3407  # the sample of rows and the bootstrap


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
    return p.parse_args(argv)


def load_rows(path: Path, limit: int, seed: int):
    from medreason import data, evaluation
    records = data.load_records(str(path))
    kind = evaluation.detect_kind(records, str(path))
    rows = data.validate(records, str(path))[0] if kind == "reasoning" else evaluation.validate_mcq(records, str(path))
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
    from medreason import evaluation, loading, report, tracking
    from medreason.errors import UserError
    tracking.load_secrets()
    if args.safety:  # the safety set alone (medreason/safety.py)
        from medreason.safety import evaluate_cli
        return evaluate_cli(args)
    run_dir = Path(args.adapter).parent if Path(args.adapter).is_dir() else None
    data_path = args.data or (run_dir / "validation.jsonl" if run_dir else None)
    if not data_path or not data_path.is_file():
        raise UserError(f"no rows to evaluate: {data_path or '--data not given'}. Fix: --data <file of medical-o1 "
                        f"or multiple-choice rows>, e.g. --data ../shared/data/medmcqa_dev.jsonl.")
    rows, kind = load_rows(data_path, args.limit, args.seed)  # before any model loads
    output = args.output or (run_dir / "evaluation" if run_dir else Path("evaluation"))
    print(f"[eval] {len(rows)} {kind} rows from {data_path} -> {output}")
    backend = loading.choose_backend(args.backend)
    loaded = loading.load(args.adapter, args.base_model, backend)
    if loaded.kind != "adapter" and not args.no_base:
        raise UserError(f"{args.adapter} is a merged model: there is no adapter to disable for the base "
                        f"comparison. Fix: pass the adapter folder, or --no-base.")
    budget, why = loaded.budget(args.max_new_tokens, MAX_NEW_TOKENS)
    print(f"[eval] {budget} new tokens per answer ({why})")
    start = time.time()
    results = evaluation.compare(loaded.model, loaded.tokenizer, rows, kind, loaded.style, budget, args.batch_size,
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


if __name__ == "__main__":
    from medreason.errors import run_cli
    run_cli(main)
