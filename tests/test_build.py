"""Building images from Dockerfiles: stages, COPY/ADD, WORKDIR, RUN in a bwrap sandbox over a
busybox-static root filesystem, BuildKit's history, reproducible digests."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import textwrap
from pathlib import Path

import pytest

import layercore
from layercore import Image, Store
from layercore.build import BuildError, BuildResult, DockerfileError
from layercore.errors import SourceNotFoundError

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
APPLETS = ("sh", "ls", "echo", "cat", "rm", "mkdir", "pwd", "id", "touch", "true", "false")
EPOCH = 1_700_000_000


def require_sandbox() -> None:
    if shutil.which("bwrap") is None:
        pytest.fail("bwrap is missing: `make test` installs Debian's bubblewrap")
    if not os.path.exists(BUSYBOX):
        pytest.fail("busybox is missing: `make test` installs Debian's busybox-static")


def busybox_store(base: Path) -> Store:
    """A store at ``base/store`` holding `busybox:test`: busybox-static, its applets,
    /etc/passwd with an app user, a world-writable /tmp. The image is the same in every
    store, whenever it is made: its mtimes, ``created`` and history are EPOCH's."""
    require_sandbox()
    s = Store(base / "store")
    root = base / "busybox-rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        os.symlink("busybox", root / "bin" / applet)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\napp:x:1000:\nstaff:x:50:\n")
    layer = s.build_layer(root, source_date_epoch=EPOCH)
    base_image = (
        Image.scratch(created=EPOCH)
        .append(layer, created=EPOCH)
        .with_config(env={"PATH": "/bin"}, created=EPOCH)
    )
    s.save(base_image, "busybox:test")
    return s


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return busybox_store(tmp_path)


def test_the_base_image_carries_no_time_of_day(tmp_path: Path) -> None:
    """Every timestamp of `busybox:test` is EPOCH's, so two stores made in different seconds
    hold the same base, and builds on them can be compared digest to digest."""
    image = busybox_store(tmp_path).load("busybox:test")
    stamp = "2023-11-14T22:13:20Z"
    assert image.created == stamp
    assert [h.created for h in image.history] == [stamp, stamp]
    assert {e.mtime for e in image.layers[0].entries()} == {EPOCH}


