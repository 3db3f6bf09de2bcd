"""The pure-Python twin of layercore: the same layers, built with the standard library.

This module is what a careful Python developer would write to build reproducible OCI image layers
without layercore's Rust engine: :mod:`os` to walk the tree, :mod:`tarfile` (``PAX_FORMAT``, fed
explicit, normalised :class:`tarfile.TarInfo` objects) to write the archive, :mod:`hashlib` for
the digests, :mod:`gzip` and the ``zstandard`` package for compression. It mirrors the main API
(:class:`Layer`, :class:`Entry`, :class:`Digester`, :func:`sha256_file`, :func:`chain_id`) so
that the same code can drive either implementation.

It exists for two reasons:

* **Benchmark baseline.** The benchmarks compare layercore with this module, so it is written to
  be honest, not slow: one pass over the data (walk -> tar -> hash -> compress -> hash -> file),
  large copy buffers, no per-byte Python loops and no second read of anything.
* **Differential-test oracle.** For the same tree and options, the *uncompressed* tar written
  here is byte-identical to the Rust writer's (docs/ARCHITECTURE.md, "The layer tar format"), so
  ``diff_id`` agrees too. The compressed bytes differ (Python's zlib writes one gzip member, the
  Rust side many), so ``digest`` of a compressed layer is not expected to match.

It imports nothing from layercore but :mod:`layercore.errors`, so it works (and fails) the same
way with or without the compiled extension, and raises the same exception classes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import grp
import gzip
import hashlib
import math
import os
import pwd
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from tarfile import (  # type: ignore[attr-defined]  # (not in typeshed)
    EmptyHeaderError,
    EOFHeaderError,
    TruncatedHeaderError,
)
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any, Protocol, Self, cast

from layercore.errors import (
    CorruptLayerError,
    DigestMismatchError,
    LayerError,
    LayerIOError,
    LayerWarning,
    SourceChangedError,
    SourceNotFoundError,
    TruncatedLayerError,
    UnsupportedEntryError,
)

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = [
    "MEDIA_TYPES",
    "Digester",
    "Entry",
    "Layer",
    "Stack",
    "apply_layer",
    "chain_id",
    "layer_from_diff",
    "sha256_file",
]

StrPath = str | os.PathLike[str]

#: OCI media type of a layer blob, by compression.
MEDIA_TYPES: dict[str | None, str] = {
    None: "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
_DEFAULT_LEVEL = {"gzip": 1, "zstd": 3}
_LEVEL_RANGE = {"gzip": (0, 9), "zstd": (1, 22)}  # zlib's scale; libzstd's
_OWNERS = ("root", "keep")

_CHUNK = 1 << 20  # file copy / read size
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_XATTR_PREFIX = "SCHILY.xattr."
_XATTR_EXCLUDED = frozenset({"security.selinux"})
_WHITEOUT_PREFIX = ".wh."
_OPAQUE_MARKER = ".wh..wh..opq"

_KIND_BY_TYPE = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.GNUTYPE_SPARSE: "file",
    tarfile.LNKTYPE: "hardlink",
    tarfile.SYMTYPE: "symlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.DIRTYPE: "dir",
    tarfile.FIFOTYPE: "fifo",
}


# --------------------------------------------------------------------------------------------
# Digests


class Digester:
    """Incremental sha256 (a thin :mod:`hashlib` wrapper) that also counts the bytes."""

    __slots__ = ("_hash", "_size")

    def __init__(self, data: ReadableBuffer | None = None) -> None:
        self._hash = hashlib.sha256()
        self._size = 0
        if data is not None:
            self.update(data)

    def update(self, data: ReadableBuffer) -> None:
        self._hash.update(data)
        self._size += memoryview(data).nbytes

    @property
    def size(self) -> int:
        """Bytes hashed so far."""
        return self._size

    def copy(self) -> Digester:
        other = Digester()
        other._hash = self._hash.copy()
        other._size = self._size
        return other

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def digest(self) -> str:
        """The OCI digest string, ``sha256:<hex>``."""
        return "sha256:" + self._hash.hexdigest()


def sha256_file(path: StrPath) -> str:
    """``sha256:<hex>`` of a file's bytes."""
    try:
        with open(path, "rb") as f:
            return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        raise _os_error(path, "cannot read", e) from e


def chain_id(diff_ids: Sequence[str]) -> str:
    """The OCI ChainID of a stack of layers, bottom first.

    ``chain(L0) = diff_id(L0)``; ``chain(L0..Ln) = sha256(chain(L0..Ln-1) + " " + diff_id(Ln))``.
    """
    if isinstance(diff_ids, str):
        raise ValueError("chain_id takes a sequence of diff_ids, not one string")
    ids = list(diff_ids)
    if not ids:
        raise ValueError("chain_id of an empty list of diff_ids")
    for d in ids:
        _check_digest(d, "diff_id")
    chain = ids[0]
    for d in ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {d}".encode("ascii")).hexdigest()
    return chain


def _check_digest(value: object, what: str) -> str:
    if not isinstance(value, str) or _DIGEST_RE.fullmatch(value) is None:
        raise ValueError(f"malformed {what} {value!r}: expected 'sha256:' and 64 lowercase hex")
    return value


# --------------------------------------------------------------------------------------------
# Entries


@dataclass(frozen=True)
class Entry:
    """One entry of a layer, as :meth:`Layer.entries` reads it."""

    path: str
    kind: str
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    size: int
    mtime: int
    linkname: str | None
    devmajor: int
    devminor: int
    xattrs: dict[str, bytes]
    offset: int


def _normalize(name: str) -> str:
    """``./a/b/`` -> ``a/b``; the root (``.``, ``./``, ``/``) -> ``''``."""
    while True:
        if name.startswith("/"):
            name = name.lstrip("/")
        elif name.startswith("./"):
            name = name[2:]
        else:
            break
    name = name.rstrip("/")
    return "" if name == "." else name


def _entry(layer: str, ti: tarfile.TarInfo) -> Entry | None:
    path = _normalize(ti.name)
    if not path:
        return None  # the root directory some tools write as './'
    kind = _KIND_BY_TYPE.get(ti.type)
    if kind is None:
        raise UnsupportedEntryError(f"entry {path!r} has unsupported tar type {ti.type!r}", layer)
    if kind == "file":
        base = path.rpartition("/")[2]
        if base == _OPAQUE_MARKER:
            kind = "opaque"
        elif base == _WHITEOUT_PREFIX:
            raise CorruptLayerError(f"whiteout entry {path!r} names no file", layer)
        elif base.startswith(_WHITEOUT_PREFIX):
            kind = "whiteout"
    linkname: str | None = None
    if kind == "symlink":
        linkname = ti.linkname
    elif kind == "hardlink":
        linkname = _normalize(ti.linkname)
    xattrs = {
        key[len(_XATTR_PREFIX) :]: value.encode("utf-8", "surrogateescape")
        for key, value in sorted(ti.pax_headers.items())
        if key.startswith(_XATTR_PREFIX)
    }
    is_data = kind in ("file", "whiteout", "opaque")
    return Entry(
        path=path,
        kind=kind,
        mode=ti.mode & 0o7777,
        uid=ti.uid,
        gid=ti.gid,
        uname=ti.uname,
        gname=ti.gname,
        size=ti.size if is_data else 0,
        mtime=math.floor(ti.mtime),  # a PAX mtime may carry a fraction
        linkname=linkname,
        devmajor=ti.devmajor if kind in ("char", "block") else 0,
        devminor=ti.devminor if kind in ("char", "block") else 0,
        xattrs=xattrs,
        offset=ti.offset_data,
    )


# --------------------------------------------------------------------------------------------
# Errors


def _os_error(path: StrPath | bytes, what: str, e: OSError) -> LayerError:
    """An OSError on ``path`` as a LayerError; ENOENT becomes SourceNotFoundError."""
    if isinstance(e, LayerError):
        return e
    name = os.fsdecode(path)
    if e.errno == errno.ENOENT:
        return SourceNotFoundError("does not exist", name)
    return LayerIOError(f"{what}: {e.strerror or e}", name)


def _zstandard() -> ModuleType:
    try:
        import zstandard
    except ImportError as e:  # pragma: no cover - the dev environment has it
        raise ImportError(
            "zstd layers need the 'zstandard' package (pip install 'layercore[zstd]')"
        ) from e
    return zstandard


# --------------------------------------------------------------------------------------------
# Streams: one pass, hashing as the bytes go by


class _Sink(Protocol):
    def write(self, b: bytes, /) -> object: ...


class _Source(Protocol):
    def read(self, size: int, /) -> bytes: ...


class _HashingWriter:
    """Hashes and counts what is written, then passes it on (a file object for tarfile/gzip)."""

    def __init__(self, sink: _Sink, digester: Digester, on_error: Callable[[OSError], None]):
        self._sink = sink
        self.digester = digester
        self.count = 0
        self._on_error = on_error

    def write(self, b: bytes, /) -> int:
        self.digester.update(b)
        try:
            self._sink.write(b)
        except LayerError:
            raise
        except OSError as e:
            self._on_error(e)
            raise
        n = memoryview(b).nbytes
        self.count += n
        return n

    def tell(self) -> int:
        return self.count

    def flush(self) -> None:
        pass

    def read(self, size: int, /) -> bytes:
        raise OSError(errno.EBADF, "write-only stream")

    def seek(self, pos: int, /) -> int:
        raise OSError(errno.ESPIPE, "unseekable stream")

    def close(self) -> None:
        pass


class _HashingReader:
    """Hashes (optionally) and counts what is read; remembers reaching the end."""

    def __init__(self, source: _Source, digester: Digester | None):
        self._source = source
        self.digester = digester
        self.count = 0
        self.eof = False

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size)
        if data:
            if self.digester is not None:
                self.digester.update(data)
            self.count += len(data)
        elif size != 0:
            self.eof = True
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def write(self, b: bytes, /) -> int:
        raise OSError(errno.EBADF, "read-only stream")

    def tell(self) -> int:
        return self.count

    def seek(self, pos: int, /) -> int:
        raise OSError(errno.ESPIPE, "unseekable stream")

    def close(self) -> None:
        pass


