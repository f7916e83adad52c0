"""The one place a run's settings are decided (settle): layered (settings.layer: constants -> preset -> command line),
then every automatic choice (preset when none is named, output folder, CPU sizing, VAL_SIZE for a small file,
GLOBAL_BATCH -> GRAD_ACCUM), each printed with its reason and recorded as the value's origin, then frozen; and the run
plan (device, backend, precision, optimizer) for those frozen settings. A rule applies only to a setting the script
declares, so no script declares a setting because a rule here reads it."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from medreason.config import distributed, hardware, settings
from medreason.config.settings import EMBEDDED, Draft, Settings
from medreason.config.errors import UserError

# The GPU default a CPU run cannot use: left as is on a machine with no CUDA, the script switches to a CPU preset.
GPU_DEFAULT_MODEL = "unsloth/Llama-3.2-3B-Instruct-bnb-4bit"
DEMO_PRESET, SMALL_MODEL_PRESET = "demo", "smollm2"  # configs/demo.yaml, configs/smollm2.yaml


@dataclass(frozen=True)
class Plan:
    backend: str  # "unsloth" or "transformers"
    device: str  # "cuda", "mps" or "cpu"
    precision: str  # "bf16", "fp16" or "fp32": the trainer's mixed precision
    load_in_4bit: bool
    optim: str
    demo: bool = False  # the offline demo (configs/demo.yaml)
    reasons: tuple[str, ...] = ()
    processes: int = 1  # under accelerate launch / torchrun: one per GPU


def automatic_preset(values: dict, given: set[str]) -> tuple[str, str] | None:
    """The preset a run gets when none is named: the embedded model's recipe, or on a machine with no CUDA GPU and
    the GPU default model, the demo (nothing given) or that recipe on the user's DATASET. None: the constants."""
    if values["MODEL_NAME"] == EMBEDDED:
        return SMALL_MODEL_PRESET, ("MODEL_NAME='embedded', so the recipe measured for the 135M model "
                                    "(configs/smollm2.yaml, experiments/LOG.md)")
    if "MODEL_NAME" in given or values["MODEL_NAME"] != GPU_DEFAULT_MODEL or hardware.detect().device == "cuda":
        return None
    if "DATASET" in given:
        return SMALL_MODEL_PRESET, ("no CUDA GPU for the default Llama-3.2-3B, so your DATASET trains the embedded "
                                    "SmolLM2-135M with the recipe measured on real rows (configs/smollm2.yaml)")
    return DEMO_PRESET, "no CUDA GPU and no MODEL_NAME or DATASET given: the offline demo (configs/demo.yaml)"


CPU_EVAL_SAMPLES = 4  # held-out answers generated per model on a CPU unless EVAL_SAMPLES is given on the command line
VAL_SHARE = 10  # VAL_SIZE left at the script's constant holds out at most 1/VAL_SHARE of a small file's rows


def settle(namespace: dict, argv: list[str], automatic=None, preset_dir: Path = settings.PRESET_DIR,
           output: Callable[[Draft], None] | None = None,
           rows: Callable[[str, str | None], int | None] | None = None) -> tuple[Settings, Plan]:
    """A script's settings, decided once and frozen, with the run plan. `automatic` picks a preset when none is named;
    `output(draft)` places an empty OUTPUT_DIR (draft.choose); `rows(DATASET, DATASET_CONFIG)` counts a local file's
    usable rows for VAL_SIZE (None: unknown, e.g. a Hub dataset, which is left to the data step)."""
    draft = settings.layer(namespace, argv, automatic, preset_dir)
    machine = hardware.detect()
    if output is not None:
        output(draft)
    for name, why in size_for_cpu(draft, machine.device).items():
        draft.say(f"{name}: {why}. --{name}=... sets it.")
    if rows is not None:
        size_validation(draft, rows)
    if draft.declares("BATCH_SIZE") and draft.declares("GRAD_ACCUM"):
        draft.say(effective_batch(draft, distributed.world_size()))
    cfg = draft.freeze()
    return cfg, plan_run(cfg, machine)


