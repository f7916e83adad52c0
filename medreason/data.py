"""Load medical-o1-style rows from the Hub or a local file, validate them, and split train/validation.

Everything here runs before any model is loaded, so a bad file costs seconds, not a training run.
"""
from __future__ import annotations

import csv
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

FIELDS = ("Question", "Complex_CoT", "Response")
LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")
DEMO_DATASET = Path(__file__).parent / "demo_data" / "medical_demo.jsonl"
DEMO = "demo"  # DATASET="demo" names the shipped illustrative rows, wherever the script runs from


class DataError(UserError):
    """Bad data: the message names the file (and line) or the setting, and says the fix."""


def load_records(source: str, config: str | None = None) -> list[dict]:
    """Raw records from a local .json/.jsonl/.parquet/.csv file, a Hugging Face Hub dataset id, or "demo"."""
    path = DEMO_DATASET if source == DEMO else Path(source).expanduser()
    if path.suffix.lower() in LOCAL_SUFFIXES or path.exists():
        if not path.is_file():
            raise DataError(f"DATASET={source!r}: no such file. Fix: check the path, or pass a Hub dataset id "
                            f"such as FreedomIntelligence/medical-o1-reasoning-SFT.")
        reader = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
        suffix = path.suffix.lower()
        if suffix not in reader:
            raise DataError(f"DATASET={source!r}: unsupported file type {suffix!r}. Fix: use one of "
                            f"{', '.join(LOCAL_SUFFIXES)}.")
        return reader[suffix](path)
    return _read_hub(source, config)


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}). "
                                f"Fix: repair or delete that line; each line must be one JSON object.") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object with fields {', '.join(FIELDS)}, "
                                f"got {type(record).__name__}. Fix: one object per line.")
            records.append(record)
    return records


def _read_json(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if text.lstrip().startswith("{") and "\n{" in text:  # JSON Lines saved as .json
            return _read_jsonl(path)
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}). "
                        f"Fix: repair the file; it must hold a list of objects (or be JSON Lines).") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"train": [...]} or {"data": [...]}
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a list of objects with fields {', '.join(FIELDS)}. "
                        f"Fix: save the rows as a JSON list or as JSON Lines (.jsonl).")
    return data


def _read_csv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq
    return pq.read_table(path).to_pylist()


def _read_hub(dataset_id: str, config: str | None) -> list[dict]:
    if dataset_id.count("/") != 1:
        raise DataError(f"DATASET={dataset_id!r} is neither an existing file nor a Hub id of the form owner/name. "
                        f"Fix: pass a path to a {'/'.join(LOCAL_SUFFIXES)} file or a Hub dataset id.")
    import datasets
    try:
        return datasets.load_dataset(dataset_id, config, split="train").to_list()
    except Exception as e:  # offline, private, misspelt: datasets raises many types
        raise DataError(f"DATASET={dataset_id!r} (config {config!r}) could not be loaded from the Hugging Face "
                        f"Hub: {type(e).__name__}: {e}. Fix: check the id and your connection (HF_TOKEN for a "
                        f"private dataset), or download it once and pass the local file, e.g. "
                        f"--DATASET=data/train.jsonl.") from None


def validate(records: list[dict], source: str) -> tuple[list[dict], Counter]:
    """Keep rows whose three fields are non-empty strings; count why others were dropped."""
    found = sorted({key for record in records for key in record})
    missing = [field for field in FIELDS if field not in found]
    if missing:
        raise DataError(f"{source}: field {', '.join(repr(m) for m in missing)} is missing. Fields found: "
                        f"{', '.join(found) or 'none'}. Fix: rename the columns to {', '.join(FIELDS)} "
                        f"(the schema of FreedomIntelligence/medical-o1-reasoning-SFT).")
    rows, dropped = [], Counter()
    for record in records:
        reason = _drop_reason(record)
        if reason:
            dropped[reason] += 1
        else:
            rows.append({field: record[field] for field in FIELDS})
    if not rows:
        raise DataError(f"{source}: no usable rows ({len(records)} read, all dropped: {dict(dropped) or 'empty file'})."
                        f" Fix: every row needs non-empty text in {', '.join(FIELDS)}.")
    return rows, dropped


def _drop_reason(record: dict) -> str | None:
    for field in FIELDS:
        value = record.get(field)
        if value is None:
            return f"{field} is null"
        if not isinstance(value, str):
            return f"{field} is not text"
        if not value.strip():
            return f"{field} is empty"
    return None


