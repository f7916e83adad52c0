"""Load a chat model with a LoRA adapter for training, through Unsloth or transformers + peft.

Both backends return a peft model whose `save_pretrained` writes the same adapter format
(adapter_config.json + adapter_model.safetensors), so inference and publishing do not care which trained it.
"""
from __future__ import annotations

from pathlib import Path

from medreason.answers.prompts import pin_template_date
from medreason.config import distributed
from medreason.config.errors import UserError
from medreason.config.hardware import torch_dtype
from medreason.model import run_record, storage
from medreason.model.embedded import EMBEDDED, EMBEDDED_HUB_ID, embedded_model_dir


def resolve_model_path(model_name: str) -> str:
    """'embedded' -> the cached local folder; anything else (Hub id or local folder) as given."""
    return str(embedded_model_dir()) if model_name == EMBEDDED else model_name


def load_tokenizer(model_path: str):
    from transformers import AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except OSError as e:  # not a folder, not on the Hub, or the Hub unreachable
        raise UserError(f"MODEL_NAME={model_path!r}: cannot load its tokenizer ({str(e).splitlines()[0]}). Fix: check "
                        f"the Hub id and your connection, pass a local model folder, or use --MODEL_NAME=embedded "
                        f"offline.") from None
    return pin_template_date(_ensure_pad_token(tokenizer))


def _ensure_pad_token(tokenizer):
    # Llama-3 tokenizers ship no pad token. Padding positions are masked from the loss either way; reusing a
    # reserved token rather than eos keeps eos meaningful for anything that looks at pad ids.
    if tokenizer.pad_token is None:
        reserved = "<|finetune_right_pad_id|>"
        tokenizer.pad_token = reserved if reserved in tokenizer.get_vocab() else tokenizer.eos_token
    return tokenizer


def load_for_training(cfg, plan, model_path: str):
    """(peft model, tokenizer) ready for SFTTrainer."""
    if plan.backend == "unsloth":
        return _load_unsloth(cfg, plan, model_path)
    return _load_transformers(cfg, plan, model_path)


def lora_targets(target_modules: list[str]) -> list[str] | str:
    """peft's (and Unsloth's) spelling: TARGET_MODULES=all-linear wraps every linear layer but the output layer, for
    an architecture whose module names you do not know."""
    return "all-linear" if list(target_modules) == ["all-linear"] else list(target_modules)


def unsloth_load_kwargs(cfg, plan, model_path: str) -> dict:
    """What FastLanguageModel.from_pretrained is given: the dtype is the run's one precision decision."""
    return dict(model_name=model_path, max_seq_length=cfg.MAX_SEQ_LENGTH, dtype=torch_dtype(plan.precision),
                load_in_4bit=plan.load_in_4bit)


def _load_unsloth(cfg, plan, model_path):
    from unsloth import FastLanguageModel
    model, tokenizer = FastLanguageModel.from_pretrained(**unsloth_load_kwargs(cfg, plan, model_path))
    check_target_modules(model, cfg.TARGET_MODULES)
    model = FastLanguageModel.get_peft_model(
        model,
        r=cfg.LORA_R,
        lora_alpha=cfg.LORA_ALPHA,
        lora_dropout=cfg.LORA_DROPOUT,
        target_modules=lora_targets(cfg.TARGET_MODULES),
        bias="none",
        use_gradient_checkpointing="unsloth" if cfg.GRADIENT_CHECKPOINTING else False,
        random_state=cfg.SEED,
    )
    return model, pin_template_date(_ensure_pad_token(tokenizer))


