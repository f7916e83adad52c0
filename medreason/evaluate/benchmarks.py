"""Exam benchmarks as the field reports them: MedQA, MedMCQA, PubMedQA and MMLU-Pro health, each a small declared
entry (where the rows come from, how their fields map to our {question, options, answer} rows, the published
reference numbers), plus a local file in our layout (--data) and a user's own benchmark declared in YAML.

Schemas checked against the datasets' own cards (2026-12-07):
  GBaker/MedQA-USMLE-4-options  question, options {A..D}, answer (text), answer_idx (letter), meta_info; test 1,273
  openlifescienceai/medmcqa     id, question, opa, opb, opc, opd, cop (0-3 = a-d), choice_type, exp, subject_name,
                                topic_name; validation 4,183 (the test split has no answers)
  qiaojin/PubMedQA pqa_labeled  pubid, question, context {contexts, labels, meshes, ...}, long_answer,
                                final_decision (yes/no/maybe); one split "train" of 1,000 expert-labelled rows (the
                                literature's test set is 500 of them, listed by PMID in the PubMedQA repository)
  TIGER-Lab/MMLU-Pro            question_id, question, options (list of up to 10), answer (letter), answer_index,
                                cot_content, category, src; test 12,032, category "health" 818

A YAML benchmark (configs/benchmarks/*.yaml) declares the same fields; see configs/benchmarks/example.yaml.
"""
from __future__ import annotations

import random
import string
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from medreason.config.errors import UserError
from medreason.data import readers
from medreason.evaluate.contamination import overlaps

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "benchmarks"
HUATUO_SOURCE = "HuatuoGPT-o1 (arXiv 2412.18925), Table 1, as quoted in issue #22"
LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class Reference:
    """A published score on the benchmark (accuracy, %), for a model named as in its source."""
    model: str
    accuracy: float
    source: str
    note: str = ""


