"""The run record, training_info.json: the one home of its file name, its writer and reader, the settings that decide
a stage's weights, and the rule that says whether a finished adapter is reused or a checkpoint resumed.

It is saved with every adapter (and next to the checkpoints, before training starts): inference asks exactly as the
model was trained (base model, prompt style and system prompt, template date, answer budget); a rerun whose adapter
finished with the same weight settings is not trained again; a checkpoint of other settings is not resumed."""
from __future__ import annotations

import json
from pathlib import Path

from medreason.config.errors import UserError

FILE_NAME = "training_info.json"  # beside the adapter, in OUTPUT_DIR/checkpoints, and beside a GGUF export

# The settings each trainer shares (SFT, DPO, RL): with the data, they decide the weights.
TRAINER_SETTINGS = ("MAX_SEQ_LENGTH", "LEARNING_RATE", "BATCH_SIZE", "GRAD_ACCUM", "MAX_STEPS", "LR_SCHEDULER",
                    "WARMUP_STEPS", "WEIGHT_DECAY", "SEED")
# Recorded from the run's resolved plan, not the settings: BACKEND="auto" and PRECISION="auto" pick differently on
# two machines (Unsloth or not, bf16 or fp16), and LOAD_IN_4BIT=True is ignored on a CPU's transformers backend, so
# only what the run really trained with says whether two adapters are the same weights.
RESOLVED = ("LOAD_IN_4BIT", "BACKEND", "PRECISION")
# The settings that decide each stage's weights: a finished adapter with the same ones is not trained again.
WEIGHT_SETTINGS = {
    "sft": ("MODEL_NAME", "DATASET", "DATASET_CONFIG", "TRAIN_SAMPLES", "VAL_SIZE", "MAX_THINK_WORDS", "PROMPT_STYLE",
            "LORA_R", "LORA_ALPHA", "LORA_DROPOUT", "TARGET_MODULES", "EARLY_STOPPING_PATIENCE", "SAFETY_MIX",
            *TRAINER_SETTINGS, *RESOLVED),
    "dpo": ("SFT_ADAPTER", "DATASET", "DATASET_CONFIG", "TRAIN_QUESTIONS", "EVAL_SAMPLES", "NUM_CANDIDATES",
            "TEMPERATURE", "TOP_P", "MAX_NEW_TOKENS", "JUDGE", "JUDGE_MODEL", "JUDGE_MAX_NEW_TOKENS", "JUDGE_SAMPLES",
            "JUDGE_TEMPERATURE", "MIN_MARGIN", "BETA", *TRAINER_SETTINGS, *RESOLVED),
    "rl": ("SFT_ADAPTER", "DATASET", "DATASET_CONFIG", "TRAIN_QUESTIONS", "EVAL_SAMPLES", "BENCHMARKS", "REWARDS",
           "VERIFIER", "VERIFIER_MODEL", "NUM_GENERATIONS", "TEMPERATURE", "TOP_P", "MAX_NEW_TOKENS", "BETA",
           "LOSS_TYPE", "SCALE_REWARDS", *TRAINER_SETTINGS, *RESOLVED),
}
# What a checkpoint must match to be resumed. SFT: the base model and how it was held (4-bit, backend, precision);
# its LoRA shape is read from the checkpoint's own adapter_config.json (train/sft.py); a resumed run may change the
# rest, e.g. MAX_STEPS to train longer, until that run has finished: then only MAX_STEPS (resume_differences). A stage
# not named here (DPO, RL): every weight setting, since its pairs and
# questions go with the checkpoint.
RESUME_SETTINGS = {"sft": ("MODEL_NAME", *RESOLVED)}

# A record written before a setting was recorded: the value every run had then. SAFETY_MIX (added with the safety
# set) was always 0.0 before it existed.
BEFORE_RECORDED = {"SAFETY_MIX": 0.0}
# LOAD_IN_4BIT, BACKEND and PRECISION joined trained_by in this version, but every record since the T4 run (#12) also
# holds the resolved values at its top level (load_in_4bit, backend, precision): those are read instead. A record
# older still does not say how its base was held: "not recorded" counts as a difference (no reuse, no resume), since
# reusing 4-bit weights as 16-bit ones (or the reverse) would be silent, and training again loses nothing kept.
TOP_LEVEL = {"LOAD_IN_4BIT": "load_in_4bit", "BACKEND": "backend", "PRECISION": "precision"}
_NOT_RECORDED = object()


