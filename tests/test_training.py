"""A real (tiny) training run through our trainer code on the transformers + peft backend."""
import types

import pytest
import torch
from transformers import TrainerCallback

from medreason.train import preflight, sft
from medreason.model import run_record
from medreason.model.for_training import load_for_training, save_adapter
from medreason.answers.prompts import generation_prompt, get_style, to_conversation
from medreason.config.errors import UserError
from medreason.config.run_plan import Plan

STYLE = get_style("think_response")
END_OF_TURN = "<|im_end|>"


def script_constants() -> dict:
    import medical_fine_tuning
    from medreason.config.settings import collect
    return collect(vars(medical_fine_tuning))


def settings(tmp_path, **overrides):
    base = dict(MAX_SEQ_LENGTH=256, BATCH_SIZE=2, EVAL_BATCH_SIZE=2, GRAD_ACCUM=1, GROUP_BY_LENGTH=True, MAX_STEPS=4,
                LEARNING_RATE=5e-3,
                LR_SCHEDULER="constant", WARMUP_STEPS=0, WEIGHT_DECAY=0.0, GRADIENT_CHECKPOINTING=False, VAL_SIZE=2,
                EVAL_STEPS=2, SAVE_STEPS=2, SAVE_TOTAL_LIMIT=2, SEED=0, OUTPUT_DIR=str(tmp_path), LORA_R=8,
                LORA_ALPHA=16, LORA_DROPOUT=0.0, TARGET_MODULES=["q_proj", "k_proj", "v_proj", "o_proj"],
                LOGGING_STEPS=1, MODEL_NAME="tiny", MAX_NEW_TOKENS=32)
    return types.SimpleNamespace(**{**script_constants(), **base, **overrides})


CPU_PLAN = Plan(backend="transformers", device="cpu", precision="fp32", load_in_4bit=False, optim="adamw_torch")


def make_trainer(tiny_model_dir, rows, cfg):
    from datasets import Dataset
    model, tokenizer = load_for_training(cfg, CPU_PLAN, str(tiny_model_dir))
    conversations = Dataset.from_list([to_conversation(r, STYLE) for r in rows])
    args = sft.build_sft_config(cfg, CPU_PLAN, [], training_dir(cfg))
    return sft.build_trainer(model, tokenizer, conversations.select(range(2, len(rows))),
                                  conversations.select(range(2)), args), tokenizer


def training_dir(cfg):
    from pathlib import Path
    return Path(cfg.OUTPUT_DIR) / "checkpoints"


def lora_state(model):
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


def test_only_the_answer_and_end_of_turn_are_trained(tiny_model_dir, demo_rows, tmp_path):
    rows = demo_rows[:8]
    trainer, tokenizer = make_trainer(tiny_model_dir, rows, settings(tmp_path))
    for row, example in zip(rows[2:], trainer.train_dataset):
        ids, labels = example["input_ids"], example["labels"]
        first_trained = next(i for i, label in enumerate(labels) if label != -100)
        assert all(label == -100 for label in labels[:first_trained])
        assert all(label == token for label, token in zip(labels[first_trained:], ids[first_trained:]))
        masked = tokenizer.decode(ids[:first_trained])
        trained = tokenizer.decode(ids[first_trained:])
        # The masked part is exactly the prompt inference will send; the trained part is the answer + end of turn.
        assert masked == generation_prompt(tokenizer, row["Question"], STYLE)
        assert trained.rstrip("\n") == STYLE.answer(row["Complex_CoT"], row["Response"]) + END_OF_TURN
    shown = preflight.render_loss_mask(trainer.train_dataset[0]["input_ids"], trainer.train_dataset[0]["labels"],
                                       tokenizer)
    assert shown.index("[MASKED") < shown.index(rows[2]["Question"]) < shown.index("[TRAINED]\n<think>")