def size_for_cpu(draft: Draft, device: str) -> dict[str, str]:
    """GPU-sized defaults a CPU should not use, changed unless a preset or the command line set them: {name: why}.
    Each change is recorded as the value's origin, "sized for CPU"."""
    if device == "cuda":
        return {}
    changes = {}
    if draft.declares("EVAL_SAMPLES") and not draft.set_by_user("EVAL_SAMPLES") and \
            draft.EVAL_SAMPLES > CPU_EVAL_SAMPLES:
        changes["EVAL_SAMPLES"] = (CPU_EVAL_SAMPLES, f"{CPU_EVAL_SAMPLES} on a CPU (generation runs at ~12 tokens/s "
                                   f"here; the GPU default of 20 answers per model would take over an hour)")
    if draft.declares("GRADIENT_CHECKPOINTING") and not draft.set_by_user("GRADIENT_CHECKPOINTING") and \
            draft.GRADIENT_CHECKPOINTING:
        changes["GRADIENT_CHECKPOINTING"] = (False, "off on a CPU: activations live in RAM, not in a T4's 15 GB, and "
                                                    "recomputing them made each step 1.4x slower (bench/RESULTS.md)")
    for name, (value, why) in changes.items():
        draft.choose(name, value, "sized for CPU", why)  # settle says it, with its --NAME hint
    return {name: why for name, (value, why) in changes.items()}


