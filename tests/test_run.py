"""Containers: `layercore run`, `start`, `ps`, `diff`, `commit`, `rm` and their Python API, and
the copy-on-write proofs: writes land only in the container's upper dir, the image's blobs and
snapshots never change, deletes are whiteouts, replaced directories opaque, a committed layer
is the layer `Layer.from_diff` writes for the same change, as root and as uid 65534."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pty
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import layercore
from conftest import nobody_python
from layercore import Image, Layer, Store
from layercore.errors import CommandNotFoundError, ContainerError, ContainerNotFoundError
from registry_harness import Registry
from test_build import EPOCH, busybox_store

LAYERCORE = [sys.executable, "-m", "layercore"]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return app_store(tmp_path)


def app_store(base: Path) -> Store:
    """A store in ``base`` holding busybox:test (see test_build) and app:1: busybox with
    /etc/motd, /srv/data/{a..e}, /srv/keep, a symlink, a hardlink, Entrypoint ``sh -c`` and
    Cmd ``echo default``."""
    s = busybox_store(base)
    tree = base / "app-tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "motd").write_text("welcome\n")
    data = tree / "srv" / "data"
    data.mkdir(parents=True)
    for name in "abcde":
        (data / name).write_text(name * 10)
    (tree / "srv" / "keep").write_text("keep\n")
    os.symlink("data/a", tree / "srv" / "link")
    os.link(tree / "srv" / "keep", tree / "srv" / "hard")
    base = s.load("busybox:test")
    layer = s.build_layer(tree, source_date_epoch=EPOCH)
    image = base.append(layer, created_by="COPY app-tree /").with_config(
        entrypoint=["sh", "-c"], cmd=["echo default"]
    )
    s.save(image, "app:1")
    return s


def lc(
    store: Store, *argv: str, input: bytes | None = None, check: int | None = 0
) -> subprocess.CompletedProcess[bytes]:
    """`layercore --store STORE ARGV...` as a whole process (run attaches to real descriptors
    and signals)."""
    done = subprocess.run(
        [*LAYERCORE, "--store", str(store.root), *argv],
        input=input,
        capture_output=True,
        timeout=120,
    )
    if check is not None:
        assert done.returncode == check, (done.returncode, done.stdout, done.stderr)
    return done


def tree_state(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry below ``root``: kind and mode bits, owner, size, mtime, link target, device,
    xattrs and content digest (what a change to a snapshot would show)."""
    out: dict[str, tuple[object, ...]] = {}
    for base, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(base, name)
            st = os.lstat(path)
            body = b""
            if stat.S_ISREG(st.st_mode):
                body = hashlib.sha256(Path(path).read_bytes()).digest()
            link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
            xattrs = tuple(
                sorted((k, os.getxattr(path, k, follow_symlinks=False))
                       for k in os.listxattr(path, follow_symlinks=False))
            )  # fmt: skip
            out[os.path.relpath(path, root)] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                st.st_rdev, st.st_ino, link, xattrs, body,
            )  # fmt: skip
    return out


def snapshots_state(store: Store) -> dict[str, tuple[object, ...]]:
    return tree_state(store.root / ".layercore" / "snapshots")


# -- running ---------------------------------------------------------------------------------


def test_run_passes_the_commands_output_and_exit_code_through(store: Store) -> None:
    done = lc(store, "run", "--name", "c", "app:1", "echo out; echo err >&2; exit 3", check=3)
    assert done.stdout == b"out\n"
    assert done.stderr == b"err\n"
    info = store.container("c")
    assert (info.status, info.exit_code, info.image) == ("exited", 3, "app:1")
    assert info.image_digest == store.load("app:1").digest
    # The image's command: Entrypoint + Cmd; a command after the image replaces Cmd only.
    assert lc(store, "run", "--rm", "app:1").stdout == b"default\n"
    assert lc(store, "run", "--rm", "--entrypoint", "echo", "app:1", "x", "y").stdout == b"x y\n"


