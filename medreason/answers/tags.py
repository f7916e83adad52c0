"""Read an answer by its style: its reasoning, its response and a status saying how well it is formed.

Every function here takes the style as a PromptStyle or its name (PROMPT_STYLE) and asks that style object
(medreason/answers/styles.py), which owns its parser, its markers and where its reasoning ends: evaluation, inference,
repair, streaming and the metrics read answers through here. The statuses and layouts are listed in styles.py.
"""
from __future__ import annotations

from medreason.answers.styles import (  # noqa: F401 (re-exported: the pipeline's names for these)
    HUATUO_RESPONSE, HUATUO_THINKING, PROMPT_STYLES, STATUSES, TAGS, ParsedAnswer, as_style, is_looping)

# Every marker of each style by name, read from the styles (the reasoning's opening and closing first; plain has
# none; r1's opening may sit in the prompt). A display holds back text that may be the start of one (streaming.py).
MARKERS = {name: style.markers for name, style in PROMPT_STYLES.items()}


def parse_answer(text: str, style="think_response", ended: bool = True) -> ParsedAnswer:
    """The answer's parts and status in the layout of `style` (a PromptStyle or its name). `ended`: generation
    stopped on its own (end of turn, closed answer) rather than on the token budget."""
    return as_style(style).parse(text, ended)


def parse_all(texts: list[str], style="think_response", ended: list[bool] | None = None) -> list[ParsedAnswer]:
    ended = [True] * len(texts) if ended is None else ended
    return [parse_answer(text, style, e) for text, e in zip(texts, ended, strict=True)]


def closing_marker(style="think_response") -> str | None:
    """The text that completes an answer of this layout (nothing but the end of the turn may follow), if it has one."""
    return as_style(style).closing_marker


def split_reasoning(text: str, style="think_response") -> tuple[str, str, bool]:
    """(reasoning so far, the text after it, whether it has closed) of an answer that may still be arriving, for
    display. Before the opening marker nothing is reasoning yet; a style with no reasoning block is all answer."""
    return as_style(style).split_reasoning(text)


def reasoning_closed_at(text: str, style="think_response") -> int | None:
    """Where the reasoning block of an answer ends (after </think> or at the end of the ## Thinking section, where
    the answer should start), or None if it has not closed."""
    return as_style(style).reasoning_closed_at(text)
