"""The second stage after SFT: the SFT model writes candidate answers, an AI judge scores them, DPO trains on the pairs.

    python preference_tuning.py                                      # GPU: the SFT run's adapter, judged by Qwen2.5-3B
    python preference_tuning.py --SFT_ADAPTER=outputs/<run>/adapter  # any SFT adapter (its held-out rows as questions)
    python preference_tuning.py --DATASET=rows.jsonl --JUDGE=reference   # other questions; a judge that needs no model
    python preference_tuning.py --DATASET=pairs.jsonl                # ready-made prompt/chosen/rejected pairs: DPO only
    python preference_tuning.py                                      # no GPU: an offline demo (minutes on 2 cores)

The SFT + RLAIF recipe of UltraMedical: K sampled answers per question (temperature 0.7, top-p 0.95), a larger judge
model scores each from 0 to 1 on factual accuracy, completeness and key points, the best becomes "chosen" and the
worst "rejected", and DPO trains on the pairs with the SFT model as its reference. Read main() top to bottom:
questions -> model and judge -> candidates -> pairs -> DPO -> save -> SFT vs DPO.
"""
from pathlib import Path

# --- preset ----------------------------------------------------------------------------------------------------------
PRESET = ""  # "" = the constants below; a name in configs/preference/ or a .yaml path. With no GPU, "demo" is chosen

# --- stage 1: the SFT model --------------------------------------------------------------------------------------
SFT_ADAPTER = "outputs/medical-llama-3.2-3b/adapter"  # medical_fine_tuning.py's OUTPUT_DIR/adapter, or a Hub adapter id
TRAIN_SFT_IF_MISSING = False  # True (the demo): run the trainer's demo first when the preset's SFT adapter is missing
BACKEND = "auto"  # "auto" (Unsloth on a CUDA GPU where it imports), "unsloth", or "transformers" (+ peft)
PRECISION = "auto"  # "auto": bf16 where the GPU computes it natively, fp16 on a T4/V100, fp32 on a CPU; or forced
LOAD_IN_4BIT = True  # 4-bit base weights on a GPU, as in SFT training (QLoRA); ignored on a CPU
MAX_SEQ_LENGTH = 2048  # tokens of prompt + answer in DPO; a question whose prompt alone fills it is dropped

# --- questions ---------------------------------------------------------------------------------------------------
DATASET = ""  # "" = the SFT run's held-out validation.jsonl; or a file / Hub id of medical-o1 rows, multiple-choice
#               rows {question, options, answer}, questions {question}, or ready-made pairs {prompt, chosen, rejected}
DATASET_CONFIG: str | None = None  # the Hub dataset's subset, if it has several
TRAIN_QUESTIONS: int | None = None  # questions (or ready-made pairs) to train on; None = all but the held-out ones
#                                      (the CPU demo caps them: each costs NUM_CANDIDATES answers and their verdicts)
EVAL_SAMPLES = 20  # questions held out (seeded) for SFT vs DPO; never used for pairs
SEED = 3407  # the held-out split, the candidates' sampling, DPO's shuffling

# --- candidates --------------------------------------------------------------------------------------------------
NUM_CANDIDATES = 2  # K sampled answers per question; best and worst make the pair
TEMPERATURE = 0.7  # sampling temperature of the candidates (UltraMedical's 0.7)
TOP_P = 0.95  # nucleus sampling of the candidates
MAX_NEW_TOKENS = 1024  # generation budget per answer (candidates and evaluation), as in SFT evaluation
GENERATION_BATCH_SIZE = 8  # answers generated together; lower it if out of memory

# --- judge -------------------------------------------------------------------------------------------------------
JUDGE = "model"  # "model" (JUDGE_MODEL with the rubric), "reference" (ROUGE-L to the reference), "choice" (MCQ letter)
JUDGE_MODEL = "Qwen/Qwen2.5-3B-Instruct"  # a chat model, local folder or Hub id; "embedded" = SmolLM2-135M, offline
JUDGE_MAX_NEW_TOKENS = 16  # the judge's reply after "Score:" (a number is a few tokens)
JUDGE_SAMPLES = 1  # 1 = one greedy verdict per answer; N = N sampled verdicts averaged (for a judge too small to rank)
JUDGE_TEMPERATURE = 1.0  # sampling temperature of the verdicts when JUDGE_SAMPLES > 1
MIN_MARGIN = 0.1  # pairs whose chosen-minus-rejected score is below this are near-ties, dropped (equal scores always)