@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark's rows come from and how its fields become {question, options, answer}.

    options: the field holding {letter: text} or a list of texts, or a list of fields (one per option), or
    `choices` (fixed texts for every row, e.g. yes/no/maybe). answer_format: "letter", "index" (0-based) or
    "text" (one option's text). context: a field (dotted for a nested one) whose text goes before the question.
    where: only rows whose fields have these values."""
    name: str
    dataset: str  # Hub id, or a local file
    split: str = "test"
    subset: str | None = None
    question: str = "question"
    options: str | list[str] = "options"
    answer: str = "answer"
    answer_format: str = "letter"
    choices: tuple[str, ...] = ()
    context: str | None = None
    where: dict = field(default_factory=dict)
    references: tuple[Reference, ...] = ()
    description: str = ""

    @property
    def label(self) -> str:
        where = ", ".join(f"{k}={v}" for k, v in self.where.items())
        parts = [self.dataset] + ([self.subset] if self.subset else []) + ([self.split] if self.split else [])
        return " / ".join(parts) + (f" ({where})" if where else "")


BENCHMARKS = {
    "medqa": Benchmark(
        "medqa", "GBaker/MedQA-USMLE-4-options", "test", question="question", options="options",
        answer="answer_idx", description="USMLE-style clinical vignettes, 4 options (MedQA, Jin et al. 2021)",
        references=(Reference("Llama-3.1-8B-Instruct", 58.7, HUATUO_SOURCE),
                    Reference("HuatuoGPT-o1-8B (SFT)", 69.0, HUATUO_SOURCE),
                    Reference("HuatuoGPT-o1-8B (SFT + RL)", 72.6, HUATUO_SOURCE))),
    "medmcqa": Benchmark(
        "medmcqa", "openlifescienceai/medmcqa", "validation", question="question",
        options=["opa", "opb", "opc", "opd"], answer="cop", answer_format="index",
        description="Indian medical entrance exams (AIIMS/NEET PG), 4 options; validation, as the literature uses",
        references=(Reference("Llama-3.1-8B-Instruct", 56.0, HUATUO_SOURCE),
                    Reference("HuatuoGPT-o1-8B (SFT)", 57.9, HUATUO_SOURCE),
                    Reference("HuatuoGPT-o1-8B (SFT + RL)", 60.4, HUATUO_SOURCE))),
    "pubmedqa": Benchmark(
        "pubmedqa", "qiaojin/PubMedQA", "train", subset="pqa_labeled", question="question",
        options="", choices=("yes", "no", "maybe"), answer="final_decision", answer_format="text",
        context="context.contexts",
        description="Research questions answered yes/no/maybe from the abstract (given as context); the 1,000 "
                    "expert-labelled rows (the published test set is 500 of them)",
        references=(Reference("Llama-3.1-8B-Instruct", 75.2, HUATUO_SOURCE, "on the 500-row test set"),
                    Reference("HuatuoGPT-o1-8B (SFT)", 77.7, HUATUO_SOURCE, "on the 500-row test set"),
                    Reference("HuatuoGPT-o1-8B (SFT + RL)", 79.2, HUATUO_SOURCE, "on the 500-row test set"))),
    "mmlu-pro-health": Benchmark(
        "mmlu-pro-health", "TIGER-Lab/MMLU-Pro", "test", question="question", options="options", answer="answer",
        where={"category": "health"}, description="MMLU-Pro's health questions, up to 10 options",
        references=(Reference("Llama-3.1-8B-Instruct", 52.7, HUATUO_SOURCE, "health + biology"),
                    Reference("HuatuoGPT-o1-8B (SFT)", 53.5, HUATUO_SOURCE, "health + biology"),
                    Reference("HuatuoGPT-o1-8B (SFT + RL)", 58.7, HUATUO_SOURCE, "health + biology"))),
}


# --- field mapping ---------------------------------------------------------------------------------------------------

def _get(record: dict, dotted: str):
    value = record
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _options(record: dict, bench: Benchmark) -> dict[str, str]:
    if bench.choices:
        texts = list(bench.choices)
    elif isinstance(bench.options, list):
        texts = [record.get(name) for name in bench.options]
    else:
        value = record.get(bench.options)
        if isinstance(value, dict):
            return {str(k).strip().upper(): str(v) for k, v in value.items() if v is not None and str(v).strip()}
        texts = list(value) if isinstance(value, (list, tuple)) else []
    return {LETTERS[i]: str(t) for i, t in enumerate(texts) if t is not None and str(t).strip() and i < 26}


def _answer_letter(record: dict, bench: Benchmark, options: dict[str, str]) -> str | None:
    value = record.get(bench.answer)
    if value is None:
        return None
    if bench.answer_format == "index":
        try:
            return LETTERS[int(value)]
        except (ValueError, IndexError):
            return None
    if bench.answer_format == "text":
        wanted = str(value).strip().lower()
        return next((k for k, v in options.items() if v.strip().lower() == wanted), None)
    letter = str(value).strip().upper()
    return letter if len(letter) == 1 else None


def to_row(record: dict, bench: Benchmark) -> dict | None:
    """One benchmark record as our {question, options, answer} row (None when it has no usable answer)."""
    question = record.get(bench.question)
    if not isinstance(question, str) or not question.strip():
        return None
    if bench.context:
        context = _get(record, bench.context)
        context = "\n".join(context) if isinstance(context, (list, tuple)) else context
        if context:
            question = f"Context: {str(context).strip()}\n\nQuestion: {question.strip()}"
    options = _options(record, bench)
    answer = _answer_letter(record, bench, options)
    if len(options) < 2 or answer not in options:
        return None
    return {"question": question.strip(), "options": options, "answer": answer}


def to_rows(records: list[dict], bench: Benchmark) -> tuple[list[dict], int]:
    """(rows, records skipped for lacking a usable answer), after the `where` filter."""
    kept = [r for r in records if all(str(r.get(k)) == str(v) for k, v in bench.where.items())]
    rows = [to_row(r, bench) for r in kept]
    return [r for r in rows if r], sum(r is None for r in rows)


# --- declared benchmarks: built-in, YAML, local file -----------------------------------------------------------------

def from_yaml(path: Path) -> Benchmark:
    """A user's benchmark declared in YAML (the fields of Benchmark; references as a list of mappings)."""
    import yaml
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: not readable YAML ({type(e).__name__}). Fix: see configs/benchmarks/example.yaml.") \
            from None
    known = set(Benchmark.__dataclass_fields__)
    unknown = sorted(set(spec) - known)
    if unknown or "dataset" not in spec:
        raise UserError(f"{path}: {'unknown keys ' + ', '.join(unknown) if unknown else 'no dataset'}. Fix: use "
                        f"the keys {', '.join(sorted(known))} (see configs/benchmarks/example.yaml).")
    spec.setdefault("name", path.stem)
    dataset = Path(spec["dataset"])
    if not dataset.is_absolute() and (path.parent / dataset).exists():
        spec["dataset"] = str(path.parent / dataset)
    spec["references"] = tuple(Reference(**r) for r in spec.get("references") or ())
    spec["choices"] = tuple(spec.get("choices") or ())
    if spec.get("answer_format", "letter") not in ("letter", "index", "text"):
        raise UserError(f"{path}: answer_format {spec['answer_format']!r}. Fix: letter, index or text.")
    return Benchmark(**spec)


def local_file(path: Path) -> Benchmark:
    """A file already in our layout: {question, options: {letter: text}, answer: letter}."""
    return Benchmark(path.stem, str(path), split="", description=f"local file {path.name}")


def resolve(names: str | list[str], config_dir: Path = CONFIG_DIR) -> list[Benchmark]:
    """Benchmark names (comma-separated): built-in ones, YAML files or names of configs/benchmarks/<name>.yaml, or
    local files in our layout; checked up front."""
    names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    found = []
    for name in filter(None, names):
        yaml_path = Path(name) if name.endswith((".yaml", ".yml")) else config_dir / f"{name}.yaml"
        if name in BENCHMARKS:
            found.append(BENCHMARKS[name])
        elif Path(name).suffix.lower() in (".jsonl", ".json", ".csv", ".parquet") and Path(name).is_file():
            found.append(local_file(Path(name)))
        elif yaml_path.is_file():
            found.append(from_yaml(yaml_path))
        else:
            own = sorted(p.stem for p in config_dir.glob("*.yaml")) if config_dir.is_dir() else []
            raise UserError(f"benchmark {name!r} is not known. Fix: one of {', '.join(BENCHMARKS)}"
                            f"{', ' + ', '.join(own) if own else ''}, or a .yaml file declaring your own "
                            f"(configs/benchmarks/example.yaml).")
    return found


def load(bench: Benchmark) -> list[dict]:
    """The benchmark's rows in our layout. Offline with no cached copy: one line naming the id and how to get it."""
    path = Path(bench.dataset).expanduser()
    if path.suffix.lower() in readers.LOCAL_SUFFIXES or path.exists():
        records = readers.load_records(str(path), setting=f"benchmark {bench.name}")
    else:
        records = _hub_records(bench)
    rows, skipped = to_rows(records, bench)
    if not rows:
        raise UserError(f"benchmark {bench.name} ({bench.label}): none of its {len(records)} rows maps to "
                        f"question/options/answer. Fix: check its field names (question={bench.question!r}, "
                        f"options={bench.options!r}, answer={bench.answer!r}).")
    if skipped:
        print(f"[bench] {bench.name}: {skipped} rows without a usable answer skipped")
    return rows


def _hub_records(bench: Benchmark) -> list[dict]:
    import datasets
    try:
        return datasets.load_dataset(bench.dataset, bench.subset, split=bench.split).to_list()
    except Exception as e:  # offline without a cache, gated, renamed: the cause in one line, and the way out
        subset = f", {bench.subset!r}" if bench.subset else ""
        raise UserError(
            f"benchmark {bench.name}: {bench.label} could not be loaded ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120] if str(e) else ''}). Fix: with a connection, cache it once: python -c "
            f"\"import datasets; datasets.load_dataset('{bench.dataset}'{subset}, split='{bench.split}')\", "
            f"or give its rows as a local file: --data <file>.jsonl.") from None


def stratified_sample(rows: list[dict], limit: int, seed: int) -> list[dict]:
    """A seeded sample of `limit` rows keeping each correct letter's share (so a letter-biased model is not
    favoured by chance); all rows when limit is 0 or not below their number."""
    if not limit or limit >= len(rows):
        return list(rows)
    rng = random.Random(seed)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[row["answer"]].append(i)
    quotas = {k: limit * len(v) / len(rows) for k, v in groups.items()}
    counts = {k: int(q) for k, q in quotas.items()}
    for k in sorted(quotas, key=lambda k: quotas[k] - counts[k], reverse=True)[:limit - sum(counts.values())]:
        counts[k] += 1
    chosen = sorted(i for k, idx in groups.items() for i in rng.sample(idx, counts[k]))
    return [rows[i] for i in chosen]


def question_texts(rows: list[dict]) -> list[str]:
    """What the contamination check compares training rows with: the benchmark's questions (HuatuoGPT-o1's rule)."""
    return [row["question"] for row in rows]


# --- contamination: training rows against the benchmarks' questions --------------------------------------------------

def training_text(row) -> str:
    """Every piece of text in a training row, whatever its layout (medical-o1 fields, a prompt/completion
    conversation, messages): question, reasoning and answer are all compared."""
    if isinstance(row, str):
        return row
    if isinstance(row, dict):
        return "\n".join(training_text(v) for k, v in row.items() if k != "role")
    if isinstance(row, (list, tuple)):
        return "\n".join(training_text(v) for v in row)
    return ""


def contamination(train_rows: list[dict], suites: dict, chars: int = 64) -> dict:
    """{benchmark: {"rows": [indexes of overlapping training rows], "count", "example"}} for suites (name ->
    (Benchmark, rows, ...)): HuatuoGPT-o1's rule, a shared run of `chars` characters with a benchmark question."""
    texts = [training_text(r) for r in train_rows]
    found = {}
    for name, (bench, rows, *_) in suites.items():
        hits = overlaps(texts, question_texts(rows), chars)
        indexes = sorted({h.train_index for h in hits})
        found[name] = {"rows": indexes, "count": len(indexes), "checked": len(rows),
                       "example": hits[0].describe() if hits else None}
    return found


def available_suites(names: str) -> dict:
    """The declared benchmarks that can be read here (name -> (Benchmark, rows, "all")); each one that cannot is a
    printed line naming its id and how to get it (a check goes on without it)."""
    suites = {}
    for bench in resolve(names):
        try:
            rows = load(bench)
        except UserError as e:
            print(f"[contamination] {bench.name}: not checked: {e}")
            continue
        suites[bench.name] = (bench, rows, "all")
    return suites


def contamination_lines(found: dict, where: str, fix: str = "") -> list[str]:
    """A warning per contaminated benchmark (count and one example), or one line saying none overlaps."""
    lines = [f"[contamination] WARNING: {c['count']} {where} row(s) share 64+ characters with {name}'s questions "
             f"(HuatuoGPT-o1 drops such rows), e.g. {c['example']}. Scores on {name} may be inflated. "
             + (fix or f"Fix: python prepare_dataset.py --dataset <your data> --benchmarks {name} --decontaminate "
                       f"--output <folder>, then train on <folder>/train.jsonl.")
             for name, c in found.items() if c["count"]]
    checked = ", ".join(f"{n} ({c['checked']} questions)" for n, c in found.items())
    return lines or ([f"[contamination] no {where} row shares 64 characters with {checked}"] if found else [])


def preflight_contamination(rows, names: str) -> dict:
    """The trainer's check before training: its training rows against BENCHMARKS (printed, never fatal)."""
    if not names:
        return {}
    found = contamination(list(rows), available_suites(names))
    for line in contamination_lines(found, "training"):
        print(line)
    return found
