"""The GPU check in one call, proven here before a GPU is lent: the kit (scripts/gpu_kit.sh) installs over the GPU
machine's packages with nothing missing for what the check imports, the model folder is Llama-3.2-3B's shape, a
part that fails or hangs leaves the others' figures, and bench/gpu_check.sh runs end to end in its small mode.

The kit is built for real (pip against the package registry, Python 3.12 resolving); where the registry or a Python
3.12 is out of reach the kit tests skip and say which."""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "bench"))
import gpu_kit  # noqa: E402  scripts/gpu_kit.py

# Imported here only because they are installed (each importer falls back without them), or no distribution at all
OPTIONAL = {"brotli": "urllib3/aiohttp use it for brotli responses when present",
            "_brotli": "brotli's extension, as above", "pytz": "pandas 3 and datasets use it when present",
            "_cyutility": "Cython's shared utility module of a compiled package, not a distribution"}
NETWORK_TROUBLE = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
                   "ConnectTimeout", "ReadTimeout", "Max retries exceeded", "No route to host")
# Top-level modules the check imports that are no distribution of their own (or belong to one under another name)
IMPORT_NAMES = {"yaml": "pyyaml", "PIL": "pillow", "dotenv": "python-dotenv", "google": "protobuf",
                "rouge_score": "rouge-score", "sklearn": "scikit-learn", "cv2": "opencv-python-headless",
                "attr": "attrs", "dateutil": "python-dateutil", "_yaml": "pyyaml", "jwt": "pyjwt",
                "typing_extensions": "typing-extensions", "pkg_resources": "setuptools", "_distutils_hack":
                "setuptools", "markupsafe": "markupsafe", "git": "gitpython", "nvidia": "nvidia-ml-py",
                "pynvml": "nvidia-ml-py"}


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Path:
    """The kit, built by scripts/gpu_kit.sh into a temporary folder (downloads cached in .cache/gpu_kit/)."""
    try:
        gpu_kit.python312()
    except SystemExit as e:
        pytest.skip(f"the kit cannot be built here: {e}")
    folder = tmp_path_factory.mktemp("gpu_kit")
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_kit.sh")], capture_output=True, text=True,
                            env={**os.environ, "GPU_KIT_DIR": str(folder), "PYTHON": sys.executable}, timeout=900)
    output = result.stdout + result.stderr
    if result.returncode != 0 and any(sign in output for sign in NETWORK_TROUBLE):
        pytest.skip(f"the kit cannot be built: the package registry is not reachable ({output.strip()[-300:]})")
    assert result.returncode == 0, output[-4000:]
    assert "MiB of the call's 64 MiB" in result.stdout
    return folder


def manifest(kit: Path) -> dict:
    return json.loads((kit / "MANIFEST.json").read_text())


def wheel_named(kit: Path, name: str) -> Path:
    return next(w for w in (kit / "wheels").glob("*.whl") if gpu_kit.canonical(w.name.split("-")[0]) == name)


def test_the_kit_fits_the_call_and_cuts_only_what_it_says(kit):
    info = manifest(kit)
    assert (info["kit_bytes"] + info["tracked_bytes"]) / 2**20 < gpu_kit.LIMIT_MIB
    carried = {e["name"]: e["version"] for e in info["wheels"]}
    # our GPU pins, not the CPU file's (trl 1.16) or whatever the machine has (peft)
    assert carried["trl"] == "1.15.0" and carried["peft"] == "0.21.2" and carried["bitsandbytes"] == "0.50.2"
    assert carried["unsloth"] == carried["unsloth-zoo"] == "2026.10.9" and carried["datasets"] == "4.8.5"
    assert not {"torch", "transformers", "accelerate", "huggingface-hub", "gradio", "triton"} & set(carried)
    with zipfile.ZipFile(wheel_named(kit, "unsloth")) as z:
        names = z.namelist()
    assert not [n for n in names if n.startswith("studio/")] and "unsloth/__init__.py" in names
    with zipfile.ZipFile(wheel_named(kit, "bitsandbytes")) as z:
        libraries = sorted(Path(n).name for n in z.namelist() if n.endswith(".so"))
    assert libraries == ["libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so"]
    assert set(info["cut_from_wheels"]) == {"unsloth", "bitsandbytes"}


