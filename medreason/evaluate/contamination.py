"""Training rows that overlap a benchmark's questions (HuatuoGPT-o1's rule: a shared run of 64 characters).

HuatuoGPT-o1 (arXiv 2412.18925, section 4.1) drops training data that overlaps any test question by 64 characters.
The texts are compared after folding case and collapsing whitespace, so a copy that only differs in line breaks or
capitals is still found. Every 64-character window of every reference text is indexed once (a set lookup per
window of a training text), so checking thousands of rows against a benchmark takes seconds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

CHARS = 64  # HuatuoGPT-o1's overlap length: shorter shared runs (stock phrases, "Which of the following") are ignored
SNIPPET_CHARS = 80  # how much of the shared text an example shows

_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Overlap:
    train_index: int  # position of the training text in train_texts
    reference_index: int  # position of the benchmark text in reference_texts
    snippet: str  # the first shared run (normalized), cut to SNIPPET_CHARS

    def describe(self) -> str:
        return f"training row {self.train_index + 1} shares {self.snippet!r} with reference {self.reference_index + 1}"


def normalize(text: str) -> str:
    """Case folded and whitespace collapsed: what the comparison sees."""
    return _SPACE.sub(" ", str(text or "")).strip().lower()


def _windows(text: str, chars: int):
    for start in range(len(text) - chars + 1):
        yield start, text[start:start + chars]


def overlaps(train_texts: list[str], reference_texts: list[str], chars: int = CHARS) -> list[Overlap]:
    """One Overlap per (training text, reference text) pair sharing a run of `chars` characters, in training order;
    the snippet is the shared run, extended as far as both texts agree (cut to SNIPPET_CHARS)."""
    if chars < 1:
        raise ValueError(f"chars must be at least 1, got {chars}")
    references = [normalize(t) for t in reference_texts]
    index: dict[str, list[int]] = {}
    for r, text in enumerate(references):
        for _, window in _windows(text, chars):
            owners = index.setdefault(window, [])
            if not owners or owners[-1] != r:
                owners.append(r)
    found = []
    for t, raw in enumerate(train_texts):
        text, seen = normalize(raw), set()
        for start, window in _windows(text, chars):
            for r in index.get(window, ()):
                if r not in seen:
                    seen.add(r)
                    found.append(Overlap(t, r, _shared_run(text, start, references[r], window)))
    return found


def _shared_run(text: str, start: int, reference: str, window: str) -> str:
    """The shared run starting at text[start:], extended while the reference agrees."""
    at, end = reference.find(window), start + len(window)
    stop = at + len(window)
    while end < len(text) and stop < len(reference) and text[end] == reference[stop]:
        end, stop = end + 1, stop + 1
    run = text[start:end]
    return run if len(run) <= SNIPPET_CHARS else run[:SNIPPET_CHARS] + "…"


def contaminated_rows(train_texts: list[str], reference_texts: list[str], chars: int = CHARS) -> set[int]:
    """Indexes of the training texts that overlap any reference text."""
    return {o.train_index for o in overlaps(train_texts, reference_texts, chars)}


def summary(found: list[Overlap], what: str, chars: int = CHARS) -> str:
    """One line: how many training rows overlap, and one example."""
    rows = sorted({o.train_index for o in found})
    if not rows:
        return f"no training row shares {chars} characters with {what}"
    return f"{len(rows)} training row(s) share {chars}+ characters with {what}, e.g. {found[0].describe()}"
