"""Run medical_fine_tuning.py as one process of an `accelerate launch`, recording every file this process opens for
writing (or renames into place) under OUTPUT_DIR, with Python's audit hooks: the record proves which process wrote
what. DRILL_FAIL_RANK=N makes process N fail while evaluating, as a crash on one GPU would."""
import atexit
import json
import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RANK = int(os.environ.get("RANK", "0"))
LOG = Path(os.environ["WRITE_LOG_DIR"]) / f"rank{RANK}.json"
written: list[str] = []


def record(event, args):
    if event == "open" and isinstance(args[0], (str, os.PathLike)):
        mode, flags = args[1] or "", args[2] or 0
        if any(c in str(mode) for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR):
            written.append(os.path.abspath(args[0]))
    elif event == "os.rename":
        written.append(os.path.abspath(args[1]))


atexit.register(lambda: LOG.write_text(json.dumps(written)))
sys.addaudithook(record)
sys.path.insert(0, str(ROOT))
if os.environ.get("DRILL_FAIL_RANK") == str(RANK):
    from medreason.evaluate import comparison

    def failing_score(*args, **kwargs):
        raise RuntimeError(f"drill: process {RANK} failed while evaluating")
    comparison.score = failing_score
sys.argv = [str(ROOT / "medical_fine_tuning.py"), *sys.argv[1:]]
runpy.run_path(str(ROOT / "medical_fine_tuning.py"), run_name="__main__")