def _units(text: str) -> tuple[list[str], str]:
    """Paragraphs if the text has several, else sentences; with the separator that joins them back."""
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    if len(paragraphs) > 1:
        return paragraphs, "\n\n"
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()], " "


def shorten_reasoning(text: str, max_words: int) -> str:
    """The opening paragraphs and the concluding one, within max_words (whole paragraphs or sentences only).

    A chain of thought shortened this way still sets the problem up and still concludes, so a model trained on it
    learns to close </think> after about max_words instead of circling. The conclusion is always kept."""
    units, sep = _units(text)
    if len(text.split()) <= max_words or len(units) < 2:
        return text
    kept, budget = [], max_words - len(units[-1].split())
    for unit in units[:-1]:
        words = len(unit.split())
        if kept and words > budget:
            break
        kept.append(unit)
        budget -= words
    return sep.join(kept + [units[-1]])


def shorten_rows(rows: list[dict], max_words: int | None) -> tuple[list[dict], int]:
    """Rows with each Complex_CoT shortened to about max_words (None: unchanged); how many were shortened."""
    if max_words is None:
        return rows, 0
    if max_words < 1:
        raise DataError(f"MAX_THINK_WORDS={max_words}: must be at least 1, or None to keep every chain of thought.")
    out = [{**row, "Complex_CoT": shorten_reasoning(row["Complex_CoT"], max_words)} for row in rows]
    return out, sum(a["Complex_CoT"] != b["Complex_CoT"] for a, b in zip(out, rows))


def split(rows: list[dict], val_size: int, train_samples: int | None, seed: int):
    """Seeded validation split, then an optional seeded subset of the training rows (datasets.Dataset each)."""
    from datasets import Dataset
    if val_size < 0 or val_size >= len(rows):
        raise DataError(f"VAL_SIZE={val_size} leaves no training rows out of {len(rows)} usable rows. "
                        f"Fix: --VAL_SIZE={max(1, len(rows) // 10)} (10%) or use more data.")
    parts = Dataset.from_list(rows).train_test_split(test_size=val_size, seed=seed) if val_size else None
    train, val = (parts["train"], parts["test"]) if parts else (Dataset.from_list(rows).shuffle(seed=seed), None)
    if train_samples is not None:
        if train_samples < 1:
            raise DataError(f"TRAIN_SAMPLES={train_samples}: must be at least 1, or None for all rows.")
        train = train.select(range(min(train_samples, len(train))))
    return train, val


@dataclass
class TrainingData:
    train: object  # datasets.Dataset of prompt/completion conversations
    val: object | None  # the same for the held-out rows (eval loss)
    val_rows: object | None  # the held-out rows as read (answer metrics, validation.jsonl)
    info: dict  # counts for results.json and the model card


def prepare_training_data(cfg, style) -> TrainingData:
    """Read, validate, shorten (MAX_THINK_WORDS), split and format the run's rows, printing what happened."""
    from .prompts import to_conversation
    rows, dropped = validate(load_records(cfg.DATASET, cfg.DATASET_CONFIG), cfg.DATASET)
    print(f"[data] {len(rows)} usable rows from {cfg.DATASET}"
          + (f"; dropped {sum(dropped.values())}: {dict(dropped)}" if dropped else ""))
    rows, shortened = shorten_rows(rows, cfg.MAX_THINK_WORDS)
    if shortened:
        print(f"[data] MAX_THINK_WORDS={cfg.MAX_THINK_WORDS}: {shortened} chains of thought shortened to their "
              f"opening and concluding paragraphs, so the model learns to conclude (experiments/LOG.md)")
    train_rows, val_rows = split(rows, cfg.VAL_SIZE, cfg.TRAIN_SAMPLES, cfg.SEED)
    print(f"[data] {len(train_rows)} training rows, {len(val_rows) if val_rows else 0} validation rows "
          f"(seed {cfg.SEED})")
    as_conversation = lambda row: to_conversation(row, style)  # noqa: E731
    val = val_rows.map(as_conversation, remove_columns=list(FIELDS)) if val_rows else None
    return TrainingData(train_rows.map(as_conversation, remove_columns=list(FIELDS)), val, val_rows,
                        {"train_rows": len(train_rows), "val_rows": len(val_rows) if val_rows else 0,
                         "dropped": dict(dropped), "shortened_reasoning": shortened})
