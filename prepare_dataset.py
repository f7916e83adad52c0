"""Prepare a dataset for training: validate, deduplicate, take a representative seeded subset, split, describe.

    python prepare_dataset.py --dataset FreedomIntelligence/medical-o1-reasoning-SFT --size 1000 --output data/o1-1k
    python prepare_dataset.py --dataset ../shared/data/medical_o1_sample.jsonl --size 100 --output data/sample

Writes <output>/train.jsonl and <output>/test.jsonl (give either to the trainer as --DATASET), stats.json and
length_histogram.png, and prints the statistics: rows kept and dropped with reasons, token lengths per field with
the chosen tokenizer, and how many rows exceed MAX_SEQ_LENGTH. Rows are checked against the exam benchmarks'
questions (HuatuoGPT-o1's rule: a shared run of 64 characters); --decontaminate drops the overlapping ones.
"""
import argparse
import json
from pathlib import Path

SIZE = 1000  # rows in the subset (train + test); the HuatuoGPT-o1-style pipeline trains on 500-1,000
TEST_FRACTION = 0.1  # 90/10 split
SEED = 3407
TOKENIZER = "embedded"  # whose tokens are counted: "embedded", a Hub id or a local model folder
MAX_SEQ_LENGTH = 1024  # the trainer's setting: rows longer than this would be truncated
BENCHMARKS = "medqa,medmcqa,pubmedqa,mmlu-pro-health"  # checked for overlaps (each read once, then cached); "" = none


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, help="Hub dataset id or a .jsonl/.json/.parquet/.csv file")
    p.add_argument("--config", default="en", help="Hub dataset subset (ignored for files)")
    p.add_argument("--size", type=int, default=SIZE, help="rows to keep (0 = all)")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--test-fraction", type=float, default=TEST_FRACTION)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--tokenizer", default=TOKENIZER)
    p.add_argument("--max-seq-length", type=int, default=MAX_SEQ_LENGTH)
    p.add_argument("--benchmarks", default=BENCHMARKS, help="exam benchmarks whose questions the rows are checked "
                                                            "against (medreason/evaluate/benchmarks.py); '' = none")
    p.add_argument("--decontaminate", action="store_true", help="drop rows sharing 64+ characters with a benchmark "
                                                                "question (HuatuoGPT-o1's filter)")
    return p.parse_args(argv)


def check_arguments(size: int, test_fraction: float, output: Path) -> None:
    from medreason.config.errors import UserError
    if size < 0:
        raise UserError(f"--size {size}: a number of rows. Fix: --size 0 (all rows) or more, e.g. --size {SIZE}.")
    if not 0 <= test_fraction < 1:
        raise UserError(f"--test-fraction {test_fraction}: a share of the rows. Fix: at least 0 and below 1, e.g. "
                        f"--test-fraction {TEST_FRACTION}.")
    if output.is_file():
        raise UserError(f"--output {output}: is a file. Fix: pass a folder (it is created if needed).")


