"""The chat page (Gradio): each question is answered by answering.answer_batch, the same tag checks and repairs as
inference.py, and streamed as the model writes it. The reasoning goes into its own folding "Thinking" message
(open with a spinner while it streams, folded with its duration once it closes), the response into the answer
message below it, which ends with the not-medical-advice line. The final status is answer_batch's: an answer that
stayed incomplete is shown as incomplete, never as whole."""
from __future__ import annotations

import contextlib
import html
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from medreason.answers.answering import Answer, answer_batch
from medreason.answers.emergency import emergency_line
from medreason.answers.generation import Sampling
from medreason.answers.prompts import DISCLAIMER, prompt_length
from medreason.answers.streaming import Split, StreamSplitter, UNREADABLE
from medreason.model.embedded import EMBEDDED, EMBEDDED_HUB_ID

TITLE = "Medical reasoning chat"
THINKING = "Thinking"
MIN_ANSWER_TOKENS = 32  # a question must leave at least this much of the context for the answer
EMPTY_QUESTION = "Please type a question first: the box was empty."
WHY_INCOMPLETE = {
    "think_unclosed": "the reasoning did not finish within the token budget",
    "response_missing": "the reasoning finished, but no answer followed it",
    "response_unclosed": "the answer was cut off by the token budget",
    "no_tags": "the model did not write the answer layout it was trained on; shown as written",
    "malformed": "the answer's layout is broken (markers out of order, repeated or empty); shown as written",
}


@dataclass(frozen=True)
class Budget:
    max_new_tokens: int
    max_continuations: int
    continuation_tokens: int
    capped: bool  # the question left less room than asked for


class _Stopped(Exception):
    """The page closed the stream (stop button, closed tab): the generation is abandoned at the next token."""


def context_length(model) -> int:
    """How many tokens (prompt + answer) the model reads: its position embeddings."""
    return int(getattr(model.config, "max_position_embeddings", None) or 2048)


