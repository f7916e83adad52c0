"""trl's SFTTrainer configured from the script's settings: completion-only loss, checkpoints, resume."""
from __future__ import annotations

import json
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
    return SFTTrainer(model=model, args=sft_config, train_dataset=train_dataset, eval_dataset=eval_dataset,
                      processing_class=tokenizer)


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


def last_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest checkpoint-N folder to resume from, if an earlier run left one."""
    from transformers.trainer_utils import get_last_checkpoint
    return get_last_checkpoint(str(checkpoint_dir)) if checkpoint_dir.is_dir() else None
