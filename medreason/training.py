"""trl's SFTTrainer configured from the script's settings: completion-only loss, checkpoints, resume."""
from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path


def build_sft_config(cfg, plan, report_to: list[str], checkpoint_dir: Path):
    from trl import SFTConfig
    evaluate = cfg.VAL_SIZE > 0 and cfg.EVAL_STEPS > 0
    return SFTConfig(
        output_dir=str(checkpoint_dir),
        max_length=cfg.MAX_SEQ_LENGTH,  # longer examples are truncated (the preflight counts them)
        completion_only_loss=True,  # loss on the assistant answer (+ end-of-turn token) only
        per_device_train_batch_size=cfg.BATCH_SIZE,
        per_device_eval_batch_size=cfg.EVAL_BATCH_SIZE,
        gradient_accumulation_steps=cfg.GRAD_ACCUM,
        # Rows of similar length share a batch, so little of it is padding (shuffled in groups, still seeded).
        train_sampling_strategy="group_by_length" if cfg.GROUP_BY_LENGTH else "random",
        max_steps=cfg.MAX_STEPS,
        learning_rate=cfg.LEARNING_RATE,
        lr_scheduler_type=cfg.LR_SCHEDULER,
        warmup_steps=cfg.WARMUP_STEPS,
        weight_decay=cfg.WEIGHT_DECAY,
        optim=plan.optim,
        fp16=plan.precision == "fp16",
        bf16=plan.precision == "bf16",
        use_cpu=plan.device == "cpu",
        gradient_checkpointing=cfg.GRADIENT_CHECKPOINTING and plan.backend == "transformers",  # Unsloth: its own
        eval_strategy="steps" if evaluate else "no",
        eval_steps=cfg.EVAL_STEPS if evaluate else None,
        eval_on_start=evaluate,  # the loss curve starts from the untrained model's eval loss
        save_strategy="steps",
        save_steps=cfg.SAVE_STEPS,
        save_total_limit=cfg.SAVE_TOTAL_LIMIT,
        logging_steps=1,
        logging_first_step=True,
        report_to=report_to,
        run_name=Path(cfg.OUTPUT_DIR).name,
        seed=cfg.SEED,
        dataset_num_proc=1,
    )


def build_trainer(model, tokenizer, train_dataset, eval_dataset, sft_config):
    from trl import SFTTrainer
    trainer = SFTTrainer(model=model, args=sft_config, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=tokenizer)
    guard_checkpoint_saves(trainer)
    return trainer


def guard_checkpoint_saves(trainer) -> None:
    """A disk that fills up while the Trainer writes checkpoint-N: that half-written folder is deleted (the earlier
    checkpoints stay as they were) and the run stops with a one-line error naming the folder and the space needed,
    instead of torch.save's "unexpected pos" traceback. The instance's method is wrapped, not the class subclassed,
    because Unsloth may have rewritten SFTTrainer's class."""
    from . import storage
    save = trainer._save_checkpoint

    def guarded_save(model, trial, *args, **kwargs):
        try:
            return save(model, trial, *args, **kwargs)
        except Exception as error:
            run_dir = Path(trainer.args.output_dir)
            folder = run_dir / f"checkpoint-{trainer.state.global_step}"
            previous = last_checkpoint(run_dir, quiet=True, below=trainer.state.global_step)
            needed = (storage.folder_bytes(Path(previous)) if previous else
                      storage.trainable_bytes(model) * 3 + storage.TOKENIZER_BYTES)  # weights + Adam's 2 moments
            free = storage.free_bytes(run_dir)
            if not storage.is_disk_full(error, free, needed):
                raise
            shutil.rmtree(folder, ignore_errors=True)
            kept = (f"{folder.name} was removed; the previous checkpoints are intact, and the same command resumes "
                    f"from {Path(previous).name}." if previous else f"{folder.name} was removed.")
            raise storage.disk_full_error(folder, needed, free, kept + " Lowering SAVE_TOTAL_LIMIT keeps fewer "
                                          "checkpoints on disk.") from None

    trainer._save_checkpoint = guarded_save


def final_eval_loss(trainer) -> float:
    """The eval loss of the trained model: logged already when the last eval step was the last step."""
    last = next((e for e in reversed(trainer.state.log_history) if "eval_loss" in e), None)
    if last and last.get("step") == trainer.state.global_step:
        return last["eval_loss"]
    return trainer.evaluate()["eval_loss"]


