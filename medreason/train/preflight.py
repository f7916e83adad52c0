"""Checks printed before training: token lengths against MAX_SEQ_LENGTH, and one example with its loss mask."""
from __future__ import annotations

import statistics

from medreason.answers.prompts import tokenize_example
from medreason.config.errors import UserError
from medreason.data.safety_set import samples_per_kind
from medreason.model import estimates
from medreason.model.for_training import load_tokenizer


def token_lengths(tokenizer, conversation: dict) -> tuple[int, int]:
    """(prompt tokens, prompt+answer tokens)."""
    ids, n_prompt = tokenize_example(tokenizer, conversation)
    return n_prompt, len(ids)


def _percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def check_lengths(dataset, tokenizer, max_len: int, name: str):
    """Print length stats; say how many rows MAX_SEQ_LENGTH cuts and by how much; drop rows whose answer would be cut
    off entirely. Returns (dataset, stats)."""
    lengths = [token_lengths(tokenizer, ex) for ex in dataset]
    totals = [total for _, total in lengths]
    keep = [i for i, (prompt, _) in enumerate(lengths) if prompt < max_len]
    cut = [totals[i] - max_len for i in keep if totals[i] > max_len]
    stats = {"rows": len(totals), "min": min(totals), "median": int(statistics.median(totals)),
             "p95": _percentile(totals, 0.95), "max": max(totals), "truncated": len(cut),
             "dropped_no_answer_left": len(totals) - len(keep),
             "mean": statistics.mean(min(t, max_len) for t in totals),  # tokens a row costs in training
             "prompt_mean": statistics.mean(p for p, _ in lengths)}
    print(f"[preflight] {name}: {stats['rows']} rows, tokens per example min {stats['min']} / median "
          f"{stats['median']} / p95 {stats['p95']} / max {stats['max']} (MAX_SEQ_LENGTH={max_len})")
    if cut:
        print(f"[preflight] {name}: {len(cut)} of {len(totals)} rows are longer than MAX_SEQ_LENGTH={max_len} (by up "
              f"to {max(cut)} tokens): the trainer cuts their end, so those answers are trained without their last "
              f"tokens (</response> included), which teaches unclosed answers. Fix: --MAX_SEQ_LENGTH={stats['max']} "
              f"keeps every row whole.")
    if stats["dropped_no_answer_left"]:
        print(f"[preflight] {name}: dropped {stats['dropped_no_answer_left']} rows whose prompt alone fills "
              f"MAX_SEQ_LENGTH={max_len}, so no answer token would be trained.")
    if not keep:
        raise UserError(f"MAX_SEQ_LENGTH={max_len} leaves no answer tokens in any {name} row (shortest prompt "
                         f"{min(p for p, _ in lengths)} tokens). Fix: --MAX_SEQ_LENGTH={_percentile(totals, 0.95)}.")
    return (dataset.select(keep) if len(keep) < len(totals) else dataset), stats


def over_long(lengths: list[int], limit: int) -> tuple[int, int]:
    """(how many of the lengths exceed limit, by how many tokens the longest does)."""
    over = [n - limit for n in lengths if n > limit]
    return len(over), max(over, default=0)


def prompt_lengths_line(lengths: list[int], trained_length: int | None, context: int | None, what: str) -> str | None:
    """Evaluation's one line on prompts longer than the adapter's training length (MAX_SEQ_LENGTH, recorded in its
    tokenizer): they are answered whole, nothing is cut; only prompts beyond the model's own context could not be."""
    notes = []
    if trained_length:
        n, by = over_long(lengths, trained_length)
        if n:
            notes.append(f"{n} of {len(lengths)} {what} prompts are longer than the {trained_length} tokens the adapter "
                         f"was trained on (by up to {by}): they are answered whole, nothing is cut"
                         + (f" (the model reads up to {context} tokens)" if context else ""))
    if context:
        n, by = over_long(lengths, context)
        if n:
            notes.append(f"{n} {what} prompts exceed the model's context of {context} tokens (by up to {by}): their "
                         f"answers are unreliable")
    return "; ".join(notes) or None