def test_run_python_api_returns_the_exit_code_and_the_container(store: Store) -> None:
    out = store.root.parent / "out.txt"
    with out.open("wb") as f:
        result = store.run("app:1", ["sh", "-c", "echo hi; exit 4"], entrypoint=[], stdout=f)
    assert out.read_bytes() == b"hi\n"
    assert result.exit_code == 4
    assert result.container.status == "exited"
    assert result.container.command == ("sh", "-c", "echo hi; exit 4")
    assert [c.name for c in store.containers()] == [result.container.name]
    assert result.container.name.startswith("app-")


def test_environment_working_directory_and_user(store: Store) -> None:
    script = 'echo "$A $B $PATH"; pwd; id'
    done = lc(
        store, "run", "--rm", "-e", "A=1", "-e", "B", "-w", "/srv/new", "-u", "app",
        "app:1", script,
    )  # fmt: skip
    lines = done.stdout.decode().splitlines()
    assert lines[0] == f"1 {os.environ.get('B', '')} /bin"
    assert lines[1] == "/srv/new"
    assert lines[2] == "uid=1000(app) gid=1000(app)"
    assert lc(store, "run", "--rm", "-u", "1000:staff", "app:1", "id -u; id -g").stdout == (
        b"1000\n50\n"
    )
    assert lc(store, "run", "--rm", "-u", "0:staff", "app:1", "id -u; id -g").stdout == b"0\n50\n"
    # A uid /etc/passwd lacks runs with group 0, as Docker's does.
    assert lc(store, "run", "--rm", "-u", "4242", "app:1", "id -u; id -g").stdout == b"4242\n0\n"
    err = lc(store, "run", "--rm", "-u", "nobody-here", "app:1", "true", check=125).stderr
    assert b"unable to find user nobody-here" in err


def test_network_none_has_loopback_only_and_host_shares_the_hosts(store: Store) -> None:
    def interfaces(*flags: str) -> list[str]:
        text = lc(store, "run", "--rm", *flags, "app:1", "cat /proc/net/dev").stdout.decode()
        return sorted(line.split(":")[0].strip() for line in text.splitlines()[2:])

    host = sorted(
        line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:]
    )
    assert interfaces() == ["lo"]
    assert interfaces("--network", "host") == host


def test_volumes_bind_host_paths_and_stay_out_of_the_writable_layer(
    store: Store, tmp_path: Path
) -> None:
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    (ro / "f").write_text("from the host\n")
    script = "cat /in/f; echo new > /out/g; echo x > /in/f"
    done = lc(
        store, "run", "--name", "v", "-v", f"{ro}:/in:ro", "-v", f"{rw}:/out",
        "app:1", script, check=None,
    )  # fmt: skip
    assert done.returncode != 0  # the read-only bind refused the write
    assert done.stdout == b"from the host\n"
    assert b"Read-only file system" in done.stderr
    assert (rw / "g").read_text() == "new\n"  # a missing host directory is made, as Docker does
    assert (ro / "f").read_text() == "from the host\n"
    # Neither the mount points nor what went through them is in the container's layer.
    assert store.container_changes("v") == []
    assert os.listdir(store.container("v").upper_dir) == []


def test_stdin_is_passed_only_with_interactive(store: Store) -> None:
    assert lc(store, "run", "--rm", "-i", "app:1", "cat", input=b"piped\n").stdout == b"piped\n"
    assert lc(store, "run", "--rm", "app:1", "cat", input=b"piped\n").stdout == b""