def fit_budget(loaded, question: str, max_new_tokens: int, max_continuations: int,
               continuation_tokens: int) -> Budget | str:
    """The generation budget that fits the model's context after the prompt, or the message for a question too long
    to leave room for an answer."""
    used = prompt_length(loaded.tokenizer, question, loaded.style)
    context = context_length(loaded.model)
    room = context - used
    if room < MIN_ANSWER_TOKENS:
        excess = used + MIN_ANSWER_TOKENS - context
        return (f"**Question too long**: with the prompt it is {used} tokens, and this model reads at most "
                f"{context} tokens in all, leaving no room for an answer. Please shorten it by at least {excess} "
                f"tokens (about {excess * 3 // 4 + 1} words) and ask again.")
    new = min(max_new_tokens, room)
    more = min(max_continuations, (room - new) // continuation_tokens) if continuation_tokens > 0 else 0
    return Budget(new, more, continuation_tokens, new + more * continuation_tokens
                  < max_new_tokens + max_continuations * continuation_tokens)


def _queue_streamer(tokenizer, pieces: queue.Queue, stop: threading.Event):
    """A transformers TextStreamer that queues decoded text (and the tags answering adds, via put_text), and
    aborts the generation once `stop` is set."""
    from transformers import TextStreamer

    class QueueStreamer(TextStreamer):
        def put(self, value):
            if stop.is_set():
                raise _Stopped
            super().put(value)

        def on_finalized_text(self, text: str, stream_end: bool = False):
            if text:
                pieces.put(text)

        def put_text(self, text: str):
            pieces.put(text)

    return QueueStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def stream_answer(loaded, question: str, budget: Budget, sampling: Sampling, stop: threading.Event | None = None):
    """Yields (split so far, None) as text arrives, then (final split, the Answer). answer_batch runs in a thread;
    closing this generator stops it at the next token, as does setting `stop` (from any thread; closing sets it)."""
    pieces, stop, outcome = queue.Queue(), stop or threading.Event(), {}
    streamer = _queue_streamer(loaded.tokenizer, pieces, stop)

    def work():
        try:
            outcome["answer"], = answer_batch(
                loaded.model, loaded.tokenizer, [question], loaded.style, budget.max_new_tokens, sampling=sampling,
                max_continuations=budget.max_continuations, continuation_tokens=budget.continuation_tokens,
                streamer=streamer)
        except _Stopped:
            pass
        except Exception as e:  # raised again in the page's handler, where Gradio reports it
            outcome["error"] = e
        finally:
            pieces.put(None)

    worker = threading.Thread(target=work, name="answer", daemon=True)
    worker.start()
    splitter = StreamSplitter(loaded.style)
    try:
        while (piece := pieces.get()) is not None:
            yield splitter.feed(piece), None
    finally:
        stop.set()
        worker.join()  # the model is free again before the next question starts
    if "error" in outcome:
        raise outcome["error"]
    yield splitter.current(), outcome["answer"]


def _thinking_message(content: str, closed: bool, seconds: float | None, title: str = THINKING):
    import gradio as gr
    metadata = {"title": title, "status": "done" if closed else "pending"}
    if seconds is not None:
        metadata["duration"] = round(seconds, 1)
    return gr.ChatMessage(content=content, metadata=metadata)


def _as_written(text: str) -> str:
    """Text shown exactly as the model wrote it (its tags visible, not taken for HTML)."""
    return html.escape(text, quote=False)


def streaming_messages(split: Split, seconds: float | None) -> list:
    """The messages while the answer arrives: the thinking panel (once reasoning started) and the answer so far."""
    import gradio as gr
    messages = [_thinking_message(split.thinking, split.reasoning_closed, seconds)] if split.reasoning else []
    shown = _as_written(split.text.strip()) if split.status in UNREADABLE else split.response
    return messages + ([gr.ChatMessage(content=shown)] if shown else [])


def final_messages(answer: Answer, split: Split, seconds: float | None, budget: Budget) -> list:
    """The finished answer, by answer_batch's status: the response as it is, or flagged incomplete."""
    import gradio as gr
    messages = []
    if split.reasoning:
        title = THINKING if split.reasoning_closed else f"{THINKING} (did not finish)"
        messages.append(_thinking_message(answer.thinking, True, seconds, title))
    if answer.status == "complete":
        body = answer.response
    else:
        fix = ("the question leaves too little of the model's context for a longer answer" if budget.capped else
               "raise \"Max new tokens\" under Settings and ask again")
        shown = _as_written(answer.text) if answer.status in UNREADABLE else answer.response
        body = (f"**Incomplete answer** (`{answer.status}`): {WHY_INCOMPLETE.get(answer.status, answer.status)}"
                + (f"; {fix}." if answer.status in ("think_unclosed", "response_unclosed") else ".")
                + (f"\n\nWhat it wrote:\n\n{shown}" if shown else ""))
    return messages + [gr.ChatMessage(content=f"{body}\n\n*{DISCLAIMER}*")]


def answer_messages(loaded, question: str, budget: Budget, sampling: Sampling):
    """Yields the list of messages shown for this question, each time more of the answer arrives."""
    start, closed_after = time.monotonic(), None
    alert = emergency_messages(question)  # chest pain, stroke signs, suicidal thoughts: the emergency line first
    if alert:
        yield alert
    with contextlib.closing(stream_answer(loaded, question, budget, sampling)) as stream:  # closed: generation stops
        for split, answer in stream:
            if split.reasoning_closed and closed_after is None:
                closed_after = time.monotonic() - start
            seconds = closed_after if closed_after is not None else (time.monotonic() - start if answer else None)
            yield alert + (final_messages(answer, split, seconds, budget) if answer else
                           streaming_messages(split, seconds))


def emergency_messages(question: str) -> list:
    """The emergency line (medreason/answers/emergency.py) as the first message, for a question about an emergency; else []."""
    import gradio as gr
    line = emergency_line(question)
    return [gr.ChatMessage(content=f"**{line}**")] if line else []


def make_responder(loaded, max_continuations: int, continuation_tokens: int):
    """The ChatInterface function: (message, history, *settings) -> yields the assistant messages. Each question is
    asked on its own, with the training prompt (the model was trained on single questions)."""
    import gradio as gr

    def respond(message, history, max_new_tokens, sample, temperature, top_p, repetition_penalty):
        question = (message or "").strip()
        if not question:
            yield [gr.ChatMessage(content=EMPTY_QUESTION)]
            return
        budget = fit_budget(loaded, question, int(max_new_tokens), max_continuations, continuation_tokens)
        if isinstance(budget, str):
            yield [gr.ChatMessage(content=budget)]
            return
        sampling = Sampling(bool(sample), float(temperature), float(top_p), float(repetition_penalty))
        yield from answer_messages(loaded, question, budget, sampling)

    return respond


def _parameters(model) -> str:
    count = model.n_params() if hasattr(model, "n_params") else \
        sum(p.numel() for name, p in model.named_parameters() if "lora_" not in name)  # a GGUF: llama.cpp counts
    return f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.0f}M"


