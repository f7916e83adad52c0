"""Exports beside the adapter: a merged 16-bit model and GGUF files for llama.cpp / Ollama."""
from __future__ import annotations

import shutil
from pathlib import Path

from .errors import UserError

GGUF_METHODS = ("q4_k_m", "q8_0", "f16")


def check_exports(save_gguf: str, backend: str) -> list[str]:
    """Preflight: refuse what cannot work; return notes to print."""
    if not save_gguf:
        return []
    if save_gguf not in GGUF_METHODS:
        raise UserError(f"SAVE_GGUF={save_gguf!r}: use one of {', '.join(GGUF_METHODS)}, or '' for no GGUF.")
    if backend != "unsloth":
        raise UserError("SAVE_GGUF needs the Unsloth backend (its save_pretrained_gguf drives llama.cpp). Fix: "
                        "--BACKEND=unsloth, or --SAVE_GGUF='' and convert the merged model with llama.cpp yourself.")
    if not (shutil.which("llama-quantize") or Path("llama.cpp").is_dir()):
        return ["GGUF export needs llama.cpp: Unsloth will try to build it at the end of the run (needs internet, "
                "git and cmake). If that fails, the adapter is already saved and only the GGUF file is missing."]
    return []


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
    try:
        model.save_pretrained_gguf(str(out_dir), tokenizer, quantization_method=method)
    except Exception as e:  # llama.cpp missing or failing to build: say so, the adapter is safe
        raise UserError(f"GGUF export failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). It "
                        f"needs llama.cpp (llama-quantize); build it (cmake) or run on a machine with internet where "
                        f"Unsloth can build it. The adapter and the merged model are already saved.") from None
    return out_dir
