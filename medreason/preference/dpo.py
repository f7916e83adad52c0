"""DPO after SFT: the policy is the SFT adapter on its base, the reference model is the same SFT adapter frozen.

trl's DPOTrainer (1.15 and 1.16) has no model_adapter_name / ref_adapter_name settings: given a peft model that
already holds a trained adapter ("default") and no ref_model, it adds an adapter named "ref" and copies the
default adapter's weights into it, and computes the reference log-probabilities with "ref" active (trl.trainer.utils
.use_adapter). So the SFT adapter is loaded once as the trainable "default"; "ref" is its frozen copy, the SFT model,
not the raw base (which is what disabling every adapter would give). After training, "ref" is the SFT model and
"default" the DPO model on the same base: the evaluation switches between them with set_adapter.
"""
from __future__ import annotations

from pathlib import Path

from medreason.answers.generation import generate
from medreason.answers.prompts import TEMPLATE_DATE, generation_prompt
from medreason.answers.tags import closing_marker, parse_answer
from medreason.config.errors import UserError
from medreason.config.hardware import torch_dtype
from medreason.evaluate.comparison import ModelAnswers, mean_metric, score
from medreason.evaluate.judging import ModelJudge, judge_answers, load_judge
from medreason.evaluate.metrics import compliance_flags
from medreason.evaluate.report import dpo_comparison, margins, write_dpo_report
from medreason.model import run_record
from medreason.model.for_inference import adapter_base, fetch, trained_style
from medreason.model.for_training import load_base, load_tokenizer, resolve_model_path, save_adapter
from medreason.preference.pairs import PAIRS_FILE, read_source
from medreason.train import sft as training
from medreason.train.sft import (
    guard_checkpoint_saves,
    keep_trainable_weights_in_run_precision,
    last_checkpoint,
    trainer_arguments,
)

POLICY, REFERENCE = "default", "ref"  # trl's names for the trained adapter and the frozen copy it makes


# --- stage 1: the SFT adapter ------------------------------------------------------------------------------------

def sft_facts(sft_adapter: str) -> tuple[Path, dict]:
    """(adapter folder, its run record), checked before anything loads."""
    path = Path(sft_adapter).expanduser()
    looks_local = path.exists() or sft_adapter.startswith((".", "/", "~")) or sft_adapter.count("/") != 1
    if looks_local and not (path / "adapter_config.json").is_file():
        found = "no adapter_config.json in that folder" if path.is_dir() else "no such folder"
        raise UserError(f"SFT_ADAPTER={sft_adapter!r}: {found}, so there is no SFT model to start from. Fix: train "
                        f"one first (python medical_fine_tuning.py writes OUTPUT_DIR/adapter), or --SFT_ADAPTER=<that "
                        f"adapter folder, or a Hub id of a published adapter>.")
    try:
        folder = fetch(sft_adapter)
    except UserError as e:
        raise UserError(f"SFT_ADAPTER={e}") from None
    if not (folder / "adapter_config.json").is_file():
        raise UserError(f"SFT_ADAPTER={sft_adapter!r} holds no adapter_config.json. Fix: the adapter folder of an SFT "
                        f"run (OUTPUT_DIR/adapter).")
    info = run_record.read(folder)
    if not info:
        print(f"[sft] {folder} has no {run_record.FILE_NAME}: its prompt is taken to be the default think_response style")
    return folder, info


def sft_style(info: dict):
    """The prompt the SFT model was trained with (style and system prompt), as inference asks it."""
    return trained_style(info)


def sft_base(folder: Path, info: dict) -> str:
    """The base model under the SFT adapter: "embedded", a Hub id or a folder."""
    return adapter_base(folder, info)


def sft_tokenizer(folder: Path, info: dict):
    """The tokenizer saved with the SFT adapter (its chat template, date pinned), else its base model's."""
    if (folder / "tokenizer_config.json").is_file():
        return load_tokenizer(str(folder))
    return load_tokenizer(resolve_model_path(sft_base(folder, info)))


