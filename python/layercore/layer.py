"""Layers: building one from a directory, opening a blob, reading its entries, verifying it."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from layercore import _core
from layercore._core import Entry
from layercore.errors import LayerWarning

if TYPE_CHECKING:
    from layercore.stack import Stack

__all__ = ["Compression", "DirAttrs", "Entry", "Layer", "Owner"]

Compression = Literal["gzip", "zstd"] | None
Owner = Literal["root", "keep", "numeric", "inherit"]
StrPath = str | os.PathLike[str]


@dataclass(frozen=True)
class DirAttrs:
    """What a directory a layer carries is to have when extracted: permission bits, owner
    and mtime (seconds since the epoch)."""

    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime: int = 0


@dataclass(frozen=True)
class Layer:
    """A layer blob on disk and the identities a manifest and a config need.

    ``digest`` is the sha256 of the blob as stored, ``diff_id`` the sha256 of the uncompressed
    tar, ``size`` the blob's bytes. Build one with :meth:`from_dir`, or describe an existing blob
    with :meth:`open`.
    """

    path: Path
    media_type: str
    digest: str
    diff_id: str
    size: int
    #: Bytes of the uncompressed tar; None when the layer was opened with trusted digests and
    #: has not been read.
    uncompressed_size: int | None
    compression: Compression

    @classmethod
    def from_dir(
        cls,
        src: StrPath,
        out: StrPath,
        *,
        compression: Compression = "gzip",
        level: int | None = None,
        source_date_epoch: int | None = None,
        owner: Owner | tuple[int, int] = "root",
        threads: int | None = None,
        under: str | None = None,
        under_dirs: Sequence[DirAttrs] | None = None,
        chmod: int | None = None,
    ) -> Layer:
        """Writes the directory ``src`` as a layer blob at ``out``, in one streaming pass.

        The tar is deterministic (GNU ``tar --sort=name`` order, PAX headers, no atime/ctime):
        the same tree and options give the same bytes on any machine and with any ``threads``.
        ``compression`` is ``"gzip"``, ``"zstd"`` or ``None`` (plain tar); ``level`` defaults to
        1 for gzip and 3 for zstd. ``owner="root"`` writes uid/gid 0 without names,
        ``owner="keep"`` the files' own, ``owner="numeric"`` their ids without names,
        ``owner=(uid, gid)`` those numbers without names (``"inherit"``, for a diff against a
        stack, gives each path the owner the stack has for it, and is ``"root"`` here).
        ``source_date_epoch`` clamps mtimes. ``threads`` defaults to every core. The blob
        appears at ``out`` only once it is complete. Sockets are skipped with a
        :class:`~layercore.errors.LayerWarning`.

        ``under="srv/app"`` places the tree in that directory of the layer (what
        ``COPY src /srv/app/`` writes): ``x`` becomes ``srv/app/x``, and the layer starts with
        an entry for each directory of the path, with the :class:`DirAttrs` of
        ``under_dirs`` (one per component; by default 0755, root, and the
        ``source_date_epoch`` or the current time). ``chmod`` replaces the permission bits of
        every entry of the tree but symlinks (``COPY --chmod``).
        """
        out_path = Path(out)
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        # The core checks the path is clean (no empty, "." or ".." component).
        prefix = (under or "").strip("/")
        components = prefix.split("/") if prefix else []
        if under_dirs is None:
            now = source_date_epoch if source_date_epoch is not None else int(time.time())
            under_dirs = [DirAttrs(mtime=now)] * len(components)
        if len(under_dirs) != len(components):
            raise ValueError(
                f"under={under!r} has {len(components)} directories, but under_dirs gives "
                f"{len(under_dirs)}"
            )
        chown = None
        if isinstance(owner, tuple):
            chown, owner = owner, "root"
        descriptor, skipped = _core.build_layer_from_dir(
            os.fspath(src),
            os.fspath(out_path),
            compression=compression,
            level=level,
            source_date_epoch=source_date_epoch,
            owner=owner,
            threads=threads,
            chown=chown,
            under=prefix or None,
            under_dirs=[(d.mode, d.uid, d.gid, d.mtime) for d in under_dirs],
            chmod=chmod,
        )
        for message in skipped:
            warnings.warn(message, LayerWarning, stacklevel=2)
        return cls._from_descriptor(out_path, descriptor)

    @classmethod
    def from_diff(
        cls,
        lower: StrPath | Stack,
        upper: StrPath,
        out: StrPath,
        *,
        compression: Compression = "gzip",
        level: int | None = None,
        source_date_epoch: int | None = None,
        owner: Owner = "root",
        compare: Literal["metadata", "content"] = "metadata",
        threads: int | None = None,
    ) -> Layer:
        """Writes the changeset that turns ``lower`` into the directory ``upper`` as a layer at
        ``out``: added and modified entries whole, deletions as whiteouts, a replaced directory
        as an opaque marker when that is smaller (see :func:`layercore.diff.from_diff`).

        ``lower`` is a directory or a :class:`~layercore.stack.Stack`; a stack is read through
        its merged view, never extracted (a build step's rootfs against the image below it)."""
        from layercore.diff import from_diff

        return from_diff(
            lower,
            upper,
            out,
            compression=compression,
            level=level,
            source_date_epoch=source_date_epoch,
            owner=owner,
            compare=compare,
            threads=threads,
        )

    @classmethod
    def from_overlay_upper(
        cls,
        upper: StrPath,
        out: StrPath,
        *,
        compression: Compression = "gzip",
        level: int | None = None,
        source_date_epoch: int | None = None,
        owner: Owner = "root",
        threads: int | None = None,
        lower: Stack | None = None,
    ) -> Layer:
        """Converts an overlayfs upper directory (char 0/0 whiteouts, ``overlay.opaque``
        xattrs) into an OCI layer, as ``docker commit`` does on overlay2 (``lower``: the stack
        below it, which ``owner="inherit"`` takes the owners from)."""
        from layercore.diff import from_overlay_upper

        return from_overlay_upper(
            upper,
            out,
            compression=compression,
            level=level,
            source_date_epoch=source_date_epoch,
            owner=owner,
            threads=threads,
            lower=lower,
        )

    @classmethod
    def open(cls, path: StrPath, *, digest: str | None = None, diff_id: str | None = None) -> Layer:
        """Describes the blob at ``path`` (tar, gzip or zstd, detected by magic number).

        Without ``digest`` and ``diff_id`` the blob is read once to compute both (and to check
        that it is a valid archive). With both given, they are trusted and nothing is read;
        :meth:`verify` checks them later.
        """
        p = Path(path)
        if digest is not None and diff_id is not None:
            if not p.exists():
                from layercore.errors import SourceNotFoundError

                raise SourceNotFoundError("does not exist", p)
            with p.open("rb") as f:
                magic = f.read(4)
            compression: Compression = (
                "gzip"
                if magic.startswith(b"\x1f\x8b")
                else "zstd"
                if magic.startswith(b"\x28\xb5\x2f\xfd")
                else None
            )
            return cls(
                path=p,
                media_type=_MEDIA_TYPES[compression],
                digest=digest,
                diff_id=diff_id,
                size=p.stat().st_size,
                uncompressed_size=None,
                compression=compression,
            )
        return cls._from_descriptor(p, _core.describe_layer(os.fspath(p)))

    def entries(self) -> Iterator[Entry]:
        """Streams the layer's entries in archive order, decompressing on the fly."""
        return iter(_core.open_entries(os.fspath(self.path)))

    def verify(self) -> None:
        """Re-reads the blob; raises :class:`~layercore.errors.DigestMismatchError` if its
        digest or diff_id is not the one recorded, or a corrupt-archive error if it is broken."""
        _core.verify_layer(os.fspath(self.path), self.digest, self.diff_id)

    def apply(self, dest: StrPath, *, devices: Literal["skip", "fail"] = "skip") -> list[str]:
        """Applies this layer onto the directory ``dest`` with the OCI rules (whiteouts,
        opaque directories, type changes); returns the warnings (see
        :func:`layercore.extract.apply` for the safety rules and the privilege policy)."""
        from layercore.extract import apply

        return apply(self, dest, devices=devices)

    @classmethod
    def _from_descriptor(cls, path: Path, d: dict[str, object]) -> Layer:
        compression = d["compression"]
        assert compression in ("gzip", "zstd", None)
        return cls(
            path=path,
            media_type=str(d["media_type"]),
            digest=str(d["digest"]),
            diff_id=str(d["diff_id"]),
            size=_int(d["size"]),
            uncompressed_size=_int(d["uncompressed_size"]),
            compression=compression,
        )


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value


_MEDIA_TYPES: dict[Compression, str] = {
    None: "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
