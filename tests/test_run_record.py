"""The run record (medreason/model/run_record.py): writer and reader, the settings that decide each stage's weights,
and the reuse/resume rule, on records of this version and of earlier ones. No model is loaded."""
import dataclasses
import json
import types

import pytest

from medreason.answers.prompts import get_style
from medreason.config.errors import UserError
from medreason.config.run_plan import Plan
from medreason.config.settings import collect
from medreason.model import run_record
from medreason.preference import dpo
from medreason.rl import grpo
from medreason.train import sft

CPU = Plan(backend="transformers", device="cpu", precision="fp32", load_in_4bit=False, optim="adamw_torch")
T4 = Plan(backend="unsloth", device="cuda", precision="fp16", load_in_4bit=True, optim="adamw_8bit")
STYLE = get_style("think_response")


def script_settings(script: str, **overrides):
    import importlib
    return types.SimpleNamespace(**{**collect(vars(importlib.import_module(script))), **overrides})


@pytest.mark.parametrize("stage, script", [("sft", "medical_fine_tuning"), ("dpo", "preference_tuning"),
                                           ("rl", "rl_tuning")])
def test_every_weight_setting_is_a_setting_of_its_script(stage, script):
    cfg = vars(script_settings(script))
    missing = [name for name in run_record.WEIGHT_SETTINGS[stage] if name not in cfg and name != "SFT_ADAPTER"]
    assert not missing, f"{script}.py has no {missing}: the run record would fail to build"
    assert {"LOAD_IN_4BIT", "BACKEND", "PRECISION"} <= set(run_record.WEIGHT_SETTINGS[stage])


def test_the_record_keeps_the_resolved_backend_precision_and_4bit_not_the_settings():
    cfg = script_settings("medical_fine_tuning", BACKEND="auto", PRECISION="auto", LOAD_IN_4BIT=True)
    by = run_record.trained_by("sft", cfg, T4)
    assert (by["BACKEND"], by["PRECISION"], by["LOAD_IN_4BIT"]) == ("unsloth", "fp16", True)
    on_cpu = run_record.trained_by("sft", cfg, CPU)  # LOAD_IN_4BIT=True is ignored by a CPU's transformers backend
    assert (on_cpu["BACKEND"], on_cpu["PRECISION"], on_cpu["LOAD_IN_4BIT"]) == ("transformers", "fp32", False)
    toggled = run_record.trained_by("sft", script_settings("medical_fine_tuning", LOAD_IN_4BIT=False), CPU)
    assert run_record.differences({"trained_by": on_cpu}, toggled) == []  # same weights: the same record


@pytest.mark.parametrize("stage", ["sft", "dpo", "rl"])
def test_writer_and_reader_round_trip_every_field(stage, tmp_path):
    sft_folder = tmp_path / "sft-adapter"
    sft_record = sft.run_info(script_settings("medical_fine_tuning", TARGET_MODULES=("q_proj", "v_proj")), T4, STYLE)
    record = {"sft": lambda: sft_record,
              "dpo": lambda: dpo.run_info(script_settings("preference_tuning"), T4, sft_folder, sft_record, STYLE),
              "rl": lambda: grpo.run_info(script_settings("rl_tuning"), T4, sft_folder, sft_record, STYLE, [])}[stage]()
    assert set(record["trained_by"]) == set(run_record.WEIGHT_SETTINGS[stage])
    path = run_record.write(tmp_path, record, finished_at_step=12)
    assert path == tmp_path / run_record.FILE_NAME == tmp_path / "training_info.json"
    read = run_record.read(tmp_path)
    assert read == {**json.loads(json.dumps(record)), "finished_at_step": 12}  # every field, tuples as lists
    assert read["trained_by"]["TARGET_MODULES" if stage == "sft" else "SFT_ADAPTER"] in (
        ["q_proj", "v_proj"], str(sft_folder.resolve()))
    assert run_record.differences(read, record["trained_by"]) == []  # read back, it is the same settings
    run_record.write(tmp_path, record)
    assert "finished_at_step" not in run_record.read(tmp_path)  # an adapter saved mid-run is not marked finished


