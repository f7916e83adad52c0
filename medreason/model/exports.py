"""Exports beside the adapter: a merged 16-bit model, and GGUF files for llama.cpp / Ollama.

GGUF (medreason/model/gguf.py): the adapter is merged into a 16-bit copy of the base (peft's merge_and_unload, or
Unsloth's merge on its backend), converted with llama.cpp's own converter and quantized with llama.cpp's quantizer,
both from the llama-cpp-python the project installs: no internet at run time, either backend. GGUF_EXPORTER="unsloth"
uses Unsloth's save_pretrained_gguf instead (it builds llama.cpp itself, with internet, git and cmake).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from medreason.model import gguf, run_record
from medreason.config.errors import UserError

GGUF_EXPORTERS = ("llama.cpp", "unsloth")
UNSLOTH_GGUF_METHODS = ("q4_k_m", "q8_0", "f16")  # what the Unsloth path is offered here


@dataclass(frozen=True)
class ExportPlan:
    merged: bool
    gguf: tuple[str, ...] = ()  # quantization types; () = no GGUF
    exporter: str = "llama.cpp"  # or "unsloth"


def check_exports(save_merged: bool, save_gguf: str, backend: str, model_path: str,
                  exporter: str = "llama.cpp") -> ExportPlan:
    """Preflight, before any model loads: refuse what cannot work, print what may not."""
    if exporter not in GGUF_EXPORTERS:
        raise UserError(f"GGUF_EXPORTER={exporter!r}: use 'llama.cpp' (offline, either backend) or 'unsloth'.")
    methods = gguf.parse_methods(save_gguf)
    if methods and exporter == "unsloth":
        if backend != "unsloth":
            raise UserError("GGUF_EXPORTER='unsloth' needs the Unsloth backend (its save_pretrained_gguf). Fix: "
                            "--GGUF_EXPORTER=llama.cpp (works on both backends), or --BACKEND=unsloth.")
        if len(methods) > 1 or methods[0] not in UNSLOTH_GGUF_METHODS:
            raise UserError(f"SAVE_GGUF={save_gguf!r} with GGUF_EXPORTER='unsloth': one of "
                            f"{', '.join(UNSLOTH_GGUF_METHODS)}. Fix: one type, or --GGUF_EXPORTER=llama.cpp.")
        if not (shutil.which("llama-quantize") or Path("llama.cpp").is_dir()):
            print("[preflight] Unsloth's GGUF export needs llama.cpp: Unsloth will try to build it at the end of the "
                  "run (needs internet, git and cmake). If that fails, the adapter is already saved and pushed.")
    elif methods and (missing := gguf.missing_tools()):
        raise UserError(f"SAVE_GGUF={save_gguf!r}: {missing}")
    if (save_merged or methods) and backend != "unsloth" and _is_quantized(model_path):
        what = "SAVE_MERGED=True" if save_merged else "SAVE_GGUF"
        raise UserError(f"{what} on the transformers backend with the pre-quantized {model_path!r}: the "
                        f"merge would fold the adapter into 4-bit weights. Fix: --BACKEND=unsloth (it merges into "
                        f"the 16-bit original), or set MODEL_NAME to the 16-bit base model.")
    if methods:
        print(f"[preflight] GGUF after training: {', '.join(methods)} via "
              f"{'llama.cpp (llama-cpp-python, offline)' if exporter == 'llama.cpp' else 'Unsloth'}")
    return ExportPlan(bool(save_merged), methods, exporter)


def _is_quantized(model_path: str) -> bool:
    """Whether the checkpoint itself stores quantized weights (its config carries a quantization_config)."""
    from transformers import AutoConfig
    try:
        return getattr(AutoConfig.from_pretrained(model_path), "quantization_config", None) is not None
    except (OSError, ValueError):  # offline and not cached: the name is the remaining evidence
        return "bnb-4bit" in model_path.lower() or "4bit" in model_path.lower()


def run_exports(plan: ExportPlan, model, tokenizer, backend: str, base_path: str, adapter_dir: Path,
                out: Path, max_new_tokens: int = 1024) -> bool:
    """The exports, after the adapter is saved and pushed: a failure is reported, never raised. False if one
    failed."""
    jobs = []
    if plan.merged:
        jobs.append(("merged 16-bit model",
                     lambda: save_merged(model, tokenizer, backend, base_path, adapter_dir, out / "merged")))
    if plan.gguf and plan.exporter == "unsloth":
        jobs.append((f"GGUF ({plan.gguf[0]}, Unsloth)",
                     lambda: save_gguf(model, tokenizer, out / "gguf", plan.gguf[0])))
    elif plan.gguf:
        jobs.append((f"GGUF ({', '.join(plan.gguf)}, llama.cpp)",
                     lambda: export_gguf(plan, model, tokenizer, backend, base_path, adapter_dir, out,
                                         max_new_tokens)))
    ok = True
    for what, job in jobs:
        try:
            print(f"[export] {what} -> {job()}")
        except Exception as e:  # disk full, a converter failure...: the adapter is already saved (and pushed)
            ok = False
            print(f"[export] {what} FAILED ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). The "
                  f"adapter in {adapter_dir} is saved (and pushed, if PUSH_TO_HUB was set); only this export is "
                  f"missing.")
    return ok


def export_gguf(plan: ExportPlan, model, tokenizer, backend: str, base_path: str, adapter_dir: Path, out: Path,
                max_new_tokens: int) -> Path:
    """Merged 16-bit model (the SAVE_MERGED folder when there is one, else a temporary one) -> GGUF files,
    Modelfile and training_info.json in OUTPUT_DIR/gguf."""
    info = run_record.read(adapter_dir)
    merged = out / "merged"
    temporary = not (plan.merged and (merged / "config.json").is_file())
    if temporary:
        merged = out / "gguf-merged.tmp"
        shutil.rmtree(merged, ignore_errors=True)
        save_merged(model, tokenizer, backend, base_path, adapter_dir, merged)
    try:
        files = gguf.export(merged, out / "gguf", plan.gguf, info, out.name, info.get("max_new_tokens",
                                                                                        max_new_tokens))
    finally:
        if temporary:
            shutil.rmtree(merged, ignore_errors=True)
    for path in files:
        print(f"  {path.stat().st_size / 1e6:9.2f} MB  {path.name}")
    return out / "gguf"


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
    """The merged model, with the adapter's run record beside it: inference asks a merged model as it was trained."""
    if backend == "unsloth":
        model.save_pretrained_merged(str(out_dir), tokenizer, save_method="merged_16bit")
    else:
        merge_adapter(base_path, adapter_dir, out_dir)
    if not (Path(out_dir) / "config.json").is_file():  # transformers only logs when it cannot write there
        raise UserError(f"the merged model was not written to {out_dir} (no config.json there). Fix: make "
                        f"{out_dir} a writable folder (move away a file of that name), then export again.")
    if record := run_record.read(adapter_dir):
        run_record.write(out_dir, record)
    return out_dir


def save_gguf(model, tokenizer, out_dir: Path, method: str) -> Path:
    """Unsloth's GGUF export (GGUF_EXPORTER="unsloth"); it needs llama.cpp, which Unsloth builds where it has
    internet."""
    model.save_pretrained_gguf(str(out_dir), tokenizer, quantization_method=method)
    return out_dir
