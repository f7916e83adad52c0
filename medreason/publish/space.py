"""A Hugging Face Space serving a published adapter with the chat page (app.py): the folder a Space needs, built
from the repo's own files, and its push with huggingface_hub.

The folder: app.py and the medreason package as they are here, a requirements.txt for the Space's CPU hardware
(pins read from the project's requirement files; Gradio comes from `sdk_version`), and a README whose metadata says
`sdk: gradio`, `app_file: app.py` and the adapter it serves. The push also sets the Space variables app.py reads when
it is given no flags: MEDREASON_ADAPTER, and for the demo's adapter MEDREASON_BASE_MODEL (the embedded model's
package pulls llama-cpp-python, a long source build, so a Space takes SmolLM2 from the Hub instead).
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from medreason.model.embedded import EMBEDDED, EMBEDDED_HUB_ID
from medreason.config.errors import UserError
from medreason.model import run_record
from medreason.model.for_inference import adapter_base
from medreason.publish.hub import PushPlan, check_repo_id, check_write_access, describe_folder, license_for, retry_command

ADAPTER_VARIABLE = "MEDREASON_ADAPTER"  # app.py serves the adapter this environment variable names
BASE_VARIABLE = "MEDREASON_BASE_MODEL"  # ... on this base model, when set (else the one it was trained on)
ROOT = Path(__file__).resolve().parents[2]
SPACE_DIR = "space_upload"  # inside the run folder, next to hub_upload/
PIN_FILES = ("requirements.txt", "constraints-cpu.txt", "requirements-nodeps.txt")  # where the versions live
SPACE_PACKAGES = ("torch", "transformers", "peft", "accelerate", "huggingface_hub", "python-dotenv")
QUANTIZED_PACKAGES = ("bitsandbytes",)  # a pre-quantized bnb-4bit base (the default Llama-3.2-3B) loads with it
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # the CPU build of torch (PyPI's default is CUDA's, GBs)
PYTHON_VERSION = "3.11"  # what the project is tested on
EMBEDDED_NOTE = ("The adapter was trained on the 4-bit build of SmolLM2-135M-Instruct embedded in the project; here "
                 "it runs on the original weights from the Hub, so its answers may differ slightly from the local "
                 "demo's.")


@dataclass(frozen=True)
class SpacePlan:
    space_id: str
    adapter: PushPlan  # the adapter repo it serves (published first); its mode and privacy are the Space's too


def check_space(space_id: str, adapter: PushPlan) -> SpacePlan:
    """Preflight: a well-formed Space id and, for a real push, a token that may write to its namespace."""
    try:
        check_repo_id(space_id)
    except UserError:
        raise UserError(f"--space {space_id!r} is not a valid Space id: it must be namespace/name, with letters, "
                        f"digits, '-', '_' and '.'. Fix: --space your-name/medical-reasoning-chat.") from None
    if adapter.mode == "push":
        print(f"[preflight] space: {check_write_access(space_id)}")
    return SpacePlan(space_id, adapter)


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_versions(root: Path = ROOT) -> dict[str, str]:
    """{package: version} of every `name==version` line in the project's requirement files."""
    pins = {}
    for name in PIN_FILES:
        path = root / name
        for line in path.read_text().splitlines() if path.is_file() else []:
            match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)", line)
            if match:
                pins[_normalized(match[1])] = match[2]
    return pins


def gradio_version(pins: dict[str, str]) -> str:
    """The Gradio the Space runs (its sdk_version): the pinned one, else the one installed here."""
    from importlib import metadata
    return pins.get("gradio") or metadata.version("gradio")


def space_requirements(base: str, pins: dict[str, str]) -> str:
    packages = SPACE_PACKAGES + (QUANTIZED_PACKAGES if "bnb-4bit" in base.lower() else ())
    missing = [p for p in packages if _normalized(p) not in pins]
    if missing:
        raise UserError(f"no pinned version of {', '.join(missing)} in {', '.join(PIN_FILES)}. Fix: run from the "
                        f"project's folder, whose requirement files pin them.")
    lines = ["# The Space's CPU install, built by medreason/publish/space.py from the project's pins. Gradio itself is",
             "# installed by the Space from README.md's sdk_version.", f"--extra-index-url {TORCH_CPU_INDEX}"]
    return "\n".join(lines + [f"{p}=={pins[_normalized(p)]}" for p in packages]) + "\n"


def _adapter_facts(run_dir: Path) -> tuple[str, bool]:
    """(the base model's Hub id, or '' for a local folder; whether it is the embedded model) of a run's adapter."""
    adapter = run_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter}: no adapter_config.json, so there is no adapter for a Space to serve. Fix: "
                        f"pass the OUTPUT_DIR of a finished training run.")
    base = adapter_base(adapter, run_record.read(adapter))
    if base == EMBEDDED:
        return EMBEDDED_HUB_ID, True
    return (base if base.count("/") == 1 and not Path(base).exists() else ""), False


