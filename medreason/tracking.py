"""Secrets from .env and Weights & Biases: online with a key, offline run files without, or off."""
from __future__ import annotations

import os
from pathlib import Path


def load_secrets(env_file: str | os.PathLike = ".env") -> bool:
    """Read HF_TOKEN, WANDB_API_KEY... from .env into the environment (real environment variables win)."""
    from dotenv import load_dotenv
    return load_dotenv(Path(env_file), override=False)


def setup_wandb(report_to: str, project: str, output_dir: str) -> tuple[list[str], str]:
    """The trainer's report_to list and a sentence saying where the metrics go."""
    if report_to in {"none", "", None}:
        return [], "W&B: off (REPORT_TO='none')"
    if report_to != "wandb":
        return [report_to], f"metrics reported to {report_to}"
    os.environ.setdefault("WANDB_PROJECT", project)
    os.environ.setdefault("WANDB_DIR", str(Path(output_dir).resolve()))
    Path(os.environ["WANDB_DIR"]).mkdir(parents=True, exist_ok=True)
    if os.environ.get("WANDB_API_KEY"):
        return ["wandb"], f"W&B: logging online to project {os.environ['WANDB_PROJECT']!r}"
    os.environ["WANDB_MODE"] = "offline"
    return ["wandb"], (f"W&B: no WANDB_API_KEY, so offline run files under {os.environ['WANDB_DIR']}/wandb/ "
                       f"(upload later with `wandb sync`)")


class _NullRun:
    """Stands in for a W&B run when there is none, so logging calls need no branches."""

    def __init__(self) -> None:
        self.summary: dict = {}

    def log(self, *args, **kwargs) -> None:
        pass

    def finish(self) -> None:
        pass


def current_run():
    try:
        import wandb
    except ImportError:
        return _NullRun()
    return wandb.run or _NullRun()
