"""A copy-on-write container over an immutable stack, in user space (no mount).

:class:`Container` gives a read-write view of a :class:`~layercore.stack.Stack` with overlayfs
semantics. Every change lands in one writable directory, ``upper_dir``, laid out exactly like an
overlayfs upper directory, so that :meth:`Container.commit` is
:func:`layercore.diff.from_overlay_upper` on it and the stack's blobs are never touched:

* a changed entry is copied up first (mode, mtime, xattrs and, as root, owner kept; a directory
  is copied up alone, its children keep coming from the stack);
* a deleted path that the stack shows becomes a whiteout: a character device 0/0 (what
  overlayfs writes; allowed without privileges since Linux 5.8), or, where ``mknod`` is refused,
  an empty file with the ``user.overlay.whiteout`` xattr in a directory marked
  ``user.overlay.whiteouts`` (the Linux 6.7 "xwhiteouts" form; ``upper_dir`` itself is marked
  when a top-level path is deleted);
* a directory created where the stack shows something is opaque: ``trusted.overlay.opaque=y`` as
  root, ``user.overlay.opaque=y`` otherwise.

A rename copies the whole source up to its new name and deletes the source, as overlayfs does
without ``redirect_dir``: simple, and the upper directory stays self-contained.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from layercore.errors import LayerIOError, SourceNotFoundError, UnsupportedEntryError
from layercore.layer import Compression, Layer, Owner, StrPath

if TYPE_CHECKING:
    from layercore._core import Entry
    from layercore.stack import Stack

__all__ = ["Container", "ContainerEntry", "WhiteoutForm"]

#: How whiteouts are written in the upper directory: ``"device"`` (char 0/0 only), ``"xattr"``
#: (the xwhiteouts form only), ``"auto"`` (a device, or the xattr form where mknod is refused).
WhiteoutForm = Literal["auto", "device", "xattr"]

_OVERLAY_PREFIXES = ("trusted.overlay.", "user.overlay.")
_WHITEOUT_PREFIX = ".wh."
_MAX_SYMLINKS = 40


@dataclass(frozen=True)
class ContainerEntry:
    """What :meth:`Container.lookup` finds at a path.

    ``kind`` is one of the :class:`~layercore.Entry` kinds (``"file"``, ``"dir"``,
    ``"symlink"``, ``"hardlink"``, ``"char"``, ``"block"``, ``"fifo"``). ``layer`` is the index
    of the stack layer that provides the entry, or None when it comes from the upper directory.
    """

    path: str
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    linkname: str | None
    xattrs: dict[str, bytes] = field(default_factory=dict)
    layer: int | None = None
    #: Device numbers of a ``"char"`` or ``"block"`` entry (0 otherwise).
    devmajor: int = 0
    devminor: int = 0


class Container:
    """A writable overlay of ``stack`` whose changes live in the directory ``upper_dir``.

    ``upper_dir`` is created if missing; an existing one is taken as the upper directory of an
    earlier session (the same stack must be passed). Paths are relative to the container's
    root, with or without a leading ``/``; ``.`` components are ignored and ``..`` is rejected.
    Symbolic links are never followed, except by :meth:`read`.

    Errors: a missing path raises :class:`~layercore.errors.SourceNotFoundError` (a
    ``FileNotFoundError``); a path under a non-directory, an existing destination, or anything
    overlay layers cannot carry raises :class:`~layercore.errors.UnsupportedEntryError`.
    """

    def __init__(
        self, stack: Stack, upper_dir: StrPath, *, whiteouts: WhiteoutForm = "auto"
    ) -> None:
        if whiteouts not in ("auto", "device", "xattr"):
            raise ValueError(f"unknown whiteout form {whiteouts!r}")
        self._stack = stack
        self._upper = Path(upper_dir)
        self._upper.mkdir(parents=True, exist_ok=True)
        if not self._upper.is_dir():
            raise UnsupportedEntryError("upper dir is not a directory", self._upper)
        self._root = os.geteuid() == 0
        self._whiteouts: Literal["device", "xattr"] = (
            _probe_whiteout_device(self._upper) if whiteouts == "auto" else whiteouts
        )
        self._opaque_xattr = "trusted.overlay.opaque" if self._root else "user.overlay.opaque"

    @property
    def stack(self) -> Stack:
        """The immutable stack below the container."""
        return self._stack

    @property
    def upper_dir(self) -> Path:
        """The writable directory (an overlayfs upper directory)."""
        return self._upper

    # --- reading -------------------------------------------------------------------------

    def lookup(self, path: StrPath) -> ContainerEntry | None:
        """The entry visible at ``path`` (upper wins; a whiteout hides; an opaque upper
        directory hides the stack below it), or None. The root is a ``"dir"`` entry."""
        parts = _split(path)
        state = self._locate(parts)
        if state is None:
            return None
        rel, upper_st, lower = state
        if upper_st is not None:
            return self._upper_entry(rel, upper_st)
        assert lower is not None
        return ContainerEntry(
            path=rel,
            kind=lower.kind,
            mode=lower.mode,
            uid=lower.uid,
            gid=lower.gid,
            size=lower.size,
            mtime=lower.mtime,
            linkname=lower.linkname,
            xattrs=dict(lower.xattrs),
            layer=lower.layer,
            devmajor=lower.devmajor,
            devminor=lower.devminor,
        )

    def read(self, path: StrPath) -> bytes:
        """The body of the regular file at ``path``: from the upper directory if it is there,
        else from the stack. Symbolic links are followed inside the container (absolute targets
        start at its root, ``..`` stops there)."""
        rel, upper_st, lower = self._resolve_follow(path)
        if upper_st is not None:
            if not stat.S_ISREG(upper_st.st_mode):
                raise UnsupportedEntryError("not a regular file", rel or "/")
            with open(self._upper / rel, "rb") as f:
                return f.read()
        assert lower is not None
        if lower.kind not in ("file", "hardlink"):
            raise UnsupportedEntryError(f"not a regular file ({lower.kind})", rel or "/")
        return self._stack.read(rel)

    def listdir(self, path: StrPath = "") -> list[str]:
        """Sorted names in directory ``path``: the upper directory's children and the stack's
        ones that are not whited out, none of the stack's below an opaque upper directory."""
        parts = _split(path)
        rel = "/".join(parts)
        entry = self.lookup(rel)
        if entry is None:
            raise SourceNotFoundError("no such directory in the container", rel or "/")
        if entry.kind != "dir":
            raise UnsupportedEntryError(f"not a directory ({entry.kind})", rel)
        names: set[str] = set()
        hidden: set[str] = set()
        upper = self._upper / rel
        upper_is_dir = _lstat(upper) is not None and upper.is_dir() and not upper.is_symlink()
        if upper_is_dir:
            for name in os.listdir(upper):
                if self._is_whiteout(upper / name):
                    hidden.add(name)
                else:
                    names.add(name)
        if self._lower_visible(parts):
            lower = self._stack.lookup(rel) if parts else None
            if not parts or (lower is not None and lower.kind == "dir"):
                names.update(n for n in self._stack.listdir(rel) if n not in hidden)
        return sorted(names)

    def walk(self) -> Iterator[ContainerEntry]:
        """Every visible entry below the root, depth first, names sorted."""

        def visit(rel: str) -> Iterator[ContainerEntry]:
            for name in self.listdir(rel):
                child = f"{rel}/{name}" if rel else name
                entry = self.lookup(child)
                assert entry is not None
                yield entry
                if entry.kind == "dir":
                    yield from visit(child)

        return visit("")

    # --- writing -------------------------------------------------------------------------

    def write(self, path: StrPath, data: bytes, mode: int = 0o644) -> None:
        """Writes ``data`` as the regular file ``path`` with ``mode``, replacing a non-directory
        already there. The parent directories must exist in the container; they are copied up
        with their attributes first."""
        dest, _over_lower = self._prepare_new(path, replace=True)
        with open(dest, "xb") as f:
            f.write(data)
        os.chmod(dest, stat.S_IMODE(mode))

    def mkdir(self, path: StrPath, mode: int = 0o755) -> None:
        """Creates the directory ``path``; opaque when the stack had something at that path
        (removed earlier), so that nothing of the stack shows through it."""
        dest, over_lower = self._prepare_new(path, replace=False)
        os.mkdir(dest)
        os.chmod(dest, stat.S_IMODE(mode))
        if over_lower:
            os.setxattr(dest, self._opaque_xattr, b"y")

    def symlink(self, target: str, path: StrPath) -> None:
        """Creates the symbolic link ``path`` pointing at ``target`` (kept verbatim)."""
        dest, _over_lower = self._prepare_new(path, replace=False)
        os.symlink(target, dest)

    def remove(self, path: StrPath) -> None:
        """Deletes ``path`` (a directory with everything below it): removes it from the upper
        directory and records a whiteout if the stack shows the path."""
        parts = _split(path)
        if not parts:
            raise UnsupportedEntryError("cannot remove the container's root", "/")
        rel = "/".join(parts)
        if self.lookup(rel) is None:
            raise SourceNotFoundError("nothing to remove in the container", rel)
        whiteout = self._lower_visible(parts[:-1]) and self._stack.lookup(rel) is not None
        self._copy_up_dirs(parts[:-1])
        dest = self._upper / rel
        st = _lstat(dest)
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(dest)
            else:
                os.unlink(dest)
        if whiteout:
            self._make_whiteout(parts)

    def rename(self, src: StrPath, dst: StrPath) -> None:
        """Moves ``src`` (a file or a whole tree) to ``dst``, which must not exist: copies the
        source up under its new name, then removes it (with a whiteout if the stack has it)."""
        sparts, dparts = _split(src), _split(dst)
        srel, drel = "/".join(sparts), "/".join(dparts)
        if not sparts or not dparts:
            raise UnsupportedEntryError("cannot rename the container's root", "/")
        if dparts[: len(sparts)] == sparts:
            raise UnsupportedEntryError(f"cannot move {srel!r} inside itself", drel)
        if self.lookup(srel) is None:
            raise SourceNotFoundError("nothing to rename in the container", srel)
        self._copy_tree(srel, dparts)
        self.remove(srel)

    def chmod(self, path: StrPath, mode: int) -> None:
        """Sets the permission bits of ``path`` (copied up first, content kept). Symbolic links
        have no mode of their own and raise :class:`~layercore.errors.UnsupportedEntryError`."""
        parts = _split(path)
        rel = "/".join(parts)
        entry = self.lookup(rel)
        if entry is None:
            raise SourceNotFoundError("nothing to chmod in the container", rel or "/")
        if entry.kind == "symlink":
            raise UnsupportedEntryError("a symbolic link has no mode of its own", rel)
        self._copy_up(parts)
        os.chmod(self._upper / rel, stat.S_IMODE(mode))

    def commit(
        self,
        out: StrPath,
        *,
        compression: Compression = "gzip",
        level: int | None = None,
        source_date_epoch: int | None = None,
        threads: int | None = None,
        owner: Owner | None = None,
    ) -> Layer:
        """Writes the container's changes as a layer at ``out``
        (:func:`layercore.diff.from_overlay_upper` on the upper directory): stacked on the
        stack's layers it shows what the container shows. ``owner`` defaults to ``"keep"`` as
        root (copy-up kept the stack's owners) and ``"root"`` otherwise."""
        from layercore.diff import from_overlay_upper

        if owner is None:
            owner = "keep" if self._root else "root"
        return from_overlay_upper(
            self._upper,
            out,
            compression=compression,
            level=level,
            source_date_epoch=source_date_epoch,
            owner=owner,
            threads=threads,
        )

    # --- internals -----------------------------------------------------------------------

    def _locate(self, parts: list[str]) -> tuple[str, os.stat_result | None, Entry | None] | None:
        """``(rel, upper stat, stack entry)`` of what is visible at ``parts``, or None."""
        rel = "/".join(parts)
        lower_visible = True
        for i in range(len(parts) + 1):
            prefix = self._upper / "/".join(parts[:i]) if i else self._upper
            st = _lstat(prefix)
            if st is None:
                break  # nothing in upper here, so nothing below either
            if self._is_whiteout(prefix, st):
                return None
            if i == len(parts):
                return rel, st, None
            if not stat.S_ISDIR(st.st_mode):
                return None
            if i and self._is_opaque(prefix):
                lower_visible = False
        if not lower_visible:
            return None
        lower = self._stack.lookup(rel)
        if lower is None:
            return None
        return rel, None, lower

    def _lower_visible(self, parts: list[str]) -> bool:
        """Whether the stack shows through at ``parts`` (no whiteout, non-directory or opaque
        directory in the upper dir at it or above)."""
        for i in range(1, len(parts) + 1):
            prefix = self._upper / "/".join(parts[:i])
            st = _lstat(prefix)
            if st is None:
                return True
            if self._is_whiteout(prefix, st) or not stat.S_ISDIR(st.st_mode):
                return False
            if self._is_opaque(prefix):
                return False
        return True

    def _resolve_follow(self, path: StrPath) -> tuple[str, os.stat_result | None, Entry | None]:
        """Like :meth:`_locate` but following symbolic links in every component."""
        pending = _split(path)
        done: list[str] = []
        hops = 0
        while pending:
            name = pending.pop(0)
            if name == "..":
                if done:
                    done.pop()
                continue
            candidate = [*done, name]
            state = self._locate(candidate)
            if state is None:
                raise SourceNotFoundError("no such file in the container", "/".join(candidate))
            _rel, upper_st, lower = state
            if upper_st is not None:
                target = (
                    os.readlink(self._upper / "/".join(candidate))
                    if stat.S_ISLNK(upper_st.st_mode)
                    else None
                )
            else:
                assert lower is not None
                target = lower.linkname if lower.kind == "symlink" else None
            if target is None:
                done = candidate
                continue
            hops += 1
            if hops > _MAX_SYMLINKS:
                raise UnsupportedEntryError(
                    "too many levels of symbolic links", "/".join(candidate)
                )
            if target.startswith("/"):
                done = []
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
        state = self._locate(done)
        if state is None:
            raise SourceNotFoundError("no such file in the container", "/".join(done) or "/")
        return state

    def _upper_entry(self, rel: str, st: os.stat_result) -> ContainerEntry:
        full = self._upper / rel if rel else self._upper
        mode = st.st_mode
        kind = (
            "dir"
            if stat.S_ISDIR(mode)
            else "symlink"
            if stat.S_ISLNK(mode)
            else "char"
            if stat.S_ISCHR(mode)
            else "block"
            if stat.S_ISBLK(mode)
            else "fifo"
            if stat.S_ISFIFO(mode)
            else "file"
        )
        xattrs: dict[str, bytes] = {}
        if kind in ("file", "dir"):
            for name in _listxattr(full):
                if not name.startswith(_OVERLAY_PREFIXES):
                    xattrs[name] = os.getxattr(full, name, follow_symlinks=False)
        return ContainerEntry(
            path=rel,
            kind=kind,
            mode=stat.S_IMODE(mode),
            uid=st.st_uid,
            gid=st.st_gid,
            size=st.st_size if kind == "file" else 0,
            mtime=int(st.st_mtime),
            linkname=os.readlink(full) if kind == "symlink" else None,
            xattrs=xattrs,
            layer=None,
            devmajor=os.major(st.st_rdev) if kind in ("char", "block") else 0,
            devminor=os.minor(st.st_rdev) if kind in ("char", "block") else 0,
        )

    def _is_whiteout(self, full: Path, st: os.stat_result | None = None) -> bool:
        if st is None:
            st = _lstat(full)
            if st is None:
                return False
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return True
        if stat.S_ISREG(st.st_mode) and st.st_size == 0:
            return _marks_xwhiteouts(full.parent) and _has_overlay_xattr(full, "whiteout")
        return False

    def _is_opaque(self, full: Path) -> bool:
        for prefix in _OVERLAY_PREFIXES:
            try:
                if os.getxattr(full, prefix + "opaque", follow_symlinks=False) == b"y":
                    return True
            except OSError:
                continue
        return False

    def _make_whiteout(self, parts: list[str]) -> None:
        dest = self._upper / "/".join(parts)
        if self._whiteouts == "device":
            try:
                os.mknod(dest, stat.S_IFCHR, os.makedev(0, 0))
            except PermissionError as e:
                raise LayerIOError("cannot create a whiteout device (char 0/0)", dest) from e
            return
        # The xwhiteouts form: the directory is marked (the upper root too, as the kernel
        # reads a layer root's mark), and the file must stay readable by its owner, whose
        # xattr reads need read permission on it.
        os.setxattr(dest.parent, "user.overlay.whiteouts", b"y")
        with open(dest, "xb"):
            pass
        os.setxattr(dest, "user.overlay.whiteout", b"y")

    def _prepare_new(self, path: StrPath, *, replace: bool) -> tuple[Path, bool]:
        """Checks that ``path`` can be created (parent a directory; nothing there, or with
        ``replace`` a non-directory), copies the parents up and clears the upper slot. Returns
        the upper path and whether the stack shows something at ``path`` (which the new entry
        hides)."""
        parts = _split(path)
        if not parts:
            raise UnsupportedEntryError("the container's root already exists", "/")
        if parts[-1].startswith(_WHITEOUT_PREFIX):
            raise UnsupportedEntryError(
                "a name starting with .wh. would read as a whiteout", "/".join(parts)
            )
        rel = "/".join(parts)
        parent_rel = "/".join(parts[:-1])
        parent = self.lookup(parent_rel)
        if parent is None:
            raise SourceNotFoundError(
                "parent directory does not exist in the container", parent_rel or "/"
            )
        if parent.kind != "dir":
            raise UnsupportedEntryError(f"parent is not a directory ({parent.kind})", parent_rel)
        existing = self.lookup(rel)
        if existing is not None and (not replace or existing.kind == "dir"):
            what = "a directory" if existing.kind == "dir" else "an entry"
            raise UnsupportedEntryError(f"{what} already exists there", rel)
        self._copy_up_dirs(parts[:-1])
        dest = self._upper / rel
        st = _lstat(dest)
        if st is not None:
            os.unlink(dest)  # a whiteout, or the non-directory being replaced
        over_lower = self._lower_visible(parts[:-1]) and self._stack.lookup(rel) is not None
        return dest, over_lower

    def _copy_up_dirs(self, parts: list[str]) -> None:
        for i in range(1, len(parts) + 1):
            self._copy_up(parts[:i])

    def _copy_up(self, parts: list[str]) -> None:
        """Brings the entry at ``parts`` (and its parents) into the upper dir, alone."""
        if not parts:
            return
        dest = self._upper / "/".join(parts)
        if _lstat(dest) is not None:
            return
        self._copy_up_dirs(parts[:-1])
        rel = "/".join(parts)
        lower = self._stack.lookup(rel)
        if lower is None:
            raise SourceNotFoundError("nothing to copy up", rel)
        self._materialize(rel, lower, dest)

    def _materialize(self, rel: str, lower: Entry | ContainerEntry, dest: Path) -> None:
        """Creates ``dest`` as a copy of the merged entry ``rel`` described by ``lower``."""
        kind = lower.kind
        in_upper = isinstance(lower, ContainerEntry) and lower.layer is None
        if kind == "dir":
            os.mkdir(dest)
        elif kind in ("file", "hardlink"):
            if in_upper:
                shutil.copyfile(self._upper / rel, dest, follow_symlinks=False)
            else:
                self._stack.read_into(rel, dest)
        elif kind == "symlink":
            assert lower.linkname is not None
            os.symlink(lower.linkname, dest)
        elif kind == "fifo":
            os.mkfifo(dest)
        elif kind in ("char", "block"):
            fmt = stat.S_IFCHR if kind == "char" else stat.S_IFBLK
            rdev = os.makedev(lower.devmajor, lower.devminor)
            try:
                os.mknod(dest, fmt | 0o600, rdev)
            except PermissionError as e:
                raise UnsupportedEntryError("copying up a device needs CAP_MKNOD", rel) from e
        else:
            raise UnsupportedEntryError(f"cannot copy up a {kind} entry", rel)
        self._set_attrs(rel, lower, dest)

    def _set_attrs(self, rel: str, lower: Entry | ContainerEntry, dest: Path) -> None:
        is_link = lower.kind == "symlink"
        if not is_link:
            for name, value in lower.xattrs.items():
                if name.startswith(_OVERLAY_PREFIXES):
                    continue
                if not self._root and not name.startswith("user."):
                    continue  # only user.* can be set without privileges
                try:
                    os.setxattr(dest, name, value, follow_symlinks=False)
                except OSError as e:
                    raise LayerIOError(f"cannot set xattr {name}: {e.strerror}", rel) from e
        if self._root:
            os.chown(dest, lower.uid, lower.gid, follow_symlinks=False)
        if not is_link:
            os.chmod(dest, stat.S_IMODE(lower.mode))
        os.utime(dest, (lower.mtime, lower.mtime), follow_symlinks=False)

    def _copy_tree(self, srel: str, dparts: list[str]) -> None:
        """Copies the merged tree at ``srel`` to the new path ``dparts`` in the upper dir."""
        entry = self.lookup(srel)
        assert entry is not None
        if entry.kind == "dir":
            self.mkdir("/".join(dparts), entry.mode)
        else:
            dest, _over_lower = self._prepare_new("/".join(dparts), replace=False)
            self._materialize(srel, entry, dest)
            return
        dest = self._upper / "/".join(dparts)
        for name in self.listdir(srel):
            self._copy_tree(f"{srel}/{name}", [*dparts, name])
        self._set_attrs(srel, entry, dest)