class _ZstdReader:
    """Decompresses concatenated zstd frames; a stream that ends inside a frame is EOFError.

    (``zstandard``'s ``stream_reader`` returns short data on a truncated frame without saying
    so, hence ``decompressobj``, which reports where a frame ends.)
    """

    def __init__(self, source: _Source):
        self._source = source
        self._dctx = _zstandard().ZstdDecompressor()
        self._dobj: Any = None  # None between frames
        self._buf = bytearray()
        self._eof = False

    def _fill(self) -> None:
        data = self._source.read(_CHUNK)
        if not data:
            if self._dobj is not None:
                raise EOFError("zstd stream ends inside a frame")
            self._eof = True
            return
        while data:
            if self._dobj is None:
                self._dobj = self._dctx.decompressobj()
            self._buf += self._dobj.decompress(data)
            if not self._dobj.eof:
                break
            data = self._dobj.unused_data
            self._dobj = None

    def read(self, size: int = -1, /) -> bytes:
        if size < 0:
            while not self._eof:
                self._fill()
            size = len(self._buf)
        while len(self._buf) < size and not self._eof:
            self._fill()
        out = bytes(self._buf[:size])
        del self._buf[:size]
        return out


@dataclass
class _Scan:
    compression: str | None
    digest: str
    diff_id: str
    size: int
    uncompressed_size: int


def _detect(f: IO[bytes]) -> str | None:
    magic = f.read(4)
    f.seek(0)
    if magic.startswith(_GZIP_MAGIC):
        return "gzip"
    if magic == _ZSTD_MAGIC:
        return "zstd"
    return None


@contextlib.contextmanager
def _read_errors(layer: str) -> Iterator[None]:
    """Maps what reading a (compressed) tar stream can raise onto the LayerError classes."""
    try:
        yield
    except LayerError:
        raise
    except EOFError as e:
        raise TruncatedLayerError(f"compressed stream ends early: {e}", layer) from e
    except (gzip.BadGzipFile, zlib.error) as e:
        raise CorruptLayerError(f"corrupt gzip stream: {e}", layer) from e
    except OSError as e:
        raise _os_error(layer, "cannot read", e) from e
    except Exception as e:
        zstandard = _zstandard_if_loaded()
        if zstandard is not None and isinstance(e, zstandard.ZstdError):
            raise CorruptLayerError(f"corrupt zstd stream: {e}", layer) from e
        raise


def _zstandard_if_loaded() -> ModuleType | None:
    return sys.modules.get("zstandard")


@contextlib.contextmanager
def _open_stream(
    path: Path, *, hash_stored: bool, hash_tar: bool
) -> Iterator[tuple[str | None, _HashingReader, _HashingReader]]:
    """Opens a layer blob: (compression, reader of the stored bytes, reader of the tar bytes)."""
    layer = os.fsdecode(path)
    with contextlib.ExitStack() as stack:
        try:
            f = stack.enter_context(open(path, "rb"))
        except OSError as e:
            raise _os_error(layer, "cannot open", e) from e
        stack.enter_context(_read_errors(layer))
        compression = _detect(f)
        stored = _HashingReader(f, Digester() if hash_stored else None)
        decompressed: _Source
        if compression is None:
            yield compression, stored, stored  # the stored bytes are the tar
            return
        if compression == "gzip":
            decompressed = gzip.GzipFile(filename="", mode="rb", fileobj=stored)
        else:
            decompressed = _ZstdReader(stored)
        yield compression, stored, _HashingReader(decompressed, Digester() if hash_tar else None)


def _strict_tarinfo(header_errors: list[Exception]) -> type[tarfile.TarInfo]:
    """A TarInfo class that records why tarfile stopped reading headers.

    tarfile ends an archive quietly at a bad or missing header once it is past the first one; the
    recorded error lets the caller tell a proper end-of-archive block from truncation (no
    header, a short header) and corruption (bad checksum).
    """

    class _TarInfo(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls, archive: tarfile.TarFile) -> Self:
            try:
                return super().fromtarfile(archive)
            except Exception as e:
                header_errors.append(e)
                raise

    return _TarInfo


def _tar_members(layer: str, tar: _HashingReader) -> Iterator[tarfile.TarInfo]:
    """Streams the members of a tar stream, strictly: it must end with an end-of-archive block."""
    header_errors: list[Exception] = []
    tf: tarfile.TarFile | None = None

    def failure(detail: str) -> CorruptLayerError:
        first = header_errors[0] if header_errors else None
        at = f"at byte {tf.offset if tf is not None else 0} of the tar stream"
        if isinstance(first, EmptyHeaderError | TruncatedHeaderError) or (
            first is None and tar.eof
        ):
            return TruncatedLayerError(f"tar stream ends {at}: {detail}", layer)
        return CorruptLayerError(f"corrupt archive {at}: {detail}", layer)

    try:
        with tarfile.open(
            fileobj=tar,
            mode="r|",
            tarinfo=_strict_tarinfo(header_errors),
            encoding="utf-8",
            errors="surrogateescape",
        ) as tf:
            while True:
                ti = tf.next()
                if ti is None:
                    break
                yield ti
    except tarfile.ReadError as e:
        raise failure(str(e)) from None
    except ValueError as e:  # tarfile's parsers on garbage (sparse maps, numbers)
        if isinstance(e, LayerError):
            raise
        raise failure(f"{type(e).__name__}: {e}") from e
    if not header_errors or not isinstance(header_errors[0], EOFHeaderError):
        reason = str(header_errors[0]) if header_errors else "no end-of-archive block"
        raise failure(reason)


def _scan(path: Path, *, hash_stored: bool = True, hash_tar: bool = True) -> _Scan:
    """One pass over a layer blob: both digests, both sizes, the tar structure validated."""
    layer = os.fsdecode(path)
    with _open_stream(path, hash_stored=hash_stored, hash_tar=hash_tar) as (comp, stored, tar):
        for _ in _tar_members(layer, tar):
            pass
        tar.drain()  # the zero padding after the end-of-archive blocks, and the trailers
        stored.drain()  # anything after the compressed stream
        digest = stored.digester.digest() if stored.digester is not None else ""
        diff_id = tar.digester.digest() if tar.digester is not None else ""
        return _Scan(comp, digest, diff_id, stored.count, tar.count)


# --------------------------------------------------------------------------------------------
# Writing


def _decode(name: bytes) -> str:
    """A file name as tarfile (encoding utf-8, errors surrogateescape) encodes it back."""
    return name.decode("utf-8", "surrogateescape")


def _walk(root: bytes) -> Iterator[tuple[bytes, os.DirEntry[bytes]]]:
    """Depth-first, each directory followed by its contents, names sorted by bytes."""

    def listdir(directory: bytes, prefix: bytes) -> Iterator[tuple[bytes, os.DirEntry[bytes]]]:
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise _os_error(directory, "cannot list directory", e) from e
        return iter([(prefix + e.name, e) for e in entries])

    stack = [listdir(root, b"")]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        yield item
        rel, entry = item
        if entry.is_dir(follow_symlinks=False):
            stack.append(listdir(entry.path, rel + b"/"))


class _Writer:
    """Turns the walk of one source tree into TarInfos and adds them to a TarFile."""

    def __init__(self, tar: tarfile.TarFile, *, source_date_epoch: int | None, owner: str):
        self._tar = tar
        self._sde = source_date_epoch
        self._keep_owner = owner == "keep"
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}
        self._links: dict[tuple[int, int], str] = {}

    def _uname(self, uid: int) -> str:
        name = self._users.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = ""
            self._users[uid] = name
        return name

    def _gname(self, gid: int) -> str:
        name = self._groups.get(gid)
        if name is None:
            try:
                name = grp.getgrgid(gid).gr_name
            except KeyError:
                name = ""
            self._groups[gid] = name
        return name

    @staticmethod
    def _xattrs(full: bytes) -> dict[str, str]:
        try:
            names = os.listxattr(full, follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return {}
            raise _os_error(full, "cannot list xattrs", e) from e
        records = {}
        for name in sorted(names, key=os.fsencode):
            if name in _XATTR_EXCLUDED:
                continue
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise UnsupportedEntryError(
                    f"xattr name {os.fsencode(name)!r} is not UTF-8 (PAX keywords must be)",
                    os.fsdecode(full),
                ) from None
            try:
                value = os.getxattr(full, name, follow_symlinks=False)
            except OSError as e:
                if e.errno == errno.ENODATA:
                    continue  # removed since listxattr
                raise _os_error(full, f"cannot read xattr {name}", e) from e
            records[_XATTR_PREFIX + name] = value.decode("utf-8", "surrogateescape")
        return records

    def _tarinfo(
        self, rel: bytes, full: bytes, st: os.stat_result, type_: bytes
    ) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(_decode(rel))  # tarfile appends the '/' of a directory
        ti.type = type_
        ti.mode = stat.S_IMODE(st.st_mode)
        if self._keep_owner:
            ti.uid, ti.gid = st.st_uid, st.st_gid
            ti.uname, ti.gname = self._uname(st.st_uid), self._gname(st.st_gid)
        else:
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
        ti.size = 0
        mtime = st.st_mtime_ns // 1_000_000_000  # floor, also before 1970
        ti.mtime = mtime if self._sde is None else min(mtime, self._sde)
        ti.linkname = ""
        ti.devmajor = ti.devminor = 0
        ti.pax_headers = self._xattrs(full)
        return ti

    def add(self, rel: bytes, entry: os.DirEntry[bytes]) -> None:
        full = entry.path
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError as e:
            raise _os_error(full, "cannot stat", e) from e
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFREG:
            self._add_file(rel, full, st)
            return
        if fmt == stat.S_IFDIR:
            ti = self._tarinfo(rel, full, st, tarfile.DIRTYPE)
        elif fmt == stat.S_IFLNK:
            try:
                target = os.readlink(full)
            except OSError as e:
                raise _os_error(full, "cannot read symlink", e) from e
            ti = self._tarinfo(rel, full, st, tarfile.SYMTYPE)
            ti.linkname = _decode(target)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            ti = self._tarinfo(rel, full, st, tarfile.CHRTYPE)
            if fmt == stat.S_IFBLK:
                ti.type = tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif fmt == stat.S_IFIFO:
            ti = self._tarinfo(rel, full, st, tarfile.FIFOTYPE)
        elif fmt == stat.S_IFSOCK:
            warnings.warn(
                f"{os.fsdecode(full)}: socket skipped (a tar layer cannot carry sockets)",
                LayerWarning,
                stacklevel=4,  # the caller of Layer.from_dir
            )
            return
        else:
            raise UnsupportedEntryError(f"unsupported file type {fmt:#o}", os.fsdecode(full))
        self._tar.addfile(ti)

    def _add_file(self, rel: bytes, full: bytes, st: os.stat_result) -> None:
        name = os.fsdecode(full)
        if st.st_nlink > 1:
            first = self._links.get((st.st_dev, st.st_ino))
            if first is not None:
                ti = self._tarinfo(rel, full, st, tarfile.LNKTYPE)
                ti.linkname = first
                self._tar.addfile(ti)
                return
            self._links[(st.st_dev, st.st_ino)] = _decode(rel)
        try:
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOENT):
                raise SourceChangedError("replaced or removed after the walk", name) from e
            raise _os_error(full, "cannot open", e) from e
        with open(fd, "rb") as f:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                raise SourceChangedError("replaced after the walk", name)
            if now.st_size != st.st_size:
                raise SourceChangedError(
                    f"size changed from {st.st_size} to {now.st_size} bytes", name
                )
            ti = self._tarinfo(rel, full, st, tarfile.REGTYPE)
            ti.size = st.st_size
            try:
                self._tar.addfile(ti, f)
            except LayerError:
                raise
            except OSError as e:
                if e.errno is None:  # tarfile's "unexpected end of data"
                    raise SourceChangedError(
                        f"file shrank below its size of {st.st_size} bytes while being read", name
                    ) from e
                raise _os_error(full, "cannot read", e) from e


