"""Presets (configs/*.yaml): the layering constants -> preset -> command line with each value's origin, the checks a
preset file gets, the automatic choice on a machine with no GPU, and for every preset a tiny random model of its
architecture that its TARGET_MODULES attach to and that trains a step. Early stopping and the dry run."""
import importlib.util
from pathlib import Path

import pytest
import torch

import medical_fine_tuning
from medreason.config import run_plan, settings
from medreason.train import sft
from medreason.config.errors import UserError
from medreason.config.settings import SettingsError

from conftest import run_script

PRESETS = settings.available_presets()
# The architecture of each preset's model (a new preset must say which, so its module names get tested).
ARCHITECTURE = {"phi-4-mini": "phi3", "qwen2.5-3b": "qwen2", "qwen2.5-1.5b": "qwen2"}  # every other preset: llama


def resolve(*argv, automatic=True):
    return settings.resolve(vars(medical_fine_tuning), list(argv),
                            automatic=run_plan.automatic_preset if automatic else None)


def test_the_order_is_constants_then_preset_then_command_line_and_each_origin_is_named():
    cfg, origins = resolve("--PRESET=smollm2", "--MAX_STEPS=7")
    assert cfg.MAX_STEPS == 7 and origins["MAX_STEPS"] == "command line"  # the command line wins over the preset
    assert cfg.LEARNING_RATE == 1e-3 and origins["LEARNING_RATE"] == "preset smollm2"
    assert cfg.LORA_R == medical_fine_tuning.LORA_R and "LORA_R" not in origins  # the constant: no origin printed
    cfg, origins = resolve("--PRESET=demo")
    assert origins["DATASET"] == "preset demo" and origins["LEARNING_RATE"] == "preset smollm2"  # demo starts there
    assert cfg.MAX_STEPS == 30 and origins["MAX_STEPS"] == "preset demo"  # ...and its own values come after


def test_with_no_gpu_nothing_given_is_the_demo_and_a_dataset_gets_the_small_model_recipe():
    cfg, origins = resolve()  # this machine has no CUDA GPU
    assert cfg.PRESET == "demo" and origins["PRESET"].startswith("automatic: no CUDA GPU")
    cfg, origins = resolve("--DATASET=my_rows.jsonl")
    assert cfg.PRESET == "smollm2" and cfg.DATASET == "my_rows.jsonl" and cfg.MODEL_NAME == "embedded"
    assert (cfg.MAX_STEPS, cfg.BATCH_SIZE, cfg.GRAD_ACCUM, cfg.VAL_SIZE) == (40, 1, 4, medical_fine_tuning.VAL_SIZE)
    assert cfg.OUTPUT_DIR == "outputs/smollm2-135m"  # not the demo's folder, not the real run's
    assert resolve("--MODEL_NAME=embedded")[0].PRESET == "smollm2"
    assert resolve("--MODEL_NAME=some/other-model")[0].PRESET == ""  # the constants, nothing automatic
    assert resolve("--PRESET=qwen2.5-3b")[0].MODEL_NAME == "unsloth/Qwen2.5-3B-Instruct-bnb-4bit"


def preset_file(tmp_path, text, name="mine.yaml") -> str:
    """--PRESET=<a file holding text>."""
    path = tmp_path / name
    path.write_text(text)
    return f"--PRESET={path}"


