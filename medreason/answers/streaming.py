"""Split an answer that arrives piece by piece into its reasoning and its response, for a live display.

At each moment the split is what tags.parse_answer makes of the text so far, less a marker still arriving: text
ending in "</thi" is held back until the next piece says whether it is a tag, so a tag cut across two pieces never
shows as words. The layout (PROMPT_STYLE) decides the markers; parse_answer and reasoning_closed_at decide the rest.
"""
from __future__ import annotations

from dataclasses import dataclass

from medreason.answers.styles import as_style
from medreason.answers.tags import parse_answer, reasoning_closed_at

UNREADABLE = ("no_tags", "malformed")  # statuses whose text cannot be split: shown as written


@dataclass(frozen=True)
class Split:
    thinking: str
    response: str
    reasoning: bool  # a reasoning block has started (a page shows its panel)
    reasoning_closed: bool  # ... and has ended (the panel folds)
    status: str  # parse_answer's status of the text so far: not final while the answer is still arriving
    text: str  # the text so far, less a marker still arriving


def held_back(text: str, markers) -> int:
    """How many characters at the end of `text` may be the start of a marker (0 if none)."""
    longest = max((len(m) for m in markers), default=0)
    for n in range(min(len(text), longest - 1), 0, -1):
        tail = text[-n:]
        if any(len(tail) < len(m) and m.startswith(tail) for m in markers):
            return n
    return 0


def split(text: str, style) -> Split:
    """The current split of an answer still arriving (ended=False: an answer without a closing marker is cut)."""
    style = as_style(style)
    shown = text[:len(text) - held_back(text, style.markers)]
    parsed = parse_answer(shown, style, ended=False)
    reasoning = style.reasoning and parsed.status not in UNREADABLE
    closed = reasoning and reasoning_closed_at(shown, style) is not None
    return Split(parsed.thinking, parsed.response, reasoning, closed, parsed.status, shown)


class StreamSplitter:
    """Feed it pieces of text as they come; each feed returns the split of everything so far."""

    def __init__(self, style):
        self.style, self.text = style, ""

    def feed(self, piece: str) -> Split:
        self.text += piece
        return self.current()

    def current(self) -> Split:
        return split(self.text, self.style)
