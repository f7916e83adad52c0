"""Load medical-o1-style rows from the Hub or a local file, validate them, and split train/validation.

Two layers, kept apart. The readers turn a file's bytes (or a Hub dataset) into a list of dicts and refuse
malformed input (not UTF-8, not JSON, a ragged CSV row, a truncated Parquet file, a key given twice) with a one-line
DataError naming the file, the line and the fix. `validate` then turns those dicts, in whichever layout the one
detector (data/layouts.py) finds, into medical-o1 rows, dropping and counting unusable rows. Everything here runs
before any model is loaded, so a bad file costs seconds.
"""
from __future__ import annotations

import codecs
import csv
import io
import json
import json.decoder
import json.scanner
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from medreason.answers.prompts import to_example
from medreason.answers.tags import parse_answer
from medreason.data.layouts import (
    DataError,
    FIELDS,
    INSTRUCTION,
    MEDICAL_O1,
    MESSAGES,
    TRAINING,
    detect,
    kind_of,
    shown,
    text_problem,
)
from medreason.data.safety_set import mix_into, samples_per_kind

LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")
DEMO_DATASET = Path(__file__).resolve().parents[1] / "demo_data" / "medical_demo.jsonl"
DEMO = "demo"  # DATASET="demo" names the shipped illustrative rows, wherever the script runs from
UTF8_FIX = ("Fix: save the file as UTF-8 (in a spreadsheet: 'CSV UTF-8'; or convert it, e.g. "
            "iconv -f cp1252 -t utf-8 old.csv > new.csv)")


# --- readers: a file's bytes (or a Hub dataset) -> a list of dicts --------------------------------------------------

def load_records(source: str, config: str | None = None, setting: str = "DATASET") -> list[dict]:
    """Raw records from a local .json/.jsonl/.parquet/.csv file, a Hugging Face Hub dataset id, or "demo".

    `setting` is the name the user gave the source under (DATASET, --dataset), for the error messages."""
    path = DEMO_DATASET if source == DEMO else Path(source).expanduser()
    if path.suffix.lower() not in LOCAL_SUFFIXES and not path.exists():
        return _read_hub(source, config, setting)
    if not path.is_file():
        raise DataError(f"{setting}={source!r}: {'is a folder, not a file' if path.is_dir() else 'no such file'}. "
                        f"Fix: check the path, or pass a Hub dataset id such as "
                        f"FreedomIntelligence/medical-o1-reasoning-SFT.")
    reader = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
    suffix = path.suffix.lower()
    if suffix not in reader:
        raise DataError(f"{setting}={source!r}: unsupported file type {suffix!r}. Fix: use one of "
                        f"{', '.join(LOCAL_SUFFIXES)}.")
    records = reader[suffix](path)
    if not records:
        raise DataError(f"{path}: the file has no rows{' (it is empty: 0 bytes)' if not path.stat().st_size else ''}."
                        f" Fix: check that the export or download finished, or point {setting} at a file with rows.")
    return records


def usable_row_count(source: str, config: str | None = None) -> int | None:
    """Usable rows of a local file (or "demo"), for the settings step's VAL_SIZE (run_plan.size_validation); None for
    a Hub dataset (not downloaded twice) or a file the data step will refuse with its own message."""
    path = DEMO_DATASET if source == DEMO else Path(source).expanduser()
    if not path.is_file():
        return None
    try:
        return len(validate(load_records(source, config), source)[0])
    except DataError:  # the data step says what is wrong, after the settings
        return None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror}). Fix: check that the file is readable.") from None


def _read_text(path: Path) -> str:
    """The file decoded as UTF-8 (a UTF-8 byte-order mark is skipped; UTF-16 with its mark is read too)."""
    raw = _read_bytes(path)
    encoding = "utf-8"
    for mark, codec in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
                        (codecs.BOM_UTF16_BE, "utf-16-be")):
        if raw.startswith(mark):  # spreadsheets and Windows editors write these marks
            raw, encoding = raw[len(mark):], codec
            break
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[:e.start].decode(encoding, errors="replace").count("\n") + 1
        name = "UTF-16" if "16" in encoding else "UTF-8"
        raise DataError(f"{path}:{line}: not {name} text (byte 0x{raw[e.start]:02x} cannot be decoded). "
                        f"{UTF8_FIX}.") from None


def _lines(text: str) -> list[str]:
    # The line ends Python's text mode knows (\n, \r\n, \r); not str.splitlines, which also splits at U+2028 and
    # other characters that a JSON string may hold.
    return re.split(r"\r\n|\n|\r", text)


class _RepeatedKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key, self.pos = key, None


