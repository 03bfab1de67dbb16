"""The JSON files users hand us and the search keeps for itself: reading names the file at fault,
writing is atomic.

No torch and no Hydra: the search logic (``evolution``) uses it too.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any


class FileFormatError(ValueError):
    """A file that is not what it should be (binary data, broken JSON, a folder); the message names it."""


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in ``path``. Missing files raise ``FileNotFoundError``; anything else that is not
    a JSON text (binary garbage, a truncated write, a folder) raises ``FileFormatError`` naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise FileFormatError(f"{path}: a folder, not a JSON file") from None
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise FileFormatError(f"{path}: not a JSON text file (binary data at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise FileFormatError(f"{path}: not valid JSON ({error})") from None


def temporary_sibling(path: Path) -> Path:
    """A unique hidden name beside ``path`` for writing then renaming: ``.<name>.<random>.tmp``.

    ``stale_temporaries`` finds what a killed writer left behind.
    """
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def stale_temporaries(path: Path) -> list[Path]:
    """The temporary files of ``path`` that writers killed mid-write left behind."""
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON through a temporary file and a rename: a reader (or a crash) never sees half a file.

    The file gets the mode every other output gets (0666 less the umask), not a temporary file's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "x") as f:  # created 0666 less the umask, like any output
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