def check_resumable(checkpoint: str | None, cfg) -> None:
    """A checkpoint trained with other LoRA settings cannot be resumed (its optimizer state does not fit): say so
    before the model loads, instead of torch's "parameter group doesn't match" after it."""
    from .errors import UserError
    config = Path(checkpoint or "") / "adapter_config.json"
    if not checkpoint or not config.is_file():
        return
    saved = json.loads(config.read_text())
    differences = [f"{name} {saved.get(key)!r} there, {value!r} now" for name, key, value, same in (
        ("TARGET_MODULES", "target_modules", cfg.TARGET_MODULES,  # peft may save a regex string: not compared
         not isinstance(saved.get("target_modules"), list)
         or sorted(saved["target_modules"]) == sorted(cfg.TARGET_MODULES)),
        ("LORA_R", "r", cfg.LORA_R, saved.get("r") == cfg.LORA_R),
        ("LORA_ALPHA", "lora_alpha", cfg.LORA_ALPHA, saved.get("lora_alpha") == cfg.LORA_ALPHA)) if not same]
    if differences:
        raise UserError(f"{checkpoint} was trained with other LoRA settings ({'; '.join(differences)}), so this "
                        f"run cannot resume from it. Fix: use another --OUTPUT_DIR, delete {Path(checkpoint).parent} "
                        f"to start over, or pass the settings it was trained with.")


def last_checkpoint(checkpoint_dir: Path, quiet: bool = False, below: int | None = None) -> str | None:
    """The newest complete checkpoint-N folder to resume from, if an earlier run left one.

    A newer folder whose save was cut off (a kill, a crash, a full disk) is named and skipped: resuming from it would
    fail, or worse, silently restart at step 0 (the Trainer does that when trainer_state.json is missing)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return None
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    steps = {int(m.group(1)): p for p in checkpoint_dir.iterdir() if (m := pattern.match(p.name)) and p.is_dir()}
    for step in sorted((s for s in steps if below is None or s < below), reverse=True):
        problem = checkpoint_problem(steps[step])
        if problem is None:
            return str(steps[step])
        if not quiet:
            print(f"[train] skipping {steps[step]}: incomplete ({problem}), a save cut off by a kill, a crash or a "
                  f"full disk; training goes on from the checkpoint before it")
    if steps and not quiet:
        print(f"[train] no complete checkpoint in {checkpoint_dir}: training starts from step 0")
    return None


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None when it is complete.

    The Trainer (transformers 5.17, Trainer._save_checkpoint) writes in place, in this order: the adapter and
    tokenizer, training_args.bin, optimizer.pt, scheduler.pt, rng_state.pth, and trainer_state.json last. So a
    missing or unreadable trainer_state.json means the save was cut off; each file is also checked whole (a file
    can be cut short when the machine, not just the process, dies)."""
    folder = Path(folder)
    state_file = folder / "trainer_state.json"
    if not state_file.is_file():
        return "no trainer_state.json, which the Trainer writes last"
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            return f"{path.name} is cut short or unreadable"
        step = data.get("global_step") if isinstance(data, dict) else None
        if path == state_file and step != int(folder.name.rsplit("-", 1)[1]):
            return f"trainer_state.json is of step {step}"
    weights = [p for p in folder.glob("*.safetensors")] + [p for p in folder.glob("*model*.bin")]
    if not weights:
        return "no model or adapter weights"
    missing = [name for name in ("optimizer.pt", "scheduler.pt") if not (folder / name).is_file()]
    if missing:
        return f"no {' or '.join(missing)}"
    for path in sorted(folder.iterdir()):
        problem = _file_problem(path)
        if problem:
            return f"{path.name} {problem}"
    return None


def _file_problem(path: Path) -> str | None:
    """Whether a weights or torch.save file is whole: safetensors checks its header against the file's length;
    torch.save files are zip archives, whose directory is written at their very end."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt"):
                return None
        except Exception:  # safetensors raises its own error type for a short or damaged file
            return "is cut short or damaged"
    if path.suffix in {".pt", ".pth", ".bin"}:
        try:
            with zipfile.ZipFile(path):
                return None
        except (zipfile.BadZipFile, OSError):
            return "is cut short or damaged"
    return None