@pytest.mark.parametrize("content, expected", [
    (b'{"model_name": "x"', r"training_info\.json: damaged, not readable JSON \(JSONDecodeError.*Fix: run the same"),
    (b'{"model_name": "\xff"}', r"training_info\.json: damaged, not readable JSON \(UnicodeDecodeError"),
    (b"[1, 2]", r"training_info\.json: holds a JSON list, not a run record.*Fix"),
])
def test_a_damaged_record_is_a_one_line_error_naming_the_file(tmp_path, content, expected):
    assert run_record.read(tmp_path) == {}  # none: inference asks with the default style
    (tmp_path / run_record.FILE_NAME).write_bytes(content)
    with pytest.raises(UserError, match=expected) as err:
        run_record.read(tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


def finished_run(out, trained_by: dict, **top) -> None:
    (out / "adapter").mkdir(parents=True)
    run_record.write(out / "adapter", {**top, "trained_by": trained_by}, finished_at_step=16)


@pytest.mark.parametrize("now, printed", [
    (dict(load_in_4bit=False), "LOAD_IN_4BIT True -> False"),
    (dict(backend="transformers"), "BACKEND 'unsloth' -> 'transformers'"),
    (dict(precision="bf16"), "PRECISION 'fp16' -> 'bf16'"),
])
def test_a_finished_adapter_with_other_4bit_backend_or_precision_is_not_reused(tmp_path, capsys, now, printed):
    cfg = script_settings("medical_fine_tuning")
    finished_run(tmp_path, run_record.trained_by("sft", cfg, T4))
    assert run_record.finished_step(tmp_path, run_record.trained_by("sft", cfg, T4), say="train") == 16
    other = run_record.trained_by("sft", cfg, dataclasses.replace(T4, **now))
    assert run_record.finished_step(tmp_path, other, say="train") is None
    out = capsys.readouterr().out
    assert f"finished training at step 16 with other settings ({printed}): it is not reused" in out


def old_trained_by(cfg) -> dict:
    """trained_by as the code before this version wrote it: no SAFETY_MIX (before the safety set), no
    LOAD_IN_4BIT/BACKEND/PRECISION."""
    return {name: value for name, value in run_record.trained_by("sft", cfg, T4).items()
            if name not in ("SAFETY_MIX", *run_record.RESOLVED)}


def test_an_old_record_is_read_as_its_code_used_it(tmp_path, capsys):
    """SAFETY_MIX was 0.0 before it was recorded; 4-bit, backend and precision are at the record's top level since
    the T4 run (#12), so a record of the last wave is reused when they match and refused when they do not."""
    cfg = script_settings("medical_fine_tuning", SAFETY_MIX=0.0)
    finished_run(tmp_path, old_trained_by(cfg), load_in_4bit=True, backend="unsloth", precision="fp16")
    assert run_record.finished_step(tmp_path, run_record.trained_by("sft", cfg, T4), say="train") == 16
    mixed = run_record.trained_by("sft", script_settings("medical_fine_tuning", SAFETY_MIX=0.2), T4)
    assert run_record.finished_step(tmp_path, mixed, say="train") is None
    assert "(SAFETY_MIX 0.0 -> 0.2)" in capsys.readouterr().out
    sixteen = run_record.trained_by("sft", cfg, dataclasses.replace(T4, load_in_4bit=False))
    assert run_record.finished_step(tmp_path, sixteen, say="train") is None
    assert "(LOAD_IN_4BIT True -> False)" in capsys.readouterr().out


def test_a_record_that_never_said_how_its_base_was_held_is_not_reused(tmp_path, capsys):
    cfg = script_settings("medical_fine_tuning", SAFETY_MIX=0.0)
    finished_run(tmp_path, old_trained_by(cfg))  # before #12: no top-level load_in_4bit/backend/precision either
    assert run_record.finished_step(tmp_path, run_record.trained_by("sft", cfg, T4), say="train") is None
    out = capsys.readouterr().out
    assert ("LOAD_IN_4BIT not recorded -> True; BACKEND not recorded -> 'unsloth'; PRECISION not recorded -> 'fp16'"
            in out)


def test_a_damaged_finished_record_trains_again_and_says_why(tmp_path, capsys):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / run_record.FILE_NAME).write_text('{"finished_at_step": 3')
    assert run_record.finished_step(tmp_path, {}, say="train") is None
    assert "damaged, not readable JSON" in capsys.readouterr().out


