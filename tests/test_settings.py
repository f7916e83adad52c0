import dataclasses
from pathlib import Path

import pytest

from medreason.config import settings
from medreason.config.settings import SettingsError, parse_overrides, resolve

DEFAULTS = {"MAX_STEPS": 200, "LEARNING_RATE": 2e-4, "LOAD_IN_4BIT": True, "OUTPUT_DIR": "outputs/x",
            "TARGET_MODULES": ["q_proj", "v_proj"], "TRAIN_SAMPLES": None, "PUSH_TO_HUB": False}
ANNOTATIONS = {"TRAIN_SAMPLES": int | None, "PUSH_TO_HUB": bool | str}


def parse(*args):
    return parse_overrides(list(args), DEFAULTS, ANNOTATIONS)


def test_values_are_parsed_to_the_default_type():
    assert parse("--MAX_STEPS=10", "--LEARNING_RATE=1e-4", "--LOAD_IN_4BIT=false") == {
        "MAX_STEPS": 10, "LEARNING_RATE": 1e-4, "LOAD_IN_4BIT": False}
    assert type(parse("--LEARNING_RATE=1")["LEARNING_RATE"]) is float
    assert parse("--OUTPUT_DIR=2024")["OUTPUT_DIR"] == "2024"  # strings stay verbatim
    assert parse("--TARGET_MODULES=q_proj,k_proj,gate_proj")["TARGET_MODULES"] == ["q_proj", "k_proj", "gate_proj"]
    assert parse("--TARGET_MODULES=['o_proj']")["TARGET_MODULES"] == ["o_proj"]
    assert parse("--TRAIN_SAMPLES=500") == {"TRAIN_SAMPLES": 500}
    assert parse("--TRAIN_SAMPLES=None") == {"TRAIN_SAMPLES": None}
    assert parse("--PUSH_TO_HUB=true") == {"PUSH_TO_HUB": True}
    assert parse("--PUSH_TO_HUB=dry-run") == {"PUSH_TO_HUB": "dry-run"}
    assert parse("--OUTPUT_DIR=True") == {"OUTPUT_DIR": "True"}


@pytest.mark.parametrize("arg, expected", [
    ("--MAX_STEPS=ten", "expected int"),
    ("--MAX_STEPS=1.5", "expected int"),
    ("--LOAD_IN_4BIT=1", "expected bool"),
    ("--TRAIN_SAMPLES=lots", "expected int or None"),
])
def test_wrong_type_names_the_setting_and_the_fix(arg, expected):
    with pytest.raises(SettingsError, match=expected) as err:
        parse(arg)
    assert arg.split("=")[0] in str(err.value) and "Fix" in str(err.value)


def test_unknown_setting_suggests_the_closest_names():
    with pytest.raises(SettingsError, match=r"Unknown setting --MAX_STEP\. Did you mean --MAX_STEPS"):
        parse("--MAX_STEP=5")
    with pytest.raises(SettingsError, match="Did you mean --LEARNING_RATE"):
        parse("--learning_rate=1e-4")


def test_malformed_argument_shows_the_form():
    with pytest.raises(SettingsError, match="--NAME=value"):
        parse("MAX_STEPS=5")


def test_resolve_reads_the_scripts_constants_and_reports_overrides():
    import medical_fine_tuning as script
    cfg, origins = resolve(vars(script), ["--MAX_STEPS=7", "--TRAIN_SAMPLES=12"])
    assert cfg.MAX_STEPS == 7 and cfg.TRAIN_SAMPLES == 12
    assert origins == {"MAX_STEPS": "command line", "TRAIN_SAMPLES": "command line"}
    assert cfg.LEARNING_RATE == script.LEARNING_RATE == 2e-4
    assert not hasattr(cfg, "main") and not hasattr(cfg, "Path")  # functions and imports are not settings
    for name in ("MODEL_NAME", "LOAD_IN_4BIT", "MAX_SEQ_LENGTH", "LORA_R", "LORA_ALPHA", "LORA_DROPOUT",
                 "TARGET_MODULES", "DATASET", "DATASET_CONFIG", "VAL_SIZE", "BATCH_SIZE", "GRAD_ACCUM", "MAX_STEPS",
                 "EVAL_STEPS", "SEED", "OUTPUT_DIR", "EVAL_SAMPLES", "MAX_NEW_TOKENS", "BACKEND", "WANDB_PROJECT",
                 "REPORT_TO", "TRAIN_SAMPLES", "PROMPT_STYLE", "SAVE_STEPS", "PRESET", "DRY_RUN"):
        assert hasattr(cfg, name), name


