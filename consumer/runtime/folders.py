"""Replace a folder as a whole: readers see the old one or the new one, never a mix."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def replace_folder(target: Path, fill: Callable[[Path], T]) -> T:
    """Have ``fill`` write a staging folder beside ``target``, then swap it in by rename.

    If ``fill`` raises, the staging folder is removed and ``target`` is left as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        result = fill(staging)
        os.chmod(staging, 0o755)
        previous = target.parent / f".{target.name}.previous"
        if target.exists():
            shutil.rmtree(previous, ignore_errors=True)
            target.rename(previous)
        staging.rename(target)
        shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result
