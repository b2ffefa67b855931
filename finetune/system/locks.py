"""Advisory file locks (``fcntl.flock``) for what concurrent runs on one machine share.

- the MLflow store: creating a fresh sqlite store runs alembic migrations that two processes must not run
  at once (MLflow 3's tracking store calls ``_initialize_tables`` without a lock: two runs on a new
  ``output_root`` crashed with ``table _alembic_tmp_tags already exists`` and could leave ``mlflow.db``
  half-migrated), and get-or-create of an experiment is a read-then-write;
- a registered model's production alias: comparing with production, registering, rolling out and moving
  the alias is one critical section, so the model that wins by the selection rule ends in production,
  not the one that finished last;
- a training output dir: one process trains into it at a time.

An flock belongs to an open file: the kernel releases it when the holder exits, however it dies, so a
killed run never leaves a stale lock behind. Lock files are empty and stay in place.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from pathlib import Path
from typing import Callable, Iterator, Optional
from urllib.parse import unquote, urlsplit

from finetune.errors import UserError


class Busy(UserError):
    """The lock is held by another process and the caller asked not to wait."""


@contextlib.contextmanager
def hold(
    path: Path | str,
    *,
    wait: bool = True,
    on_wait: Optional[Callable[[str], None]] = None,
    owner: str = "",
    busy: Optional[Callable[[str], str]] = None,
) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing).

    ``wait=False`` raises :class:`Busy` instead of blocking: ``busy(holder)`` is its message (default: the
    holder, e.g. ``pid 123 (training)``). ``on_wait`` is called
    once with the holder's description when the lock is taken, before blocking. ``owner`` (e.g. what holds
    it) is written into the file with the pid, for those messages.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path)
            if not wait:
                raise Busy(busy(holder) if busy else holder) from None
            if on_wait:
                on_wait(holder)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()} {owner}".strip().encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    pid, _, owner = text.partition(" ")
    return f"pid {pid}" + (f" ({owner})" if owner else "") if pid else "another process"


def store_lock_path(tracking_uri: Optional[str], purpose: str) -> Path:
    """The lock file of ``purpose`` for a tracking store: beside a sqlite or file store, else (a tracking
    server: it serialises its own writes, but this machine's runs still take turns) in the user's cache."""
    parts = urlsplit(tracking_uri or "")
    if parts.scheme == "sqlite" and parts.path not in ("", "/:memory:"):
        database = Path(unquote(parts.path[1:] if parts.path.startswith("//") else parts.path))
        return database.parent / f".{database.name}.{purpose}.lock"
    if parts.scheme in ("", "file") and tracking_uri:
        return Path(unquote(parts.path) if parts.scheme else tracking_uri) / f".{purpose}.lock"
    digest = hashlib.sha256((tracking_uri or "").encode()).hexdigest()[:16]
    return Path("~/.cache/finetune/locks").expanduser() / f"{digest}.{purpose}.lock"


def store(tracking_uri: Optional[str]):
    """Held while a store may be created or migrated and while experiments are got-or-created."""
    return hold(store_lock_path(tracking_uri, "store"), owner="mlflow store setup")


def promotion(tracking_uri: Optional[str], model_name: str, run_name: str = ""):
    """Held from comparing with production to moving the production alias of ``model_name``."""
    digest = hashlib.sha256(model_name.encode()).hexdigest()[:12]

    def waiting(holder: str) -> None:
        print(
            f"waiting for {holder} to finish promoting {model_name} (one run at a time compares with "
            "production, registers and promotes)",
            flush=True,
        )

    return hold(store_lock_path(tracking_uri, f"promote-{digest}"), on_wait=waiting, owner=f"run {run_name}".strip())