def say_prompt_lengths(model, tokenizer, prompts: list[str], what: str) -> None:
    """Evaluation's line on over-long prompts (prompt_lengths_line), against the length the adapter's tokenizer
    records (Unsloth saves the run's MAX_SEQ_LENGTH there) and the model's own context."""
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    recorded = getattr(tokenizer, "model_max_length", None)
    trained = recorded if isinstance(recorded, int) and context and recorded < context else None
    line = prompt_lengths_line(lengths, trained, context, what)
    if line:
        print(f"[eval] {line}")


def tokenizer_for(model_path: str, dry_run: bool = False):
    """The model's tokenizer. A dry run whose tokenizer cannot be loaded (offline, say) says so and goes on without
    the token statistics (None) instead of failing."""
    try:
        return load_tokenizer(model_path)
    except UserError as e:
        if not dry_run:
            raise
        print(f"[preflight] dry run: token statistics skipped, the tokenizer could not be loaded ({e})")
        return None


def check_training_data(prepared, tokenizer, max_len: int) -> None:
    """Token lengths of the training rows with the model's own tokenizer (rows with no room for an answer dropped),
    and the answer layout checked against what the chat template makes of it."""
    if tokenizer is None:
        return
    check_template_keeps_answer(prepared.train[0], tokenizer)
    prepared.train, prepared.info["train_lengths"] = check_lengths(prepared.train, tokenizer, max_len, "train")


def say_training_estimate(cfg, plan, model_path: str, prepared) -> None:
    """The trainer's [estimate] line, from the rows and token counts just checked (estimates.training)."""
    safety_asks = 0
    if getattr(cfg, "SAFETY_EVAL_SAMPLES", None) != 0 and prepared.info.get("val_rows"):
        safety_asks = 2 * samples_per_kind(getattr(cfg, "SAFETY_EVAL_SAMPLES", None), cfg.EVAL_SAMPLES)
    estimates.say(estimates.training(cfg, plan, model_path, prepared.info.get("train_lengths"),
                                     prepared.info.get("val_rows", 0), safety_asks))


def check_template_keeps_answer(example: dict, tokenizer) -> None:
    """The trained tokens must be the answer as written: some chat templates rewrite assistant turns (DeepSeek-R1's
    drop everything up to </think>), which would silently train answers without their reasoning."""
    ids, n_prompt = tokenize_example(tokenizer, example)
    trained = tokenizer.decode(ids[n_prompt:], skip_special_tokens=True, clean_up_tokenization_spaces=False)
    completion = example["completion"]
    answer = completion if isinstance(completion, str) else completion[-1]["content"]
    if answer.strip() not in trained:
        raise UserError("the model's chat template changes the answer it is trained on (it keeps "
                        f"{trained.strip()[:80]!r}... of {answer.strip()[:80]!r}...): DeepSeek-R1 templates drop the "
                        "reasoning of assistant turns. Fix: --PROMPT_STYLE=r1 for such models (it trains the "
                        "rendered text), or another chat template.")


def render_loss_mask(input_ids: list[int], labels: list[int], tokenizer) -> str:
    """The example as text, each run of tokens marked as masked (not in the loss) or trained."""
    runs, start = [], 0
    for i in range(1, len(input_ids) + 1):
        if i == len(input_ids) or (labels[i] == -100) != (labels[start] == -100):
            text = tokenizer.decode(input_ids[start:i], clean_up_tokenization_spaces=False)
            runs.append((labels[start] == -100, text))
            start = i
    return "\n".join(f"{'[MASKED: not in the loss]' if masked else '[TRAINED]'}\n{text}" for masked, text in runs)


def show_training_example(train_dataset, tokenizer) -> None:
    """Print the first example exactly as the trainer tokenized it (input_ids and labels from trl)."""
    example = train_dataset[0]
    labels = example.get("labels") or [t if m else -100 for t, m in zip(example["input_ids"],
                                                                       example["completion_mask"])]
    trained = sum(1 for label in labels if label != -100)
    print(f"[preflight] one training example as the trainer tokenized it: {len(labels)} tokens, "
          f"{len(labels) - trained} masked, {trained} trained")
    print("-" * 80)
    print(render_loss_mask(example["input_ids"], labels, tokenizer))
    print("-" * 80)
