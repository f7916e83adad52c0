"""Fine-tune a chat model into a careful medical reasoner: <think>reasoning</think><response>answer</response>.

    python medical_fine_tuning.py                     # CUDA GPU (a Colab T4 is enough): Llama-3.2-3B, 4-bit, Unsloth
    python medical_fine_tuning.py --MAX_STEPS=60      # any constant below can be overridden as --NAME=value
    python medical_fine_tuning.py --PRESET=llama-3.1-8b   # a preset (configs/*.yaml) sets many; --NAME=value wins
    python medical_fine_tuning.py --DRY_RUN=True      # check settings, data and lengths; load no model weights
    python medical_fine_tuning.py                     # no GPU, no internet: the same command runs an offline demo
    accelerate launch --config_file configs/accelerate/ddp.yaml medical_fine_tuning.py   # several GPUs (README)

Edit the constants below, then read main() top to bottom: data -> preflight -> model -> train -> save -> evaluate.
"""
from pathlib import Path

# --- preset ----------------------------------------------------------------------------------------------------------
PRESET = ""  # "" = the constants below; a name in configs/ ("llama-3.1-8b", "phi-4-mini"...) or a .yaml path. Order:
#              constants -> preset -> command line. With no GPU and nothing given, "demo" is chosen automatically.
DRY_RUN = False  # True: resolve settings, validate the data, run the preflight, then stop before any weights load

# --- model -----------------------------------------------------------------------------------------------------------
MODEL_NAME = "unsloth/Llama-3.2-3B-Instruct-bnb-4bit"  # Hub id or local folder; "embedded" = SmolLM2-135M, offline
LOAD_IN_4BIT = True  # QLoRA: 4-bit base weights, so a 3B model trains in a T4's 15 GB; False = 16-bit LoRA
MAX_SEQ_LENGTH = 2048  # tokens per example (a cap: shorter rows cost no more); real rows: p95 992, max 1,137 Llama-3
#                        tokens (bench/token_lengths.py), so 2048 keeps every row whole, as Unsloth's T4 recipes do
BACKEND = "auto"  # "auto" (Unsloth wherever it imports), "unsloth", or "transformers" (+ peft; the baseline)
PRECISION = "auto"  # "auto": bf16 on GPUs that compute it natively (A100, L4, RTX 30xx+), fp16 on a T4/V100, bf16 in
#                     Unsloth's CPU mode, else fp32; or force "fp16", "bf16" (refused on a T4) or "fp32"

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
PROMPT_STYLE = "think_response"  # answer layout; see medreason/answers/prompts.py for the styles
MAX_THINK_WORDS: int | None = None  # None = whole chains of thought; N = keep opening + concluding paragraphs
SAFETY_MIX = 0.0  # share of the training rows that are the project's safety examples (unsafe asks declined, look-
#                   alike questions answered; medreason/data/safety_set.py), 0-0.5, e.g. 0.1; 0 = none
SAFETY_EVAL_SAMPLES: int | None = None  # unsafe asks and safe controls (each) answered after training, for the
#                                         refusal and over-refusal rates; None = EVAL_SAMPLES (at most 36); 0 = none

# --- training --------------------------------------------------------------------------------------------------------
BATCH_SIZE = 1  # rows per device per step; 1-2 on a T4 for a 3B model
GRAD_ACCUM = 8  # steps accumulated per optimizer update: effective batch = processes x BATCH_SIZE x GRAD_ACCUM
GLOBAL_BATCH: int | None = None  # rows per optimizer update over all processes; set, it fixes GRAD_ACCUM so moving
#                                  from 1 to N GPUs keeps the recipe (e.g. 8 = 1 GPU x 1 x 8 = 4 GPUs x 1 x 2)
GROUP_BY_LENGTH = True  # batch rows of similar length together (less padding); no effect at BATCH_SIZE=1
MAX_STEPS = 200  # optimizer updates (200 x 8 = 1,600 rows)
LEARNING_RATE = 2e-4  # the LoRA rate of Unsloth's recipes; 1e-5 is a full-fine-tuning rate and leaves a LoRA untrained
LR_SCHEDULER = "linear"  # "linear", "cosine" or "constant" (any transformers SchedulerType)
WARMUP_STEPS = 5  # optimizer updates with a rising learning rate
WEIGHT_DECAY = 0.01  # AdamW weight decay on the adapter
GRADIENT_CHECKPOINTING = True  # recompute activations: much less memory (needed on a T4), ~15-20% slower
SEED = 3407  # data split, subset, LoRA init and shuffling
LOGGING_STEPS = 10  # the training loss is logged (W&B, log_history.json) and printed every N updates