def load_policy(folder: Path, info: dict, plan, cfg):
    """A peft model whose trainable "default" adapter is the SFT adapter, on the run's backend and in its one
    precision decision; the base is 4-bit where the plan says so, as in SFT training."""
    from peft import PeftModel

    base_path = resolve_model_path(sft_base(folder, info))
    dtype = torch_dtype(plan.precision)
    if plan.backend == "unsloth":  # Unsloth's documented way to train an adapter further: load the adapter folder
        from unsloth import FastLanguageModel
        model, _ = FastLanguageModel.from_pretrained(model_name=str(folder), max_seq_length=cfg.MAX_SEQ_LENGTH,
                                                     dtype=dtype, load_in_4bit=plan.load_in_4bit)
    else:
        model = PeftModel.from_pretrained(load_base(base_path, plan, cfg.GRADIENT_CHECKPOINTING), str(folder),
                                          is_trainable=True)
        for config in model.peft_config.values():  # the local base: saving checkpoints asks no Hub for its config
            config.base_model_name_or_path = base_path
    print(f"[model] {base_path} + the SFT adapter {folder} (trainable) via {plan.backend}")
    return model


def for_generation(model, backend: str):
    """Unsloth generates through its inference mode; transformers + peft as it is."""
    if backend == "unsloth":
        from unsloth import FastLanguageModel
        FastLanguageModel.for_inference(model)
    model.eval()


def for_training(model, backend: str):
    if backend == "unsloth":
        from unsloth import FastLanguageModel
        FastLanguageModel.for_training(model)
    model.train()


# --- stage 2: DPO ------------------------------------------------------------------------------------------------

def run_info(cfg, plan, sft_folder: Path, sft_info: dict, style) -> dict:
    """The DPO adapter's run record (model/run_record.py): the SFT model's base and prompt (inference asks exactly
    as both stages were trained), both stages named, and the settings that decide the DPO weights (a finished
    adapter with the same ones is not trained again; a checkpoint of other ones is not resumed)."""
    by = run_record.trained_by("dpo", cfg, plan, SFT_ADAPTER=str(sft_folder.resolve()))
    return {**sft_info, "model_name": sft_info.get("model_name", by["SFT_ADAPTER"]), "prompt_style": style.name,
            "system_prompt": style.system_prompt, "template_date": sft_info.get("template_date", TEMPLATE_DATE),
            "max_seq_length": cfg.MAX_SEQ_LENGTH, "backend": plan.backend, "precision": plan.precision,
            "load_in_4bit": plan.load_in_4bit, "trained_by": by,
            "stages": [{"stage": "sft", "trainer": "trl SFTTrainer", "adapter": by["SFT_ADAPTER"],
                        "trained_by": sft_info.get("trained_by", {})},
                       {"stage": "dpo", "trainer": "trl DPOTrainer", "reference_model": "the SFT adapter (frozen)",
                        "judge": cfg.JUDGE if cfg.JUDGE != "model" else f"model {cfg.JUDGE_MODEL}",
                        "trained_by": by}]}


def build_dpo_config(cfg, plan, report_to: list[str], checkpoint_dir: Path):
    """trl's DPOConfig, built (and so checked by transformers and trl) before any model loads."""
    from trl import DPOConfig

    try:
        return DPOConfig(
            **trainer_arguments(cfg, plan, report_to, checkpoint_dir),
            beta=cfg.BETA,  # how far the policy may move from the SFT model: higher = closer
            max_length=cfg.MAX_SEQ_LENGTH,  # prompt + answer; longer answers lose their end (keep_start)
        )
    except ValueError as e:  # transformers and trl check values and combinations in __post_init__
        raise UserError(f"the DPO trainer refused these settings: {str(e).splitlines()[0]} Fix: change the setting "
                        f"it names (the constants at the top of preference_tuning.py).") from None


