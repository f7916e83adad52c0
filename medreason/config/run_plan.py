"""Automatic choices made once per run (preset when none is named, CPU sizing, backend, precision), each with its
reason."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from medreason.config import distributed, hardware
from medreason.model.embedded import EMBEDDED
from medreason.config.errors import UserError

# The GPU default a CPU run cannot use: left as is on a machine with no CUDA, the script switches to a CPU preset.
GPU_DEFAULT_MODEL = "unsloth/Llama-3.2-3B-Instruct-bnb-4bit"
DEMO_PRESET, SMALL_MODEL_PRESET = "demo", "smollm2"  # configs/demo.yaml, configs/smollm2.yaml


@dataclass
class Plan:
    backend: str  # "unsloth" or "transformers"
    device: str  # "cuda", "mps" or "cpu"
    precision: str  # "bf16", "fp16" or "fp32": the trainer's mixed precision
    load_in_4bit: bool
    optim: str
    demo: bool = False  # the offline demo (configs/demo.yaml)
    reasons: list[str] = field(default_factory=list)
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


def size_for_cpu(cfg, origins: dict[str, str], device: str) -> dict[str, str]:
    """GPU-sized defaults a CPU should not use, changed unless a preset or the command line set them: {name: why}.
    Each change is recorded in origins as "sized for CPU"."""
    if device == "cuda":
        return {}
    changes = {}
    if "EVAL_SAMPLES" not in origins and cfg.EVAL_SAMPLES > CPU_EVAL_SAMPLES:
        cfg.EVAL_SAMPLES = CPU_EVAL_SAMPLES
        changes["EVAL_SAMPLES"] = (f"{CPU_EVAL_SAMPLES} on a CPU (generation runs at ~12 tokens/s here; the GPU "
                                   f"default of 20 answers per model would take over an hour)")
    if "GRADIENT_CHECKPOINTING" not in origins and cfg.GRADIENT_CHECKPOINTING:
        cfg.GRADIENT_CHECKPOINTING = False
        changes["GRADIENT_CHECKPOINTING"] = ("off on a CPU: activations live in RAM, not in a T4's 15 GB, and "
                                              "recomputing them made each step 1.4x slower (bench/RESULTS.md)")
    origins.update({name: "sized for CPU" for name in changes})
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


def plan_run(cfg, origins: dict[str, str]) -> Plan:
    """Device, backend, precision and optimizer for these settings, each with its reason (CPU sizing included)."""
    machine = hardware.detect()
    device = machine.device
    reasons = [f"device: {machine.describe()}"]
    if origins.get("PRESET", "").startswith("automatic"):
        reasons.append(f"PRESET={cfg.PRESET!r}: {origins['PRESET'][len('automatic: '):]}")
    demo = cfg.PRESET == DEMO_PRESET
    if demo:
        reasons.append(f"DEMO MODE: the embedded SmolLM2-135M on the shipped illustrative rows (the minutes for this "
                       f"CPU are estimated before training starts), written to its own folder {cfg.OUTPUT_DIR!r} "
                       f"(settings given on the command line still win)")
    reasons += [f"{name}: {why}. --{name}=... sets it." for name, why in size_for_cpu(cfg, origins, device).items()]
    processes = distributed.world_size()
    reasons.append(effective_batch(cfg, origins, processes))
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
    return Plan(backend, device, precision, load_in_4bit, optim, demo, reasons, processes)


def effective_batch(cfg, origins: dict[str, str], processes: int) -> str:
    """Rows per optimizer update = processes x BATCH_SIZE x GRAD_ACCUM; GLOBAL_BATCH, when set, fixes GRAD_ACCUM so
    that moving from 1 to N GPUs keeps the recipe. Returns the sentence that says so."""
    per_step = processes * cfg.BATCH_SIZE
    if cfg.GLOBAL_BATCH is not None:
        if cfg.GLOBAL_BATCH < 1 or cfg.GLOBAL_BATCH % per_step:
            nearest = per_step * max(1, round(cfg.GLOBAL_BATCH / per_step))
            raise UserError(f"GLOBAL_BATCH={cfg.GLOBAL_BATCH} is not a multiple of processes ({processes}) x "
                            f"BATCH_SIZE ({cfg.BATCH_SIZE}) = {per_step}. Fix: --GLOBAL_BATCH={nearest}, or another "
                            f"BATCH_SIZE.")
        if origins.get("GRAD_ACCUM") == "command line" and cfg.GRAD_ACCUM != cfg.GLOBAL_BATCH // per_step:
            raise UserError(f"GRAD_ACCUM={cfg.GRAD_ACCUM} and GLOBAL_BATCH={cfg.GLOBAL_BATCH} disagree with "
                            f"{processes} process(es) x BATCH_SIZE {cfg.BATCH_SIZE}. Fix: give one of the two.")
        cfg.GRAD_ACCUM = cfg.GLOBAL_BATCH // per_step
        origins["GRAD_ACCUM"] = "from GLOBAL_BATCH"
    rows = per_step * cfg.GRAD_ACCUM
    said = (f"effective batch: {processes} process{'es' if processes > 1 else ''} x BATCH_SIZE {cfg.BATCH_SIZE} x "
            f"GRAD_ACCUM {cfg.GRAD_ACCUM} = {rows} rows per optimizer update")
    if cfg.GLOBAL_BATCH is not None:
        return said + f" (GRAD_ACCUM set from GLOBAL_BATCH={cfg.GLOBAL_BATCH})"
    if processes > 1:
        return said + (f"; with one process it would be {cfg.BATCH_SIZE * cfg.GRAD_ACCUM}: --GLOBAL_BATCH="
                       f"{cfg.BATCH_SIZE * cfg.GRAD_ACCUM} keeps that recipe")
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
