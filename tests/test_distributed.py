"""Two processes on the CPU, launched with the README's command and the shipped config (`accelerate launch
--config_file configs/accelerate/ddp.yaml`, torchrun underneath; the processes join over gloo on a CPU): one writer,
shared evaluation, the effective batch as printed, and a failing process that stops the run."""
import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import ROOT
from medreason.evaluate import comparison
from medreason.model import for_inference
from medreason.answers.prompts import get_style

HARNESS = ROOT / "tests" / "harness" / "record_writes.py"
DDP_CONFIG = ROOT / "configs" / "accelerate" / "ddp.yaml"
TRAIN_ROWS, EVAL_ROWS, STEPS = 24, 4, 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, log_dir, processes=2, env=None, timeout=900):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP_CONFIG),
               "--num_processes", str(processes), "--main_process_ip", "127.0.0.1", "--main_process_port",
               str(free_port()), str(HARNESS), *args]
    return subprocess.run(command, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1", "WRITE_LOG_DIR": str(log_dir),
                                                "OMP_NUM_THREADS": "1", **(env or {})})


def run_args(model_dir, data, out):
    return [f"--MODEL_NAME={model_dir}", "--BACKEND=transformers", f"--DATASET={data}", f"--VAL_SIZE={EVAL_ROWS}",
            f"--EVAL_SAMPLES={EVAL_ROWS}", f"--MAX_STEPS={STEPS}", "--BATCH_SIZE=2", "--GRAD_ACCUM=1",
            "--MAX_SEQ_LENGTH=128", "--EVAL_STEPS=2", "--SAVE_STEPS=2", "--MAX_NEW_TOKENS=8", "--EVAL_BATCH_SIZE=2",
            "--LOGGING_STEPS=1", "--REPORT_TO=none", "--PUSH_TO_HUB=dry-run", f"--OUTPUT_DIR={out}"]


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory, demo_rows):
    path = tmp_path_factory.mktemp("ddp-data") / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in demo_rows[:TRAIN_ROWS + EVAL_ROWS]))
    return path


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tiny_model_dir, rows_file):
    base = tmp_path_factory.mktemp("ddp")
    out, logs = base / "run", base / "writes"
    logs.mkdir()
    result = launch(run_args(tiny_model_dir, rows_file, out), logs)
    assert result.returncode == 0, result.stdout[-4000:]
    writes = {rank: json.loads((logs / f"rank{rank}.json").read_text()) for rank in (0, 1)}
    return out, result.stdout, writes


@pytest.mark.e2e
def test_two_processes_print_once_and_train_with_the_printed_effective_batch(two_process_run):
    out, stdout, _ = two_process_run
    said = "effective batch: 2 processes x BATCH_SIZE 2 x GRAD_ACCUM 1 = 4 rows per optimizer update"
    assert stdout.count(said) == 1 and stdout.count("Settings (constants") == 1
    assert "--GLOBAL_BATCH=2 keeps that recipe" in stdout
    history = json.loads((out / "log_history.json").read_text())
    last = max((e for e in history if "loss" in e), key=lambda e: e["step"])
    assert last["step"] == STEPS and last["epoch"] == pytest.approx(STEPS * 4 / TRAIN_ROWS, rel=0.01)


@pytest.mark.e2e
def test_one_process_writes_the_runs_files_and_each_file_has_one_writer(two_process_run):
    out, _, writes = two_process_run
    inside = {rank: [Path(p) for p in paths if Path(p).is_relative_to(out.resolve())] for rank, paths in writes.items()}
    assert {p.name for p in inside[1]} <= {"rng_state_1.pth"}, f"process 1 wrote {sorted(set(inside[1]))}"
    writers = Counter(path for paths in inside.values() for path in set(paths))
    assert max(writers.values()) == 1, [p for p, n in writers.items() if n > 1]
    names = {p.relative_to(out.resolve()).parts[0] for p in inside[0]}
    assert {"adapter", "results.json", "hub_upload", "evaluation", "eval_samples.jsonl"} <= names
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and not list(out.glob("adapter.*"))


@pytest.mark.e2e
def test_the_shared_evaluation_answers_as_one_process_would(two_process_run):
    out, _, _ = two_process_run
    loaded = for_inference.load(str(out / "adapter"))
    samples = [json.loads(line) for line in (out / "eval_samples.jsonl").read_text().splitlines()]
    rows = [{"Question": s["question"], "Complex_CoT": "", "Response": s["reference"]} for s in samples]
    alone = comparison.score(loaded.model, loaded.tokenizer, rows, "reasoning", get_style("think_response"), 8, 2,
                             "one process")
    assert len(samples) == EVAL_ROWS and [s["answer"] for s in samples] == alone.answers
    results = json.loads((out / "results.json").read_text())
    assert results["evaluation"]["tuned"]["format_compliance"]["n"] == EVAL_ROWS


@pytest.mark.e2e
def test_a_process_that_fails_stops_the_run_with_its_message(tmp_path, tiny_model_dir, rows_file):
    logs = tmp_path / "writes"
    logs.mkdir()
    result = launch(run_args(tiny_model_dir, rows_file, tmp_path / "run"), logs, env={"DRILL_FAIL_RANK": "1"},
                    timeout=600)
    assert result.returncode != 0
    assert "drill: process 1 failed while evaluating" in result.stdout
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()  # saved before the failure
