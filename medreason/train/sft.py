"""trl's SFTTrainer configured from the script's settings: completion-only loss, checkpoints, resume."""
from __future__ import annotations

import difflib
import json
import re
import shutil
import zipfile
from pathlib import Path

from medreason.answers.prompts import TEMPLATE_DATE
from medreason.config import distributed
from medreason.config.distributed import is_main
from medreason.config.errors import UserError, set_run_context
from medreason.model import run_record, storage
from medreason.model.for_training import save_adapter, write_training_info


def run_info(cfg, plan, style) -> dict:
    """The SFT run record (model/run_record.py), saved with the adapter and next to the checkpoints: inference asks
    with exactly this base model, prompt and date; a resumed run must match it; a rerun after training finished with
    the same weight settings does not train."""
    return {"model_name": cfg.MODEL_NAME, "prompt_style": style.name, "system_prompt": style.system_prompt,
            "template_date": TEMPLATE_DATE, "max_seq_length": cfg.MAX_SEQ_LENGTH, "max_new_tokens": cfg.MAX_NEW_TOKENS,
            "backend": plan.backend, "precision": plan.precision, "load_in_4bit": plan.load_in_4bit,
            "trained_by": run_record.trained_by("sft", cfg, plan)}


def build_sft_config(cfg, plan, report_to: list[str], checkpoint_dir: Path):
    """trl's SFTConfig, built (and so checked by transformers) before any data or model is loaded."""
    from trl import SFTConfig
    from transformers.trainer_utils import SchedulerType

    schedulers = [s.value for s in SchedulerType]
    if cfg.LR_SCHEDULER not in schedulers:
        close = difflib.get_close_matches(cfg.LR_SCHEDULER, schedulers, n=1)
        raise UserError(f"LR_SCHEDULER={cfg.LR_SCHEDULER!r} is not a schedule transformers knows"
                        + (f". Did you mean {close[0]!r}?" if close else "")
                        + f" Fix: one of {', '.join(schedulers)}.")
    _check_early_stopping(cfg)
    try:
        return _sft_config(SFTConfig, cfg, plan, report_to, checkpoint_dir)
    except ValueError as e:  # transformers checks combinations (steps, strategies...) in __post_init__
        raise UserError(f"the trainer refused these settings: {str(e).splitlines()[0]} Fix: change the setting it "
                        f"names (settings are the constants at the top of the script).") from None


def _check_early_stopping(cfg) -> None:
    patience = cfg.EARLY_STOPPING_PATIENCE
    if patience is None:
        return
    if patience < 1:
        raise UserError(f"EARLY_STOPPING_PATIENCE={patience}: give at least 1 evaluation, or None for no early stop.")
    if cfg.VAL_SIZE < 1 or cfg.EVAL_STEPS < 1:
        raise UserError(f"EARLY_STOPPING_PATIENCE={patience} watches the eval loss, but VAL_SIZE={cfg.VAL_SIZE} / "
                        f"EVAL_STEPS={cfg.EVAL_STEPS} means it is never measured. Fix: --VAL_SIZE=100 --EVAL_STEPS=25, "
                        f"or --EARLY_STOPPING_PATIENCE=None.")
    if cfg.SAVE_STEPS % cfg.EVAL_STEPS:
        raise UserError(f"EARLY_STOPPING_PATIENCE keeps the best checkpoint, so every evaluation needs one: SAVE_STEPS="
                        f"{cfg.SAVE_STEPS} is not a multiple of EVAL_STEPS={cfg.EVAL_STEPS}. Fix: "
                        f"--SAVE_STEPS={cfg.EVAL_STEPS}.")


