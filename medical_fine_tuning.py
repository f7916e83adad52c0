"""Fine-tune a chat model into a careful medical reasoner: <think>reasoning</think><response>answer</response>.

    python medical_fine_tuning.py                     # CUDA GPU (a Colab T4 is enough): Llama-3.2-3B, 4-bit, Unsloth
    python medical_fine_tuning.py --MAX_STEPS=60      # any constant below can be overridden as --NAME=value
    python medical_fine_tuning.py                     # no GPU, no internet: the same command runs an offline demo
    accelerate launch medical_fine_tuning.py          # more than one GPU

Edit the constants below, then read main() top to bottom: data -> preflight -> model -> train -> save -> evaluate.
"""
import json
import sys
import time
from pathlib import Path

# --- model -----------------------------------------------------------------------------------------------------------
MODEL_NAME = "unsloth/Llama-3.2-3B-Instruct-bnb-4bit"  # Hub id or local folder; "embedded" = SmolLM2-135M, offline
LOAD_IN_4BIT = True  # QLoRA: 4-bit base weights, so a 3B model trains in a T4's 15 GB; False = 16-bit LoRA
MAX_SEQ_LENGTH = 1024  # tokens per example; medical-o1 rows are ~700-1,100 Llama-3 tokens (2048 if memory allows)
BACKEND = "auto"  # "auto" (Unsloth wherever it imports), "unsloth", or "transformers" (+ peft; the baseline)

# --- LoRA ------------------------------------------------------------------------------------------------------------
LORA_R = 16  # adapter rank, 8-64: higher learns more and costs more memory
LORA_ALPHA = 32  # the adapter's scale is alpha / r; 2 x r is the usual choice
LORA_DROPOUT = 0.05  # regularises small datasets; 0 lets Unsloth use its fastest kernels
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]  # attention; add "gate_proj", "up_proj", "down_proj" for all

# --- data ------------------------------------------------------------------------------------------------------------
DATASET = "FreedomIntelligence/medical-o1-reasoning-SFT"  # Hub id, or a .json/.jsonl/.parquet/.csv file of rows
DATASET_CONFIG = "en"  # the Hub dataset's subset ("en", "zh", ...); ignored for local files
TRAIN_SAMPLES: int | None = None  # None = every row; e.g. 1000 for a quicker seeded subset
VAL_SIZE = 100  # rows held out (seeded) for the eval loss and the answer metrics
PROMPT_STYLE = "think_response"  # answer layout; see medreason/prompts.py for the styles
MAX_THINK_WORDS: int | None = None  # None = whole chains of thought; N = keep opening + concluding paragraphs

# --- training --------------------------------------------------------------------------------------------------------
BATCH_SIZE = 1  # rows per device per step; 1-2 on a T4 for a 3B model at 1024 tokens
GRAD_ACCUM = 8  # steps accumulated per optimizer update: effective batch = BATCH_SIZE x GRAD_ACCUM
GROUP_BY_LENGTH = True  # batch rows of similar length together (less padding); no effect at BATCH_SIZE=1
MAX_STEPS = 200  # optimizer updates (200 x 8 = 1,600 rows)
LEARNING_RATE = 2e-4  # the LoRA rate of Unsloth's recipes; 1e-5 is a full-fine-tuning rate and leaves a LoRA untrained
LR_SCHEDULER = "linear"  # "linear", "cosine" or "constant"
WARMUP_STEPS = 5  # optimizer updates with a rising learning rate
WEIGHT_DECAY = 0.01  # AdamW weight decay on the adapter
GRADIENT_CHECKPOINTING = True  # recompute activations: much less memory (needed on a T4), ~15-20% slower
SEED = 3407  # data split, subset, LoRA init and shuffling

# --- evaluation and checkpoints --------------------------------------------------------------------------------------
EVAL_STEPS = 50  # eval loss on the held-out rows every N updates (0 = only at the end)
SAVE_STEPS = 50  # checkpoint every N updates; rerunning with the same OUTPUT_DIR resumes from the newest
SAVE_TOTAL_LIMIT = 3  # checkpoints kept on disk
EVAL_SAMPLES = 20  # held-out questions answered after training, for ROUGE-L and format compliance
EVAL_BATCH_SIZE = 8  # questions generated (and eval rows scored) together; lower it if out of memory
MAX_NEW_TOKENS = 1024  # generation budget per answer: a chain of thought needs ~500-900 tokens to reach </response>

# --- output and tracking ---------------------------------------------------------------------------------------------
OUTPUT_DIR = "outputs/medical-llama-3.2-3b"  # checkpoints/, adapter/, evaluation/, results.json
REPORT_TO = "wandb"  # "wandb" (offline run files when WANDB_API_KEY is not set) or "none"
WANDB_PROJECT = "medical-reasoning"  # W&B project name (WANDB_PROJECT in .env wins)

