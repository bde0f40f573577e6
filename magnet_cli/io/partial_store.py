"""The resumable partial output of one run: a label store being built, with its completion ledger.

    <out>.partial-<fingerprint>/   the label store (io/labels.py), still marked "partial", plus
      ledger/<unit>.json           one file per finished unit of work, written after the unit's chunks
      pieces/                      finished units' shares of chunks that several units write
      pyramid/                     the input's temporary pyramid, when it has none (reused on resume)
      lock                         flock: exclusive for a whole run, shared by the shards of one run
      publish/                     the claim of the process that publishes the output

The name carries a fingerprint of everything that shapes the labels (input, model, settings), so two
different runs never share a partial store, while the shards of one run, and the re-run that resumes it,
find the same one. Locks are flock(2) locks: the kernel drops them when a process dies (kill -9
included), and NFSv4 supports them, so a dead run never blocks its resumption.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

from magnet_cli.errors import OutputError
from magnet_cli.io.labels import PARTIAL_INFIX, magnet_marker

LEDGER = "ledger"
PYRAMID = "pyramid"
LOCK = "lock"
PUBLISH = "publish"
STORE_ENTRIES = (LEDGER, PYRAMID, LOCK, PUBLISH)  # what the store adds to the label store's own entries
FINGERPRINT_CHARS = 16
CREATING = "new-"  # `<out>.partial-new-<uuid>`: a store being laid out, renamed to its real name when ready


def fingerprint(document: dict) -> str:
    """A stable digest of a JSON-able description of a run."""
    text = json.dumps(document, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def input_identity(path: Path) -> dict:
    """What identifies an input file or Zarr folder: its absolute path, size and modification time (of
    the folder's metadata files for Zarr), so a changed input never resumes an old partial output."""
    path = Path(path).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.name in {"zarr.json", ".zarray", ".zattrs", ".zgroup"})
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return {"path": str(path), "files": stats}


def partial_name(output: Path, digest: str) -> Path:
    return output.with_name(f"{output.name}{PARTIAL_INFIX}{digest[:FINGERPRINT_CHARS]}")


class PartialStore:
    """One run's partial output; see the module docstring. Create with `open`."""

    def __init__(self, path: Path, output: Path, digest: str) -> None:
        self.path = path
        self.output = output
        self.fingerprint = digest
        self._lock_fd: int | None = None
        self._publish_fd: int | None = None

    # -- opening ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, output: Path, digest: str, lay_out: Callable[[Path], None], *, shared: bool) -> PartialStore:
        """Join the run's partial store, or create it (`lay_out(folder)` writes the empty label store).

        `shared`: the caller is one of several shards, which hold the store together; otherwise the
        caller must be alone in it (another live process of the same run is an error)."""
        output = Path(output)
        path = partial_name(output, digest)
        if not path.exists():
            creating = output.with_name(f"{output.name}{PARTIAL_INFIX}{CREATING}{uuid.uuid4().hex}")
            try:
                creating.mkdir()
                lay_out(creating)  # first: creating a Zarr group empties its folder
                (creating / LEDGER).mkdir()
                os.rename(creating, path)
            except OSError as error:
                shutil.rmtree(creating, ignore_errors=True)
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not path.exists():
                    raise OutputError(f"cannot write {output}: {error.strerror or error}") from None
            except BaseException:
                shutil.rmtree(creating, ignore_errors=True)
                raise
        store = cls(path, output, digest)
        marker = magnet_marker(path) or {}
        if marker.get("fingerprint") != digest:
            raise OutputError(f"{path}: not this run's partial output (another input or other settings); remove it")
        store._lock(shared)
        return store

    def _lock(self, shared: bool) -> None:
        try:
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise OutputError(f"cannot write {self.path}: {error.strerror or error}") from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            who = "a run without --shard" if shared else "another run"
            raise OutputError(
                f"{self.output}: {who} is writing it now (its partial output {self.path.name}); wait for it to "
                "end, or split the work between runs with --shard INDEX/COUNT"
            ) from None
        self._lock_fd = fd

    def release(self) -> None:
        """Give up this process's hold on the store (it stays on disk)."""
        for name in ("_publish_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, None)

    def remove(self) -> None:
        """Delete the store (the caller holds it alone)."""
        self.release()
        shutil.rmtree(self.path, ignore_errors=True)

    # -- the ledger -------------------------------------------------------------------------------
    def finished(self) -> dict[str, dict]:
        """Ledger entries of the finished units, by unit name (unreadable entries count as unfinished)."""
        entries = {}
        folder = self.path / LEDGER
        if not folder.is_dir():
            return entries
        for file in folder.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                entries[file.stem] = json.loads(file.read_text())
        return entries

    def record(self, unit: str, entry: dict) -> None:
        """Mark `unit` finished; call only once its chunks and pieces are written."""
        folder = self.path / LEDGER
        temporary = folder / f".{unit}.{uuid.uuid4().hex}"
        try:
            temporary.write_text(json.dumps(entry))
            os.replace(temporary, folder / f"{unit}.json")
        except OSError as error:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise OutputError(f"cannot write {self.output}: {error.strerror or error}") from None

    # -- publishing -------------------------------------------------------------------------------
    def claim_publication(self) -> bool:
        """True for exactly one process at a time, and only while the store is still unpublished: the
        one that publishes. A claim whose holder died (its lock is free) is taken over."""
        claim = self.path / PUBLISH
        try:
            with contextlib.suppress(FileExistsError):
                claim.mkdir()
            fd = os.open(claim / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:  # the store was published (renamed away) meanwhile
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        if not self.path.is_dir():  # published while we waited for the claim
            os.close(fd)
            return False
        self._publish_fd = fd
        return True

    def strip(self) -> None:
        """Remove the store's own entries before the label store is renamed into place."""
        for name in STORE_ENTRIES:
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    target.unlink()
        for leftover in self.path.glob(f"{PYRAMID}.*"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    leftover.unlink()


def is_in_use(path: Path) -> bool:
    """Whether a live process holds the partial store at `path` (any lock on its lock file)."""
    try:
        fd = os.open(Path(path) / LOCK, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
