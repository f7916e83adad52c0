"""Run all three benchmarks; --quick sizes them to finish in under 10 minutes on 2 CPU cores. Ratios print last.

    python bench/run.py --quick
    python bench/run.py            # full size: the figures in bench/RESULTS.md
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import backends  # noqa: E402
import eval_generation  # noqa: E402
import train_throughput  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    quick = p.parse_args(argv).quick
    train = train_throughput.main(["--rows", "8", "--repeats", "1"] if quick else [])
    gen = eval_generation.main(["--max-new-tokens", "48"] if quick else [])
    back = backends.main(["--steps", "2"] if quick else [])
    print("\n=== ratios ===")
    print(f"this CPU: fp32 {train['cpu']['fp32_gflops']:.1f} GFLOP/s, bf16 {train['cpu']['bf16_gflops']:.1f} GFLOP/s "
          f"(measured matmuls; {train['cpu']['model'] or 'CPU'})")
    print(f"training throughput, ours / reference recipe: {train['ratio_tokens_per_second']:.2f}x (target >= 2x)")
    print(f"evaluation generation, continuous batching / one-by-one: {gen['ratio']:.2f}x (batched path "
          f"{gen['ratio_batched']:.2f}x; target >= 5x)")
    print(f"backends, unsloth / transformers:             {back['speed_ratio']:.2f}x speed, "
          f"{back['memory_ratio']:.2f}x peak memory")


if __name__ == "__main__":
    main()