def settle(*argv, namespace=None, **kwargs):
    """The trainer's settings as main() settles them (on the transformers backend: no Unsloth import here)."""
    import medical_fine_tuning
    from medreason.config import run_plan
    from medreason.data import readers
    kwargs = {"automatic": run_plan.automatic_preset, "rows": readers.usable_row_count, **kwargs}
    return run_plan.settle(namespace or vars(medical_fine_tuning), ["--BACKEND=transformers", *argv], **kwargs)


def test_settled_settings_are_frozen_and_typed():
    cfg, _ = settle("--MODEL_NAME=some/other-model")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.GRAD_ACCUM = 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.NEW_NAME = 1
    types_ = {f.name: f.type for f in dataclasses.fields(cfg)}
    assert types_["TRAIN_SAMPLES"] == (int | None) and types_["MAX_STEPS"] is int and types_["DATASET"] is str
    assert types_["PUSH_TO_HUB"] == (bool | str)
    assert dataclasses.replace(cfg, MAX_STEPS=3).MAX_STEPS == 3 and cfg.MAX_STEPS == 200  # a copy, never a change


def test_each_value_says_where_it_came_from():
    cfg, plan = settle("--PRESET=smollm2", "--MAX_STEPS=7", "--DATASET=nobody/a-hub-dataset")
    assert cfg.origin("LORA_R").kind == "constant" and "LORA_R" not in cfg.origins
    assert cfg.origin("LEARNING_RATE") == settings.Origin("preset", "preset smollm2")
    assert cfg.origin("MAX_STEPS") == settings.Origin("command line", "command line")
    assert cfg.origin("PRESET").kind == "command line"
    sized = cfg.origin("EVAL_SAMPLES")  # smollm2 leaves it to the constant, so this CPU sizes it
    assert (sized.kind, sized.label, cfg.EVAL_SAMPLES) == ("automatic", "sized for CPU", 4)
    assert "12 tokens/s" in sized.reason
    assert any(r.startswith("EVAL_SAMPLES: 4 on a CPU") and r.endswith("--EVAL_SAMPLES=... sets it.")
               for r in plan.reasons)
    assert cfg.origin("GRADIENT_CHECKPOINTING").kind == "preset"  # smollm2 sets it: not sized again
    assert cfg.origin("VAL_SIZE").kind == "constant" and cfg.VAL_SIZE == 100  # a Hub id: rows unknown, kept
    auto, _ = settle("--MODEL_NAME=embedded")
    assert auto.PRESET == "smollm2" and auto.origin("PRESET").kind == "automatic"
    assert auto.origins["PRESET"] == "automatic: " + auto.origin("PRESET").reason


def test_cpu_sizing_changes_only_what_no_preset_or_flag_set():
    cfg, _ = settle("--MODEL_NAME=some/other-model")  # the constants, on this CUDA-less machine
    assert (cfg.EVAL_SAMPLES, cfg.GRADIENT_CHECKPOINTING) == (4, False)
    assert cfg.origins["EVAL_SAMPLES"] == cfg.origins["GRADIENT_CHECKPOINTING"] == "sized for CPU"
    cfg, _ = settle("--MODEL_NAME=some/other-model", "--EVAL_SAMPLES=9", "--GRADIENT_CHECKPOINTING=True")
    assert (cfg.EVAL_SAMPLES, cfg.GRADIENT_CHECKPOINTING) == (9, True)
    assert cfg.origins["EVAL_SAMPLES"] == "command line"