def load_base(model_path: str, plan, gradient_checkpointing: bool):
    """The base model for a LoRA to train on, on the transformers backend: the run's precision, 4-bit NF4 on CUDA
    (prepared for k-bit training), each process's copy on its own GPU. Used by SFT and by DPO."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, **transformers_load_kwargs(plan))
    if plan.load_in_4bit:
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                               gradient_checkpointing_kwargs={"use_reentrant": False})
    if plan.device == "cuda" and not distributed.uses_fsdp():
        return model.to(torch.device("cuda", distributed.local_rank()))  # each process on its own GPU
    return model


def _load_transformers(cfg, plan, model_path):
    import torch
    from peft import LoraConfig, get_peft_model

    model = load_base(model_path, plan, cfg.GRADIENT_CHECKPOINTING)
    lora = LoraConfig(r=cfg.LORA_R, lora_alpha=cfg.LORA_ALPHA, lora_dropout=cfg.LORA_DROPOUT,
                      target_modules=lora_targets(cfg.TARGET_MODULES), bias="none", task_type="CAUSAL_LM")
    check_target_modules(model, cfg.TARGET_MODULES)
    # LoRA's A matrices are drawn now, before the Trainer seeds anything: without this, SEED would not fix them and
    # two runs with the same settings would differ from their first update (Unsloth is given random_state instead).
    torch.manual_seed(cfg.SEED)
    return get_peft_model(model, lora), load_tokenizer(model_path)


def transformers_load_kwargs(plan) -> dict:
    """from_pretrained's arguments: the run's precision; 4-bit NF4 on CUDA, each process's copy on its own GPU
    (device_map from LOCAL_RANK). Under FSDP the 4-bit weights are stored in the compute dtype, so FSDP can shard
    them like every other parameter, and placement is left to FSDP (QLoRA + FSDP, as peft documents it)."""
    from transformers import BitsAndBytesConfig
    compute_dtype = torch_dtype(plan.precision)
    kwargs = {"dtype": compute_dtype}
    if plan.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_quant_storage=compute_dtype if distributed.uses_fsdp() else None)
        if not distributed.uses_fsdp():
            kwargs["device_map"] = {"": distributed.local_rank()}
    return kwargs


def check_target_modules(model, target_modules) -> None:
    """Every name in TARGET_MODULES must be a layer of this model: peft itself only complains when none is (Llama's
    q/k/v/o on Phi-4 would wrap o_proj alone, silently)."""
    import torch
    if list(target_modules) == ["all-linear"]:
        return
    names = {name.split(".")[-1] for name, _ in model.named_modules()}
    missing = [t for t in target_modules if t not in names]
    if missing:
        linear = sorted({name.split(".")[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear) and "lm_head" not in name})
        raise UserError(f"TARGET_MODULES {missing} are not in this model ({type(model).__name__}); its linear layers "
                        f"are {', '.join(linear)}. Fix: --TARGET_MODULES={','.join(linear)}, or "
                        f"--TARGET_MODULES=all-linear for every linear layer.")


def trainable_summary(model) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)"


def save_adapter(model, tokenizer, folder: Path, info: dict | None = None, finished_at_step: int | None = None) -> Path:
    """The adapter, its tokenizer and its run record (model/run_record.py: base model and prompt, read back by
    inference; `finished_at_step` when training finished, None for an adapter saved mid-run).

    Written beside `folder` and renamed into place (storage.save_folder): a full disk or a kill mid-save leaves the
    previous adapter intact, and a full disk is a one-line error naming the folder and the space it needs."""
    folder = Path(folder)
    needed = max(storage.folder_bytes(folder), storage.trainable_bytes(model) + storage.TOKENIZER_BYTES)
    return storage.save_folder(folder, lambda staging: _write_adapter(model, tokenizer, staging, info,
                                                                      finished_at_step), needed)


def _write_adapter(model, tokenizer, folder: Path, info: dict | None, finished_at_step: int | None) -> None:
    # adapter_config.json + adapter_model.safetensors of the active adapter only, on either backend (DPO's model also
    # holds the frozen "ref" copy of the SFT adapter, which is not part of what was trained)
    several = len(getattr(model, "peft_config", {})) > 1
    model.save_pretrained(folder, **({"selected_adapters": [model.active_adapter]} if several else {}))
    tokenizer.save_pretrained(folder)
    # peft also writes a placeholder model card naming this machine's cache path as base_model; the real card is
    # rendered at publishing (medreason/publish/hub.py), so the placeholder is not kept.
    (folder / "README.md").unlink(missing_ok=True)
    if info:
        write_training_info(folder, info, finished_at_step)


def write_training_info(folder: Path, info: dict, finished_at_step: int | None = None) -> None:
    """The run record beside the adapter (run_record.write); for the embedded model, a portable base id in
    adapter_config.json rather than this machine's cache path."""
    import json

    if info.get("model_name") == EMBEDDED:
        config_path = folder / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = EMBEDDED_HUB_ID
        config_path.write_text(json.dumps(config, indent=2) + "\n")
    run_record.write(folder, info, finished_at_step)