def trainer_arguments(cfg, plan, report_to: list[str], checkpoint_dir: Path) -> dict:
    """What every trainer of this project is given, SFT's and DPO's: batch, schedule, the run's one precision
    decision, checkpoints, logging, and the settings several processes need."""
    return dict(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=cfg.BATCH_SIZE,
        gradient_accumulation_steps=cfg.GRAD_ACCUM,
        max_steps=cfg.MAX_STEPS,
        learning_rate=cfg.LEARNING_RATE,
        lr_scheduler_type=cfg.LR_SCHEDULER,
        warmup_steps=cfg.WARMUP_STEPS,
        weight_decay=cfg.WEIGHT_DECAY,
        optim=plan.optim,
        fp16=plan.precision == "fp16",  # fp16 on a T4, never bf16 there (medreason/config/hardware.py)
        bf16=plan.precision == "bf16",
        use_cpu=plan.device == "cpu",
        gradient_checkpointing=cfg.GRADIENT_CHECKPOINTING and plan.backend == "transformers",  # Unsloth: its own
        # Non-reentrant checkpointing: the reentrant kind runs the forward without gradients, and DDP then marks the
        # LoRA weights ready twice; FSDP needs it too.
        gradient_checkpointing_kwargs={"use_reentrant": False},
        # Every LoRA weight gets a gradient at every step, so DDP need not search the graph for unused ones (the
        # Trainer would otherwise choose the slow find_unused_parameters=True for any peft model).
        ddp_find_unused_parameters=False,
        save_strategy="steps",
        save_steps=cfg.SAVE_STEPS,
        save_total_limit=cfg.SAVE_TOTAL_LIMIT,
        logging_steps=cfg.LOGGING_STEPS,  # each log is also a printed line under the progress bar
        logging_first_step=True,
        report_to=report_to,
        run_name=Path(cfg.OUTPUT_DIR).name,
        seed=cfg.SEED,
        dataset_num_proc=1,
    )


def _sft_config(SFTConfig, cfg, plan, report_to, checkpoint_dir):
    evaluate = cfg.VAL_SIZE > 0 and cfg.EVAL_STEPS > 0
    early_stopping = cfg.EARLY_STOPPING_PATIENCE is not None
    return SFTConfig(
        **trainer_arguments(cfg, plan, report_to, checkpoint_dir),
        # Early stopping: the best eval loss's checkpoint is reloaded at the end, so the adapter saved is the best.
        load_best_model_at_end=early_stopping,
        metric_for_best_model="eval_loss" if early_stopping else None,
        greater_is_better=False if early_stopping else None,
        max_length=cfg.MAX_SEQ_LENGTH,  # longer examples are truncated (the preflight counts them)
        completion_only_loss=True,  # loss on the assistant answer (+ end-of-turn token) only
        per_device_eval_batch_size=cfg.EVAL_BATCH_SIZE,
        # Rows of similar length share a batch, so little of it is padding (shuffled in groups, still seeded).
        train_sampling_strategy="group_by_length" if cfg.GROUP_BY_LENGTH else "random",
        eval_strategy="steps" if evaluate else "no",
        eval_steps=cfg.EVAL_STEPS if evaluate else None,
        eval_on_start=evaluate,  # the loss curve starts from the untrained model's eval loss
    )


def build_trainer(model, tokenizer, train_dataset, eval_dataset, sft_config, early_stopping_patience=None):
    from transformers import EarlyStoppingCallback
    from trl import SFTTrainer
    callbacks = [EarlyStoppingCallback(early_stopping_patience)] if early_stopping_patience else None
    asked = sft_config.per_device_eval_batch_size, sft_config.eval_accumulation_steps
    trainer = SFTTrainer(model=model, args=sft_config, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=tokenizer, callbacks=callbacks)
    say_eval_batch_changes(trainer, *asked)
    keep_trainable_weights_in_run_precision(trainer)
    guard_checkpoint_saves(trainer)
    return trainer


def keep_trainable_weights_in_run_precision(trainer) -> None:
    """trl's SFTTrainer, DPOTrainer and GRPOTrainer (1.15.0 and 1.16.0, __init__'s `_is_quantized_model` block) cast every
    trainable parameter of a 4-bit or 8-bit model to bf16, following the QLoRA paper, whatever the run's precision.
    With fp16 mixed precision (a T4) the gradient scaler then meets bf16 gradients and the first optimizer step
    fails ("_amp_foreach_non_finite_check_and_unscale_cuda" not implemented for 'BFloat16'); with fp32 the adapter
    would silently train in bf16. So unless the run is bf16, those weights go back to fp32: safe here, because the
    Trainer creates the optimizer later, in train(). (Unsloth's rewritten trainers skip trl's cast: no-op there.)"""
    import torch
    if trainer.args.bf16:
        return
    cast = [p for p in trainer.model.parameters() if p.requires_grad and p.dtype == torch.bfloat16]
    for param in cast:
        param.data = param.data.float()
    if cast:
        mode = "fp16 mixed precision" if trainer.args.fp16 else "fp32"
        print(f"[train] {len(cast)} trainable LoRA tensors that trl cast to bf16 for a quantized model are fp32 again: "
              f"this run trains in {mode}, whose gradient scaler cannot take bf16 gradients")


