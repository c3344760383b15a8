"""Small file helpers shared by the build cache, the tuning logs and the suite reader."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .params import OP


def write_atomic(path: Path, write: Callable[[Path], object], mode: int = 0o644) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``,
    so a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, mode)  # mkstemp creates 0600; others may share the folder
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file; a missing or malformed one raises with the operator's prefix."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{OP}: {what} {path} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{OP}: {what} {path} must be a file, got a folder") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{OP}: {what} {path} is not UTF-8 text: {err.reason}") from None
    except RecursionError:
        raise ValueError(f"{OP}: {what} {path} nests its JSON too deeply to read") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{OP}: {what} {path} is not valid JSON: {err}") from None
