"""The stage after SFT that moves exam accuracy: reinforcement learning with verifiable medical rewards (GRPO).

    python rl_tuning.py                                        # GPU: the SFT run's adapter on MedQA's train split
    python rl_tuning.py --SFT_ADAPTER=outputs/<run>/adapter    # any SFT (or DPO) adapter
    python rl_tuning.py --DATASET=mcq.jsonl                    # any multiple-choice rows {question, options, answer}
    python rl_tuning.py --DATASET=o1.jsonl --VERIFIER=reference --REWARDS="{'format': 0.5, 'verifier': 1.0}"
    python rl_tuning.py                                        # no GPU: an offline demo (minutes on 2 cores)

HuatuoGPT-o1 gains most of its edge after SFT with RL against a verifier (MedQA 69.0 -> 72.6), and AlphaMed reaches
its results with GRPO and a plain right/wrong reward on multiple-choice questions. Here trl's GRPOTrainer samples
NUM_GENERATIONS answers per question from the SFT adapter, scores each with the weighted rewards of
medreason/rl/rewards.py (format, correct, verifier, length; trl logs each by name), and moves the adapter towards the
answers that beat their group. Read main() top to bottom: questions -> rewards -> model -> GRPO -> save -> SFT vs RL.
"""
from pathlib import Path

# --- preset ----------------------------------------------------------------------------------------------------------
PRESET = ""  # "" = the constants below; a name in configs/rl/ or a .yaml path. No GPU: "demo"; a 15 GB GPU: "t4"

# --- stage 1: the SFT model --------------------------------------------------------------------------------------
SFT_ADAPTER = "outputs/medical-llama-3.2-3b/adapter"  # medical_fine_tuning.py's OUTPUT_DIR/adapter, or a Hub adapter id
TRAIN_SFT_IF_MISSING = False  # True (the demo): run the trainer's demo first when the preset's SFT adapter is missing
BACKEND = "auto"  # "auto" (Unsloth's FastLanguageModel on a CUDA GPU where it imports), "unsloth", or "transformers"
PRECISION = "auto"  # "auto": bf16 where the GPU computes it natively, fp16 on a T4/V100, fp32 on a CPU; or forced
LOAD_IN_4BIT = True  # 4-bit base weights on a GPU, as in SFT training (QLoRA); ignored on a CPU
MAX_SEQ_LENGTH = 2048  # tokens of prompt + answer; a question whose prompt leaves no room for MAX_NEW_TOKENS is dropped
USE_VLLM = False  # trl's vLLM sampling: not installed by requirements-gpu.txt (it pins its own torch, Colab's is kept)

# --- questions ---------------------------------------------------------------------------------------------------
DATASET = "medqa:train"  # a file or Hub id of multiple-choice rows {question, options, answer}, medical-o1 rows (with
#                          a verifier) or bare questions; or <benchmark>:<split> of evaluate.py's benchmarks (medqa,
#                          medmcqa: their train splits, mapped to our rows by medreason/evaluate/benchmarks.py)
DATASET_CONFIG: str | None = None  # the Hub dataset's subset, if it has several
TRAIN_QUESTIONS: int | None = 2000  # questions to train on (seeded sample); None = all but the held-out ones
EVAL_SAMPLES = 200  # questions held out (seeded) for SFT vs RL; never trained on
SEED = 3407  # the held-out split, the sampling, the shuffling
BENCHMARKS = "medqa,medmcqa,pubmedqa,mmlu-pro-health"  # exams whose questions are refused as training rows ("" =
#                                                         only the held-out questions); names, .yaml, or local files
CONTAMINATION_CHARS = 64  # a training question sharing this many characters with an exam question is refused

# --- rewards (medreason/rl/rewards.py) --------------------------------------------------------------------------------
REWARDS = {"format": 0.5, "correct": 1.0, "length": 0.5}  # name: weight; the weighted sum is the GRPO reward
VERIFIER = "none"  # open-ended rows: "reference" (ROUGE-L to the reference answer) or "model" (VERIFIER_MODEL)
VERIFIER_MODEL = "FreedomIntelligence/medical_o1_verifier_3B"  # HuatuoGPT-o1's classifier (local folder or Hub id)

