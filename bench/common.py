"""Shared by the benchmarks: run the trainer as a user would and read what it measured."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_SAMPLE = ROOT.parent / "shared" / "data" / "medical_o1_sample.jsonl"
OUT = ROOT / "bench" / "out"


def peak_rss_of(process: subprocess.Popen, stop: threading.Event, peak: list[int]) -> None:
    """Sample the resident memory of the process tree every 0.2 s; keep the maximum."""
    import psutil
    try:
        root = psutil.Process(process.pid)
        while not stop.is_set():
            try:
                rss = root.memory_info().rss + sum(c.memory_info().rss for c in root.children(recursive=True))
                peak[0] = max(peak[0], rss)
            except psutil.Error:
                pass
            time.sleep(0.2)
    except psutil.Error:
        return


def run_trainer(label: str, overrides: list[str], rows: int) -> dict:
    """Train on `rows` real rows with the given settings (no evaluation); returns throughput and memory.
    Whole chains of thought (MAX_THINK_WORDS=None): the benchmarks measure real ~740-token rows."""
    out = Path(tempfile.mkdtemp(prefix=f"bench-{label}-"))
    args = [sys.executable, str(ROOT / "medical_fine_tuning.py"), "--MODEL_NAME=embedded",
            f"--DATASET={SHARED_SAMPLE}", "--VAL_SIZE=0", "--EVAL_SAMPLES=0", "--REPORT_TO=none",
            "--PUSH_TO_HUB=False", "--SAVE_STEPS=100000", "--MAX_THINK_WORDS=None", f"--OUTPUT_DIR={out}",
            f"--TRAIN_SAMPLES={rows}", *overrides]
    stop, peak = threading.Event(), [0]
    start = time.time()
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    sampler = threading.Thread(target=peak_rss_of, args=(process, stop, peak), daemon=True)
    sampler.start()
    log, _ = process.communicate()
    stop.set()
    if process.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{log[-3000:]}")
    history = json.loads((out / "log_history.json").read_text())
    plan = json.loads((out / "results.json").read_text()).get("plan", {})
    parameters = re.search(r"trainable of ([\d,]+) parameters", log)
    final = next(e for e in reversed(history) if "train_runtime" in e)
    tokens = max(e.get("num_tokens", 0) for e in history)
    steps = final.get("step") or max(e.get("step", 0) for e in history)
    return {"label": label, "settings": overrides, "rows": rows, "steps": steps,
            "train_seconds": final["train_runtime"], "seconds_per_step": final["train_runtime"] / max(steps, 1),
            "tokens": tokens, "tokens_per_second": tokens / final["train_runtime"],
            "rows_per_second": rows / final["train_runtime"], "peak_rss_gb": peak[0] / 2**30,
            "wall_seconds": time.time() - start, "backend": plan.get("backend"), "precision": plan.get("precision"),
            "parameters": int(parameters.group(1).replace(",", "")) if parameters else None,
            "gradient_checkpointing": "--GRADIENT_CHECKPOINTING=True" in overrides}


def save(name: str, payload: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Markdown table: columns are (header, key, format)."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format(row[k], f) if f else str(row[k]) for _, k, f in columns) + " |")
    return "\n".join(lines)


def cpu_rates() -> dict:
    """This CPU's measured fp32 and bf16 matmul rates (the roofline of a compute-bound step), printed first, so a
    figure from one CPU is never read as another's."""
    from dataclasses import asdict

    from medreason.config import hardware
    rates = hardware.cpu_rates()
    print(f"[bench] this CPU: {rates.describe()}")
    return asdict(rates)


def add_roofline(run: dict, rates: dict) -> dict:
    """The run's achieved matmul rate beside this CPU's roofline for its precision. Work per trained token: 2N
    forward + 2N backward through the activations (a LoRA's frozen weights get no gradient; the adapter's own share
    is under 1%), +2N when gradient checkpointing recomputes the forward; N = the model's parameters."""
    per_token = (6 if run["gradient_checkpointing"] else 4) * (run["parameters"] or 0)
    roof = rates["bf16_gflops"] if run["precision"] == "bf16" else rates["fp32_gflops"]
    achieved = run["tokens_per_second"] * per_token / 1e9
    return {**run, "achieved_gflops": achieved, "roofline_gflops": roof, "share_of_roofline": achieved / roof}


ROOFLINE_COLUMNS = [("run", "label", ""), ("backend", "backend", ""), ("precision", "precision", ""),
                    ("tokens/s", "tokens_per_second", ".1f"), ("achieved GFLOP/s", "achieved_gflops", ".1f"),
                    ("roofline GFLOP/s", "roofline_gflops", ".1f"), ("share", "share_of_roofline", ".1%")]
