"""The one generation engine: training's final evaluation, evaluate.py, inference.py and the preference stage's
candidates all generate here.

Two ways to run the same greedy (or seeded sampled) decoding:
  continuous  transformers' continuous batching (`generate_batch`'s manager, paged attention): an answer that ends
              frees its seat for a waiting one, and the key/value cache is paged instead of copied at every step
  batched     `model.generate` on left-padded batches of similar length: a batch runs until its longest answer ends
ENGINE="auto" takes continuous batching wherever it applies; on a GPU, where either may win, both are timed on the
first prompts and the faster is used (measured, not assumed). Each choice is printed with its reason.

An answer stops at its end-of-turn token, or as soon as its style's closing tag (`stop_text`, e.g. "</response>") is
complete: nothing but the end of the turn may follow it, so further tokens are only cost.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

from medreason.config import quiet
from medreason.config.errors import UserError

ENGINES = ("auto", "continuous", "batched")


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
    hit_budget: bool  # stopped because max_new_tokens ran out, not on an end-of-turn token or the closing tag

    @property
    def ended(self) -> bool:
        return not self.hit_budget


def _stop_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def generate(model, tokenizer, texts: list[str], max_new_tokens: int, batch_size: int,
             sampling: Sampling = GREEDY, desc: str = "generating", progress: bool = True,
             streamer=None, min_new_tokens: int = 0, engine: str = "auto", stop_text: str | None = None,
             seed: int | None = None) -> list[Generation]:
    """Continue each text (already chat-formatted); returns what was generated after it, in order.

    batch_size: answers generated at once (continuous batching: seats). A streamer (one text) receives the new
    tokens as they come; min_new_tokens (benchmarks) forbids an earlier end of turn; seed makes sampling repeatable."""
    if getattr(model, "is_llama_cpp", False):  # a GGUF answering in llama.cpp (medreason/model/gguf.py): its own engine
        return model.generate_texts(tokenizer, texts, max_new_tokens, sampling, streamer, stop_text, seed)
    chosen, why = choose_engine(engine, model, tokenizer, texts, sampling, streamer, min_new_tokens)
    _say_once(f"[generate] engine: {chosen} ({why})")
    if seed is not None:
        import torch
        torch.manual_seed(seed)
    run = _continuous if chosen == "continuous" else _batched
    return run(model, tokenizer, texts, max_new_tokens, batch_size, sampling, desc, progress, streamer,
               min_new_tokens, stop_text)


_SAID: set[str] = set()


def _say_once(line: str) -> None:
    if line not in _SAID:
        _SAID.add(line)
        print(line)


def continuous_unavailable(model, sampling: Sampling, streamer, min_new_tokens: int) -> str | None:
    """Why continuous batching cannot serve this call, or None when it can."""
    if streamer is not None:
        return "one answer streamed to the screen"
    if sampling.repetition_penalty != 1.0:
        return "transformers' continuous batching has no repetition penalty"
    if min_new_tokens:
        return "min_new_tokens is a benchmark setting of the batched path"
    if not hasattr(model, "generate_batch"):
        return f"{type(model).__name__} has no generate_batch"
    if is_unsloth_model(model):
        return "Unsloth's fast forward keeps its own key/value cache; its adapter runs there on transformers + peft"
    return None


def is_unsloth_model(model) -> bool:
    """A model whose forward Unsloth patched (its classes live in, or were rewritten by, unsloth modules)."""
    if "unsloth" not in sys.modules:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    forward = type(base).forward
    return "unsloth" in (getattr(forward, "__module__", "") or "") or hasattr(base, "max_seq_length")


_MEASURED: dict[int, tuple[str, str]] = {}


def choose_engine(engine: str, model, tokenizer, texts: list[str], sampling: Sampling, streamer=None,
                  min_new_tokens: int = 0, on_gpu: bool | None = None) -> tuple[str, str]:
    """(engine, why). On a CPU continuous batching is taken where it applies (bench/RESULTS.md); on a GPU (on_gpu:
    default, where the model is) both engines are timed once per model on the first prompts and the faster is kept."""
    if engine not in ENGINES:
        raise UserError(f"engine {engine!r}: choose one of {', '.join(ENGINES)}.")
    if engine == "batched":
        return "batched", "asked for"
    why_not = continuous_unavailable(model, sampling, streamer, min_new_tokens)
    if why_not:
        if engine == "continuous":
            raise UserError(f"continuous batching was asked for, but {why_not}. Fix: engine 'auto' or 'batched'.")
        return "batched", f"continuous batching does not apply: {why_not}"
    if engine == "continuous":
        return "continuous", "asked for"
    if not (model.device.type == "cuda" if on_gpu is None else on_gpu) or len(texts) < 2:
        return "continuous", ("finished answers free their seats and the cache is paged, not copied: 3.4x "
                              "one-by-one and 2.4x the batched path on 2 CPU cores, bench/RESULTS.md")
    if id(model) not in _MEASURED:
        _MEASURED[id(model)] = measure_engines(model, tokenizer, texts[:8])
    return _MEASURED[id(model)]



def measure_engines(model, tokenizer, texts: list[str], new_tokens: int = 32) -> tuple[str, str]:
    """Time both engines on the same few prompts, greedy (so both do the same work: their tokens are identical), each
    run twice with the first as a warm-up, and keep the faster."""
    seconds = {}
    for name, run in (("batched", _batched), ("continuous", _continuous)):
        for _ in range(2):
            start = time.perf_counter()
            run(model, tokenizer, texts, new_tokens, len(texts), GREEDY, "", False, None, 0, None)
            seconds[name] = time.perf_counter() - start
    faster = min(seconds, key=seconds.get)
    return faster, (f"measured on {len(texts)} prompts x {new_tokens} tokens: continuous "
                    f"{seconds['continuous']:.2f} s, batched {seconds['batched']:.2f} s")


def _decoded(tokenizer, tokens: list[int], stop_ids: set[int], max_new_tokens: int, stop_text: str | None,
             forced: bool = False) -> Generation:
    """What one answer's new tokens say: cut at the end-of-turn token or just after the closing tag."""
    ended = next((k for k, t in enumerate(tokens) if t in stop_ids), None)
    kept = tokens if ended is None else tokens[:ended]
    closed = closing_position(tokenizer, kept, stop_text)
    if closed is not None:
        kept = kept[:closed]
    text = tokenizer.decode(kept, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    hit_budget = ended is None and closed is None and len(tokens) >= max_new_tokens
    return Generation(text, len(kept), hit_budget=hit_budget and not forced)


def closing_position(tokenizer, tokens: list[int], stop_text: str | None, start: int = 0) -> int | None:
    """The number of tokens up to and including the one that completes stop_text (searched from `start`), or None."""
    if not stop_text:
        return None
    window = max(8, len(stop_text))  # a closing tag spans a few tokens at most
    for k in range(max(start, 1), len(tokens) + 1):
        if stop_text in tokenizer.decode(tokens[max(0, k - window):k], skip_special_tokens=True,
                                         clean_up_tokenization_spaces=False):
            return k
    return None


def _batched(model, tokenizer, texts, max_new_tokens, batch_size, sampling, desc, progress, streamer,
             min_new_tokens, stop_text) -> list[Generation]:
    import torch
    from tqdm.auto import tqdm

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)  # similar lengths batch well
    results: list[Generation | None] = [None] * len(texts)
    stop_ids = _stop_ids(model, tokenizer)
    extra = {"stop_strings": [stop_text], "tokenizer": tokenizer} if stop_text else {}
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
                                     **sampling.generate_kwargs(), **extra)
            for i, row in zip(batch, out[:, enc["input_ids"].shape[1]:].tolist()):
                results[i] = _decoded(tokenizer, row, stop_ids, max_new_tokens, stop_text, forced=min_new_tokens > 0)
    finally:
        tokenizer.padding_side = padding_side
    return results


