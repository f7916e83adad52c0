"""Shared fixtures: the embedded tokenizer, a tiny random Llama built here, real rows from ../shared/data."""
import json
import os
import subprocess
import sys
from pathlib import Path

# Tests never touch the network: the Hub must fail fast, not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.pop("WANDB_API_KEY", None)

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = ROOT.parent / "shared" / "data" / "medical_o1_sample.jsonl"
sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def _restore_wandb_environment():
    """A test that runs a trainer in this process sets WANDB_DIR and friends for its run: restore them afterwards,
    so that later runs (subprocesses inherit the environment) write their W&B files where they should."""
    names = ("WANDB_DIR", "WANDB_PROJECT", "WANDB_MODE")
    saved = {name: os.environ.get(name) for name in names}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def embedded_dir():
    from medreason.model.embedded import embedded_model_dir
    return embedded_model_dir()


@pytest.fixture(scope="session")
def tokenizer(embedded_dir):
    from medreason.model.for_training import load_tokenizer
    return load_tokenizer(str(embedded_dir))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A 2-layer random Llama with the embedded model's tokenizer (fast enough for CPU training tests)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def demo_rows():
    from medreason.data.readers import DEMO_DATASET
    return [json.loads(line) for line in DEMO_DATASET.read_text().splitlines()]


@pytest.fixture(scope="session")
def real_rows():
    if not SHARED_SAMPLE.is_file():
        pytest.skip(f"real medical-o1 rows not found at {SHARED_SAMPLE} (the shared data folder is absent)")
    return [json.loads(line) for line in SHARED_SAMPLE.read_text().splitlines()]


def run_script(*args, timeout=1500, env=None):
    """Run medical_fine_tuning.py as a user would; returns the CompletedProcess (stdout+stderr merged)."""
    return subprocess.run([sys.executable, str(ROOT / "medical_fine_tuning.py"), *args], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


PARROT_ANSWERS = {
    "Which drug class causes a dry cough?":
        "<think>\nbradykinin builds up\n</think>\n<response>\nACE inhibitors\n</response>",
    "What should be checked first?": "<think>\nthe airway comes first\n</think>",
}


@pytest.fixture(scope="session")
def parrot_model_dir(tmp_path_factory, tiny_model_dir, tokenizer):
    """The tiny Llama, fully trained to repeat PARROT_ANSWERS: a real model whose output we know in advance."""
    import torch
    from transformers import AutoModelForCausalLM
    from medreason.answers.prompts import generation_prompt, get_style
    style = get_style("think_response")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = []
    for question, answer in PARROT_ANSWERS.items():
        prompt = tokenizer(generation_prompt(tokenizer, question, style), add_special_tokens=False)["input_ids"]
        target = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        batch.append((torch.tensor([prompt + target]), torch.tensor([[-100] * len(prompt) + target])))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(200):
        ids, labels = batch[step % len(batch)]
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    folder = tmp_path_factory.mktemp("parrot")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory, tiny_model_dir, demo_rows):
    """An adapter written by our trainer code (2 steps on the tiny Llama, transformers backend), with the run record
    the trainer writes (sft.run_info, finished at its last step)."""
    import types
    from datasets import Dataset
    from medreason.train import sft
    from medreason.model.for_training import load_for_training, save_adapter
    from medreason.answers.prompts import get_style, to_conversation
    from medreason.config.run_plan import Plan
    import medical_fine_tuning
    from medreason.config.settings import collect
    out = tmp_path_factory.mktemp("tiny-run")
    cfg = types.SimpleNamespace(**{  # the script's constants, then the test's sizes
        **collect(vars(medical_fine_tuning)), "MAX_SEQ_LENGTH": 256, "BATCH_SIZE": 2, "EVAL_BATCH_SIZE": 2,
        "GRAD_ACCUM": 1, "MAX_STEPS": 2, "LEARNING_RATE": 5e-3, "LR_SCHEDULER": "constant", "WARMUP_STEPS": 0,
        "WEIGHT_DECAY": 0.0, "GRADIENT_CHECKPOINTING": False, "VAL_SIZE": 0, "EVAL_STEPS": 0, "SAVE_STEPS": 10,
        "SAVE_TOTAL_LIMIT": 1, "SEED": 0, "OUTPUT_DIR": str(out), "LORA_R": 8, "LORA_ALPHA": 16, "LORA_DROPOUT": 0.0,
        "TARGET_MODULES": ["q_proj", "v_proj"], "LOGGING_STEPS": 1, "MODEL_NAME": str(tiny_model_dir)})
    plan = Plan("transformers", "cpu", "fp32", False, "adamw_torch")
    style = get_style("think_response")
    model, tok = load_for_training(cfg, plan, str(tiny_model_dir))
    data = Dataset.from_list([to_conversation(r, style) for r in demo_rows[:4]])
    trainer = sft.build_trainer(model, tok, data, None,
                                     sft.build_sft_config(cfg, plan, [], out / "checkpoints"))
    result = trainer.train()
    return save_adapter(model, tok, out / "adapter", sft.run_info(cfg, plan, style), result.global_step)