def test_a_tty_gives_the_command_a_terminal(store: Store) -> None:
    """-t: the command's stdio is a terminal whose output comes back through this one; -i
    relays what is typed; the exit code still passes through."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: layercore on a terminal, as a user types it
        os.execv(
            sys.executable,
            [*LAYERCORE, "--store", str(store.root), "run", "--rm", "-it", "app:1",
             "[ -t 0 ] && [ -t 1 ] && echo on-a-tty; read line; echo got $line; exit 6"],
        )  # fmt: skip
    output = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if not ready:
                continue
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the child and its terminal are gone
                break
            if not data:
                break
            if b"on-a-tty" not in output and b"on-a-tty" in output + data:
                os.write(fd, b"typed\r")
            output += data
    finally:
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert b"on-a-tty" in output
    assert b"got typed" in output
    assert os.waitstatus_to_exitcode(status) == 6


def _started(store: Store, *argv: str) -> subprocess.Popen[bytes]:
    """`layercore run ARGV` in the background, once its command is running (it prints
    ``ready``)."""
    proc = subprocess.Popen(
        [*LAYERCORE, "--store", str(store.root), "run", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    return proc


def test_signals_reach_the_command(store: Store) -> None:
    """SIGTERM and Ctrl-C (SIGINT) are passed to the command: the shell reports which one it
    got; a third Ctrl-C kills a command that ignores them."""
    trap = "trap 'echo got-$0; exit 9' {}; echo ready; while :; do sleep 1; done"
    for sig, name in ((signal.SIGTERM, "TERM"), (signal.SIGINT, "INT")):
        proc = _started(store, "--rm", "app:1", trap.replace("{}", name), "sh")
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
        assert (proc.returncode, out) == (9, b"got-sh\n")
    # A command that ignores Ctrl-C: the first two are passed, the third kills it.
    proc = _started(store, "--rm", "app:1", "trap '' INT; echo ready; sleep 60")
    for _ in range(3):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGKILL
    # A command ended by a signal exits 128 + N, as a shell reports it.
    assert lc(store, "run", "--rm", "app:1", "kill -TERM $$", check=143).stdout == b""


def test_errors_exit_125_and_a_missing_command_127(store: Store) -> None:
    err = lc(store, "run", "--pull", "never", "nope:1", check=125).stderr
    assert b"no image 'nope:1'" in err
    err = lc(store, "run", "--rm", "--entrypoint", "no-such-tool", "app:1", check=127).stderr
    assert b"no-such-tool" in err and b"not found in $PATH" in err
    lc(store, "run", "--name", "taken", "app:1", "true")
    assert b"exists already" in lc(store, "run", "--name", "taken", "app:1", check=125).stderr
    assert b"invalid container name" in lc(store, "run", "--name", "a/b", "app:1", check=125).stderr
    with pytest.raises(CommandNotFoundError):
        store.run("app:1", entrypoint=["/srv/keep/nope"])
    with pytest.raises(ContainerNotFoundError):
        store.start("never-made")


def test_rm_removes_the_container_even_when_the_command_fails(store: Store) -> None:
    lc(store, "run", "--rm", "--name", "gone", "app:1", "exit 5", check=5)
    assert store.containers() == []
    assert not (store.containers_dir() / "gone").exists()


# -- copy-on-write ---------------------------------------------------------------------------

CHANGES = (
    "echo changed > /etc/motd && rm /srv/keep && rm -rf /srv/data && mkdir /srv/data && "
    "echo new > /srv/data/new && chmod 600 /srv/hard && mkdir -p /opt/tool && "
    "echo t > /opt/tool/t && ln -s /opt/tool/t /usr-link"
)


def test_writes_land_only_in_the_upper_dir(store: Store) -> None:
    image = store.load("app:1")
    store.snapshots(image.layers)
    before = snapshots_state(store)
    blobs = {layer.digest: layer.path.stat().st_mtime_ns for layer in image.layers}
    result = store.run("app:1", [CHANGES], name="cow")
    assert result.exit_code == 0
    assert snapshots_state(store) == before
    assert {layer.digest: layer.path.stat().st_mtime_ns for layer in image.layers} == blobs
    assert store.verify() == []
    upper = store.container("cow").upper_dir
    assert (upper / "etc" / "motd").read_text() == "changed\n"
    # A delete is a whiteout (a 0/0 character device); a replaced directory is opaque.
    gone = os.lstat(upper / "srv" / "keep")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert os.getxattr(upper / "srv" / "data", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(upper / "srv" / "data")) == ["new"]
    # The image reads as before.
    assert store.load("app:1").stack.read("etc/motd") == b"welcome\n"


def test_diff_lists_the_changes_as_docker_diff_does(store: Store) -> None:
    store.run("app:1", [CHANGES], name="cow")
    assert lc(store, "diff", "cow").stdout.decode().splitlines() == [
        "C /etc",
        "C /etc/motd",
        "A /opt",
        "A /opt/tool",
        "A /opt/tool/t",
        "C /srv",
        "C /srv/data",
        "D /srv/data/a",
        "D /srv/data/b",
        "D /srv/data/c",
        "D /srv/data/d",
        "D /srv/data/e",
        "A /srv/data/new",
        "C /srv/hard",
        "D /srv/keep",
        "A /usr-link",
    ]
    assert json.loads(lc(store, "diff", "cow", "--json").stdout)[0] == {
        "change": "C",
        "path": "/etc",
    }
    assert b"no container named 'nope'" in lc(store, "diff", "nope", check=1).stderr


def test_a_committed_layer_is_the_layer_from_diff_writes(store: Store, tmp_path: Path) -> None:
    """Entry for entry: the upper dir written by ``commit`` and the two-tree diff of the
    image's tree before and after give the same changeset."""
    store.run("app:1", [CHANGES], name="cow")
    committed = store.commit_container("cow", "app:2", message="changes")
    assert committed.history[-1].comment == "changes"
    assert committed.history[-1].created_by == f"sh -c {CHANGES}"
    assert committed.layers[:-1] == store.load("app:1").layers
    before, after = tmp_path / "before", tmp_path / "after"
    store.load("app:1").stack.extract(before)
    committed.stack.extract(after)
    diffed = layercore.from_diff(before, after, tmp_path / "diff.tar", owner="numeric")

    def entries(layer: Layer) -> list[tuple[object, ...]]:
        return [
            (e.path, e.kind, e.mode, e.uid, e.gid, e.size, e.mtime, e.linkname)
            for e in layer.entries()
        ]

    assert entries(committed.layers[-1]) == entries(diffed)
    assert committed.stack.read("srv/data/new") == b"new\n"
    assert "srv/keep" not in {e.path for e in committed.stack.walk()}
    # The CLI form, with docker's -m.
    digest = lc(store, "commit", "cow", "app:3", "-m", "again").stdout.split()[1].decode()
    assert store.load("app:3").digest == digest
    assert store.load("app:3").layers[-1].diff_id == committed.layers[-1].diff_id


