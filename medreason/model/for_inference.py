"""Load a trained model for answering: a local adapter folder, a Hub repo id of a published adapter, or a merged
model folder. The adapter's run record (training_info.json, model/run_record.py) names its base model and prompt."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from medreason.answers.prompts import PromptStyle, get_style
from medreason.config import hardware
from medreason.config.errors import UserError
from medreason.config.run_plan import choose_backend as one_rule
from medreason.model import run_record
from medreason.model.embedded import EMBEDDED
from medreason.model.for_training import load_tokenizer, resolve_model_path


@dataclass
class Loaded:
    model: object
    tokenizer: object
    style: PromptStyle
    base_model: str  # what the weights underneath are: a Hub id, a folder or "embedded"
    kind: str  # "adapter" or "model"
    info: dict  # the adapter's run record, training_info.json ({} when there is none)
    backend: str = "transformers"

    def budget(self, given: int | None, fallback: int) -> tuple[int, str]:
        """(max_new_tokens, where it came from): as given, else the budget the run trained for, else the fallback."""
        if given is not None:
            return given, "given"
        if isinstance(self.info.get("max_new_tokens"), int):
            return self.info["max_new_tokens"], "the training run's MAX_NEW_TOKENS, saved with the adapter"
        return fallback, "the default (the adapter records no budget)"


def fetch(source: str) -> Path:
    """A local folder as is; otherwise a Hub repo id, downloaded (or found in the local Hub cache)."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{source}: is a file. Fix: pass the adapter folder (the one holding "
                            f"adapter_config.json), e.g. outputs/<run>/adapter.")
        return path
    if source.count("/") != 1 or source.startswith((".", "/", "~")):
        raise UserError(f"{source}: no such folder. Fix: pass an adapter folder such as outputs/<run>/adapter, "
                        f"or a Hub repo id like your-name/medical-llama-3.2-3b-lora.")
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(source))
    except Exception as e:  # offline, missing, private: huggingface_hub raises several types
        raise UserError(f"{source}: could not be fetched from the Hugging Face Hub ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}). Fix: check the id and your connection "
                        f"(HF_TOKEN for a private repo), or pass a local adapter folder, e.g. "
                        f"--adapter outputs/<run>/adapter.") from None


def trained_style(info: dict) -> PromptStyle:
    """The prompt an adapter was trained with: its style and system prompt (training_info.json)."""
    style = get_style(info.get("prompt_style", "think_response"))
    return style.with_system_prompt(info["system_prompt"]) if info.get("system_prompt") else style


def adapter_base(folder: Path, info: dict) -> str:
    """The base model an adapter was trained on: 'embedded' for the shipped model, else adapter_config's."""
    if info.get("model_name") == EMBEDDED:
        return EMBEDDED
    return json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]


def choose_backend(backend: str) -> str:
    """The run's one backend rule (runtime.choose_backend), for answering: Unsloth's fast inference on a CUDA GPU
    where it imports (a failed import said loudly), transformers + peft on a CPU unless --backend unsloth. Unsloth,
    when chosen, is imported here, before any model code."""
    reasons: list[str] = []
    try:
        chosen = one_rule(backend, hardware.detect().device, reasons, generation=True)
    except UserError as e:
        raise UserError(str(e).replace("--BACKEND=", "--backend ").replace("BACKEND=", "--backend ")) from None
    for reason in reasons:
        if not reason.startswith("WARNING"):  # a warning was printed when it was decided
            print(f"[load] {reason}")
    return chosen


def load(source: str, base_model: str | None = None, backend: str = "transformers", device: str | None = None,
         max_seq_length: int = 2048, precision: str = "auto") -> Loaded:
    """Model, tokenizer and the prompt style the model was trained with, ready to generate."""
    if backend == "unsloth":
        from unsloth import FastLanguageModel  # before transformers, so that its patches apply
    from transformers import AutoModelForCausalLM

    folder = fetch(source)
    info = run_record.read(folder)
    style = trained_style(info)
    machine = hardware.detect()
    device = device or machine.device
    precision, why = hardware.choose_precision(precision, machine, backend)
    dtype = hardware.torch_dtype(precision)
    print(f"[load] precision: {why}")

    if (folder / "adapter_config.json").is_file():
        recorded = adapter_base(folder, info)
        base = base_model or recorded
        if base_model and base_model != recorded:
            print(f"[load] note: the adapter was trained on {recorded!r}; using --base-model {base_model!r}")
        if backend == "unsloth":  # base in 4-bit as in training, then the adapter, then Unsloth's fast generation
            model, _ = FastLanguageModel.from_pretrained(resolve_model_path(base), max_seq_length=max_seq_length,
                                                         dtype=dtype, load_in_4bit=info.get("load_in_4bit", True))
        else:
            model = _from_pretrained(AutoModelForCausalLM, resolve_model_path(base), dtype, "base model", base)
        model = _attach_adapter(model, folder, base, recorded)
        kind = "adapter"
    elif (folder / "config.json").is_file():
        if backend == "unsloth":
            model, _ = FastLanguageModel.from_pretrained(str(folder), max_seq_length=max_seq_length, dtype=dtype)
        else:
            model = _from_pretrained(AutoModelForCausalLM, str(folder), dtype, "merged model", source)
        base, kind = source, "model"
    else:
        raise UserError(f"{folder}: neither an adapter (no adapter_config.json) nor a model folder (no "
                        f"config.json). Fix: pass OUTPUT_DIR/adapter from a training run, or a merged model folder.")
    tokenizer = load_tokenizer(str(folder)) if (folder / "tokenizer_config.json").is_file() else \
        load_tokenizer(resolve_model_path(base))
    if backend == "unsloth":
        FastLanguageModel.for_inference(model)  # Unsloth places (and quantizes) the weights itself
    else:
        model = model.to(device)
    return Loaded(model.eval(), tokenizer, style, base, kind, info, backend)


def _from_pretrained(cls, path: str, dtype, what: str, shown: str):
    try:
        return cls.from_pretrained(path, dtype=dtype)
    except OSError as e:
        raise UserError(f"{what} {shown!r} could not be loaded ({str(e).splitlines()[0]}). Fix: check the id and "
                        f"your connection, or pass a local folder with --base-model.") from None


def _attach_adapter(model, folder: Path, base: str, recorded: str):
    from peft import PeftModel
    try:
        return PeftModel.from_pretrained(model, folder)
    except RuntimeError as e:
        if "size mismatch" not in str(e):
            raise
        raise UserError(f"the adapter in {folder} does not fit the base model {base!r} (its weights have other "
                        f"shapes): it was trained on {recorded!r}. Fix: --base-model {recorded}") from None