# --- publishing and exports ------------------------------------------------------------------------------------------
PUSH_TO_HUB: bool | str = False  # True: upload adapter + model card (needs HF_TOKEN); "dry-run": build the folder only
HF_REPO_ID = ""  # e.g. "your-name/medical-llama-3.2-3b-lora"; empty = HF_REPO_ID from .env
HF_PRIVATE = True  # create the Hub repo private (make it public on the Hub when you are happy with it)
SAVE_MERGED = False  # also write OUTPUT_DIR/merged: base + adapter folded into one 16-bit model (~6 GB for 3B)
SAVE_GGUF = ""  # "" = none; "q4_k_m" (small, for Ollama/llama.cpp) or "q8_0": needs llama.cpp, Unsloth backend


def print_settings(cfg, overridden, plan):
    print("=" * 100)
    print("Settings (edit the constants at the top of medical_fine_tuning.py, or pass --NAME=value):")
    for name, value in vars(cfg).items():
        origin = (" <- command line" if name in overridden else " <- demo profile" if name in plan.demo_settings
                  else " <- sized for CPU" if name in plan.cpu_settings
                  else " <- small-model recipe" if name in plan.recipe_settings else "")
        print(f"  {name:<24}= {value!r}{origin}")
    print("Automatic choices:")
    for reason in plan.reasons:
        print(f"  - {reason}")
    if plan.demo_settings:
        print("  - on a GPU, the real run is simply: python medical_fine_tuning.py "
              "(Llama-3.2-3B on FreedomIntelligence/medical-o1-reasoning-SFT)")
    print("=" * 100)


