"""Fault drills: saves cut off by a kill, a full disk, SIGKILL mid-training and mid-save, unexpected errors.

The Trainer (transformers 5.17) writes a checkpoint in place, file by file, trainer_state.json last; these tests take
a real checkpoint apart the way a kill would leave it, fill a real (small) disk, and kill real training processes.
"""
import errno
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
import torch

import medical_fine_tuning
from conftest import ROOT, run_script
from medreason.model import storage
from medreason.train import sft
from medreason.config.errors import UserError
from medreason.model.for_training import load_for_training, save_adapter
from medreason.answers.prompts import get_style, to_conversation
from medreason.config.settings import collect
from medreason.config.run_plan import Plan

STYLE = get_style("think_response")
CPU_PLAN = Plan("transformers", "cpu", "fp32", False, "adamw_torch")
ROWS = [{"Question": f"Which organ does condition {i} affect first?",
         "Complex_CoT": f"Condition {i} starts in organ {i % 5}, so that is checked first.",
         "Response": f"Organ {i % 5}."} for i in range(24)]


def settings(out, **overrides):
    base = dict(MAX_SEQ_LENGTH=128, BATCH_SIZE=2, EVAL_BATCH_SIZE=2, GRAD_ACCUM=1, GROUP_BY_LENGTH=True, MAX_STEPS=4,
                LEARNING_RATE=5e-3, LR_SCHEDULER="constant", WARMUP_STEPS=0, WEIGHT_DECAY=0.0,
                GRADIENT_CHECKPOINTING=False, VAL_SIZE=0, EVAL_STEPS=0, SAVE_STEPS=2, SAVE_TOTAL_LIMIT=5, SEED=0,
                OUTPUT_DIR=str(out), LORA_R=8, LORA_ALPHA=16, LORA_DROPOUT=0.0, TARGET_MODULES=["q_proj", "v_proj"],
                LOGGING_STEPS=1)
    return types.SimpleNamespace(**{**collect(vars(medical_fine_tuning)), **base, **overrides})


def make_trainer(model_dir, cfg):
    from datasets import Dataset
    model, tokenizer = load_for_training(cfg, CPU_PLAN, str(model_dir))
    data = Dataset.from_list([to_conversation(r, STYLE) for r in ROWS])
    args = sft.build_sft_config(cfg, CPU_PLAN, [], Path(cfg.OUTPUT_DIR) / "checkpoints")
    return sft.build_trainer(model, tokenizer, data, None, args)


@pytest.fixture(scope="module")
def checkpoints(tiny_model_dir, tmp_path_factory):
    """checkpoints/ of a real 4-step run: checkpoint-2 and checkpoint-4, as the Trainer wrote them."""
    out = tmp_path_factory.mktemp("trained")
    make_trainer(tiny_model_dir, settings(out)).train()
    return out / "checkpoints"


def copy_checkpoints(source, tmp_path):
    target = tmp_path / "checkpoints"
    shutil.copytree(source, target)
    return target


def write_order(checkpoint):
    """The checkpoint's files in the order the Trainer wrote them (their modification times, in nanoseconds)."""
    return [p.name for p in sorted(checkpoint.iterdir(),  # ties on a coarse clock: trainer_state.json is still last
                                   key=lambda p: (p.stat().st_mtime_ns, p.name == "trainer_state.json"))]


# --- a save cut off by a kill ---------------------------------------------------------------------------------------

def test_the_trainer_writes_trainer_state_last(checkpoints):
    # Modification times can tie on a coarse filesystem clock, so the order is checked with <=, not by sorting.
    written = {p.name: p.stat().st_mtime_ns for p in (checkpoints / "checkpoint-4").iterdir()}
    assert max(written.values()) == written["trainer_state.json"]
    assert written["adapter_model.safetensors"] <= written["optimizer.pt"] <= written["scheduler.pt"]