def _short(name: str) -> str:
    """An absolute folder as its last two parts (a Hub id or a relative path as given)."""
    parts = Path(name).parts
    return f"…/{'/'.join(parts[-2:])}" if Path(name).is_absolute() and len(parts) > 3 else name


def banner(loaded, source: str) -> str:
    """What the model is, in one visible box: its base, that it is a small fine-tune, what it is for."""
    base = (f"{EMBEDDED_HUB_ID} (the 4-bit build embedded in this project)" if loaded.base_model == EMBEDDED
            else _short(loaded.base_model))
    what = (f"a small LoRA fine-tune (adapter `{_short(source)}`) of **{base}**" if loaded.kind == "adapter"
            else f"a fine-tuned model (`{_short(source)}`, a GGUF answered by llama.cpp)" if loaded.kind == "gguf"
            else f"a fine-tuned model (`{_short(source)}`, merged)")
    return (f"**What this is:** {what}, {_parameters(loaded.model)} parameters, trained on medical "
            f"chain-of-thought examples to reason step by step before it answers. It is a small research model: "
            f"it can be confidently wrong. **For education only, not medical advice**: never use it for a health "
            f"decision. Each question is answered on its own (earlier messages are not read).")


def settings_inputs(max_new_tokens: int, sampling: Sampling) -> list:
    import gradio as gr
    # render=False: ChatInterface places them in its Settings accordion under the chat
    return [gr.Slider(16, max(4096, max_new_tokens), value=max_new_tokens, step=16, label="Max new tokens",
                      info="the answer's token budget (reasoning included); a cut-off answer is continued",
                      render=False),
            gr.Checkbox(value=sampling.do_sample, label="Sample", info="off = greedy decoding (reproducible)",
                        render=False),
            gr.Slider(0.05, 1.5, value=sampling.temperature, step=0.05, label="Temperature (when sampling)",
                      render=False),
            gr.Slider(0.05, 1.0, value=sampling.top_p, step=0.05, label="Top-p (when sampling)", render=False),
            gr.Slider(1.0, 1.5, value=sampling.repetition_penalty, step=0.05, label="Repetition penalty",
                      info=">1 discourages loops in small models", render=False)]


def build_page(loaded, source: str, examples: list[str], max_new_tokens: int, sampling: Sampling,
               max_continuations: int, continuation_tokens: int, concurrency_limit: int, queue_size: int):
    """The page, queued: `concurrency_limit` answers are generated at once, up to `queue_size` more wait (each
    user sees their place in the queue)."""
    import gradio as gr
    with gr.Blocks(title=TITLE, analytics_enabled=False) as page:
        gr.Markdown(f"# {TITLE}")
        gr.Markdown(banner(loaded, source), elem_id="banner", container=True)
        gr.ChatInterface(
            make_responder(loaded, max_continuations, continuation_tokens),
            chatbot=gr.Chatbot(label="Answers", height=560, elem_id="chat"),
            textbox=gr.Textbox(placeholder="Ask a medical question…", elem_id="question"),
            additional_inputs=settings_inputs(max_new_tokens, sampling),
            additional_inputs_accordion=gr.Accordion("Settings", open=False, render=False),
            examples=[[question] for question in examples], cache_examples=False,
            concurrency_limit=concurrency_limit, analytics_enabled=False)
    return page.queue(default_concurrency_limit=concurrency_limit, max_size=queue_size)