# --------------------------------------------------------------------------------------------
# Layer


@dataclass(frozen=True)
class Layer:
    """A layer blob on disk and its identities (the pure-Python twin of ``layercore.Layer``).

    ``digest`` is the sha256 of the blob as stored, ``diff_id`` the sha256 of the uncompressed
    tar, ``size`` the blob's bytes.
    """

    path: Path
    media_type: str
    digest: str
    diff_id: str
    size: int
    #: Bytes of the uncompressed tar; None when opened with trusted digests (nothing was read).
    uncompressed_size: int | None
    compression: str | None

    @classmethod
    def _of(cls, path: StrPath, scan: _Scan) -> Layer:
        return cls(
            path=Path(path),
            media_type=MEDIA_TYPES[scan.compression],
            digest=scan.digest,
            diff_id=scan.diff_id,
            size=scan.size,
            uncompressed_size=scan.uncompressed_size,
            compression=scan.compression,
        )

    @classmethod
    def from_dir(
        cls,
        src: StrPath,
        out: StrPath,
        *,
        compression: str | None = "gzip",
        level: int | None = None,
        source_date_epoch: int | None = None,
        owner: str = "root",
        threads: int | None = None,
    ) -> Layer:
        """Writes the tree under ``src`` as a layer blob at ``out`` (atomically) and describes it.

        Same options and same uncompressed tar as ``layercore.Layer.from_dir``. ``threads`` is
        checked and otherwise ignored: this twin is single-threaded. ``level`` is ignored without
        compression; gzip levels are zlib's (0-9).
        """
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        if compression is not None and compression not in _DEFAULT_LEVEL:
            raise ValueError(f"unknown compression {compression!r}: use 'gzip', 'zstd' or None")
        if compression is None:
            level = None
        elif level is None:
            level = _DEFAULT_LEVEL[compression]
        else:
            lo, hi = _LEVEL_RANGE[compression]
            if isinstance(level, bool) or not isinstance(level, int) or not lo <= level <= hi:
                raise ValueError(f"{compression} level must be an int in {lo}..{hi}: {level!r}")
        if owner not in _OWNERS:
            raise ValueError(f"owner must be 'root' or 'keep': {owner!r}")
        if source_date_epoch is not None and (
            isinstance(source_date_epoch, bool) or not isinstance(source_date_epoch, int)
        ):
            raise ValueError(f"source_date_epoch must be an int: {source_date_epoch!r}")
        if compression == "zstd":
            _zstandard()  # fail before touching the file system

        src_b = os.fsencode(src)
        try:
            src_st = os.stat(src_b)
        except OSError as e:
            raise _os_error(src, "cannot stat", e) from e
        if not stat.S_ISDIR(src_st.st_mode):
            raise UnsupportedEntryError("source is not a directory", os.fsdecode(src))

        out_abs = os.path.abspath(os.fspath(out))
        out_dir = os.path.dirname(out_abs)
        try:
            fd, tmp = tempfile.mkstemp(prefix=".layercore-", suffix=".tmp", dir=out_dir)
        except OSError as e:
            raise _os_error(out_dir, "cannot create a file in", e) from e
        try:
            with open(fd, "wb") as f:
                tmp_st = os.fstat(fd)
                scan = _write(
                    src_b,
                    f,
                    out=out_abs,
                    skip=(tmp_st.st_dev, tmp_st.st_ino),
                    compression=compression,
                    level=level,
                    source_date_epoch=source_date_epoch,
                    owner=owner,
                )
                os.fchmod(fd, 0o644)  # not mkstemp's 0600: a blob is for sharing
            try:
                os.replace(tmp, out_abs)
            except OSError as e:
                raise _os_error(out_abs, "cannot rename the finished layer into place", e) from e
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return cls._of(out, scan)

    @classmethod
    def open(cls, path: StrPath, *, digest: str | None = None, diff_id: str | None = None) -> Layer:
        """Describes an existing blob (tar, gzip or zstd, detected by magic).

        Unless both ``digest`` and ``diff_id`` are given, reads it once to compute them (a given
        one must then agree) and checks the tar structure on the way.
        """
        if digest is not None:
            _check_digest(digest, "digest")
        if diff_id is not None:
            _check_digest(diff_id, "diff_id")
        layer = os.fsdecode(path)
        if digest is not None and diff_id is not None:
            try:
                with open(path, "rb") as f:
                    compression = _detect(f)
                    size = os.fstat(f.fileno()).st_size
            except OSError as e:
                raise _os_error(layer, "cannot open", e) from e
            return cls(
                path=Path(path),
                media_type=MEDIA_TYPES[compression],
                digest=digest,
                diff_id=diff_id,
                size=size,
                uncompressed_size=None,
                compression=compression,
            )
        scan = _scan(Path(path))
        for what, given, actual in (
            ("digest", digest, scan.digest),
            ("diff_id", diff_id, scan.diff_id),
        ):
            if given is not None and given != actual:
                raise DigestMismatchError(
                    f"{what} mismatch: expected {given}, got {actual}",
                    layer,
                    what=what,
                    expected=given,
                    actual=actual,
                )
        return cls._of(path, scan)

    def entries(self) -> Iterator[Entry]:
        """The entries of the layer, in archive order, streaming."""
        layer = os.fsdecode(self.path)
        with _open_stream(self.path, hash_stored=False, hash_tar=False) as (_, _stored, tar):
            for ti in _tar_members(layer, tar):
                entry = _entry(layer, ti)
                if entry is not None:
                    yield entry

    def apply(self, dest: StrPath) -> list[str]:
        """Streams this layer onto the directory ``dest`` (see :func:`apply_layer`)."""
        return apply_layer(self, dest)

    @classmethod
    def from_diff(
        cls,
        lower: StrPath,
        upper: StrPath,
        out: StrPath,
        *,
        compression: str | None = "gzip",
        level: int | None = None,
        source_date_epoch: int | None = None,
        owner: str = "root",
        compare: str = "metadata",
    ) -> Layer:
        """Writes the changeset that turns directory ``lower`` into ``upper`` as a layer at
        ``out``, with the same uncompressed tar as ``layercore.Layer.from_diff`` (see
        :func:`layer_from_diff`)."""
        return layer_from_diff(
            lower,
            upper,
            out,
            compression=compression,
            level=level,
            source_date_epoch=source_date_epoch,
            owner=owner,
            compare=compare,
        )

    def verify(self) -> None:
        """Re-reads the blob; DigestMismatchError if it no longer matches its digests."""
        layer = os.fsdecode(self.path)
        try:
            scan = _scan(self.path)
        except CorruptLayerError as e:
            # A changed byte usually breaks the compressed stream first; the digest is the
            # primary finding, so report it when it differs.
            actual = sha256_file(self.path)
            if actual != self.digest:
                raise DigestMismatchError(
                    f"digest mismatch: expected {self.digest}, got {actual}",
                    layer,
                    what="digest",
                    expected=self.digest,
                    actual=actual,
                ) from e
            raise
        for what, expected, actual in (
            ("digest", self.digest, scan.digest),
            ("diff_id", self.diff_id, scan.diff_id),
        ):
            if expected != actual:
                raise DigestMismatchError(
                    f"{what} mismatch: expected {expected}, got {actual}",
                    layer,
                    what=what,
                    expected=expected,
                    actual=actual,
                )


