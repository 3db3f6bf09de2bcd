"""The store's layout on disk, for a command that must start fast: where blobs and snapshots
are, the index and its tags, and the lock writers share.

:class:`~layercore.store.Store` is the store's API and owns these places; it takes the names
below from here. A caller that needs no image model (``layercore run`` of an image whose
snapshots exist, which starts in a few milliseconds) reads the store through this module and
so imports neither the store nor the image modules (their dataclasses alone cost a process
several milliseconds).

It imports the standard library and the core only.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager

from layercore import _core

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from typing import Any

__all__ = [
    "PRIVATE",
    "REF_NAME",
    "blob_path",
    "chains",
    "default_root",
    "read_index",
    "snapshot_path",
    "tag_of",
    "writer_lock",
]

#: The annotation of an ``index.json`` entry that names its tag (OCI image layout).
REF_NAME = "org.opencontainers.image.ref.name"
#: The store's own directory in the layout (snapshots, locks, containers, caches).
PRIVATE = ".layercore"


def default_root() -> str:
    """The default store: ``$LAYERCORE_HOME`` if set, else ``~/.local/share/layercore``."""
    home = os.environ.get("LAYERCORE_HOME")
    return os.path.expanduser(home) if home else os.path.expanduser("~/.local/share/layercore")


def blob_path(root: str, digest: str) -> str:
    """Where the blob ``digest`` (``sha256:<hex>``) is."""
    return os.path.join(root, "blobs", "sha256", digest.removeprefix("sha256:"))


def chains(diff_ids: Sequence[str]) -> list[str]:
    """The chain_id of each prefix of a stack, bottom first (OCI image-spec): what its
    layers' snapshots are named by."""
    return [_core.chain_id(list(diff_ids[: i + 1])) for i in range(len(diff_ids))]


def snapshot_path(root: str, chain_hex: str, xattrs: str) -> str:
    """Where the overlay snapshot of the stack with chain_id ``sha256:<chain_hex>`` is: in
    ``trusted.overlay`` form, or with ``xattrs="user"`` in ``user.overlay`` form."""
    name = chain_hex + (".user" if xattrs == "user" else "")
    return os.path.join(root, PRIVATE, "snapshots", name)


def tag_of(entry: Mapping[str, Any]) -> str | None:
    """The tag an ``index.json`` entry carries, if any."""
    annotations = entry.get("annotations")
    if isinstance(annotations, dict):
        tag = annotations.get(REF_NAME)
        if isinstance(tag, str):
            return tag
    return None


def read_index(root: str) -> list[dict[str, Any]] | None:
    """The entries of the store's ``index.json``, or None when it is missing or not an image
    index (:class:`~layercore.store.Store` says what is wrong with it)."""
    try:
        with open(os.path.join(root, "index.json"), "rb") as f:
            index = json.loads(f.read())
    except (OSError, ValueError, RecursionError):
        return None
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not all(isinstance(m, dict) for m in manifests):
        return None
    return manifests


@contextmanager
def writer_lock(root: str) -> Iterator[None]:
    """Holds off the store's gc, as :meth:`Store.writing <layercore.Store.writing>` does: a
    shared lock on ``gc.lock``, taken after waiting for a gc that is waiting already
    (``gc.intent``). Not re-entrant: for a process that holds no ``Store.writing`` scope."""
    private = os.path.join(root, PRIVATE)
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
    intent = os.open(os.path.join(private, "gc.intent"), flags, 0o644)
    try:
        fcntl.flock(intent, fcntl.LOCK_SH)
    finally:
        os.close(intent)
    lock = os.open(os.path.join(private, "gc.lock"), flags, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield
    finally:
        os.close(lock)