def test_resume_rules(tmp_path):
    """SFT: a checkpoint of another base or 4-bit/backend/precision is refused, a longer MAX_STEPS is not; DPO and
    RL: every weight setting, and a checkpoint folder with no record is refused."""
    cfg = script_settings("medical_fine_tuning")
    run_record.write(tmp_path, sft.run_info(cfg, T4, STYLE))
    longer = run_record.trained_by("sft", script_settings("medical_fine_tuning", MAX_STEPS=cfg.MAX_STEPS * 2), T4)
    assert run_record.resume_differences(tmp_path, "sft", longer) == []
    assert run_record.resume_differences(tmp_path, "sft", run_record.trained_by("sft", cfg, CPU)) == [
        "LOAD_IN_4BIT True -> False", "BACKEND 'unsloth' -> 'transformers'", "PRECISION 'fp16' -> 'fp32'"]
    with pytest.raises(UserError, match=r"checkpoint-5 was trained with other settings \(PRECISION 'fp16' -> "
                                        r"'bf16'\).*Fix"):
        sft.check_resumable(str(tmp_path / "checkpoint-5"), cfg, dataclasses.replace(T4, precision="bf16"))

    dpo_cfg = script_settings("preference_tuning")
    record = dpo.run_info(dpo_cfg, T4, tmp_path / "sft", {}, STYLE)
    (tmp_path / "dpo").mkdir()
    assert run_record.resume_differences(tmp_path / "dpo", "dpo", record["trained_by"]) == [
        "no training_info.json beside them"]
    run_record.write(tmp_path / "dpo", record)
    longer = dpo.run_info(script_settings("preference_tuning", MAX_STEPS=99), T4, tmp_path / "sft", {}, STYLE)
    assert run_record.resume_differences(tmp_path / "dpo", "dpo", longer["trained_by"]) == [
        f"MAX_STEPS {dpo_cfg.MAX_STEPS!r} -> 99"]
    rl = grpo.run_info(script_settings("rl_tuning", REWARDS={"format": 1.0}), T4, tmp_path / "sft", {}, STYLE, [])
    run_record.write(tmp_path / "dpo", rl)
    other = grpo.run_info(script_settings("rl_tuning", REWARDS={"format": 2.0}), T4, tmp_path / "sft", {}, STYLE, [])
    assert run_record.resume_differences(tmp_path / "dpo", "rl", other["trained_by"]) == [
        "REWARDS {'format': 1.0} -> {'format': 2.0}"]


def test_the_last_checkpoint_of_a_finished_sft_run_is_not_resumed_with_other_weights(tmp_path):
    """Resuming a finished run's last checkpoint with another learning rate would train no step and save the old
    weights as the new run's: refused with what differs; a longer MAX_STEPS still trains on from it."""
    cfg = script_settings("medical_fine_tuning")
    info = sft.run_info(cfg, CPU, STYLE)
    (tmp_path / "checkpoints" / "checkpoint-16").mkdir(parents=True)
    run_record.write(tmp_path / "checkpoints", info)
    now = run_record.trained_by("sft", script_settings("medical_fine_tuning", LEARNING_RATE=1e-5), CPU)
    assert run_record.resume_differences(tmp_path / "checkpoints", "sft", now) == []  # not finished: resumable
    (tmp_path / "adapter").mkdir()
    run_record.write(tmp_path / "adapter", info, finished_at_step=16)
    assert run_record.resume_differences(tmp_path / "checkpoints", "sft", now) == [
        f"LEARNING_RATE {cfg.LEARNING_RATE!r} -> 1e-05"]
    with pytest.raises(UserError, match=r"checkpoint-16 was trained with other settings \(LEARNING_RATE .*Fix"):
        sft.check_resumable(str(tmp_path / "checkpoints" / "checkpoint-16"),
                            script_settings("medical_fine_tuning", LEARNING_RATE=1e-5), CPU)
    longer = run_record.trained_by("sft", script_settings("medical_fine_tuning", MAX_STEPS=cfg.MAX_STEPS * 2), CPU)
    assert run_record.resume_differences(tmp_path / "checkpoints", "sft", longer) == []