def _write(
    src: bytes,
    f: IO[bytes],
    *,
    out: str,
    skip: tuple[int, int],
    compression: str | None,
    level: int | None,
    source_date_epoch: int | None,
    owner: str,
) -> _Scan:
    """walk -> tarfile -> [hash diff_id] -> compressor -> hash digest -> f, in one pass."""

    def write_failed(e: OSError) -> None:
        raise LayerIOError(f"cannot write: {e.strerror or e}", out) from e

    stored = _HashingWriter(f, Digester(), write_failed)
    compressor: gzip.GzipFile | Any = None
    if compression is None:
        tar_sink = stored  # uncompressed: digest == diff_id, hash once
    else:
        if compression == "gzip":
            compressor = gzip.GzipFile(
                filename="", mode="wb", compresslevel=cast(int, level), fileobj=stored, mtime=0
            )
        else:
            cctx = _zstandard().ZstdCompressor(level=level, write_checksum=True)
            compressor = cctx.stream_writer(stored, closefd=False)
        tar_sink = _HashingWriter(compressor, Digester(), write_failed)
    try:
        tar = tarfile.TarFile(
            fileobj=tar_sink,
            mode="w",
            format=tarfile.PAX_FORMAT,
            encoding="utf-8",
            errors="surrogateescape",
            copybufsize=_CHUNK,
        )
        with tar:
            writer = _Writer(tar, source_date_epoch=source_date_epoch, owner=owner)
            for rel, entry in _walk(src):
                if entry.inode() == skip[1]:
                    with contextlib.suppress(OSError):
                        st = entry.stat(follow_symlinks=False)
                        if (st.st_dev, st.st_ino) == skip:
                            continue  # our own temporary file, when out is inside src
                writer.add(rel, entry)
        if compressor is not None:
            compressor.close()  # gzip trailer / zstd frame end
            compressor = None
    finally:
        if compressor is not None:  # failing: release it, the file is about to be removed
            with contextlib.suppress(Exception):
                compressor.close()
    diff_id = tar_sink.digester.digest()
    return _Scan(compression, stored.digester.digest(), diff_id, stored.count, tar_sink.count)


# --------------------------------------------------------------------------------------------
# Changesets: the merged view, flatten, apply and diff
#
# The pure-Python twin of overlay.rs / flatten.rs / apply.rs / diff.rs (docs/ARCHITECTURE.md,
# "The merged view", "Flatten and squash", "Applying and extracting", "Changesets from trees").
# Plain dicts keyed by path, one streaming pass over each blob, tarfile to write. For the same
# input the uncompressed tars that flatten and from_diff write are byte-identical to the Rust
# engine's.

_IMPLIED_DIR_MODE = 0o755
_MAX_SYMLINKS = 40
_MAX_HARDLINK_HOPS = 64
_TYPE_BY_KIND = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _walk_key(path: str) -> tuple[bytes, ...]:
    """Walk order (depth first, a directory before its contents, names by bytes) as a sort key."""
    return tuple(_encode(part) for part in path.split("/"))


def _encode(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _clean(path: StrPath) -> str:
    """A path as the merged view takes it: no leading ``/``, no ``.``/empty components."""
    text = os.fsdecode(path)
    return "/".join(p for p in text.split("/") if p not in ("", "."))


def _strict_ancestors(path: str) -> Iterator[str]:
    """The ancestors of ``path``, the root (``''``) included; the root has none."""
    if not path:
        return
    yield ""
    parts = path.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def _implied_entry(path: str, mtime: int = 0) -> Entry:
    return Entry(path, "dir", _IMPLIED_DIR_MODE, 0, 0, "", "", 0, mtime, None, 0, 0, {}, 0)


def _marker_info(name: str) -> tarfile.TarInfo:
    """A whiteout or opaque marker: an empty regular file, mode 0, 0:0, mtime 0, no names."""
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.REGTYPE
    ti.mode = ti.uid = ti.gid = ti.size = ti.mtime = 0
    ti.uname = ti.gname = ti.linkname = ""
    ti.devmajor = ti.devminor = 0
    return ti


def _entry_info(e: Entry, name: str, mtime: int) -> tarfile.TarInfo:
    """The header of entry ``e`` (file, dir, symlink, device, FIFO) under ``name``."""
    ti = tarfile.TarInfo(name)  # tarfile appends the '/' of a directory
    ti.type = _TYPE_BY_KIND[e.kind]
    ti.mode = e.mode
    ti.uid, ti.gid = e.uid, e.gid
    ti.uname, ti.gname = e.uname, e.gname
    ti.size = e.size if e.kind == "file" else 0
    ti.mtime = mtime
    ti.linkname = (e.linkname or "") if e.kind == "symlink" else ""
    devices = e.kind in ("char", "block")
    ti.devmajor = e.devmajor if devices else 0
    ti.devminor = e.devminor if devices else 0
    ti.pax_headers = {
        _XATTR_PREFIX + k: v.decode("utf-8", "surrogateescape") for k, v in e.xattrs.items()
    }
    return ti


def _check_options(compression: str | None, level: int | None) -> int | None:
    if compression is not None and compression not in _DEFAULT_LEVEL:
        raise ValueError(f"unknown compression {compression!r}: use 'gzip', 'zstd' or None")
    if compression is None:
        return None
    if level is None:
        return _DEFAULT_LEVEL[compression]
    lo, hi = _LEVEL_RANGE[compression]
    if isinstance(level, bool) or not isinstance(level, int) or not lo <= level <= hi:
        raise ValueError(f"{compression} level must be an int in {lo}..{hi}: {level!r}")
    if compression == "zstd":
        _zstandard()
    return level


def _write_layer(
    out: StrPath,
    compression: str | None,
    level: int | None,
    fill: Callable[[tarfile.TarFile], None],
) -> Layer:
    """Writes a blob at ``out`` (temp file beside it, renamed into place) whose tar ``fill``
    writes: tarfile -> [hash diff_id] -> compressor -> hash digest -> file, in one pass."""
    level = _check_options(compression, level)
    out_abs = os.path.abspath(os.fspath(out))
    out_dir = os.path.dirname(out_abs)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".layercore-", suffix=".tmp", dir=out_dir)
    except OSError as e:
        raise _os_error(out_dir, "cannot create a file in", e) from e

    def write_failed(e: OSError) -> None:
        raise LayerIOError(f"cannot write: {e.strerror or e}", out_abs) from e

    try:
        with open(fd, "wb") as f:
            stored = _HashingWriter(f, Digester(), write_failed)
            compressor: Any = None
            tar_sink = stored
            if compression == "gzip":
                compressor = gzip.GzipFile(
                    filename="", mode="wb", compresslevel=cast(int, level), fileobj=stored, mtime=0
                )
            elif compression == "zstd":
                cctx = _zstandard().ZstdCompressor(level=level, write_checksum=True)
                compressor = cctx.stream_writer(stored, closefd=False)
            if compressor is not None:
                tar_sink = _HashingWriter(compressor, Digester(), write_failed)
            try:
                with tarfile.TarFile(
                    fileobj=tar_sink,
                    mode="w",
                    format=tarfile.PAX_FORMAT,
                    encoding="utf-8",
                    errors="surrogateescape",
                    copybufsize=_CHUNK,
                ) as tar:
                    fill(tar)
                if compressor is not None:
                    compressor.close()
                    compressor = None
            finally:
                if compressor is not None:
                    with contextlib.suppress(Exception):
                        compressor.close()
            os.fchmod(fd, 0o644)
        scan = _Scan(
            compression,
            stored.digester.digest(),
            tar_sink.digester.digest(),
            stored.count,
            tar_sink.count,
        )
        try:
            os.replace(tmp, out_abs)
        except OSError as e:
            raise _os_error(out_abs, "cannot rename the finished layer into place", e) from e
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Layer._of(out, scan)


def _layer_of(layer: Layer | StrPath) -> Layer:
    return layer if isinstance(layer, Layer) else Layer.open(layer)


@contextlib.contextmanager
def _stream_tar(path: Path) -> Iterator[tarfile.TarFile]:
    """A streaming (``r|``) TarFile over a blob, decompressed as it is read."""
    with (
        _open_stream(path, hash_stored=False, hash_tar=False) as (_, _stored, tar),
        tarfile.open(fileobj=tar, mode="r|", encoding="utf-8", errors="surrogateescape") as tf,
    ):
        yield tf


@dataclass
class _Scanned:
    """One layer read once: its entries in archive order (markers included) and, for a
    compressed blob, its file bodies copied (decompressed) into an anonymous spool file so that
    they can be read again at random without decompressing the blob twice."""

    layer: Layer
    entries: list[Entry]
    spool: IO[bytes] | None
    #: For each entry, where its body starts in the spool (compressed) or the blob (plain).
    data_at: list[int]

    def open_body(self) -> IO[bytes]:
        if self.spool is not None:
            return self.spool
        try:
            return open(self.layer.path, "rb")
        except OSError as e:
            raise _os_error(self.layer.path, "cannot open", e) from e


def _scan_layer(layer: Layer) -> _Scanned:
    name = os.fsdecode(layer.path)
    # Anonymous, lives as long as the Stack (closed with it when collected).
    spool = tempfile.TemporaryFile() if layer.compression is not None else None  # noqa: SIM115
    entries: list[Entry] = []
    data_at: list[int] = []
    with _read_errors(name), _stream_tar(layer.path) as tf:
        for ti in tf:
            e = _entry(name, ti)
            if e is None:
                continue
            e = _renormalized(e)
            if not e.path:
                continue
            if ".." in e.path.split("/"):
                raise UnsupportedEntryError(f"entry {e.path!r}: '..' components", name)
            at = e.offset
            if spool is not None and e.kind == "file" and e.size > 0:
                at = spool.tell()
                body = tf.extractfile(ti)
                assert body is not None
                shutil.copyfileobj(body, spool, _CHUNK)
            entries.append(e)
            data_at.append(at)
    return _Scanned(layer, entries, spool, data_at)


