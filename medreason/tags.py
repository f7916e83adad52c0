"""Parse an answer into its <think> and <response> parts, with a status saying how well it is formed."""
from __future__ import annotations

import re
from dataclasses import dataclass

TAGS = ("<think>", "</think>", "<response>", "</response>")

# Statuses, from best to worst-formed:
#   complete          <think>…</think> then <response>…</response>, both non-empty, nothing tagged after
#   think_unclosed    <think> opened, never closed (typically: ran out of tokens while reasoning)
#   response_missing  </think> closed but <response> never opened
#   response_unclosed <response> opened, never closed
#   no_tags           no tag at all
#   malformed         tags out of order, repeated, empty blocks or text before <think>
STATUSES = ("complete", "think_unclosed", "response_missing", "response_unclosed", "no_tags", "malformed")

_THINK = re.compile(r"\s*<think>(?P<body>.*?)(?P<close></think>|\Z)(?P<rest>.*)", re.S)
_RESPONSE = re.compile(r"\s*<response>(?P<body>.*?)(?P<close></response>|\Z)(?P<rest>.*)", re.S)


@dataclass(frozen=True)
class ParsedAnswer:
    thinking: str
    response: str
    status: str

    @property
    def complete(self) -> bool:
        return self.status == "complete"


def _has_tag(text: str) -> bool:
    return any(tag in text for tag in TAGS)


def parse_answer(text: str) -> ParsedAnswer:
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
