"""The hostile corpus: archives and images built to attack a reader, each with its expected outcome.

Every case is a function that writes its input (a layer blob, or an image source: an OCI
layout directory or archive) and, next to it, the outcome layercore promises: a typed error
from ``layercore.errors`` whose message matches a pattern, or the documented result (the tree
an extraction gives). ``tests/test_hostile.py`` runs each case through every entry point that
reads it, with a sentinel directory beside the target that must stay untouched.

The layers are written by hand (``tarfile`` with explicit headers, or raw 512-byte blocks), so
hostile names and sizes stay exactly as hostile as written. Paths that climb out of the target
aim at the sentinel: ``target`` and ``sentinel`` are siblings, so ``../sentinel/pwned`` is the
escape. ``python tests/hostile_corpus.py DIR`` writes the whole corpus to ``DIR`` (for fuzzers'
seed corpora and for looking at the cases by hand).

Nothing here imports pytest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from layercore.errors import (
    CorruptImageError,
    CorruptLayerError,
    DigestMismatchError,
    LayerError,
    LayerIOError,
    TruncatedLayerError,
    UnsupportedEntryError,
)

__all__ = [
    "BOMB_LIMIT",
    "IMAGE_CASES",
    "LAYER_CASES",
    "ImageCase",
    "LayerCase",
    "Outcome",
    "million_entry_tar",
]

#: The decompression limit the bomb cases run under (``LAYERCORE_MAX_DECOMPRESSED_SIZE``).
BOMB_LIMIT = 16 << 20
#: What a bomb decompresses to: four times the limit, from a few hundred KiB of blob.
BOMB_SIZE = 64 << 20
MTIME = 1_600_000_000


@dataclass(frozen=True)
class Outcome:
    """What an entry point must do with a case: raise ``error`` (an exact class or a base of
    it) with a message matching ``match``, or, with ``error`` None, succeed; ``tree`` is then
    the extracted tree (``path: content``, ``path/: "dir"``, ``path: "-> target"``)."""

    error: type[LayerError] | None = None
    match: str = ""
    tree: dict[str, str] | None = None


ACCEPTED = Outcome()


def refused(error: type[LayerError], match: str) -> Outcome:
    return Outcome(error, match)


def extracted(tree: dict[str, str]) -> Outcome:
    return Outcome(None, "", tree)


@dataclass(frozen=True)
class LayerCase:
    """A hostile layer blob. ``make(sentinel)`` returns the blob's bytes (``sentinel`` is the
    absolute path of the directory beside the target, for cases that name it). ``listing`` is
    the outcome of ``Layer.open`` plus reading every entry; ``view`` of ``Stack([blob])``;
    ``extract`` of ``layercore.extract`` (and ``Stack.extract``). ``env`` is set while the case
    runs."""

    name: str
    make: Callable[[Path], bytes]
    extract: Outcome
    listing: Outcome = ACCEPTED
    view: Outcome = ACCEPTED
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageCase:
    """A hostile image source. ``make(dir)`` writes it below ``dir`` and returns the path to
    import; ``outcome`` is what ``Store.import_image`` does with it (for an accepted image,
    ``after`` names a further step on the imported image: ``"history"`` or ``"extract"``,
    whose outcome is ``after_outcome``)."""

    name: str
    make: Callable[[Path], Path]
    outcome: Outcome
    after: str = ""
    after_outcome: Outcome = ACCEPTED
    env: dict[str, str] = field(default_factory=dict)


# ----- writing tar streams ---------------------------------------------------------------------

Member = tuple[tarfile.TarInfo, bytes]


def _info(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = MTIME
    return info


def reg(name: str, data: bytes = b"x") -> Member:
    info = _info(name)
    info.size = len(data)
    return info, data


def d(name: str) -> Member:
    return _info(name, tarfile.DIRTYPE, 0o755), b""


def sym(name: str, target: str) -> Member:
    info = _info(name, tarfile.SYMTYPE, 0o777)
    info.linkname = target
    return info, b""


def hard(name: str, target: str) -> Member:
    info = _info(name, tarfile.LNKTYPE)
    info.linkname = target
    return info, b""


def tar(members: Iterable[Member], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def _raw_header(name: bytes, size_field: bytes, kind: bytes = b"0", prefix: bytes = b"") -> bytes:
    """One ustar header block with the fields given verbatim and a correct checksum."""
    block = bytearray(512)
    block[0 : len(name)] = name
    block[100:108] = b"0000644\0"
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = size_field
    block[136:148] = b"13441422400\0"
    block[156:157] = kind
    block[257:265] = b"ustar\x0000"
    block[345 : 345 + len(prefix)] = prefix
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


END = b"\0" * 1024


def _pax(records: dict[str, str], declared: int | None = None) -> bytes:
    """A PAX ``x`` header with ``records``; ``declared`` forges its size field."""
    body = b""
    for key, value in records.items():
        item = f" {key}={value}\n".encode()
        n = len(item) + 1
        while len(str(n)) + len(item) != n:
            n = len(str(n)) + len(item)
        body += str(n).encode() + item
    size = len(body) if declared is None else declared
    header = _raw_header(b"PaxHeader", b"%011o\0" % size, b"x")
    pad = (-len(body)) % 512
    return header + body + b"\0" * pad


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)


def _bomb_tar() -> bytes:
    """A tar of one file of BOMB_SIZE zeros, streamed so the test never holds it twice."""
    return tar([reg("zeros", bytes(BOMB_SIZE))])


# ----- layer cases -----------------------------------------------------------------------------

DOTDOT = refused(UnsupportedEntryError, r"'\.\.'")
THROUGH_SYMLINK = refused(UnsupportedEntryError, "symlink")


def _escape_names() -> dict[str, str]:
    """Every spelling of "climb out of the root" a tar name can carry."""
    return {
        "plain": "../sentinel/pwned",
        "inner": "a/../../sentinel/pwned",
        "deep": "a/b/../../../sentinel/pwned",
        "dot_prefix": "./../sentinel/pwned",
        "absolute_dotdot": "/../sentinel/pwned",
        "double_slash": "..//sentinel//pwned",
        "trailing_slash": "../sentinel/",
        "alone": "..",
        "last": "a/..",
        "dot_dot_dot_mix": "./a/./../../sentinel/pwned",
    }


def _traversal_cases() -> list[LayerCase]:
    cases = []
    for label, name in _escape_names().items():
        for kind, member in [
            ("file", lambda n=name: reg(n, b"pwned")),
            ("dir", lambda n=name: d(n)),
            ("symlink", lambda n=name: sym(n, "/etc/passwd")),
            ("hardlink", lambda n=name: hard(n, "f")),
        ]:
            cases.append(
                LayerCase(
                    f"traversal_{label}_{kind}",
                    lambda _s, m=member: tar([reg("f"), m()]),
                    extract=DOTDOT,
                    view=refused(LayerError, r"\.\."),
                )
            )
    return cases


def _pax_path_escape(_s: Path) -> bytes:
    info, data = reg("innocent", b"pwned")
    info.pax_headers = {"path": "../sentinel/pwned"}
    return tar([(info, data)])


def _pax_linkpath_escape(_s: Path) -> bytes:
    info, data = hard("innocent", "f")
    info.pax_headers = {"linkpath": "../sentinel/file"}
    return tar([reg("f"), (info, data)])


def _gnu_longname_escape(_s: Path) -> bytes:
    return tar([reg("../sentinel/" + "p" * 120, b"pwned")], fmt=tarfile.GNU_FORMAT)


def _ustar_prefix_escape(_s: Path) -> bytes:
    # name "pwned", prefix "../sentinel": the reader joins them as prefix/name.
    return (
        _raw_header(b"pwned", b"%011o\0" % 5, prefix=b"../sentinel")
        + b"pwned".ljust(512, b"\0")
        + END
    )


def _absolute_sentinel(sentinel: Path) -> bytes:
    return tar([reg(f"{sentinel}/pwned", b"pwned")])


def _backslashes(_s: Path) -> bytes:
    return tar([reg("..\\sentinel\\pwned", b"literal")])


def _nul_in_pax_path(_s: Path) -> bytes:
    info, data = reg("innocent", b"pwned")
    info.pax_headers = {"path": "ok\x00/../../sentinel/pwned"}
    return tar([(info, data)])


def _symlink_cases() -> list[LayerCase]:
    def write_through(link: Member, *rest: Member) -> Callable[[Path], bytes]:
        return lambda _s: tar([link, *rest])

    cases = [
        LayerCase(
            "symlink_relative_then_file_through_it",
            write_through(sym("esc", "../sentinel"), reg("esc/pwned", b"pwned")),
            extract=THROUGH_SYMLINK,
        ),
        LayerCase(
            "symlink_root_then_dir_through_it",
            write_through(sym("esc", "/"), d("esc/tmp"), reg("esc/tmp/pwned")),
            extract=THROUGH_SYMLINK,
        ),
        LayerCase(
            "symlink_chain_then_file_through_it",
            write_through(sym("a", "b"), sym("b", "../sentinel"), reg("a/pwned", b"pwned")),
            extract=THROUGH_SYMLINK,
        ),
        LayerCase(
            "symlink_then_symlink_through_it",
            write_through(sym("esc", "../sentinel"), sym("esc/link", "/etc/shadow")),
            extract=THROUGH_SYMLINK,
        ),
        LayerCase(
            "symlink_then_hardlink_through_it",
            write_through(sym("esc", "../sentinel"), hard("h", "esc/file")),
            extract=THROUGH_SYMLINK,
        ),
        # A marker below a non-directory the same layer wrote implies nothing (ARCHITECTURE.md,
        # "Applying and extracting"); one below a lower layer's symlink is refused
        # (test_apply.py::test_a_marker_below_a_lower_non_directory_is_refused_like_any_entry).
        LayerCase(
            "symlink_then_whiteout_through_it",
            write_through(sym("esc", "../sentinel"), reg("esc/.wh.file", b"")),
            extract=extracted({"esc": "-> ../sentinel"}),
        ),
        LayerCase(
            "symlink_then_opaque_through_it",
            write_through(sym("esc", "../sentinel"), reg("esc/.wh..wh..opq", b"")),
            extract=extracted({"esc": "-> ../sentinel"}),
        ),
        LayerCase(
            "symlinks_that_climb_are_kept_verbatim",
            write_through(sym("up", "../../../../sentinel/file"), sym("abs", "/etc/passwd")),
            extract=extracted({"up": "-> ../../../../sentinel/file", "abs": "-> /etc/passwd"}),
        ),
    ]
    cases.append(
        LayerCase(
            "absolute_symlink_to_the_sentinel_then_file_through_it",
            lambda s: tar([sym("esc", str(s)), reg("esc/pwned", b"pwned")]),
            extract=THROUGH_SYMLINK,
        )
    )
    return cases


def _hardlink_cases() -> list[LayerCase]:
    return [
        LayerCase(
            "hardlink_to_dotdot",
            lambda _s: tar([hard("h", "../sentinel/file")]),
            extract=DOTDOT,
        ),
        LayerCase(
            "hardlink_to_an_absolute_host_file",
            # Normalised to etc/passwd inside the root, which the layer does not have.
            lambda _s: tar([hard("h", "/etc/passwd")]),
            extract=refused(UnsupportedEntryError, "does not exist"),
        ),
        LayerCase(
            "hardlink_to_the_absolute_sentinel",
            lambda s: tar([hard("h", f"{s}/file")]),
            extract=refused(UnsupportedEntryError, "does not exist"),
        ),
        LayerCase(
            "hardlink_to_a_symlink_then_write_through_the_link",
            # Linking to a symlink links the symlink itself (never its target).
            lambda _s: tar([sym("s", "../sentinel/file"), hard("h", "s"), reg("h/pwned")]),
            extract=THROUGH_SYMLINK,
        ),
    ]


def _whiteout_cases() -> list[LayerCase]:
    return [
        # The view accepts these: a whiteout hides lower paths, and no path is named '..'.
        LayerCase(
            "whiteout_of_dotdot",
            lambda _s: tar([reg(".wh...", b"")]),
            extract=DOTDOT,
        ),
        LayerCase(
            "whiteout_of_dotdot_below_a_dir",
            lambda _s: tar([d("a"), reg("a/.wh...", b"")]),
            extract=DOTDOT,
        ),
        LayerCase(
            "whiteout_beside_the_root",
            lambda _s: tar([reg("../.wh.sentinel", b"")]),
            extract=DOTDOT,
            view=refused(LayerError, r"\.\."),
        ),
        LayerCase(
            "opaque_marker_above_the_root",
            lambda _s: tar([reg("../sentinel/.wh..wh..opq", b"")]),
            extract=DOTDOT,
            view=refused(LayerError, r"\.\."),
        ),
        LayerCase(
            "bare_whiteout",
            lambda _s: tar([reg(".wh.", b"")]),
            extract=refused(CorruptLayerError, r"\.wh\."),
            listing=refused(CorruptLayerError, r"\.wh\."),
            view=refused(CorruptLayerError, r"\.wh\."),
        ),
    ]


def _size_cases() -> list[LayerCase]:
    truncated = refused(TruncatedLayerError, "ends")
    return [
        LayerCase(
            "size_field_of_8_gib_over_10_bytes",
            lambda _s: _raw_header(b"big", b"77777777777\0") + b"0123456789",
            extract=truncated,
            listing=truncated,
            view=truncated,
        ),
        LayerCase(
            "pax_size_of_2_to_the_62",
            lambda _s: _pax({"size": str(1 << 62)}) + _raw_header(b"big", b"%011o\0" % 1) + b"x",
            extract=truncated,
            listing=truncated,
            view=truncated,
        ),
        LayerCase(
            "base256_size_beyond_64_bits",
            lambda _s: _raw_header(b"big", b"\x80" + b"\xff" * 11) + END,
            extract=refused(CorruptLayerError, "size"),
            listing=refused(CorruptLayerError, "size"),
            view=refused(CorruptLayerError, "size"),
        ),
        LayerCase(
            "pax_header_claiming_1_gib",
            lambda _s: _pax({"path": "x"}, declared=1 << 30) + END,
            extract=refused(UnsupportedEntryError, "extended header .* more than"),
            listing=refused(UnsupportedEntryError, "extended header .* more than"),
            view=refused(UnsupportedEntryError, "extended header .* more than"),
        ),
    ]


def _bomb_cases() -> list[LayerCase]:
    env = {"LAYERCORE_MAX_DECOMPRESSED_SIZE": str(BOMB_LIMIT)}
    limit = refused(
        UnsupportedEntryError, rf"more than {BOMB_LIMIT} bytes.*LAYERCORE_MAX_DECOMPRESSED"
    )
    return [
        LayerCase("gzip_bomb", lambda _s: gz(_bomb_tar()), limit, limit, limit, env),
        LayerCase("zstd_bomb", lambda _s: zst(_bomb_tar()), limit, limit, limit, env),
        LayerCase(
            # Many small gzip members: the limit counts the whole stream, not one member.
            "gzip_bomb_of_many_members",
            lambda _s: b"".join(gz(c) for c in _chunks(_bomb_tar(), 1 << 20)),
            limit,
            limit,
            limit,
            env,
        ),
        LayerCase(
            "bomb_under_the_default_limit_is_an_ordinary_layer",
            lambda _s: gz(tar([reg("zeros", bytes(BOMB_SIZE))])),
            extract=extracted({"zeros": f"<{BOMB_SIZE} bytes>"}),
        ),
    ]


def _chunks(data: bytes, size: int) -> Iterable[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


def _path_max_cases() -> list[LayerCase]:
    def nested(total: int) -> str:
        # Components of 200 bytes, the last one trimmed so the path is `total` bytes long.
        parts: list[str] = []
        length = -1
        while length < total:
            parts.append("d" * 200)
            length += 201
        path = "/".join(parts)
        return path[: total - 1] + "f"

    long_path = nested(4096)
    too_long = nested(4097)
    return [
        LayerCase(
            "path_of_4096_bytes",
            lambda _s: tar([reg(long_path, b"deep")]),
            extract=extracted({long_path: "deep"}),
        ),
        LayerCase(
            "path_of_4097_bytes",
            lambda _s: tar([reg(too_long, b"deep")]),
            extract=refused(UnsupportedEntryError, "4096"),
        ),
        LayerCase(
            "component_of_256_bytes",
            lambda _s: tar([reg("n" * 256, b"x")]),
            extract=refused(LayerIOError, "too long"),
        ),
        LayerCase(
            "symlink_target_of_4096_bytes",
            lambda _s: tar([sym("s", "t" * 4096)]),
            extract=refused(LayerIOError, "too long"),
        ),
    ]


def _duplicate_cases() -> list[LayerCase]:
    return [
        LayerCase(
            "same_file_twice",
            lambda _s: tar([reg("f", b"one"), reg("f", b"two")]),
            extract=extracted({"f": "two"}),
        ),
        LayerCase(
            "directory_then_file_of_the_same_name",
            lambda _s: tar([d("p"), reg("p/x", b"x"), reg("p", b"file")]),
            extract=extracted({"p": "file"}),
        ),
        LayerCase(
            "file_then_symlink_out_of_the_same_name_then_a_write_through_it",
            lambda _s: tar([d("p"), reg("p", b"f"), sym("p", "../sentinel"), reg("p/pwned")]),
            extract=THROUGH_SYMLINK,
        ),
        LayerCase(
            "file_then_symlink_of_the_same_name_then_a_hardlink_to_it",
            lambda _s: tar([reg("f", b"mine"), sym("f", "../sentinel/file"), hard("h", "f")]),
            extract=extracted({"f": "-> ../sentinel/file", "h": "-> ../sentinel/file"}),
        ),
    ]


def _misc_cases() -> list[LayerCase]:
    return [
        LayerCase(
            "pax_path_escape",
            _pax_path_escape,
            extract=DOTDOT,
            view=refused(LayerError, r"\.\."),
        ),
        LayerCase(
            # The view looks a hardlink's target up inside the layer: never a host path.
            "pax_linkpath_escape",
            _pax_linkpath_escape,
            extract=DOTDOT,
        ),
        LayerCase(
            "gnu_longname_escape",
            _gnu_longname_escape,
            extract=DOTDOT,
            view=refused(LayerError, r"\.\."),
        ),
        LayerCase(
            "ustar_prefix_escape",
            _ustar_prefix_escape,
            extract=DOTDOT,
            view=refused(LayerError, r"\.\."),
        ),
        LayerCase(
            "absolute_name_of_the_sentinel_lands_inside",
            _absolute_sentinel,
            extract=Outcome(None, "", None),  # the tree is checked by the test (it names tmp)
        ),
        LayerCase(
            "backslashes_are_ordinary_characters",
            _backslashes,
            extract=extracted({"..\\sentinel\\pwned": "literal"}),
        ),
        LayerCase(
            "nul_in_a_pax_path",
            _nul_in_pax_path,
            extract=refused(UnsupportedEntryError, "NUL"),
            listing=ACCEPTED,
            view=refused(UnsupportedEntryError, r"NUL|'\.\.'"),
        ),
    ]


LAYER_CASES: list[LayerCase] = [
    *_traversal_cases(),
    *_misc_cases(),
    *_symlink_cases(),
    *_hardlink_cases(),
    *_whiteout_cases(),
    *_size_cases(),
    *_bomb_cases(),
    *_path_max_cases(),
    *_duplicate_cases(),
]


# ----- image cases -----------------------------------------------------------------------------

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
PLATFORM = {"os": "linux", "architecture": "amd64"}


class Layout:
    """An OCI image layout being written: blobs by digest, then ``index.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    def blob(self, data: bytes, media_type: str, *, name: str | None = None) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        hex_name = name or digest[7:]
        (self.root / "blobs" / "sha256" / hex_name).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def image(
        self,
        layer: bytes,
        *,
        history: list[dict[str, object]] | None = None,
        media_type: str = OCI_LAYER,
    ) -> dict[str, object]:
        """A one-layer image; returns its manifest's descriptor."""
        diff_id = (
            "sha256:"
            + hashlib.sha256(
                gzip.decompress(layer) if media_type == OCI_LAYER_GZIP else layer
            ).hexdigest()
        )
        config: dict[str, object] = {
            **PLATFORM,
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
        if history is not None:
            config["history"] = history
        config_desc = self.blob(json.dumps(config).encode(), OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc,
            "layers": [self.blob(layer, media_type)],
        }
        return self.blob(json.dumps(manifest).encode(), OCI_MANIFEST)

    def index(self, *manifests: dict[str, object], raw: bytes | None = None) -> Path:
        body = (
            raw
            if raw is not None
            else json.dumps(
                {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(manifests)}
            ).encode()
        )
        (self.root / "index.json").write_bytes(body)
        return self.root


def _small_layer() -> bytes:
    return tar([reg("hello", b"world")])


def _index_contains_itself(base: Path) -> Path:
    # No blob can hold its own digest, so the loop needs a blob stored under a name its bytes
    # do not hash to: the digest check must stop it before anything follows the loop.
    layout = Layout(base / "layout")
    name = "ab" * 32
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_INDEX,
                    "digest": f"sha256:{name}",
                    "size": 0,
                    "platform": PLATFORM,
                }
            ],
        }
    ).encode()
    body = body.replace(b'"size": 0', b'"size": %d' % (len(body) + 2))  # two more digits
    desc = layout.blob(body, OCI_INDEX, name=name)
    desc["digest"] = f"sha256:{name}"
    return layout.index({**desc, "platform": PLATFORM})