def _probe_whiteout_device(upper: Path) -> Literal["device", "xattr"]:
    """``"device"`` if a char 0/0 can be made in ``upper`` (root, or Linux 5.8+), else
    ``"xattr"``."""
    probe = upper / f".layercore-whiteout-probe-{os.getpid()}"
    try:
        os.mknod(probe, stat.S_IFCHR, os.makedev(0, 0))
    except OSError:  # EPERM (old kernel, seccomp), or a filesystem without device nodes
        return "xattr"
    os.unlink(probe)
    return "device"


def _split(path: StrPath) -> list[str]:
    parts = [p for p in os.fspath(path).split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsupportedEntryError("'..' is not allowed in container paths", os.fspath(path))
    return parts


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None


def _listxattr(path: Path) -> list[str]:
    try:
        return os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return []
        raise


def _marks_xwhiteouts(directory: Path) -> bool:
    """Whether ``directory`` may hold xwhiteouts: ``overlay.whiteouts`` (Linux 6.7) or
    ``overlay.opaque=x`` (6.8+), as ``from_overlay_upper`` reads them."""
    if _has_overlay_xattr(directory, "whiteouts"):
        return True
    for prefix in _OVERLAY_PREFIXES:
        try:
            if os.getxattr(directory, prefix + "opaque", follow_symlinks=False) == b"x":
                return True
        except OSError:
            continue
    return False


def _has_overlay_xattr(path: Path, name: str) -> bool:
    for prefix in _OVERLAY_PREFIXES:
        try:
            os.getxattr(path, prefix + name, follow_symlinks=False)
            return True
        except OSError:
            continue
    return False
