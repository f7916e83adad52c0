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


@pytest.fixture(scope="session")
def embedded_dir():
    from medreason.embedded import embedded_model_dir
    return embedded_model_dir()


@pytest.fixture(scope="session")
def tokenizer(embedded_dir):
    from medreason.modeling import load_tokenizer
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
    from medreason.data import DEMO_DATASET
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