def test_global_batch_sets_grad_accum_and_says_so(monkeypatch):
    from medreason.config import run_plan
    cfg, plan = settle("--MODEL_NAME=some/other-model", "--GLOBAL_BATCH=16", "--BATCH_SIZE=2")
    assert cfg.GRAD_ACCUM == 8 and cfg.origin("GRAD_ACCUM").kind == "automatic"
    assert cfg.origins["GRAD_ACCUM"] == "from GLOBAL_BATCH"
    assert ("effective batch: 1 process x BATCH_SIZE 2 x GRAD_ACCUM 8 = 16 rows per optimizer update (GRAD_ACCUM set "
            "from GLOBAL_BATCH=16)") in plan.reasons
    cfg, _ = settle("--PRESET=smollm2", "--GLOBAL_BATCH=2")  # the preset's GRAD_ACCUM 4 gives way to GLOBAL_BATCH
    assert cfg.GRAD_ACCUM == 2
    monkeypatch.setattr(run_plan.distributed, "world_size", lambda: 4)  # 4 GPUs keep the recipe of 1
    cfg, plan = settle("--MODEL_NAME=some/other-model", "--GLOBAL_BATCH=8")
    assert cfg.GRAD_ACCUM == 2 and any(r.startswith("effective batch: 4 processes x BATCH_SIZE 1 x GRAD_ACCUM 2 = 8")
                                       for r in plan.reasons)
    cfg, plan = settle("--MODEL_NAME=some/other-model")
    assert cfg.GRAD_ACCUM == 8 and any(r.endswith("--GLOBAL_BATCH=8 keeps that recipe") for r in plan.reasons)


@pytest.mark.parametrize("argv, message", [
    (("--GLOBAL_BATCH=7", "--BATCH_SIZE=2"), r"GLOBAL_BATCH=7 is not a multiple of processes \(1\) x BATCH_SIZE "
                                             r"\(2\) = 2\. Fix: --GLOBAL_BATCH=8, or another BATCH_SIZE"),
    (("--GLOBAL_BATCH=0",), r"GLOBAL_BATCH=0 is not a multiple .* Fix: --GLOBAL_BATCH=1"),
    (("--GLOBAL_BATCH=16", "--GRAD_ACCUM=4"), r"GRAD_ACCUM=4 and GLOBAL_BATCH=16 disagree with 1 process\(es\) x "
                                              r"BATCH_SIZE 1\. Fix: give one of the two"),
])
def test_global_batch_errors_name_the_fix(argv, message):
    from medreason.config.errors import UserError
    with pytest.raises(UserError, match=message):
        settle("--MODEL_NAME=some/other-model", *argv)
    settle("--MODEL_NAME=some/other-model", "--GLOBAL_BATCH=16", "--GRAD_ACCUM=16")  # agreeing: no error


def test_a_script_without_the_trainers_settings_settles():
    """A rule applies only to settings the script declares: no stage declares GLOBAL_BATCH, EVAL_SAMPLES,
    GRADIENT_CHECKPOINTING or VAL_SIZE only because the run plan reads them."""
    namespace = {"BACKEND": "transformers", "PRECISION": "auto", "LOAD_IN_4BIT": False, "OUTPUT_DIR": "out",
                 "BATCH_SIZE": 2, "GRAD_ACCUM": 3, "DATASET": "rows.jsonl"}
    cfg, plan = settle(namespace=namespace, automatic=None)
    assert vars(cfg) == namespace and cfg.origins == {"BACKEND": "command line"}  # the helper's flag
    assert any(r.startswith("effective batch: 1 process x BATCH_SIZE 2 x GRAD_ACCUM 3 = 6") for r in plan.reasons)