# --- DPO ---------------------------------------------------------------------------------------------------------
BETA = 0.1  # how far DPO may move from the SFT model: higher stays closer (trl's default)
LEARNING_RATE = 5e-6  # Unsloth's DPO recipe for a LoRA; DPO needs far less than SFT's 2e-4
BATCH_SIZE = 1  # pairs per device per step (each is two sequences, chosen and rejected)
GRAD_ACCUM = 8  # effective batch = BATCH_SIZE x GRAD_ACCUM pairs
GLOBAL_BATCH: int | None = None  # N = pairs per update whatever the GPU count (GRAD_ACCUM follows); None = as above
MAX_STEPS = 100  # optimizer updates (the pairs are repeated as often as needed)
LR_SCHEDULER = "linear"  # "linear", "cosine" or "constant" (any transformers SchedulerType)
WARMUP_STEPS = 10  # updates with a rising learning rate
WEIGHT_DECAY = 0.0  # AdamW weight decay on the adapter
GRADIENT_CHECKPOINTING = True  # recompute activations: less GPU memory (switched off on a CPU)
LOGGING_STEPS = 10  # loss and rewards/margins logged (W&B, log_history.json) and printed every N updates
SAVE_STEPS = 50  # checkpoint every N updates; rerunning with the same OUTPUT_DIR resumes from the newest
SAVE_TOTAL_LIMIT = 3  # checkpoints kept on disk

# --- evaluation and output ---------------------------------------------------------------------------------------
EVAL_BATCH_SIZE = 8  # held-out questions answered together (and judge verdicts asked together)
OUTPUT_DIR = ""  # "" = the SFT run's folder + "-dpo" (outputs/medical-llama-3.2-3b-dpo); adapter/, evaluation/...
REPORT_TO = "wandb"  # "wandb" (online when logged in, else offline run files) or "none"
WANDB_PROJECT = "medical-reasoning"  # W&B project name (WANDB_PROJECT in .env wins)

_PRESET_DIR = Path(__file__).resolve().parent / "configs" / "preference"  # this script's presets (not settings:
_DEMO_PRESET = "demo"  # configs/preference/demo.yaml                           the leading _ keeps them out)


def automatic_preset(values: dict, given: set[str]):
    """With no CUDA GPU and no preset named: the CPU recipe (embedded judge, a handful of questions, a few steps)."""
    from medreason.config import hardware
    if hardware.detect().device == "cuda":
        return None
    what = "the offline demo" if not given else "the CPU recipe for the settings you gave"
    return _DEMO_PRESET, f"no CUDA GPU, so {what} (configs/preference/{_DEMO_PRESET}.yaml; --NAME=value still wins)"


def demo_note(cfg) -> str:
    """What the CPU demo does, with its real counts (the [estimate] line that follows gives its minutes)."""
    questions = (f"at most {cfg.TRAIN_QUESTIONS} questions for pairs (--TRAIN_QUESTIONS=N asks more: each adds "
                 f"{cfg.NUM_CANDIDATES} answers and their verdicts)" if cfg.TRAIN_QUESTIONS is not None
                 else "every question but the held-out ones for pairs")
    judge = ("its base model (adapter off) the judge" if (cfg.JUDGE, cfg.JUDGE_MODEL) == ("model", "embedded") else
             f"the judge {cfg.JUDGE_MODEL if cfg.JUDGE == 'model' else f'JUDGE={cfg.JUDGE!r}'}")
    return (f"DEMO MODE: the SFT adapter {cfg.SFT_ADAPTER} is the policy and {judge}, on {questions} and "
            f"{cfg.EVAL_SAMPLES} held out for SFT vs DPO, {cfg.MAX_STEPS} DPO steps, written to {cfg.OUTPUT_DIR}")


def say_estimate(cfg, plan, sft_folder, sft_info, style, tokenizer, questions, held_out, ready):
    """The stage's time from its real work (questions x candidates x tokens, DPO steps x pairs), before it starts."""
    from medreason.evaluate.judging import PROBES
    from medreason.model import estimates
    from medreason.preference import dpo
    from medreason.model.for_training import resolve_model_path
    from medreason.answers.prompts import prompt_length
    asked = ([] if ready else questions) + held_out
    prompt = sum(prompt_length(tokenizer, q.text, style) for q in asked) / max(len(asked), 1)
    shape, why = estimates.model_shape(resolve_model_path(dpo.sft_base(sft_folder, sft_info)))
    judge, judge_why = (estimates.model_shape(resolve_model_path(cfg.JUDGE_MODEL)) if cfg.JUDGE == "model"
                        else (None, ""))
    references = [q.reference for q in asked if q.reference]
    reference = sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references) / max(len(asked), 1)
    estimates.say(estimates.preference(cfg, plan, shape, why, 0 if ready else len(questions), len(held_out), prompt,
                                       candidates=not ready, judge=judge, judge_why=judge_why,
                                       reference_tokens=reference, probes=PROBES))