def space_variables(run_dir: Path, plan: SpacePlan) -> dict[str, str]:
    """What app.py is told on the Space: the adapter, and for the embedded model its original on the Hub."""
    base, embedded = _adapter_facts(run_dir)
    return {ADAPTER_VARIABLE: plan.adapter.repo_id, **({BASE_VARIABLE: base} if embedded else {})}


def render_space_card(run_dir: Path, plan: SpacePlan):
    from huggingface_hub import SpaceCard, SpaceCardData
    base, embedded = _adapter_facts(run_dir)
    adapter_id = plan.adapter.repo_id
    variables = ", ".join(f"`{k}={v}`" for k, v in space_variables(run_dir, plan).items())
    data = SpaceCardData(
        title="Medical reasoning chat", sdk="gradio", sdk_version=gradio_version(pinned_versions()),
        python_version=PYTHON_VERSION, app_file="app.py", license=license_for(base),
        models=[adapter_id] + ([base] if base else []),
        tags=["medical", "chain-of-thought", "reasoning", "lora", "education"],
        emoji="🩺", colorFrom="blue", colorTo="green", pinned=False,
        short_description="A small medical-reasoning fine-tune; education only")
    base_text = f"[{base}](https://huggingface.co/{base})" if base else "its base model"
    notes = [f"`app.py` serves what the Space variables say ({variables}, set when this Space was published). A "
             f"private adapter needs a read token as the Space secret `HF_TOKEN`.",
             "It runs on the free CPU hardware" + (
                 ", where this 135M-parameter model writes about 10 tokens a second." if embedded else
                 "; a model of billions of parameters answers slowly there: choose GPU hardware in the Space's "
                 "settings for real use."),
             *([EMBEDDED_NOTE] if embedded else []),
             f"The same page on your own machine: `python app.py --adapter {adapter_id}` in the project's folder."]
    body = (f"\n# Medical reasoning chat\n\nA chat page for [{adapter_id}](https://huggingface.co/{adapter_id}), a "
            f"small LoRA fine-tune of {base_text} on medical chain-of-thought examples. The model reasons step by "
            f"step; the page shows its reasoning in a folding \"Thinking\" message and its answer below it, and says "
            f"so when an answer stayed incomplete.\n\n**For education and research only. It is not medical "
            f"advice**, and it can be confidently wrong: never use it for a health decision.\n\n"
            + "".join(f"- {note}\n" for note in notes))
    return SpaceCard(f"---\n{data.to_yaml()}\n---\n{body}")


def build_space_folder(run_dir: Path, plan: SpacePlan) -> Path:
    """Exactly what would be pushed: app.py, the medreason package, requirements.txt and the README."""
    card = render_space_card(run_dir, plan)
    folder = run_dir / SPACE_DIR
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copy2(ROOT / "app.py", folder / "app.py")
    for module in sorted((ROOT / "medreason").rglob("*.py")):  # the package with its subpackages, no caches
        target = folder / module.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(module, target)
    (folder / "requirements.txt").write_text(space_requirements(_adapter_facts(run_dir)[0], pinned_versions()))
    card.save(folder / "README.md")
    return folder


def push_space(folder: Path, plan: SpacePlan, variables: dict[str, str]) -> str:
    """Create the Space if needed, tell it which adapter to serve, upload the folder; returns the Space's URL."""
    from huggingface_hub import HfApi
    api = HfApi()  # the token from huggingface_hub's own lookup, as for the adapter
    url = api.create_repo(plan.space_id, repo_type="space", space_sdk="gradio", private=plan.adapter.private,
                          exist_ok=True)
    for key, value in variables.items():
        api.add_space_variable(plan.space_id, key, value, description="read by app.py")
    api.upload_folder(repo_id=plan.space_id, repo_type="space", folder_path=str(folder),
                      commit_message="Upload the medical reasoning chat page")
    return str(url)


def publish_space(run_dir: Path, plan: SpacePlan) -> bool:
    """Build the Space folder, then push it unless this is a dry run. False if the push failed."""
    folder = build_space_folder(run_dir, plan)
    retry = retry_command(run_dir, plan.adapter) + f" --space {plan.space_id}"
    print(f"[space] Space folder for {plan.space_id}, serving {plan.adapter.repo_id}: {folder}")
    print(describe_folder(folder) + f"\n  {len(list((folder / 'medreason').rglob('*.py'))):9d} modules  medreason/")
    if plan.adapter.mode == "dry-run":
        print(f"[space] dry run: nothing uploaded. Push it with: {retry}")
        return True
    try:
        print(f"[space] pushed: {push_space(folder, plan, space_variables(run_dir, plan))}")
    except Exception as e:  # network, auth, quota: the folder stays, the adapter is already published
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        print(f"[space] the push to {plan.space_id} FAILED ({reason}). The folder is kept in {folder}. Retry with:\n"
              f"  {retry}")
        return False
    if plan.adapter.private:
        print(f"[space] the adapter repo is private: give the Space a read token as the secret HF_TOKEN "
              f"(https://huggingface.co/spaces/{plan.space_id}/settings), or publish the adapter with --public.")
    return True
