"""Evaluation generation: our batched, length-sorted generation vs one answer at a time.

    python bench/eval_generation.py --questions 32 --max-new-tokens 64     # quick
    python bench/eval_generation.py --questions 32 --max-new-tokens 256    # full size (RESULTS.md)

Same model (the embedded SmolLM2-135M, transformers, fp32), same real questions, same token budget, greedy.
Batched = all 32 questions in one batch, as the trainer and evaluate.py do whenever EVAL_BATCH_SIZE covers the
questions (the GPU default is 8; on a CPU the trainer answers 4). bench/profile_generation.py shows why the
batch size matters on a CPU: the time per decoding step grows with the batch, so the gain is below the batch size.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import SHARED_SAMPLE, save  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM
    from medreason.generation import generate
    from medreason.modeling import load_tokenizer, resolve_model_path
    from medreason.prompts import generation_prompt, get_style
    path = resolve_model_path("embedded")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), load_tokenizer(path)
    rows = [json.loads(line) for line in SHARED_SAMPLE.read_text().splitlines()][:args.questions]
    prompts = [generation_prompt(tokenizer, r["Question"], get_style("think_response")) for r in rows]
    timings = {}
    for label, batch in (("one_by_one", 1), ("batched", args.batch_size)):
        start = time.time()
        outs = generate(model, tokenizer, prompts, args.max_new_tokens, batch, progress=False)
        seconds = time.time() - start
        timings[label] = {"seconds": seconds, "answers_per_minute": 60 * len(prompts) / seconds,
                          "new_tokens": sum(o.tokens for o in outs)}
        print(f"{label:<11} {seconds:7.1f} s  {timings[label]['answers_per_minute']:6.1f} answers/min  "
              f"{timings[label]['new_tokens']} tokens")
    ratio = timings["batched"]["answers_per_minute"] / timings["one_by_one"]["answers_per_minute"]
    print(f"evaluation generation, batched / one-by-one: {ratio:.2f}x (target >= 5x)")
    result = {"questions": len(prompts), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
              **timings, "ratio": ratio}
    save("eval_generation", result)
    return result


if __name__ == "__main__":
    main()