def test_a_preset_file_is_checked_like_the_command_line(tmp_path):
    cfg, origins = resolve(preset_file(tmp_path, "MAX_STEPS: 12  # why\nLEARNING_RATE: 5e-5\n"))
    assert cfg.MAX_STEPS == 12 and cfg.LEARNING_RATE == 5e-5 and origins["MAX_STEPS"].endswith("mine.yaml")
    with pytest.raises(SettingsError, match=r"mine.yaml:2: unknown setting 'MAX_STEP'. Did you mean MAX_STEPS"):
        resolve(preset_file(tmp_path, "LORA_R: 8\nMAX_STEP: 5\n"))
    with pytest.raises(SettingsError, match=r"mine.yaml:1: MAX_STEPS: ten: expected int.*Fix"):
        resolve(preset_file(tmp_path, "MAX_STEPS: ten\n"))
    with pytest.raises(SettingsError, match=r"mine.yaml:1: LOAD_IN_4BIT: 3: expected bool"):
        resolve(preset_file(tmp_path, "LOAD_IN_4BIT: 3\n"))
    with pytest.raises(SettingsError, match=r"mine.yaml:3: MAX_STEPS is set twice \(first on line 1\)"):
        resolve(preset_file(tmp_path, "MAX_STEPS: 1\nLORA_R: 8\nMAX_STEPS: 2\n"))
    with pytest.raises(SettingsError, match=r"mine.yaml:2: not valid YAML"):
        resolve(preset_file(tmp_path, "MAX_STEPS: 1\n  LORA_R: [8\n"))
    with pytest.raises(SettingsError, match="a preset is a mapping"):
        resolve(preset_file(tmp_path, "- MAX_STEPS\n"))
    with pytest.raises(SettingsError, match="PRESET='lama-3.1-8b' is not a preset. Did you mean llama-3.1-8b"):
        resolve("--PRESET=lama-3.1-8b")
    preset_file(tmp_path, f"PRESET: {tmp_path / 'b.yaml'}\n", "a.yaml")
    with pytest.raises(SettingsError, match="presets include each other in a loop"):
        resolve(preset_file(tmp_path, f"PRESET: {tmp_path / 'a.yaml'}\n", "b.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_loads_and_names_a_model_that_exists(preset):
    cfg, origins = resolve(f"--PRESET={preset}")
    assert origins["MODEL_NAME"].startswith("preset") and origins["OUTPUT_DIR"].startswith("preset")
    if cfg.MODEL_NAME != "embedded":  # Unsloth's own table of its Hub repositories (read, not imported)
        mapper = Path(importlib.util.find_spec("unsloth").origin).parent / "models" / "mapper.py"
        assert f'"{cfg.MODEL_NAME}"' in mapper.read_text(), f"{cfg.MODEL_NAME} is not a repository Unsloth knows"
    text = (settings.PRESET_DIR / f"{preset}.yaml").read_text()
    assert text.startswith("#"), "a preset starts with a comment saying what it is for"


def test_the_default_preset_is_the_constants_written_out():
    cfg, origins = resolve("--PRESET=llama-3.2-3b")
    for name in (n for n, origin in origins.items() if origin == "preset llama-3.2-3b"):
        assert getattr(cfg, name) == getattr(medical_fine_tuning, name), name
    output_dirs = [resolve(f"--PRESET={p}")[0].OUTPUT_DIR for p in PRESETS]
    assert len(set(output_dirs)) == len(PRESETS), "each model writes to its own OUTPUT_DIR"


def tiny_model(architecture: str, tokenizer, folder: Path) -> Path:
    """A random 2-layer model of the architecture, from its config (nothing downloaded)."""
    from transformers import (LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)
    config_class, model_class = {"llama": (LlamaConfig, LlamaForCausalLM), "phi3": (Phi3Config, Phi3ForCausalLM),
                                 "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[architecture]
    torch.manual_seed(0)
    config = config_class(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("preset", PRESETS)
def test_each_presets_target_modules_attach_to_its_architecture_and_train(preset, tokenizer, demo_rows, tmp_path):
    from datasets import Dataset
    from medreason.model.for_training import load_for_training
    from medreason.answers.prompts import get_style, to_conversation
    architecture = ARCHITECTURE.get(preset, "llama")
    model_dir = tiny_model(architecture, tokenizer, tmp_path / architecture)
    cfg, _ = resolve(f"--PRESET={preset}", f"--MODEL_NAME={model_dir}", f"--OUTPUT_DIR={tmp_path / 'run'}",
                     "--MAX_STEPS=1", "--BATCH_SIZE=2", "--GRAD_ACCUM=1", "--MAX_SEQ_LENGTH=256", "--VAL_SIZE=0",
                     "--EVAL_STEPS=0", "--SAVE_STEPS=1", "--EARLY_STOPPING_PATIENCE=None", "--REPORT_TO=none",
                     "--WARMUP_STEPS=0")
    plan = run_plan.Plan("transformers", "cpu", "fp32", False, "adamw_torch")
    model, tok = load_for_training(cfg, plan, str(model_dir))
    wrapped = {name.split(".")[-4] for name, _ in model.named_parameters() if "lora_A" in name}
    assert wrapped == set(cfg.TARGET_MODULES), f"{preset}: LoRA on {wrapped}, asked {cfg.TARGET_MODULES}"
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    rows = Dataset.from_list([to_conversation(r, get_style("think_response")) for r in demo_rows[:2]])
    trainer = sft.build_trainer(model, tok, rows, None, sft.build_sft_config(cfg, plan, [], tmp_path / "c"))
    trainer.train()
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if "lora_B" in n)


def test_llama_module_names_do_not_exist_in_phi_and_all_linear_works_anywhere(tokenizer, tmp_path):
    from medreason.model.for_training import load_for_training
    model_dir = tiny_model("phi3", tokenizer, tmp_path / "phi3")
    plan = run_plan.Plan("transformers", "cpu", "fp32", False, "adamw_torch")
    cfg, _ = resolve(f"--MODEL_NAME={model_dir}", "--TARGET_MODULES=q_proj,k_proj,v_proj,o_proj")
    with pytest.raises(UserError, match=r"TARGET_MODULES \[.q_proj., .k_proj., .v_proj.\] are not in this.*qkv_proj"):
        load_for_training(cfg, plan, str(model_dir))
    cfg, _ = resolve(f"--MODEL_NAME={model_dir}", "--TARGET_MODULES=all-linear")
    model, _ = load_for_training(cfg, plan, str(model_dir))
    wrapped = {name.split(".")[-4] for name, _ in model.named_parameters() if "lora_A" in name}
    assert wrapped == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}


def test_early_stopping_stops_on_a_plateau_and_keeps_the_best_adapter(tiny_model_dir, demo_rows, tmp_path, capsys):
    from datasets import Dataset
    from safetensors.torch import load_file
    from medreason.model.for_training import load_for_training, save_adapter
    from medreason.answers.prompts import get_style, to_conversation
    cfg, _ = resolve(f"--MODEL_NAME={tiny_model_dir}", f"--OUTPUT_DIR={tmp_path}", "--MAX_STEPS=20",
                     "--BATCH_SIZE=2", "--GRAD_ACCUM=1", "--MAX_SEQ_LENGTH=256", "--LEARNING_RATE=0.5",
                     "--LR_SCHEDULER=constant", "--WARMUP_STEPS=0", "--VAL_SIZE=2", "--EVAL_STEPS=1", "--SAVE_STEPS=1",
                     "--SAVE_TOTAL_LIMIT=5", "--EARLY_STOPPING_PATIENCE=2", "--TARGET_MODULES=q_proj,v_proj",
                     "--SEED=0", "--EVAL_BATCH_SIZE=2", "--REPORT_TO=none")
    plan = run_plan.Plan("transformers", "cpu", "fp32", False, "adamw_torch")
    model, tok = load_for_training(cfg, plan, str(tiny_model_dir))
    data = Dataset.from_list([to_conversation(r, get_style("think_response")) for r in demo_rows[:10]])
    trainer = sft.build_trainer(model, tok, data.select(range(2, 10)), data.select(range(2)),
                                     sft.build_sft_config(cfg, plan, [], tmp_path / "checkpoints"), 2)
    sft.train(trainer, None, tmp_path, sft.run_info(cfg, plan, get_style("think_response")))
    evals = [(e["step"], e["eval_loss"]) for e in trainer.state.log_history if "eval_loss" in e and e["step"] > 0]
    best_step, best_loss = min(evals, key=lambda e: e[1])
    assert trainer.state.global_step < cfg.MAX_STEPS  # it stopped early...
    assert trainer.state.global_step - best_step == 2  # ...two evaluations after the best, which is kept
    assert "stopped early at step" in capsys.readouterr().out
    saved = load_file(save_adapter(model, tok, tmp_path / "adapter") / "adapter_model.safetensors")
    best = load_file(tmp_path / "checkpoints" / f"checkpoint-{best_step}" / "adapter_model.safetensors")
    last = load_file(tmp_path / "checkpoints" / f"checkpoint-{trainer.state.global_step}" /
                     "adapter_model.safetensors")
    assert saved.keys() == best.keys() and all(torch.equal(saved[k], best[k]) for k in saved)
    assert any(not torch.equal(saved[k], last[k]) for k in saved)


def test_early_stopping_needs_evaluations_with_checkpoints():
    plan = run_plan.Plan("transformers", "cpu", "fp32", False, "adamw_torch")
    cfg, _ = resolve("--EARLY_STOPPING_PATIENCE=2", "--VAL_SIZE=0")
    with pytest.raises(UserError, match="never measured"):
        sft.build_sft_config(cfg, plan, [], Path("unused"))
    cfg, _ = resolve("--EARLY_STOPPING_PATIENCE=2", "--EVAL_STEPS=20", "--SAVE_STEPS=30")
    with pytest.raises(UserError, match="SAVE_STEPS=30 is not a multiple of EVAL_STEPS=20. Fix: --SAVE_STEPS=20"):
        sft.build_sft_config(cfg, plan, [], Path("unused"))


def test_a_dry_run_checks_a_preset_and_a_dataset_without_loading_weights(tmp_path):
    """Offline, the preset's Hub tokenizer cannot be loaded: the dry run says so and still checks everything else."""
    out = tmp_path / "run"
    result = run_script("--PRESET=llama-3.1-8b", "--DATASET=demo", "--VAL_SIZE=6", "--DRY_RUN=True",
                        "--BACKEND=transformers", "--REPORT_TO=none", f"--OUTPUT_DIR={out}", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "PRESET                  = 'llama-3.1-8b' <- command line" in result.stdout
    assert "<- preset llama-3.1-8b" in result.stdout and "36 usable rows" in result.stdout
    assert "token statistics skipped" in result.stdout and "[dry run]" in result.stdout
    assert not out.exists() or not any(out.rglob("*.safetensors")), "a dry run writes no weights"
    bad = run_script("--PRESET=llama-3.1-8b", "--DATASET=demo", "--DRY_RUN=True", "--LR_SCHEDULER=cosin",
                     "--BACKEND=transformers", timeout=300)
    assert bad.returncode == 1 and "Did you mean 'cosine'" in bad.stdout and "Traceback" not in bad.stdout


@pytest.mark.parametrize("preset", PRESETS)
def test_every_presets_dry_run_passes_offline_and_says_what_it_skipped(preset, real_rows, tmp_path, capsys):
    """58 real rows, no Hub: presets whose tokenizer (or config) cannot be loaded skip the token statistics, the
    examples of text-form styles (r1) and the estimate, each said; the embedded model's presets do them all."""
    import json
    rows = tmp_path / "rows58.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in real_rows[:58]))
    result = medical_fine_tuning.main([f"--PRESET={preset}", f"--DATASET={rows}", "--DRY_RUN=True", "--VAL_SIZE=6",
                                       "--BACKEND=transformers", "--REPORT_TO=none", f"--OUTPUT_DIR={tmp_path / 'run'}"])
    out = capsys.readouterr().out
    assert result == ({}, True, True) and "[dry run] settings, data and preflight checked" in out
    assert "52 training rows, 6 validation rows" in out
    cfg, _ = resolve(f"--PRESET={preset}")
    if cfg.MODEL_NAME == "embedded":
        assert "[preflight] train: 52 rows, tokens per example" in out and "[estimate] training: about" in out
    else:
        assert "token statistics skipped, the tokenizer could not be loaded" in out
        assert "[estimate] training: not made: " in out
        if cfg.PROMPT_STYLE == "r1":
            assert "PROMPT_STYLE='r1' examples not rendered" in out
