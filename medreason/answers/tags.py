"""Parse an answer into its reasoning and its response, with a status saying how well it is formed, for each answer
layout (PROMPT_STYLE) the prompt formatter writes (medreason/answers/prompts.py):

  think_response  <think>reasoning</think><response>answer</response>      (the default)
  huatuo          ## Thinking / reasoning / ## Final Response / answer     (HuatuoGPT-o1's layout)
  r1              <think>reasoning</think> answer                          (DeepSeek-R1's habit; the opening <think>
                                                                            may already sit in the prompt)
  plain           answer                                                   (no reasoning block)

Statuses, from best to worst-formed (the same names for every layout):
  complete          the reasoning closed and a non-empty answer that ended (closing tag, or the end of the turn)
  think_unclosed    the reasoning opened, never closed (typically: ran out of tokens while reasoning)
  response_missing  the reasoning closed but no answer follows
  response_unclosed the answer started but did not end (no closing tag / cut by the token budget)
  no_tags           no layout marker at all
  malformed         markers out of order, repeated, empty blocks or text before the reasoning
  looping           cut by the token budget while repeating itself (the same sentence again and again): not
                    continued, and counted apart from an answer that merely ran out of tokens

`ended` says whether generation stopped on its own (end of turn) rather than on the token budget: for layouts whose
answer has no closing marker (huatuo, r1, plain) it is what tells a whole answer from a cut one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

STATUSES = ("complete", "think_unclosed", "response_missing", "response_unclosed", "no_tags", "malformed", "looping")

TAGS = ("<think>", "</think>", "<response>", "</response>")
_THINK = re.compile(r"\s*<think>(?P<body>.*?)(?P<close></think>|\Z)(?P<rest>.*)", re.S)
_RESPONSE = re.compile(r"\s*<response>(?P<body>.*?)(?P<close></response>|\Z)(?P<rest>.*)", re.S)
HUATUO_THINKING, HUATUO_RESPONSE = "## Thinking", "## Final Response"
_HEADINGS = re.compile(r"^##\s*(Thinking|Final Response)\s*$", re.M)


@dataclass(frozen=True)
class ParsedAnswer:
    thinking: str
    response: str
    status: str

    @property
    def complete(self) -> bool:
        return self.status == "complete"


def _has_tag(text: str, tags=TAGS) -> bool:
    return any(tag in text for tag in tags)


def _parse_think_response(text: str, ended: bool) -> ParsedAnswer:
    if not _has_tag(text):
        return ParsedAnswer("", text.strip(), "no_tags")
    think = _THINK.match(text)
    if not think or _has_tag(think["body"]):
        return ParsedAnswer("", "", "malformed")
    thinking = think["body"].strip()
    if not think["close"]:
        return ParsedAnswer(thinking, "", "think_unclosed")
    rest = think["rest"]
    response = _RESPONSE.match(rest)
    if not response:
        return ParsedAnswer(thinking, "", "malformed" if _has_tag(rest) else "response_missing")
    body = response["body"]
    if _has_tag(body):
        return ParsedAnswer(thinking, "", "malformed")
    if not response["close"]:
        return ParsedAnswer(thinking, body.strip(), "response_unclosed")
    if not thinking or not body.strip() or _has_tag(response["rest"]):
        return ParsedAnswer(thinking, body.strip(), "malformed")
    return ParsedAnswer(thinking, body.strip(), "complete")


def _open_answer(thinking: str, response: str, ended: bool) -> ParsedAnswer:
    """A reasoning block that closed, followed by an answer with no closing marker of its own."""
    if not response:
        return ParsedAnswer(thinking, "", "response_missing")
    if not ended:
        return ParsedAnswer(thinking, response, "response_unclosed")
    return ParsedAnswer(thinking, response, "complete" if thinking else "malformed")


def _parse_huatuo(text: str, ended: bool) -> ParsedAnswer:
    headings = list(_HEADINGS.finditer(text))
    if not headings:
        return ParsedAnswer("", text.strip(), "no_tags")
    names = [m.group(1) for m in headings]
    if names[0] != "Thinking" or text[:headings[0].start()].strip() or names[1:] not in ([], ["Final Response"]):
        return ParsedAnswer("", "", "malformed")
    if len(headings) == 1:
        return ParsedAnswer(text[headings[0].end():].strip(), "", "think_unclosed")
    thinking = text[headings[0].end():headings[1].start()].strip()
    return _open_answer(thinking, text[headings[1].end():].strip(), ended)


def _parse_r1(text: str, ended: bool) -> ParsedAnswer:
    body = text.lstrip()
    if body.startswith("<think>"):  # written by the model; with an R1 chat template the prompt already opened it
        body = body[len("<think>"):]
    if "<think>" in body or body.count("</think>") > 1:
        return ParsedAnswer("", "", "malformed")
    if "</think>" not in body:
        return ParsedAnswer(body.strip(), "", "think_unclosed")
    thinking, response = (part.strip() for part in body.split("</think>"))
    return _open_answer(thinking, response, ended)


def _parse_plain(text: str, ended: bool) -> ParsedAnswer:
    response = text.strip()
    if not response:
        return ParsedAnswer("", "", "response_missing")
    return ParsedAnswer("", response, "complete" if ended else "response_unclosed")


PARSERS = {"think_response": _parse_think_response, "huatuo": _parse_huatuo, "r1": _parse_r1,
           "plain": _parse_plain}


def parse_answer(text: str, style="think_response", ended: bool = True) -> ParsedAnswer:
    """The answer's parts and status in the layout of `style` (a PromptStyle or its name). `ended`: generation
    stopped on its own (end of turn, closed answer) rather than on the token budget."""
    parsed = PARSERS[getattr(style, "name", style)](text, ended)
    if not ended and not parsed.complete and is_looping(text):
        return ParsedAnswer(parsed.thinking, parsed.response, "looping")
    return parsed


def parse_all(texts: list[str], style="think_response", ended: list[bool] | None = None) -> list[ParsedAnswer]:
    ended = [True] * len(texts) if ended is None else ended
    return [parse_answer(text, style, e) for text, e in zip(texts, ended, strict=True)]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def is_looping(text: str, window: int = 12, repeats: int = 3, min_words: int = 4) -> bool:
    """Whether the end of a text repeats itself: one sentence (of min_words or more) at least `repeats` times among
    the last `window` sentences, or the last 240 characters made of one short stretch written over and over."""
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if s.strip()][:-1][-window:]  # the last may be cut
    counted = [s for s in sentences if len(s.split()) >= min_words]
    if counted and max(counted.count(s) for s in set(counted)) >= repeats:
        return True
    tail = text.rstrip()[-240:]
    return len(tail) == 240 and any(tail == (tail[-period:] * (240 // period + 1))[-240:] for period in range(1, 81))


# Every marker of each layout, in order: the reasoning block's opening and closing first (plain has none; r1's
# opening may sit in the prompt). A display holds back text that may be the start of one (medreason/answers/streaming.py).
MARKERS = {"think_response": TAGS, "r1": ("<think>", "</think>"), "huatuo": (HUATUO_THINKING, HUATUO_RESPONSE),
           "plain": ()}
REASONING_MARKERS = {name: markers[:2] for name, markers in MARKERS.items() if markers}


def closing_marker(style="think_response") -> str | None:
    """The text that completes an answer of this layout (nothing but the end of the turn may follow), if it has one."""
    return "</response>" if getattr(style, "name", style) == "think_response" else None


def split_reasoning(text: str, style="think_response") -> tuple[str, str, bool]:
    """(reasoning so far, the text after it, whether it has closed) of an answer that may still be arriving, for
    display. Before the opening marker nothing is reasoning yet; a style with no reasoning block is all answer."""
    markers = REASONING_MARKERS.get(getattr(style, "name", style))
    if markers is None:
        return "", text, True
    opening, closing = markers
    start = text.find(opening)
    if start < 0 and not (getattr(style, "name", style) == "r1" and closing in text):
        return "", text, False
    body = start + len(opening) if start >= 0 else 0
    end = text.find(closing, body)
    if end < 0:
        return text[body:].strip(), "", False
    return text[body:end].strip(), text[end + len(closing):].lstrip(), True


def reasoning_closed_at(text: str, style="think_response") -> int | None:
    """Where the reasoning block of an answer ends (after </think> or at the end of the ## Thinking section, where
    the answer should start), or None if it has not closed."""
    name = getattr(style, "name", style)
    if name in ("think_response", "r1"):
        closing = REASONING_MARKERS[name][1]
        end = text.find(closing)
        return None if end < 0 else end + len(closing)
    if name == "huatuo":
        match = re.search(r"^##\s*Final Response\s*$", text, re.M)
        return None if match is None else match.end()
    return None
