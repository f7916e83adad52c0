"""One base class for mistakes a user can fix (printed as one line, without a traceback), and what a run prints when
something else goes wrong: where its files are, what was saved, how to resume, and for an out-of-memory error which
settings to lower."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from medreason.config import quiet

# Lowered in this order when a GPU runs out of memory: the batch costs the most, then the sequence length, then the
# batch of the final evaluation (which only matters if the run got that far).
OOM_SETTINGS = ("BATCH_SIZE", "MAX_SEQ_LENGTH", "EVAL_BATCH_SIZE")

_RUN_CONTEXT: dict = {}


class UserError(ValueError):
    """Bad settings, data or environment; the message names the setting, file or line, and the fix."""


def set_run_context(output_dir=None, settings=None, command: str | None = None, step: str | None = None) -> None:
    """What a crash report should say about this run; call again to update (e.g. step="evaluate").

    output_dir: the run's folder. settings: the resolved settings (a namespace or dict; for the OOM advice).
    command: the command that resumes the run (default: the command line that started it). step: what it is doing."""
    given = {"output_dir": output_dir, "settings": settings, "command": command, "step": step}
    _RUN_CONTEXT.update({key: value for key, value in given.items() if value is not None})


def clear_run_context() -> None:
    _RUN_CONTEXT.clear()


def one_line(error: BaseException) -> str:
    """The message on one line, whatever values it quotes."""
    return " ".join(str(error).split("\n"))


def is_out_of_memory(error: BaseException) -> bool:
    torch = sys.modules.get("torch")  # only a run that imported torch can run out of GPU memory
    if torch is not None and isinstance(error, getattr(torch, "OutOfMemoryError", ())):
        return True
    return "out of memory" in str(error).lower() and type(error).__name__ in {"RuntimeError", "OutOfMemoryError"}


def _settings() -> dict:
    settings = _RUN_CONTEXT.get("settings")
    return dict(settings) if isinstance(settings, dict) else dict(vars(settings)) if settings is not None else {}


def oom_advice() -> str:
    """Which settings to lower, in order, with their values and a first command-line change to try."""
    values = _settings()
    listed = ", then ".join(f"{name}" + (f" (now {values[name]})" if name in values else "") for name in OOM_SETTINGS)
    batch, accum, length = values.get("BATCH_SIZE"), values.get("GRAD_ACCUM"), values.get("MAX_SEQ_LENGTH")
    if isinstance(batch, int) and batch > 1 and isinstance(accum, int):
        first = (f"--BATCH_SIZE={batch // 2} --GRAD_ACCUM={accum * 2} (the same effective batch of "
                 f"{batch // 2 * accum * 2} rows per update)")
    elif isinstance(length, int) and length > 256:
        first = f"--MAX_SEQ_LENGTH={length // 2} (longer rows are truncated; the preflight counts them)"
    elif values:
        first = f"--EVAL_BATCH_SIZE={max(1, (values.get('EVAL_BATCH_SIZE') or 2) // 2)}"
    else:  # a script that registered no settings (inference.py, evaluate.py): their batch is --batch-size
        return f"out of GPU memory. Fix: lower {listed} (--batch-size in inference.py and evaluate.py)."
    return f"out of GPU memory. Fix: lower {listed}; e.g. {first}."


def run_report(stopped: str) -> list[str]:
    """Lines saying where the run's files are, what was saved, and the command that resumes it."""
    lines = [f"[run] {stopped}" + (f" during: {_RUN_CONTEXT['step']}" if _RUN_CONTEXT.get("step") else "")]
    output_dir = _RUN_CONTEXT.get("output_dir")
    if output_dir is not None:
        lines += _saved_files(Path(output_dir))
    command = _RUN_CONTEXT.get("command") or shlex.join(["python", *sys.argv])
    lines.append(f"[run] to resume, run the same command again: {command}")
    return lines


def _saved_files(out: Path) -> list[str]:
    if not out.is_dir():
        return [f"[run] nothing was saved yet ({out} does not exist)."]
    lines = [f"[run] the run's files are in {out.resolve()}:"]
    checkpoints = sorted((p.name for p in (out / "checkpoints").glob("checkpoint-*") if p.is_dir()),
                         key=lambda name: int(name.rsplit("-", 1)[1]) if name.rsplit("-", 1)[1].isdigit() else -1)
    if checkpoints:
        lines.append(f"  checkpoints/: {', '.join(checkpoints)} (a rerun resumes from the newest complete one)")
    known = {"adapter": "the trained adapter", "adapter-interrupted": "the adapter of an interrupted run",
             "results.json": "the run's metrics", "evaluation": "the evaluation report",
             "log_history.json": "the training log"}
    lines += [f"  {name}: {what}" for name, what in known.items() if (out / name).exists()]
    if len(lines) == 1:
        lines.append("  (nothing saved yet)")
    return lines


def run_cli(main) -> None:
    """Run a script's main(argv): a UserError prints as one line (exit 1); an int result is the exit status.

    Anything else prints its traceback, then what the run saved and how to resume it (see set_run_context), and for
    an out-of-memory error the settings to lower."""
    import traceback

    quiet.install()  # the known-harmless library warnings, before the script imports torch and friends
    try:
        status = main(sys.argv[1:])
    except UserError as error:
        sys.exit(f"error: {one_line(error)}")
    except KeyboardInterrupt:
        print("\n" + "\n".join(run_report("interrupted")) if _RUN_CONTEXT else "\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as error:
        traceback.print_exc()
        lines = [f"error: {oom_advice()}"] if is_out_of_memory(error) else []
        if _RUN_CONTEXT:
            lines += run_report(f"stopped on an unexpected {type(error).__name__}")
        print("\n".join(lines), file=sys.stderr)
        sys.exit(1)
    sys.exit(status if isinstance(status, int) else 0)
