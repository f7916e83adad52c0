"""Evaluation generation: one answer at a time vs the batched path vs continuous batching (medreason/answers/generation.py).

    python bench/eval_generation.py --questions 32 --max-new-tokens 48     # quick
    python bench/eval_generation.py --questions 32 --max-new-tokens 256    # full size (RESULTS.md)

Same model (the embedded SmolLM2-135M, transformers, fp32), same real questions, same token budget, greedy, each
answer stopping at its end of turn or its closed </response>, as evaluation does. The three runs alternate in one
invocation (one_by_one, batched, continuous) after a short warm-up of each engine, and their answers are checked
token-identical.
  one_by_one   model.generate, one question at a time
  batched      model.generate on left-padded batches of --batch-size (the fallback engine)
  continuous   transformers' continuous batching with --batch-size seats (the default engine)
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import OUT, SHARED_SAMPLE, save  # noqa: E402

RUNS = (("one_by_one", "batched", 1), ("batched", "batched", None), ("continuous", "continuous", None))


def occupancy_ceiling(lengths: list[int], seats: int) -> float | None:
    """The best ratio over one-by-one that any batching could reach for answers of these lengths, from the measured
    time per decoding step at each number of answers in flight (bench/out/profile_generation.json): at step s only
    the answers longer than s are in flight, and one-by-one pays t(1) per token. None without a profile."""
    profile = OUT / "profile_generation.json"
    if not profile.is_file():
        return None
    table = sorted((row["batch"], row["ms_per_step"]) for row in json.loads(profile.read_text())["scaling"])

    def ms(batch):  # linear between the measured batch sizes
        for (b0, t0), (b1, t1) in zip(table, table[1:]):
            if batch <= b1:
                return t0 + (t1 - t0) * (batch - b0) / (b1 - b0)
        return table[-1][1] * batch / table[-1][0]
    waves = [lengths[i:i + seats] for i in range(0, len(lengths), seats)]  # seats refill only when questions wait
    batched = sum(ms(sum(length > s for length in wave)) for wave in waves for s in range(max(wave)))
    return sum(lengths) * table[0][1] / batched


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM
    from medreason.answers.generation import generate
    from medreason.model.for_training import load_tokenizer, resolve_model_path
    from medreason.answers.prompts import generation_prompt, get_style
    from medreason.answers.tags import closing_marker
    path = resolve_model_path("embedded")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), load_tokenizer(path)
    style = get_style("think_response")
    rows = [json.loads(line) for line in SHARED_SAMPLE.read_text().splitlines()][:args.questions]
    prompts = [generation_prompt(tokenizer, r["Question"], style) for r in rows]
    timings, answers = {}, {}
    for engine in ("batched", "continuous"):  # each engine's first call in a process pays one-off set-up costs
        generate(model, tokenizer, prompts[:2], 4, 2, progress=False, engine=engine)
    for label, engine, batch in RUNS:
        start = time.time()
        outs = generate(model, tokenizer, prompts, args.max_new_tokens, batch or args.batch_size, progress=False,
                        engine=engine, stop_text=closing_marker(style))
        seconds = time.time() - start
        answers[label] = outs
        timings[label] = {"seconds": seconds, "answers_per_minute": 60 * len(prompts) / seconds,
                          "new_tokens": sum(o.tokens for o in outs)}
        print(f"{label:<11} {seconds:7.1f} s  {timings[label]['answers_per_minute']:6.1f} answers/min  "
              f"{timings[label]['new_tokens']} tokens")
    same = {label: sum(a == b for a, b in zip(answers[label], answers["one_by_one"])) for label in answers}
    ratios = {label: timings[label]["answers_per_minute"] / timings["one_by_one"]["answers_per_minute"]
              for label in ("batched", "continuous")}
    print(f"answers identical to one-by-one: batched {same['batched']}/{len(prompts)}, "
          f"continuous {same['continuous']}/{len(prompts)}")
    print(f"evaluation generation, batched / one-by-one: {ratios['batched']:.2f}x; continuous / one-by-one: "
          f"{ratios['continuous']:.2f}x (target >= 5x)")
    ceiling = occupancy_ceiling([o.tokens for o in answers["one_by_one"]], args.batch_size)
    if ceiling:
        print(f"ceiling for these answers (time per step vs seats in flight, bench/profile_generation.py): "
              f"{ceiling:.2f}x")
    result = {"questions": len(prompts), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
              **timings, "identical_to_one_by_one": same, "ratio_batched": ratios["batched"],
              "ratio": ratios["continuous"], "occupancy_ceiling": ceiling}
    save("eval_generation", result)
    return result


if __name__ == "__main__":
    main()
