"""Prepare a training set: validate, deduplicate, take a representative seeded subset, split, and describe it.

Representative means: the subset keeps the share of each question type and of each length quartile (strata of
type x quartile, allocated in proportion with largest remainders). Question types come from keyword rules on the
question (see QUESTION_TYPES; the first matching type wins, in that order): diagnosis, management (treatment,
prevention, vaccines), investigation (tests and findings), risk (complications, prognosis), mechanism, other.
"""
from __future__ import annotations

import random
import re
import statistics
from collections import Counter

from medreason.data.readers import DataError

QUESTION_TYPES = {
    "diagnosis": r"diagnos|most likely (?:the )?(?:cause|condition|disorder|diagnosis)|causative|what (?:disorder|"
                 r"infection|disease|condition)|which (?:disease|condition|disorder|nerve|artery)",
    "management": r"treat|management|manage|drug of choice|next step|therap|should be given|prevent|vaccine|"
                  r"administer|dose",
    "investigation": r"investigation|\btests?\b|imaging|confirm|screen|finding|laborator|histolog|karyotype|"
                     r"observed|examination",
    "risk": r"\brisk\b|complication|prognos|develop",
    "mechanism": r"mechanism|\bwhy\b|pathophysiolog|pathogenesis|responsible for|explain|physiolog",
}


def question_type(question: str) -> str:
    lowered = question.lower()
    return next((name for name, pattern in QUESTION_TYPES.items() if re.search(pattern, lowered)), "other")


def normalise(question: str) -> str:
    return " ".join(question.lower().split())


def deduplicate(rows: list[dict]) -> tuple[list[dict], int]:
    """Keep the first row of each question (case and spacing ignored)."""
    seen, kept = set(), []
    for row in rows:
        key = normalise(row["Question"])
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept, len(rows) - len(kept)


def quartile_labels(values: list[int]) -> list[int]:
    ordered = sorted(values)
    cuts = [ordered[int(q * (len(ordered) - 1))] for q in (0.25, 0.5, 0.75)]
    return [sum(v > c for c in cuts) for v in values]


def stratified_subset(rows: list[dict], lengths: list[int], size: int, seed: int) -> list[int]:
    """Indices of a seeded subset of `size` rows that keeps each (question type, length quartile) share."""
    if size >= len(rows):
        return list(range(len(rows)))
    strata: dict[tuple, list[int]] = {}
    for i, (row, quartile) in enumerate(zip(rows, quartile_labels(lengths))):
        strata.setdefault((question_type(row["Question"]), quartile), []).append(i)
    quotas = {key: size * len(members) / len(rows) for key, members in strata.items()}
    counts = {key: int(q) for key, q in quotas.items()}
    for key in sorted(quotas, key=lambda k: quotas[k] - counts[k], reverse=True)[:size - sum(counts.values())]:
        counts[key] += 1  # largest remainders
    rng = random.Random(seed)
    chosen = []
    for key in sorted(strata):
        chosen += rng.sample(strata[key], counts[key])
    return sorted(chosen)


def train_test_split(rows: list[dict], test_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(test_fraction * len(rows))) if test_fraction > 0 else 0
    if n_test >= len(rows):
        raise DataError(f"{len(rows)} row(s) left: a test split of {test_fraction:.0%} leaves none for training. "
                        f"Fix: --test-fraction 0, or a dataset with more rows.")
    return [rows[i] for i in order[n_test:]], [rows[i] for i in order[:n_test]]


def describe(values: list[int]) -> dict:
    ordered = sorted(values)
    return {"min": ordered[0], "median": int(statistics.median(ordered)),
            "p95": ordered[int(round(0.95 * (len(ordered) - 1)))], "max": ordered[-1],
            "mean": round(sum(values) / len(values), 1)}


def field_token_lengths(tokenizer, rows: list[dict], fields) -> dict[str, list[int]]:
    return {f: [len(ids) for ids in tokenizer([r[f] for r in rows], add_special_tokens=False)["input_ids"]]
            for f in fields}


def type_counts(rows: list[dict]) -> dict[str, int]:
    return dict(Counter(question_type(r["Question"]) for r in rows).most_common())


def plot_histogram(lengths: dict[str, list[int]], max_seq_length: int, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(lengths), figsize=(4 * len(lengths), 3.4))
    for ax, (name, values) in zip(axes, lengths.items()):
        ax.hist(values, bins=30, color="#2b7bba")
        if name == "example":
            ax.axvline(max_seq_length, color="red", ls="--", label=f"MAX_SEQ_LENGTH {max_seq_length}")
            ax.legend(fontsize=8)
        ax.set(title=f"{name} (tokens)", xlabel="tokens", ylabel="rows")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