def test_start_runs_again_on_the_same_writable_layer(store: Store) -> None:
    script = "echo run >> /count; cat /count"
    assert lc(store, "run", "--name", "again", "app:1", script).stdout == b"run\n"
    assert lc(store, "start", "again").stdout == b"run\nrun\n"
    assert store.start("again").exit_code == 0
    assert (store.container("again").upper_dir / "count").read_text() == "run\n" * 3


def test_ps_lists_name_image_status_and_size(store: Store) -> None:
    lc(store, "run", "--name", "one", "app:1", "exit 2", check=2)
    lc(store, "run", "--name", "two", "app:1", "head -c 5000 /bin/busybox > /blob")
    lines = lc(store, "ps").stdout.decode().splitlines()
    assert lines[0].split() == ["NAME", "IMAGE", "COMMAND", "STATUS", "SIZE"]
    assert lines[1].startswith("one ") and "Exited (2)" in lines[1]
    assert lines[2].startswith("two ") and "Exited (0)" in lines[2] and "4.9 KiB" in lines[2]
    lc(store, "run", "--name", "three", "-e", "TOKEN=s3cret", "app:1", "true")
    assert b"s3cret" not in lc(store, "ps", "--json").stdout  # an environment stays out of logs
    assert "TOKEN=s3cret" in store.container("three").env
    store.remove_container("three")
    assert lc(store, "ps", "-q").stdout == b"one\ntwo\n"
    rows = json.loads(lc(store, "ps", "--json").stdout)
    assert [(r["name"], r["status"], r["exit_code"], r["size"]) for r in rows] == [
        ("one", "exited", 2, 0),
        ("two", "exited", 0, 5000),
    ]


