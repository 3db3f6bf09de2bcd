"""Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/ (committed).

Run with the test venv's Python (it needs ``zstandard``): ``.venv/bin/python fuzz/seeds.py``.
The output is deterministic: fixed mtimes, gzip without a timestamp, one zstd level, so
re-running it changes nothing unless this script changed. Each seed is a few hundred bytes to
a few KB: small inputs are what libFuzzer mutates fastest.

The Rust targets take layers in the form ``fuzz/src/lib.rs`` documents: a mode byte (0: the
blob as is, 1: the harness gzips it, 2: the harness zstds it) then the bytes, several layers
separated by ``LAYER_SEPARATOR``.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import zstandard

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
LAYER_SEPARATOR = b"\n--LCFUZZ-LAYER--\n"
RAW, GZIP, ZSTD = 0, 1, 2
MTIME = 1_600_000_000


def tar(
    members: list[tuple[str, str, bytes | str]],
    fmt: int = tarfile.PAX_FORMAT,
    pax: dict[str, str] | None = None,
) -> bytes:
    """A tar of ``(kind, name, body-or-target)``; kind is one of file, dir, sym, hard, fifo,
    char, block, xattr (a file with a ``user.x`` xattr)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt, pax_headers=pax or {}) as t:
        for kind, name, payload in members:
            info = tarfile.TarInfo(name)
            info.mtime = MTIME
            info.mode = 0o755 if kind == "dir" else 0o644
            body = None
            if kind in ("file", "xattr"):
                data = payload if isinstance(payload, bytes) else payload.encode()
                info.size = len(data)
                body = io.BytesIO(data)
                if kind == "xattr":
                    info.pax_headers = {"SCHILY.xattr.user.x": "value"}
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "sym":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, str(payload), 0o777
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, str(payload)
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            elif kind in ("char", "block"):
                info.type = tarfile.CHRTYPE if kind == "char" else tarfile.BLKTYPE
                info.devmajor, info.devminor = (0, 0) if payload == "whiteout" else (1, 3)
            t.addfile(info, body)
    # Without the padding to 10240 bytes: two zero blocks end the archive, the rest only slows
    # the fuzzer down.
    data = out.getvalue().rstrip(b"\0")
    return data + b"\0" * (-len(data) % 512 + 1024)


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)


def layers(*parts: tuple[int, bytes]) -> bytes:
    return LAYER_SEPARATOR.join(bytes([mode]) + blob for mode, blob in parts)


# --- layers --------------------------------------------------------------------------------------

