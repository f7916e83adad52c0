"""trl's SFTTrainer configured from the script's settings: completion-only loss, checkpoints, resume."""
from __future__ import annotations

import difflib
import json
from pathlib import Path


RUN_INFO = "training_info.json"  # written next to the checkpoints: what they were trained from


def run_info(cfg, plan, style) -> dict:
    """training_info.json, saved with the adapter and next to the checkpoints: inference asks with exactly this
    base model, prompt and date; a resumed run must match it."""
    from .prompts import TEMPLATE_DATE
    return {"model_name": cfg.MODEL_NAME, "prompt_style": style.name, "system_prompt": style.system_prompt,
            "template_date": TEMPLATE_DATE, "max_seq_length": cfg.MAX_SEQ_LENGTH, "max_new_tokens": cfg.MAX_NEW_TOKENS,
            "backend": plan.backend, "precision": plan.precision, "load_in_4bit": plan.load_in_4bit}


def build_sft_config(cfg, plan, report_to: list[str], checkpoint_dir: Path):
    """trl's SFTConfig, built (and so checked by transformers) before any data or model is loaded."""
    from trl import SFTConfig
    from transformers.trainer_utils import SchedulerType

    from .errors import UserError
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
    from .errors import UserError
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


def _sft_config(SFTConfig, cfg, plan, report_to, checkpoint_dir):
    evaluate = cfg.VAL_SIZE > 0 and cfg.EVAL_STEPS > 0
    early_stopping = cfg.EARLY_STOPPING_PATIENCE is not None
    return SFTConfig(
        # Early stopping: the best eval loss's checkpoint is reloaded at the end, so the adapter saved is the best.
        load_best_model_at_end=early_stopping,
        metric_for_best_model="eval_loss" if early_stopping else None,
        greater_is_better=False if early_stopping else None,
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
        logging_steps=cfg.LOGGING_STEPS,  # each log is also a printed line under the progress bar
        logging_first_step=True,
        report_to=report_to,
        run_name=Path(cfg.OUTPUT_DIR).name,
        seed=cfg.SEED,
        dataset_num_proc=1,
    )


def build_trainer(model, tokenizer, train_dataset, eval_dataset, sft_config, early_stopping_patience=None):
    from transformers import EarlyStoppingCallback
    from trl import SFTTrainer
    callbacks = [EarlyStoppingCallback(early_stopping_patience)] if early_stopping_patience else None
    return SFTTrainer(model=model, args=sft_config, train_dataset=train_dataset, eval_dataset=eval_dataset,
                      processing_class=tokenizer, callbacks=callbacks)


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


def final_eval_loss(trainer) -> float:
    """The eval loss of the trained model: logged already when the last eval step was the last step."""
    last = next((e for e in reversed(trainer.state.log_history) if "eval_loss" in e), None)
    if last and last.get("step") == trainer.state.global_step:
        return last["eval_loss"]
    return trainer.evaluate()["eval_loss"]


def check_resumable(checkpoint: str | None, cfg) -> None:
    """A checkpoint of another base model, or of other LoRA settings, cannot be resumed: say so before the model
    loads, instead of torch's "parameter group doesn't match" (or a silently wrong model) after it."""
    from .errors import UserError
    if not checkpoint:
        return
    folder = Path(checkpoint)
    differences = _base_model_difference(folder.parent, cfg) + _lora_differences(folder, cfg)
    if differences:
        raise UserError(f"{checkpoint} was trained with other settings ({'; '.join(differences)}), so this run cannot "
                        f"resume from it. Fix: use another --OUTPUT_DIR, delete {folder.parent} to start over, or "
                        f"pass the settings it was trained with.")


def _base_model_difference(checkpoint_dir: Path, cfg) -> list[str]:
    info = checkpoint_dir / RUN_INFO
    saved = json.loads(info.read_text()).get("model_name") if info.is_file() else None
    return [f"MODEL_NAME {saved!r} there, {cfg.MODEL_NAME!r} now"] if saved and saved != cfg.MODEL_NAME else []


def _lora_differences(checkpoint: Path, cfg) -> list[str]:
    config = checkpoint / "adapter_config.json"
    if not config.is_file():
        return []
    saved = json.loads(config.read_text())
    return [f"{name} {saved.get(key)!r} there, {value!r} now" for name, key, value, same in (
        ("TARGET_MODULES", "target_modules", cfg.TARGET_MODULES,  # a regex string or all-linear: not compared
         not isinstance(saved.get("target_modules"), list) or cfg.TARGET_MODULES == ["all-linear"]
         or sorted(saved["target_modules"]) == sorted(cfg.TARGET_MODULES)),
        ("LORA_R", "r", cfg.LORA_R, saved.get("r") == cfg.LORA_R),
        ("LORA_ALPHA", "lora_alpha", cfg.LORA_ALPHA, saved.get("lora_alpha") == cfg.LORA_ALPHA)) if not same]


def resume_point(checkpoint_dir: Path, cfg) -> str | None:
    """The newest checkpoint to resume from, checked against this run's settings (None: start fresh)."""
    checkpoint = last_checkpoint(checkpoint_dir)
    check_resumable(checkpoint, cfg)
    if checkpoint:
        print(f"[train] resuming from {checkpoint} (delete {checkpoint_dir} to start over)")
    return checkpoint


def train(trainer, resume: str | None, out: Path, info: dict):
    """trainer.train, resuming from `resume`. Ctrl-C keeps the adapter so far and the checkpoints to resume from."""
    from .modeling import save_adapter
    checkpoint_dir = Path(trainer.args.output_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    (checkpoint_dir / RUN_INFO).write_text(json.dumps(info, indent=2) + "\n")  # read by check_resumable
    try:
        result = trainer.train(resume_from_checkpoint=resume)
        if stopped := report_early_stop(trainer):
            print(stopped)
        return result
    except KeyboardInterrupt:
        saved = save_adapter(trainer.model, trainer.processing_class, out / "adapter-interrupted", info)
        raise SystemExit(f"\n[train] interrupted at step {trainer.state.global_step}: adapter so far saved to "
                         f"{saved}. Run the same command again to resume from the newest checkpoint in "
                         f"{checkpoint_dir}.") from None


def last_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest checkpoint-N folder to resume from, if an earlier run left one."""
    from transformers.trainer_utils import get_last_checkpoint
    return get_last_checkpoint(str(checkpoint_dir)) if checkpoint_dir.is_dir() else None