def build_trainer(model, tokenizer, examples: list[dict], dpo_config, backend: str):
    """trl's DPOTrainer on the pairs; the reference model is the SFT adapter's frozen copy ("ref")."""
    from datasets import Dataset

    if backend == "unsloth":  # as Unsloth documents for DPO: patch before the trainer is built
        from unsloth import PatchDPOTrainer
        PatchDPOTrainer()
    from trl import DPOTrainer
    trainer = DPOTrainer(model=model, args=dpo_config, train_dataset=Dataset.from_list(examples),
                         processing_class=tokenizer)
    if REFERENCE not in trainer.model.peft_config:
        raise RuntimeError("trl's DPOTrainer did not add its frozen 'ref' copy of the SFT adapter (see this module's "
                           "docstring); the reference model would be the raw base model.")
    keep_trainable_weights_in_run_precision(trainer)
    guard_checkpoint_saves(trainer)
    return trainer


def resume_point(checkpoint_dir: Path, by: dict, stage: str = "dpo") -> str | None:
    """The newest complete checkpoint, if it was trained with these very settings (else a UserError); None when
    there is none or training already finished."""
    checkpoint = last_checkpoint(checkpoint_dir)
    if checkpoint:
        differences = run_record.resume_differences(checkpoint_dir, stage, by)
        if differences:
            raise UserError(f"{checkpoint} was trained with other settings ({'; '.join(differences)}), so this run "
                            f"cannot resume from it. Fix: another --OUTPUT_DIR, delete {checkpoint_dir} to start over, "
                            f"or pass the settings it was trained with.")
    if run_record.finished_step(checkpoint_dir.parent, by) is not None:
        return None
    if checkpoint:
        print(f"[dpo] resuming from {checkpoint} (delete {checkpoint_dir} to start over)")
    return checkpoint


def reusable_pairs(out: Path, info: dict) -> list | None:
    """The pairs an earlier run of these very settings wrote and began training on (its checkpoints or its finished
    adapter say so): a resumed run trains on exactly those, without writing candidates again."""
    path, began = out / PAIRS_FILE, run_record.read(out / "checkpoints")
    began = bool(began) and not run_record.differences(began, info["trained_by"])
    if not path.is_file() or not (began or run_record.finished_step(out, info["trained_by"]) is not None):
        return None
    print(f"[pairs] reusing {path}, written by the run being resumed")
    return read_source(str(path))[1]