BASIC = tar(
    [
        ("dir", "etc", b""),
        ("file", "etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
        ("sym", "etc/alias", "passwd"),
        ("hard", "etc/link", "etc/passwd"),
        ("fifo", "run/pipe", b""),
        ("xattr", "bin/tool", b"#!/bin/sh\n"),
    ]
)
GNU_LONG = tar(
    [("file", "d/" + "n" * 120, b"long"), ("sym", "s" * 110, "t" * 110)], tarfile.GNU_FORMAT
)
USTAR = tar([("dir", "a/", b""), ("file", "a/b", b"ustar body")], tarfile.USTAR_FORMAT)
PAX_GLOBAL = tar([("file", "x", b"x")], tarfile.PAX_FORMAT, pax={"comment": "global"})
DEVICES = tar([("char", "dev/null", ""), ("block", "dev/sda", "")])
WHITEOUTS = tar(
    [
        ("file", "etc/.wh.passwd", b""),
        ("file", "var/.wh..wh..opq", b""),
        ("file", "var/new", b"new"),
        ("file", ".wh.gone", b""),
    ]
)
LOWER = tar(
    [
        ("dir", "var", b""),
        ("file", "var/old", b"old"),
        ("file", "gone", b"gone"),
        ("dir", "d", b""),
        ("file", "d/f", b"f"),
        ("hard", "d/h", "d/f"),
    ]
)
UPPER = tar(
    [
        ("file", "var/.wh..wh..opq", b""),
        ("file", "var/new", b"new"),
        ("file", ".wh.gone", b""),
        ("file", "d/f", b"replaced"),
        ("sym", "d/s", "../var/new"),
    ]
)
TOP = tar([("file", "d/.wh.h", b""), ("dir", "gone", b""), ("file", "gone/again", b"again")])

# Aimed at the apply target's lower tree: up -> ../outside, abs -> <scratch>/outside,
# shm -> /dev/shm/layercore-fuzz-sentinel, dir/file.
HOSTILE = [
    tar([("file", "up/keep", b"overwritten")]),
    tar([("file", "abs/new", b"escaped")]),
    tar([("file", "shm/keep", b"overwritten")]),
    tar([("file", "../outside/new", b"escaped")]),
    tar([("file", "/../../outside/new", b"escaped")]),
    tar([("hard", "h", "up/keep")]),
    tar([("hard", "h", "../outside/keep")]),
    tar([("file", "up/.wh.keep", b"")]),
    tar([("file", "abs/.wh..wh..opq", b"")]),
    tar([("file", ".wh.up", b""), ("file", "up", b"now a file")]),
    tar([("sym", "esc", "/dev/shm/layercore-fuzz-sentinel"), ("file", "esc/new", b"escaped")]),
    tar([("sym", "esc", "../outside"), ("file", "esc/keep", b"overwritten")]),
    tar([("sym", "dir", "../outside"), ("file", "dir/new", b"escaped")]),
    tar([("dir", "up", b""), ("file", "up/new", b"replaced the link")]),
    tar([("sym", "dir/file", "/dev/shm/layercore-fuzz-sentinel/keep"), ("hard", "x", "dir/file")]),
    tar([("file", "dir/.wh..", b""), ("file", "dir/.wh...", b"")]),
    tar([("char", "up", ""), ("fifo", "abs", b"")]),
]


def write(target: str, seeds: dict[str, bytes]) -> None:
    """Writes the seeds of ``target``; other files there (the inputs of fixed findings,
    ``regress-*``) are kept."""
    out = CORPUS / target
    out.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (out / name).write_bytes(data)


def rust_seeds() -> None:
    singles = {
        "basic": BASIC,
        "gnu-long": GNU_LONG,
        "ustar": USTAR,
        "pax-global": PAX_GLOBAL,
        "devices": DEVICES,
        "whiteouts": WHITEOUTS,
    }
    write("tar_reader", {name: bytes([7]) + data for name, data in singles.items()})
    index_seeds = {}
    for name, data in singles.items():
        index_seeds[f"{name}-tar"] = layers((RAW, data))
        index_seeds[f"{name}-gzip"] = layers((GZIP, data))
        index_seeds[f"{name}-zstd"] = layers((ZSTD, data))
    index_seeds["raw-gzip"] = layers((RAW, gz(BASIC)))
    index_seeds["raw-zstd"] = layers((RAW, zst(BASIC)))
    index_seeds["raw-gzip-two-members"] = layers((RAW, gz(BASIC[:1024]) + gz(BASIC[1024:])))
    write("layer_index", index_seeds)
    apply_seeds = {f"hostile-{i}": layers((RAW, data)) for i, data in enumerate(HOSTILE)}
    apply_seeds["basic-gzip"] = layers((GZIP, BASIC))
    apply_seeds["whiteouts-zstd"] = layers((ZSTD, WHITEOUTS))
    apply_seeds["devices"] = layers((RAW, DEVICES))
    write("apply", apply_seeds)
    write(
        "flatten",
        {
            "lower-upper": layers((RAW, LOWER), (RAW, UPPER)),
            "three": layers((RAW, LOWER), (GZIP, UPPER), (ZSTD, TOP)),
            "basic-whiteouts": layers((RAW, BASIC), (RAW, WHITEOUTS)),
            "long-names": layers((RAW, GNU_LONG), (RAW, USTAR)),
            "one": layers((RAW, BASIC)),
        },
    )
    write(
        "overlay_upper",
        {
            "whiteouts": layers((RAW, WHITEOUTS)),
            "upper": layers((RAW, UPPER)),
            "top": layers((GZIP, TOP)),
            "basic": layers((ZSTD, BASIC)),
            "devices": layers((RAW, DEVICES)),
        },
    )


# --- the Python targets --------------------------------------------------------------------------

# fuzz/python/fuzz_image.py splits its input on this into index, manifest and config, and fills
# in the digests the fuzzer could never guess (see that file).
PART_SEPARATOR = b"\n--LCFUZZ-PART--\n"


def canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def image_seeds() -> dict[str, bytes]:
    config = {
        "architecture": "@ARCH@",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "Labels": {"a": "b"}},
        "rootfs": {"type": "layers", "diff_ids": ["@DIFFID@"]},
        "history": [{"created_by": "fuzz", "created": "2020-09-13T12:26:40Z"}],
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": "@CONFIG@",
            "size": "@CONFIG_SIZE@",
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": "@LAYER@",
                "size": "@LAYER_SIZE@",
            }
        ],
    }
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "@MANIFEST@",
                "size": "@MANIFEST_SIZE@",
                "platform": {"os": "linux", "architecture": "@ARCH@"},
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    nested = dict(index, manifests=[dict(index["manifests"][0], platform=None)])

    def join(*parts: object) -> bytes:
        return PART_SEPARATOR.join(canonical(p) for p in parts)

    return {
        "image": join(index, manifest, config),
        "no-platform": join(nested, manifest, config),
        "no-history": join(index, manifest, dict(config, history=[])),
        "empty-layers": join(
            index,
            dict(manifest, layers=[]),
            dict(config, rootfs={"type": "layers", "diff_ids": []}, history=[]),
        ),
        "not-json": b"{" + PART_SEPARATOR + b"[]" + PART_SEPARATOR + b"null",
    }


