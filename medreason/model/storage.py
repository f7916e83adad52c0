"""Saving folders so that a failed save loses nothing: a folder is written beside its place and renamed into it, and
a disk that fills up is reported as the folder and the space it needs, not as a library's stack trace."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from medreason.config.errors import UserError

MB = 1_000_000
TOKENIZER_BYTES = 20 * MB  # room for the tokenizer files saved beside an adapter (Llama-3's tokenizer.json: 17 MB)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) if Path(folder).is_dir() else 0


def free_bytes(path: Path) -> int:
    """Free space on the disk that holds path (or its nearest existing parent)."""
    for candidate in (Path(path), *Path(path).parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return 0


def trainable_bytes(model) -> int:
    """The size of the trainable weights (the LoRA matrices) as saved."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def is_disk_full(error: BaseException, free: int, needed: int) -> bool:
    """Whether a failed save was the disk filling up. Libraries say it differently: Python raises OSError(ENOSPC),
    safetensors 'No space left on device (os error 28)', and torch.save only 'unexpected pos …'; so a failure that
    left less free space than the save needs counts too."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    return any(s in text for s in ("No space left on device", "os error 28", "Disk quota exceeded")) or free < needed


def disk_full_error(folder: Path, needed: int, free: int, kept: str) -> UserError:
    return UserError(f"{folder}: the disk filled up while saving it (it needs about {max(needed, MB) / MB:,.0f} MB; "
                     f"{free / MB:,.0f} MB are free). {kept} Fix: free space on that disk (old runs' checkpoints/ "
                     f"folders are the largest files), then run the same command again.")


def save_folder(folder: Path, write, needed: int) -> Path:
    """Call write(staging) on a sibling folder, then rename it to `folder`.

    A save that fails or is killed leaves the previous `folder` as it was (only the hidden staging folder is
    half-written; the next save clears it). A full disk is a UserError naming the folder and the space needed."""
    folder = Path(folder)
    staging, old = folder.with_name(f".{folder.name}.saving"), folder.with_name(f".{folder.name}.old")
    if old.is_dir() and not folder.exists():  # a save killed between the two renames below: put the old one back
        os.replace(old, folder)
    for leftover in (staging, old):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        write(staging)
    except Exception as error:
        free = free_bytes(folder.parent)
        shutil.rmtree(staging, ignore_errors=True)
        if not is_disk_full(error, free, needed):
            raise
        kept = f"The previous {folder.name} is intact." if folder.exists() else "Nothing was overwritten."
        raise disk_full_error(folder, needed, free, kept) from None
    if folder.exists():
        os.replace(folder, old)  # a folder cannot be renamed onto a non-empty one: move the previous one aside
    os.replace(staging, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder
