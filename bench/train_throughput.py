"""Training throughput: our trainer's CPU defaults vs the reference recipe, same model, same rows.

    python bench/train_throughput.py --rows 16 --repeats 1     # quick
    python bench/train_throughput.py --rows 32 --repeats 2     # full size (RESULTS.md)

It prints this CPU's measured fp32 and bf16 matmul rates first, and each run's achieved rate beside that roofline.
Reference recipe: batch 1 x 8 accumulation, no packing, gradient checkpointing, full precision on the transformers
backend (what the reference script amounts to on a CPU). Ours: the trainer's defaults on this machine (Unsloth
backend in bf16 where this CPU computes bf16 faster, else transformers + peft in fp32; on a CPU its automatic choices
switch gradient checkpointing off), with the same effective batch of 8
rows: batch 1 x 8 is also the fastest split measured on a CPU (4 x 2 and 8 x 1 were slower and used 2-4x the
memory; bench/RESULTS.md). Both see the same real rows, so the same supervised tokens;
throughput is in non-padding tokens and rows per second. Runs alternate: reference, ours, reference, ours...
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOFLINE_COLUMNS, add_roofline, cpu_rates, run_trainer, save, table  # noqa: E402

REFERENCE = ["--BACKEND=transformers", "--BATCH_SIZE=1", "--GRAD_ACCUM=8", "--GRADIENT_CHECKPOINTING=True",
             "--MAX_SEQ_LENGTH=1024"]
OURS = ["--MAX_SEQ_LENGTH=1024", "--BATCH_SIZE=1", "--GRAD_ACCUM=8"]  # else the trainer's defaults and choices


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=32, help="rows trained per run (a multiple of 8)")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    steps = max(1, args.rows // 8)
    rates = cpu_rates()
    runs = []
    for _ in range(args.repeats):
        runs.append(run_trainer("reference", REFERENCE + [f"--MAX_STEPS={steps}"], steps * 8))
        runs.append(run_trainer("ours", OURS + [f"--MAX_STEPS={steps}"], steps * 8))
    mean = lambda label, key: sum(r[key] for r in runs if r["label"] == label) / args.repeats  # noqa: E731
    ratio = mean("ours", "tokens_per_second") / mean("reference", "tokens_per_second")
    print(table(runs, [("run", "label", ""), ("rows", "rows", ""), ("s/step", "seconds_per_step", ".1f"),
                       ("tokens/s", "tokens_per_second", ".1f"), ("rows/s", "rows_per_second", ".3f"),
                       ("peak RSS GB", "peak_rss_gb", ".2f")]))
    runs = [add_roofline(run, rates) for run in runs]
    print(table(runs, ROOFLINE_COLUMNS))
    print(f"training throughput, ours / reference: {ratio:.2f}x (target >= 2x)")
    result = {"cpu": rates, "runs": runs, "ratio_tokens_per_second": ratio}
    save("train_throughput", result)
    return result


if __name__ == "__main__":
    main()