def main(argv):
    from medreason import data, evaluation, exports, preflight, prompts, publishing, runtime, settings, tracking, \
        training
    from medreason.modeling import load_for_training, load_tokenizer, resolve_model_path, save_adapter, \
        trainable_summary
    from medreason.results import write_run

    timings, start = {}, time.time()
    cfg, overridden = settings.resolve(globals(), argv)
    tracking.load_secrets()  # HF_TOKEN, WANDB_API_KEY from .env; never printed
    plan = runtime.plan_run(cfg, overridden)  # imports Unsloth first when it is the backend
    print_settings(cfg, overridden, plan)
    out = Path(cfg.OUTPUT_DIR)
    style = prompts.get_style(cfg.PROMPT_STYLE)
    # A push without a token, or an export that cannot work, is found now, not after hours of training.
    push_plan = publishing.check_push(cfg.PUSH_TO_HUB, cfg.HF_REPO_ID, cfg.HF_PRIVATE, out.name)
    for note in exports.check_exports(cfg.SAVE_GGUF, plan.backend):
        print(f"[preflight] {note}")

    # 1. Data: read, validate and split before any model is loaded.
    rows, dropped = data.validate(data.load_records(cfg.DATASET, cfg.DATASET_CONFIG), cfg.DATASET)
    print(f"[data] {len(rows)} usable rows from {cfg.DATASET}"
          + (f"; dropped {sum(dropped.values())}: {dict(dropped)}" if dropped else ""))
    rows, shortened = data.shorten_rows(rows, cfg.MAX_THINK_WORDS)
    if shortened:
        print(f"[data] MAX_THINK_WORDS={cfg.MAX_THINK_WORDS}: {shortened} chains of thought shortened to their "
              f"opening and concluding paragraphs, so the model learns to conclude (experiments/LOG.md)")
    train_rows, val_rows = data.split(rows, cfg.VAL_SIZE, cfg.TRAIN_SAMPLES, cfg.SEED)
    n_val = len(val_rows) if val_rows else 0
    print(f"[data] {len(train_rows)} training rows, {n_val} validation rows (seed {cfg.SEED})")
    as_conversation = lambda row: prompts.to_conversation(row, style)  # noqa: E731
    train_ds = train_rows.map(as_conversation, remove_columns=list(data.FIELDS))
    val_ds = val_rows.map(as_conversation, remove_columns=list(data.FIELDS)) if val_rows else None

    # 2. Preflight: token lengths with the model's own tokenizer and chat template.
    model_path = resolve_model_path(cfg.MODEL_NAME)
    tokenizer = load_tokenizer(model_path)
    train_ds, length_stats = preflight.check_lengths(train_ds, tokenizer, cfg.MAX_SEQ_LENGTH, "train")
    checkpoints = out / "checkpoints"
    resume = training.last_checkpoint(checkpoints)
    training.check_resumable(resume, cfg)  # a checkpoint from other LoRA settings is refused now, not after loading
    timings["data_and_preflight"] = time.time() - start

    # 3. Model: base weights + LoRA adapter.
    t = time.time()
    model, tokenizer = load_for_training(cfg, plan, model_path)
    print(f"[model] {model_path} via {plan.backend}: {trainable_summary(model)}")
    timings["model_load"] = time.time() - t

    # 4. Train with trl's SFTTrainer (loss on the answer only), resuming from the newest checkpoint if any.
    report_to, where = tracking.setup_wandb(cfg.REPORT_TO, cfg.WANDB_PROJECT, cfg.OUTPUT_DIR)
    print(f"[track] {where}")
    trainer = training.build_trainer(model, tokenizer, train_ds, val_ds,
                                     training.build_sft_config(cfg, plan, report_to, checkpoints))
    preflight.show_training_example(trainer.train_dataset, tokenizer)
    # Saved with the adapter, so inference asks with exactly the base model and prompt used in training.
    info = {"model_name": cfg.MODEL_NAME, "prompt_style": style.name, "system_prompt": style.system_prompt,
            "max_seq_length": cfg.MAX_SEQ_LENGTH, "backend": plan.backend, "load_in_4bit": plan.load_in_4bit}
    if resume:
        print(f"[train] resuming from {resume} (delete {checkpoints} to start over)")
    t = time.time()
    try:
        train_result = trainer.train(resume_from_checkpoint=resume)
    except KeyboardInterrupt:  # keep what was learned: the adapter so far, and the checkpoints to resume from
        saved = save_adapter(model, tokenizer, out / "adapter-interrupted", info)
        sys.exit(f"\n[train] interrupted at step {trainer.state.global_step}: adapter so far saved to {saved}. "
                 f"Run the same command again to resume from the newest checkpoint in {checkpoints}.")
    timings["train"] = time.time() - t

    # 5. Save the adapter before anything else can fail.
    adapter_dir = save_adapter(model, tokenizer, out / "adapter", info)
    print(f"[save] adapter and tokenizer -> {adapter_dir}")

    # 6. Evaluate: eval loss, then base (adapter disabled) vs tuned answers to held-out questions.
    t = time.time()
    eval_loss = training.final_eval_loss(trainer) if val_ds else None
    (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    if plan.backend == "unsloth":
        from unsloth import FastLanguageModel
        FastLanguageModel.for_inference(model)
    sample = list(val_rows.select(range(min(cfg.EVAL_SAMPLES, n_val)))) if val_rows else []
    comparison = evaluation.evaluate_held_out(model, tokenizer, sample, style, cfg.MAX_NEW_TOKENS,
                                              cfg.EVAL_BATCH_SIZE, cfg.SEED, out / "evaluation",
                                              {"data": cfg.DATASET, "max_new_tokens": cfg.MAX_NEW_TOKENS},
                                              trainer.state.log_history)
    timings["evaluate"], timings["total"] = time.time() - t, time.time() - start
    results_path, eval_metrics = write_run(out, cfg, plan, timings, comparison, eval_loss,
                                           train_result.training_loss, sample, val_rows,
                                           {"train_rows": len(train_ds), "val_rows": n_val, "dropped": dict(dropped),
                                            "shortened_reasoning": shortened,
                                            "train_lengths": length_stats})

    # 7. Exports and publishing: the adapter is already on disk, so nothing here can lose it.
    if cfg.SAVE_MERGED:
        merged = exports.save_merged(model, tokenizer, plan.backend, model_path, adapter_dir, out / "merged")
        print(f"[export] merged 16-bit model -> {merged}")
    if cfg.SAVE_GGUF:
        print(f"[export] GGUF ({cfg.SAVE_GGUF}) -> {exports.save_gguf(model, tokenizer, out / 'gguf', cfg.SAVE_GGUF)}")
    pushed = publishing.publish(out, push_plan)

    run = tracking.current_run()
    run.summary.update({f"final/{k}": v for k, v in eval_metrics.items() if isinstance(v, (int, float))})
    run.finish()

    print("=" * 100)
    print(f"Done in {timings['total'] / 60:.1f} min. Adapter: {adapter_dir}  Results: {results_path}")
    if comparison:
        print(f"Report (base vs tuned): {out / 'evaluation' / 'report.md'}")
        for name, metric in comparison["tuned"].metrics.items():
            print(f"  {name:<18} base {comparison['base'].metrics[name]['value']:.4f} -> tuned {metric['value']:.4f}")
    print(f"  {'eval_loss':<18} {eval_loss:.4f}" if eval_loss is not None else "  eval_loss          n/a")
    print(f"  answer statuses    {eval_metrics['answer_statuses']}")
    return eval_metrics, pushed


if __name__ == "__main__":
    from medreason.errors import run_cli
    run_cli(lambda argv: 0 if main(argv)[1] else 4)  # 4: trained and saved, but the Hub push failed (retry printed)