def _indexes_nested_deeply(base: Path) -> Path:
    layout = Layout(base / "layout")
    desc = {**layout.image(_small_layer()), "platform": PLATFORM}
    for _ in range(6):
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc]})
        desc = {**layout.blob(body.encode(), OCI_INDEX), "platform": PLATFORM}
    return layout.index(desc)


def _history_of_100k(base: Path) -> Path:
    layout = Layout(base / "layout")
    history: list[dict[str, object]] = [
        {"created_by": f"step {i}", "empty_layer": True} for i in range(100_000)
    ]
    history.append({"created_by": "the one layer"})
    return layout.index(layout.image(_small_layer(), history=history))


def _history_disagreeing_with_layers(base: Path) -> Path:
    layout = Layout(base / "layout")
    history: list[dict[str, object]] = [{"created_by": f"step {i}"} for i in range(100_000)]
    return layout.index(layout.image(_small_layer(), history=history))


def _oversized_manifest(base: Path) -> Path:
    layout = Layout(base / "layout")
    desc = layout.image(_small_layer())
    manifest_path = layout.root / "blobs" / "sha256" / str(desc["digest"])[7:]
    manifest = json.loads(manifest_path.read_bytes())
    manifest["annotations"] = {"padding": "p" * (65 << 20)}
    return layout.index(layout.blob(json.dumps(manifest).encode(), OCI_MANIFEST))


