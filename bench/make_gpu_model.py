"""Writes bench/gpu_model/: the Llama-3.2-3B shape the GPU check trains (bench/gpu_check.sh), with no weights.

    python bench/make_gpu_model.py          # rewrites bench/gpu_model/ (committed; ~100 KB)

The config is Llama-3.2-3B-Instruct's (3.21 B parameters, the real 128,256-token vocabulary, so the embedding and the
logits cost on the GPU what they cost in the real run); the weights are made at random on the GPU by the check itself
(bench/gpu_check.py), never shipped. The tokenizer is made here, offline (the Hub is out of reach on both machines): a
byte-level BPE learned from the project's demo rows, with Llama-3's special tokens and a Llama-3.2-style chat template
that takes `date_string`. It is smaller than Llama-3's (VOCAB_LEARNED ids), so text runs to more tokens per word:
rows reach MAX_SEQ_LENGTH easily, which is what the check wants. The config's bos/eos/pad ids are the tokenizer's.
"""
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "gpu_model"
VOCAB_LEARNED = 2048  # BPE ids learned from the demo rows (Llama-3 has 128,000); small keeps the file small
SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
           "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>"]  # Llama-3.x's named special tokens
# Llama-3.2-3B-Instruct's config.json (meta-llama/Llama-3.2-3B-Instruct), less the token ids set below.
LLAMA_3_2_3B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False, "attention_dropout": 0.0,
    "head_dim": 128, "hidden_act": "silu", "hidden_size": 3072, "initializer_range": 0.02, "intermediate_size": 8192,
    "max_position_embeddings": 131072, "mlp_bias": False, "num_attention_heads": 24, "num_hidden_layers": 28,
    "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True,
    "vocab_size": 128256,
}
# Llama-3.2-Instruct's chat template without its tool-calling branches: the system header carries the knowledge
# cutoff and `date_string` (today's date via strftime_now unless given, which medreason/answers/prompts.py pins).
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now(\"%d %b %Y\") %}{%- else %}{%- set date_string = \"26 Jul 2024\" %}"
    "{%- endif %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = \"\" %}{%- endif %}"
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}"
    "{{- \"Cutting Knowledge Date: December 2023\\n\" }}"
    "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}"
    "{{- system_message }}{{- \"<|eot_id|>\" }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def demo_texts() -> list[str]:
    texts = []
    for name in ("medical_demo.jsonl", "safety_train.jsonl"):
        for line in (ROOT / "medreason" / "demo_data" / name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                texts.extend(str(v) for v in json.loads(line).values() if isinstance(v, str))
    return texts + ["<think>", "</think>", "<response>", "</response>"]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_LEARNED, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(demo_texts(), trainer)
    tok.add_special_tokens(SPECIAL)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                                       special_tokens=[("<|begin_of_text|>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|finetune_right_pad_id|>", chat_template=CHAT_TEMPLATE,
                                   model_max_length=131072, padding_side="left")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(OUT)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|begin_of_text|>", "<|end_of_text|>", "<|eom_id|>",
                                                           "<|eot_id|>", "<|finetune_right_pad_id|>")}
    eos = [ids["<|end_of_text|>"], ids["<|eom_id|>"], ids["<|eot_id|>"]]  # Llama-3.2-Instruct's three stop ids
    config = {**LLAMA_3_2_3B, "bos_token_id": ids["<|begin_of_text|>"], "eos_token_id": eos,
              "pad_token_id": ids["<|finetune_right_pad_id|>"]}
    (OUT / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (OUT / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": config["bos_token_id"], "eos_token_id": eos, "pad_token_id": config["pad_token_id"],
         "do_sample": True, "temperature": 0.6, "top_p": 0.9}, indent=2) + "\n")
    size = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {OUT} ({size / 1e3:.0f} KB): Llama-3.2-3B config (vocab {config['vocab_size']:,}), tokenizer of "
          f"{len(tokenizer):,} ids, no weights")


if __name__ == "__main__":
    main()