def _renormalized(e: Entry) -> Entry:
    """``e`` with the path (and hardlink target) normalised as the Rust reader does: also
    inner ``.`` components and ``//`` runs, which :func:`_normalize` leaves alone."""
    path = _clean(e.path)
    link = _clean(e.linkname) if e.kind == "hardlink" and e.linkname is not None else e.linkname
    if path == e.path and link == e.linkname:
        return e
    return dataclasses.replace(e, path=path, linkname=link)


def _copy_body(source: IO[bytes], at: int, size: int, out: IO[bytes]) -> None:
    source.seek(at)
    left = size
    while left:
        chunk = source.read(min(left, _CHUNK))
        if not chunk:
            raise TruncatedLayerError("the stream ends inside a body", getattr(source, "name", ""))
        out.write(chunk)
        left -= len(chunk)


class _ViewLayer:
    """One layer as the merged view sees it (index.rs): the last entry of each path wins; an
    entry below a non-directory of the layer or with a ``.wh.`` component is shadowed; missing
    parents of visible entries, and of whiteouts and opaque markers, are implied directories
    (as flatten writes them)."""

    def __init__(self, scanned: _Scanned) -> None:
        self.scanned = scanned
        self.last: dict[str, int] = {}
        self.whiteouts: set[str] = set()
        self.opaque: set[str] = set()
        marker_parents: set[str] = set()
        for i, e in enumerate(scanned.entries):
            parent, _, base = e.path.rpartition("/")
            if e.kind == "whiteout":
                self.whiteouts.add(_join(parent, base[len(_WHITEOUT_PREFIX) :]))
                marker_parents.add(parent)
            elif e.kind == "opaque":
                self.opaque.add(parent)
                marker_parents.add(parent)
            else:
                self.last[e.path] = i
        #: Visible path -> entry index, or -1 for an implied directory.
        self.visible: dict[str, int] = {}
        for path, i in self.last.items():
            if self._imply_parents(path, _parent(path)):
                self.visible[path] = i
        for parent in marker_parents:
            if parent:
                self._imply_parents(parent, parent)

    def _imply_parents(self, named: str, ancestor: str) -> bool:
        """Implies the missing directories from ``ancestor`` up, unless ``named`` has a
        ``.wh.`` component or one of them is a non-directory of the layer; whether it did."""
        if any(p.startswith(_WHITEOUT_PREFIX) for p in named.split("/")):
            return False
        entries = self.scanned.entries
        missing = []
        while ancestor:
            j = self.last.get(ancestor)
            if j is None:
                missing.append(ancestor)
            elif entries[j].kind != "dir":
                return False
            ancestor = _parent(ancestor)
        for d in missing:
            self.visible.setdefault(d, -1)
        return True

    def entry(self, i: int, path: str) -> Entry:
        return self.scanned.entries[i] if i >= 0 else _implied_entry(path)


class Stack:
    """A stack of layer blobs, bottom first, seen as one merged tree (the twin of
    ``layercore.Stack``): ``lookup``, ``listdir``, ``walk``, ``read``, ``flatten``, ``extract``.

    Each blob is read once when the stack is made (bodies of compressed blobs are spooled to an
    anonymous temp file for :meth:`read` and :meth:`flatten`); the merged view is built bottom-up
    with the OCI rules into a dict keyed by path plus a children map. :meth:`lookup` returns the
    module's :class:`Entry` (which has no ``layer`` field: adding one would change what
    :meth:`Layer.entries` yields); :meth:`lookup_with_layer` also gives the providing layer.
    """

    def __init__(self, layers: Sequence[Layer | StrPath]) -> None:
        self._layers = tuple(_layer_of(layer) for layer in layers)
        self._scanned = [_scan_layer(layer) for layer in self._layers]
        self._view = [_ViewLayer(s) for s in self._scanned]
        #: path -> (layer, entry index or -1 for an implied directory)
        self._state: dict[str, tuple[int, int]] = {}
        self._kids: dict[str, set[str]] = {}
        self._merge()

    @property
    def layers(self) -> tuple[Layer, ...]:
        return self._layers

    def __len__(self) -> int:
        return len(self._layers)

    def close(self) -> None:
        """Releases the spool files of compressed layers (reads need them afterwards)."""
        for scanned in self._scanned:
            if scanned.spool is not None:
                scanned.spool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the merged view --------------------------------------------------------------------

    def _put(self, path: str, loc: tuple[int, int]) -> None:
        if path not in self._state:
            self._kids.setdefault(_parent(path), set()).add(path)
        self._state[path] = loc

    def _remove_below(self, path: str, inclusive: bool) -> None:
        if not path:
            self._state.clear()
            self._kids.clear()
            return
        pending = list(self._kids.pop(path, ()))
        while pending:
            p = pending.pop()
            del self._state[p]
            pending.extend(self._kids.pop(p, ()))
        if inclusive and path in self._state:
            del self._state[path]
            self._kids[_parent(path)].discard(path)

    def _merge(self) -> None:
        for k, layer in enumerate(self._view):
            if k > 0:
                for target in layer.whiteouts:
                    self._remove_below(target, True)
                for d in layer.opaque:
                    self._remove_below(d, False)
            for path in sorted(layer.visible, key=_walk_key):  # parents first
                i = layer.visible[path]
                kind = "dir" if i < 0 else layer.scanned.entries[i].kind
                lower = self._state.get(path)
                if lower is None:
                    self._put(path, (k, i))
                elif kind == "dir" and self._entry(lower, path).kind == "dir":
                    if i >= 0:
                        self._state[path] = (k, i)
                else:
                    self._state[path] = (k, i)
                    self._remove_below(path, False)

    def _entry(self, loc: tuple[int, int], path: str) -> Entry:
        return self._view[loc[0]].entry(loc[1], path)

    def lookup_with_layer(self, path: StrPath) -> tuple[int, Entry] | None:
        """``(layer, entry)`` visible at ``path`` (bottom layer = 0), or None."""
        p = _clean(path)
        loc = self._state.get(p)
        return None if loc is None else (loc[0], self._entry(loc, p))

    def lookup(self, path: StrPath) -> Entry | None:
        """The entry visible at ``path``, or None (symlinks are not followed)."""
        found = self.lookup_with_layer(path)
        return None if found is None else found[1]

    def listdir(self, path: StrPath = "") -> list[str]:
        """Names in the directory ``path`` (``''`` is the root), sorted by bytes."""
        p = _clean(path)
        if p:
            loc = self._state.get(p)
            if loc is None:
                raise SourceNotFoundError("nothing is visible there", p)
            if self._entry(loc, p).kind != "dir":
                raise UnsupportedEntryError("is not a directory", p)
        names = [c.rpartition("/")[2] for c in self._kids.get(p, ())]
        return sorted(names, key=_encode)

    def walk(self) -> Iterator[Entry]:
        """Every visible entry in walk order."""
        for _, e in self.walk_with_layers():
            yield e

    def walk_with_layers(self) -> Iterator[tuple[int, Entry]]:
        """``(layer, entry)`` for every visible entry in walk order."""
        for path in sorted(self._state, key=_walk_key):
            loc = self._state[path]
            yield loc[0], self._entry(loc, path)

    def _follow(self, path: str) -> str:
        """Resolves ``path`` as ``open`` in a chroot at the stack's root would."""
        pending = [p for p in reversed(path.split("/"))]
        current = ""
        found: str | None = None
        links = 0
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                current = _parent(current)
                found = current or None
                continue
            nxt = _join(current, part)
            loc = self._state.get(nxt)
            if loc is None:
                raise SourceNotFoundError("nothing is visible there", path)
            e = self._entry(loc, nxt)
            if e.kind == "symlink":
                links += 1
                if links > _MAX_SYMLINKS:
                    raise UnsupportedEntryError("too many levels of symbolic links", path)
                target = e.linkname or ""
                if target.startswith("/"):
                    current, found = "", None
                pending.extend(reversed(target.split("/")))
                continue
            if e.kind != "dir" and any(p not in ("", ".") for p in pending):
                raise UnsupportedEntryError(f"{nxt!r} is not a directory", path)
            current = found = nxt
        if found is None:
            raise UnsupportedEntryError("is the root directory, not a regular file", path)
        return found

    def _body(self, path: str) -> tuple[_Scanned, int]:
        """The layer and entry index whose body ``path`` reads."""
        p = self._follow(_clean(path))
        k, i = self._state[p]
        scanned = self._scanned[k]
        layer = self._view[k]
        entries = scanned.entries
        if i < 0:
            raise UnsupportedEntryError("is a directory, not a regular file", p)
        for _ in range(_MAX_HARDLINK_HOPS):
            e = entries[i]
            if e.kind == "file":
                return scanned, i
            if e.kind != "hardlink":
                raise UnsupportedEntryError(f"is a {e.kind}, not a regular file", p)
            target = e.linkname or ""
            last = layer.last.get(target)
            if last is None:
                raise CorruptLayerError(
                    f"hardlink {e.path!r} points to {target!r}, which the layer lacks",
                    os.fsdecode(scanned.layer.path),
                )
            if last >= i:  # the last entry at target before the link, as extraction finds it
                last = next((j for j in range(i - 1, -1, -1) if entries[j].path == target), last)
            i = last
        raise CorruptLayerError(f"{p!r} is part of a loop of hardlinks", str(scanned.layer.path))

    def read(self, path: StrPath) -> bytes:
        """The body of the regular file at ``path`` (symlinks followed inside the stack)."""
        scanned, i = self._body(os.fsdecode(path))
        f = scanned.open_body()
        try:
            f.seek(scanned.data_at[i])
            return f.read(scanned.entries[i].size)
        finally:
            if f is not scanned.spool:
                f.close()

    # -- flatten ----------------------------------------------------------------------------

    def flatten(
        self,
        out: StrPath,
        *,
        compression: str | None = "gzip",
        level: int | None = None,
        source_date_epoch: int | None = None,
    ) -> Layer:
        """Writes the merged view as one layer at ``out``, in canonical order (flatten.rs)."""
        flat = [_FlatLayer(s) for s in self._scanned]
        outs = _flatten_plan(flat)

        def fill(tar: tarfile.TarFile) -> None:
            _flatten_write(tar, flat, outs, source_date_epoch)

        return _write_layer(out, compression, level, fill)

    # -- extract ----------------------------------------------------------------------------

    def extract(self, dest: StrPath) -> list[str]:
        """Applies every layer, bottom first, into ``dest`` (missing or empty); the warnings."""
        d = os.fsencode(dest)
        try:
            os.mkdir(d, 0o755)
        except FileExistsError:
            if os.listdir(d):
                raise UnsupportedEntryError(
                    "the destination must be empty", os.fsdecode(d)
                ) from None
        warnings_: list[str] = []
        for layer in self._layers:
            warnings_ += apply_layer(layer, d)
        return warnings_


