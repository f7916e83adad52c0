"""What the rows of a data file look like: the layouts, the one detector that names a file's layout, and the words
for what is wrong with a row (DataError and the helpers that describe a value in its message).

Every stage that reads rows asks `detect` with the layouts it accepts (TRAINING, EVALUATION, PREFERENCE): the fields
of all the rows are pooled, and the first layout of LAYOUTS, among those accepted, whose fields are all there is the
file's. A file that fits none is refused with the stage's own message (what was found, what to give instead). This is
the bottom of data/: it imports nothing of the project but config.errors, so readers, the safety set and the stages
above can all use it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from medreason.config.errors import UserError

SCHEMA = "FreedomIntelligence/medical-o1-reasoning-SFT"  # the dataset whose fields the medical-o1 layout names


class DataError(UserError):
    """Bad data: the message names the file (and line) or the setting, and says the fix."""


# --- describing values in messages ----------------------------------------------------------------------------------

def kind_of(value) -> str:
    """What a JSON-like value is, in words: 'a number', 'a list', 'text'..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def shown(name, limit: int = 60) -> str:
    """A name from the data, quoted and cut short, so that one message stays one readable line."""
    text = repr(str(name))
    return text if len(text) <= limit else text[:limit - 1] + "…"


def shown_names(names, limit: int = 20) -> str:
    """Field names for a message: as they are when plain, quoted and cut short when not; at most `limit`."""
    names = sorted(names, key=str)
    plain = lambda n: str(n).isidentifier() and len(str(n)) <= 60  # noqa: E731
    listed = ", ".join(str(n) if plain(n) else shown(n) for n in names[:limit])
    return (listed + (f" … ({len(names) - limit} more)" if len(names) > limit else "")) or "none"


def text_problem(value) -> str | None:
    """Why a value cannot be used as text ('is a number, not text'), or None if it is non-empty text."""
    if value is None:
        return "is null"
    if isinstance(value, float) and math.isnan(value):
        return "is NaN (an empty cell)"
    if not isinstance(value, str):
        return f"is {kind_of(value)}, not text"
    if not value.strip():
        return "is empty"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a JSON escape such as "\ud800" decodes to half a surrogate pair
        return "is not valid Unicode (a lone surrogate escape)"
    return None


# --- the layouts ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    name: str  # as printed when training rows are read ("medical-o1 layout")
    fields: tuple[str, ...]  # every one of them is a field of the file
    one_of: tuple[str, ...] = ()  # and at least one of these (instruction rows: response, or output)
    kind: str = ""  # what the evaluation and preference stages call its rows (results.json's kind); "" = the name

    def fits(self, found: set) -> bool:
        return set(self.fields) <= found and (not self.one_of or bool(found & set(self.one_of)))

    @property
    def kind_name(self) -> str:
        return self.kind or self.name

    @property
    def text_fields(self) -> tuple[str, ...]:
        """The fields every row needs as non-empty text (of alternatives, the first named)."""
        return self.fields + self.one_of[:1]


PAIRS = Layout("pairs", ("prompt", "chosen", "rejected"))  # ready-made preference data (UltraMedical-Preference)
MEDICAL_O1 = Layout("medical-o1", ("Question", "Complex_CoT", "Response"), kind="reasoning")  # SCHEMA's rows
INSTRUCTION = Layout("instruction", ("instruction",), ("response", "output"))  # optional input; output = response
MESSAGES = Layout("messages", ("messages",))  # the Hugging Face chat convention: one user turn, one assistant turn
MCQ = Layout("mcq", ("question", "options", "answer"))  # options as {"A": "…"}, answer one of its letters
QUESTIONS = Layout("questions", (), ("question", "Question", "prompt"))  # questions alone, no reference
LAYOUTS = (PAIRS, MEDICAL_O1, INSTRUCTION, MESSAGES, MCQ, QUESTIONS)  # detection order: the first that fits wins

FIELDS = MEDICAL_O1.fields  # the fields of a training row, whatever layout it was read from
MCQ_FIELDS = MCQ.fields
PAIR_FIELDS = PAIRS.fields
QUESTION_FIELDS = QUESTIONS.one_of

# What each stage reads, in detection order.
TRAINING = (MEDICAL_O1, INSTRUCTION, MESSAGES)  # the SFT trainer (readers.validate)
EVALUATION = (MEDICAL_O1, MCQ)  # evaluate.py and the benchmarks (comparison.detect_kind)
PREFERENCE = (PAIRS, MEDICAL_O1, MCQ, QUESTIONS)  # the preference and RL stages (pairs.read_source)


def detect(records: list[dict], source: str, accepted: tuple[Layout, ...] = TRAINING) -> Layout:
    """The layout of the rows, from the fields of all of them; none of `accepted` fits: a DataError saying what
    the stage reads instead."""
    found = {key for record in records for key in record}
    for layout in LAYOUTS:
        if layout in accepted and layout.fits(found):
            return layout
    raise DataError(REFUSALS[accepted](found, source))


def _not_training_rows(found: set, source: str) -> str:
    missing = [field for field in FIELDS if field not in found]
    by_case = {str(key).lower(): key for key in found}
    near = [f"{shown(by_case[m.lower()])} for {m!r}" for m in missing if m.lower() in by_case]
    return (f"{source}: field {', '.join(repr(m) for m in missing)} is missing. Fields found: {shown_names(found)}. "
            f"Fix: rename the columns to {', '.join(FIELDS)} (the schema of {SCHEMA}), or give instruction/response "
            f"rows (instruction, response, optional input) or chat rows (messages)"
            + (f"; names are case-sensitive ({', '.join(near)})." if near else "."))


def _not_evaluation_rows(found: set, source: str) -> str:
    return (f"{source}: rows have fields {shown_names(found)}. Fix: give medical-o1 rows ({', '.join(FIELDS)}) or "
            f"multiple-choice rows ({', '.join(MCQ_FIELDS)}, options as {{\"A\": \"…\"}}).")


def _not_preference_rows(found: set, source: str) -> str:
    return (f"{source}: rows with fields {shown_names(found)} are none of the layouts this stage reads. Fix: "
            f"medical-o1 rows ({', '.join(FIELDS)}), multiple-choice rows ({', '.join(MCQ_FIELDS)}), questions "
            f"({{\"question\": …}}) or preference pairs ({', '.join(PAIR_FIELDS)}).")


REFUSALS = {TRAINING: _not_training_rows, EVALUATION: _not_evaluation_rows, PREFERENCE: _not_preference_rows}