def place_output(draft) -> None:
    """OUTPUT_DIR "" = beside the SFT run (outputs/<run>-dpo), so the demo never writes into a real run's folder."""
    if draft.OUTPUT_DIR:
        return
    sft = Path(draft.SFT_ADAPTER)
    if sft.name == "adapter" or sft.exists():  # OUTPUT_DIR/adapter of a training run, or another local folder
        run = sft.parent if sft.name == "adapter" else sft
        folder, why = str(run.with_name(run.name + "-dpo")), f"the SFT run's folder {run} + -dpo"
    else:  # a Hub adapter id
        folder, why = str(Path("outputs") / f"{sft.name}-dpo"), f"outputs/ + the Hub adapter's name + -dpo"
    draft.choose("OUTPUT_DIR", folder, "beside the SFT run", why)


def ensure_sft_adapter(cfg) -> None:
    """The demo's SFT adapter: when the preset's adapter is missing, the trainer's own demo (the command a user runs)
    writes it. An adapter named on the command line is never trained here: a missing one is an error."""
    import subprocess
    import sys
    from medreason.config.errors import UserError
    adapter = Path(cfg.SFT_ADAPTER)
    given = cfg.origin("SFT_ADAPTER").kind == "command line"
    if (adapter / "adapter_config.json").is_file() or not cfg.TRAIN_SFT_IF_MISSING or given:
        return
    trainer = Path(__file__).resolve().with_name("medical_fine_tuning.py")
    command = [sys.executable, str(trainer)] + ([] if adapter.parent == Path("outputs/demo-smollm2-135m")
                                                 else [f"--OUTPUT_DIR={adapter.parent}"])
    print(f"[sft] {adapter} is missing: training the SFT demo first ({' '.join(command[1:])}; it prints its own "
          f"estimate for this CPU)")
    if subprocess.run(command).returncode != 0:
        raise UserError(f"the SFT demo ({' '.join(command[1:])}) failed; its output is above. Fix what it names, "
                        f"then run this command again.")