AUTH = [
    'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
    'scope="repository:library/alpine:pull"',
    'Basic realm="Registry Realm"',
    'Bearer realm="https://a/token", error="insufficient_scope", scope="repository:a:pull,push"',
    'Basic realm="x", Bearer realm="https://t",service=s',
    'Negotiate abc123==, Bearer realm="https://t"',
    'Bearer realm="esc\\"aped\\\\",,,service="x"',
    "Bearer",
    "",
]

DOCKERFILES = [
    "FROM alpine:3.19 AS base\nARG V=1\nENV A=$V B=${V:-2}\nRUN echo hi && \\\n  echo there\n"
    'COPY --chown=1:1 --from=base ["a b", "c"]\nWORKDIR /app\nCMD ["sh", "-c", "x"]\n',
    "# syntax=docker/dockerfile:1\n# escape=`\nFROM scratch\nADD a `\n  b\nLABEL k=v \"q\"='w x'\n",
    "ARG BASE=alpine\nFROM ${BASE}\nRUN <<EOF\nset -e\necho heredoc\nEOF\n"
    "COPY <<-END /f\n\tbody\nEND\n",
    "FROM x\nHEALTHCHECK --interval=5s CMD true\nEXPOSE 80/tcp 443\nUSER 1000:1000\n"
    'VOLUME ["/data"]\nSHELL ["/bin/bash", "-c"]\nSTOPSIGNAL SIGTERM\nONBUILD RUN x\n'
    "ENTRYPOINT exec app\nMAINTAINER me\n",
    "FROM a AS one\nFROM one AS two\nCOPY --from=one /x /y\nFROM two\n",
    "FROM x\nRUN --mount=type=cache,target=/c --network=none echo ${A:+set} ${B?err} $$\n",
]


def python_seeds() -> None:
    write("py_image", image_seeds())
    write("py_www_authenticate", {f"challenge-{i}": s.encode() for i, s in enumerate(AUTH)})
    write("py_dockerfile", {f"dockerfile-{i}": s.encode() for i, s in enumerate(DOCKERFILES)})


if __name__ == "__main__":
    rust_seeds()
    python_seeds()
    total = sum(f.stat().st_size for f in CORPUS.rglob("*") if f.is_file())
    print(f"wrote {sum(1 for _ in CORPUS.rglob('*'))} seeds ({total} bytes) to {CORPUS}")
