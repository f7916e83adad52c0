"""Backends: Unsloth vs transformers + peft on the same rows and settings: seconds per step and peak memory (RSS).

    python bench/backends.py --steps 2      # quick
    python bench/backends.py --steps 6      # full size (RESULTS.md)
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOFLINE_COLUMNS, add_roofline, cpu_rates, run_trainer, save, table  # noqa: E402

SHARED = ["--BATCH_SIZE=2", "--GRAD_ACCUM=1", "--MAX_SEQ_LENGTH=1024", "--GRADIENT_CHECKPOINTING=True"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args(argv)
    rates = cpu_rates()
    runs = [run_trainer(backend, SHARED + [f"--BACKEND={backend}", f"--MAX_STEPS={args.steps}"], 2 * args.steps)
            for backend in ("transformers", "unsloth")]
    runs = [add_roofline(run, rates) for run in runs]
    print(table(runs, [("backend", "label", ""), ("s/step", "seconds_per_step", ".2f"),
                       ("tokens/s", "tokens_per_second", ".1f"), ("peak RSS GB", "peak_rss_gb", ".2f")]))
    speed = runs[0]["seconds_per_step"] / runs[1]["seconds_per_step"]
    memory = runs[1]["peak_rss_gb"] / runs[0]["peak_rss_gb"]
    print(table(runs, ROOFLINE_COLUMNS))
    print(f"backends, unsloth vs transformers: {speed:.2f}x the speed, {memory:.2f}x the peak memory")
    result = {"cpu": rates, "runs": runs, "speed_ratio": speed, "memory_ratio": memory}
    save("backends", result)
    return result


if __name__ == "__main__":
    main()
