"""The one prompt formatter: training, evaluation and inference all build their prompts here.

A row (Question, Complex_CoT, Response) becomes a conversation in trl's prompt/completion form:
  prompt     = [system, user(question)]            -> masked out of the loss
  completion = [assistant(<think>…</think>\n<response>…</response>)]  -> trained, with the end-of-turn token
The model's own chat template turns it into text, so the same function serves any chat model.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError

SYSTEM_PROMPT = (
    "You are a careful medical reasoning assistant. First think through the question step by step inside "
    "<think></think> tags, then give a clear, concise answer inside <response></response> tags. "
    "Your answers are for education only and are not a substitute for professional medical advice."
)

DISCLAIMER = "Educational use only, not medical advice: consult a qualified clinician for any health decision."

# Llama-3.x chat templates write today's date into the system header (`strftime_now`) unless `date_string` is given,
# so a model trained on one day would be asked with another day's prompt. Every template that reads `date_string`
# gets this fixed date instead, at training, evaluation and inference alike (it is saved with the adapter's
# tokenizer). The value is Llama-3's own fallback when no clock is available.
TEMPLATE_DATE = "26 Jul 2024"
_DATE_PIN = '{%- set date_string = "' + TEMPLATE_DATE + '" %}'


@dataclass(frozen=True)
class PromptStyle:
    """How the reasoning and the answer are laid out in the assistant turn."""
    name: str
    answer_template: str  # with {thinking} and {response}
    system_prompt: str = SYSTEM_PROMPT

    def answer(self, thinking: str, response: str) -> str:
        return self.answer_template.format(thinking=thinking.strip(), response=response.strip())


# Another layout (HuatuoGPT's "## Thinking / ## Final Response", DeepSeek-R1's "### Chain of Thought") is one more
# entry here plus a parser in tags.py; PROMPT_STYLE in the trainer selects it.
PROMPT_STYLES = {
    "think_response": PromptStyle(
        "think_response", "<think>\n{thinking}\n</think>\n<response>\n{response}\n</response>"),
}


def pin_template_date(tokenizer):
    """Fix the date a chat template would read from the clock; a no-op for templates without one (SmolLM2's)."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or "strftime_now" not in template or template.startswith(_DATE_PIN):
        return tokenizer
    if "date_string" not in template:
        raise UserError("the model's chat template writes today's date (strftime_now) without a date_string "
                        "variable to fix it, so training and inference prompts would differ from day to day. Fix: "
                        "give the tokenizer a chat template that takes date_string (as Llama-3.x's do).")
    tokenizer.chat_template = _DATE_PIN + template
    return tokenizer


def get_style(name: str) -> PromptStyle:
    if name not in PROMPT_STYLES:
        raise UserError(f"PROMPT_STYLE={name!r} is not known. Choose one of: {', '.join(PROMPT_STYLES)}.")
    return PROMPT_STYLES[name]


def prompt_messages(question: str, style: PromptStyle) -> list[dict]:
    """The masked part of every example, and everything a model is asked at inference."""
    return [{"role": "system", "content": style.system_prompt},
            {"role": "user", "content": question.strip()}]


def to_conversation(row: dict, style: PromptStyle) -> dict:
    """A medical-o1 row as trl's conversational prompt/completion example."""
    return {"prompt": prompt_messages(row["Question"], style),
            "completion": [{"role": "assistant", "content": style.answer(row["Complex_CoT"], row["Response"])}]}


def tokenize_example(tokenizer, conversation: dict) -> tuple[list[int], int]:
    """(token ids of prompt + answer, number of prompt tokens), tokenized the way trl tokenizes a conversational
    prompt/completion example: the answer's tokens are ids[n_prompt:]."""
    prompt = tokenizer.apply_chat_template(conversation["prompt"], add_generation_prompt=True, tokenize=True,
                                           return_dict=False)
    full = tokenizer.apply_chat_template(conversation["prompt"] + conversation["completion"], tokenize=True,
                                         return_dict=False)
    return full, len(prompt)


def generation_prompt(tokenizer, question: str, style: PromptStyle) -> str:
    """The text a model continues at evaluation/inference: the training prompt plus the assistant header."""
    return tokenizer.apply_chat_template(prompt_messages(question, style), tokenize=False, add_generation_prompt=True)