class _FlatLayer:
    """One layer as flatten.rs indexes it: stricter than the view (no ``..``, nothing below a
    ``.wh.`` name or a non-directory of the layer, hardlinks only to earlier entries), every
    directory an entry lies in belongs to the layer, hardlinks resolved to their body entry."""

    def __init__(self, scanned: _Scanned) -> None:
        name = os.fsdecode(scanned.layer.path)
        self.scanned = scanned
        self.index: list[int] = []  # position in scanned.entries
        self.body: list[int] = []
        self.linked: list[bool] = []
        self.last: dict[str, int] = {}
        self.whiteouts: list[str] = []
        self.opaques: list[str] = []
        dirs: set[str] = set()
        for pos, e in enumerate(scanned.entries):
            parts = e.path.split("/")
            for n, part in enumerate(parts):
                if part.startswith(_WHITEOUT_PREFIX):
                    if n < len(parts) - 1:
                        raise UnsupportedEntryError(
                            f"entry {e.path!r}: a name below a '.wh.' name", name
                        )
                    if e.kind not in ("whiteout", "opaque"):
                        raise UnsupportedEntryError(
                            f"entry {e.path!r}: a {e.kind} named like a whiteout", name
                        )
            parent = _parent(e.path)
            while parent and parent not in dirs:
                dirs.add(parent)
                parent = _parent(parent)
            dirname, _, base = e.path.rpartition("/")
            if e.kind == "opaque":
                self.opaques.append(dirname)
            elif e.kind == "whiteout":
                self.whiteouts.append(_join(dirname, base[len(_WHITEOUT_PREFIX) :]))
            else:
                idx = len(self.index)
                body = idx
                if e.kind == "hardlink":
                    target = e.linkname or ""
                    t = self.last.get(target)
                    if t is None:
                        raise UnsupportedEntryError(
                            f"entry {e.path!r}: hardlink to {target!r}, not an earlier entry",
                            name,
                        )
                    body = self.body[t]
                    if self.entry(body).kind == "dir":
                        raise UnsupportedEntryError(
                            f"entry {e.path!r}: hardlink to the directory {target!r}", name
                        )
                    self.linked[body] = True
                self.last[e.path] = idx
                self.index.append(pos)
                self.body.append(body)
                self.linked.append(False)
        for d in dirs:
            i = self.last.get(d)
            if i is not None and self.entry(i).kind != "dir":
                raise UnsupportedEntryError(
                    f"entry {d!r}: a {self.entry(i).kind} that other entries lie below", name
                )
        self.implied = [d for d in dirs if d not in self.last]

    def entry(self, idx: int) -> Entry:
        return self.scanned.entries[self.index[idx]]


def _flatten_plan(flat: Sequence[_FlatLayer]) -> list[tuple[str, int, int]]:
    """Winners of the merged view, top-down, in canonical order: ``(path, layer, idx)``, with
    ``idx == -1`` for a directory that no layer describes."""
    winners: dict[str, tuple[int, int, bool]] = {}  # path -> (layer, idx, implied)
    deleted: set[str] = set()
    below: set[str] = set()

    def hidden(path: str) -> bool:
        return path in deleted or any(a in deleted or a in below for a in _strict_ancestors(path))

    for k in range(len(flat) - 1, -1, -1):
        layer = flat[k]
        for path, idx in layer.last.items():
            if hidden(path):
                continue
            e = layer.entry(idx)
            w = winners.get(path)
            if w is None:
                winners[path] = (k, idx, False)
            elif w[2]:
                if e.kind != "dir":
                    raise UnsupportedEntryError(
                        f"entries below {path!r} need it to be a directory, but this layer has "
                        f"no entry for it and a lower layer ({layer.scanned.layer.path}) has it "
                        f"as a {e.kind}: they would be written through it",
                        os.fsdecode(flat[w[0]].scanned.layer.path),
                    )
                winners[path] = (k, idx, False)
        for path in layer.implied:
            if not hidden(path):
                winners.setdefault(path, (k, -1, True))
        deleted.update(layer.whiteouts)
        below.update(layer.opaques)
        below.update(p for p, i in layer.last.items() if layer.entry(i).kind != "dir")
    return [
        (path, k, -1 if implied else idx)
        for path, (k, idx, implied) in sorted(winners.items(), key=lambda w: _walk_key(w[0]))
    ]


def _flatten_write(
    tar: tarfile.TarFile,
    flat: Sequence[_FlatLayer],
    outs: Sequence[tuple[str, int, int]],
    source_date_epoch: int | None,
) -> None:
    def clamp(mtime: int) -> int:
        return mtime if source_date_epoch is None else min(mtime, source_date_epoch)

    leaders: dict[tuple[int, int], str] = {}  # (layer, body) -> the name carrying the body
    sources: dict[int, IO[bytes]] = {}
    try:
        for path, k, idx in outs:
            if idx < 0:
                tar.addfile(_entry_info(_implied_entry(path), path, source_date_epoch or 0))
                continue
            layer = flat[k]
            body = layer.body[idx]
            e = layer.entry(body)
            if layer.linked[body] and e.kind == "file":
                leader = leaders.get((k, body))
                if leader is not None:
                    ti = _entry_info(e, path, clamp(e.mtime))
                    ti.type = tarfile.LNKTYPE
                    ti.size = 0
                    ti.linkname = leader
                    tar.addfile(ti)
                    continue
                leaders[(k, body)] = path
            ti = _entry_info(e, path, clamp(e.mtime))
            if e.kind == "file" and e.size > 0:
                scanned = layer.scanned
                src = sources.get(k)
                if src is None:
                    src = sources[k] = scanned.open_body()
                src.seek(scanned.data_at[layer.index[body]])
                tar.addfile(ti, src)
            else:
                tar.addfile(ti)
    finally:
        for k, src in sources.items():
            if src is not flat[k].scanned.spool:
                src.close()


# -- apply ----------------------------------------------------------------------------------


