"""Exam-benchmark speed: answers per minute on a MedMCQA slice, strict protocol, through the one generation engine.

    python bench/exam_speed.py --questions 32 --think-budget 256      # the embedded SmolLM2-135M, this machine
    python bench/exam_speed.py --adapter outputs/<run>/adapter        # a trained adapter (the tuned model)

Writes bench/out/exam_speed.json: answers per minute, generated tokens per answer, how many needed the thinking
budget, and the time each benchmark's full evaluation set would take at that rate. The T4 column in the README is
an estimate from the tokens per answer measured here and an assumed T4 decoding rate (--t4-tokens-per-second), until
a T4 run measures it.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import OUT, save  # noqa: E402

MEDMCQA = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmcqa_dev.jsonl"
FULL_SIZES = {"medqa": 1273, "medmcqa": 4183, "pubmedqa": 1000, "mmlu-pro-health": 818}  # the cards' row counts
T4_TOKENS_PER_SECOND = 150  # ASSUMED aggregate decoding rate of a 3B 4-bit model on a T4 with 8 answers in flight


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=32)
    p.add_argument("--adapter", help="an adapter folder (default: the embedded base model alone)")
    p.add_argument("--max-new-tokens", type=int, default=384)
    p.add_argument("--think-budget", type=int, default=256)
    p.add_argument("--answer-budget", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--t4-tokens-per-second", type=float, default=T4_TOKENS_PER_SECOND)
    args = p.parse_args()
    from medreason.evaluate import benchmarks, protocols
    from medreason.model import for_inference
    from medreason.model.embedded import embedded_model_dir
    rows = benchmarks.stratified_sample(benchmarks.load(benchmarks.local_file(MEDMCQA)), args.questions, 3407)
    loaded = for_inference.load(args.adapter or str(embedded_model_dir()), None, "transformers")
    start = time.perf_counter()
    scored = protocols.run(loaded.model, loaded.tokenizer, rows, "strict", loaded.style, args.max_new_tokens,
                           args.batch_size, think_budget=args.think_budget or None, answer_budget=args.answer_budget)
    seconds = time.perf_counter() - start
    per_minute = len(rows) / seconds * 60
    tokens = scored.metrics["mean_tokens"]
    result = {"questions": len(rows), "seconds": round(seconds, 1), "answers_per_minute": round(per_minute, 2),
              "tokens_per_answer": round(tokens, 1), "budget_closed": scored.metrics["budget_closed"],
              "accuracy": scored.metrics["accuracy"], "extraction_rate": scored.metrics["extraction_rate"],
              "settings": vars(args), "full_set_minutes_here": {k: round(n / per_minute, 1) for k, n in
                                                                FULL_SIZES.items()},
              "t4_estimate_minutes": {k: round(n * tokens / args.t4_tokens_per_second / 60, 1)
                                      for k, n in FULL_SIZES.items()},
              "t4_estimate_basis": f"measured {tokens:.0f} tokens per answer x an ASSUMED "
                                   f"{args.t4_tokens_per_second:.0f} tokens/s on a T4; not measured on a T4"}
    print(f"{len(rows)} MedMCQA answers in {seconds:.0f} s: {per_minute:.1f} answers/minute, {tokens:.0f} tokens per "
          f"answer, {scored.metrics['budget_closed']} needed the thinking budget")
    save("exam_speed", result)
    print(f"wrote {OUT / 'exam_speed.json'}")


if __name__ == "__main__":
    main()