# --- sampling ----------------------------------------------------------------------------------------------------
NUM_GENERATIONS = 4  # answers per question: the group whose mean is each answer's baseline
TEMPERATURE = 1.0  # trl's default: a group needs different answers to compare
TOP_P = 1.0
MAX_NEW_TOKENS = 768  # the answer budget; an answer cut here gets the length penalty

# --- GRPO --------------------------------------------------------------------------------------------------------
BETA = 0.0  # KL to the SFT model (trl's default 0, as in DAPO / Dr. GRPO): no reference forward pass, less memory
LOSS_TYPE = "dapo"  # trl's default: token-level loss normalised over the batch (no length bias)
SCALE_REWARDS = "group"  # advantages divided by the group's reward std ("none": Dr. GRPO's choice)
LEARNING_RATE = 5e-6  # small: RL nudges the SFT model (Unsloth's GRPO notebooks use 5e-6)
BATCH_SIZE = 4  # completions per device per step (trl counts completions, not questions)
GRAD_ACCUM = 2  # BATCH_SIZE x GRAD_ACCUM = 8 completions per update = 2 questions x NUM_GENERATIONS
GLOBAL_BATCH: int | None = None  # N = completions per update whatever the GPU count (GRAD_ACCUM follows)
MAX_STEPS = 250  # optimizer updates: 500 questions with the batch above
LR_SCHEDULER = "cosine"  # any transformers SchedulerType
WARMUP_STEPS = 10
WEIGHT_DECAY = 0.0
GRADIENT_CHECKPOINTING = True  # recompute activations: less GPU memory (Unsloth's own on its backend; off on a CPU)
LOGGING_STEPS = 5  # rewards (total and per reward) logged to W&B and log_history.json every N updates
SAVE_STEPS = 50  # checkpoint every N updates; rerunning with the same OUTPUT_DIR resumes from the newest
SAVE_TOTAL_LIMIT = 3

# --- evaluation and output ---------------------------------------------------------------------------------------
EVAL_BATCH_SIZE = 8  # held-out questions answered together
OUTPUT_DIR = ""  # "" = the SFT run's folder + "-rl" (outputs/medical-llama-3.2-3b-rl); adapter/, evaluation/...
REPORT_TO = "wandb"  # "wandb" (online when logged in, else offline run files) or "none"
WANDB_PROJECT = "medical-reasoning"  # W&B project name (WANDB_PROJECT in .env wins)

_PRESET_DIR = Path(__file__).resolve().parent / "configs" / "rl"  # this script's presets
_DEMO_PRESET, _T4_PRESET = "demo", "t4"  # configs/rl/demo.yaml, configs/rl/t4.yaml
_SMALL_GPU_GIB = 20  # below this much GPU memory (a T4's 15 GB), the T4 sizes


def automatic_preset(values: dict, given: set[str]):
    """No CUDA GPU: the offline demo (CPU recipe). A GPU under 20 GiB (a T4): the sizes measured to fit 15 GB."""
    from medreason.config import hardware
    if hardware.detect().device != "cuda":
        what = "the offline demo" if not given else "the CPU recipe for the settings you gave"
        return _DEMO_PRESET, f"no CUDA GPU, so {what} (configs/rl/{_DEMO_PRESET}.yaml; --NAME=value still wins)"
    gib = gpu_memory_gib()
    if gib < _SMALL_GPU_GIB:
        return _T4_PRESET, (f"a {gib:.0f} GiB GPU, so group size and lengths sized for a T4's 15 GB "
                            f"(configs/rl/{_T4_PRESET}.yaml)")
    return None


def gpu_memory_gib() -> float:
    import torch
    return torch.cuda.get_device_properties(0).total_memory / 2 ** 30


