"""atheris target: parsing image manifests, image indexes and image configs.

The input is three JSON documents, the index, the manifest and the config, separated by
``PART_SEPARATOR`` (see fuzz/seeds.py). Digests and sizes the fuzzer could never guess are
filled in from placeholders (``"@CONFIG@"``, ``"@CONFIG_SIZE@"``, ``"@MANIFEST@"``,
``"@MANIFEST_SIZE@"``, ``"@LAYER@"``, ``"@LAYER_SIZE@"``, ``"@DIFFID@"``, ``"@ARCH@"``), so
mutations reach the checks behind the digest comparisons.

Two paths, each with the documented contract:

* ``Image.from_json(manifest, config, layers)`` returns an ``Image`` that keeps both byte
  strings exactly, or raises ``CorruptImageError``.
* ``import_image`` of an OCI layout holding the three documents (and the one layer) returns the
  image or raises ``CorruptImageError``, ``ImageNotFoundError`` (no image for this platform)
  or ``DigestMismatchError`` (a descriptor whose digest is not its blob's).

Any other exception is a finding.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["layercore"]):
    from layercore import Image, Layer, Store
    from layercore.errors import CorruptImageError, DigestMismatchError, ImageNotFoundError
    from layercore.image import host_architecture
    from layercore.transport import import_image

PART_SEPARATOR = b"\n--LCFUZZ-PART--\n"
SCRATCH = Path(
    tempfile.mkdtemp(prefix="lcfuzz-image", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
)


def _layer() -> Layer:
    src = SCRATCH / "tree"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hostname").write_bytes(b"fuzz\n")
    return Layer.from_dir(src, SCRATCH / "layer.tar.gz", source_date_epoch=0)


LAYER = _layer()
LAYER_BYTES = Path(LAYER.path).read_bytes()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fill(doc: bytes, values: dict[str, str | int]) -> bytes:
    for name, value in values.items():
        if isinstance(value, int):
            doc = doc.replace(f'"@{name}@"'.encode(), str(value).encode())
        else:
            doc = doc.replace(f"@{name}@".encode(), value.encode())
    return doc


def documents(data: bytes) -> tuple[bytes, bytes, bytes]:
    parts = data.split(PART_SEPARATOR)
    index, manifest, config = (parts + [b"{}"] * 3)[:3]
    common: dict[str, str | int] = {
        "ARCH": host_architecture()[0],
        "DIFFID": LAYER.diff_id,
        "LAYER": LAYER.digest,
        "LAYER_SIZE": len(LAYER_BYTES),
    }
    config = fill(config, common)
    manifest = fill(manifest, {**common, "CONFIG": sha256(config), "CONFIG_SIZE": len(config)})
    index = fill(index, {**common, "MANIFEST": sha256(manifest), "MANIFEST_SIZE": len(manifest)})
    return index, manifest, config


def check_from_json(manifest: bytes, config: bytes) -> None:
    for layers in ([LAYER], []):
        try:
            image = Image.from_json(manifest, config, layers)
        except CorruptImageError as e:
            str(e)
            continue
        assert image.manifest_bytes == manifest and image.config_bytes == config
        assert image.digest == sha256(manifest)
        image.manifest, image.config  # noqa: B018 (parsed views must not raise)


def check_import(index: bytes, manifest: bytes, config: bytes) -> None:
    work = Path(tempfile.mkdtemp(dir=SCRATCH))
    try:
        layout = work / "layout"
        blobs = layout / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        (layout / "oci-layout").write_bytes(b'{"imageLayoutVersion":"1.0.0"}')
        (layout / "index.json").write_bytes(index)
        for blob in (manifest, config, LAYER_BYTES):
            (blobs / sha256(blob).removeprefix("sha256:")).write_bytes(blob)
        store = Store(work / "store")
        try:
            image = import_image(store, layout)
        except (CorruptImageError, ImageNotFoundError, DigestMismatchError) as e:
            str(e)
            return
        assert image.config_bytes == config, "the import changed the config bytes"
    finally:
        shutil.rmtree(work)


def test_one(data: bytes) -> None:
    index, manifest, config = documents(data)
    check_from_json(manifest, config)
    check_import(index, manifest, config)


def main() -> None:
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