def train(trainer, resume: str | None, out: Path, info: dict):
    """training.train (resume, finished-run reuse, Ctrl-C keeps the adapter), with the checkpoint's DPO adapter
    restored first: a checkpoint holding two adapters ("ref" in a subfolder) makes transformers' Trainer load only
    the subfolder ones, which would silently restart "default" from the SFT weights."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if resume:
        set_peft_model_state_dict(trainer.model, load_file(Path(resume) / "adapter_model.safetensors"),
                                  adapter_name=POLICY)
    return training.train(trainer, resume, out, info)


def save(model, tokenizer, folder: Path, info: dict, finished_at_step: int | None = None) -> Path:
    """The DPO adapter alone (save_adapter writes the active adapter: trl's frozen "ref" copy of SFT is not kept),
    its run record marked finished at `finished_at_step` (train's TrainOutput.global_step)."""
    return save_adapter(model, tokenizer, folder, info, finished_at_step)


def answer_with(model, adapter: str, tokenizer, questions, kind: str, style, max_new_tokens: int, batch_size: int,
                seed: int):
    """One stage's answers and metrics (evaluation.score), with its adapter active: nothing is loaded twice."""
    model.set_adapter(adapter, inference_mode=True)
    label = f"{'SFT' if adapter == REFERENCE else 'DPO'} model answering"
    if kind in ("reasoning", "mcq"):
        return score(model, tokenizer, [q.row for q in questions], kind, style, max_new_tokens, batch_size, label,
                     seed)
    prompts = [generation_prompt(tokenizer, q.text, style) for q in questions]  # questions alone: form only
    generated = generate(model, tokenizer, prompts, max_new_tokens, batch_size, desc=label,
                         stop_text=closing_marker(style))
    answers, ended = [g.text.strip() for g in generated], [g.ended for g in generated]
    return ModelAnswers(answers, {"format_compliance": mean_metric(compliance_flags(answers, style, ended),
                                                                   seed=seed)}, ended)


def compare_stages(model, tokenizer, questions, kind: str, style, max_new_tokens: int, batch_size: int,
                   seed: int) -> dict:
    """{"sft": ModelAnswers, "dpo": ModelAnswers} on the held-out questions, greedy, the same prompts."""
    results = {name: answer_with(model, adapter, tokenizer, questions, kind, style, max_new_tokens, batch_size, seed)
               for name, adapter in (("sft", REFERENCE), ("dpo", POLICY))}
    model.set_adapter(POLICY, inference_mode=True)
    return results


def win_rate(judge, questions, results: dict, style) -> dict:
    """The judge's verdict on each held-out question's SFT and DPO answers: DPO wins, ties, losses, and the win
    rate (ties count half) over the questions with two readable verdicts."""
    verdicts = {}
    for name in ("sft", "dpo"):
        answers, ended = results[name].answers, results[name].ended or [True] * len(results[name].answers)
        complete = [parse_answer(a, style, e).complete for a, e in zip(answers, ended)]
        verdicts[name] = judge_answers(judge, questions, answers, complete)
    outcome = {"wins": 0, "ties": 0, "losses": 0, "unreadable": 0}
    for sft, dpo in zip(verdicts["sft"], verdicts["dpo"]):
        key = ("unreadable" if not (sft.readable and dpo.readable) else "wins" if dpo.score > sft.score
               else "losses" if dpo.score < sft.score else "ties")
        outcome[key] += 1
    judged = outcome["wins"] + outcome["ties"] + outcome["losses"]
    outcome["win_rate"] = (outcome["wins"] + outcome["ties"] / 2) / judged if judged else None
    outcome["judge"] = judge.label
    outcome["verdicts"] = {name: [[v.score, v.said] for v in vs] for name, vs in verdicts.items()}
    return outcome



def evaluate(model, tokenizer, questions, kind: str, style, cfg, plan, base: str, judge, out: Path,
             log_history: list[dict]) -> dict | None:
    """SFT vs DPO on the held-out questions (evaluation.score per adapter) and the judge's win rate, written to
    OUTPUT_DIR/evaluation/. A judge whose weights were released for DPO is loaded again."""
    if not questions:
        print("[evaluate] no held-out questions (EVAL_SAMPLES=0): no SFT vs DPO comparison")
        return None
    for_generation(model, plan.backend)
    results = compare_stages(model, tokenizer, questions, kind, style, cfg.MAX_NEW_TOKENS, cfg.EVAL_BATCH_SIZE,
                             cfg.SEED)
    if judge is None or (isinstance(judge, ModelJudge) and judge.model is None):
        judge = load_judge(cfg, plan, style, model, tokenizer, base)
    win = win_rate(judge, questions, results, style)
    report = write_dpo_report(out / "evaluation", results, win, questions,
                              {"data": cfg.DATASET or "the SFT run's validation.jsonl", "kind": kind,
                               "max_new_tokens": cfg.MAX_NEW_TOKENS}, log_history)
    print(f"[evaluate] SFT vs DPO -> {report}")
    return dpo_comparison(results, win)


def run_metrics(comparison: dict | None, counts: dict, log_history: list[dict], train_loss) -> dict:
    """results.json's headline numbers: the DPO model's metrics, SFT's beside them, the pairs and the margins."""
    first, last = margins(log_history)
    metrics = {"pairs": counts.get("pairs"), "train_loss": train_loss, "rewards_margin_first": first,
               "rewards_margin_last": last}
    if comparison:
        for name in comparison["dpo"]:
            metrics[name], metrics[f"sft_{name}"] = comparison["dpo"][name]["value"], comparison["sft"][name]["value"]
        metrics["judge_win_rate"] = (comparison.get("judge_win_rate") or {}).get("win_rate")
    return metrics