def _oversized_index_json(base: Path) -> Path:
    layout = Layout(base / "layout")
    desc = layout.image(_small_layer())
    padding = {"annotations": {"padding": "p" * (65 << 20)}}
    body = json.dumps({"schemaVersion": 2, "manifests": [desc], **padding}).encode()
    return layout.index(raw=body)


def _deeply_nested_index_json(base: Path) -> Path:
    return Layout(base / "layout").index(raw=b'{"manifests": ' + b"[" * 200_000)


def _deeply_nested_config(base: Path) -> Path:
    layout = Layout(base / "layout")
    config = (
        b'{"architecture": "amd64", "os": "linux", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    )
    config_desc = layout.blob(config, OCI_CONFIG)
    layer = _small_layer()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc,
        "layers": [layout.blob(layer, OCI_LAYER)],
    }
    return layout.index(layout.blob(json.dumps(manifest).encode(), OCI_MANIFEST))


def _archive_of(make: Callable[[Path], Path]) -> Callable[[Path], Path]:
    """The same case as an OCI archive (a tar of the layout)."""

    def write(base: Path) -> Path:
        layout = make(base)
        archive = base / "image.tar"
        with tarfile.open(archive, "w") as t:
            for path in sorted(layout.rglob("*")):
                t.add(path, arcname=str(path.relative_to(layout)), recursive=False)
        return archive

    return write


