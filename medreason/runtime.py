"""Automatic choices made once per run (hardware, backend, precision, demo profile), each with its reason."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from . import hardware
from .data import DEMO_DATASET
from .embedded import EMBEDDED
from .errors import UserError

# The GPU default a CPU run cannot use: left as is on a machine with no CUDA, the script switches to the demo.
GPU_DEFAULT_MODEL = "unsloth/Llama-3.2-3B-Instruct-bnb-4bit"

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# The embedded 135M model's recipe, measured on real medical-o1 rows on 2 CPU cores (experiments/LOG.md, runs C, F,
# G): 19 of 20 unseen answers closed <think> and <response> after 40 updates of 4 rows (8.6 minutes; 48 updates:
# 20 of 20 in 10.9). What it takes: lr 1e-3 with LoRA on all seven linear layers (2e-4, or attention only, never
# learn the layout at this size), and chains of thought shortened to ~120 words (with whole ones the model learns to
# open <think> but circles for 850 words without closing it). Batch 1 is the fastest split on a CPU (bench/).
SMALL_MODEL_RECIPE = dict(
    LEARNING_RATE=1e-3, TARGET_MODULES=ALL_LINEAR, MAX_THINK_WORDS=120, MAX_SEQ_LENGTH=768, BATCH_SIZE=1,
    GRAD_ACCUM=4, MAX_STEPS=40, EVAL_STEPS=20, SAVE_STEPS=20, MAX_NEW_TOKENS=512, GRADIENT_CHECKPOINTING=False,
)

# The whole demo (training, evaluation, saving) takes about 3 minutes on 2 CPU cores: the recipe above, sized for the
# shipped illustrative rows (their chains of thought are ~40 words, so MAX_THINK_WORDS leaves them whole), in run B's
# batches of 4 in random order: length-grouped batches of the same rows gave 4/6 answers in form instead of 6/6.
DEMO_PROFILE = dict(
    SMALL_MODEL_RECIPE, MODEL_NAME=EMBEDDED, DATASET=str(DEMO_DATASET), MAX_SEQ_LENGTH=512, VAL_SIZE=6,
    TRAIN_SAMPLES=None, BATCH_SIZE=4, GRAD_ACCUM=1, MAX_STEPS=30, EVAL_STEPS=15, SAVE_STEPS=15, EVAL_SAMPLES=6,
    MAX_NEW_TOKENS=256, EVAL_BATCH_SIZE=6, PUSH_TO_HUB="dry-run", GROUP_BY_LENGTH=False, LOGGING_STEPS=5,
    OUTPUT_DIR="outputs/demo-smollm2-135m",  # never the real run's folder: its checkpoints would be resumed there
)


@dataclass
class Plan:
    backend: str  # "unsloth" or "transformers"
    device: str  # "cuda", "mps" or "cpu"
    precision: str  # "bf16", "fp16" or "fp32": the trainer's mixed precision
    load_in_4bit: bool
    optim: str
    demo_settings: list[str]  # the settings the demo profile changed; empty outside demo mode
    reasons: list[str] = field(default_factory=list)
    cpu_settings: list[str] = field(default_factory=list)  # the settings sized down for a CPU
    recipe_settings: list[str] = field(default_factory=list)  # set by SMALL_MODEL_RECIPE for the embedded model


def apply_demo_profile(cfg, overridden: set[str], device: str) -> list[str]:
    """On a machine with no CUDA GPU and the GPU default model, switch to the embedded demo (user overrides win)."""
    if device == "cuda" or cfg.MODEL_NAME != GPU_DEFAULT_MODEL or "MODEL_NAME" in overridden:
        return []
    changed = []
    for name, value in DEMO_PROFILE.items():
        if hasattr(cfg, name) and name not in overridden:
            setattr(cfg, name, value)
            changed.append(name)
    return changed


def apply_small_model_recipe(cfg, overridden: set[str]) -> list[str]:
    """The embedded model (outside the demo, e.g. on your own rows) trains with SMALL_MODEL_RECIPE; overrides win."""
    if cfg.MODEL_NAME != EMBEDDED:
        return []
    changed = [name for name in SMALL_MODEL_RECIPE if name not in overridden and hasattr(cfg, name)
               and getattr(cfg, name) != SMALL_MODEL_RECIPE[name]]
    for name in changed:
        setattr(cfg, name, SMALL_MODEL_RECIPE[name])
    return changed


CPU_EVAL_SAMPLES = 4  # held-out answers generated per model on a CPU unless EVAL_SAMPLES is given on the command line


def size_for_cpu(cfg, overridden: set[str], device: str) -> dict[str, str]:
    """GPU-sized settings a CPU should not use, changed unless given on the command line: {name: why}."""
    if device == "cuda":
        return {}
    changes = {}
    if "EVAL_SAMPLES" not in overridden and cfg.EVAL_SAMPLES > CPU_EVAL_SAMPLES:
        cfg.EVAL_SAMPLES = CPU_EVAL_SAMPLES
        changes["EVAL_SAMPLES"] = (f"{CPU_EVAL_SAMPLES} on a CPU (generation runs at ~12 tokens/s here; the GPU "
                                   f"default of 20 answers per model would take over an hour)")
    if "GRADIENT_CHECKPOINTING" not in overridden and cfg.GRADIENT_CHECKPOINTING:
        cfg.GRADIENT_CHECKPOINTING = False
        changes["GRADIENT_CHECKPOINTING"] = ("off on a CPU: activations live in RAM, not in a T4's 15 GB, and "
                                              "recomputing them made each step 1.4x slower (bench/RESULTS.md)")
    return changes


def _import_unsloth() -> str | None:
    """Import Unsloth now (it must come before transformers/peft/trl to patch them); the reason if it cannot."""
    if importlib.util.find_spec("unsloth") is None:
        return "unsloth is not installed (pip install --no-deps -r requirements-nodeps.txt)"
    try:
        import unsloth  # noqa: F401
    except Exception as e:  # Unsloth raises plain Exceptions/NotImplementedError on unsupported hardware
        return f"unsloth failed to import: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def plan_run(cfg, overridden: set[str]) -> Plan:
    machine = hardware.detect()
    device = machine.device
    reasons = [f"device: {machine.describe()}"]
    demo_settings = apply_demo_profile(cfg, overridden, device)
    recipe_settings = [] if demo_settings else apply_small_model_recipe(cfg, overridden)
    if recipe_settings:
        reasons.append(f"SMALL_MODEL_RECIPE for the embedded 135M model ({', '.join(recipe_settings)}): measured "
                       f"to make it answer in closed <think>/<response> form (experiments/LOG.md)")
    cpu_settings = {} if demo_settings else size_for_cpu(cfg, overridden, device)  # the demo is sized already
    reasons += [f"{name}: {why}. --{name}=... sets it." for name, why in cpu_settings.items()]
    if demo_settings:
        reasons.append(f"DEMO MODE: no CUDA GPU and MODEL_NAME left at {GPU_DEFAULT_MODEL!r}, so the embedded "
                       f"SmolLM2-135M and the shipped illustrative demo data are used, sized for about 3 minutes "
                       f"on 2 CPU cores, writing to its own folder {cfg.OUTPUT_DIR!r} (settings given on the "
                       f"command line still win)")
    backend = choose_backend(cfg.BACKEND, device, reasons)
    precision, why = hardware.choose_precision(cfg.PRECISION, machine, backend)
    reasons.append(f"precision: {why}")
    if device == "cuda":
        load_in_4bit, optim = cfg.LOAD_IN_4BIT, "adamw_8bit"
        reasons.append("optimizer: 8-bit AdamW (bitsandbytes) to save GPU memory")
    elif backend == "unsloth":
        load_in_4bit, optim = cfg.LOAD_IN_4BIT, "adamw_torch"
        if load_in_4bit:
            reasons.append("4-bit weights via bitsandbytes' CPU kernels (Unsloth's CPU mode)")
    else:
        load_in_4bit, optim = False, "adamw_torch"
        if cfg.LOAD_IN_4BIT:
            reasons.append(f"LOAD_IN_4BIT ignored on {device}: bitsandbytes 4-bit training needs CUDA on the "
                           f"transformers backend")
    return Plan(backend, device, precision, load_in_4bit, optim, demo_settings, reasons, list(cpu_settings),
                recipe_settings)


def choose_backend(requested: str, device: str, reasons: list[str]) -> str:
    """'unsloth' wherever it imports (its CPU mode included) unless BACKEND says otherwise; else transformers."""
    if requested not in {"auto", "unsloth", "transformers"}:
        raise UserError(f"BACKEND={requested!r}: choose 'auto', 'unsloth' or 'transformers'.")
    if requested == "transformers" or device == "mps":
        reasons.append("backend: transformers + peft (" + ("Unsloth has no MPS support)" if device == "mps"
                                                          else "BACKEND='transformers')"))
        return "transformers"
    why_not = _import_unsloth()
    if why_not and requested == "unsloth":
        raise UserError(f"BACKEND='unsloth' but {why_not}. Fix: install it, or --BACKEND=transformers.")
    if why_not:
        reasons.append(f"backend: transformers + peft, because {why_not}")
        return "transformers"
    reasons.append("backend: unsloth (fast LoRA kernels; default wherever it imports"
                   + (", here in its CPU mode)" if device == "cpu" else ")"))
    return "unsloth"