def context(tmp_path: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(textwrap.dedent(dockerfile).lstrip("\n"))
    for rel, text in (files or {}).items():
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        (ctx / rel).write_text(text)
    return ctx


def entries(store: Store, digest: str) -> dict[str, tuple[str, int, int, int]]:
    layer = layercore.Layer.open(store.blob_path(digest))
    return {e.path: (e.kind, e.mode, e.uid, e.gid) for e in layer.entries()}


TWO_STAGES = """
    FROM busybox:test AS build
    ARG GREETING=hi
    ENV APP=/app
    WORKDIR $APP
    COPY app/ ./
    RUN echo "$GREETING from $(pwd)" > made.txt && rm sub/b.txt
    FROM busybox:test
    LABEL org.example.stage=final
    COPY --from=build --chown=app:staff /app /srv
    COPY <<EOF /etc/motd
    welcome
    EOF
    USER app
    CMD ["cat", "/srv/made.txt"]
    """
TWO_STAGE_FILES = {"app/a.txt": "hello\n", "app/sub/b.txt": "sub\n", "docs/README.md": "x"}


def test_two_stage_build(store: Store, tmp_path: Path) -> None:
    ctx = context(tmp_path, TWO_STAGES, TWO_STAGE_FILES)
    result = layercore.build(
        ctx, store=store, tags=["app:1", "app:latest"], build_args={"GREETING": "hello"},
        source_date_epoch=EPOCH,
    )  # fmt: skip
    assert isinstance(result, BuildResult)
    assert store.tags()["app:1"] == result.digest == store.tags()["app:latest"]
    image = store.load("app:1")
    assert image.stack.read("srv/made.txt") == b"hello from /app\n"
    assert image.stack.read("etc/motd") == b"welcome\n"
    assert image.stack.lookup("srv/sub/b.txt") is None
    srv = image.stack.lookup("srv/a.txt")
    assert srv is not None and (srv.uid, srv.gid) == (1000, 50)
    run = image.config["config"]
    assert run["User"] == "app" and run["Cmd"] == ["cat", "/srv/made.txt"]
    assert run["Labels"] == {"org.example.stage": "final"}
    assert [(h.created_by, h.empty_layer) for h in image.history[2:]] == [
        ("LABEL org.example.stage=final", True),
        ("COPY --chown=app:staff /app /srv # buildkit", False),
        ("COPY <<EOF /etc/motd # buildkit", False),
        ("USER app", True),
        ('CMD ["cat" "/srv/made.txt"]', True),
    ]
    assert {h.comment for h in image.history[2:]} == {"buildkit.dockerfile.v0"}
    assert {h.created for h in image.history[2:]} == {"2023-11-14T22:13:20Z"}
    steps = [(s.stage, s.line, s.layer is not None) for s in result.steps]
    assert steps == [
        ("build", 2, False), ("build", 3, False), ("build", 4, True), ("build", 5, True),
        ("build", 6, True), ("1", 8, False), ("1", 9, True), ("1", 10, True),
        ("1", 13, False), ("1", 14, False),
    ]  # fmt: skip


def test_run_layer_holds_only_the_change(store: Store, tmp_path: Path) -> None:
    """The RUN layer: the new file, a whiteout for the deleted one, the parent directories;
    no trace of the sandbox's mount points (proc, dev, etc/hosts, etc/resolv.conf)."""
    ctx = context(tmp_path, TWO_STAGES, TWO_STAGE_FILES)
    result = layercore.build(ctx, store=store, target="build", source_date_epoch=EPOCH)
    image = store.load(result.digest)
    run_step = next(s for s in result.steps if s.instruction.startswith("RUN"))
    assert run_step.layer is not None
    assert sorted(entries(store, run_step.layer)) == [
        "app", "app/made.txt", "app/sub", "app/sub/.wh.b.txt"
    ]  # fmt: skip
    assert image.history[-1].created_by == (
        'RUN |1 GREETING=hi /bin/sh -c echo "$GREETING from $(pwd)" > made.txt && '
        "rm sub/b.txt # buildkit"
    )
    workdir = next(s for s in result.steps if s.instruction.startswith("WORKDIR"))
    assert workdir.layer is not None and entries(store, workdir.layer) == {
        "app": ("dir", 0o755, 0, 0)
    }
    # The .dockerignore-free context copied app/ only; docs/ never entered a layer.
    assert image.stack.lookup("app/a.txt") is not None


def test_same_input_same_digest(store: Store, tmp_path: Path) -> None:
    ctx = context(tmp_path, TWO_STAGES, TWO_STAGE_FILES)
    one = layercore.build(ctx, store=store, source_date_epoch=EPOCH)
    two = layercore.build(ctx, store=store, source_date_epoch=EPOCH)
    assert one.digest == two.digest


def test_a_directory_a_run_made_has_the_layer_mtime_in_later_steps(
    store: Store, tmp_path: Path
) -> None:
    """A RUN's snapshot keeps the real mtimes its layer clamps to SOURCE_DATE_EPOCH; a later
    WORKDIR (or COPY) into a directory the RUN made takes the layer's mtime, not the
    snapshot's: two builds a second apart, every step run, give one digest."""
    import time

    ctx = context(tmp_path, "FROM busybox:test\nRUN mkdir -p /out/sub\nWORKDIR /out/sub\n")
    one = layercore.build(ctx, store=store, source_date_epoch=EPOCH, no_cache=True)
    time.sleep(1.1)
    two = layercore.build(ctx, store=store, source_date_epoch=EPOCH, no_cache=True)
    assert one.digest == two.digest
    workdir = next(s for s in two.steps if s.instruction.startswith("WORKDIR"))
    assert workdir.layer is not None
    layer = layercore.Layer.open(store.blob_path(workdir.layer))
    assert {e.path.rstrip("/"): e.mtime for e in layer.entries()} == {
        "out": EPOCH, "out/sub": EPOCH
    }  # fmt: skip


def test_copy_rules(store: Store, tmp_path: Path) -> None:
    ctx = context(
        tmp_path,
        """
        FROM busybox:test
        WORKDIR /w
        COPY one.txt two.txt dir/
        COPY one.txt renamed.txt
        COPY tree /t
        COPY *.txt /glob/
        COPY --chmod=750 one.txt /modes/
        COPY one.txt /etc
        COPY --exclude=*.log tree/ /excl/
        """,
        {
            "one.txt": "1",
            "two.txt": "2",
            "secret.txt": "s",
            "tree/x/y.txt": "y",
            "tree/keep.log": "log",
            ".dockerignore": "secret.txt\n",
        },
    )
    image = store.load(layercore.build(ctx, store=store, source_date_epoch=EPOCH).digest)
    view = image.stack
    assert view.read("w/dir/one.txt") == b"1" and view.read("w/dir/two.txt") == b"2"
    assert view.read("w/renamed.txt") == b"1"
    assert view.read("t/x/y.txt") == b"y" and view.lookup("t/tree") is None
    assert sorted(view.listdir("glob")) == ["one.txt", "two.txt"]  # secret.txt is ignored
    modes = view.lookup("modes/one.txt")
    assert modes is not None and modes.mode == 0o750
    assert view.read("etc/one.txt") == b"1"  # /etc exists as a directory in the image
    assert view.lookup("excl/keep.log") is None and view.read("excl/x/y.txt") == b"y"


@pytest.mark.parametrize(
    ("instruction", "error", "message"),
    [
        (
            "COPY one.txt two.txt /not-a-dir",
            DockerfileError,
            "must be a directory and end with a /",
        ),
        ("COPY ../outside /x", DockerfileError, "outside the build context"),
        ("COPY missing.txt /x", DockerfileError, "not in the build context"),
        ("COPY --chown=nobody one.txt /x", DockerfileError, "unable to find user nobody"),
        ("COPY --chmod=9z one.txt /x", DockerfileError, "invalid --chmod"),
        ("RUN --mount=type=ssh true", DockerfileError, "type=ssh is not supported"),
        ("RUN --mount=type=secret,id=tok,required true", DockerfileError, "'tok' is required"),
        ("RUN --mount=type=bind,source=nope,target=/m true", DockerfileError, "not in the build"),
    ],
)
def test_copy_and_run_errors_name_the_line(
    store: Store, tmp_path: Path, instruction: str, error: type[Exception], message: str
) -> None:
    ctx = context(tmp_path, f"FROM busybox:test\n{instruction}\n", {"one.txt": "1", "two.txt": "2"})
    with pytest.raises(error, match=message) as e:
        layercore.build(ctx, store=store, tags=["never:1"])
    assert str(e.value).startswith(f"{ctx / 'Dockerfile'}:2")
    assert "never:1" not in store.tags()


def test_failing_run_raises_build_error_and_tags_nothing(store: Store, tmp_path: Path) -> None:
    ctx = context(
        tmp_path,
        """
        FROM busybox:test AS b
        RUN echo first line && echo second line >&2 && exit 3
        """,
    )
    with pytest.raises(BuildError) as e:
        layercore.build(ctx, store=store, tags=["broken:1"])
    err = e.value
    assert (err.stage, err.line, err.exit_code) == ("b", 2, 3)
    assert "first line" in err.output and "second line" in err.output
    assert "exited with code 3" in str(err) and "second line" in str(err)
    assert "broken:1" not in store.tags()


def test_run_as_user_network_none_and_exec_form(store: Store, tmp_path: Path) -> None:
    ctx = context(
        tmp_path,
        """
        FROM busybox:test
        RUN mkdir /data && touch /data/.keep
        USER 1000:1000
        RUN ["/bin/sh", "-c", "id -u > /tmp/uid; id -g >> /tmp/uid"]
        USER root
        RUN --network=none cat /tmp/uid > /data/uid
        """,
    )
    image = store.load(layercore.build(ctx, store=store, source_date_epoch=EPOCH).digest)
    assert image.stack.read("data/uid") == b"1000\n1000\n"
    tmp = image.stack.lookup("tmp/uid")
    assert tmp is not None and (tmp.uid, tmp.gid) == (1000, 1000)


def test_add_unpacks_local_archives(store: Store, tmp_path: Path) -> None:
    ctx = context(tmp_path, "FROM busybox:test\nADD bundle.tar.gz /opt/\nADD plain.txt /opt/\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"from the archive\n"
        info = tarfile.TarInfo("pkg/file.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (ctx / "bundle.tar.gz").write_bytes(buf.getvalue())
    (ctx / "plain.txt").write_text("plain")
    image = store.load(layercore.build(ctx, store=store).digest)
    assert image.stack.read("opt/pkg/file.txt") == b"from the archive\n"
    assert image.stack.read("opt/plain.txt") == b"plain"


def test_scratch_onbuild_and_metadata_only(store: Store, tmp_path: Path) -> None:
    ctx = context(
        tmp_path,
        """
        FROM busybox:test
        ONBUILD RUN echo triggered > /onbuild.txt
        """,
    )
    layercore.build(ctx, store=store, tags=["base-with-trigger:1"])
    (ctx / "Dockerfile").write_text("FROM base-with-trigger:1\nENV X=1\n")
    child = store.load(layercore.build(ctx, store=store).digest)
    assert child.stack.read("onbuild.txt") == b"triggered\n"
    assert "OnBuild" not in child.config["config"]
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY Dockerfile /\nCMD ["x"]\n')
    scratch = store.load(layercore.build(ctx, store=store).digest)
    assert len(scratch.layers) == 1 and scratch.config["config"]["Cmd"] == ["x"]


def test_missing_context_and_dockerfile(store: Store, tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="not a directory"):
        layercore.build(tmp_path / "nope", store=store)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceNotFoundError, match="no Dockerfile"):
        layercore.build(tmp_path / "empty", store=store)
    result = layercore.build(
        tmp_path / "empty", store=store, dockerfile_text="FROM busybox:test\nENV A=1\n"
    )
    assert store.load(result.digest).config["config"]["Env"] == ["PATH=/bin", "A=1"]


def test_command_line(store: Store, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    ctx = context(tmp_path, "", {"a.txt": "a"})
    (ctx / "Dockerfile").unlink()

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "layercore", "--store", str(store.root), "build", *args],
            input=stdin, capture_output=True, text=True, check=False,
        )  # fmt: skip

    dockerfile = "FROM busybox:test\nARG V\nCOPY a.txt /\nRUN echo v=$V\n"
    done = cli(
        "-f", "-", "-t", "cli:1", "--build-arg", "V=7", "--progress", "json", "--json", str(ctx),
        stdin=dockerfile,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["digest"] == store.tags()["cli:1"] and result["tags"] == ["cli:1"]
    assert [s["line"] for s in result["steps"]] == [2, 3, 4]
    events = [json.loads(line) for line in done.stderr.splitlines()]
    assert {"event": "output", "stage": "0", "line": 4, "text": "v=7"} in events
    assert [e["event"] for e in events].count("done") == 3
    failed = cli("-f", "-", str(ctx), stdin="FROM busybox:test\nRUN exit 4\n")
    assert failed.returncode == 1 and "exited with code 4" in failed.stderr
    assert cli("--label", "novalue", str(ctx)).returncode == 2
    assert cli(str(tmp_path / "missing")).returncode == 2
    bad = cli("-f", "-", str(ctx), stdin="FROM busybox:test\nFRM x\n")
    assert bad.returncode == 1 and "Dockerfile:2:1: unknown instruction: FRM" in bad.stderr


def test_progress_on_a_terminal_is_live(store: Store, tmp_path: Path) -> None:
    """On a terminal (``--progress auto``) the steps are redrawn in place, each with its
    time and the running RUN's last output lines; a pipe gets plain lines."""
    import pty
    import select
    import subprocess
    import sys

    ctx = context(
        tmp_path,
        """
        FROM busybox:test
        RUN echo first line && echo second line
        RUN echo more
        """,
    )
    command = [sys.executable, "-m", "layercore", "--store", str(store.root), "build"]
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "100", "LINES": "40"}
    proc = subprocess.Popen(
        [*command, "-t", "live:1", str(ctx)], stdin=slave, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        assert ready, "no output for a minute"
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child's side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(60) == 0
    screen = b"".join(chunks).decode(errors="replace")
    assert "\x1b[" in screen  # redrawn in place
    assert "=> [0:2] RUN echo first line && echo second line" in screen
    assert "first line" in screen.replace("=> [0:2] RUN echo first line", "")
    assert "second line" in screen and "DONE" in screen
    assert "live:1" in store.tags()
    piped = subprocess.run(
        [*command, str(ctx)], capture_output=True, text=True, env=env, check=False
    )
    assert piped.returncode == 0 and "\x1b[" not in piped.stderr
    assert "#1 [0:2] RUN echo first line && echo second line" in piped.stderr


def test_ctrl_c_stops_the_whole_sandbox(store: Store, tmp_path: Path) -> None:
    """Ctrl-C during a RUN kills every process of the sandbox (a background one too), tags
    nothing, and the command exits 130; the store stays usable."""
    import signal
    import subprocess
    import sys
    import time

    ctx = context(tmp_path, "FROM busybox:test\nRUN (sleep 4242 &) ; echo started && sleep 4243\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "layercore", "--store", str(store.root), "build",
         "--progress", "json", "-t", "never:1", str(ctx)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        if '"started"' in line:
            break
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130

    def sleepers() -> list[str]:
        out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        return [a for a in out.splitlines() if a.startswith("sleep 424")]

    deadline = time.monotonic() + 10
    while sleepers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleepers() == []
    assert "never:1" not in store.tags()
    assert store.verify() == []


def test_build_as_an_unprivileged_user(tmp_path: Path) -> None:
    """uid 65534 builds with COPY and RUN: bwrap runs the step as root of a user namespace, and
    what it writes belongs to root in the layer, as it would in a root build; a file the image
    gives another owner keeps it."""
    import subprocess
    import tempfile

    from conftest import IS_ROOT, nobody_python

    if not IS_ROOT or shutil.which("setpriv") is None:
        pytest.fail("this test runs as root (CI does) and needs setpriv (util-linux)")
    base = Path(tempfile.mkdtemp(prefix="layercore-build-"))
    try:
        base.chmod(0o755)
        s = busybox_store(base)
        ctx = base / "ctx"
        ctx.mkdir()
        (ctx / "a.txt").write_text("a")
        (ctx / "Dockerfile").write_text(
            "FROM busybox:test\n"
            "COPY --chown=7:7 a.txt /a.txt\n"
            "RUN id -u > /uid && echo ran > /ran\n"
        )
        for dirpath, dirnames, filenames in os.walk(base):
            for name in [*dirnames, *filenames]:
                os.lchown(os.path.join(dirpath, name), 65534, 65534)
        prefix, env = nobody_python(base)
        code = (
            "import sys, layercore; from layercore import Store; "
            "r = layercore.build(sys.argv[1], store=Store(sys.argv[2]), tags=['nb:1'], "
            "source_date_epoch=1700000000); print(r.digest)"
        )
        done = subprocess.run(
            [*prefix, "-c", code, str(ctx), str(s.root)],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        image = Store(s.root).load("nb:1")
        assert image.stack.read("uid") == b"0\n" and image.stack.read("ran") == b"ran\n"
        ran = image.stack.lookup("ran")
        assert ran is not None and (ran.uid, ran.gid) == (0, 0)
        # The RUN layer holds what the command wrote, nothing it only saw: the file the image
        # gives to 7:7 (owned by the caller once extracted) is not rewritten as root's.
        run_layer = layercore.Layer.open(image.layers[-1].path)
        assert sorted(e.path for e in run_layer.entries()) == ["ran", "uid"]
        a = image.stack.lookup("a.txt")
        assert a is not None and (a.uid, a.gid) == (7, 7)
        # The RUN ran on overlay snapshots mounted in a user namespace (userxattr form).
        snaps = sorted(p.name for p in (s.root / ".layercore" / "snapshots").iterdir())
        assert snaps and all(name.endswith(".user") for name in snaps)
    finally:
        shutil.rmtree(base)


def test_run_mounts_leave_nothing_in_the_layer(store: Store, tmp_path: Path) -> None:
    """bind (context, read-only and rw), cache (kept between builds), tmpfs and secret mounts:
    the command sees them; the layer, the history and the context keep nothing of them."""
    secret = tmp_path / "token"
    secret.write_text("s3cr3t")
    ctx = context(
        tmp_path,
        """
        FROM busybox:test AS tools
        RUN mkdir /tools && echo tool > /tools/t
        FROM busybox:test
        RUN --mount=type=bind,source=data,target=/mnt cat /mnt/x > /from-context
        RUN --mount=type=bind,source=data,target=/mnt,rw echo changed > /mnt/x
        RUN --mount=type=bind,from=tools,source=/tools,target=/opt/t cat /opt/t/t > /from-stage
        RUN --mount=type=cache,target=/root/.cache,sharing=locked \
            echo run >> /root/.cache/log && wc -l < /root/.cache/log > /cache-lines
        RUN --mount=type=tmpfs,target=/scratch echo tmp > /scratch/x && ls /scratch > /tmpfs-ls
        RUN --mount=type=secret,id=token cat /run/secrets/token > /dev/null && echo ok > /secret
        """,
        {"data/x": "from the context\n", "data/ignored": "no", ".dockerignore": "data/ignored\n"},
    )
    first = store.load(layercore.build(ctx, store=store, secrets={"token": secret}).digest)
    view = first.stack
    assert view.read("from-context") == b"from the context\n"
    assert (ctx / "data" / "x").read_text() == "from the context\n"  # rw: thrown away
    assert view.read("from-stage") == b"tool\n"
    assert view.read("tmpfs-ls") == b"x\n" and view.read("secret") == b"ok\n"
    for gone in ("mnt", "opt", "scratch", "run", "root/.cache", "tools"):
        assert view.lookup(gone) is None, gone
    for layer in first.layers[1:]:
        blob = layer.path.read_bytes()
        assert b"s3cr3t" not in blob
    assert all("s3cr3t" not in (h.created_by or "") for h in first.history)
    assert first.config_bytes.find(b"s3cr3t") < 0
    # The cache mount kept its contents for the next build that runs the step.
    again = layercore.build(ctx, store=store, secrets={"token": secret}, no_cache=True)
    second = store.load(again.digest)
    assert first.stack.read("cache-lines").strip() == b"1"
    assert second.stack.read("cache-lines").strip() == b"2"


def test_run_mounts_as_a_non_root_user(store: Store, tmp_path: Path) -> None:
    """The same mounts through the other sandbox (util-linux unshare, for a USER who is not
    root): seen by the command, gone from the layer."""
    ctx = context(
        tmp_path,
        """
        FROM busybox:test
        USER app
        RUN --mount=type=bind,source=data,target=/mnt --mount=type=tmpfs,target=/t \\
            cat /mnt/x > /tmp/seen && touch /t/x && ls /t > /tmp/t-ls
        """,
        {"data/x": "seen\n"},
    )
    image = store.load(layercore.build(ctx, store=store).digest)
    seen = image.stack.lookup("tmp/seen")
    assert seen is not None and (seen.uid, seen.gid) == (1000, 1000)
    assert image.stack.read("tmp/seen") == b"seen\n" and image.stack.read("tmp/t-ls") == b"x\n"
    assert image.stack.lookup("mnt") is None and image.stack.lookup("t") is None


def test_add_of_a_url(store: Store, tmp_path: Path, web: str) -> None:
    import hashlib

    www = tmp_path / "www"
    (www / "tool.tar.gz").write_bytes(b"not unpacked: an ADD of a URL keeps the file")
    os.utime(www / "tool.tar.gz", (1_600_000_000, 1_600_000_000))
    digest = "sha256:" + hashlib.sha256((www / "tool.tar.gz").read_bytes()).hexdigest()
    ctx = context(
        tmp_path,
        f"""
        FROM busybox:test
        ADD {web}/tool.tar.gz /opt/
        ADD --checksum={digest} {web}/tool.tar.gz /pinned.bin
        """,
    )
    image = store.load(layercore.build(ctx, store=store).digest)
    got = image.stack.lookup("opt/tool.tar.gz")
    assert got is not None and (got.mode, got.mtime) == (0o600, 1_600_000_000)
    assert image.stack.read("pinned.bin") == (www / "tool.tar.gz").read_bytes()
    wrong = "sha256:" + "0" * 64
    (ctx / "Dockerfile").write_text(
        f"FROM busybox:test\nADD --checksum={wrong} {web}/tool.tar.gz /x\n"
    )
    with pytest.raises(DockerfileError, match="not to --checksum"):
        layercore.build(ctx, store=store)
    (ctx / "Dockerfile").write_text(f"FROM busybox:test\nADD {web}/missing /x\n")
    with pytest.raises(DockerfileError, match="HTTP 404"):
        layercore.build(ctx, store=store)
    (ctx / "Dockerfile").write_text(f"FROM busybox:test\nCOPY {web}/tool.tar.gz /x\n")
    with pytest.raises(DockerfileError, match="COPY cannot take a URL"):
        layercore.build(ctx, store=store)


def test_copy_parents_keeps_the_source_paths(store: Store, tmp_path: Path) -> None:
    ctx = context(
        tmp_path,
        "FROM busybox:test\nCOPY --parents */x/*.txt /out/\nCOPY --parents a/x /keep\n",
        {"a/x/f.txt": "f", "b/x/g.txt": "g", "b/x/skip.md": "no"},
    )
    image = store.load(layercore.build(ctx, store=store).digest)
    view = image.stack
    assert view.read("out/a/x/f.txt") == b"f" and view.read("out/b/x/g.txt") == b"g"
    assert view.lookup("out/b/x/skip.md") is None
    assert view.read("keep/a/x/f.txt") == b"f"
    assert image.history[-2].created_by == "COPY --parents */x/*.txt /out/ # buildkit"


def test_independent_stages_run_at_once(store: Store, tmp_path: Path) -> None:
    """Two stages that each wait for the other's mark in a shared cache mount finish only if
    they run at the same time (each gives up after 200 tries, failing the build)."""
    wait_for = (
        "touch /c/{me}; n=0; while [ ! -e /c/{other} ]; do n=$((n+1)); "
        '[ "$n" -gt 200 ] && exit 1; sleep 0.05; done; echo {me} > /{me}'
    )
    ctx = context(
        tmp_path,
        f"""
        FROM busybox:test AS a
        RUN --mount=type=cache,id=rendezvous,target=/c {wait_for.format(me="a", other="b")}
        FROM busybox:test AS b
        RUN --mount=type=cache,id=rendezvous,target=/c {wait_for.format(me="b", other="a")}
        FROM busybox:test
        COPY --from=a /a /a
        COPY --from=b /b /b
        """,
    )
    result = layercore.build(ctx, store=store)
    image = store.load(result.digest)
    assert image.stack.read("a") == b"a\n" and image.stack.read("b") == b"b\n"
    assert [s.stage for s in result.steps] == ["a", "b", "2", "2"]


def test_run_heredoc_with_a_shebang_runs_as_a_script(store: Store, tmp_path: Path) -> None:
    ctx = context(
        tmp_path,
        """
        FROM busybox:test
        RUN <<EOF
        #!/bin/sh
        echo "as a script: $0" > /script-ran
        EOF
        RUN <<EOF
        echo "through the shell" > /shell-ran
        EOF
        """,
    )
    image = store.load(layercore.build(ctx, store=store).digest)
    assert image.stack.read("script-ran") == b"as a script: /.layercore-heredoc/EOF\n"
    assert image.stack.read("shell-ran") == b"through the shell\n"
    assert image.stack.lookup(".layercore-heredoc") is None


def test_add_detects_archives_by_content(store: Store, tmp_path: Path) -> None:
    """zstd and bzip2 tars are unpacked too; a gzip file that holds no tar is copied as is."""
    import bz2
    import gzip

    import zstandard

    def tar_bytes(name: str, data: bytes) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    ctx = context(tmp_path, "FROM busybox:test\nADD z.tzst b.tbz notes.gz /opt/\n")
    (ctx / "z.tzst").write_bytes(zstandard.ZstdCompressor().compress(tar_bytes("z.txt", b"z")))
    (ctx / "b.tbz").write_bytes(bz2.compress(tar_bytes("b.txt", b"b")))
    (ctx / "notes.gz").write_bytes(gzip.compress(b"just some text, no tar"))
    image = store.load(layercore.build(ctx, store=store).digest)
    assert image.stack.read("opt/z.txt") == b"z" and image.stack.read("opt/b.txt") == b"b"
    assert gzip.decompress(image.stack.read("opt/notes.gz")) == b"just some text, no tar"
    assert image.stack.lookup("opt/z.tzst") is None