def _bomb_image(base: Path) -> Path:
    layout = Layout(base / "layout")
    return layout.index(layout.image(gz(_bomb_tar()), media_type=OCI_LAYER_GZIP))


def _hostile_layer_image(base: Path) -> Path:
    layout = Layout(base / "layout")
    return layout.index(layout.image(tar([reg("../sentinel/pwned", b"pwned")])))


_too_deep = refused(CorruptImageError, "nested too deeply")
_too_large = refused(CorruptImageError, "larger than")
_bad_json = refused(CorruptImageError, "not valid JSON")

IMAGE_CASES: list[ImageCase] = [
    ImageCase(
        "index_that_contains_itself",
        _index_contains_itself,
        refused(DigestMismatchError, "do not match"),
    ),
    ImageCase("indexes_nested_six_deep", _indexes_nested_deeply, _too_deep),
    ImageCase(
        "config_with_100k_history_entries",
        _history_of_100k,
        ACCEPTED,
        after="history",
        after_outcome=ACCEPTED,
    ),
    ImageCase(
        "config_with_100k_history_entries_for_one_layer",
        _history_disagreeing_with_layers,
        refused(CorruptImageError, "entries with a layer"),
    ),
    ImageCase("manifest_of_65_mib", _oversized_manifest, _too_large),
    ImageCase("index_json_of_65_mib", _oversized_index_json, _too_large),
    ImageCase("index_json_nested_200k_deep", _deeply_nested_index_json, _bad_json),
    ImageCase("config_nested_200k_deep", _deeply_nested_config, _bad_json),
    ImageCase(
        "archive_index_that_contains_itself",
        _archive_of(_index_contains_itself),
        refused(DigestMismatchError, "do not match"),
    ),
    ImageCase("archive_indexes_nested_six_deep", _archive_of(_indexes_nested_deeply), _too_deep),
    ImageCase(
        "archive_index_json_nested_200k_deep", _archive_of(_deeply_nested_index_json), _bad_json
    ),
    ImageCase(
        "image_whose_layer_is_a_gzip_bomb",
        _bomb_image,
        ACCEPTED,
        after="extract",
        after_outcome=refused(UnsupportedEntryError, "LAYERCORE_MAX_DECOMPRESSED_SIZE"),
        env={"LAYERCORE_MAX_DECOMPRESSED_SIZE": str(BOMB_LIMIT)},
    ),
    ImageCase(
        "image_whose_layer_climbs_out",
        _hostile_layer_image,
        ACCEPTED,
        after="extract",
        after_outcome=DOTDOT,
    ),
]


