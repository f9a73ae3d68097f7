"""An adapter's own small JSON files under the state directory.

The daemon and the CLI (two processes) share them, so they are read whole on every call
and written whole, atomically and owner-only (``drainer._files``). Errors are adapter
errors: a file that cannot be read or written now is transient, one that is not JSON is
permanent (a person must look at it, then delete it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from drainer._files import write_atomically
from drainer.errors import PermanentAdapterError, TransientAdapterError

__all__ = ["load_json", "save_json"]


def load_json(path: Path) -> Any:
    """The JSON value in ``path``; None when there is no such file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TransientAdapterError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise PermanentAdapterError(f"{path} is not JSON; delete it") from exc


def save_json(path: Path, data: Any, *, indent: int | None = None) -> None:
    try:
        write_atomically(path, json.dumps(data, indent=indent))
    except OSError as exc:
        raise TransientAdapterError(f"cannot write {path}: {exc.strerror}") from exc
