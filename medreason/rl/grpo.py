"""RL after SFT with verifiable rewards: trl's GRPOTrainer on the SFT adapter, rewards from medreason/rl/rewards.py.

GRPO (DeepSeekMath; AlphaMed's medical recipe) samples NUM_GENERATIONS answers per question, scores each with the
weighted rewards, and moves the policy towards the answers that beat their group's mean. The policy is the SFT
adapter loaded once as the trainable "default" (dpo.load_policy: Unsloth's FastLanguageModel on a GPU, 4-bit, in the
run's one precision decision). With BETA > 0, trl adds a frozen copy of it named "ref" as the KL reference (the SFT
model, not the raw base); with BETA = 0 (trl's default, as in DAPO and Dr. GRPO) there is no reference, and the SFT
adapter is loaded again as "sft" only for the SFT vs RL evaluation at the end.

A CPU note (trl issue #3739, "GRPO training hanging on a CPU", trl 0.19.1 on Windows, no diagnosis in the thread):
not reproduced with trl 1.16 on Linux (2 GRPO steps of a tiny model end in about a second). What does read as a
hang on a CPU is the silence: trl prints nothing until a whole step ends, and a step samples every answer of the
group to the end of its turn or its budget before the update. Measured here (AMD EPYC, 2 cores, the 135M recipe
adapter): 4 answers of up to 256 tokens take ~40 s to sample and ~20 s to update; trl's defaults (8 answers of up to
512 tokens) would take several minutes per step with no output. So this stage prints every step with where its time
went (StepTimer, tested), and the CPU preset sizes a step to about a minute.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from medreason.answers.prompts import TEMPLATE_DATE, prompt_messages, to_example
from medreason.config.distributed import is_main
from medreason.config.errors import UserError
from medreason.data.readers import LOCAL_SUFFIXES
from medreason.evaluate import benchmarks
from medreason.evaluate.comparison import ModelAnswers, mean_metric, score
from medreason.evaluate.contamination import overlaps, summary
from medreason.evaluate.metrics import status_counts
from medreason.evaluate.protocols import run
from medreason.evaluate.report import rl_comparison, write_rl_report
from medreason.model import run_record
from medreason.model.for_training import save_adapter
from medreason.preference.dpo import (
    POLICY,
    REFERENCE,
    for_generation,
    resume_point as checked_resume_point,
    train as train_policy,
)
from medreason.preference.pairs import _mcq, read_source
from medreason.rl.rewards import classifier_verifier, reference_verifier
from medreason.train.sft import guard_checkpoint_saves, keep_trainable_weights_in_run_precision, trainer_arguments

SFT_ADAPTER_NAME = "sft"  # the SFT adapter loaded beside the policy for the comparison (BETA = 0: no "ref")
LAYOUTS = ("mcq", "reasoning", "questions")  # the question layouts of preference.read_source GRPO can train on
DEMO_QUESTIONS = Path(__file__).resolve().parents[1] / "demo_data" / "mcq_demo.jsonl"  # DATASET "demo": illustrative


# --- the run record ----------------------------------------------------------------------------------------------

def run_info(cfg, plan, sft_folder: Path, sft_info: dict, style, rewards: list) -> dict:
    """The RL adapter's run record (model/run_record.py): the SFT model's base and prompt (inference asks as every
    stage was trained), every stage named (those the SFT adapter already records, SFT and perhaps DPO, then RL), and
    the settings that decide the RL weights (a finished adapter with the same ones is not trained again; a
    checkpoint of other ones is not resumed)."""
    by = run_record.trained_by("rl", cfg, plan, SFT_ADAPTER=str(sft_folder.resolve()))
    earlier = sft_info.get("stages") or [{"stage": "sft", "trainer": "trl SFTTrainer", "adapter": by["SFT_ADAPTER"],
                                          "trained_by": sft_info.get("trained_by", {})}]
    rl = {"stage": "rl", "trainer": "trl GRPOTrainer", "start_adapter": by["SFT_ADAPTER"],
          "reference_model": "the start adapter (frozen)" if cfg.BETA else "none (BETA = 0)",
          "rewards": {r.name: r.weight for r in rewards}, "reward_notes": [r.describe for r in rewards],
          "trained_by": by}
    return {**sft_info, "model_name": sft_info.get("model_name", by["SFT_ADAPTER"]), "prompt_style": style.name,
            "system_prompt": style.system_prompt, "template_date": sft_info.get("template_date", TEMPLATE_DATE),
            "max_seq_length": cfg.MAX_SEQ_LENGTH, "max_new_tokens": cfg.MAX_NEW_TOKENS, "backend": plan.backend,
            "precision": plan.precision, "load_in_4bit": plan.load_in_4bit, "trained_by": by,
            "stages": [*earlier, rl]}


# --- questions -----------------------------------------------------------------------------------------------------

def read_questions(source: str, config: str | None):
    """(layout, Questions) GRPO can train on: multiple-choice rows, medical-o1 rows (with a verifier) or bare
    questions (format and length rewards only), from a file, a Hub id, or <benchmark>:<split> of evaluate.py's
    benchmarks (medqa:train, medmcqa:train: their own field mapping, medreason/evaluate/benchmarks.py)."""
    source = str(DEMO_QUESTIONS) if source == "demo" else source
    exam = exam_split(source)
    if exam:
        return "mcq", exam
    layout, rows = read_source(source, config)
    if layout not in LAYOUTS:
        raise UserError(f"DATASET={source!r} holds preference pairs (prompt, chosen, rejected); GRPO samples its own "
                        f"answers and needs questions. Fix: multiple-choice rows {{question, options, answer}} "
                        f"(MedMCQA, MedQA), medical-o1 rows, or preference_tuning.py for pairs.")
    return layout, rows


def exam_split(source: str) -> list | None:
    """The Questions of <benchmark>:<split> (e.g. medqa:train), or None when DATASET names no benchmark split."""
    import dataclasses

    name, _, split = source.partition(":")
    if not split or name not in benchmarks.BENCHMARKS:
        return None
    bench = dataclasses.replace(benchmarks.BENCHMARKS[name], split=split)
    questions, _ = _mcq(benchmarks.load(bench), f"{name} {split}")
    print(f"[questions] {len(questions)} multiple-choice questions from {bench.label}")
    return questions


def columns_of(layout: str) -> set[str]:
    return {"mcq": {"answer", "options"}, "reasoning": {"reference"}, "questions": set()}[layout]


def benchmark_questions(names: str) -> tuple[list[str], list[str]]:
    """(question texts, labels) of the exam benchmarks named in BENCHMARKS: names evaluate.py knows (medqa, medmcqa,
    pubmedqa, mmlu-pro-health), YAML declarations, or local files of {question, options, answer} rows."""
    texts, labels = [], []
    for name in filter(None, (n.strip() for n in names.split(","))):
        path = Path(name).expanduser()
        found = ([benchmarks.local_file(path)] if path.suffix.lower() in LOCAL_SUFFIXES and path.is_file()
                 else benchmarks.resolve(name))
        for bench in found:
            texts += benchmarks.question_texts(benchmarks.load(bench))
            labels.append(bench.name)
    return texts, labels


def question_text(question) -> str:
    """The question as the exam asks it (no options, no instruction): what the contamination check compares. The
    instruction every multiple-choice prompt ends with would otherwise make every row overlap every other."""
    row = question.row or {}
    return str(row.get("question") or row.get("Question") or question.text)


def refuse_contaminated(train, held_out, benchmark_texts: list[str], chars: int) -> tuple[list, dict]:
    """Training questions that share a CHARS-long run with a held-out or benchmark question are refused
    (contamination.overlaps, HuatuoGPT-o1's rule): a model must never be graded on a question it trained on."""
    references = [question_text(q) for q in held_out] + list(benchmark_texts)
    found = overlaps([question_text(q) for q in train], references, chars) if references and train else []
    flagged = {o.train_index for o in found}
    kept = [q for i, q in enumerate(train) if i not in flagged]
    print(f"[contamination] {summary(found, f'{len(references)} held-out and benchmark questions', chars)}"
          + (f": refused as training rows ({len(kept)} left)" if flagged else ""))
    if train and not kept:
        raise UserError(f"every training question overlaps a held-out or benchmark question ({len(references)} "
                        f"checked), so nothing is left to train on. Fix: training questions from another source than "
                        f"the exams (MedMCQA/MedQA train splits), or fewer BENCHMARKS.")
    return kept, {"refused": len(flagged), "checked_against": len(references),
                  "examples": [o.describe() for o in found[:3]]}


def to_grpo_example(question, style, tokenizer) -> dict:
    """A question as trl's prompt-only example with exactly the SFT prompt, plus the columns the rewards read."""
    if style.as_text:
        prompt = to_example({"Question": question.text, "Complex_CoT": "", "Response": ""}, style, tokenizer)["prompt"]
    else:
        prompt = prompt_messages(question.text, style)
    example = {"prompt": prompt}
    if question.options:
        example.update(answer=question.correct, options=dict(question.options))
    if question.reference and not question.options:
        example["reference"] = question.reference
    return example


def dataset(questions, style, tokenizer):
    from datasets import Dataset
    return Dataset.from_list([to_grpo_example(q, style, tokenizer) for q in questions])


def make_verifier(cfg, plan, style):
    """The verifier of open-ended rows (VERIFIER): None, the reference judge, or a classifier model."""
    if cfg.VERIFIER == "none":
        return None
    if cfg.VERIFIER == "reference":
        return reference_verifier(style)
    if cfg.VERIFIER == "model":
        return classifier_verifier(cfg.VERIFIER_MODEL, plan.device, cfg.EVAL_BATCH_SIZE)
    raise UserError(f"VERIFIER={cfg.VERIFIER!r}: choose 'none', 'reference' (ROUGE-L to the reference answer) or "
                    f"'model' (the classifier VERIFIER_MODEL, HuatuoGPT-o1's medical_o1_verifier_3B).")


# --- the trainer -------------------------------------------------------------------------------------------------

def build_grpo_config(cfg, plan, report_to: list[str], checkpoint_dir: Path, weights: list[float]):
    """trl's GRPOConfig, built (and so checked by transformers and trl) before any model loads."""
    import importlib.util

    from trl import GRPOConfig

    if cfg.USE_VLLM and importlib.util.find_spec("vllm") is None:
        raise UserError("USE_VLLM=True but vLLM is not installed. Fix: --USE_VLLM=False (sampling with the model "
                        "itself), or pip install vllm where its torch pin fits yours (not on Colab's torch).")
    shared = trainer_arguments(cfg, plan, report_to, checkpoint_dir)
    shared.pop("dataset_num_proc", None)  # GRPO tokenizes prompts as it samples: GRPOConfig has no such field
    try:
        return GRPOConfig(
            **shared,
            num_generations=cfg.NUM_GENERATIONS,  # answers sampled per question: the group whose mean is the baseline
            max_completion_length=cfg.MAX_NEW_TOKENS,
            temperature=cfg.TEMPERATURE,
            top_p=cfg.TOP_P,
            beta=cfg.BETA,  # KL to the SFT model; 0 = none (no reference forward pass)
            loss_type=cfg.LOSS_TYPE,
            scale_rewards=cfg.SCALE_REWARDS,
            reward_weights=weights,
            mask_truncated_completions=False,  # a cut answer must feel its length penalty
            use_vllm=cfg.USE_VLLM,
            log_completions=False,  # the rich table floods a CPU log; the answers are in the report
        )
    except ValueError as e:  # transformers and trl check values and combinations in __post_init__
        raise UserError(f"the GRPO trainer refused these settings: {str(e).splitlines()[0]} Fix: change the setting "
                        f"it names (BATCH_SIZE x GRAD_ACCUM completions per update must be a multiple of "
                        f"NUM_GENERATIONS; the constants at the top of rl_tuning.py).") from None


def stop_ids(model, tokenizer) -> set[int]:
    """The token ids that end an answer on its own (what trl stops at): the tokenizer's and the model's EOS ids."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, (list, tuple)) else {configured}
    return {i for i in ids if i is not None}


class StepTimer:
    """Seconds per optimizer step, and the part of it spent sampling and scoring answers (GRPOTrainer's
    _generate_and_score_completions, wrapped on the instance); the rest is the update (forward, backward, step)."""

    def __init__(self, trainer):
        from transformers import TrainerCallback
        self.steps: list[dict] = []
        self._generation, self._start = 0.0, None
        generate = trainer._generate_and_score_completions
        timer = self

        def timed(*args, **kwargs):
            begun = time.perf_counter()
            try:
                return generate(*args, **kwargs)
            finally:
                timer._generation += time.perf_counter() - begun
        trainer._generate_and_score_completions = timed

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer._start, timer._generation = time.perf_counter(), 0.0

            def on_step_end(self, args, state, control, **kwargs):
                total = time.perf_counter() - timer._start
                timer.steps.append({"step": state.global_step, "total_s": total, "generation_s": timer._generation,
                                    "update_s": total - timer._generation})
                print(f"[rl] step {state.global_step}/{state.max_steps}: {total:.1f} s ({timer._generation:.1f} s "
                      f"sampling and scoring answers, {total - timer._generation:.1f} s update)", flush=True)
        trainer.add_callback(Callback())

    def summary(self) -> dict:
        if not self.steps:
            return {}
        n = len(self.steps)
        return {"steps_timed": n, **{f"mean_{k}": sum(s[k] for s in self.steps) / n
                                     for k in ("total_s", "generation_s", "update_s")}}


def build_trainer(model, tokenizer, examples, grpo_config, reward_functions: list):
    """trl's GRPOTrainer on the SFT adapter (Unsloth patches it on import, where it is the backend)."""
    from trl import GRPOTrainer

    trainer = GRPOTrainer(model=model, reward_funcs=reward_functions, args=grpo_config, train_dataset=examples,
                          processing_class=tokenizer)
    keep_trainable_weights_in_run_precision(trainer)  # trl's GRPOTrainer casts a quantized model's LoRA to bf16 too
    guard_checkpoint_saves(trainer)
    return trainer


def resume_point(checkpoint_dir: Path, by: dict) -> str | None:
    return checked_resume_point(checkpoint_dir, by, stage="rl")


def train(trainer, resume: str | None, out: Path, info: dict):
    """dpo.train: training.train (resume, finished-run reuse, Ctrl-C keeps the adapter), with the policy's own
    weights restored first from a checkpoint that also holds trl's "ref" copy (BETA > 0)."""
    return train_policy(trainer, resume, out, info)


def save(model, tokenizer, folder: Path, info: dict, finished_at_step: int | None = None) -> Path:
    """The RL adapter alone (save_adapter writes the active adapter: neither "ref" nor "sft" is kept), its run
    record marked finished at `finished_at_step` (train's TrainOutput.global_step)."""
    return save_adapter(model, tokenizer, folder, info, finished_at_step)


# --- SFT vs RL -----------------------------------------------------------------------------------------------------

def sft_adapter_name(model, sft_folder: Path) -> str:
    """The adapter that is the SFT model: trl's frozen "ref" copy (BETA > 0), else the SFT adapter loaded again."""
    if REFERENCE in model.peft_config:
        return REFERENCE
    if SFT_ADAPTER_NAME not in model.peft_config:
        model.load_adapter(str(sft_folder), adapter_name=SFT_ADAPTER_NAME, is_trainable=False)
    return SFT_ADAPTER_NAME


def compare(model, tokenizer, questions, kind: str, style, sft_folder: Path, cfg, plan) -> tuple[dict, dict]:
    """({"sft": ModelAnswers, "rl": ModelAnswers}, {stage: answer statuses}) on the held-out questions, each
    stage's adapter switched on in turn on one loaded model. Multiple-choice rows: the strict exam protocol
    (protocols.run: the trained prompt, greedy, the last explicit answer; none or several letters = an extraction
    failure, scored wrong), accuracy and extraction with bootstrap intervals; medical-o1 rows: evaluation.score."""
    sft = sft_adapter_name(model, sft_folder)
    for_generation(model, plan.backend)
    results, statuses = {}, {}
    for name, adapter in (("sft", sft), ("rl", POLICY)):
        model.set_adapter(adapter)
        results[name], statuses[name] = _answer(model, tokenizer, questions, kind, style, cfg, f"{name.upper()} model")
    model.set_adapter(POLICY)
    return results, statuses


def _answer(model, tokenizer, questions, kind: str, style, cfg, label: str):
    if kind == "mcq":
        print(f"[evaluate] {label} answering {len(questions)} held-out questions (strict protocol)")
        scored = run(model, tokenizer, [q.row for q in questions], "strict", style, cfg.MAX_NEW_TOKENS,
                     cfg.EVAL_BATCH_SIZE, seed=cfg.SEED)
        metrics = {name: scored.metrics[name] for name in ("accuracy", "extraction_rate")}
        metrics["format_compliance"] = mean_metric([float(a.status == "complete") for a in scored.answers],
                                                   seed=cfg.SEED)
        return ModelAnswers([a.text for a in scored.answers], metrics), scored.metrics["statuses"]
    rows = [_eval_row(q, kind) for q in questions]
    answers = score(model, tokenizer, rows, "reasoning", style, cfg.MAX_NEW_TOKENS, cfg.EVAL_BATCH_SIZE,
                    f"{label} answering", cfg.SEED)
    return answers, status_counts(answers.answers, style, answers.ended)


def _eval_row(question, kind: str) -> dict:
    return question.row if kind == "reasoning" else {"Question": question.text, "Complex_CoT": "",
                                                     "Response": question.reference or ""}


def evaluate(model, tokenizer, questions, kind: str, style, sft_folder: Path, cfg, plan, out: Path,
             log_history: list[dict], reward_names: list[str], timing: dict) -> dict | None:
    """SFT vs RL on the held-out questions, written to OUTPUT_DIR/evaluation/ with the reward curves."""
    if not questions or kind == "questions":
        print("[evaluate] no held-out questions with answers to grade (EVAL_SAMPLES=0, or bare questions): no SFT vs "
              "RL comparison")
        return None
    results, statuses = compare(model, tokenizer, questions, kind, style, sft_folder, cfg, plan)
    report = write_rl_report(out / "evaluation", results, statuses, questions,
                             {"data": cfg.DATASET, "kind": kind, "protocol": "strict" if kind == "mcq" else
                              "evaluation.score", "max_new_tokens": cfg.MAX_NEW_TOKENS},
                             log_history, reward_names, timing)
    print(f"[evaluate] SFT vs RL -> {report}")
    return rl_comparison(results, statuses)


def reward_trend(log_history: list[dict], key: str) -> tuple[float | None, float | None, float | None]:
    """(first, last, mean) of a logged reward over the run."""
    values = [e[key] for e in log_history if key in e]
    return (values[0], values[-1], sum(values) / len(values)) if values else (None, None, None)


def run_metrics(comparison: dict | None, log_history: list[dict], reward_names: list[str], train_loss,
                timing: dict, counts: dict) -> dict:
    """results.json's headline numbers: the RL model's metrics with SFT's beside them, the rewards over the run,
    and where each step's time went."""
    metrics = {"train_questions": counts.get("train"), "refused_as_contaminated": counts.get("refused"),
               "train_loss": train_loss}
    for key in ["reward"] + [f"rewards/{n}/mean" for n in reward_names]:
        first, last, mean = reward_trend(log_history, key)
        label = key.replace("rewards/", "reward_").replace("/mean", "")
        metrics.update({f"{label}_first": first, f"{label}_last": last, f"{label}_mean": mean})
    metrics.update({k: v for k, v in timing.items() if k.startswith("mean_")})
    if comparison:
        for name in comparison["rl"]:
            metrics[name], metrics[f"sft_{name}"] = comparison["rl"][name]["value"], comparison["sft"][name]["value"]
    return metrics


def write_log(out: Path, log_history: list[dict]) -> None:
    if is_main():
        (out / "log_history.json").write_text(json.dumps(log_history, indent=1))