@pytest.fixture(scope="module")
def machine_env(kit, tmp_path_factory) -> Path:
    """A Python 3.12 venv holding only the GPU machine's packages, as metadata: the four of known version at that
    version; the others (version never read there) at the version pip chose for them here."""
    chosen = manifest(kit)["machine_versions"]
    known = {}
    for name, version in gpu_kit.device_packages().items():
        known[name] = version or chosen.get(name) or "0"
    return Path(gpu_kit.machine_like_env(tmp_path_factory.mktemp("machine") / "venv", known))


def test_the_kit_installs_over_the_machine_with_nothing_missing(kit, machine_env, tmp_path):
    """pip itself, offline against the kit alone: our pins resolve (--dry-run --no-index, the machine's packages
    counted as installed), and every wheel really installs for Python 3.12 as the check installs it."""
    wheels = kit / "wheels"
    report = tmp_path / "pins.json"
    pins = tmp_path / "pins.txt"
    pins.write_text("\n".join(gpu_kit.requirement_lines()) + "\n")
    result = subprocess.run([str(machine_env), "-m", "pip", "install", "--dry-run", "--no-index", "--find-links",
                             str(wheels), "--report", str(report), "-r", str(pins), "--quiet"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    planned = {gpu_kit.canonical(i["metadata"]["name"]) for i in json.loads(report.read_text())["install"]}
    carried = {e["name"] for e in manifest(kit)["wheels"]}
    assert planned <= carried and {"trl", "peft", "datasets", "bitsandbytes", "rouge-score", "wandb"} <= planned
    # unsloth and unsloth_zoo go in --no-deps (as requirements-nodeps.txt): what they declare must be carried too
    missing = []
    device = gpu_kit.device_packages()
    for name in ("unsloth", "unsloth-zoo"):
        with zipfile.ZipFile(wheel_named(kit, name)) as z:
            metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        lines = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
        for requirement in gpu_kit.needs({"requires_dist": lines}, set()):
            dep = gpu_kit.canonical(requirement.name)
            if dep not in carried | set(device) | set(gpu_kit.UNMET):
                missing.append(f"{name}: {requirement}")
    assert not missing, f"declared by Unsloth, neither carried nor on the machine: {missing}"
    site = tmp_path / "site"
    install = subprocess.run([str(machine_env), "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                              "--no-compile", "--target", str(site), *map(str, wheels.glob("*.whl"))],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    assert (site / "unsloth" / "__init__.py").is_file() and not (site / "studio").exists()
    assert (site / "bitsandbytes" / "libbitsandbytes_cuda130.so").is_file()


TRACE = r"""
import importlib.metadata, json, os, runpy, sys
sys.path.insert(0, os.getcwd())
import unsloth  # first, as the trainer imports it
import bitsandbytes, trl, peft, datasets, rouge_score, wandb, unsloth_zoo
import medreason
import pathlib
for path in sorted(pathlib.Path("medreason").rglob("*.py")):
    if path.stem not in ("webchat", "space", "gguf", "__init__"):  # the page, the Space, llama.cpp
        __import__(".".join(path.with_suffix("").parts))
for script in ("medical_fine_tuning", "evaluate", "inference", "preference_tuning", "rl_tuning"):
    if os.path.exists(script + ".py"):
        runpy.run_path(script + ".py", run_name="traced")
runpy.run_path("bench/gpu_check.py", run_name="traced")
sites = [p for p in sys.path if "site-packages" in p]
top = sorted({m.split(".")[0] for m, mod in list(sys.modules.items()) if getattr(mod, "__file__", None)
              and any(mod.__file__.startswith(s) for s in sites)})
owners = importlib.metadata.packages_distributions()
print(json.dumps({m: owners.get(m, []) for m in top}))
"""


def test_what_the_check_imports_comes_from_the_kit_or_the_machine(kit):
    """Every third-party module imported by `import unsloth` and the check's modules (traced here, in the CPU
    environment with the same pins), by the distribution it comes from: carried by the kit or on the machine."""
    result = subprocess.run([sys.executable, "-c", TRACE], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "UNSLOTH_DISABLE_STATISTICS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    modules = json.loads(result.stdout.strip().splitlines()[-1])
    available = {e["name"] for e in manifest(kit)["wheels"]} | set(gpu_kit.device_packages())
    missing = {}
    for module, owners in modules.items():
        names = {gpu_kit.canonical(o) for o in owners} or {gpu_kit.canonical(IMPORT_NAMES.get(module, module))}
        if not names & available and module not in OPTIONAL:
            missing[module] = sorted(names)
    assert {"unsloth", "trl", "bitsandbytes", "datasets"} <= set(modules)
    assert not missing, f"imported by the check, neither in the kit nor on the GPU machine: {missing}"


def test_the_model_folder_is_llama_3_2_3b_with_a_llama_3_template():
    from transformers import AutoConfig, AutoTokenizer
    folder = ROOT / "bench" / "gpu_model"
    config = AutoConfig.from_pretrained(folder)
    h, layers, kv = config.hidden_size, config.num_hidden_layers, config.num_key_value_heads * config.head_dim
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * config.intermediate_size + 2 * h
    params = config.vocab_size * h + layers * per_layer + h  # tied embeddings
    assert config.vocab_size == 128256 and round(params / 1e9, 2) == 3.21
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert len(tokenizer) < 4096 and not list(folder.glob("*.safetensors"))  # small: no weights travel
    assert config.bos_token_id == tokenizer.bos_token_id and tokenizer.eos_token_id in config.eos_token_id
    assert config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    from medreason.answers.prompts import TEMPLATE_DATE, pin_template_date
    pinned = pin_template_date(tokenizer)
    text = pinned.apply_chat_template([{"role": "user", "content": "Chest pain?"}], tokenize=False,
                                      add_generation_prompt=True)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>")
    assert f"Today Date: {TEMPLATE_DATE}\n" in text  # the date pinned, not today's
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tokenizer("The right coronary artery <think>")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.decode(ids[1:]) == "The right coronary artery <think>"


def test_a_part_that_fails_or_hangs_leaves_the_others(tmp_path):
    """Each part is its own process with its own limit: a crash and a hang are recorded with their reason, and the
    next part still runs and records its result."""
    import gpu_check
    check = gpu_check.Check(tmp_path, tmp_path, small=True, only=None, budget=60)
    py = sys.executable
    check.part("crashes", [py, "-c", "raise SystemExit(3)"], 30)
    check.part("hangs", [py, "-c", "import time; print('started', flush=True); time.sleep(60)"], 2)
    check.part("works", [py, "-c", "print('RESULT {\"answer\": 42}')"], 30)
    parts = json.loads((tmp_path / "summary.json").read_text())["parts"]
    assert parts["crashes"]["status"] == "failed" and parts["crashes"]["reason"] == "exit status 3"
    assert parts["hangs"]["status"] == "failed" and "stopped at its 2 s limit" in parts["hangs"]["reason"]
    assert parts["hangs"]["log_tail"] == ["started"] and parts["hangs"]["seconds"] < 10
    assert parts["works"] == {"status": "ok", "seconds": parts["works"]["seconds"], "result": {"answer": 42}}


@pytest.mark.e2e
def test_the_gpu_check_runs_end_to_end_in_its_small_mode(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--small"], cwd=ROOT, capture_output=True,
                            text=True, timeout=1500, env={**os.environ, "OUT": str(out), "PYTHON": sys.executable,
                                                          "GPU_CHECK_WORK": str(tmp_path / "work")})
    summary = json.loads((out / "summary.json").read_text())
    parts = summary["parts"]
    assert result.returncode == 0, json.dumps(parts, indent=1)[-4000:]
    assert summary["mode"] == "small (CPU)" and (out / "gpu_check.log").read_text().count("[check]") >= 8
    for name in ("unsloth_import", "sft_unsloth"):
        assert parts[name]["status"] == "skipped" and "needs CUDA" in parts[name]["reason"]
    assert parts["model"]["result"]["vocab_size"] == 128256
    assert parts["model"]["result"]["row_tokens_min"] > gpu_check_small()["seq"]  # every row at full length
    train = parts["sft_transformers"]
    assert train["status"] == "ok" and train["figures"]["steps"] == gpu_check_small()["steps"]
    assert train["figures"]["seconds_per_step"] > 0 and train["figures"]["tokens"] > 0
    for name in ("evaluate_continuous", "evaluate_batched", "inference", "preference"):
        assert parts[name]["status"] == "ok", (name, parts[name])
    assert parts["preference"]["figures"]["steps"] == 2
    assert parts["rl"]["status"] == ("ok" if (ROOT / "rl_tuning.py").is_file() else "skipped")


def gpu_check_small() -> dict:
    import gpu_check
    return gpu_check.SMALL