def test_a_running_container_cannot_start_commit_or_be_removed_without_force(
    store: Store,
) -> None:
    proc = _started(store, "--name", "busy", "app:1", "echo ready; sleep 60")
    assert store.container("busy").status == "running"
    assert b"is running" in lc(store, "start", "busy", check=125).stderr
    with pytest.raises(ContainerError, match="is running"):
        store.commit_container("busy")
    assert b"is running" in lc(store, "rm", "busy", check=1).stderr
    lc(store, "rm", "-f", "busy")
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert store.containers() == []


def test_rm_force_kills_a_command_that_ignores_sigterm(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from layercore.runtime import containers

    monkeypatch.setattr(containers, "STOP_TIMEOUT", 0.5)
    proc = _started(store, "--name", "stubborn", "app:1", "trap '' TERM; echo ready; sleep 60")
    store.remove_container("stubborn", force=True)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL  # layercore, and bwrap's sandbox with it
    assert store.containers() == []


def test_rm_prefers_a_container_and_rmi_removes_tags(store: Store) -> None:
    store.tag("app:1", "web")
    store.run("app:1", ["true"], name="web")
    assert lc(store, "rm", "web").stdout == b"web\n"
    assert "web" in store.tags() or "web:latest" in store.tags()
    assert lc(store, "rm", "web").stdout == b"untagged web\n"
    assert lc(store, "rmi", "app:1").stdout == b"untagged app:1\n"


def test_gc_keeps_what_containers_use(store: Store) -> None:
    """A container's image and snapshots survive the image's tag and gc; once the container
    is gone, gc removes them."""
    store.run("app:1", ["true"], name="keeper")
    snapshots = store.root / ".layercore" / "snapshots"
    made = sorted(os.listdir(snapshots))
    store.remove("app:1")
    store.remove("busybox:test")
    store.gc()
    assert sorted(os.listdir(snapshots)) == made
    assert store.start("keeper").exit_code == 0
    assert store.commit_container("keeper", "kept:1").stack.read("etc/motd") == b"welcome\n"
    store.remove("kept:1")
    store.remove_container("keeper")
    store.gc()
    assert os.listdir(snapshots) == []


def test_twenty_containers_share_the_images_snapshots(store: Store) -> None:
    image = store.load("app:1")
    for i in range(20):
        store.run("app:1", ["true"], name=f"c{i}")
    snapshots = store.root / ".layercore" / "snapshots"
    assert len(os.listdir(snapshots)) == len(image.layers)
    lowers = {
        tuple(sorted(os.readlink(p) for p in (store.containers_dir() / f"c{i}" / "l").iterdir()))
        for i in range(20)
    }
    assert len(lowers) == 1  # every container's lower dirs are the same snapshots
    added = sum(
        os.lstat(os.path.join(base, name)).st_blocks * 512
        for base, dirs, files in os.walk(store.containers_dir())
        for name in [*dirs, *files]
    )
    assert added < 20 * 64 * 1024  # twenty empty upper dirs and their records


def test_a_run_reads_no_layer_blob_once_the_snapshots_exist(store: Store) -> None:
    """Start-up does not depend on the image's size: with its snapshots made, a run reads
    the manifest and config only (the layer blobs are moved away here)."""
    image = store.load("app:1")
    store.snapshots(image.layers)
    moved = [(layer.path, layer.path.with_suffix(".away")) for layer in image.layers]
    for path, away in moved:
        path.rename(away)
    try:
        assert lc(store, "run", "--rm", "app:1", "cat /etc/motd").stdout == b"welcome\n"
    finally:
        for path, away in moved:
            away.rename(path)


def test_runs_as_an_unprivileged_user() -> None:
    """uid 65534: the overlay is mounted in a user namespace (userxattr), the command runs as
    root of it; the same copy-on-write rules hold and commit writes root-owned entries."""
    base = Path(tempfile.mkdtemp(prefix="layercore-run-"))
    try:
        base.chmod(0o755)
        store = app_store(base)
        os.chown(base, 65534, 65534)
        for dirpath, dirnames, filenames in os.walk(base):
            for name in [*dirnames, *filenames]:
                os.lchown(os.path.join(dirpath, name), 65534, 65534)
        prefix, env = nobody_python(base)
        done = subprocess.run(
            [*prefix, "-c", NOBODY, str(store.root), CHANGES],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(base)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "0"  # root of the user namespace
    report = json.loads(lines[-1])
    assert report["code"] == 0
    assert report["same"] and report["verify"] == []
    assert report["whiteout"] and report["opaque"] == "y"
    assert "D /srv/keep" in report["changes"] and "A /srv/data/new" in report["changes"]
    committed = {path: [kind, uid] for path, kind, uid in report["committed"]}
    assert committed["srv/data/new"] == ["file", 0]
    assert committed["srv/.wh.keep"][0] == "whiteout"
    assert committed["srv/data/.wh..wh..opq"][0] == "opaque"
    assert report["app"] == "1000"


#: What uid 65534 runs in test_runs_as_an_unprivileged_user (argv: the store, the changes).
NOBODY = """
import io, json, os, sys, layercore
s = layercore.Store(sys.argv[1])
image = s.load("app:1")
s.snapshots(image.layers, xattrs="user")
def state(root):
    out = {}
    for base, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(base, n)
            st = os.lstat(p)
            out[p] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out
before = state(s.root / ".layercore" / "snapshots")
r = s.run("app:1", [sys.argv[2] + " && id -u"], name="u")
upper = s.container("u").upper_dir
gone = os.lstat(upper / "srv" / "keep")
as_app = s.root.parent / "app.out"
with as_app.open("w") as f:
    s.run("app:1", ["id -u"], user="app", rm=True, stdout=f)
print(json.dumps({
    "code": r.exit_code,
    "same": state(s.root / ".layercore" / "snapshots") == before,
    "verify": s.verify(),
    "whiteout": (gone.st_mode & 0o170000 == 0o020000 and gone.st_rdev == 0)
    or os.getxattr(upper / "srv" / "keep", "user.overlay.whiteout") is not None,
    "opaque": os.getxattr(upper / "srv" / "data", "user.overlay.opaque").decode(),
    "changes": [str(c) for c in s.container_changes("u")],
    "committed": [
        (e.path, e.kind, e.uid) for e in s.commit_container("u", "app:2").layers[-1].entries()
    ],
    "app": as_app.read_text().strip(),
}))
"""


def test_a_store_of_an_image_without_layers_runs_nothing(store: Store) -> None:
    store.save(Image.scratch(created=EPOCH).with_config(cmd=["true"]), "empty:1")
    err = lc(store, "run", "--rm", "empty:1", check=127).stderr
    assert b"executable file not found" in err


def test_a_killed_run_leaves_a_container_that_starts_again(store: Store) -> None:
    """kill -9 of `layercore run`: the sandbox dies with it (nothing keeps running, no mount
    is left), `ps` shows the container ended with no known code, and it starts again on what
    it had written."""
    script = "[ -e /f ] && { cat /f; exit 0; }; echo x > /f; echo ready; sleep 61"
    proc = _started(store, "--name", "k", "app:1", script)
    proc.kill()
    proc.wait()

    def sleepers() -> list[int]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x0061\x00":
                    found.append(int(pid))
        return found

    deadline = time.monotonic() + 10
    while sleepers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sleepers() == []
    assert str(store.containers_dir()) not in Path("/proc/mounts").read_text()
    info = store.container("k")
    assert (info.status, info.exit_code) == ("exited", None)
    assert "Exited (?)" in lc(store, "ps").stdout.decode()
    assert lc(store, "start", "k").stdout == b"x\n"
    assert store.container("k").exit_code == 0


def test_containers_half_made_or_half_removed_are_cleaned_at_the_next_open(
    store: Store,
) -> None:
    root = store.containers_dir()
    store.run("app:1", ["true"], name="whole")
    for leftover in (".made.1.ab.tmp", ".gone.1.cd.rm"):
        (root / leftover / "upper").mkdir(parents=True)
    (root / "whole" / ".state.json.1.tmp").write_text("{")
    Store(store.root)
    assert sorted(os.listdir(root)) == ["whole"]
    assert not (root / "whole" / ".state.json.1.tmp").exists()
    assert store.start("whole").exit_code == 0


def test_run_pulls_an_image_the_store_lacks(
    store: Store, registry: Registry, tmp_path: Path
) -> None:
    """As `docker run`: a reference the store lacks is pulled from its registry first
    (`--pull missing`, the default); `--pull never` refuses; `--pull always` pulls anyway."""
    ref = f"{registry.host}/team/app:1"
    store.push("app:1", ref)
    fresh = Store(tmp_path / "fresh")
    assert b"no image" in lc(fresh, "run", "--rm", "--pull", "never", ref, check=125).stderr
    done = lc(fresh, "run", "--rm", ref, "cat /etc/motd")
    assert done.stdout == b"welcome\n"
    assert b"Unable to find image" in done.stderr
    assert fresh.load(ref).digest == store.load("app:1").digest
    done = lc(fresh, "run", "--rm", ref, "true")
    assert b"pulling" not in done.stderr  # there now: nothing is asked of the registry
    assert b"pulling" in lc(fresh, "run", "--rm", "--pull", "always", ref, "true").stderr


def test_a_sandbox_that_cannot_start_says_which_step_failed(store: Store) -> None:
    """An overlay that cannot be mounted (here its work dir gone) is layercore's error (125),
    never the command's exit status; the container stays as it was."""
    store.run("app:1", ["true"], name="broken")
    work = store.containers_dir() / "broken" / "work"
    work.rename(work.with_name("away"))
    try:
        with pytest.raises(ContainerError, match="mounting the overlay"):
            store.start("broken")
        assert b"mounting the overlay" in lc(store, "start", "broken", check=125).stderr
        assert store.container("broken").exit_code == 0  # the state of the last real run
    finally:
        work.with_name("away").rename(work)
    assert store.start("broken").exit_code == 0


def test_a_run_of_an_image_with_snapshots_imports_no_image_model(store: Store) -> None:
    """Start-up: once the snapshots exist, `layercore run` reads the manifest and config
    through layercore.layout, without the store and image modules (and dataclasses, which
    they need), and makes the very container the whole path makes."""
    store.run("app:1", ["true"], name="whole", env={"A": "1"}, workdir="/srv")
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "layercore", "--store", str(store.root),
         "run", "--name", "lean", "-e", "A=1", "-w", "/srv", "app:1", "true"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "layercore.runtime.containers" in imported
    for heavy in ("layercore.store", "layercore.image", "layercore.layer", "dataclasses"):
        assert heavy not in imported, heavy

    def record(name: str) -> dict[str, object]:
        data = json.loads((store.containers_dir() / name / "container.json").read_text())
        return {k: v for k, v in data.items() if k not in ("name", "created")}

    assert record("lean") == record("whole")
    assert store.container("lean").exit_code == 0