def trained_by(stage: str, cfg, plan, **given) -> dict:
    """{setting: value} that decide this stage's weights: the settings as resolved, the three RESOLVED ones from
    the plan; `given` supplies values that are not plain settings (DPO's and RL's SFT_ADAPTER, resolved)."""
    resolved = {"LOAD_IN_4BIT": plan.load_in_4bit, "BACKEND": plan.backend, "PRECISION": plan.precision}
    return {name: given[name] if name in given else resolved[name] if name in resolved else getattr(cfg, name)
            for name in WEIGHT_SETTINGS[stage]}


def write(folder: Path, record: dict, finished_at_step: int | None = None) -> Path:
    """OUTPUT_DIR/<folder>/training_info.json; `finished_at_step` (the step the trainer finished at) marks an adapter
    that finished training, which a rerun of the same settings reuses."""
    path = Path(folder) / FILE_NAME
    done = {} if finished_at_step is None else {"finished_at_step": int(finished_at_step)}
    path.write_text(json.dumps({**record, **done}, indent=2) + "\n")
    return path


def read(folder: Path) -> dict:
    """The record in `folder` ({} when there is none); a damaged one is a one-line UserError naming the file."""
    path = Path(folder) / FILE_NAME
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: damaged, not readable JSON ({type(e).__name__}: {str(e)[:120]}), e.g. the run was "
                        f"stopped while writing it. Fix: run the same training command again to write it anew, or "
                        f"delete it (the adapter is then asked with the default prompt style).") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: holds a JSON {type(record).__name__}, not a run record (an object). Fix: run the "
                        f"same training command again to write it anew, or delete it.")
    return record


def recorded(record: dict, name: str):
    """A setting's value in a record, as the code of its day used it (BEFORE_RECORDED, TOP_LEVEL)."""
    trained = record.get("trained_by")
    if isinstance(trained, dict) and name in trained:
        return trained[name]
    if name in TOP_LEVEL and TOP_LEVEL[name] in record:
        return record[TOP_LEVEL[name]]
    return BEFORE_RECORDED.get(name, _NOT_RECORDED)


def differences(record: dict, now: dict, names=None) -> list[str]:
    """'NAME old -> new' for each setting of `now` (or of `names`) the record holds otherwise, compared as JSON
    reads them back (a tuple is a list there)."""
    now = json.loads(json.dumps(now))
    changed = []
    for name in (now if names is None else [n for n in names if n in now]):
        old = recorded(record, name)
        if old is _NOT_RECORDED:
            changed.append(f"{name} not recorded -> {now[name]!r}")
        elif old != now[name]:
            changed.append(f"{name} {old!r} -> {now[name]!r}")
    return changed


def finished_step(out: Path, now: dict, say: str | None = None) -> int | None:
    """The step at which an earlier run of these very weight settings finished training and saved
    OUTPUT_DIR/adapter (it was then stopped, e.g. killed during the evaluation): None when training is still to do.
    With `say` (the log tag), an adapter that finished with other settings is named with what differs."""
    folder = Path(out) / "adapter"
    try:
        record = read(folder)
    except UserError as e:
        if say:
            print(f"[{say}] {e} Training again.")
        return None
    step = record.get("finished_at_step")
    if step is None:
        return None
    changed = differences(record, now)
    if changed and say:
        print(f"[{say}] {folder} finished training at step {step} with other settings ({'; '.join(changed)}): it is "
              f"not reused, and this run's adapter replaces it (BACKEND and PRECISION are compared as resolved "
              f"for the machine, since 'auto' picks differently on two machines)")
    return None if changed else step


def resume_differences(checkpoint_dir: Path, stage: str, now: dict) -> list[str]:
    """What the record beside the checkpoints holds otherwise among the settings a resumed run must keep
    (RESUME_SETTINGS): empty when they may be resumed. Without a record (checkpoints made by hand), SFT checks only
    the checkpoint's own adapter_config.json; DPO and RL refuse, since nothing ties their pairs to the checkpoint."""
    record = read(checkpoint_dir)
    if not record:
        return [] if stage == "sft" else [f"no {FILE_NAME} beside them"]
    if stage in RESUME_SETTINGS and _finished(checkpoint_dir, record):
        # the run that made these checkpoints finished: resuming its last one with another learning rate, dataset...
        # would train no step (or only the steps a longer MAX_STEPS adds) and save the old weights as this run's
        return [d for d in differences(record, now) if not d.startswith("MAX_STEPS ")]
    return differences(record, now, RESUME_SETTINGS.get(stage))


def _finished(checkpoint_dir: Path, record: dict) -> bool:
    """Whether the run recorded beside these checkpoints saved its final adapter (OUTPUT_DIR/adapter, same settings)."""
    try:
        adapter = read(Path(checkpoint_dir).parent / "adapter")
    except UserError:
        return False
    return adapter.get("finished_at_step") is not None and adapter.get("trained_by") == record.get("trained_by")
