"""Batched generation of chat-formatted prompts (left padding, longest prompts first)."""
from __future__ import annotations

from dataclasses import dataclass



@dataclass(frozen=True)
class Sampling:
    """Greedy by default (reproducible); temperature 0.6 / top-p 0.95 suit reasoning models when sampling."""
    do_sample: bool = False
    temperature: float = 0.6
    top_p: float = 0.95
    repetition_penalty: float = 1.0

    def generate_kwargs(self) -> dict:
        kwargs = {"do_sample": self.do_sample, "repetition_penalty": self.repetition_penalty}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        return kwargs


GREEDY = Sampling()


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: int  # new tokens generated
    hit_budget: bool  # stopped because max_new_tokens ran out, not on an end-of-turn token


def _stop_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def generate(model, tokenizer, texts: list[str], max_new_tokens: int, batch_size: int,
             sampling: Sampling = GREEDY, desc: str = "generating", progress: bool = True,
             streamer=None, min_new_tokens: int = 0) -> list[Generation]:
    """Continue each text (already chat-formatted); returns what was generated after it.
    A streamer (batch of one) receives the new tokens as they come; min_new_tokens (benchmarks) forbids an earlier
    end of turn, so every row does the same work."""
    import torch
    from tqdm.auto import tqdm

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)  # similar lengths batch well
    results: list[Generation | None] = [None] * len(texts)
    stop_ids = _stop_ids(model, tokenizer)
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"  # decoder-only models pad on the left
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress):
            batch = order[start:start + batch_size]
            # The chat template already wrote any BOS token: add_special_tokens=False, as trl tokenizes.
            enc = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                     streamer=streamer, min_new_tokens=min_new_tokens,
                                     **sampling.generate_kwargs())
            for i, row in zip(batch, out[:, enc["input_ids"].shape[1]:].tolist()):
                ended = next((k for k, t in enumerate(row) if t in stop_ids), None)
                kept = row if ended is None else row[:ended]
                text = tokenizer.decode(kept, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                results[i] = Generation(text, len(kept), hit_budget=ended is None and len(row) >= max_new_tokens)
    finally:
        tokenizer.padding_side = padding_side
    return results
