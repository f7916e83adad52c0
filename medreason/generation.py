"""Batched greedy generation with the shared prompt formatter (left padding, longest prompts first)."""
from __future__ import annotations

from .prompts import PromptStyle, generation_prompt


def generate_answers(model, tokenizer, questions: list[str], style: PromptStyle, max_new_tokens: int,
                     batch_size: int, desc: str = "generating") -> list[str]:
    import torch
    from tqdm.auto import tqdm

    prompts = [generation_prompt(tokenizer, q, style) for q in questions]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)  # similar lengths batch well
    answers: list[str] = [""] * len(prompts)
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"  # decoder-only models pad on the left
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
            batch = order[start:start + batch_size]
            # The chat template already wrote any BOS token: add_special_tokens=False, as trl tokenizes.
            enc = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True,
                                           clean_up_tokenization_spaces=False)
            for i, text in zip(batch, texts):
                answers[i] = text.strip()
    finally:
        tokenizer.padding_side = padding_side
    return answers
