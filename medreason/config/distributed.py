"""Several processes under `accelerate launch` (or torchrun, which it runs underneath): who writes, who waits, and
how evaluation work is shared. Accelerate's own state does the work; this module only names the project's rules.

  - one writer: the main process (rank 0) prints the settings and summaries and writes every file of a run (adapter,
    results.json, reports, exports, the upload folder), pushes, and owns the W&B run; the Trainer already keeps its
    checkpoints to the main process (each process adds only its own rng_state_<rank>.pth);
  - the others train their share of every batch (DDP), answer their share of the evaluation questions, and wait;
  - a process that fails exits with its message, and the launcher then stops the others (no hang).
With one process every function here is a no-op, so a single-GPU run reads exactly as before.
"""
from __future__ import annotations

import contextlib
import os
import sys


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def uses_fsdp() -> bool:
    """`accelerate launch` with an FSDP config (configs/accelerate/fsdp_qlora.yaml) says so in the environment."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def quiet_other_processes() -> None:
    """Only the main process prints; the others keep stderr, so an error on any of them is still shown."""
    if is_main():
        return
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
    # Through the environment, which both libraries read when imported: importing them here would put transformers
    # before Unsloth on these ranks (Unsloth patches at import and must come first), unlike on the main one.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # already imported by someone else: tell it directly
        sys.modules["transformers"].logging.set_verbosity_error()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


def wait() -> None:
    """Every process reaches this point before any goes on (the state is the Trainer's: created by SFTConfig)."""
    if is_distributed():
        from accelerate import PartialState
        PartialState().wait_for_everyone()


@contextlib.contextmanager
def main_process_first():
    """The main process runs the block first (a download, a cache), then the others."""
    if not is_distributed():
        yield
        return
    from accelerate import PartialState
    with PartialState().main_process_first():
        yield


def share(items: list) -> list:
    """This process's contiguous share of items (the first processes take one more when they do not divide)."""
    if not is_distributed():
        return list(items)
    from accelerate import PartialState
    with PartialState().split_between_processes(list(items)) as part:
        return list(part)


def gather(part: list) -> list:
    """Every process's share, concatenated in rank order: the inverse of share(), on every process."""
    if not is_distributed():
        return list(part)
    from accelerate.utils import gather_object
    return list(gather_object(list(part)))


def on_every_share(items: list, work) -> list:
    """work(share) on each process, the results gathered back into the items' order."""
    return gather(work(share(items)))