def say_eval_batch_changes(trainer, eval_batch: int, eval_accumulation) -> None:
    """Unsloth's rewritten trainer (unsloth 2026.10.9, models/rl.py, the eval-batch block) lowers an eval batch of
    exactly 8 to the train batch when that is smaller, and sets eval_accumulation_steps to GRAD_ACCUM: the eval loss
    is the same, computed in smaller batches (within the train step's memory). Kept, and said, since the settings
    printed above show EVAL_BATCH_SIZE."""
    now = trainer.args.per_device_eval_batch_size, trainer.args.eval_accumulation_steps
    if now[0] == eval_batch:
        return
    print(f"[train] Unsloth's trainer changed the eval-loss batch: EVAL_BATCH_SIZE {eval_batch} -> {now[0]} rows per "
          f"pass, eval_accumulation_steps {eval_accumulation} -> {now[1]} (its rule for an eval batch of 8 above the "
          f"train batch, to stay within training's memory). The eval loss is unchanged, only computed in smaller "
          f"batches; answer generation still uses EVAL_BATCH_SIZE={eval_batch}. Any other EVAL_BATCH_SIZE is kept "
          f"as given.")


def report_early_stop(trainer) -> str | None:
    """A sentence saying when and why training stopped early, and which checkpoint the model now is (else None)."""
    state = trainer.state
    if not trainer.args.load_best_model_at_end or state.global_step >= state.max_steps:
        return None
    patience = next(c.early_stopping_patience for c in trainer.callback_handler.callbacks
                    if hasattr(c, "early_stopping_patience"))
    best = Path(state.best_model_checkpoint).name if state.best_model_checkpoint else "?"
    return (f"[train] stopped early at step {state.global_step} of {state.max_steps}: the eval loss did not improve "
            f"for {patience} evaluations in a row (best {state.best_metric:.4f}, {best}); the model is now that best "
            f"checkpoint, and it is what gets saved and evaluated")


def guard_checkpoint_saves(trainer) -> None:
    """A disk that fills up while the Trainer writes checkpoint-N: that half-written folder is deleted (the earlier
    checkpoints stay as they were) and the run stops with a one-line error naming the folder and the space needed,
    instead of torch.save's "unexpected pos" traceback. The instance's method is wrapped, not the class subclassed,
    because Unsloth may have rewritten SFTTrainer's class."""
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


def check_resumable(checkpoint: str | None, cfg, plan) -> None:
    """A checkpoint of another base model, held otherwise (4-bit, backend, precision: run_record.RESUME_SETTINGS),
    or of other LoRA settings, cannot be resumed: say so before the model loads, instead of torch's "parameter group
    doesn't match" (or a silently wrong model) after it."""
    if not checkpoint:
        return
    folder = Path(checkpoint)
    differences = run_record.resume_differences(folder.parent, "sft", run_record.trained_by("sft", cfg, plan)) \
        + _lora_differences(folder, cfg)
    if differences:
        raise UserError(f"{checkpoint} was trained with other settings ({'; '.join(differences)}), so this run cannot "
                        f"resume from it. Fix: use another --OUTPUT_DIR, delete {folder.parent} to start over, or "
                        f"pass the settings it was trained with.")


