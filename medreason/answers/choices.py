"""Multiple-choice questions: the prompt (question + lettered options) and the letter extracted from an answer."""
from __future__ import annotations

import re

from medreason.answers.tags import parse_answer

INSTRUCTION = "Choose the single best option. End your response with: The answer is <letter>."

_EXPLICIT = re.compile(
    r"(?:answer|option|choice)\s*(?:is\s*:?|:|would be|=)?\s*(?:option\s*)?[(\[*]*([A-Z])[)\]*]?(?![A-Za-z])"
    r"(?P<more>\s*(?:or|and|/|,)\s*(?:option\s*)?[(\[]?[A-Z][)\]]?(?![A-Za-z]))?", re.I)
_LONE = re.compile(r"^\s*(?:option\s*)?[(\[]?([A-Z])(?:[)\].:]|\s*$)", re.I)


def mcq_question(question: str, options: dict[str, str]) -> str:
    """The user turn for a multiple-choice row."""
    lines = [question.strip(), "", "Options:"] + [f"{letter}. {text}" for letter, text in sorted(options.items())]
    return "\n".join(lines + ["", INSTRUCTION])


def extract_choice(answer: str, options: dict[str, str], style="think_response") -> str | None:
    """The chosen letter, or None when the answer names none or several.

    In order: an explicit statement ("the answer is C", "Answer: (B)") - the last one wins, but "A or B" is no
    choice; a lone letter opening the response ("C.", "(B)"); the text of exactly one option.
    """
    parsed = parse_answer(answer, style)
    text = parsed.response if parsed.response else answer
    letters = {letter.upper() for letter in options}
    explicit = [m for m in _EXPLICIT.finditer(text) if m.group(1).upper() in letters]
    if explicit:
        last = explicit[-1]
        return None if last.group("more") else last.group(1).upper()
    lone = _LONE.match(text)
    if lone and lone.group(1).upper() in letters:
        return lone.group(1).upper()
    lowered = text.lower()
    named = [letter for letter, option in options.items() if option.strip() and option.strip().lower() in lowered]
    return named[0].upper() if len(named) == 1 else None
