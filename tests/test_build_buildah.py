"""The same Dockerfiles built by layercore and by buildah (`bud --isolation chroot --layers`,
vfs storage): equal trees under `umoci unpack`, equal config fields, the same pattern of layers
and empty_layer entries.

Where the two builders differ by design, the comparison says so: buildah leaks its RUN mount
points into the layer (`dev`, `proc`, `sys`, `run`, `etc/hostname`, `etc/hosts`,
`etc/resolv.conf`; layercore must not), and BuildKit, which layercore follows, makes `WORKDIR`
a layer where buildah makes it an empty_layer entry.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

import layercore
from layercore import Store
from test_build import busybox_store

BUILDAH_LEAKS = {"dev", "proc", "sys", "run", "etc/hostname", "etc/hosts", "etc/resolv.conf"}
CONFIG_FIELDS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Volumes")


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is missing: `make test` installs it (Debian package)")
    return path


class Buildah:
    def __init__(self, work: Path) -> None:
        require("buildah")
        self.base = ["buildah", "--root", str(work / "root"), "--runroot", str(work / "run")]
        self.base += ["--storage-driver", "vfs"]
        self.work = work

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, check=False, timeout=300
        )
        assert done.returncode == 0, f"buildah {' '.join(args)}:\n{done.stderr}"
        return done.stdout


def tree(root: Path) -> dict[str, tuple[str, int, int, int, bytes]]:
    """path -> (kind, mode, uid, gid, content or link target) of an unpacked rootfs."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                kind, data = "symlink", os.readlink(p).encode()
            elif stat.S_ISDIR(st.st_mode):
                kind, data = "dir", b""
            else:
                kind, data = "file", p.read_bytes()
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, data)
    return out


def unpack(layout: Path, tag: str, dest: Path) -> dict[str, tuple[str, int, int, int, bytes]]:
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:{tag}", str(dest)],
        check=True,
        capture_output=True,
    )
    return tree(dest / "rootfs")


def pattern(history: list[layercore.HistoryEntry], skip: int) -> list[bool]:
    """empty_layer of each entry after the base's ``skip``, WORKDIR entries left out."""
    return [
        h.empty_layer for h in history[skip:] if "WORKDIR" not in (h.created_by or "").split()[:4]
    ]


@pytest.mark.parametrize(
    "dockerfile",
    [
        """
        FROM localhost/busybox:test AS build
        ARG GREETING=hi
        ENV APP=/app
        WORKDIR $APP
        COPY app/ ./
        RUN echo "$GREETING from $(pwd)" > made.txt && rm sub/b.txt && mkdir -p /var/data
        RUN chmod 0600 made.txt && echo more >> made.txt
        FROM localhost/busybox:test
        COPY --from=build /app /srv
        COPY --chown=1000:1000 app/a.txt /home/app/
        ENV MODE=prod
        EXPOSE 8080 53/udp
        VOLUME /data
        USER 1000
        ENTRYPOINT ["/bin/sh", "-c"]
        CMD ["cat /srv/made.txt"]
        """,
        """
        FROM localhost/busybox:test
        WORKDIR /work
        COPY . .
        RUN rm -rf app/sub && touch app/new && ln -s app/new link
        USER app
        RUN echo "$(id -u)" > /tmp/me
        """,
    ],
    ids=["two-stages", "one-stage"],
)
def test_same_image_as_buildah(tmp_path: Path, dockerfile: str) -> None:
    require("umoci")
    store = busybox_store(tmp_path)
    store.save(store.load("busybox:test"), "localhost/busybox:test")
    ctx = tmp_path / "ctx"
    (ctx / "app" / "sub").mkdir(parents=True)
    (ctx / "app" / "a.txt").write_text("hello\n")
    (ctx / "app" / "sub" / "b.txt").write_text("sub\n")
    (ctx / "Dockerfile").write_text(textwrap.dedent(dockerfile).lstrip("\n"))
    (ctx / ".dockerignore").write_text("Dockerfile\n")

    ours = layercore.build(ctx, store=store, tags=["out:1"])
    buildah = Buildah(tmp_path / "buildah")
    buildah("pull", f"oci:{store.root}:busybox:test")
    image_id = buildah("images", "-q").split()[0]
    buildah("tag", image_id, "localhost/busybox:test")
    buildah("bud", "--isolation", "chroot", "--layers", "-t", "out:1", str(ctx))
    layout = tmp_path / "buildah-layout"
    buildah("push", "localhost/out:1", f"oci:{layout}:out")

    mine = Store(store.root).load("out:1")
    theirs = Store(layout).load("out")
    assert mine.digest == ours.digest
    ours_tree = unpack(store.root, "out:1", tmp_path / "ours")
    theirs_tree = unpack(layout, "out", tmp_path / "theirs")
    base_tree = unpack(store.root, "busybox:test", tmp_path / "base")
    assert set(ours_tree) - set(base_tree), "the build added nothing: nothing was compared"
    leaked = {p for p in theirs_tree if p in BUILDAH_LEAKS and p not in ours_tree}
    assert {p: v for p, v in theirs_tree.items() if p not in leaked} == ours_tree
    assert not BUILDAH_LEAKS & (set(ours_tree) - {"etc"})

    mine_run, theirs_run = mine.config["config"], theirs.config["config"]
    for field in CONFIG_FIELDS:
        assert mine_run.get(field) == theirs_run.get(field), field
    theirs_labels = dict(theirs_run.get("Labels") or {})
    theirs_labels.pop("io.buildah.version", None)
    assert (mine_run.get("Labels") or {}) == theirs_labels
    base = len(store.load("busybox:test").history)
    assert pattern(mine.history, base) == pattern(theirs.history, base)
    assert False in pattern(mine.history, base) and True in pattern(mine.history, base)
    assert len(mine.layers) - len(theirs.layers) == sum(
        1 for h in mine.history[base:] if (h.created_by or "").startswith("WORKDIR /")
        and not h.empty_layer
    )  # fmt: skip
