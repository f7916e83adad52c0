"""Answer questions and repair answers cut off by the token budget, without ever faking a closing tag.

An answer that stops on the budget inside its reasoning or its response is continued from where it stopped (up to
MAX_CONTINUATIONS times). One whose reasoning closed with nothing after it gets the style's response opening (e.g.
<response>), and the model writes the rest. Closing tags are only ever written by the model: what stays incomplete
is reported as such, and an answer that loops (repeats itself until the budget) is not continued.

The thinking budget (think_budget / answer_budget, as m1 does): an answer still inside its reasoning after
think_budget tokens gets its reasoning closed for it, in the style's own layout (BUDGET_CLOSINGS: </think> and the
response opening, or the "## Final Response" heading), and is asked to answer within answer_budget tokens. That is
the one place a closing marker is written for the model; the answer says so (budget_closed) and reports count it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from medreason.answers.generation import GREEDY, Sampling, generate
from medreason.answers.prompts import PROMPT_STYLES, PromptStyle, generation_prompt
from medreason.answers.tags import closing_marker, parse_answer, reasoning_closed_at

# What closes a reasoning block that ran out of its thinking budget, per style: each style's budget_closing (a style
# with no reasoning block, "plain", has nothing to close: its answers are only cut and continued as before).
BUDGET_CLOSINGS = {name: style.budget_closing for name, style in PROMPT_STYLES.items() if style.budget_closing}


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
    budget_closed: bool = False  # still reasoning at the thinking budget: we closed it and asked for the answer

    def as_row(self) -> dict:
        return dict(vars(self))


def _next_step(text: str, hit_budget: bool, style: PromptStyle) -> str | None:
    """What to do with a partial answer: 'continue', 'open_response', or None (final as it is)."""
    parsed = parse_answer(text, style, ended=not hit_budget)
    if parsed.status in ("think_unclosed", "response_unclosed") and hit_budget:
        return "continue"
    closed = reasoning_closed_at(text, style)
    if parsed.status == "response_missing" and closed is not None and not text[closed:].strip():
        # Cut off right after the reasoning: the model may still open the response itself. Stopped there on its
        # own: open the response for it (where the style has an opening) and let it write the answer.
        return "continue" if hit_budget else "open_response" if style.response_opening else None
    return None


def _budget_closing(text: str, hit_budget: bool, style: PromptStyle) -> str | None:
    """The text that closes this answer's reasoning, when it ran out of its thinking budget still inside it."""
    closing = BUDGET_CLOSINGS.get(style.name)
    if not hit_budget or closing is None or reasoning_closed_at(text, style) is not None:
        return None
    return closing


def answer_batch(model, tokenizer, questions: list[str], style: PromptStyle, max_new_tokens: int,
                 sampling: Sampling = GREEDY, max_continuations: int = 2, continuation_tokens: int = 256,
                 streamer=None, engine: str = "auto", seed: int | None = None,
                 batch_size: int | None = None, think_budget: int | None = None,
                 answer_budget: int = 128) -> list[Answer]:
    """Answer each question (all at once: the engine schedules them), then repair the ones cut by the budget.

    think_budget: the answer's first think_budget tokens may reason; one still reasoning then has its reasoning
    closed (BUDGET_CLOSINGS) and answer_budget tokens to answer in; one whose reasoning closed on its own but whose
    response the budget cut also gets answer_budget tokens to finish it (so no answer is lost to the budget).
    None: max_new_tokens, then continuations."""
    start = time.time()
    prompts = [generation_prompt(tokenizer, q, style) for q in questions]
    texts, tokens = [""] * len(questions), [0] * len(questions)
    rounds, opened = [0] * len(questions), [False] * len(questions)
    closed_by_budget = [False] * len(questions)
    granted = [False] * len(questions)  # answer_budget given to a response that the think budget cut
    ended = [True] * len(questions)
    budgeted = bool(think_budget) and style.name in BUDGET_CLOSINGS
    first = think_budget if budgeted else max_new_tokens
    todo = {i: first for i in range(len(questions))}  # question -> the tokens it may write this round
    while todo:
        still: dict[int, int] = {}
        for budget in sorted(set(todo.values()), reverse=True):
            group = [i for i in todo if todo[i] == budget]
            outs = generate(model, tokenizer, [prompts[i] + texts[i] for i in group], budget,
                            batch_size=batch_size or len(group), sampling=sampling, progress=False,
                            streamer=streamer, engine=engine, stop_text=closing_marker(style), seed=seed)
            for i, out in zip(group, outs):
                texts[i] += out.text
                tokens[i] += out.tokens
                ended[i] = out.ended
                closing = _budget_closing(texts[i], out.hit_budget, style) if budgeted else None
                if closing and not closed_by_budget[i]:
                    texts[i] = texts[i].rstrip() + closing
                    closed_by_budget[i] = True
                    if streamer is not None:
                        streamer.put_text(closing)
                    still[i] = answer_budget
                    continue
                step = _next_step(texts[i], out.hit_budget, style)
                finishing = budgeted and step is not None and not closed_by_budget[i] and not granted[i]
                if finishing:  # reasoning closed on its own, but the think budget cut the response: answer_budget more
                    granted[i] = True
                elif step is None or rounds[i] >= max_continuations or closed_by_budget[i]:
                    continue  # an answer asked for after the budget closed its reasoning has answer_budget, no more
                if step == "open_response":
                    texts[i] = texts[i].rstrip() + "\n" + style.response_opening
                    opened[i] = True
                    if streamer is not None:
                        streamer.put_text("\n" + style.response_opening)
                rounds[i] += 1
                still[i] = answer_budget if finishing else continuation_tokens
        todo, seed = still, None if seed is None else seed + 1
    seconds = time.time() - start
    answers = []
    for i, question in enumerate(questions):
        parsed = parse_answer(texts[i], style, ended[i])
        answers.append(Answer(question, texts[i].strip(), parsed.thinking, parsed.response, parsed.status,
                              tokens[i], rounds[i], opened[i], round(seconds, 2), closed_by_budget[i]))
    return answers


def answer_all(model, tokenizer, questions: list[str], style: PromptStyle, max_new_tokens: int, batch_size: int,
               **kwargs) -> list[Answer]:
    """Every question answered and repaired, batch_size at a time (continuous batching: seats in flight)."""
    return answer_batch(model, tokenizer, questions, style, max_new_tokens, batch_size=batch_size, **kwargs)