def main(argv):
    from medreason.config import errors, run_plan, settings, tracking
    from medreason.evaluate import judging
    from medreason.publish import hub
    from medreason.preference import dpo, pairs as preference
    from medreason.evaluate.results import Clock, write_results

    clock = Clock()
    # Settings decided once and frozen (OUTPUT_DIR placed, CPU sizing, GLOBAL_BATCH), with the plan (device,
    # backend, the one precision decision): each automatic choice printed with its reason.
    cfg, plan = run_plan.settle(globals(), argv, automatic=automatic_preset, preset_dir=_PRESET_DIR,
                                output=place_output)
    errors.set_run_context(output_dir=cfg.OUTPUT_DIR, settings=cfg, step="0. checks")
    tracking.load_secrets()
    demo = cfg.PRESET == _DEMO_PRESET
    # the trainer's DEMO MODE line describes the trainer's demo; this stage says its own (demo_note)
    reasons = [r for r in plan.reasons if not (demo and r.startswith("DEMO MODE"))]
    settings.print_settings("preference_tuning.py", cfg, reasons, notes=(demo_note(cfg),) if demo else ())
    out = Path(cfg.OUTPUT_DIR)

    # 0. Checks, before anything long: the SFT adapter (the demo trains it first), the DPO config, W&B, resume.
    ensure_sft_adapter(cfg)
    sft_folder, sft_info = dpo.sft_facts(cfg.SFT_ADAPTER)
    style, tokenizer = dpo.sft_style(sft_info), dpo.sft_tokenizer(sft_folder, sft_info)
    report_to = tracking.setup_wandb(cfg.REPORT_TO, cfg.WANDB_PROJECT, cfg.OUTPUT_DIR)
    dpo_config = dpo.build_dpo_config(cfg, plan, report_to, out / "checkpoints")
    info = dpo.run_info(cfg, plan, sft_folder, sft_info, style)  # saved with the adapter: both stages, the SFT prompt
    resume, reused = dpo.resume_point(out / "checkpoints", info["trained_by"]), dpo.reusable_pairs(out, info)

    # 1. Questions (or ready-made pairs) and a seeded held-out split; the judge's needs and prompt lengths checked.
    layout, rows = preference.read_source(cfg.DATASET or str(preference.sft_validation_rows(cfg.SFT_ADAPTER)),
                                          cfg.DATASET_CONFIG)
    train_rows, held_out = preference.split_held_out(rows, cfg.EVAL_SAMPLES, cfg.TRAIN_QUESTIONS, cfg.SEED)
    held_out, kind = preference.as_questions(held_out), "questions" if layout == "pairs" else layout
    judging.check_judge(cfg.JUDGE, held_out + ([] if layout == "pairs" else train_rows), cfg.JUDGE_MODEL)
    ready = reused or (train_rows if layout == "pairs" else None)  # pairs that need no candidates nor judge
    if ready:
        pairs, examples = preference.fit_pairs(ready, style, tokenizer, cfg.MAX_SEQ_LENGTH)
    else:
        train_rows = preference.fit_questions(train_rows, style, tokenizer, cfg.MAX_SEQ_LENGTH)
    say_estimate(cfg, plan, sft_folder, sft_info, style, tokenizer, train_rows, held_out, ready)
    clock.lap("questions")

    # 2. Model: the SFT adapter as the trainable policy; the judge (the policy's own base, or its own weights).
    errors.set_run_context(step="2. model")
    model, base = dpo.load_policy(sft_folder, sft_info, plan, cfg), dpo.sft_base(sft_folder, sft_info)
    judge = judging.load_judge(cfg, plan, style, model, tokenizer, base) if held_out or not ready else None
    clock.lap("model_load")

    # 3-4. Candidates from the SFT model, judged; chosen/rejected pairs -> OUTPUT_DIR/preference_pairs.jsonl.
    if not ready:
        errors.set_run_context(step="3. candidates and judge")
        dpo.for_generation(model, plan.backend)
        pairs, counts = preference.make_pairs(model, tokenizer, train_rows, style, judge, cfg, out)
        pairs, examples = preference.fit_pairs(pairs, style, tokenizer, cfg.MAX_SEQ_LENGTH)
    counts = {"pairs": len(pairs), "ready_made": str(reused or cfg.DATASET)} if ready else counts
    judging.release(judge, plan.device)  # a judge of its own frees its memory for DPO; loaded again to evaluate
    clock.lap("pairs")

    # 5. DPO with trl's DPOTrainer; its reference model is the SFT adapter, frozen ("ref").
    errors.set_run_context(step="5. DPO")
    dpo.for_training(model, plan.backend)
    trainer = dpo.build_trainer(model, tokenizer, examples, dpo_config, plan.backend)
    train_result = dpo.train(trainer, resume, out, info)
    clock.lap("train")

    # 6. Save the DPO adapter (training_info.json: both stages, the SFT prompt) before anything else can fail.
    adapter_dir = dpo.save(model, tokenizer, out / "adapter", info, train_result.global_step)
    print(f"[save] DPO adapter and tokenizer -> {adapter_dir}")

    # 7. SFT vs DPO on the held-out questions: our evaluator for each adapter, and the judge's win rate.
    errors.set_run_context(step="7. evaluate (the adapter is saved)")
    comparison = dpo.evaluate(model, tokenizer, held_out, kind, style, cfg, plan, base, judge, out,
                              trainer.state.log_history)
    clock.lap("evaluate")
    metrics = dpo.run_metrics(comparison, counts, trainer.state.log_history, train_result.training_loss)
    results = write_results(out / "results.json", metrics, vars(cfg), plan, clock.timings(),
                            {"pairs": counts, "stages": info["stages"], "evaluation": comparison})
    card = hub.write_card(out)  # the card publish.py uploads: this stage's evaluation, every stage named
    tracking.finish(metrics)
    print_summary(out, clock, adapter_dir, results, card, metrics, cfg)
    return metrics


def print_summary(out, clock, adapter_dir, results, card, metrics, cfg):
    print("=" * 100)
    print(f"Done in {clock.timings()['total'] / 60:.1f} min. DPO adapter: {adapter_dir}  Results: {results}")
    print(f"Pairs: {out / 'preference_pairs.jsonl'}  Report (SFT vs DPO): {out / 'evaluation' / 'report.md'}  "
          f"Card: {card}")
    for name, value in metrics.items():
        if isinstance(value, float):
            print(f"  {name:<28} {value:.4f}")
    if cfg.PRESET == _DEMO_PRESET:
        print("This was the offline DEMO: a 135M model judging itself on a handful of questions. The numbers show the "
              "pipeline working, not a better model; on a GPU the same command uses the real SFT run and Qwen2.5-3B.")
    print(f"OUTPUT_DIR: {out}")


if __name__ == "__main__":
    from medreason.config.errors import run_cli
    run_cli(main)
