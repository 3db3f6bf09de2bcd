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
import errno
import grp
import gzip
import hashlib
import math
import os
import pwd
import re
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
    "chain_id",
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