# --- evaluation and checkpoints --------------------------------------------------------------------------------------
EVAL_STEPS = 50  # eval loss on the held-out rows every N updates (0 = only at the end)
SAVE_STEPS = 50  # checkpoint every N updates; rerunning with the same OUTPUT_DIR resumes from the newest
SAVE_TOTAL_LIMIT = 3  # checkpoints kept on disk
EARLY_STOPPING_PATIENCE: int | None = None  # N = stop after N evaluations without a lower eval loss; keeps the best
EVAL_SAMPLES = 20  # held-out questions answered after training, for ROUGE-L and format compliance
EVAL_BATCH_SIZE = 8  # questions generated (and eval rows scored) together; lower it if out of memory
MAX_NEW_TOKENS = 1024  # generation budget per answer: a chain of thought needs ~500-900 tokens to reach </response>
BENCHMARKS = ""  # exam benchmarks after training, base vs tuned (strict protocol), e.g. "medqa,medmcqa,pubmedqa,
#                  mmlu-pro-health" or your configs/benchmarks/<name>.yaml; "" = none. Also checks the data against them
BENCHMARK_LIMIT = 200  # questions per benchmark (seeded sample, stratified by the correct letter); 0 = all
THINK_BUDGET: int | None = None  # benchmarks: reasoning tokens before the reasoning is closed and the answer asked for
ANSWER_BUDGET = 128  # benchmarks: tokens for the answer once THINK_BUDGET closed the reasoning

# --- output and tracking ---------------------------------------------------------------------------------------------
OUTPUT_DIR = "outputs/medical-llama-3.2-3b"  # checkpoints/, adapter/, evaluation/, results.json
REPORT_TO = "wandb"  # "wandb" (online when logged in, else offline run files) or "none"
WANDB_PROJECT = "medical-reasoning"  # W&B project name (WANDB_PROJECT in .env wins)

# --- publishing and exports ------------------------------------------------------------------------------------------
PUSH_TO_HUB: bool | str = False  # True: upload adapter + model card (needs a write token); "dry-run": folder only
HF_REPO_ID = ""  # e.g. "your-name/medical-llama-3.2-3b-lora"; empty = HF_REPO_ID from .env
HF_PRIVATE = True  # create the Hub repo private (make it public on the Hub when you are happy with it)
SAVE_MERGED = False  # also write OUTPUT_DIR/merged: base + adapter folded into one 16-bit model (~6 GB for 3B)
SAVE_GGUF = ""  # "" = none; "q4_k_m" (small, for Ollama/llama.cpp), "q8_0", or several: "q4_k_m,q8_0" (+ Modelfile)
GGUF_EXPORTER = "llama.cpp"  # llama.cpp's converter/quantizer from llama-cpp-python (offline); or "unsloth"


