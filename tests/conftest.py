"""Shared fixtures: source trees that exercise every kind of entry a layer can carry."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest_plugins = ["registry_fixtures"]

IS_ROOT = os.geteuid() == 0


def make_rich_tree(root: Path) -> Path:
    """Every entry kind and every header corner case the writer handles, in one small tree."""
    root.mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "secret").write_text("s3cr3t\n")
    os.chmod(root / "etc" / "secret", 0o600)
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "tool").write_bytes(os.urandom(70_000))
    os.chmod(root / "usr" / "bin" / "tool", 0o4755)  # setuid survives
    (root / "usr" / "lib64").mkdir()
    os.symlink("/usr/lib64", root / "lib64")  # absolute target, kept verbatim
    os.symlink("../etc/passwd", root / "usr" / "passwd-link")
    (root / "data").mkdir(mode=0o750)
    os.chmod(root / "data", 0o750)
    (root / "data" / "empty").write_bytes(b"")
    (root / "data" / "hl-a").write_text("shared body\n")
    os.link(root / "data" / "hl-a", root / "data" / "hl-b")
    os.link(root / "data" / "hl-a", root / "usr" / "hl-c")
    long_dir = root / ("d" * 60) / ("e" * 60)
    long_dir.mkdir(parents=True)
    (long_dir / ("f" * 120)).write_text("long name\n")
    os.symlink("t" * 150, root / "long-link")
    (root / "unicode-é.txt").write_text("accent\n")
    os.mkdir(os.fsencode(root) + b"/caf\xe9")  # not UTF-8
    with open(os.fsencode(root) + b"/caf\xe9/menu", "w") as f:
        f.write("menu\n")
    (root / "a-b").mkdir()
    (root / "a").mkdir()
    (root / "a" / "x").write_text("x\n")
    (root / "a-b" / "y").write_text("y\n")
    os.mkfifo(root / "fifo")
    xf = root / "with-xattr"
    xf.write_text("x\n")
    os.setxattr(xf, "user.comment", b"made by layercore tests")
    os.setxattr(xf, "user.binary", b"\xff\x00\x01")
    if IS_ROOT:
        os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(root / "loop0", 0o660 | stat.S_IFBLK, os.makedev(7, 0))
    # Spread mtimes so clamping and ordering are visible.
    for i, (dirpath, _dirnames, filenames) in enumerate(os.walk(root)):
        for name in filenames:
            os.utime(
                os.path.join(dirpath, name),
                (1_600_000_000 + i, 1_600_000_000 + i),
                follow_symlinks=False,
            )
    os.utime(root / "etc" / "passwd", (1_800_000_000, 1_800_000_000))
    return root


@pytest.fixture
def rich_tree(tmp_path: Path) -> Path:
    return make_rich_tree(tmp_path / "src")


@pytest.fixture
def tree_factory(tmp_path: Path) -> Callable[[str], Path]:
    counter = iter(range(1_000_000))

    def make(name: str = "tree") -> Path:
        return make_rich_tree(tmp_path / f"{name}-{next(counter)}")

    return make


def nobody_python(work: Path) -> tuple[list[str], dict[str, str]]:
    """A command prefix and environment that run Python as uid 65534 with layercore importable.

    The package (with its built extension) is copied under ``work``, which the caller made
    world-readable: wherever the checkout or the virtualenv lives (a private home directory,
    say), the other user can then still import it. The system interpreter is preferred, being
    readable by everyone; the extension is abi3, so any CPython >= 3.11 loads it.
    """
    import shutil
    import sys

    import layercore

    package = Path(layercore.__file__).parent
    site = work / "nobody-site"
    shutil.copytree(package, site / "layercore", ignore=shutil.ignore_patterns("__pycache__"))
    for dirpath, _dirnames, filenames in os.walk(site):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    python = next(
        (p for p in ("/usr/bin/python3.11", "/usr/bin/python3") if os.access(p, os.X_OK)),
        sys.executable,
    )
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", python]
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(work)}
    return prefix, env


@pytest.fixture
def web(tmp_path: Path) -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 serving tmp_path/www (with Last-Modified)."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *_args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
