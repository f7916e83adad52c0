"""Exports beside the adapter: a merged 16-bit model and GGUF files for llama.cpp / Ollama."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

GGUF_METHODS = ("q4_k_m", "q8_0", "f16")


@dataclass(frozen=True)
class ExportPlan:
    merged: bool
    gguf: str  # "" = none, else the quantization method


def check_exports(save_merged: bool, save_gguf: str, backend: str, model_path: str) -> ExportPlan:
    """Preflight, before any model loads: refuse what cannot work, print what may not."""
    if save_gguf and save_gguf not in GGUF_METHODS:
        raise UserError(f"SAVE_GGUF={save_gguf!r}: use one of {', '.join(GGUF_METHODS)}, or '' for no GGUF.")
    if save_gguf and backend != "unsloth":
        raise UserError("SAVE_GGUF needs the Unsloth backend (its save_pretrained_gguf drives llama.cpp). Fix: "
                        "--BACKEND=unsloth, or --SAVE_GGUF='' and convert the merged model with llama.cpp yourself.")
    if save_gguf and not (shutil.which("llama-quantize") or Path("llama.cpp").is_dir()):
        print("[preflight] GGUF export needs llama.cpp: Unsloth will try to build it at the end of the run (needs "
              "internet, git and cmake). If that fails, the adapter is already saved and pushed.")
    if save_merged and backend != "unsloth" and _is_quantized(model_path):
        raise UserError(f"SAVE_MERGED=True on the transformers backend with the pre-quantized {model_path!r}: the "
                        f"merge would fold the adapter into 4-bit weights. Fix: --BACKEND=unsloth (it merges into "
                        f"the 16-bit original), or set MODEL_NAME to the 16-bit base model.")
    return ExportPlan(bool(save_merged), save_gguf)


def _is_quantized(model_path: str) -> bool:
    """Whether the checkpoint itself stores quantized weights (its config carries a quantization_config)."""
    from transformers import AutoConfig
    try:
        return getattr(AutoConfig.from_pretrained(model_path), "quantization_config", None) is not None
    except (OSError, ValueError):  # offline and not cached: the name is the remaining evidence
        return "bnb-4bit" in model_path.lower() or "4bit" in model_path.lower()


def run_exports(plan: ExportPlan, model, tokenizer, backend: str, base_path: str, adapter_dir: Path,
                out: Path) -> bool:
    """The exports, after the adapter is saved and pushed: a failure is reported, never raised. False if one
    failed."""
    jobs = []
    if plan.merged:
        jobs.append(("merged 16-bit model",
                     lambda: save_merged(model, tokenizer, backend, base_path, adapter_dir, out / "merged")))
    if plan.gguf:
        jobs.append((f"GGUF ({plan.gguf})", lambda: save_gguf(model, tokenizer, out / "gguf", plan.gguf)))
    ok = True
    for what, job in jobs:
        try:
            print(f"[export] {what} -> {job()}")
        except Exception as e:  # llama.cpp missing, disk full...: the adapter is already saved (and pushed)
            ok = False
            print(f"[export] {what} FAILED ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). The "
                  f"adapter in {adapter_dir} is saved (and pushed, if PUSH_TO_HUB was set); only this export is "
                  f"missing.")
    return ok


def merge_adapter(base_path: str, adapter_dir: Path, out_dir: Path, dtype=None) -> Path:
    """peft's merge_and_unload on a fresh 16-bit (or fp32 on CPU) copy of the base: the adapter folds into it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    dtype = dtype or (torch.float16 if torch.cuda.is_available() else torch.float32)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    if getattr(base.config, "quantization_config", None):
        raise UserError(f"{base_path} is a quantized checkpoint: merging into it would save 4-bit weights. Fix: use "
                        f"the Unsloth backend (it merges into the 16-bit original), or set MODEL_NAME to the "
                        f"16-bit base.")
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(out_dir)
    return out_dir


def save_merged(model, tokenizer, backend: str, base_path: str, adapter_dir: Path, out_dir: Path) -> Path:
    if backend == "unsloth":
        model.save_pretrained_merged(str(out_dir), tokenizer, save_method="merged_16bit")
        return out_dir
    return merge_adapter(base_path, adapter_dir, out_dir)


def save_gguf(model, tokenizer, out_dir: Path, method: str) -> Path:
    """Unsloth's GGUF export; it needs llama.cpp (llama-quantize), which Unsloth builds where it has internet."""
    model.save_pretrained_gguf(str(out_dir), tokenizer, quantization_method=method)
    return out_dir