def main(argv):
    from medreason.answers import prompts
    from medreason.config import distributed, errors, run_plan, settings, tracking
    from medreason.data import readers
    from medreason.evaluate import benchmarks, comparison as evaluation, protocols
    from medreason.model import exports
    from medreason.publish import hub
    from medreason.train import preflight, sft
    from medreason.model.for_training import load_for_training, resolve_model_path, trainable_summary
    from medreason.evaluate.results import Clock, write_run

    clock = Clock()
    distributed.quiet_other_processes()  # under accelerate launch, one process prints and writes
    # Settings decided once and frozen (constants -> preset -> command line, then CPU sizing, VAL_SIZE for a small
    # file, GLOBAL_BATCH), with the plan (device, backend, precision): each automatic choice printed with its reason.
    cfg, plan = run_plan.settle(globals(), argv, automatic=run_plan.automatic_preset, rows=readers.usable_row_count)
    errors.set_run_context(output_dir=cfg.OUTPUT_DIR, settings=cfg, step="0. checks")  # for a crash report
    tracking.load_secrets()  # HF_TOKEN, WANDB_API_KEY from .env; never printed
    settings.print_settings("medical_fine_tuning.py", cfg, plan.reasons, notes=(
        "on a GPU, the real run is simply: python medical_fine_tuning.py (Llama-3.2-3B on "
        "FreedomIntelligence/medical-o1-reasoning-SFT)",) if plan.demo else ())
    out, style = Path(cfg.OUTPUT_DIR), prompts.get_style(cfg.PROMPT_STYLE)
    model_path = resolve_model_path(cfg.MODEL_NAME)

    # 0. Every setting-derived object is built now, so a bad setting costs seconds: push, exports, W&B, the trainer.
    push_plan = hub.check_push(cfg.PUSH_TO_HUB, cfg.HF_REPO_ID, cfg.HF_PRIVATE, out.name)
    export_plan = exports.check_exports(cfg.SAVE_MERGED, cfg.SAVE_GGUF, plan.backend, model_path, cfg.GGUF_EXPORTER)
    report_to = tracking.setup_wandb(cfg.REPORT_TO, cfg.WANDB_PROJECT, cfg.OUTPUT_DIR)
    sft_config = sft.build_sft_config(cfg, plan, report_to, out / "checkpoints")

    # 1. Data: read, validate, split and format as examples in the prompt style, before any model is loaded.
    with distributed.main_process_first():  # one download per machine; the others read the cache
        tokenizer = preflight.tokenizer_for(model_path, dry_run=cfg.DRY_RUN)
        prepared = readers.prepare_training_data(cfg, style, tokenizer)

    # 2. Preflight: token lengths with the model's own tokenizer; a checkpoint to resume must fit this run.
    preflight.check_training_data(prepared, tokenizer, cfg.MAX_SEQ_LENGTH)
    preflight.say_training_estimate(cfg, plan, model_path, prepared)  # minutes from this run's steps x rows x tokens
    benchmarks.preflight_contamination(prepared.train, cfg.BENCHMARKS)  # a warning with the count and an example
    resume = sft.resume_point(out / "checkpoints", cfg, plan)
    clock.lap("data_and_preflight")
    if cfg.DRY_RUN:
        print(f"[dry run] settings, data and preflight checked in {clock.timings()['total']:.0f} s; no model weights "
              f"were loaded. The same command without --DRY_RUN=True trains.")
        return {}, True, True

    # 3. Model: base weights + LoRA adapter.
    model, tokenizer = load_for_training(cfg, plan, model_path)
    print(f"[model] {model_path} via {plan.backend}: {trainable_summary(model)}")
    clock.lap("model_load")

    # 4. Train with trl's SFTTrainer (loss on the answer only), resuming from the newest checkpoint if any.
    trainer = sft.build_trainer(model, tokenizer, prepared.train, prepared.val, sft_config,
                                     cfg.EARLY_STOPPING_PATIENCE)
    preflight.show_training_example(trainer.train_dataset, tokenizer)
    info = sft.run_info(cfg, plan, style)  # saved with the adapter: inference asks exactly as trained
    train_result = sft.train(trainer, resume, out, info)
    clock.lap("train")

    # 5. Save the adapter before anything else can fail (the main process writes it; the others wait).
    adapter_dir = sft.save_final_adapter(trainer, model, tokenizer, out / "adapter", info, train_result.global_step)

    # 6. Evaluate: eval loss, then base (adapter disabled) vs tuned answers to held-out questions, shared out
    #    over the processes when there are several.
    comparison, eval_loss, sample = evaluation.evaluate_run(trainer, model, tokenizer, plan.backend,
                                                             prepared.val_rows, style, cfg, out)
    protocols.after_training(model, tokenizer, cfg, style, out, prepared.train)  # BENCHMARKS, if any
    clock.lap("evaluate")
    if not distributed.is_main():  # everything from here on is written by the main process alone
        return {}, True, True
    results_path, metrics = write_run(out, cfg=cfg, plan=plan, timings=clock.timings(), comparison=comparison,
                                      eval_loss=eval_loss, train_loss=train_result.training_loss, sample=sample,
                                      val_rows=prepared.val_rows, data_info=prepared.info, style=style)

    # 7. Publish, then exports: the adapter is on disk, and no export can cost the push.
    pushed = hub.publish(out, push_plan)
    exported = exports.run_exports(export_plan, model, tokenizer, plan.backend, model_path, adapter_dir, out,
                                   cfg.MAX_NEW_TOKENS)
    tracking.finish(metrics)
    print_summary(out, plan, clock, adapter_dir, results_path, comparison, eval_loss, metrics)
    return metrics, pushed, exported


def print_summary(out, plan, clock, adapter_dir, results_path, comparison, eval_loss, metrics):
    print("=" * 100)
    print(f"Done in {clock.timings()['total'] / 60:.1f} min. Adapter: {adapter_dir}  Results: {results_path}")
    if comparison:
        print(f"Report (base vs tuned): {out / 'evaluation' / 'report.md'}")
        for name, metric in comparison["tuned"].metrics.items():
            print(f"  {name:<18} base {comparison['base'].metrics[name]['value']:.4f} -> tuned {metric['value']:.4f}")
    print(f"  {'eval_loss':<18} {eval_loss:.4f}" if eval_loss is not None else "  eval_loss          n/a")
    print(f"  answer statuses    {metrics['answer_statuses']}")
    if plan.demo:
        print(f"This was the offline DEMO (no CUDA GPU was found), written to {out}. On a GPU the same command trains "
              f"Llama-3.2-3B on the real dataset.")


def exit_status(result) -> int:
    """0: all done; 4: trained and saved, but the Hub push failed (retry printed); 5: an export failed."""
    _, pushed, exported = result
    return 0 if pushed and exported else 4 if not pushed else 5


if __name__ == "__main__":
    from medreason.config.errors import run_cli
    run_cli(lambda argv: exit_status(main(argv)))