def test_a_save_killed_at_any_point_is_skipped_for_the_previous_checkpoint(checkpoints, tmp_path, capsys):
    """For each file of checkpoint-4 in write order: the files before it whole, it half-written (or still empty),
    none after it. That is what SIGKILL at that moment leaves; every such folder must be skipped."""
    order = write_order(checkpoints / "checkpoint-4")
    for cut, name in enumerate(order):
        for kept_fraction in (0.5, 0.0):
            folder = copy_checkpoints(checkpoints, tmp_path / f"{cut}-{kept_fraction}")
            newest = folder / "checkpoint-4"
            for later in order[cut + 1:]:
                (newest / later).unlink()
            content = (newest / name).read_bytes()
            (newest / name).write_bytes(content[:int(len(content) * kept_fraction)])
            assert sft.last_checkpoint(folder) == str(folder / "checkpoint-2"), (name, kept_fraction)
            assert f"skipping {newest}: incomplete" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                                    "training_args.bin", "adapter_config.json", "trainer_state.json", "empty optimizer",
                                    "no optimizer", "other step"])
def test_a_damaged_file_is_found_even_when_trainer_state_was_written(checkpoints, tmp_path, damage):
    """A machine that dies (not only the process) can leave files cut short behind a written trainer_state.json."""
    folder = copy_checkpoints(checkpoints, tmp_path)
    newest = folder / "checkpoint-4"
    assert sft.checkpoint_problem(newest) is None  # the real checkpoint is complete
    if damage == "empty optimizer":
        (newest / "optimizer.pt").write_bytes(b"")
    elif damage == "no optimizer":
        (newest / "optimizer.pt").unlink()
    elif damage == "other step":
        state = json.loads((newest / "trainer_state.json").read_text())
        (newest / "trainer_state.json").write_text(json.dumps({**state, "global_step": 2}))
    else:
        content = (newest / damage).read_bytes()
        (newest / damage).write_bytes(content[:len(content) // 2])
    assert sft.checkpoint_problem(newest) is not None
    assert sft.last_checkpoint(folder) == str(folder / "checkpoint-2")


def test_no_complete_checkpoint_means_starting_over(checkpoints, tmp_path, capsys):
    folder = copy_checkpoints(checkpoints, tmp_path)
    for name in ("checkpoint-2", "checkpoint-4"):
        (folder / name / "trainer_state.json").unlink()
    assert sft.last_checkpoint(folder) is None
    assert "no complete checkpoint" in capsys.readouterr().out


def test_resuming_past_a_cut_off_save_trains_the_lost_steps_again(tiny_model_dir, checkpoints, tmp_path, capsys):
    out = tmp_path / "run"
    folder = copy_checkpoints(checkpoints, out)
    newest = folder / "checkpoint-4"
    for name in ("trainer_state.json", "rng_state.pth"):
        (newest / name).unlink()
    (newest / "optimizer.pt").write_bytes((newest / "optimizer.pt").read_bytes()[:100])
    resume = sft.last_checkpoint(folder)
    assert resume == str(folder / "checkpoint-2") and "skipping" in capsys.readouterr().out
    trainer = make_trainer(tiny_model_dir, settings(out))
    trainer.train(resume_from_checkpoint=resume)
    assert trainer.state.global_step == 4
    assert sft.checkpoint_problem(newest) is None  # the next save of step 4 wrote it whole
    assert sft.last_checkpoint(folder) == str(newest)


# --- a full disk ------------------------------------------------------------------------------------------------------

def files_of(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_adapter_save_on_a_full_disk_keeps_the_previous_adapter(tiny_model_dir, tmp_path, monkeypatch):
    import peft.peft_model
    from peft import PeftModel
    from safetensors import SafetensorError
    from safetensors.torch import save
    from transformers import AutoModelForCausalLM
    trainer = make_trainer(tiny_model_dir, settings(tmp_path, MAX_STEPS=1, SAVE_STEPS=10))
    trainer.train()
    adapter = save_adapter(trainer.model, trainer.processing_class, tmp_path / "adapter")
    before = files_of(adapter)
    with torch.no_grad():  # the model changes, so a save that went through would change the file
        next(p for n, p in trainer.model.named_parameters() if "lora_B" in n).add_(1.0)

    def disk_fills_up(tensors, filename, metadata=None):  # half the file reaches the disk, then safetensors' error
        Path(filename).write_bytes(save(tensors, metadata)[:1000])
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(peft.peft_model, "safe_save_file", disk_fills_up)
    with pytest.raises(UserError, match=re.escape(str(adapter)) + r": the disk filled up while saving it \(it needs "
                       r"about \d+ MB; [\d,]+ MB are free\)\. The previous adapter is intact\. Fix: free space"):
        save_adapter(trainer.model, trainer.processing_class, adapter)
    assert files_of(adapter) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging folder left
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)  # still loads


def test_adapter_save_killed_between_its_renames_is_repaired(tmp_path):
    folder = tmp_path / "adapter"
    (tmp_path / ".adapter.old").mkdir()  # the previous adapter, moved aside; the kill came before the new one's move
    (tmp_path / ".adapter.old" / "adapter_model.safetensors").write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        storage.save_folder(folder, lambda staging: (_ for _ in ()).throw(RuntimeError("a bug")), needed=0)
    assert (folder / "adapter_model.safetensors").read_bytes() == b"previous"
    storage.save_folder(folder, lambda staging: (staging / "adapter_model.safetensors").write_bytes(b"new"), 0)
    assert (folder / "adapter_model.safetensors").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_checkpoint_save_on_a_full_disk_stops_with_one_line_and_keeps_the_earlier_ones(tiny_model_dir, tmp_path,
                                                                                       monkeypatch):
    real_save = torch.save

    def disk_fills_up(obj, target, *args, **kwargs):
        if str(target).endswith(os.path.join("checkpoint-4", "optimizer.pt")):
            buffer = io.BytesIO()
            real_save(obj, buffer)
            Path(target).write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        return real_save(obj, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_up)
    trainer = make_trainer(tiny_model_dir, settings(tmp_path, MAX_STEPS=6))
    folder = tmp_path / "checkpoints"
    with pytest.raises(UserError, match=re.escape(str(folder / "checkpoint-4")) + r": the disk filled up while saving "
                       r"it .* checkpoint-4 was removed; .* resumes from checkpoint-2\..*SAVE_TOTAL_LIMIT"):
        trainer.train()
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["checkpoint-2"]
    assert sft.last_checkpoint(folder) == str(folder / "checkpoint-2")


FULL_DISK_DRILL = """
import json, os, sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
from pathlib import Path
from transformers import TrainerCallback
from medreason.model import storage
from medreason.train import sft
from medreason.config.errors import run_cli, UserError
from medreason.model.for_training import save_adapter
from test_faults import make_trainer, settings

disk, model_dir = Path(sys.argv[1]), sys.argv[2]


def fill(leave):
    with open(disk / "filler", "wb") as f:
        f.write(b"x" * max(storage.free_bytes(disk) - leave, 0))


class FillAfterFirstSave(TrainerCallback):  # leave room for checkpoint-4's files up to optimizer.pt, not for it
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 2:
            ckpt = Path(args.output_dir) / "checkpoint-2"
            last = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json")
            fill(sum((ckpt / n).stat().st_blocks * 512 for n in os.listdir(ckpt) if n not in last) + 16 * 1024)


def train(argv):
    trainer = make_trainer(model_dir, settings(disk / "run", MAX_STEPS=6))
    trainer.add_callback(FillAfterFirstSave())
    trainer.train()


if sys.argv[3] == "train":
    run_cli(train)
trainer = make_trainer(model_dir, settings(disk / "run", MAX_STEPS=1, SAVE_STEPS=10))
os.remove(disk / "filler")
save_adapter(trainer.model, trainer.processing_class, disk / "adapter")
before = {{p.name: p.read_bytes() for p in (disk / "adapter").iterdir()}}
fill(8 * 1024)
try:
    save_adapter(trainer.model, trainer.processing_class, disk / "adapter")
except UserError as error:
    print("error:", error)
after = {{p.name: p.read_bytes() for p in (disk / "adapter").iterdir()}}
print("adapter intact:", after == before, "| left beside it:", sorted(os.listdir(disk)))
"""


@pytest.mark.e2e
def test_a_real_full_disk_during_a_checkpoint_and_an_adapter_save(tiny_model_dir, tmp_path):
    """A real 16 MB tmpfs in a private mount namespace (needs unshare; skipped where it is not allowed): torch.save
    fails there with only "unexpected pos …", safetensors with "No space left on device"."""
    disk = tmp_path / "disk"
    disk.mkdir()
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            f"mount -t tmpfs -o size=16m tmpfs {disk}"], capture_output=True, text=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {probe.stderr.strip()}")
    drill = tmp_path / "drill.py"
    drill.write_text(FULL_DISK_DRILL.format(root=str(ROOT), tests=str(ROOT / "tests")))
    copy = tmp_path / "after"
    script = (f"mount -t tmpfs -o size=16m tmpfs {disk} && {sys.executable} {drill} {disk} {tiny_model_dir} train; "
              f"echo exit status $?; cp -a {disk}/run {copy}; {sys.executable} {drill} {disk} {tiny_model_dir} adapter")
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=ROOT,
                            capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output = result.stdout + result.stderr
    folder = disk / "run" / "checkpoints"
    assert "exit status 1" in output and "Traceback" not in output, output[-3000:]
    assert f"error: {folder / 'checkpoint-4'}: the disk filled up while saving it" in output, output[-3000:]
    assert "resumes from checkpoint-2" in output
    assert sft.last_checkpoint(copy / "checkpoints") == str(copy / "checkpoints" / "checkpoint-2")
    assert sorted(p.name for p in (copy / "checkpoints").iterdir() if p.is_dir()) == ["checkpoint-2"]
    assert f"error: {disk / 'adapter'}: the disk filled up while saving it" in output, output[-3000:]
    assert "adapter intact: True | left beside it: ['adapter', 'filler', 'run']" in output, output[-3000:]


# --- SIGKILL of a real training run -------------------------------------------------------------------------------

def drill_args(model_dir, data, out):
    """A run of a few seconds that crosses an epoch (24 rows, batch 2: 12 steps each) with dropout, so data order
    and random state both matter to the losses after a resume."""
    return [f"--MODEL_NAME={model_dir}", "--BACKEND=transformers", f"--DATASET={data}", "--VAL_SIZE=0",
            "--MAX_STEPS=16", "--SAVE_STEPS=2", "--SAVE_TOTAL_LIMIT=3", "--BATCH_SIZE=2", "--GRAD_ACCUM=1",
            "--MAX_SEQ_LENGTH=128", "--EVAL_STEPS=0", "--LEARNING_RATE=5e-3", "--LORA_DROPOUT=0.1",
            "--REPORT_TO=none", "--LOGGING_STEPS=1", f"--OUTPUT_DIR={out}"]


def logged_steps(out, resumed_after=None):
    """{step: (loss, grad_norm, tokens of that step)} from a finished run's log_history.json.

    trl logs num_tokens as a running total that is not saved in checkpoints (trl 1.16: SFTTrainer._total_train_tokens
    starts at 0 in __init__), so after a resume it counts again from 0: each step's own tokens are compared."""
    history = [e for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]
    steps, before = {}, 0.0
    for entry in history:
        before = 0.0 if entry["step"] == (resumed_after or 0) + 1 else before
        steps[entry["step"]] = (entry["loss"], entry["grad_norm"], entry["num_tokens"] - before)
        before = entry["num_tokens"]
    return steps


def assert_same_steps(resumed, reference, first_step):
    """Every step from first_step on trained on the same rows to the same loss and gradient norm."""
    assert sorted(resumed) == sorted(reference) == list(range(1, 17))
    for step in range(first_step, 17):
        assert resumed[step][2] == reference[step][2], f"step {step} saw other rows"
        assert resumed[step][:2] == pytest.approx(reference[step][:2], rel=1e-5, abs=1e-6), f"step {step}"


@pytest.fixture(scope="module")
def drill_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("drill-data") / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, drill_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = run_script(*drill_args(tiny_model_dir, drill_data, out), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    return logged_steps(out)


@pytest.mark.e2e
def test_sigkill_during_training_then_the_same_command_resumes_with_the_same_losses(tiny_model_dir, drill_data,
                                                                                    tmp_path, uninterrupted):
    out = tmp_path / "run"
    args = drill_args(tiny_model_dir, drill_data, out)
    process = subprocess.Popen([sys.executable, str(ROOT / "medical_fine_tuning.py"), *args], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "checkpoints" / "checkpoint-2"
    deadline = time.time() + 300
    while not first.is_dir() or sft.checkpoint_problem(first) is not None:
        assert process.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (out / "results.json").exists(), "the kill came too late: the run had finished"
    resume_from = sft.last_checkpoint(out / "checkpoints", quiet=True)
    killed_at = int(resume_from.rsplit("-", 1)[1])

    result = run_script(*args, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"[train] resuming from {resume_from}" in result.stdout
    assert_same_steps(logged_steps(out, resumed_after=killed_at), uninterrupted, first_step=1)


@pytest.mark.e2e
def test_sigkill_during_the_final_evaluation_then_the_rerun_evaluates_without_training(tiny_model_dir, drill_data,
                                                                                      tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    out = tmp_path / "run"
    args = drill_args(tiny_model_dir, drill_data, out) + ["--VAL_SIZE=4", "--EVAL_SAMPLES=4", "--MAX_NEW_TOKENS=96"]
    process = subprocess.Popen([sys.executable, str(ROOT / "medical_fine_tuning.py"), *args], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    info = out / "adapter" / "training_info.json"
    deadline = time.time() + 300
    while not info.is_file():  # written last, by the atomic adapter save that ends training
        assert process.poll() is None and time.time() < deadline, "the run ended before saving its adapter"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (out / "results.json").exists(), "the kill came too late: the evaluation had finished"
    assert json.loads(info.read_text())["finished_at_step"] == 16
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out / "adapter")  # loadable
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    checkpoints = {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()}

    result = run_script(*args, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "already finished training at step 16" in result.stdout and "resuming from" not in result.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()} == checkpoints  # no step trained
    again = load_file(out / "adapter" / "adapter_model.safetensors")
    assert again.keys() == weights.keys() and all(torch.equal(again[k], weights[k]) for k in weights)
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["eval_samples"] == 4 and results["evaluation"]["tuned"]["rouge_l"]["n"] == 4


KILL_MID_SAVE = """
import io, os, signal, sys, runpy
sys.path.insert(0, {root!r})
import torch
real_save = torch.save


def save_half_then_die(obj, target, *args, **kwargs):  # SIGKILL halfway through checkpoint-4's optimizer.pt
    if str(target).endswith(os.path.join("checkpoint-4", "optimizer.pt")):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        with open(target, "wb") as f:
            f.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, target, *args, **kwargs)


torch.save = save_half_then_die
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.e2e
def test_sigkill_during_a_checkpoint_save_then_the_previous_checkpoint_is_used(tiny_model_dir, drill_data, tmp_path,
                                                                               uninterrupted):
    out = tmp_path / "run"
    args = drill_args(tiny_model_dir, drill_data, out)
    drill = tmp_path / "kill_mid_save.py"
    drill.write_text(KILL_MID_SAVE.format(root=str(ROOT)))
    killed = subprocess.run([sys.executable, str(drill), str(ROOT / "medical_fine_tuning.py"), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    assert killed.returncode == -signal.SIGKILL
    half_written = out / "checkpoints" / "checkpoint-4"
    assert (half_written / "adapter_model.safetensors").is_file() and not (half_written / "scheduler.pt").exists()

    result = run_script(*args, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (f"[train] skipping {half_written}: incomplete (no trainer_state.json, which the Trainer writes last)"
            in result.stdout)
    assert f"[train] resuming from {out / 'checkpoints' / 'checkpoint-2'}" in result.stdout
    assert_same_steps(logged_steps(out, resumed_after=2), uninterrupted, first_step=1)


# --- an unexpected error in a run ---------------------------------------------------------------------------------

CRASHING_RUN = """
import sys
sys.path.insert(0, {root!r})
import torch
from medreason.config.errors import run_cli, set_run_context


def main(argv):
    set_run_context(output_dir={out!r}, settings=dict(BATCH_SIZE=4, GRAD_ACCUM=2, MAX_SEQ_LENGTH=1024,
                                                      EVAL_BATCH_SIZE=8), step="4. train")
    if argv[0] == "oom":
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    raise RuntimeError("something no one expected")


run_cli(main)
"""


@pytest.mark.parametrize("kind", ["bug", "oom"])
def test_an_unexpected_error_says_where_the_files_are_and_how_to_resume(tmp_path, kind):
    out = tmp_path / "run"
    for folder in ("checkpoints/checkpoint-2", "checkpoints/checkpoint-10", "adapter"):
        (out / folder).mkdir(parents=True)
    script = tmp_path / "crashing_run.py"
    script.write_text(CRASHING_RUN.format(root=str(ROOT), out=str(out)))
    result = subprocess.run([sys.executable, str(script), kind, "--MAX_STEPS=60"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    err = result.stderr
    assert "Traceback" in err and (("something no one expected" in err) if kind == "bug" else "OutOfMemoryError" in err)
    name = "RuntimeError" if kind == "bug" else "OutOfMemoryError"
    assert f"[run] stopped on an unexpected {name} during: 4. train" in err
    assert f"the run's files are in {out.resolve()}" in err
    assert "checkpoints/: checkpoint-2, checkpoint-10 (a rerun resumes from the newest complete one)" in err
    assert "adapter: the trained adapter" in err
    assert f"to resume, run the same command again: python {script} {kind} --MAX_STEPS=60" in err
    if kind == "oom":
        advice = next(line for line in err.splitlines() if line.startswith("error: out of GPU memory"))
        assert advice.index("BATCH_SIZE (now 4)") < advice.index("MAX_SEQ_LENGTH (now 1024)") < advice.index(
            "EVAL_BATCH_SIZE (now 8)")
        assert "--BATCH_SIZE=2 --GRAD_ACCUM=4" in advice


def test_oom_advice_moves_down_the_list_as_settings_reach_their_floor():
    from medreason.config import errors
    errors.clear_run_context()
    try:
        errors.set_run_context(settings={"BATCH_SIZE": 1, "GRAD_ACCUM": 8, "MAX_SEQ_LENGTH": 1024,
                                         "EVAL_BATCH_SIZE": 8})
        assert "e.g. --MAX_SEQ_LENGTH=512" in errors.oom_advice()
        errors.set_run_context(settings={"BATCH_SIZE": 1, "GRAD_ACCUM": 8, "MAX_SEQ_LENGTH": 256,
                                         "EVAL_BATCH_SIZE": 8})
        assert "e.g. --EVAL_BATCH_SIZE=4" in errors.oom_advice()
        errors.clear_run_context()
        assert "--batch-size in inference.py" in errors.oom_advice()
        assert errors.is_out_of_memory(RuntimeError("CUDA error: out of memory"))
        assert not errors.is_out_of_memory(ValueError("out of memory"))
    finally:
        errors.clear_run_context()


def test_a_user_error_prints_one_line_whatever_it_quotes(tmp_path):
    script = tmp_path / "bad_value.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from medreason.config.errors import UserError, run_cli
        def main(argv):
            raise UserError("--NAME=first line\\nsecond line: bad. Fix: one value")
        run_cli(main)
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr == "error: --NAME=first line second line: bad. Fix: one value\n"
