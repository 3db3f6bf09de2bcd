"""`make demo`: build layers from a generated tree into the default layercore home and show them.

The default home is ``$LAYERCORE_HOME`` or ``~/.local/share/layercore``; the demo writes under
its ``demo/`` folder and prints each layer's descriptor and a listing of its entries.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

from layercore import Layer, chain_id

BLOB_NAMES = {None: "rootfs.tar", "gzip": "rootfs.tar.gz", "zstd": "rootfs.tar.zst"}


def default_home() -> Path:
    env = os.environ.get("LAYERCORE_HOME")
    if env:
        return Path(env)
    return Path.home() / ".local" / "share" / "layercore"


def generate_tree(root: Path) -> None:
    """A small root filesystem: directories, text and binary files, links of both kinds."""
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text('NAME="layercore demo"\nID=demo\n')
    (root / "etc" / "hostname").write_text("demo\n")
    (root / "usr" / "bin").mkdir(parents=True)
    busybox = shutil.which("busybox")
    if busybox:
        shutil.copy2(busybox, root / "usr" / "bin" / "busybox")
    else:
        (root / "usr" / "bin" / "busybox").write_bytes(os.urandom(64 * 1024))
    os.chmod(root / "usr" / "bin" / "busybox", 0o755)
    for tool in ("sh", "ls", "cat"):
        os.symlink("busybox", root / "usr" / "bin" / tool)
    os.symlink("usr/bin", root / "bin")
    app = root / "app"
    (app / "static").mkdir(parents=True)
    for i in range(200):
        (app / "static" / f"asset-{i:03d}.css").write_text(f".c{i} {{ color: #{i:06x}; }}\n" * 40)
    (app / "main.py").write_text("print('hello from layercore')\n")
    os.link(app / "main.py", app / "entrypoint.py")
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", stat.S_ISVTX | 0o777)


def main() -> None:
    home = default_home() / "demo"
    home.mkdir(parents=True, exist_ok=True)
    epoch = 1_700_000_000
    with tempfile.TemporaryDirectory(prefix="layercore-demo-") as tmp:
        src = Path(tmp) / "rootfs"
        generate_tree(src)
        print(f"source tree: {src}")
        print(f"layers go to: {home}\n")
        layers = []
        for compression in (None, "gzip", "zstd"):
            out = home / BLOB_NAMES[compression]
            started = time.perf_counter()
            layer = Layer.from_dir(src, out, compression=compression, source_date_epoch=epoch)
            took = time.perf_counter() - started
            layers.append(layer)
            print(
                f"{compression or 'tar':>5}: {layer.path.name}  {layer.size:>9,} bytes  "
                f"{took * 1000:6.1f} ms"
            )
            print(f"       media_type {layer.media_type}")
            print(f"       digest     {layer.digest}")
            print(f"       diff_id    {layer.diff_id}")
        assert len({layer.diff_id for layer in layers}) == 1, (
            "diff_id must not depend on compression"
        )
        print("\nsame diff_id for all three: the uncompressed tar is identical\n")

        gz = layers[1]
        gz.verify()
        print(f"verified {gz.path.name} against its digest and diff_id")
        print(f"chain_id of a two-layer stack of it: {chain_id([gz.diff_id, gz.diff_id])}\n")

        print("listing (first 20 entries):")
        for i, entry in enumerate(gz.entries()):
            if i == 20:
                print("  ...")
                break
            target = f" -> {entry.linkname}" if entry.linkname else ""
            print(
                f"  {entry.kind:<8} {entry.mode:04o} {entry.uid}/{entry.gid} "
                f"{entry.size:>8} {entry.path}{target}"
            )
        total = sum(1 for _ in gz.entries())
        print(f"\n{total} entries in all")


if __name__ == "__main__":
    main()