def test_the_preference_stage_places_its_output_beside_the_sft_run():
    import preference_tuning
    from medreason.config import run_plan
    args = ["--BACKEND=transformers", "--SFT_ADAPTER=outputs/run7/adapter"]
    cfg, _ = run_plan.settle(vars(preference_tuning), args, preset_dir=preference_tuning._PRESET_DIR,
                             output=preference_tuning.place_output)
    assert cfg.OUTPUT_DIR == str(Path("outputs/run7-dpo")) and cfg.origins["OUTPUT_DIR"] == "beside the SFT run"
    assert cfg.origin("OUTPUT_DIR").kind == "automatic" and "outputs/run7" in cfg.origin("OUTPUT_DIR").reason
    cfg, _ = run_plan.settle(vars(preference_tuning), args + ["--OUTPUT_DIR=mine"],
                             preset_dir=preference_tuning._PRESET_DIR, output=preference_tuning.place_output)
    assert cfg.OUTPUT_DIR == "mine" and cfg.origins["OUTPUT_DIR"] == "command line"


# --- VAL_SIZE on a small file: at most 10% of its rows unless the user set it ---------------------------------------

def shared_rows() -> str:
    from conftest import SHARED_SAMPLE
    if not SHARED_SAMPLE.is_file():
        pytest.skip(f"real medical-o1 rows not found at {SHARED_SAMPLE} (the shared data folder is absent)")
    return str(SHARED_SAMPLE)


def test_150_rows_hold_out_15_unless_val_size_is_set():
    rows = shared_rows()
    cfg, plan = settle("--MODEL_NAME=embedded", f"--DATASET={rows}")
    assert cfg.VAL_SIZE == 15 and cfg.origins["VAL_SIZE"] == "sized for the data (150 rows)"
    said = next(r for r in plan.reasons if r.startswith("VAL_SIZE:"))
    assert said == (f"VAL_SIZE: 15, 10% of the 150 usable rows of {rows} (the default 100 would leave 50 rows to "
                    f"train on). --VAL_SIZE=... sets it.")
    assert settle("--MODEL_NAME=embedded", f"--DATASET={rows}", "--VAL_SIZE=30")[0].VAL_SIZE == 30  # the user's
    assert settle("--PRESET=demo")[0].VAL_SIZE == 6  # a preset's VAL_SIZE is kept too


def test_a_dry_run_on_150_rows_trains_on_135_and_says_why(tmp_path, capsys):
    import medical_fine_tuning
    from medreason.data.readers import DataError
    rows = shared_rows()
    common = ["--MODEL_NAME=embedded", f"--DATASET={rows}", "--DRY_RUN=True", "--BACKEND=transformers",
              "--REPORT_TO=none", f"--OUTPUT_DIR={tmp_path / 'run'}"]
    assert medical_fine_tuning.main(common) == ({}, True, True)
    out = capsys.readouterr().out
    assert "  VAL_SIZE                = 15 <- sized for the data (150 rows)" in out
    assert "  - VAL_SIZE: 15, 10% of the 150 usable rows of" in out
    assert "135 training rows, 15 validation rows" in out
    with pytest.raises(DataError, match=r"VAL_SIZE=150 leaves no training rows out of 150 usable rows\. Fix: "
                                        r"--VAL_SIZE=15"):
        medical_fine_tuning.main(common + ["--VAL_SIZE=150"])  # a user's VAL_SIZE is kept, and refused as before


def test_rows_are_counted_only_for_a_readable_local_file(tmp_path):
    from medreason.data import readers
    assert readers.usable_row_count("nobody/a-hub-dataset") is None  # never downloaded for the count
    assert readers.usable_row_count(str(tmp_path / "missing.jsonl")) is None  # the data step says what is wrong
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert readers.usable_row_count(str(bad)) is None
    assert readers.usable_row_count("demo") == 36


def test_an_sft_adapter_named_on_the_command_line_is_never_trained_by_the_stage(monkeypatch, tmp_path):
    import subprocess
    import preference_tuning
    from medreason.config import run_plan
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("the SFT demo must not run"))
    cfg, _ = run_plan.settle(vars(preference_tuning), ["--BACKEND=transformers", "--TRAIN_SFT_IF_MISSING=True",
                                                      f"--SFT_ADAPTER={tmp_path / 'missing' / 'adapter'}"],
                             preset_dir=preference_tuning._PRESET_DIR, output=preference_tuning.place_output)
    assert cfg.origin("SFT_ADAPTER").kind == "command line"
    assert preference_tuning.ensure_sft_adapter(cfg) is None
