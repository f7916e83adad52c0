"""What limits batched generation on this machine: time per decoding step as the batch grows, and where it goes.

    python bench/profile_generation.py                 # batch sizes 1..32, 32 new tokens each, + an op profile

The ratio of batched to one-by-one generation can only be as high as batch x t(1) / t(batch), where t is the time
of one decoding step; this prints that ceiling for each batch size, and the operators that take the time at the
largest batch (torch.profiler), so a missed target can be argued from measurements.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import SHARED_SAMPLE, save  # noqa: E402


def step_seconds(model, tokenizer, prompts, new_tokens: int) -> float:
    """Seconds per decoding step for this batch (prefill excluded: a 1-token run is subtracted)."""
    from medreason.answers.generation import generate
    timings = []
    for budget in (1, new_tokens):
        start = time.perf_counter()
        generate(model, tokenizer, prompts, budget, len(prompts), progress=False, min_new_tokens=budget)
        timings.append(time.perf_counter() - start)
    return (timings[1] - timings[0]) / (new_tokens - 1)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    p.add_argument("--new-tokens", type=int, default=32)
    args = p.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM
    from medreason.answers.generation import generate
    from medreason.model.for_training import load_tokenizer, resolve_model_path
    from medreason.answers.prompts import generation_prompt, get_style
    path = resolve_model_path("embedded")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), load_tokenizer(path)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = [json.loads(line) for line in SHARED_SAMPLE.read_text().splitlines()][:max(sizes)]
    prompts = [generation_prompt(tokenizer, r["Question"], get_style("think_response")) for r in rows]
    step_seconds(model, tokenizer, prompts[:1], 4)  # warm-up
    scaling = []
    for b in sizes:
        t = step_seconds(model, tokenizer, prompts[:b], args.new_tokens)
        scaling.append({"batch": b, "ms_per_step": 1000 * t})
    for row in scaling:
        row["ceiling_ratio"] = row["batch"] * scaling[0]["ms_per_step"] / row["ms_per_step"]
        print(f"batch {row['batch']:>3}: {row['ms_per_step']:7.1f} ms per decoding step -> at most "
              f"{row['ceiling_ratio']:.2f}x one-by-one")
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate(model, tokenizer, prompts[:sizes[-1]], args.new_tokens, sizes[-1], progress=False,
                 min_new_tokens=args.new_tokens)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    top = [{"op": e.key, "share": e.self_cpu_time_total / total, "calls": e.count} for e in events[:8]]
    print(f"where the time goes at batch {sizes[-1]} (self CPU time):")
    for e in top:
        print(f"  {e['share']:6.1%}  {e['op']}  ({e['calls']} calls)")
    result = {"new_tokens": args.new_tokens, "scaling": scaling, "top_ops_at_largest_batch": top,
              "threads": torch.get_num_threads()}
    save("profile_generation", result)
    return result


if __name__ == "__main__":
    main()