# ----- the million-entry layer -----------------------------------------------------------------


def million_entry_tar(path: Path, entries: int) -> int:
    """Writes an uncompressed layer of ``entries`` empty files (1,000 per directory) to
    ``path`` with raw ustar blocks, about a million a second; returns its size."""
    per_dir = 1000
    with path.open("wb", buffering=1 << 20) as f:
        for i in range(entries):
            if i % per_dir == 0:
                f.write(_header_block(b"d%05d/" % (i // per_dir), b"5", 0o755))
            f.write(_header_block(b"d%05d/f%07d" % (i // per_dir, i), b"0", 0o644))
        f.write(END)
        return f.tell()


_TEMPLATE = bytearray(_raw_header(b"", b"00000000000\0"))


def _header_block(name: bytes, kind: bytes, mode: int) -> bytes:
    block = bytearray(_TEMPLATE)
    block[0 : len(name)] = name
    block[100:108] = b"%07o\0" % mode
    block[156:157] = kind
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def write_corpus(out: Path) -> None:
    """Writes every case below ``out``: layers as ``layers/<name>.tar[.gz|.zst]`` (named by
    their magic), images as ``images/<name>``."""
    (out / "layers").mkdir(parents=True, exist_ok=True)
    sentinel = out / "sentinel"
    for case in LAYER_CASES:
        blob = case.make(sentinel)
        suffix = (
            ".gz" if blob[:2] == b"\x1f\x8b" else ".zst" if blob[:4] == b"\x28\xb5\x2f\xfd" else ""
        )
        (out / "layers" / f"{case.name}.tar{suffix}").write_bytes(blob)
    for image in IMAGE_CASES:
        base = out / "images" / image.name
        base.mkdir(parents=True, exist_ok=True)
        image.make(base)


if __name__ == "__main__":
    write_corpus(Path(sys.argv[1]))
