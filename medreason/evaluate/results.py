"""The run's results.json: metrics, the settings that produced them, library versions, timings."""
from __future__ import annotations

import json
import platform
import time
from importlib import metadata
from pathlib import Path

from medreason.answers.tags import parse_all
from medreason.evaluate.metrics import status_counts
from medreason.evaluate.report import metrics_json

PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "unsloth",
            "unsloth_zoo", "rouge-score", "wandb", "huggingface_hub")


class Clock:
    """Seconds per step of a run: lap("train") records the time since the previous lap."""

    def __init__(self) -> None:
        self.start = self.last = time.time()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.time()
        self.laps[name], self.last = now - self.last, now

    def timings(self) -> dict[str, float]:
        return {**self.laps, "total": time.time() - self.start}


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


def write_results(path: Path, metrics: dict, settings: dict, plan, timings: dict, extra: dict | None = None) -> Path:
    payload = {"metrics": metrics, "settings": jsonable(settings),
               "plan": {k: v for k, v in vars(plan).items() if k != "reasons"}, "choices": plan.reasons,
               "versions": versions(), "timings_s": {k: round(v, 2) for k, v in timings.items()}, **(extra or {})}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def write_run(out: Path, *, cfg, plan, timings: dict, comparison: dict, eval_loss, train_loss, sample, val_rows,
              data_info: dict, style="think_response") -> tuple[Path, dict]:
    """results.json (the tuned model's metrics first), eval_samples.jsonl and validation.jsonl of a training run.
    Keyword-only: cfg (the resolved settings), plan (config/run_plan.Plan), timings (Clock.timings()), comparison
    ({"base", "tuned"}: evaluate/comparison.ModelAnswers, or {} when nothing was evaluated), eval_loss and train_loss,
    sample (the rows answered), val_rows (the held-out rows), data_info (the data step's counts), style."""
    tuned = comparison.get("tuned")
    metrics = {"rouge_l": None, "format_compliance": None, "perplexity": None, "eval_loss": eval_loss,
               "train_loss": train_loss, "eval_samples": len(sample),
               "answer_statuses": status_counts(tuned.answers, style, tuned.ended) if tuned else {}}
    if tuned:
        metrics.update({name: m["value"] for name, m in tuned.metrics.items()})
        write_samples(out / "eval_samples.jsonl", sample, tuned, comparison["base"].answers, style)
    if val_rows:
        write_rows(out / "validation.jsonl", val_rows)
    path = write_results(out / "results.json", metrics, vars(cfg), plan, timings,
                         {"data": data_info, "evaluation": metrics_json(comparison) if comparison else None})
    return path, metrics


def write_samples(path: Path, rows, tuned, base_answers: list[str] | None = None, style="think_response") -> Path:
    """One JSON line per evaluated question: the tuned answer parsed, the base model's answer, the reference."""
    with path.open("w", encoding="utf-8") as f:
        parsed_answers = parse_all(tuned.answers, style, tuned.ended)
        for i, (row, answer, parsed) in enumerate(zip(rows, tuned.answers, parsed_answers, strict=True)):
            line = {"question": row["Question"], "answer": answer, "status": parsed.status,
                    "thinking": parsed.thinking, "response": parsed.response, "reference": row["Response"]}
            if base_answers:
                line["base_answer"] = base_answers[i]
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    return path


def write_rows(path: Path, rows) -> Path:
    """Rows as JSON Lines (the held-out validation rows, for evaluate.py to reuse)."""
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