def test_training_logs_loss_changes_lora_and_the_adapter_reloads_identically(tiny_model_dir, demo_rows, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    cfg = settings(tmp_path)
    trainer, tokenizer = make_trainer(tiny_model_dir, demo_rows[:10], cfg)
    before = lora_state(trainer.model)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == cfg.MAX_STEPS and all(loss > 0 for loss in losses)
    assert any("eval_loss" in entry for entry in trainer.state.log_history)
    after = lora_state(trainer.model)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(changed) == len(before) > 0, "every LoRA matrix should have been updated"

    adapter = save_adapter(trainer.model, tokenizer, tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    batch = tokenizer(["<think>The patient has chest pain", "short"], return_tensors="pt", padding=True)
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(**batch).logits
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter).eval()
        got = reloaded(**batch).logits
        with reloaded.disable_adapter():
            base_logits = reloaded(**batch).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(base_logits, got, atol=1e-4), "the adapter must change the model's output"


def test_training_resumes_from_the_newest_checkpoint(tiny_model_dir, demo_rows, tmp_path):
    first, _ = make_trainer(tiny_model_dir, demo_rows[:10], settings(tmp_path, MAX_STEPS=2))
    first.train()
    checkpoint = sft.last_checkpoint(training_dir(settings(tmp_path)))
    assert checkpoint and checkpoint.endswith("checkpoint-2")
    sft.check_resumable(checkpoint, settings(tmp_path, MAX_STEPS=4), CPU_PLAN)  # same LoRA settings: fine
    with pytest.raises(UserError, match=r"TARGET_MODULES .* Fix: use another --OUTPUT_DIR"):
        sft.check_resumable(checkpoint, settings(tmp_path, TARGET_MODULES=["q_proj", "k_proj", "v_proj"]),
                            CPU_PLAN)
    second, _ = make_trainer(tiny_model_dir, demo_rows[:10], settings(tmp_path, MAX_STEPS=4))
    steps_run = []
    second.add_callback(type("Count", (TrainerCallback,), {
        "on_step_end": lambda self, args, state, control, **kw: steps_run.append(state.global_step)})())
    second.train(resume_from_checkpoint=checkpoint)
    assert steps_run == [3, 4], "steps 1-2 come from the checkpoint and are not trained again"


def test_preflight_drops_rows_whose_prompt_fills_the_context(tokenizer, demo_rows):
    from datasets import Dataset
    long_question = {**demo_rows[0], "Question": "What is the cause? " * 200}
    dataset = Dataset.from_list([to_conversation(r, STYLE) for r in [demo_rows[1], long_question, demo_rows[2]]])
    kept, stats = preflight.check_lengths(dataset, tokenizer, max_len=300, name="train")
    assert len(kept) == 2 and stats["dropped_no_answer_left"] == 1
    with pytest.raises(ValueError, match="MAX_SEQ_LENGTH=50 leaves no answer tokens.*Fix: --MAX_SEQ_LENGTH="):
        preflight.check_lengths(dataset, tokenizer, max_len=50, name="train")


def test_final_eval_loss_is_not_computed_twice(tiny_model_dir, demo_rows, tmp_path):
    trainer, _ = make_trainer(tiny_model_dir, demo_rows[:10], settings(tmp_path, MAX_STEPS=2, EVAL_STEPS=2))
    trainer.train()
    passes = sum("eval_loss" in e for e in trainer.state.log_history)
    loss = sft.final_eval_loss(trainer)  # step 2 was evaluated during training: reused
    assert sum("eval_loss" in e for e in trainer.state.log_history) == passes
    assert loss == next(e["eval_loss"] for e in reversed(trainer.state.log_history) if "eval_loss" in e)


def test_a_finished_adapter_is_reused_only_with_the_same_weight_settings(tiny_model_dir, demo_rows, tmp_path, capsys):
    """train returns the step it finished at; the final adapter's record keeps it; a rerun of the same settings
    evaluates that adapter without training, one with 4-bit switched (the plan's resolved value) trains again."""
    import dataclasses
    cfg = settings(tmp_path, MAX_STEPS=2, VAL_SIZE=0, EVAL_STEPS=0)
    trainer, tokenizer = make_trainer(tiny_model_dir, demo_rows[:6], cfg)
    info = sft.run_info(cfg, CPU_PLAN, STYLE)
    result = sft.train(trainer, None, tmp_path, info)
    assert result.global_step == 2 and "finished_at_step" not in info  # the step is returned, not written into info
    sft.save_final_adapter(trainer, trainer.model, tokenizer, tmp_path / "adapter", info, result.global_step)
    assert run_record.read(tmp_path / "adapter")["finished_at_step"] == 2
    assert sft.resume_point(training_dir(cfg), cfg, CPU_PLAN) is None  # finished: nothing to resume
    capsys.readouterr()

    again, _ = make_trainer(tiny_model_dir, demo_rows[:6], cfg)
    before = lora_state(again.model)
    assert sft.train(again, None, tmp_path, sft.run_info(cfg, CPU_PLAN, STYLE)).global_step == 2
    assert "already finished training at step 2" in capsys.readouterr().out
    assert any(not torch.equal(before[name], p) for name, p in lora_state(again.model).items()), "adapter loaded"

    four_bit = dataclasses.replace(CPU_PLAN, load_in_4bit=True)  # as a CUDA run with LOAD_IN_4BIT=True resolves
    with pytest.raises(UserError, match=r"checkpoint-2 was trained with other settings \(LOAD_IN_4BIT False -> "
                                        r"True\).*Fix: use another --OUTPUT_DIR"):
        sft.resume_point(training_dir(cfg), cfg, four_bit)  # its last checkpoint would relabel the old weights
    third, _ = make_trainer(tiny_model_dir, demo_rows[:6], cfg)
    third.add_callback(type("Count", (TrainerCallback,), {
        "on_step_end": lambda self, args, state, control, **kw: steps.append(state.global_step)})())
    steps = []
    sft.train(third, None, tmp_path, sft.run_info(cfg, four_bit, STYLE))
    printed = capsys.readouterr().out
    assert "finished training at step 2 with other settings (LOAD_IN_4BIT False -> True)" in printed
    assert "already finished" not in printed and steps == [1, 2], "trained again from step 0"
