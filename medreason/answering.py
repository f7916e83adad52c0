"""Answer questions and repair answers cut off by the token budget, without ever faking a closing tag.

An answer that stops on the budget inside <think> or <response> is continued from where it stopped (up to
MAX_CONTINUATIONS times). One whose </think> closed with no <response> after it gets the opening tag, and the model
writes the rest. Closing tags are only ever written by the model: what stays incomplete is reported as such.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from .generation import GREEDY, Sampling, generate
from .prompts import PromptStyle, generation_prompt
from .tags import parse_answer

RESPONSE_OPEN = "<response>\n"


@dataclass
class Answer:
    question: str
    text: str  # everything the model wrote (plus any <response> opening we added, see opened_response)
    thinking: str
    response: str
    status: str
    tokens: int
    continuations: int
    opened_response: bool
    seconds: float  # wall time of the batch that answered it

    def as_row(self) -> dict:
        return dict(vars(self))


def _next_step(text: str, hit_budget: bool) -> str | None:
    """What to do with a partial answer: 'continue', 'open_response', or None (final as it is)."""
    parsed = parse_answer(text)
    if parsed.status in ("think_unclosed", "response_unclosed") and hit_budget:
        return "continue"
    if parsed.status == "response_missing" and not text.split("</think>", 1)[1].strip():
        # Cut off right after </think>: the model may still open <response> itself. Stopped there on its own:
        # open <response> for it and let it write the answer.
        return "continue" if hit_budget else "open_response"
    return None


def answer_batch(model, tokenizer, questions: list[str], style: PromptStyle, max_new_tokens: int,
                 sampling: Sampling = GREEDY, max_continuations: int = 2, continuation_tokens: int = 256,
                 streamer=None) -> list[Answer]:
    start = time.time()
    prompts = [generation_prompt(tokenizer, q, style) for q in questions]
    texts, tokens = [""] * len(questions), [0] * len(questions)
    rounds, opened = [0] * len(questions), [False] * len(questions)
    todo, budget = list(range(len(questions))), max_new_tokens
    while todo:
        outs = generate(model, tokenizer, [prompts[i] + texts[i] for i in todo], budget, batch_size=len(todo),
                        sampling=sampling, progress=False, streamer=streamer)
        still = []
        for i, out in zip(todo, outs):
            texts[i] += out.text
            tokens[i] += out.tokens
            step = _next_step(texts[i], out.hit_budget)
            if step is None or rounds[i] >= max_continuations:
                continue
            if step == "open_response":
                texts[i] = texts[i].rstrip() + "\n" + RESPONSE_OPEN
                opened[i] = True
                if streamer is not None:
                    streamer.put_text("\n" + RESPONSE_OPEN)
            rounds[i] += 1
            still.append(i)
        todo, budget = still, continuation_tokens
    seconds = time.time() - start
    answers = []
    for i, question in enumerate(questions):
        parsed = parse_answer(texts[i])
        answers.append(Answer(question, texts[i].strip(), parsed.thinking, parsed.response, parsed.status,
                              tokens[i], rounds[i], opened[i], round(seconds, 2)))
    return answers


def answer_all(model, tokenizer, questions: list[str], style: PromptStyle, max_new_tokens: int, batch_size: int,
               **kwargs) -> list[Answer]:
    """Batches of similar-length questions, each answered and repaired together."""
    from tqdm.auto import tqdm
    order = sorted(range(len(questions)), key=lambda i: len(questions[i]), reverse=True)
    answers: list[Answer | None] = [None] * len(questions)
    for start in tqdm(range(0, len(order), batch_size), desc="answering", unit="batch"):
        batch = order[start:start + batch_size]
        for i, answer in zip(batch, answer_batch(model, tokenizer, [questions[i] for i in batch], style,
                                                 max_new_tokens, **kwargs)):
            answers[i] = answer
    return answers
