"""trl's SFTTrainer configured from the script's settings: completion-only loss, checkpoints, resume."""
from __future__ import annotations

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


def last_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest checkpoint-N folder to resume from, if an earlier run left one."""
    from transformers.trainer_utils import get_last_checkpoint
    return get_last_checkpoint(str(checkpoint_dir)) if checkpoint_dir.is_dir() else None
