"""The project's safety set and SAFETY_MIX: the rows, checked; the held-out sample an evaluation asks; the rows mixed
into training.

The safety set (demo_data/safety_train.jsonl and safety_eval.jsonl, written by this project, illustrative and not
clinical) holds unsafe asks in named CATEGORIES, each with a safe answer (the reasoning says why; the response
declines, says what to do instead and names emergency help where it fits), and matched safe controls that look
alike but must be answered. Training mixes in rows of the train part only (SAFETY_MIX: mix_into); every evaluation
asks the eval part (eval_rows; the refusal detector and the rates are evaluate/safety.py's).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from medreason.data.layouts import FIELDS, DataError

SAFETY_DIR = Path(__file__).resolve().parents[1] / "demo_data"
SAFETY_FILES = {"train": SAFETY_DIR / "safety_train.jsonl", "eval": SAFETY_DIR / "safety_eval.jsonl"}
CATEGORIES = ("self_harm_dosing", "controlled_drugs", "home_procedures", "delaying_emergency_care",
              "natural_cures_replacing_treatment", "certain_diagnosis")
KINDS = ("unsafe", "control")  # an unsafe ask must be declined; its matched control must be answered
MAX_MIX = 0.5  # SAFETY_MIX above this would make the run mostly about refusing


def load_set(part: str) -> list[dict]:
    """The train or eval part of the safety set, every row checked (fields, kind, category)."""
    path = SAFETY_FILES[part]
    if not path.is_file():
        raise DataError(f"{path}: the safety set is missing from this copy of the project. Fix: restore "
                        f"medreason/demo_data/ (git checkout), or set SAFETY_MIX=0 and SAFETY_EVAL_SAMPLES=0.")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for n, row in enumerate(rows, start=1):
        bad = [f for f in FIELDS if not isinstance(row.get(f), str) or not row[f].strip()]
        if bad or row.get("kind") not in KINDS or row.get("category") not in CATEGORIES:
            raise DataError(f"{path}: row {n} needs non-empty {', '.join(FIELDS)}, a kind in {KINDS} and a category "
                            f"in {CATEGORIES}. Fix the row.")
    return rows


def eval_rows(per_kind: int) -> list[dict]:
    """per_kind unsafe asks and as many controls from the held-out part, the categories taken in turn so that a
    small sample still covers each of them."""
    chosen, held_out = [], load_set("eval")
    for kind in KINDS:
        by_category = {c: [r for r in held_out if r["kind"] == kind and r["category"] == c] for c in CATEGORIES}
        interleaved = [row for group in zip(*by_category.values()) for row in group]
        chosen += interleaved[:per_kind]
    return chosen


def check_mix(share) -> None:
    if not isinstance(share, (int, float)) or not 0 <= share <= MAX_MIX:
        raise DataError(f"SAFETY_MIX={share!r}: must be a share between 0 and {MAX_MIX} of the training rows (e.g. "
                        f"0.1 = one row in ten is a safety example); 0 turns it off.")


def mix_rows(n_train: int, share: float, seed: int) -> list[dict]:
    """The safety rows for a training set of n_train rows: share of the mixed set, half unsafe asks (declined) and
    half controls (answered), drawn seeded from the train part (rows repeat only if more are needed than exist)."""
    check_mix(share)
    wanted = round(share * n_train / (1 - share)) if share else 0
    rng, picked = random.Random(seed), []
    rows = load_set("train")
    for kind, count in (("unsafe", wanted - wanted // 2), ("control", wanted // 2)):
        pool = [r for r in rows if r["kind"] == kind]
        while count > 0:
            take = min(count, len(pool))
            picked += rng.sample(pool, take)
            count -= take
    return picked


def mix_into(train, share: float, seed: int):
    """The training rows (datasets.Dataset of FIELDS) with the safety rows mixed in and shuffled (seeded); and the
    counts for the run record. Printed, with why."""
    from datasets import Dataset, concatenate_datasets
    safety = mix_rows(len(train), share, seed)
    info = {"safety_mix": share, "safety_rows": len(safety),
            "safety_unsafe_rows": sum(r["kind"] == "unsafe" for r in safety),
            "safety_control_rows": sum(r["kind"] == "control" for r in safety)}
    if not safety:
        return train, info
    extra = Dataset.from_list([{f: r[f] for f in FIELDS} for r in safety])
    mixed = concatenate_datasets([train, extra]).shuffle(seed=seed)
    repeats = len(safety) - len({r["id"] for r in safety})
    print(f"[data] SAFETY_MIX={share}: {len(safety)} safety rows mixed in ({info['safety_unsafe_rows']} unsafe asks "
          f"answered by declining, {info['safety_control_rows']} look-alike questions answered), "
          f"{len(mixed)} training rows in all, so that tuning does not wear away the model's refusals"
          + (f"; {repeats} rows repeat (the train part has {len(load_set('train'))})" if repeats else ""))
    return mixed, info


def samples_per_kind(setting, eval_samples: int) -> int:
    """SAFETY_EVAL_SAMPLES: None follows EVAL_SAMPLES; capped at what the held-out part holds of each kind."""
    held_out = min(sum(r["kind"] == kind for r in load_set("eval")) for kind in KINDS)
    wanted = eval_samples if setting is None else setting
    if not isinstance(wanted, int) or wanted < 0:
        raise DataError(f"SAFETY_EVAL_SAMPLES={setting!r}: give a number of questions of each kind (0 = none), or "
                        f"None to follow EVAL_SAMPLES.")
    return min(wanted, held_out)
