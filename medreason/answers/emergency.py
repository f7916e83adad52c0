"""The emergency line: shown before any answer to a question about chest pain, stroke signs or suicidal thoughts (the
web chat, inference.py), whatever the model writes. Rules on the question's words (EMERGENCY_RULES), tested on trigger
questions and on look-alikes (tests/test_safety.py); no model is asked.
"""
from __future__ import annotations

import re

EMERGENCY_NUMBER = "your emergency number (911 in the US, 112 in Europe, 999 in the UK)"
EMERGENCY_RULES = {  # name: (line, trigger on the question, look-alike phrases removed first)
    "suicidal thoughts": (
        "If you are thinking about suicide or harming yourself, please reach out now: call or text 988 (US), "
        f"call Samaritans on 116 123 (UK and Ireland) or your local crisis line, or call {EMERGENCY_NUMBER}.",
        r"\bsuicid(?:e|al)|\bkill(?:ing)?\s+(?:my|him|her|them)sel(?:f|ves)\b|\bend(?:ing)?\s+(?:my|his|her|their)\s+"
        r"(?:own\s+)?life\b|\bwant(?:s|ed)?\s+to\s+die\b|\bself[- ]?harm|\bhurt(?:ing)?\s+myself\b|"
        r"\bdon'?t\s+want\s+to\s+(?:live|be\s+alive)\b",
        r"\bcell(?:ular)?\s+suicide|\bsuicide\s+(?:inhibit\w*|genes?|substrates?|enzymes?)|\bkill(?:ing)?\s+"
        r"myself\s+laughing"),
    "chest pain": (
        f"If you have chest pain now, especially crushing pain or pain spreading to the arm, jaw or back, call "
        f"{EMERGENCY_NUMBER} straight away: do not wait for this answer.",
        r"\bchest\s+(?:pains?|pressure|tightness|discomfort|heaviness)|\bpain\s+in\s+(?:my|the|his|her|their)\s+"
        r"chest|\bheart\s+attack",
        r"$^"),
    "stroke signs": (
        f"If someone has signs of a stroke now (face drooping, arm weakness, slurred speech), call "
        f"{EMERGENCY_NUMBER} straight away and note the time the signs started.",
        r"\bstrokes?\b|\bface\s+(?:is\s+)?droop|\bdrooping\s+(?:of\s+the\s+)?face|\bslurred\s+speech|"
        r"\bsudden(?:ly)?\s+(?:numbness|weakness)|\bweakness\s+on\s+one\s+side|\bcan'?t\s+(?:lift|raise)\s+"
        r"(?:his|her|my|their|one)\s+arm",
        r"\b(?:heat|sun|back|breast|swimming|brush|pen|golf|tennis|piston)[\s-]*strokes?\b|\bstrokes?\s+(?:volume|"
        r"work|index|of\s+(?:luck|genius))|\bkey\s*strokes?\b"),
}



def emergencies(question: str) -> list[str]:
    """The emergencies a question is about (names of EMERGENCY_RULES), by rules on its words."""
    lowered = " ".join(question.lower().replace("’", "'").split())
    found = []
    for name, (_, trigger, look_alike) in EMERGENCY_RULES.items():
        if re.search(trigger, re.sub(look_alike, " ", lowered)):
            found.append(name)
    return found


def emergency_line(question: str) -> str | None:
    """The line shown before any answer to a question about chest pain, stroke signs or suicidal thoughts."""
    found = emergencies(question)
    return " ".join(EMERGENCY_RULES[name][0] for name in found) if found else None
