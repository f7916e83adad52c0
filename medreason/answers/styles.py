"""The answer styles (PROMPT_STYLE): one object per style holds everything that style decides.

A style says how the question is asked (system prompt, user template), how a row's reasoning and answer become the
assistant's text (answer_template), how an answer in that layout is read back (its parser, its markers, where its
reasoning ends, what closes it, what closes a reasoning cut by the thinking budget) and how a model card describes
it (card_text). Adding a style is one entry in PROMPT_STYLES. Everything else reaches a style through this registry:
the chat-prompt builders (prompts.py), answer parsing by style or name (tags.py), repair (answering.py), streaming.

  think_response  <think>reasoning</think><response>answer</response>      (the default)
  huatuo          ## Thinking / reasoning / ## Final Response / answer     (HuatuoGPT-o1's layout)
  r1              <think>reasoning</think> answer                          (DeepSeek-R1's habit; the opening <think>
                                                                            may already sit in the prompt)
  plain           answer                                                   (no reasoning block)

Statuses of a parsed answer, from best to worst-formed (the same names for every style):
  complete          the reasoning closed and a non-empty answer that ended (closing tag, or the end of the turn)
  think_unclosed    the reasoning opened, never closed (typically: ran out of tokens while reasoning)
  response_missing  the reasoning closed but no answer follows
  response_unclosed the answer started but did not end (no closing tag / cut by the token budget)
  no_tags           no layout marker at all
  malformed         markers out of order, repeated, empty blocks or text before the reasoning
  looping           cut by the token budget while repeating itself (the same sentence again and again): not
                    continued, and counted apart from an answer that merely ran out of tokens

`ended` says whether generation stopped on its own (end of turn) rather than on the token budget: for styles whose
answer has no closing marker (huatuo, r1, plain) it is what tells a whole answer from a cut one.

This module imports nothing else of medreason but config.errors, so every other module may import it.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass

from medreason.config.errors import UserError

SYSTEM_PROMPT = (
    "You are a careful medical reasoning assistant. First think through the question step by step inside "
    "<think></think> tags, then give a clear, concise answer inside <response></response> tags. "
    "Your answers are for education only and are not a substitute for professional medical advice."
)
HUATUO_SYSTEM_PROMPT = (
    "You are a careful medical reasoning assistant. First think through the question step by step under a "
    "'## Thinking' heading, then give a clear, concise answer under a '## Final Response' heading. "
    "Your answers are for education only and are not a substitute for professional medical advice."
)
PLAIN_SYSTEM_PROMPT = (
    "You are a careful medical assistant. Give a clear, concise, accurate answer. "
    "Your answers are for education only and are not a substitute for professional medical advice."
)
# DeepSeek advises no system prompt for its R1 models, with every instruction in the user turn.
R1_USER_TEMPLATE = (
    "You are a medical expert with advanced knowledge in clinical reasoning, diagnostics and treatment planning. "
    "Think through the question step by step, then answer it clearly. Your answer is for education only.\n\n"
    "Question: {question}"
)

STATUSES = ("complete", "think_unclosed", "response_missing", "response_unclosed", "no_tags", "malformed", "looping")

TAGS = ("<think>", "</think>", "<response>", "</response>")  # think_response's markers
HUATUO_THINKING, HUATUO_RESPONSE = "## Thinking", "## Final Response"  # huatuo's headings
_THINK = re.compile(r"\s*<think>(?P<body>.*?)(?P<close></think>|\Z)(?P<rest>.*)", re.S)
_RESPONSE = re.compile(r"\s*<response>(?P<body>.*?)(?P<close></response>|\Z)(?P<rest>.*)", re.S)
_HEADINGS = re.compile(r"^##\s*(Thinking|Final Response)\s*$", re.M)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass(frozen=True)
class ParsedAnswer:
    thinking: str
    response: str
    status: str

    @property
    def complete(self) -> bool:
        return self.status == "complete"


def is_looping(text: str, window: int = 12, repeats: int = 3, min_words: int = 4) -> bool:
    """Whether the end of a text repeats itself: one sentence (of min_words or more) at least `repeats` times among
    the last `window` sentences, or the last 240 characters made of one short stretch written over and over."""
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if s.strip()][:-1][-window:]  # the last may be cut
    counted = [s for s in sentences if len(s.split()) >= min_words]
    if counted and max(counted.count(s) for s in set(counted)) >= repeats:
        return True
    tail = text.rstrip()[-240:]
    return len(tail) == 240 and any(tail == (tail[-period:] * (240 // period + 1))[-240:] for period in range(1, 81))


# --- the parsers: (text, ended) -> ParsedAnswer, one per layout (the looping check is the style's, for all) ---------

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


# --- the style ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class PromptStyle:
    """How the question is asked, how the reasoning and the answer are laid out in the assistant turn, how such an
    answer is read back, and how a model card describes it."""
    name: str
    answer_template: str  # with {thinking} and {response}
    parser: Callable[[str, bool], ParsedAnswer]  # (text, ended) -> parts and status; parse() adds the looping check
    card_text: str  # the model card's description of this answer layout (Markdown, naming its own markers)
    markers: tuple[str, ...] = ()  # every marker, the reasoning's opening and closing first; () = no reasoning block
    reasoning_end: str | None = None  # regex (multiline) whose match ends the reasoning, where the answer starts
    closing_marker: str | None = None  # the text that completes an answer (only the end of the turn may follow)
    opened_in_prompt: bool = False  # the chat template may already open the reasoning in the prompt (DeepSeek-R1)
    response_opening: str = ""  # written for a model that closed its reasoning and stopped (answering.py)
    budget_closing: str | None = None  # closes a reasoning cut by the thinking budget and opens the answer
    system_prompt: str = SYSTEM_PROMPT  # "" = no system message
    user_template: str = "{question}"
    as_text: bool = False  # trained as rendered text: DeepSeek-R1 chat templates drop the reasoning of assistant turns

    @property
    def reasoning(self) -> bool:
        """The answer carries a reasoning block (rows need one to train it)."""
        return bool(self.markers)

    @property
    def reasoning_markers(self) -> tuple[str, str] | None:
        """(opening, closing) of the reasoning block, or None for a style without one."""
        return (self.markers[0], self.markers[1]) if self.markers else None

    def answer(self, thinking: str, response: str) -> str:
        return self.answer_template.format(thinking=thinking.strip(), response=response.strip())

    def with_system_prompt(self, system_prompt: str) -> PromptStyle:
        return dataclasses.replace(self, system_prompt=system_prompt)

    def parse(self, text: str, ended: bool = True) -> ParsedAnswer:
        """The answer's parts and status in this layout. `ended`: generation stopped on its own (end of turn,
        closed answer) rather than on the token budget."""
        parsed = self.parser(text, ended)
        if not ended and not parsed.complete and is_looping(text):
            return ParsedAnswer(parsed.thinking, parsed.response, "looping")
        return parsed

    def reasoning_closed_at(self, text: str) -> int | None:
        """Where the reasoning block ends (after </think>, after the "## Final Response" heading: where the answer
        should start), or None if it has not closed or the style has none."""
        match = re.search(self.reasoning_end, text, re.M) if self.reasoning_end else None
        return None if match is None else match.end()

    def split_reasoning(self, text: str) -> tuple[str, str, bool]:
        """(reasoning so far, the text after it, whether it has closed) of an answer that may still be arriving, for
        display. Before the opening marker nothing is reasoning yet; a style with no reasoning block is all answer."""
        if not self.reasoning_markers:
            return "", text, True
        opening, closing = self.reasoning_markers
        start = text.find(opening)
        if start < 0 and not (self.opened_in_prompt and closing in text):
            return "", text, False
        body = start + len(opening) if start >= 0 else 0
        end = text.find(closing, body)
        if end < 0:
            return text[body:].strip(), "", False
        return text[body:end].strip(), text[end + len(closing):].lstrip(), True


PROMPT_STYLES = {style.name: style for style in (
    PromptStyle(
        name="think_response", answer_template="<think>\n{thinking}\n</think>\n<response>\n{response}\n</response>",
        parser=_parse_think_response, markers=TAGS, reasoning_end=re.escape("</think>"), closing_marker="</response>",
        response_opening="<response>\n", budget_closing="\n</think>\n<response>\n",
        card_text="It reasons step by step inside `<think>…</think>`, then gives its answer inside "
                  "`<response>…</response>`."),
    # HuatuoGPT-o1's layout (the pipeline that wrote medical-o1-reasoning-SFT).
    PromptStyle(
        name="huatuo", answer_template="## Thinking\n\n{thinking}\n\n## Final Response\n\n{response}",
        system_prompt=HUATUO_SYSTEM_PROMPT, parser=_parse_huatuo, markers=(HUATUO_THINKING, HUATUO_RESPONSE),
        reasoning_end=r"^##\s*Final Response\s*$", budget_closing="\n\n## Final Response\n\n",
        card_text="It reasons step by step under a `## Thinking` heading, then gives its answer under a "
                  "`## Final Response` heading (HuatuoGPT-o1's layout)."),
    # DeepSeek-R1's habit: reasoning in <think>...</think>, then the answer untagged. Its distilled models' chat
    # template ends the generation prompt with "<think>\n" and strips everything up to </think> from assistant turns,
    # so these examples are rendered as text (the prompt through the template, the answer as written).
    PromptStyle(
        name="r1", answer_template="<think>\n{thinking}\n</think>\n\n{response}", system_prompt="",
        user_template=R1_USER_TEMPLATE, as_text=True, parser=_parse_r1, markers=("<think>", "</think>"),
        reasoning_end=re.escape("</think>"), opened_in_prompt=True, budget_closing="\n</think>\n\n",
        card_text="It reasons step by step inside `<think>…</think>` (DeepSeek-R1's layout: the chat template may "
                  "already open `<think>` in the prompt), then gives its answer as plain text after `</think>`."),
    # The answer alone: instruction/response data, or medical-o1 rows trained without their reasoning.
    PromptStyle(
        name="plain", answer_template="{response}", system_prompt=PLAIN_SYSTEM_PROMPT, parser=_parse_plain,
        card_text="It gives its answer directly as plain text, with no separate reasoning block."),
)}


def get_style(name: str) -> PromptStyle:
    if name not in PROMPT_STYLES:
        raise UserError(f"PROMPT_STYLE={name!r} is not known. Choose one of: {', '.join(PROMPT_STYLES)}.")
    return PROMPT_STYLES[name]


def as_style(style: PromptStyle | str) -> PromptStyle:
    """A PromptStyle as given (with its own system prompt), or the registered one of that name."""
    return style if isinstance(style, PromptStyle) else get_style(style)
