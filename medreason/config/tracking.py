"""Secrets from .env and Weights & Biases: online with a key, offline run files without, or off."""
from __future__ import annotations

import os
from pathlib import Path


def load_secrets(env_file: str | os.PathLike = ".env") -> bool:
    """Read HF_TOKEN, WANDB_API_KEY... from .env into the environment (real environment variables win)."""
    from dotenv import load_dotenv
    return load_dotenv(Path(env_file), override=False)


def setup_wandb(report_to: str, project: str, output_dir: str) -> list[str]:
    """The trainer's report_to list; prints where the metrics go. Online when the user is logged in to W&B
    (WANDB_API_KEY, or a `wandb login` saved in ~/.netrc), offline run files otherwise; WANDB_MODE, if set, wins."""
    if report_to in {"none", "", None}:
        print("[track] W&B: off (REPORT_TO='none')")
        return []
    if report_to != "wandb":
        print(f"[track] metrics reported to {report_to}")
        return [report_to]
    _set_unless_users("WANDB_PROJECT", project)
    _set_unless_users("WANDB_DIR", str(Path(output_dir).resolve()))
    Path(os.environ["WANDB_DIR"]).mkdir(parents=True, exist_ok=True)
    login = wandb_login()
    if _SET_BY_US.get("WANDB_MODE") is not None and os.environ.get("WANDB_MODE") == _SET_BY_US["WANDB_MODE"]:
        del os.environ["WANDB_MODE"], _SET_BY_US["WANDB_MODE"]  # an earlier run's choice in this process
    if os.environ.get("WANDB_MODE"):
        print(f"[track] W&B: WANDB_MODE={os.environ['WANDB_MODE']} (set by you), run files under "
              f"{os.environ['WANDB_DIR']}/wandb/")
    elif login:
        print(f"[track] W&B: logging online to project {os.environ['WANDB_PROJECT']!r} (logged in via {login})")
    else:
        os.environ["WANDB_MODE"] = _SET_BY_US["WANDB_MODE"] = "offline"
        print(f"[track] W&B: not logged in (no WANDB_API_KEY, no `wandb login`), so offline run files under "
              f"{os.environ['WANDB_DIR']}/wandb/ (upload later with `wandb sync`)")
    return ["wandb"]


_SET_BY_US: dict[str, str] = {}  # what this process set, so a second run in it (a notebook) gets its own values


def _set_unless_users(name: str, value: str) -> None:
    """Set a W&B variable for this run unless the user set it: one that an earlier run in this process set is
    replaced (a second run in a notebook writes its run files to its own folder, not the first run's)."""
    current = os.environ.get(name)
    if current is None or current == _SET_BY_US.get(name):
        os.environ[name] = _SET_BY_US[name] = value


def wandb_login() -> str | None:
    """Where a W&B API key would come from ('WANDB_API_KEY' or '~/.netrc'), or None when the user is not logged in."""
    if os.environ.get("WANDB_API_KEY"):
        return "WANDB_API_KEY"
    try:
        from wandb.sdk.lib.wbauth import read_netrc_auth
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
        return "`wandb login` (~/.netrc)" if read_netrc_auth(host=host) else None
    except Exception:  # an unreadable or malformed netrc: treated as not logged in (W&B would refuse it too)
        return None


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


def finish(metrics: dict) -> None:
    """The final metrics into the W&B run's summary (if there is a run), then close it."""
    run = current_run()
    run.summary.update({f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
    run.finish()