def cache_config(prompt_lengths: list[int], max_new_tokens: int, seats: int, on_gpu: bool):
    """The paged cache for these requests: on a GPU transformers sizes it from free memory; on a CPU it is sized here
    for `seats` answers at once (transformers' GPU-oriented default allocates and warms far more than a CPU needs)."""
    from transformers import ContinuousBatchingConfig
    if on_gpu:
        return ContinuousBatchingConfig(max_requests_per_batch=seats)
    block = 32
    longest = max(prompt_lengths) + max_new_tokens
    blocks = seats * math.ceil(longest / block) + seats
    return ContinuousBatchingConfig(block_size=block, num_blocks=blocks, max_requests_per_batch=seats,
                                    max_batch_tokens=max(256, 2 * seats))


def cancelled_requests() -> set[str]:
    """Request ids of the current continuous-batching call cancelled at their closing tag. One whose answer had
    already ended on its own is freed a second time by transformers (a no-op it logs): quiet.py drops that line for
    these ids only, so the set lives there (config/ is below answers/)."""
    return quiet.CANCELLED_BY_US


def _continuous(model, tokenizer, texts, max_new_tokens, batch_size, sampling, desc, progress, streamer,
                min_new_tokens, stop_text) -> list[Generation]:
    """Every text is queued at once; the manager keeps up to batch_size answers in flight. With a closing tag, each
    answer streams and is cancelled once the tag is complete, so its seat goes to the next one."""
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    stop_ids = _stop_ids(model, tokenizer)
    inputs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=sorted(stop_ids) or -1,
                              pad_token_id=tokenizer.pad_token_id, **sampling.generate_kwargs())
    cb_config = cache_config([len(i) for i in inputs], max_new_tokens, max(1, min(batch_size, len(texts))),
                             model.device.type == "cuda")
    done: dict[str, list[int]] = {}
    checked: dict[str, int] = {}
    quiet.CANCELLED_BY_US.clear()  # ids restart at req_0 with each manager
    with model.continuous_batching_context_manager(generation_config=config, continuous_batching_config=cb_config,
                                                   warmup=model.device.type == "cuda", block=True) as manager, \
            tqdm(total=len(texts), desc=desc, unit="answer", disable=not progress) as bar:
        ids = manager.add_requests(inputs=inputs, max_new_tokens=max_new_tokens, streaming=bool(stop_text))
        while len(done) < len(ids):
            result = manager.get_result(timeout=1)
            if result is None:
                if not manager.is_running():
                    raise RuntimeError("continuous batching stopped before every answer was generated")
                continue
            if result.request_id in done:
                continue  # a token that was on its way when the answer was cancelled
            if result.error is not None:
                raise RuntimeError(f"continuous batching failed on an answer: {result.error}")
            tokens = result.generated_tokens
            closed = closing_position(tokenizer, tokens, stop_text, checked.get(result.request_id, 0))
            checked[result.request_id] = len(tokens)
            if closed is not None and not result.is_finished():
                manager.cancel_request(result.request_id)
                quiet.CANCELLED_BY_US.add(result.request_id)  # see cancelled_requests()
            if closed is not None or result.is_finished():
                done[result.request_id] = tokens if closed is None else tokens[:closed]
                bar.update(1)
    return [_decoded(tokenizer, done[i], stop_ids, max_new_tokens, stop_text) for i in ids]
