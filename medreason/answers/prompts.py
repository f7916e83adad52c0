"""The one prompt formatter: training, evaluation and inference all build their prompts here.

A row (Question, Complex_CoT, Response) becomes a prompt/completion example for trl:
  prompt     = [system, user(question)]            -> masked out of the loss
  completion = [assistant(the answer in the run's PROMPT_STYLE)]  -> trained, with the end-of-turn token
The model's own chat template turns it into text, so the same function serves any chat model. The styles (answer
layouts, each with its parser, markers and card text) are PROMPT_STYLES in styles.py; get_style is re-exported here.
"""
from __future__ import annotations

from medreason.answers.styles import PROMPT_STYLES, PromptStyle, get_style  # noqa: F401 (the scripts' way to a style)
from medreason.config.errors import UserError

DISCLAIMER = "Educational use only, not medical advice: consult a qualified clinician for any health decision."

# Llama-3.x chat templates write today's date into the system header (`strftime_now`) unless `date_string` is given,
# so a model trained on one day would be asked with another day's prompt. Every template that reads `date_string`
# gets this fixed date instead, at training, evaluation and inference alike (it is saved with the adapter's
# tokenizer). The value is Llama-3's own fallback when no clock is available.
TEMPLATE_DATE = "26 Jul 2024"
_DATE_PIN = '{%- set date_string = "' + TEMPLATE_DATE + '" %}'


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


def prompt_messages(question: str, style: PromptStyle) -> list[dict]:
    """The masked part of every example, and everything a model is asked at inference."""
    system = [{"role": "system", "content": style.system_prompt}] if style.system_prompt else []
    return system + [{"role": "user", "content": style.user_template.format(question=question.strip())}]


def to_conversation(row: dict, style: PromptStyle) -> dict:
    """A row as trl's conversational prompt/completion example."""
    return {"prompt": prompt_messages(row["Question"], style),
            "completion": [{"role": "assistant", "content": style.answer(row["Complex_CoT"], row["Response"])}]}


def to_example(row: dict, style: PromptStyle, tokenizer) -> dict:
    """A row as the example trl trains on: conversational, or for `as_text` styles the rendered prompt and the
    answer as plain text (trl then tokenizes them as they are and appends the end-of-sequence token)."""
    if not style.as_text:
        return to_conversation(row, style)
    prompt = generation_prompt(tokenizer, row["Question"], style)
    answer = style.answer(row["Complex_CoT"], row["Response"])
    # What the template's generation prompt already opened (an R1 template ends it with "<think>\n").
    opened = next((answer[:i] for i in range(min(len(answer), 32), 0, -1) if prompt.endswith(answer[:i])), "")
    bos = tokenizer.bos_token or ""
    if bos and prompt.startswith(bos) and _adds_bos(tokenizer):  # trl's tokenizer call adds it again otherwise
        prompt = prompt[len(bos):]
    return {"prompt": prompt, "completion": answer[len(opened):]}


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("x")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def tokenize_example(tokenizer, example: dict) -> tuple[list[int], int]:
    """(token ids of prompt + answer, number of prompt tokens), tokenized the way trl tokenizes a prompt/completion
    example (conversational or text): the answer's tokens are ids[n_prompt:]."""
    from trl.data_utils import common_prefix_length
    if isinstance(example["prompt"], str):
        completion = example["completion"]
        if tokenizer.eos_token and not completion.endswith(tokenizer.eos_token):
            completion += tokenizer.eos_token  # as trl does for text examples
        prompt, full = tokenizer(example["prompt"])["input_ids"], tokenizer(example["prompt"] + completion)["input_ids"]
    else:
        prompt = tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=True,
                                               return_dict=False)
        full = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=True,
                                             return_dict=False)
    return full, common_prefix_length(prompt, full)


def generation_prompt(tokenizer, question: str, style: PromptStyle) -> str:
    """The text a model continues at evaluation/inference: the training prompt plus the assistant header (and,
    with a DeepSeek-R1 template, the "<think>" it opens)."""
    return tokenizer.apply_chat_template(prompt_messages(question, style), tokenize=False, add_generation_prompt=True)


def prompt_length(tokenizer, question: str, style: PromptStyle) -> int:
    """Tokens of the generation prompt for a question: what is left of the context is the answer's room."""
    return len(tokenizer(generation_prompt(tokenizer, question, style), add_special_tokens=False)["input_ids"])