def size_validation(draft: Draft, rows: Callable[[str, str | None], int | None]) -> None:
    """VAL_SIZE left at the script's constant (100, sized for the Hub dataset) holds out at most 10% of a small file's
    usable rows, so 150 rows keep 135 to train on instead of 50. A preset's or the command line's VAL_SIZE is kept
    (the data step refuses one that leaves no training rows)."""
    if not draft.declares("VAL_SIZE") or draft.set_by_user("VAL_SIZE"):
        return
    count = rows(draft.DATASET, getattr(draft, "DATASET_CONFIG", None))
    if count is None or count < 2 or draft.VAL_SIZE <= count // VAL_SHARE:
        return
    default, sized = draft.VAL_SIZE, max(1, count // VAL_SHARE)
    left = f"{count - default} rows" if count > default else "no rows"
    why = (f"{sized}, 10% of the {count} usable rows of {draft.DATASET} (the default {default} would leave "
           f"{left} to train on)")
    draft.choose("VAL_SIZE", sized, f"sized for the data ({count} rows)", why)
    draft.say(f"VAL_SIZE: {why}. --VAL_SIZE=... sets it.")


def _import_unsloth() -> str | None:
    """Import Unsloth now (it must come before transformers/peft/trl to patch them); the reason if it cannot."""
    if importlib.util.find_spec("unsloth") is None:
        return "unsloth is not installed (pip install --no-deps -r requirements-nodeps.txt)"
    try:
        import unsloth  # noqa: F401
    except Exception as e:  # Unsloth raises plain Exceptions/NotImplementedError on unsupported hardware
        return f"unsloth failed to import: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def plan_run(cfg: Settings, machine: hardware.Hardware | None = None) -> Plan:
    """Device, backend, precision and optimizer for these frozen settings, each with its reason; the automatic
    choices settle made (CPU sizing, VAL_SIZE, the effective batch) are said in their place."""
    machine = machine or hardware.detect()
    device = machine.device
    reasons = [f"device: {machine.describe()}"]
    preset = getattr(cfg, "PRESET", "")
    if cfg.origin("PRESET").kind == "automatic":
        reasons.append(f"PRESET={preset!r}: {cfg.origin('PRESET').reason}")
    demo = preset == DEMO_PRESET
    if demo:
        reasons.append(f"DEMO MODE: the embedded SmolLM2-135M on the shipped illustrative rows (the minutes for this "
                       f"CPU are estimated before training starts), written to its own folder {cfg.OUTPUT_DIR!r} "
                       f"(settings given on the command line still win)")
    reasons += cfg.choices
    processes = distributed.world_size()
    backend = choose_backend(cfg.BACKEND, device, reasons, cfg.PRECISION)
    precision, why = hardware.choose_precision(cfg.PRECISION, machine, backend)
    reasons.append(f"precision: {why}")
    if why.startswith("WARNING"):
        print(f"[plan] {why}")
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
    return Plan(backend, device, precision, load_in_4bit, optim, demo, tuple(reasons), processes)


def effective_batch(draft: Draft, processes: int) -> str:
    """Rows per optimizer update = processes x BATCH_SIZE x GRAD_ACCUM; GLOBAL_BATCH, when set, fixes GRAD_ACCUM so
    that moving from 1 to N GPUs keeps the recipe. Returns the sentence that says so."""
    per_step = processes * draft.BATCH_SIZE
    global_batch = getattr(draft, "GLOBAL_BATCH", None)
    if global_batch is not None:
        if global_batch < 1 or global_batch % per_step:
            nearest = per_step * max(1, round(global_batch / per_step))
            raise UserError(f"GLOBAL_BATCH={global_batch} is not a multiple of processes ({processes}) x "
                            f"BATCH_SIZE ({draft.BATCH_SIZE}) = {per_step}. Fix: --GLOBAL_BATCH={nearest}, or another "
                            f"BATCH_SIZE.")
        if draft.origin("GRAD_ACCUM").kind == settings.COMMAND_LINE and draft.GRAD_ACCUM != global_batch // per_step:
            raise UserError(f"GRAD_ACCUM={draft.GRAD_ACCUM} and GLOBAL_BATCH={global_batch} disagree with "
                            f"{processes} process(es) x BATCH_SIZE {draft.BATCH_SIZE}. Fix: give one of the two.")
        draft.choose("GRAD_ACCUM", global_batch // per_step, "from GLOBAL_BATCH",
                     f"GLOBAL_BATCH {global_batch} / ({processes} process(es) x BATCH_SIZE {draft.BATCH_SIZE})")
    rows = per_step * draft.GRAD_ACCUM
    said = (f"effective batch: {processes} process{'es' if processes > 1 else ''} x BATCH_SIZE {draft.BATCH_SIZE} x "
            f"GRAD_ACCUM {draft.GRAD_ACCUM} = {rows} rows per optimizer update")
    if global_batch is not None:
        return said + f" (GRAD_ACCUM set from GLOBAL_BATCH={global_batch})"
    if processes > 1:
        return said + (f"; with one process it would be {draft.BATCH_SIZE * draft.GRAD_ACCUM}: --GLOBAL_BATCH="
                       f"{draft.BATCH_SIZE * draft.GRAD_ACCUM} keeps that recipe")
    return said


def choose_backend(requested: str, device: str, reasons: list[str], precision: str = "auto",
                   generation: bool = False) -> str:
    """The one backend rule, for training (plan_run: SFT, DPO, RL) and for answering (loading.choose_backend:
    evaluate.py, inference.py, the page). On CUDA: Unsloth wherever it imports, and a failed import is said loudly.
    On a CPU: Unsloth's CPU mode computes in bf16, so it trains only where this CPU computes bf16 faster than fp32
    (measured: hardware.cpu_rates); elsewhere transformers + peft in fp32. Answering on a CPU uses transformers +
    peft (the generation engine measured in bench/RESULTS.md) unless --backend unsloth."""
    if requested not in {"auto", "unsloth", "transformers"}:
        raise UserError(f"BACKEND={requested!r}: choose 'auto', 'unsloth' or 'transformers'.")
    if requested == "transformers" or device == "mps":
        reasons.append("backend: transformers + peft (" + ("Unsloth has no MPS support)" if device == "mps"
                                                          else "BACKEND='transformers')"))
        return "transformers"
    if distributed.uses_fsdp():
        if requested == "unsloth":
            raise UserError("BACKEND='unsloth' with an FSDP config: this project's FSDP path is QLoRA on transformers "
                            "+ peft. Fix: --BACKEND=auto or transformers, or configs/accelerate/ddp.yaml.")
        reasons.append("backend: transformers + peft, because FSDP shards the model (QLoRA with the 4-bit weights "
                       "stored in the compute dtype); Unsloth's own FSDP2 mode is not wired into this project")
        return "transformers"
    if distributed.is_distributed() and device == "cpu":
        if requested == "unsloth":
            raise UserError("BACKEND='unsloth' with several CPU processes: Unsloth's CPU mode is a single-process "
                            "path. Fix: --BACKEND=transformers, or one process.")
        reasons.append(f"backend: transformers + peft, because {distributed.world_size()} CPU processes train over "
                       f"gloo and Unsloth's CPU mode is a single-process path")
        return "transformers"
    if device == "cpu" and requested == "auto":
        if (why_fp32 := _cpu_wants_fp32(precision, generation)) is not None:
            reasons.append(f"backend: transformers + peft, because {why_fp32}")
            return "transformers"
    why_not = _import_unsloth()
    if why_not and requested == "unsloth":
        raise UserError(f"BACKEND='unsloth' but {why_not}. Fix: install it, or --BACKEND=transformers.")
    if why_not:
        reasons.append(f"backend: transformers + peft, because {why_not}")
        if device == "cuda":
            warn_unsloth_fallback(why_not, reasons)
        return "transformers"
    reasons.append(_unsloth_reason(device))
    return "unsloth"


def _cpu_wants_fp32(precision: str, generation: bool) -> str | None:
    """Why BACKEND='auto' on a CPU is transformers + peft (fp32 or what PRECISION asks), or None for Unsloth's CPU
    mode: only where bf16 is this CPU's faster dtype, measured."""
    if generation:
        return "answering on a CPU runs the transformers generation engine (--backend unsloth for Unsloth's)"
    if precision == "fp32":
        return "PRECISION='fp32' and Unsloth's CPU mode computes in bf16"
    rates = hardware.cpu_rates()
    if precision == "bf16" or rates.bf16_faster:
        return None
    return (f"Unsloth's CPU mode computes in bf16 and this CPU computes bf16 {rates.bf16_slowdown():.1f}x slower than "
            f"fp32 ({rates.describe()}), so fp32 is the fast path here (--BACKEND=unsloth forces Unsloth)")


def _unsloth_reason(device: str) -> str:
    if device == "cpu":
        rates = hardware.cpu_rates()
        where = (f"in its CPU mode, bf16: this CPU computes bf16 {1 / rates.bf16_slowdown():.1f}x faster than fp32 "
                 f"({rates.describe()})" if rates.bf16_faster else "in its CPU mode, bf16, as asked")
    else:
        where = "fast LoRA kernels; default wherever it imports"
    return ("backend: unsloth (" + where + ")"
            + (f"; under DDP with {distributed.world_size()} processes Unsloth 2026.10.9 puts each process's "
               f"model on its LOCAL_RANK GPU and sets DDP's unused-parameter search itself (not yet run on "
               f"several GPUs by this project: --BACKEND=transformers is the tested path)"
               if distributed.is_distributed() else ""))


def warn_unsloth_fallback(why_not: str, reasons: list[str]) -> None:
    """A GPU run that wanted Unsloth and fell back: said loudly, with what it costs and how to make it an error."""
    line = (f"WARNING: Unsloth is not used on this GPU: {why_not}. The run falls back to transformers + peft, about "
            f"2x slower and with more GPU memory (Unsloth's figures; 1.9x on this project's CPU bench). Fix the "
            f"import, or run with --BACKEND=unsloth (--backend unsloth in evaluate.py, inference.py and app.py) to "
            f"make this an error instead of a fallback.")
    reasons.append(line)
    print(f"[plan] {line}", flush=True)
