import pytest

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


def test_cpu_sizing_changes_only_what_no_preset_or_flag_set():
    import types
    from medreason.config.run_plan import size_for_cpu
    fresh = lambda: types.SimpleNamespace(EVAL_SAMPLES=20, GRADIENT_CHECKPOINTING=True)  # noqa: E731
    cfg, origins = fresh(), {}
    assert set(size_for_cpu(cfg, origins, "cpu")) == {"EVAL_SAMPLES", "GRADIENT_CHECKPOINTING"}
    assert cfg.EVAL_SAMPLES == 4 and cfg.GRADIENT_CHECKPOINTING is False
    assert origins == {"EVAL_SAMPLES": "sized for CPU", "GRADIENT_CHECKPOINTING": "sized for CPU"}
    cfg = fresh()
    assert size_for_cpu(cfg, {"EVAL_SAMPLES": "command line", "GRADIENT_CHECKPOINTING": "preset x"}, "cpu") == {}
    assert cfg.EVAL_SAMPLES == 20 and cfg.GRADIENT_CHECKPOINTING is True
    cfg = fresh()
    assert size_for_cpu(cfg, {}, "cuda") == {} and cfg.EVAL_SAMPLES == 20 and cfg.GRADIENT_CHECKPOINTING