def _lora_differences(checkpoint: Path, cfg) -> list[str]:
    config = checkpoint / "adapter_config.json"
    if not config.is_file():
        return []
    saved = json.loads(config.read_text())
    return [f"{name} {saved.get(key)!r} -> {value!r}" for name, key, value, same in (
        ("TARGET_MODULES", "target_modules", cfg.TARGET_MODULES,  # a regex string or all-linear: not compared
         not isinstance(saved.get("target_modules"), list) or cfg.TARGET_MODULES == ["all-linear"]
         or sorted(saved["target_modules"]) == sorted(cfg.TARGET_MODULES)),
        ("LORA_R", "r", cfg.LORA_R, saved.get("r") == cfg.LORA_R),
        ("LORA_ALPHA", "lora_alpha", cfg.LORA_ALPHA, saved.get("lora_alpha") == cfg.LORA_ALPHA)) if not same]


def resume_point(checkpoint_dir: Path, cfg, plan) -> str | None:
    """The newest checkpoint to resume from, checked against this run's settings and plan (None: start fresh, or
    training already finished)."""
    checkpoint = last_checkpoint(checkpoint_dir)
    check_resumable(checkpoint, cfg, plan)
    if run_record.finished_step(checkpoint_dir.parent, run_record.trained_by("sft", cfg, plan)) is not None:
        return None
    if checkpoint:
        print(f"[train] resuming from {checkpoint} (delete {checkpoint_dir} to start over)")
    return checkpoint


def train(trainer, resume: str | None, out: Path, info: dict):
    """trainer.train, resuming from `resume`; the log goes to OUTPUT_DIR/log_history.json, and the run record `info`
    next to the checkpoints. Returns transformers' TrainOutput, whose global_step is the step training finished at
    (the final adapter's record keeps it: save_final_adapter). A run whose adapter finished training with these
    weight settings is not trained again: its adapter is loaded instead. Ctrl-C keeps the adapter so far and the
    checkpoints to resume from."""
    set_run_context(step="4. train")
    if (step := run_record.finished_step(out, info["trained_by"], say="train")) is not None:
        return reuse_finished_adapter(trainer, out, step)
    checkpoint_dir = Path(trainer.args.output_dir)
    if is_main():
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        run_record.write(checkpoint_dir, info)  # read by check_resumable
    try:
        result = trainer.train(resume_from_checkpoint=resume)
        if stopped := report_early_stop(trainer):
            print(stopped)
        if is_main():
            (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        return result
    except KeyboardInterrupt:
        if not is_main():
            raise SystemExit(130) from None
        saved = save_adapter(trainer.model, trainer.processing_class, out / "adapter-interrupted", info)
        raise SystemExit(f"\n[train] interrupted at step {trainer.state.global_step}: adapter so far saved to "
                         f"{saved}. Run the same command again to resume from the newest checkpoint in "
                         f"{checkpoint_dir}.") from None


def save_final_adapter(trainer, model, tokenizer, folder: Path, info: dict, finished_at_step: int) -> Path:
    """The trained adapter into OUTPUT_DIR/adapter, by the main process, while the others wait, its run record
    marked finished at `finished_at_step` (train's TrainOutput.global_step). Under FSDP each process holds a shard of
    it: the Trainer's save_model gathers it (every process takes part; the config's FULL_STATE_DICT), then the main
    process adds the tokenizer and training_info.json."""
    if distributed.uses_fsdp():
        trainer.save_model(str(folder))
        if distributed.is_main():
            tokenizer.save_pretrained(folder)
            write_training_info(folder, info, finished_at_step)
    elif distributed.is_main():
        folder = save_adapter(model, tokenizer, folder, info, finished_at_step)
    print(f"[save] adapter and tokenizer -> {folder}")
    distributed.wait()
    return Path(folder)


def reuse_finished_adapter(trainer, out: Path, step: int):
    """Load the finished adapter's weights (and its training log) into the trainer's model instead of training."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers.trainer_utils import TrainOutput
    print(f"[train] this run already finished training at step {step} and saved {out / 'adapter'}: not training "
          f"again; that adapter is evaluated (delete {out / 'adapter'} to train again)")
    set_peft_model_state_dict(trainer.model, load_file(out / "adapter" / "adapter_model.safetensors"))
    history = out / "log_history.json"
    trainer.state.log_history = json.loads(history.read_text()) if history.is_file() else []
    trainer.state.global_step = step
    train_loss = next((e["train_loss"] for e in reversed(trainer.state.log_history) if "train_loss" in e), None)
    return TrainOutput(step, train_loss, {})


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