class _Applier:
    """Applies one layer onto ``dest`` (apply.rs's rules, with path-based calls: the twin checks
    each parent component with ``lstat`` instead of holding directory descriptors)."""

    def __init__(self, layer: Layer, dest: bytes) -> None:
        self.layer = layer
        self.name = os.fsdecode(layer.path)
        self.dest = dest
        self.written: set[str] = set()  # entries and the missing parents created for them
        #: written paths and their ancestors, and the directories of the layer's markers with
        #: theirs: what the layer's own whiteouts and opaque markers keep
        self.touched: set[str] = set()
        self.dirs: list[tuple[str, Entry]] = []
        self.saved_times: dict[str, tuple[int, int]] = {}  # unlisted dirs this layer changes
        self.implied: set[str] = set()  # lower dirs made the ones the layer implies
        self.warnings: list[str] = []

    def full(self, path: str) -> bytes:
        return self.dest + b"/" + _encode(path) if path else self.dest

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        warnings.warn(message, LayerWarning, stacklevel=4)

    def changing(self, directory: str) -> None:
        """Records the times of ``directory`` before this layer first changes its contents
        (unless the layer made it)."""
        if directory not in self.saved_times and directory not in self.written:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(self.full(directory))
                self.saved_times[directory] = (st.st_atime_ns, st.st_mtime_ns)

    def parents(self, path: str, *, marker: bool = False) -> bool:
        """Makes sure every parent of ``path`` is a real directory (created 0755 if missing);
        a symlink or other non-directory in the way is an error. For a whiteout or opaque
        marker, a non-directory the layer wrote (a skipped device: missing) instead gives
        False: the marker implies nothing below it."""
        current = ""
        for part in path.split("/")[:-1]:
            current = _join(current, part)
            full = self.full(current)
            try:
                st: os.stat_result | None = os.lstat(full)
            except FileNotFoundError:
                st = None
            if marker and current in self.written and (st is None or not stat.S_ISDIR(st.st_mode)):
                return False
            if st is None:
                self.changing(_parent(current))
                os.mkdir(full, 0o755)
                os.chmod(full, 0o755)
                self.written.add(current)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise UnsupportedEntryError(
                    f"entry {path!r}: its parent {current!r} is not a directory", self.name
                )
        return True

    def existing_dir(self, directory: str) -> bool:
        """Whether ``directory`` is a directory, reached through directories only."""
        current = ""
        for part in directory.split("/") if directory else []:
            current = _join(current, part)
            try:
                if not stat.S_ISDIR(os.lstat(self.full(current)).st_mode):
                    return False
            except FileNotFoundError:
                return False
        return True

    def remove(self, path: str) -> None:
        """Removes ``path`` (recursively) if it exists."""
        full = self.full(path)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            return
        self.changing(_parent(path))
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(full)
        else:
            os.unlink(full)

    def remove_except(self, path: str) -> None:
        """Removes ``path`` and everything below it except what this layer wrote. A lower
        directory kept only for what the layer put in it becomes the one the layer implies:
        0755, the extracting user's (root's, as root), no xattrs, its times not restored."""
        if path not in self.touched:
            self.remove(path)
            return
        full = self.full(path)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            return
        if path not in self.written:
            if os.geteuid() == 0:
                os.chown(full, 0, os.getegid(), follow_symlinks=False)
            self.xattrs(full, _implied_entry(path), exact=True)
            self.implied.add(path)
        for name in sorted(os.listdir(full)):
            self.remove_except(_join(path, os.fsdecode(name)))

    def hide(self, e: Entry, directory: str, name: str | None) -> None:
        """A whiteout of ``directory/name``, or the opaque marker of ``directory``. Its
        directory is the layer's, made like the parent of any entry; below a ``.wh.`` name it
        implies nothing and only an existing directory is acted on."""
        if name in (".", ".."):
            raise UnsupportedEntryError(
                f"whiteout {e.path!r} names {name!r}, which is not a file name", self.name
            )
        if any(p.startswith(_WHITEOUT_PREFIX) for p in directory.split("/")):
            if not self.existing_dir(directory):
                return
        elif self.parents(e.path, marker=True):
            self.touched.update([directory, *_strict_ancestors(directory)] if directory else [])
        else:
            return  # below a non-directory this layer wrote
        if name is not None:
            self.remove_except(_join(directory, name))
            return
        for child in sorted(os.listdir(self.full(directory))):
            self.remove_except(_join(directory, os.fsdecode(child)))

    def owner(self, full: bytes, e: Entry) -> bool:
        try:
            os.chown(full, e.uid, e.gid, follow_symlinks=False)
            return True
        except PermissionError as err:
            self.warn(f"{e.path}: owner not restored ({err.strerror}); the extracting user owns it")
            return False

    def xattrs(self, full: bytes, e: Entry, *, exact: bool) -> None:
        if exact:
            with contextlib.suppress(OSError):
                for key in os.listxattr(full, follow_symlinks=False):
                    if key not in e.xattrs and key not in _XATTR_EXCLUDED:
                        os.removexattr(full, key, follow_symlinks=False)
        for key, value in e.xattrs.items():
            try:
                os.setxattr(full, key, value, follow_symlinks=False)
            except OSError as err:
                self.warn(f"{e.path}: xattr {key} not set ({err.strerror})")

    def entry(self, e: Entry, tf: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        path = e.path
        for a in [path, *_strict_ancestors(path)]:
            self.touched.add(a)
        self.written.add(path)
        self.parents(path)
        full = self.full(path)
        try:
            st: os.stat_result | None = os.lstat(full)
        except FileNotFoundError:
            st = None
        if e.kind == "dir":
            if st is None or not stat.S_ISDIR(st.st_mode):
                self.remove(path)
                self.changing(_parent(path))
                os.mkdir(full, 0o700)
            self.owner(full, e)
            self.xattrs(full, e, exact=True)
            self.dirs.append((path, e))
            return
        if e.kind in ("char", "block"):
            self.warn(f"{path}: device node skipped (devices='skip')")
            return
        if e.kind == "hardlink":
            target = _normalize(e.linkname or "")
            tfull = self.full(target)
            if ".." in target.split("/") or not os.path.lexists(tfull) or os.path.isdir(tfull):
                raise UnsupportedEntryError(
                    f"hardlink {path!r} to {target!r}: no such file in the destination", self.name
                )
            self.remove(path)
            self.changing(_parent(path))
            os.link(tfull, full, follow_symlinks=False)
            return
        self.remove(path)
        self.changing(_parent(path))
        if e.kind == "symlink":
            os.symlink(_encode(e.linkname or ""), full)
            self.owner(full, e)
            self.xattrs(full, e, exact=False)
        elif e.kind == "fifo":
            os.mkfifo(full, 0o600)
            owned = self.owner(full, e)
            os.chmod(full, e.mode if owned else e.mode & ~0o6000)
            self.xattrs(full, e, exact=False)
        else:
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                with open(fd, "wb") as f:
                    body = tf.extractfile(ti)
                    if body is not None:
                        shutil.copyfileobj(body, f, _CHUNK)
                    owned = self.owner(full, e)
                    os.fchmod(f.fileno(), e.mode if owned else e.mode & ~0o6000)
                    self.xattrs(full, e, exact=False)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(full)
                raise
        os.utime(full, ns=(e.mtime * 10**9, e.mtime * 10**9), follow_symlinks=False)

    def finish(self) -> None:
        """Directory times back for unlisted ones (not those made implied: their mode becomes
        0755), then the listed ones, deepest first."""
        # Each is checked to still be a directory, reached through directories only: a later
        # entry of the layer may have replaced it (with a symlink, say).
        listed = {path for path, _ in self.dirs}
        for path, times in self.saved_times.items():
            if path not in listed and path not in self.implied and self.existing_dir(path):
                os.utime(self.full(path), ns=times, follow_symlinks=False)
        for path in self.implied - listed:
            if self.existing_dir(path):
                os.chmod(self.full(path), _IMPLIED_DIR_MODE)
        for path, e in sorted(self.dirs, key=lambda d: -d[0].count("/")):
            if self.existing_dir(path):
                full = self.full(path)
                os.chmod(full, e.mode)
                os.utime(full, ns=(e.mtime * 10**9, e.mtime * 10**9), follow_symlinks=False)

    def run(self) -> list[str]:
        with _read_errors(self.name), _stream_tar(self.layer.path) as tf:
            for ti in tf:
                e = _entry(self.name, ti)
                if e is None:
                    continue
                if ".." in e.path.split("/") or "\0" in e.path:
                    raise UnsupportedEntryError(f"entry {e.path!r}: '..' or NUL", self.name)
                directory, _, base = e.path.rpartition("/")
                if e.kind == "whiteout":
                    self.hide(e, directory, base[len(_WHITEOUT_PREFIX) :])
                elif e.kind == "opaque":
                    self.hide(e, directory, None)
                else:
                    self.entry(e, tf, ti)
        self.finish()
        return self.warnings


def apply_layer(layer: Layer | StrPath, dest: StrPath | bytes) -> list[str]:
    """Streams one layer onto the existing directory ``dest`` (the twin of
    ``layercore.Layer.apply``): whiteouts and opaque markers remove what lower layers put
    there (never this layer's own entries, in either archive order) and their directories are
    the layer's, made like the parents of any entry; directories merge, other entries replace.
    Devices are skipped and refused owners/xattrs warned about; returns the warnings."""
    return _Applier(_layer_of(layer), os.fsencode(dest)).run()


# -- diff -----------------------------------------------------------------------------------


@dataclass
class _Node:
    """One entry of a walked tree (diff.rs's Node)."""

    rel: bytes
    kind: str  # file, hardlink (a later name of a multiply-linked file), dir, symlink, ...
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    size: int
    mtime: int
    mtime_nsec: int
    linkname: bytes
    devmajor: int
    devminor: int
    xattrs: dict[str, str]
    key: tuple[int, int]
    full: bytes
    end: int = 0

    @property
    def regular(self) -> bool:
        return self.kind in ("file", "hardlink")

    @property
    def name(self) -> bytes:
        return self.rel.rpartition(b"/")[2]


class _Tree:
    """A tree walked in walk order, with subtree ends and hardlink groups."""

    def __init__(self, root: bytes, owner: str, skip: tuple[int, int] | None) -> None:
        writer = _Writer(cast(tarfile.TarFile, None), source_date_epoch=None, owner=owner)
        keep = owner == "keep"
        self.nodes: list[_Node] = []
        first: dict[tuple[int, int], bytes] = {}
        for rel, entry in _walk(root):
            full = entry.path
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as e:
                raise _os_error(full, "cannot stat", e) from e
            if skip is not None and (st.st_dev, st.st_ino) == skip:
                continue
            fmt = stat.S_IFMT(st.st_mode)
            key = (st.st_dev, st.st_ino)
            linkname = b""
            dev = (0, 0)
            size = 0
            if fmt == stat.S_IFREG:
                kind = "file"
                size = st.st_size
                if st.st_nlink > 1:
                    if key in first:
                        kind, linkname = "hardlink", first[key]
                    else:
                        first[key] = rel
            elif fmt == stat.S_IFDIR:
                kind = "dir"
            elif fmt == stat.S_IFLNK:
                kind, linkname = "symlink", os.readlink(full)
            elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
                kind = "char" if fmt == stat.S_IFCHR else "block"
                dev = (os.major(st.st_rdev), os.minor(st.st_rdev))
            elif fmt == stat.S_IFIFO:
                kind = "fifo"
            elif fmt == stat.S_IFSOCK:
                warnings.warn(
                    f"{os.fsdecode(full)}: socket skipped (a tar layer cannot carry sockets)",
                    LayerWarning,
                    stacklevel=4,
                )
                continue
            else:
                raise UnsupportedEntryError(f"unsupported file type {fmt:#o}", os.fsdecode(full))
            self.nodes.append(
                _Node(
                    rel=rel,
                    kind=kind,
                    mode=stat.S_IMODE(st.st_mode),
                    uid=st.st_uid if keep else 0,
                    gid=st.st_gid if keep else 0,
                    uname=writer._uname(st.st_uid) if keep else "",
                    gname=writer._gname(st.st_gid) if keep else "",
                    size=size,
                    mtime=st.st_mtime_ns // 1_000_000_000,
                    mtime_nsec=st.st_mtime_ns % 1_000_000_000,
                    linkname=linkname,
                    devmajor=dev[0],
                    devminor=dev[1],
                    xattrs=_Writer._xattrs(full),
                    key=key,
                    full=full,
                )
            )
        # Subtree ends from the depth of each path (the walk is a preorder).
        open_dirs: list[tuple[int, int]] = []
        for i, node in enumerate(self.nodes):
            depth = node.rel.count(b"/")
            while open_dirs and open_dirs[-1][1] >= depth:
                self.nodes[open_dirs.pop()[0]].end = i
            node.end = i + 1
            if node.kind == "dir":
                open_dirs.append((i, depth))
        for j, _ in open_dirs:
            self.nodes[j].end = len(self.nodes)
        # Hardlink groups: the inodes with a later name, members in walk order.
        linked = {n.key for n in self.nodes if n.kind == "hardlink"}
        self.groups: dict[tuple[int, int], list[int]] = {}
        for i, node in enumerate(self.nodes):
            if node.regular and node.key in linked:
                self.groups.setdefault(node.key, []).append(i)
        self.by_rel = {n.rel: i for i, n in enumerate(self.nodes)}

    def children(self, d: int | None) -> Iterator[int]:
        i, end = (0, len(self.nodes)) if d is None else (d + 1, self.nodes[d].end)
        while i < end:
            yield i
            i = self.nodes[i].end

    def group(self, i: int) -> list[int]:
        node = self.nodes[i]
        return self.groups.get(node.key, []) if node.regular else []


def _same_metadata(lo: _Node, up: _Node) -> tuple[bool, bool]:
    kind = lo.kind == up.kind or (lo.regular and up.regular)
    meta = (
        kind
        and (lo.mode, lo.uid, lo.gid, lo.size) == (up.mode, up.uid, up.gid, up.size)
        and (up.kind != "symlink" or lo.linkname == up.linkname)
        and (lo.devmajor, lo.devminor) == (up.devmajor, up.devminor)
        and lo.xattrs == up.xattrs
    )
    mtime = lo.mtime == up.mtime and (
        lo.mtime_nsec == 0 or up.mtime_nsec == 0 or lo.mtime_nsec == up.mtime_nsec
    )
    return meta, mtime


def _same_body(lo: _Node, up: _Node) -> bool:
    try:
        with open(lo.full, "rb") as a, open(up.full, "rb") as b:
            while True:
                x, y = a.read(_CHUNK), b.read(_CHUNK)
                if x != y:
                    return False
                if not x:
                    return True
    except OSError as e:
        raise _os_error(up.full, "cannot read", e) from e


class _Differ:
    """Plans the changeset of two trees (diff.rs's Differ), as a list of items:
    ``("entry", u)``, ``("whiteout", l)``, ``("opaque", u)``."""

    def __init__(self, lower: _Tree, upper: _Tree, compare: str) -> None:
        self.lower, self.upper = lower, upper
        self.lower_of = [lower.by_rel.get(n.rel) for n in upper.nodes]
        self.upper_of = [upper.by_rel.get(n.rel) for n in lower.nodes]
        self.changed = [True] * len(upper.nodes)
        verdicts: dict[tuple[tuple[int, int], tuple[int, int]], bool] = {}
        for u, match in enumerate(self.lower_of):
            if match is None:
                continue
            ln, un = lower.nodes[match], upper.nodes[u]
            meta, mtime = _same_metadata(ln, un)
            if compare == "metadata":
                self.changed[u] = not (meta and mtime)
            elif meta and un.regular and un.size > 0:
                key = (ln.key, un.key)
                same = verdicts.get(key)
                if same is None:
                    same = _same_body(ln, un)
                    if upper.group(u):
                        verdicts[key] = same
                self.changed[u] = not same
            else:
                self.changed[u] = not meta

    def plan(self) -> list[tuple[str, int]]:
        while True:
            plan: list[tuple[str, int]] = []
            self.plan_dir(None, None, plan)
            emitted = [False] * len(self.upper.nodes)
            for what, u in plan:
                if what == "entry":
                    emitted[u] = True
            if not self.keep_links_whole(emitted):
                return plan

    def keep_links_whole(self, emitted: list[bool]) -> bool:
        upper, marked = self.upper, False
        for u, node in enumerate(upper.nodes):
            if not node.regular:
                continue
            ugroup = upper.group(u)
            if emitted[u]:
                if any(not emitted[p] for p in ugroup):
                    for p in ugroup:
                        self.changed[p] = emitted[p] = True
                    marked = True
                continue
            match = self.lower_of[u]
            if match is None:
                continue
            lgroup = self.lower.group(match)
            if not ugroup and not lgroup:
                continue
            kept = [] if lgroup else [u]
            for q in lgroup:
                partner = self.upper_of[q]
                if partner is not None and not emitted[partner]:
                    kept.append(partner)
            kept.sort()
            if kept != (ugroup or [u]):
                for p in ugroup or [u]:
                    self.changed[p] = emitted[p] = True
                marked = True
        return marked

    def check_name(self, u: int) -> None:
        node = self.upper.nodes[u]
        if node.name.startswith(_encode(_WHITEOUT_PREFIX)):
            raise UnsupportedEntryError(
                "a name starting with .wh. would read as a whiteout in a layer",
                os.fsdecode(node.full),
            )

    def whole(self, u: int, plan: list[tuple[str, int]]) -> None:
        for d in range(u, self.upper.nodes[u].end):
            self.check_name(d)
            plan.append(("entry", d))

    def plan_dir(self, u: int | None, lo: int | None, plan: list[tuple[str, int]]) -> None:
        lower, upper = self.lower, self.upper
        start = len(plan)
        if u is not None:
            plan.append(("slot", -1))
        upper_names = {upper.nodes[c].name for c in upper.children(u)}
        deleted = 0
        for lc in lower.children(lo):
            if lower.nodes[lc].name not in upper_names:
                plan.append(("whiteout", lc))
                deleted += 1
        for uc in upper.children(u):
            node = upper.nodes[uc]
            same_path = self.lower_of[uc]
            if same_path is not None and node.kind == "dir":
                if lower.nodes[same_path].kind == "dir":
                    self.plan_dir(uc, same_path, plan)
                else:
                    self.whole(uc, plan)
            elif same_path is not None and not self.changed[uc]:
                pass
            else:
                self.whole(uc, plan)
        if u is None:
            return
        below = len(plan) - start - 1
        explicit = below + (1 if self.changed[u] or below > 0 else 0)
        opaque = 2 + (upper.nodes[u].end - u - 1)  # the directory, its marker, its content
        if deleted > 0 and opaque < explicit:
            del plan[start:]
            plan.append(("entry", u))
            plan.append(("opaque", u))
            for d in range(u + 1, upper.nodes[u].end):
                self.check_name(d)
                plan.append(("entry", d))
        elif explicit > 0:
            self.check_name(u)
            plan[start] = ("entry", u)
        else:
            del plan[start:]


def _diff_write(
    tar: tarfile.TarFile,
    lower: _Tree,
    upper: _Tree,
    plan: Sequence[tuple[str, int]],
    source_date_epoch: int | None,
) -> None:
    first_name: dict[tuple[int, int], str] = {}
    for what, i in plan:
        if what == "whiteout":
            node = lower.nodes[i]
            parent, _, name = node.rel.rpartition(b"/")
            marker = (parent + b"/" if parent else b"") + _encode(_WHITEOUT_PREFIX) + name
            tar.addfile(_marker_info(_decode(marker)))
            continue
        node = upper.nodes[i]
        if what == "opaque":
            tar.addfile(_marker_info(_decode(node.rel + b"/" + _encode(_OPAQUE_MARKER))))
            continue
        ti = tarfile.TarInfo(_decode(node.rel))
        ti.mode, ti.uid, ti.gid = node.mode, node.uid, node.gid
        ti.uname, ti.gname = node.uname, node.gname
        ti.size = 0
        ti.mtime = node.mtime if source_date_epoch is None else min(node.mtime, source_date_epoch)
        ti.linkname = _decode(node.linkname)
        ti.devmajor, ti.devminor = node.devmajor, node.devminor
        ti.pax_headers = dict(node.xattrs)
        body: IO[bytes] | None = None
        if node.regular:
            leader = first_name.get(node.key)
            if leader is not None and upper.group(i):
                ti.type, ti.linkname = tarfile.LNKTYPE, leader
            else:
                if upper.group(i):
                    first_name[node.key] = _decode(node.rel)
                ti.type, ti.linkname, ti.size = tarfile.REGTYPE, "", node.size
                try:
                    body = open(node.full, "rb")  # noqa: SIM115 (closed below)
                except OSError as e:
                    raise _os_error(node.full, "cannot open", e) from e
        else:
            ti.type = _TYPE_BY_KIND[node.kind]
        if body is None:
            tar.addfile(ti)
        else:
            with body:
                tar.addfile(ti, body)


def layer_from_diff(
    lower: StrPath,
    upper: StrPath,
    out: StrPath,
    *,
    compression: str | None = "gzip",
    level: int | None = None,
    source_date_epoch: int | None = None,
    owner: str = "root",
    compare: str = "metadata",
) -> Layer:
    """The changeset that turns the tree ``lower`` into ``upper``, as a layer at ``out`` (the
    twin of ``layercore.Layer.from_diff``; see :meth:`Layer.from_diff`)."""
    if compare not in ("metadata", "content"):
        raise ValueError(f"compare must be 'metadata' or 'content': {compare!r}")
    if owner not in _OWNERS:
        raise ValueError(f"owner must be 'root' or 'keep': {owner!r}")
    _check_options(compression, level)
    roots = []
    for root in (lower, upper):
        b = os.fsencode(root)
        try:
            st = os.stat(b)
        except OSError as e:
            raise _os_error(root, "cannot stat", e) from e
        if not stat.S_ISDIR(st.st_mode):
            raise UnsupportedEntryError("is not a directory", os.fsdecode(root))
        roots.append(b)
    lower_tree = _Tree(roots[0], owner, None)
    upper_tree = _Tree(roots[1], owner, None)
    plan = _Differ(lower_tree, upper_tree, compare).plan()

    def fill(tar: tarfile.TarFile) -> None:
        _diff_write(tar, lower_tree, upper_tree, plan, source_date_epoch)

    return _write_layer(out, compression, level, fill)
