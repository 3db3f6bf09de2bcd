"""The merged view of a stack of layers: look up, list, walk and read without extracting.

A :class:`Stack` indexes each layer blob once (streaming it: entries and their data offsets,
never the bodies) and merges the indexes with the OCI rules: whiteouts hide lower layers only,
opaque directories hide lower children, a non-directory hides everything below it, a
directory over a directory merges and takes the highest layer's attributes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from layercore import _core
from layercore._core import Entry
from layercore.errors import DigestMismatchError
from layercore.flatten import flatten as _flatten
from layercore.flatten import squash as _squash
from layercore.layer import Compression, Layer

if TYPE_CHECKING:
    from layercore.container import Container

__all__ = ["Change", "Stack"]

#: What a layer did to a path, as :meth:`Stack.history` reports it.
Change = Literal["added", "modified", "deleted", "hidden"]
StrPath = str | os.PathLike[str]


class Stack:
    """A stack of layer blobs, bottom first, seen as one merged tree.

    ``layers`` are :class:`~layercore.Layer` objects or blob paths (tar, gzip or zstd). Each
    blob is indexed once, in parallel; a fresh cached index is loaded instead, and a stale or
    damaged one rebuilt. Cached indexes live beside their blobs (``<blob>.lcidx``), or with
    ``index_dir`` in that directory (``<index_dir>/<blob file name>.lcidx``, so a directory of
    blobs holds nothing else; blobs sharing an ``index_dir`` need distinct file names, as
    content-addressed blobs have). A cache records the blob's size, mtime and inode, so one
    left by another or an older blob is rebuilt, never trusted. With ``save_index=True``
    indexes that had to be built are cached for next time (``index_dir`` is created if
    missing; an error if they cannot be written). The diff_id of a given
    :class:`~layercore.Layer` is checked against the blob as it is indexed: a blob whose
    diff_id is not the recorded one raises :class:`~layercore.errors.DigestMismatchError`.

    Paths are relative to the stack's root, with or without a leading ``/``. The root itself
    has no entry. Entries returned carry ``layer``: the index (bottom = 0) of the layer that
    provides them. Directories that a layer needs but does not carry (``a/b`` without ``a``,
    and also the parents of whiteouts and opaque markers: a layer holding only ``a/.wh.x``
    has an ``a``) appear as mode 0755, owner 0:0, mtime 0, unless a lower layer has that
    directory, whose attributes and other children then show through. This is what
    :meth:`flatten` writes.
    """

    def __init__(
        self,
        layers: Sequence[Layer | StrPath],
        *,
        save_index: bool = False,
        index_dir: StrPath | None = None,
    ) -> None:
        layers = list(layers)
        paths = [os.fspath(layer.path if isinstance(layer, Layer) else layer) for layer in layers]
        self._save_index = save_index
        self._index_dir = None if index_dir is None else os.fspath(index_dir)
        self._view = _core.StackView(paths, save_index=save_index, index_dir=self._index_dir)
        descriptors = self._view.descriptors()
        resolved: list[Layer] = []
        for given, d in zip(layers, descriptors, strict=True):
            if isinstance(given, Layer):
                if given.diff_id != d["diff_id"]:
                    raise DigestMismatchError(
                        f"diff_id mismatch: expected {given.diff_id}, got {d['diff_id']}",
                        given.path,
                        what="diff_id",
                        expected=given.diff_id,
                        actual=str(d["diff_id"]),
                    )
                resolved.append(given)
            else:
                resolved.append(Layer._from_descriptor(Path(os.fspath(given)), d))
        self._layers = tuple(resolved)

    @property
    def layers(self) -> tuple[Layer, ...]:
        """The layers, bottom first."""
        return self._layers

    @property
    def diff_ids(self) -> list[str]:
        """The layers' diff_ids as computed while indexing them, bottom first."""
        return self._view.diff_ids

    @property
    def chain_id(self) -> str:
        """The chain_id of the stack (OCI image-spec); ``ValueError`` for an empty stack."""
        return self._view.chain_id

    def __len__(self) -> int:
        """The number of visible paths."""
        return len(self._view)

    def __repr__(self) -> str:
        return f"Stack({[str(layer.path) for layer in self._layers]!r})"

    def lookup(self, path: StrPath) -> Entry | None:
        """The entry visible at ``path``, or None. Symbolic links are not followed."""
        return self._view.lookup(path)

    def lookup_many(self, paths: Iterable[StrPath]) -> list[Entry | None]:
        """:meth:`lookup` for many paths in one call (much faster than a loop of lookups)."""
        return self._view.lookup_many(paths)

    def listdir(self, path: StrPath = "") -> list[str]:
        """Sorted names in directory ``path`` (the root by default).

        Raises :class:`~layercore.errors.SourceNotFoundError` if nothing is visible at ``path``
        and :class:`~layercore.errors.UnsupportedEntryError` if it is not a directory.
        """
        return self._view.listdir(path)

    def walk(self) -> Iterator[Entry]:
        """Every visible entry: depth first, each directory followed by its contents, names
        sorted by bytes (the order of GNU ``tar --sort=name``)."""
        return iter(self._view.walk())

    def read(self, path: StrPath) -> bytes:
        """The body of the regular file at ``path``.

        Symbolic links are followed inside the stack (absolute targets start at its root,
        ``..`` stops there); a hardlink reads its target in the same layer. Raises
        :class:`~layercore.errors.SourceNotFoundError` if nothing is there and
        :class:`~layercore.errors.UnsupportedEntryError` for a directory, device, FIFO or
        symlink loop. Compressed blobs are decompressed from their start up to the file.
        """
        return self._view.read(path)

    def read_into(self, path: StrPath, dest: StrPath) -> int:
        """Streams the body of the file at ``path`` (as :meth:`read` finds it) into the file
        ``dest``, which appears only once complete; returns the number of bytes."""
        return self._view.read_into(path, os.fspath(dest))

    def history(self, path: StrPath) -> list[tuple[int, Change]]:
        """``(layer, change)`` for each layer that touched ``path``, bottom to top.

        ``"added"``: first appearance, or re-creation after a deletion; ``"modified"``:
        replaced what was visible (a directory: new attributes); ``"deleted"``: a whiteout of
        the path or an ancestor; ``"hidden"``: an opaque ancestor or a non-directory at an
        ancestor. Whiteouts of paths that were not visible are not listed.
        """
        return self._view.history(path)

    @property
    def index_dir(self) -> Path | None:
        """The directory of the cached indexes, or None when they live beside the blobs."""
        return None if self._index_dir is None else Path(self._index_dir)

    def save_indexes(self) -> list[Path]:
        """Caches every layer's index where this stack looks for it (``<blob>.lcidx``, or
        ``<index_dir>/<blob file name>.lcidx``, creating ``index_dir`` if missing); returns
        the files written."""
        return [Path(p) for p in self._view.save_indexes()]

    def flatten(
        self,
        out: StrPath,
        *,
        compression: Compression = "gzip",
        level: int | None = None,
        threads: int | None = None,
        source_date_epoch: int | None = None,
    ) -> Layer:
        """Writes one layer at ``out`` equal to this stack's merged view (see
        :func:`layercore.flatten.flatten` for the rules and options)."""
        return _flatten(
            self._layers,
            out,
            compression=compression,
            level=level,
            threads=threads,
            source_date_epoch=source_date_epoch,
        )

    def squash(
        self,
        start: int,
        end: int,
        out: StrPath,
        *,
        compression: Compression = "gzip",
        level: int | None = None,
        threads: int | None = None,
        source_date_epoch: int | None = None,
    ) -> Stack:
        """Merges layers ``start..end`` (end exclusive) into one layer at ``out`` and returns the
        new stack, which shows exactly what this one shows; the layers below ``start`` and from
        ``end`` up are kept as they are (see :func:`layercore.flatten.squash`). The new stack
        keeps this one's ``save_index`` and ``index_dir``."""
        return Stack(
            _squash(
                self._layers,
                start,
                end,
                out,
                compression=compression,
                level=level,
                threads=threads,
                source_date_epoch=source_date_epoch,
            ),
            save_index=self._save_index,
            index_dir=self._index_dir,
        )

    def extract(self, dest: StrPath, *, devices: Literal["skip", "fail"] = "skip") -> list[str]:
        """Extracts the merged tree into ``dest`` (empty or missing), applying each layer
        bottom first; links are never followed out of ``dest``. Returns the warnings (see
        :func:`layercore.extract.extract`)."""
        from layercore.extract import extract

        return extract(self._layers, dest, devices=devices)

    def container(self, upper_dir: StrPath) -> Container:
        """A copy-on-write container over this stack whose changes go to the directory
        ``upper_dir``, laid out as an overlayfs upper dir (see
        :class:`layercore.container.Container`); its ``commit`` writes them as a layer."""
        from layercore.container import Container

        return Container(self, upper_dir)