def place_output(draft) -> None:
    """OUTPUT_DIR "" = beside the SFT run (outputs/<run>-rl), so the demo never writes into a real run's folder."""
    if draft.OUTPUT_DIR:
        return
    sft = Path(draft.SFT_ADAPTER)
    if sft.name == "adapter" or sft.exists():  # OUTPUT_DIR/adapter of a training run, or another local folder
        run = sft.parent if sft.name == "adapter" else sft
        folder, why = str(run.with_name(run.name + "-rl")), f"the SFT run's folder {run} + -rl"
    else:  # a Hub adapter id
        folder, why = str(Path("outputs") / f"{sft.name}-rl"), f"outputs/ + the Hub adapter's name + -rl"
    draft.choose("OUTPUT_DIR", folder, "beside the SFT run", why)


def main(argv):
    from medreason.config import errors, run_plan, settings, tracking
    from medreason.publish import hub
    from medreason.preference import pairs
    from medreason.rl import grpo, rewards
    from medreason.preference.dpo import for_training, load_policy, sft_facts, sft_style, sft_tokenizer
    from medreason.evaluate.results import Clock, write_results
    from preference_tuning import ensure_sft_adapter

    clock = Clock()
    # Settings decided once and frozen (OUTPUT_DIR placed, CPU sizing, GLOBAL_BATCH), with the plan (device,
    # backend, the one precision decision): each automatic choice printed with its reason.
    cfg, plan = run_plan.settle(globals(), argv, automatic=automatic_preset, preset_dir=_PRESET_DIR,
                                output=place_output)
    errors.set_run_context(output_dir=cfg.OUTPUT_DIR, settings=cfg, step="0. checks")
    tracking.load_secrets()
    reasons = list(plan.reasons)
    notes = [f"vLLM sampling: {'on' if cfg.USE_VLLM else 'off'} (USE_VLLM; requirements-gpu.txt does not install "
             f"vLLM, whose wheels pin their own torch: Colab's torch is kept, and on a T4 it would also need a second "
             f"copy of the weights and its KV cache in the same 15 GB)"]
    if cfg.PRESET == _DEMO_PRESET:  # the trainer's DEMO MODE line describes the trainer's demo; this stage says its own
        reasons = [r for r in reasons if not r.startswith("DEMO MODE")]
        notes.append(f"DEMO MODE: the embedded SmolLM2-135M with the SFT demo adapter ({cfg.SFT_ADAPTER}) on the "
                     f"shipped illustrative multiple-choice questions, {cfg.MAX_STEPS} GRPO steps, written to "
                     f"{cfg.OUTPUT_DIR}. It shows the stage working, not a better model.")
    settings.print_settings("rl_tuning.py", cfg, reasons, notes=tuple(notes))
    out = Path(cfg.OUTPUT_DIR)

    # 0. Checks, before anything long: the SFT adapter (the demo trains it first), the questions, the rewards, the
    #    GRPO config, W&B, resume.
    ensure_sft_adapter(cfg)
    sft_folder, sft_info = sft_facts(cfg.SFT_ADAPTER)
    style, tokenizer = sft_style(sft_info), sft_tokenizer(sft_folder, sft_info)
    layout, rows = grpo.read_questions(cfg.DATASET, cfg.DATASET_CONFIG)
    verifier = grpo.make_verifier(cfg, plan, style)
    chosen = rewards.choose(cfg.REWARDS, grpo.columns_of(layout), verifier)
    for line in rewards.describe(chosen):
        print(f"[rewards] {line}")
    train_rows, held_out = pairs.split_held_out(rows, cfg.EVAL_SAMPLES, cfg.TRAIN_QUESTIONS, cfg.SEED)
    exam_texts, exams = grpo.benchmark_questions(cfg.BENCHMARKS)
    train_rows, refused = grpo.refuse_contaminated(train_rows, held_out, exam_texts, cfg.CONTAMINATION_CHARS)
    train_rows = pairs.fit_questions(train_rows, style, tokenizer, cfg.MAX_SEQ_LENGTH - cfg.MAX_NEW_TOKENS)
    counts = {"train": len(train_rows), "held_out": len(held_out), "benchmarks": exams, **refused}
    report_to = tracking.setup_wandb(cfg.REPORT_TO, cfg.WANDB_PROJECT, cfg.OUTPUT_DIR)
    functions, weights = rewards.for_trl(chosen, style, set())  # stop ids are set once the model is loaded
    grpo_config = grpo.build_grpo_config(cfg, plan, report_to, out / "checkpoints", weights)
    info = grpo.run_info(cfg, plan, sft_folder, sft_info, style, chosen)  # saved with the adapter: every stage named
    resume = grpo.resume_point(out / "checkpoints", info["trained_by"])
    clock.lap("questions")

    # 1. Model: the SFT adapter as the trainable policy (Unsloth's 4-bit FastLanguageModel on a GPU).
    errors.set_run_context(step="1. model")
    model = load_policy(sft_folder, sft_info, plan, cfg)
    for function in functions:  # an answer "ended" when its last token is one of these (else it hit the budget)
        function.stop_ids = grpo.stop_ids(model, tokenizer)
    clock.lap("model_load")

    # 2. GRPO with trl's GRPOTrainer: sample, score with the rewards, update; timed per step.
    errors.set_run_context(step="2. GRPO")
    for_training(model, plan.backend)
    trainer = grpo.build_trainer(model, tokenizer, grpo.dataset(train_rows, style, tokenizer), grpo_config, functions)
    timer = grpo.StepTimer(trainer)
    train_result = grpo.train(trainer, resume, out, info)
    grpo.write_log(out, trainer.state.log_history)
    clock.lap("train")

    # 3. Save the RL adapter (training_info.json: every stage, the SFT prompt) before anything else can fail.
    adapter_dir = grpo.save(model, tokenizer, out / "adapter", info, train_result.global_step)
    print(f"[save] RL adapter and tokenizer -> {adapter_dir}")

    # 4. SFT vs RL on the held-out questions, with the reward curves; results.json and the model card.
    errors.set_run_context(step="4. evaluate (the adapter is saved)")
    names = [r.name for r in chosen]
    timing = timer.summary()
    comparison = grpo.evaluate(model, tokenizer, held_out, layout, style, sft_folder, cfg, plan, out,
                             trainer.state.log_history, names, timing)
    clock.lap("evaluate")
    metrics = grpo.run_metrics(comparison, trainer.state.log_history, names, train_result.training_loss, timing,
                             counts)
    results = write_results(out / "results.json", metrics, vars(cfg), plan, clock.timings(),
                            {"questions": counts, "stages": info["stages"], "evaluation": comparison,
                             "step_times": timer.steps})
    card = hub.write_card(out)  # the card publish.py uploads: this stage's evaluation, every stage named
    tracking.finish(metrics)
    print_summary(out, clock, adapter_dir, results, card, metrics, cfg)
    return metrics


def print_summary(out, clock, adapter_dir, results, card, metrics, cfg):
    print("=" * 100)
    print(f"Done in {clock.timings()['total'] / 60:.1f} min. RL adapter: {adapter_dir}  Results: {results}")
    print(f"Report (SFT vs RL, reward curves): {out / 'evaluation' / 'report.md'}  Card: {card}")
    for name, value in metrics.items():
        if isinstance(value, float):
            print(f"  {name:<32} {value:.4f}")
    if cfg.PRESET == _DEMO_PRESET:
        print("This was the offline DEMO: a 135M model for a few GRPO steps on a handful of illustrative questions. "
              "Rising rewards there show the pipeline learning its rewards, not medical skill; on a GPU the same "
              "command trains the SFT run on MedQA's train split and grades it on held-out exam questions.")
    print(f"OUTPUT_DIR: {out}")


if __name__ == "__main__":
    from medreason.config.errors import run_cli
    run_cli(main)
