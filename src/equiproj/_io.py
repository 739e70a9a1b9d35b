"""Atomic file writes shared by the package (private module).

Every writer here goes through a temporary file in the destination folder followed by
``os.replace``, which is atomic on POSIX and Windows: a reader sees either the old file or the
complete new one, never a half-written file, and an exception (or a killed process) while
writing leaves the previous file untouched. The temporary file is removed on failure.

Examples
--------
>>> import os, tempfile
>>> from equiproj._io import append_csv_row, atomic_write_json
>>> with tempfile.TemporaryDirectory() as d:
...     csv_path = os.path.join(d, "runs.csv")
...     append_csv_row(csv_path, {"run": "a", "loss": 0.5})
...     append_csv_row(csv_path, {"run": "b", "acc": 0.9})    # a new column: the header grows
...     atomic_write_json(os.path.join(d, "x.json"), {"ok": True})
...     print(open(csv_path).read().strip())
run,loss,acc
a,0.5,
b,,0.9
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_torch_save",
           "append_csv_row", "read_csv_rows", "remove_stale_temp_files", "is_temp_file", "folder_lock",
           "check_writable_folder"]

#: Temporary files of this module are ``.<final name>.<random>.tmp`` (``tempfile.mkstemp``).
_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$")

PathLike = Union[str, "os.PathLike[str]"]


def _default_mode() -> int:
    """``0o666`` less the process umask (what ``open`` would give a new file)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: PathLike, writer: Union[bytes, bytearray, Callable[[Any], None]],
                       fsync: bool = True) -> None:
    """Write a file atomically.

    Parameters
    ----------
    path : str or path-like
        Destination; missing parent folders are created.
    writer : bytes or callable
        The content, or a function ``writer(f)`` that writes to the binary file object ``f``.
    fsync : bool
        Flush the data to disk before the rename, so that a crash of the machine cannot leave an
        empty file under the final name.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _with_path(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(writer):
                writer(f)
            else:
                f.write(writer)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        try:  # mkstemp creates files readable by the owner only; use what open() would give
            os.chmod(tmp, os.stat(path).st_mode & 0o777 if path.exists() else _default_mode())
        except OSError:
            pass
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(exc, OSError):
            raise _with_path(exc, path) from None
        raise


def _with_path(exc: OSError, path: Path) -> OSError:
    """The same ``OSError`` (same class and errno), with a message that names the file being written."""
    reason = exc.strerror or str(exc)
    if exc.errno:
        return type(exc)(exc.errno, f"cannot write {str(path)!r}: {reason}")
    return OSError(f"cannot write {str(path)!r}: {reason}")


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: PathLike, obj: Any, indent: int = 2, sort_keys: bool = False,
                      default: Optional[Callable[[Any], Any]] = None) -> None:
    """Write ``obj`` as JSON (with a final newline) atomically.

    ``default`` is passed to :func:`json.dumps` (e.g. ``default=str`` for arbitrary objects).
    The object is serialised before the file is touched, so an unserialisable object raises
    without changing anything.
    """
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default)
    atomic_write_text(path, text + "\n")


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj, path)`` through a temporary file and an atomic rename.

    The object is serialised in memory first, so that a failing write (a full disk) surfaces as
    an ``OSError`` naming the file rather than as an error inside torch's serialiser.
    """
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getbuffer())


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An advisory inter-process lock on ``<folder>/.<name>.lock`` (POSIX; a no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def folder_lock(folder: PathLike, blocking: bool = True) -> Iterator[bool]:
    """An advisory, exclusive inter-process lock on ``<folder>/.lock`` (``fcntl.flock``).

    Yields ``True`` when the lock is held, ``False`` when ``blocking=False`` and another process
    holds it. The kernel releases the lock when its holder exits, so a killed process never
    leaves it stuck (the empty ``.lock`` file it leaves behind is harmless). On systems without
    ``fcntl`` (Windows) it always yields ``True`` and locks nothing.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield True
        return
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / ".lock", "a")
    except OSError as exc:
        raise _with_path(exc, folder / ".lock") from None
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def is_temp_file(name: str) -> bool:
    """Whether ``name`` is a temporary file of this module (``.<name>.<random>.tmp``)."""
    return bool(_TEMP_RE.match(name))


def remove_stale_temp_files(folder: PathLike, older_than_s: float = 0.0) -> List[Path]:
    """Remove the temporary files that killed writes left in ``folder`` (not recursive).

    Only names of this module's pattern (``.<name>.<random>.tmp``) are touched. ``older_than_s``
    spares files modified in the last seconds (a write of another process in progress); with a
    lock that excludes other writers, ``0`` removes them all. Returns the removed paths.
    """
    folder = Path(folder)
    removed: List[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for p in folder.iterdir():
        if is_temp_file(p.name) and p.is_file():
            with contextlib.suppress(OSError):
                if older_than_s <= 0 or now - p.stat().st_mtime > older_than_s:
                    p.unlink()
                    removed.append(p)
    return removed


def check_writable_folder(folder: PathLike, what: str = "--out") -> Path:
    """Create ``folder`` if needed and check that a file can be written there.

    Raises ``ValueError`` for an empty name and ``OSError`` (naming the folder and the fix) when
    the path is not a folder or is not writable, before any work is spent.
    """
    if folder is None or str(folder).strip() == "":
        raise ValueError(f"{what} is empty: give the output folder, e.g. {what} runs/toy")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{what} {str(folder)!r} exists and is not a folder: give a folder name")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-test.", suffix=".tmp")
        os.close(fd)
        os.remove(tmp)
    except OSError as exc:
        raise type(exc)(exc.errno, f"{what} {str(folder)!r} is not writable ({exc.strerror or exc}): give a "
                                   f"folder you can write to") if exc.errno else OSError(
            f"{what} {str(folder)!r} is not writable ({exc}): give a folder you can write to") from None
    return folder


def read_csv_rows(path: PathLike) -> "tuple[list, list]":
    """``(header, rows)`` of a CSV file written by :func:`append_csv_row` (rows as dicts of strings);
    ``([], [])`` when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = list(reader.fieldnames or [])
    return header, rows


def append_csv_row(path: PathLike, row: Dict[str, Any]) -> None:
    """Append one row to a CSV file, atomically, growing the header as needed.

    The existing rows are read, the header becomes the union of the old columns (in their order)
    and the row's new keys (in the row's order), and everything is written to a temporary file
    that replaces the old one. Rows that lack a column get an empty cell. Concurrent appenders on
    one machine are serialised by an advisory lock file ``.<name>.lock`` next to the CSV.

    Parameters
    ----------
    path : str or path-like
        The CSV file (created with its parent folders if missing).
    row : dict
        Column name to value; values are written with ``str`` (``None`` as an empty cell).
    """
    if not isinstance(row, dict) or not row:
        raise ValueError(f"append_csv_row: row must be a non-empty dict, got {row!r}")
    path = Path(path)
    with _file_lock(path):
        header, rows = read_csv_rows(path)
        for key in row:
            if str(key) not in header:
                header.append(str(key))
        rows.append({str(k): ("" if v is None else v) for k, v in row.items()})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=header, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, buf.getvalue())