def _unique_keys(pairs: list[tuple]) -> dict:
    """json's object_pairs_hook: a key given twice is refused (json.loads would silently keep the last one)."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise _RepeatedKey(key)
        seen.add(key)
    return dict(pairs)


def _repeat_position(text: str) -> int:
    """Where the first object with a repeated key starts: json's pure-Python parser, whose object parser we wrap to
    learn positions. Slow, so it runs only after the fast parser has found a repeated key."""
    decoder = json.JSONDecoder(object_pairs_hook=_unique_keys)

    def parse_object(s_and_end, *args):
        try:
            return json.decoder.JSONObject(s_and_end, *args)
        except _RepeatedKey as e:
            e.pos = s_and_end[1] - 1 if e.pos is None else e.pos  # the innermost object's "{"
            raise

    decoder.parse_object = parse_object
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    try:
        decoder.decode(text)
    except _RepeatedKey as e:
        return e.pos or 0
    except (ValueError, RecursionError):
        pass
    return 0


def _parse_json(text: str, path: Path, line: int | None, fix: str):
    """json.loads refusing repeated keys; any failure is a DataError at path:line (`line`: JSON Lines' line)."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _RepeatedKey as e:
        at = line or text.count("\n", 0, _repeat_position(text)) + 1
        raise DataError(f"{path}:{at}: the key {shown(e.key)} appears twice in the object starting on this line. "
                        f"Fix: keep one of them (readers disagree on which one a repeated key means).") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{line or e.lineno}: not valid JSON ({e.msg} at column {e.colno}). Fix: {fix}") \
            from None
    except RecursionError:
        raise DataError(f"{path}:{line or 1}: JSON nested too deeply to read. Fix: {fix}") from None
    except ValueError as e:  # an integer of more than 4,300 digits (Python's int conversion limit)
        raise DataError(f"{path}:{line or 1}: not readable JSON ({str(e).split(':')[0]}). Fix: {fix}") from None


def _read_jsonl(path: Path, text: str | None = None) -> list[dict]:
    text = _read_text(path) if text is None else text
    if text.lstrip().startswith("["):  # a JSON list saved as .jsonl: read it as the list it is
        try:
            return _read_json(path, text)
        except DataError:
            pass  # lines that each hold a list: the line-by-line message below says what is wrong
    records = []
    for lineno, line in enumerate(_lines(text), start=1):
        line = line.lstrip("\ufeff")  # a byte-order mark inside: files concatenated from several exports
        if not line.strip():
            continue
        record = _parse_json(line, path, lineno, "repair or delete that line; each line must be one JSON object.")
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object ({{\"Question\": …}}), got {kind_of(record)}. "
                            f"Fix: one object per line.")
        records.append(record)
    return records


def _read_json(path: Path, text: str | None = None) -> list[dict]:
    text = _read_text(path) if text is None else text
    if not text.strip():
        return []
    try:
        data = _parse_json(text, path, None, "repair the file; it must hold a list of objects (or be JSON Lines).")
    except DataError:
        if text.lstrip().startswith("{") and "\n{" in text:  # JSON Lines saved as .json
            return _read_jsonl(path, text)
        raise
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"train": [...]} or {"data": [...]}
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of objects ([{{\"Question\": …}}, …]), got {kind_of(data)}. "
                        f"Fix: save the rows as a JSON list or as JSON Lines (.jsonl).")
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise DataError(f"{path}: item {index + 1} of the list is {kind_of(item)}, not an object "
                            f"({{\"Question\": …}}). Fix: every item must be one row as an object.")
    return data


def _csv_delimiter(path: Path, header: str) -> str:
    """',' unless the header has none and a ';' or a tab (the separators of European and 'text' exports)."""
    if "," in header:
        return ","
    for delimiter, name in ((";", "semicolon"), ("\t", "tab")):
        if delimiter in header:
            print(f"[data] {path}: the header has no commas but {name}s: reading it as {name}-separated")
            return delimiter
    return ","


def _read_csv(path: Path) -> list[dict]:
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_csv_delimiter(path, _lines(text)[0]))
    limit = csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))  # a chain of thought can exceed the 128 KB default
    try:
        return _csv_records(path, reader)
    except csv.Error as e:  # a NUL byte, a quote left open...
        raise DataError(f"{path}:{reader.line_num}: not readable CSV ({e}). Fix: re-export the file as CSV, "
                        f"or save the rows as JSON Lines.") from None
    finally:
        csv.field_size_limit(limit)


def _csv_records(path: Path, reader) -> list[dict]:
    header = next(reader, None)
    if header is None:
        return []
    named = [name for name in header if name]  # unnamed columns (a spreadsheet's trailing empty ones) are ignored
    repeated = sorted({name for name in named if named.count(name) > 1})
    if repeated:
        raise DataError(f"{path}:1: the column {shown(repeated[0])} appears twice in the header. Fix: rename or "
                        f"delete one of them.")
    records = []
    for values in reader:
        if not values:  # a blank line
            continue
        if len(values) != len(header):
            raise DataError(f"{path}:{reader.line_num}: this row has {len(values)} values, the header has "
                            f"{len(header)}. Fix: put quotes around text holding a comma, a quote or a line "
                            f"break (spreadsheets do this when exporting), or fill in the missing values.")
        records.append({name: value for name, value in zip(header, values) if name})
    return records


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(path)
        records = table.to_pylist()
    except (pa.ArrowException, OSError, ValueError) as e:  # truncated, not Parquet, text that is not UTF-8
        reason = f"{type(e).__name__}: {str(e).replace(str(path), 'it').splitlines()[0][:200] if str(e) else ''}"
        raise DataError(f"{path}: not a readable Parquet file ({reason}). Fix: write it again (a download or copy "
                        f"cut short leaves it truncated), or save the rows as JSON Lines.") from None
    repeated = sorted({name for name in table.column_names if table.column_names.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: the column {shown(repeated[0])} appears twice. Fix: rename or drop one of them.")
    return records


def _read_hub(dataset_id: str, config: str | None, setting: str) -> list[dict]:
    if dataset_id.count("/") != 1:
        raise DataError(f"{setting}={dataset_id!r} is neither an existing file nor a Hub id of the form owner/name. "
                        f"Fix: pass a path to a {'/'.join(LOCAL_SUFFIXES)} file or a Hub dataset id.")
    import datasets
    try:
        records = datasets.load_dataset(dataset_id, config, split="train").to_list()
    except Exception as e:  # offline, private, misspelt: datasets raises many types
        raise DataError(f"{setting}={dataset_id!r} (config {config!r}) could not be loaded from the Hugging Face "
                        f"Hub: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}. Fix: check "
                        f"the id and your connection (HF_TOKEN for a private dataset), or download it once and "
                        f"pass the local file, e.g. --DATASET=data/train.jsonl.") from None
    if not records:
        raise DataError(f"{setting}={dataset_id!r} (config {config!r}): its train split has no rows. Fix: check the "
                        f"id and the config (DATASET_CONFIG).")
    return records


# --- training rows: each layout's row as the row it becomes (Question, Complex_CoT, Response) ------------------------
# The layouts the trainer reads (data/layouts.py TRAINING, detected there):
#   medical-o1   Question, Complex_CoT, Response       (FreedomIntelligence/medical-o1-reasoning-SFT)
#   instruction  instruction, response, optional input  (instruction/response JSONL; "output" is read as response)
#   messages     messages: [user, assistant]            (the Hugging Face chat convention; one turn)
# Rows of the last two carry no separate reasoning: Complex_CoT is "" unless the answer is written in the run's
# reasoning layout (then it is split by that layout's parser, see prepare_training_data).

def validate(records: list[dict], source: str) -> tuple[list[dict], Counter]:
    """Rows of any layout as (Question, Complex_CoT, Response) with non-empty text; count why others were dropped."""
    if not records:
        raise DataError(f"{source}: no rows. Fix: point DATASET at a file or Hub dataset with rows.")
    layout = detect(records, source, TRAINING)
    to_row = {MEDICAL_O1: _medical_o1_row, INSTRUCTION: _instruction_row, MESSAGES: _messages_row}[layout]
    rows, dropped = [], Counter()
    for record in records:
        row = to_row(record)
        if isinstance(row, str):
            dropped[row] += 1
        else:
            rows.append(row)
    if not rows:
        raise DataError(f"{source}: no usable rows ({len(records)} read, all dropped: {dict(dropped)}). "
                        f"Fix: every row needs non-empty text in {', '.join(layout.text_fields)} ({layout.name} "
                        f"rows{'; one user turn, then one assistant turn' if layout == MESSAGES else ''}).")
    return rows, dropped


def _first_problem(record: dict, fields) -> str | None:
    for field in fields:
        if field not in record:
            return f"{field} is missing"
        problem = text_problem(record[field])
        if problem:
            return f"{field} {problem}"
    return None


def _medical_o1_row(record: dict) -> dict | str:
    return _first_problem(record, FIELDS) or {field: record[field] for field in FIELDS}


def _instruction_row(record: dict) -> dict | str:
    record = {**record, "response": record.get("response", record.get("output"))}
    problem = _first_problem(record, ("instruction", "response"))
    if problem:
        return problem
    extra = record.get("input")
    if extra not in (None, "") and text_problem(extra):
        return f"input {text_problem(extra)}"
    question = record["instruction"].strip() + (f"\n\n{extra.strip()}" if extra and extra.strip() else "")
    return {"Question": question, "Complex_CoT": "", "Response": record["response"]}


def _messages_row(record: dict) -> dict | str:
    messages = record.get("messages")
    if not isinstance(messages, list):
        return f"messages is {kind_of(messages)}, not a list"
    if not all(isinstance(m, dict) for m in messages):
        return "messages holds something other than {role, content} objects"
    roles = [m.get("role") for m in messages]
    if roles == ["system", "user", "assistant"]:
        return "messages has its own system message (the run's system prompt is the style's, saved with the adapter)"
    if roles != ["user", "assistant"]:
        return "messages is not one user turn then one assistant turn"
    problem = _first_problem({"user content": messages[0].get("content"),
                              "assistant content": messages[1].get("content")}, ("user content", "assistant content"))
    return problem or {"Question": messages[0]["content"], "Complex_CoT": "", "Response": messages[1]["content"]}


def fit_rows_to_style(rows: list[dict], style, source: str) -> list[dict]:
    """Rows without a separate reasoning (instruction, messages) for a style that trains one: their answers must
    already be written in that style's layout, whose parser splits them; otherwise the combination is refused."""
    if not style.reasoning or all(row["Complex_CoT"] for row in rows):
        return rows
    fitted = []
    for n, row in enumerate(rows, start=1):
        if row["Complex_CoT"]:
            fitted.append(row)
            continue
        parsed = parse_answer(row["Response"], style)
        if not parsed.complete:
            raise DataError(f"{source}: row {n} has no reasoning for PROMPT_STYLE={style.name!r} to train (its answer "
                            f"is not in that layout: {parsed.status}). Fix: --PROMPT_STYLE=plain for instruction/"
                            f"response or chat rows, or rows with reasoning (Question, Complex_CoT, Response).")
        fitted.append({**row, "Complex_CoT": parsed.thinking, "Response": parsed.response})
    return fitted


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


def prepare_training_data(cfg, style, tokenizer) -> TrainingData:
    """Read, validate, shorten (MAX_THINK_WORDS), split and format the run's rows, printing what happened.
    The tokenizer renders the examples of text-form styles (r1); it may be None in a dry run of another style."""
    records = load_records(cfg.DATASET, cfg.DATASET_CONFIG)
    rows, dropped = validate(records, cfg.DATASET)
    print(f"[data] {len(rows)} usable rows ({detect(records, cfg.DATASET, TRAINING).name} layout) from {cfg.DATASET}"
          + (f"; dropped {sum(dropped.values())}: {dict(dropped)}" if dropped else ""))
    rows = fit_rows_to_style(rows, style, cfg.DATASET)
    rows, shortened = shorten_rows(rows, cfg.MAX_THINK_WORDS)
    if shortened:
        print(f"[data] MAX_THINK_WORDS={cfg.MAX_THINK_WORDS}: {shortened} chains of thought shortened to their "
              f"opening and concluding paragraphs, so the model learns to conclude (experiments/LOG.md)")
    train_rows, val_rows = split(rows, cfg.VAL_SIZE, cfg.TRAIN_SAMPLES, cfg.SEED)
    print(f"[data] {len(train_rows)} training rows, {len(val_rows) if val_rows else 0} validation rows "
          f"(seed {cfg.SEED})")
    train_rows, safety_info = mix_into(train_rows, getattr(cfg, "SAFETY_MIX", 0.0), cfg.SEED)  # never the val rows
    samples_per_kind(getattr(cfg, "SAFETY_EVAL_SAMPLES", None), getattr(cfg, "EVAL_SAMPLES", 0))  # checked now
    if style.as_text and tokenizer is None and getattr(cfg, "DRY_RUN", False):
        print(f"[dry run] PROMPT_STYLE={style.name!r} examples not rendered: they are written by the model's "
              f"tokenizer, which could not be loaded (rows read, validated and split above)")
        return TrainingData(train_rows, None, val_rows, {"train_rows": len(train_rows), "dropped": dict(dropped),
                                                          "val_rows": len(val_rows) if val_rows else 0})
    if style.as_text and tokenizer is None:
        raise DataError(f"PROMPT_STYLE={style.name!r} renders its examples with the model's tokenizer, which could "
                        f"not be loaded. Fix: run where {cfg.MODEL_NAME} can be loaded (online, or a local folder).")
    as_example = lambda row: to_example(row, style, tokenizer)  # noqa: E731
    val = val_rows.map(as_example, remove_columns=list(FIELDS)) if val_rows else None
    return TrainingData(train_rows.map(as_example, remove_columns=list(FIELDS)), val, val_rows,
                        {"train_rows": len(train_rows), "val_rows": len(val_rows) if val_rows else 0,
                         "dropped": dict(dropped), "shortened_reasoning": shortened, **safety_info})