def prepare(dataset: str, output: Path, size: int = SIZE, config: str | None = "en",
            test_fraction: float = TEST_FRACTION, seed: int = SEED, tokenizer_name: str = TOKENIZER,
            max_seq_length: int = MAX_SEQ_LENGTH, benchmark_names: str = "", decontaminate: bool = False) -> dict:
    from medreason.answers import prompts
    from medreason.data import readers, subsets
    from medreason.train import preflight
    from medreason.model.for_training import load_tokenizer, resolve_model_path
    from medreason.evaluate.results import write_rows
    check_arguments(size, test_fraction, output)
    records = readers.load_records(dataset, config, setting="--dataset")
    rows, dropped = readers.validate(records, dataset)
    rows, duplicates = subsets.deduplicate(rows)
    if duplicates:
        dropped["duplicate question"] = duplicates
    rows, contamination = check_contamination(rows, benchmark_names, decontaminate)
    if decontaminate and contamination.get("dropped"):
        dropped["overlaps a benchmark question"] = contamination["dropped"]
    tokenizer = load_tokenizer(resolve_model_path(tokenizer_name))
    style = prompts.get_style("think_response")
    example_lengths = [preflight.token_lengths(tokenizer, prompts.to_conversation(r, style))[1] for r in rows]
    chosen = subsets.stratified_subset(rows, example_lengths, size or len(rows), seed)
    subset = [rows[i] for i in chosen]
    lengths = {**subsets.field_token_lengths(tokenizer, subset, readers.FIELDS),
               "example": [example_lengths[i] for i in chosen]}
    train, test = subsets.train_test_split(subset, test_fraction, seed)
    output.mkdir(parents=True, exist_ok=True)
    write_rows(output / "train.jsonl", train)
    write_rows(output / "test.jsonl", test)
    subsets.plot_histogram(lengths, max_seq_length, output / "length_histogram.png")
    stats = {"source": dataset, "read": len(records), "kept": len(rows), "dropped": dict(dropped),
             "subset": len(subset), "train": len(train), "test": len(test), "seed": seed, "tokenizer": tokenizer_name,
             "tokens": {name: subsets.describe(values) for name, values in lengths.items()},
             "over_max_seq_length": sum(n > max_seq_length for n in lengths["example"]),
             "max_seq_length": max_seq_length, "contamination": contamination,
             "question_types": {"all": subsets.type_counts(rows),
                                                                 "subset": subsets.type_counts(subset)}}
    (output / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def check_contamination(rows: list[dict], names: str, decontaminate: bool) -> tuple[list[dict], dict]:
    """Rows against the benchmarks' questions: a warning per benchmark with the count and an example; with
    decontaminate, the overlapping rows dropped. Returns (rows, what was found)."""
    from medreason.evaluate import benchmarks
    if not names:
        if decontaminate:
            print("[contamination] --decontaminate with no --benchmarks: nothing to check against")
        return rows, {}
    found = benchmarks.contamination(rows, benchmarks.available_suites(names))
    for line in benchmarks.contamination_lines(found, "dataset", "they are dropped (--decontaminate)" if decontaminate
                                               else "Fix: add --decontaminate to drop them"):
        print(line)
    summary = {name: {k: c[k] for k in ("count", "checked", "example")} for name, c in found.items()}
    bad = {i for c in found.values() for i in c["rows"]}
    if decontaminate and bad:
        rows = [row for i, row in enumerate(rows) if i not in bad]
    return rows, {"benchmarks": summary, "rows": len(bad), "dropped": len(bad) if decontaminate else 0}


def print_stats(stats: dict, output: Path) -> None:
    print(f"read {stats['read']} rows from {stats['source']}; kept {stats['kept']}; dropped "
          f"{sum(stats['dropped'].values())}: {stats['dropped'] or 'none'}")
    print(f"subset {stats['subset']} (seed {stats['seed']}) -> train {stats['train']}, test {stats['test']}")
    print(f"tokens ({stats['tokenizer']}):")
    for name, d in stats["tokens"].items():
        print(f"  {name:<12} min {d['min']:>5}  median {d['median']:>5}  p95 {d['p95']:>5}  max {d['max']:>5}")
    print(f"rows longer than MAX_SEQ_LENGTH={stats['max_seq_length']}: {stats['over_max_seq_length']}")
    if stats["contamination"]:
        c = stats["contamination"]
        print(f"rows overlapping a benchmark question: {c['rows']} ({c['dropped']} dropped) against "
              f"{', '.join(c['benchmarks']) or 'no benchmark that could be read here'}")
    print(f"question types (all -> subset): {stats['question_types']['all']} -> {stats['question_types']['subset']}")
    print(f"wrote {output}/train.jsonl, test.jsonl, stats.json, length_histogram.png")
    print(f"train on it: python medical_fine_tuning.py --DATASET={output}/train.jsonl")


def main(argv) -> dict:
    args = parse_args(argv)
    stats = prepare(args.dataset, args.output, args.size, args.config, args.test_fraction, args.seed,
                    args.tokenizer, args.max_seq_length, args.benchmarks, args.decontaminate)
    print_stats(stats, args.output)
    return stats


if __name__ == "__main__":
    from medreason.config.errors import run_cli
    run_cli(main)
