"""Containers: an image's command run over its snapshots with a thin writable layer.

:meth:`Store.run <layercore.Store.run>` is ``docker run`` without a daemon. The image's layers
are its overlay snapshots (:meth:`Store.snapshots <layercore.Store.snapshots>`, extracted once
per layer and shared by every container and build), mounted read-only under the container's
own upper dir; nothing of the image is copied, so a container starts in the same time whatever
the image's size, and twenty containers of an image take twenty empty upper dirs of disk.

A container is a directory of the store (``.layercore/containers/NAME/``):

- ``container.json``: what it runs (written once, when it is created): the image (the reference
  given and the manifest digest), the command, environment, working directory, user, network,
  bind mounts, whether it has a terminal, and how its snapshots were made (``trusted`` overlay
  xattrs as root, ``user`` ones in a user namespace);
- ``state.json``: ``created``, ``running`` or ``exited``, the exit code and the times;
- ``upper/`` and ``work/``: the overlay's writable layer and its work dir. Every write of the
  command lands in ``upper/`` (a copy-up first for a file of the image): a deleted path is a
  whiteout (a 0/0 character device), a directory made where the image has one is opaque;
- ``skel/``: the mount points the image lacks (``/proc``, ``/dev``, the working directory,
  bind targets), the top lower dir, so that they never reach ``upper/``;
- ``l/``: short links to the snapshots (an overlay's options must fit in one page);
- ``lock``: held while the command runs (and while the container is committed or removed).

The sandbox starts from the Rust core (``_core.spawn_in_overlay``: namespaces, the overlay
mount, then bwrap, with no process between) in a session of its own.

:func:`commit` writes ``upper/`` as a layer (:meth:`Layer.from_overlay_upper
<layercore.Layer.from_overlay_upper>`) on top of the image, :func:`changes` lists it as
``docker diff`` does, :func:`start` runs the command again on the same ``upper/``, and
:func:`remove` deletes the directory. :meth:`Store.gc <layercore.Store.gc>` keeps the image and
the snapshots of every container.

It may import the lower layers (the core, errors, image, layer, store) and
:mod:`layercore.runtime.sandbox`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import posixpath
import re
import signal
import stat
import sys
import time
from contextlib import suppress
from pathlib import Path

from layercore import _core, layout
from layercore.durable import remove_tree
from layercore.errors import (
    CommandNotFoundError,
    ContainerError,
    ContainerNotFoundError,
    LayerWarning,
)
from layercore.runtime.records import Record
from layercore.runtime.sandbox import (
    DEFAULT_PATH,
    MergedLower,
    Mount,
    bwrap_command,
    chroot_command,
    host_files_for,
    id_table,
    link_lowers,
    make_skeleton,
    overlay_options,
)

# ``typing`` and the image and store modules only for the checker: ``layercore run`` of an
# image whose snapshots exist imports none of them (see :func:`launch`).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from contextlib import AbstractContextManager
    from typing import IO, Any, Literal

    from layercore.image import Image
    from layercore.store import Store

    Network = Literal["none", "host"]
    Status = Literal["created", "running", "exited"]

__all__ = [
    "BindMount",
    "ContainerChange",
    "ContainerInfo",
    "RunResult",
    "changes",
    "commit",
    "containers",
    "create",
    "inspect",
    "launch",
    "remove",
    "run",
    "start",
]

#: Docker's container names: a letter or digit, then letters, digits, ``_``, ``.``, ``-``.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
#: Signals a container gets when ``layercore run`` gets them (``docker run``'s sig-proxy).
_FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
#: The Ctrl-C that kills the container outright when it ignored the ones before.
_KILL_AFTER_INTERRUPTS = 3


class BindMount(Record):
    """A host path bound into the container (``-v HOST:CTR[:ro]``)."""

    __slots__ = ("readonly", "source", "target")
    source: Path
    target: str
    readonly: bool

    def __init__(self, source: Path, target: str, readonly: bool = False) -> None:
        self._set(source=source, target=target, readonly=readonly)

    @classmethod
    def parse(cls, spec: str) -> BindMount:
        """``HOST:CTR``, ``HOST:CTR:ro`` or ``HOST:CTR:rw``, as ``docker run -v`` takes them
        (``HOST`` absolute or relative to the working directory; ``CTR`` absolute)."""
        parts = spec.split(":")
        mode = "rw"
        if len(parts) == 3:
            mode = parts.pop()
        if len(parts) != 2 or not parts[0] or mode not in ("ro", "rw"):
            raise ValueError(f"invalid volume {spec!r}: write HOST:CONTAINER[:ro]")
        return cls(Path(parts[0]), parts[1], mode == "ro")

    def to_json(self) -> dict[str, Any]:
        return {"source": str(self.source), "target": self.target, "readonly": self.readonly}


class ContainerInfo(Record):
    """A container of the store: what it runs and how it ended (see the module docstring).

    ``image`` is the reference it was created from, as given, and ``image_digest`` that
    image's manifest digest; ``command`` the Entrypoint and command as run; ``env`` its
    ``K=V`` pairs (left out of the repr and of :meth:`to_json`: it may hold a password);
    ``exit_code`` how the command ended (128 + N for signal N), None before it ended or when
    the process that ran it was killed; ``upper_dir`` the writable layer (an overlayfs upper
    dir)."""

    __slots__ = (
        "command",
        "created",
        "env",
        "exit_code",
        "finished",
        "image",
        "image_digest",
        "mounts",
        "name",
        "network",
        "started",
        "status",
        "tty",
        "upper_dir",
        "user",
        "workdir",
    )  # fmt: skip
    _hidden = ("env",)
    name: str
    image: str
    image_digest: str
    command: tuple[str, ...]
    env: tuple[str, ...]
    workdir: str
    user: str
    network: Network
    mounts: tuple[BindMount, ...]
    tty: bool
    status: Status
    exit_code: int | None
    created: str
    started: str | None
    finished: str | None
    upper_dir: Path

    def __init__(
        self,
        *,
        name: str,
        image: str,
        image_digest: str,
        command: tuple[str, ...],
        env: tuple[str, ...],
        workdir: str,
        user: str,
        network: Network,
        mounts: tuple[BindMount, ...],
        tty: bool,
        status: Status,
        exit_code: int | None,
        created: str,
        started: str | None,
        finished: str | None,
        upper_dir: Path,
    ) -> None:
        self._set(
            name=name, image=image, image_digest=image_digest, command=command, env=env,
            workdir=workdir, user=user, network=network, mounts=mounts, tty=tty,
            status=status, exit_code=exit_code, created=created, started=started,
            finished=finished, upper_dir=upper_dir,
        )  # fmt: skip

    def size(self) -> int:
        """The bytes of the regular files in the writable layer (``docker ps --size``)."""
        total = 0
        for base, _dirs, names in os.walk(self.upper_dir):
            for name in names:
                with suppress(OSError):
                    st = os.lstat(os.path.join(base, name))
                    total += st.st_size if stat.S_ISREG(st.st_mode) else 0
        return total

    def to_json(self) -> dict[str, Any]:
        """The container as ``layercore ps --json`` prints it: everything but the environment
        (it may hold values a log should not keep; ``env`` has it)."""
        return {
            "name": self.name,
            "image": self.image,
            "image_digest": self.image_digest,
            "command": list(self.command),
            "workdir": self.workdir,
            "user": self.user,
            "network": self.network,
            "mounts": [m.to_json() for m in self.mounts],
            "tty": self.tty,
            "status": self.status,
            "exit_code": self.exit_code,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "upper_dir": str(self.upper_dir),
        }


class RunResult(Record):
    """How a run ended: the command's exit code (128 + N when signal N ended it, as a shell
    reports it) and the container as it is after the run."""

    __slots__ = ("container", "exit_code")
    exit_code: int
    container: ContainerInfo

    def __init__(self, exit_code: int, container: ContainerInfo) -> None:
        self._set(exit_code=exit_code, container=container)


class ContainerChange(Record):
    """One line of ``docker diff``: ``A`` (added), ``C`` (changed) or ``D`` (deleted), and the
    path from the container's root."""

    __slots__ = ("kind", "path")
    kind: Literal["A", "C", "D"]
    path: str

    def __init__(self, kind: Literal["A", "C", "D"], path: str) -> None:
        self._set(kind=kind, path=path)

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"


# -- creating and running ------------------------------------------------------------------------


def run(
    store: Store,
    image: str,
    cmd: Sequence[str] | None = None,
    *,
    name: str | None = None,
    env: Mapping[str, str] | Sequence[str] | None = None,
    workdir: str | None = None,
    user: str | None = None,
    mounts: Sequence[BindMount | str] = (),
    network: Network = "none",
    entrypoint: Sequence[str] | None = None,
    rm: bool = False,
    tty: bool = False,
    interactive: bool = False,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
    stdin: IO[Any] | int | None = None,
) -> RunResult:
    """Creates a container of ``image`` (see :func:`create`) and runs it (see :func:`start`);
    with ``rm``, removes it when the command has ended, however it ended."""
    info = create(
        store,
        image,
        cmd,
        name=name,
        env=env,
        workdir=workdir,
        user=user,
        mounts=mounts,
        network=network,
        entrypoint=entrypoint,
        tty=tty,
    )
    try:
        return start(
            store, info.name, interactive=interactive, stdout=stdout, stderr=stderr, stdin=stdin
        )
    finally:
        if rm:
            remove(store, info.name)


def create(
    store: Store,
    image: str,
    cmd: Sequence[str] | None = None,
    *,
    name: str | None = None,
    env: Mapping[str, str] | Sequence[str] | None = None,
    workdir: str | None = None,
    user: str | None = None,
    mounts: Sequence[BindMount | str] = (),
    network: Network = "none",
    entrypoint: Sequence[str] | None = None,
    tty: bool = False,
) -> ContainerInfo:
    """A new container of ``image`` (a tag or digest of the store), not started.

    Its command is the image's Entrypoint followed by ``cmd`` (else the image's Cmd);
    ``entrypoint`` replaces the image's. ``env`` adds to the image's Env (a ``"K"`` without
    ``=`` takes ``K`` from this process's environment, as ``docker run -e K`` does);
    ``workdir`` (absolute) and ``user`` (``name|uid[:group|gid]``) replace the image's;
    ``mounts`` are host paths bound in (a missing host directory is created, as Docker does);
    ``network`` is ``"none"`` (a private loopback) or ``"host"``. The image's snapshots are
    made if missing (the first run of an image pays for extracting its layers once)."""
    import warnings

    loaded = store.load(image)
    record = _record(
        image, loaded.digest, loaded.config.get("config"), cmd, name=name, env=env,
        workdir=workdir, user=user, mounts=mounts, network=network, entrypoint=entrypoint,
        tty=tty,
    )  # fmt: skip
    with store.writing():
        with warnings.catch_warnings():
            if record["xattrs"] == "user":
                # Expected: the caller cannot give files other owners; in the container's user
                # namespace, where only root is mapped (to the caller), they are root's anyway.
                warnings.filterwarnings("ignore", "owner not restored", LayerWarning)
            snapshots = store.snapshots(loaded.layers, xattrs=record["xattrs"])
        return _make(store.containers_dir(), record, snapshots)


def launch(
    root: str,
    image: str,
    cmd: Sequence[str] | None = None,
    *,
    name: str | None = None,
    env: Mapping[str, str] | Sequence[str] | None = None,
    workdir: str | None = None,
    user: str | None = None,
    mounts: Sequence[BindMount | str] = (),
    network: Network = "none",
    entrypoint: Sequence[str] | None = None,
    rm: bool = False,
    tty: bool = False,
    interactive: bool = False,
) -> RunResult | None:
    """:func:`run` of the tag ``image`` of the store at ``root`` whose snapshots all exist,
    reading the store through :mod:`layercore.layout` (the image's manifest and config, each
    checked against its digest) without the store and image modules: what ``layercore run``
    does first, since those modules cost a process more than the rest of a run. None (and
    nothing done) when that does not apply: ``image`` is no tag of the index, names an image
    index or an invalid manifest, or a snapshot is missing; :func:`run` then does it all."""
    found = _tagged_image(root, image)
    if found is None:
        return None
    digest, config, diff_ids = found
    xattrs = _xattrs()
    snapshots = [
        Path(layout.snapshot_path(root, c.removeprefix("sha256:"), xattrs))
        for c in layout.chains(diff_ids)
    ]
    if not all(path.is_dir() for path in snapshots):
        return None
    record = _record(
        image, digest, config.get("config"), cmd, name=name, env=env, workdir=workdir,
        user=user, mounts=mounts, network=network, entrypoint=entrypoint, tty=tty,
    )  # fmt: skip
    containers_dir = Path(root, layout.PRIVATE, "containers")
    with layout.writer_lock(root):
        if not all(path.is_dir() for path in snapshots):  # a gc came first
            return None
        info = _make(containers_dir, record, snapshots)
    try:
        return _start(containers_dir, info.name, interactive=interactive)
    finally:
        if rm:
            _remove(containers_dir, info.name, writing=lambda: layout.writer_lock(root))


#: The manifest media types :func:`launch` reads itself (an index goes through the store).
_MANIFESTS = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


def _tagged_image(root: str, tag: str) -> tuple[str, dict[str, Any], list[str]] | None:
    """``(manifest digest, config, diff_ids)`` of the image the store at ``root`` tags ``tag``,
    its manifest and config read and checked against their digests; None if there is none,
    or if anything about it is not plain (the store then says what)."""
    entries = layout.read_index(root)
    if entries is None:
        return None
    matches = [e for e in entries if layout.tag_of(e) == tag]
    if len(matches) != 1 or matches[0].get("mediaType") not in _MANIFESTS:
        return None
    manifest = _verified_json(root, matches[0].get("digest"))
    descriptor = manifest.get("config") if manifest is not None else None
    if manifest is None or not isinstance(descriptor, dict):
        return None
    config = _verified_json(root, descriptor.get("digest"))
    rootfs = config.get("rootfs") if config is not None else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    layers = manifest.get("layers")
    if (
        config is None
        or not isinstance(diff_ids, list)
        or not all(isinstance(d, str) for d in diff_ids)
        or not isinstance(layers, list)
        or len(layers) != len(diff_ids)
    ):
        return None
    return str(matches[0]["digest"]), config, diff_ids


def _verified_json(root: str, digest: object) -> dict[str, Any] | None:
    """The JSON object in the blob ``digest``, if its bytes have that digest."""
    if not isinstance(digest, str) or not digest.startswith("sha256:") or "/" in digest:
        return None
    try:
        with open(layout.blob_path(root, digest), "rb") as f:
            data = f.read(4 * 1024 * 1024 + 1)
    except OSError:
        return None
    if len(data) > 4 * 1024 * 1024 or _core.Digester(data).digest() != digest:
        return None
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _record(
    image: str,
    digest: str,
    config: object,
    cmd: Sequence[str] | None,
    *,
    name: str | None,
    env: Mapping[str, str] | Sequence[str] | None,
    workdir: str | None,
    user: str | None,
    mounts: Sequence[BindMount | str],
    network: str,
    entrypoint: Sequence[str] | None,
    tty: bool,
) -> dict[str, Any]:
    """What ``container.json`` holds for a new container of ``image`` (manifest ``digest``,
    the config's ``config`` object ``config``), the arguments checked."""
    if network not in ("none", "host"):
        raise ValueError(f"network {network!r}: use none or host")
    runtime = _runtime(config, image)
    argv = _command(runtime, cmd, entrypoint)
    if not argv:
        raise ContainerError(
            "the image has no command (Entrypoint or Cmd): give one after the image", image
        )
    workdir = workdir or runtime["WorkingDir"] or "/"
    if not workdir.startswith("/"):
        raise ValueError(f"working directory {workdir!r} must be an absolute path")
    binds = [_ready(BindMount.parse(m) if isinstance(m, str) else m) for m in mounts]
    name = name or _generated_name(image)
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid container name {name!r}: a letter or digit, then letters, digits, "
            "'_', '.' or '-' (at most 128)"
        )
    return {
        "name": name,
        "image": image,
        "image_digest": digest,
        "command": argv,
        "env": _environment(runtime["Env"] or [], env),
        "workdir": workdir,
        "user": user if user is not None else runtime["User"] or "",
        "network": network,
        "mounts": [m.to_json() for m in binds],
        "tty": tty,
        "xattrs": _xattrs(),
        "created": _now(),
    }


def _xattrs() -> str:
    """The form this process makes and mounts snapshots in: ``trusted.overlay`` xattrs as
    root, ``user.overlay`` ones (``userxattr``) in a user namespace."""
    return "user" if os.geteuid() != 0 else "trusted"


def _make(
    containers_dir: Path, record: Mapping[str, Any], snapshots: Sequence[Path]
) -> ContainerInfo:
    """Makes the container ``record`` describes over ``snapshots`` (bottom first) in
    ``containers_dir``: in a temp directory, renamed into place (so a name is taken whole or
    not at all). The caller holds off gc."""
    name = record["name"]
    final = containers_dir / name
    if os.path.lexists(final):
        raise ContainerError(f"a container named {name!r} exists already", name)
    tmp = containers_dir / f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    tmp.mkdir(parents=True)
    try:
        link_lowers(tmp, snapshots)
        points = [("proc", True), ("dev", True), (record["workdir"], True)]
        points += [(f, False) for f in host_files_for(record["network"])]
        points += [(m["target"], os.path.isdir(m["source"])) for m in record["mounts"]]
        make_skeleton(MergedLower(snapshots, record["xattrs"]), tmp / "skel", points)
        for part in ("upper", "work", "merged"):
            (tmp / part).mkdir(mode=0o755)
        os.chmod(tmp / "upper", 0o755)
        _write(tmp / "container.json", record)
        _write(tmp / "state.json", {"status": "created"})
        try:
            tmp.rename(final)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise ContainerError(f"a container named {name!r} exists already", name) from None
            raise
    finally:
        if tmp.exists():
            remove_tree(tmp)
    return _info(final, record, {"status": "created"})


def start(
    store: Store,
    name: str,
    *,
    interactive: bool = False,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
    stdin: IO[Any] | int | None = None,
) -> RunResult:
    """Runs the container's command on its writable layer (what an earlier run wrote is
    there) and waits for it. ``stdout`` and ``stderr`` are this process's unless given; the
    command reads ``stdin`` (default: this process's) only when ``interactive``. A container
    made with ``tty`` gets a pseudo-terminal, relayed to them (raw mode when this process's
    stdin is a terminal, so Ctrl-C reaches the command as it would in a shell). The signals
    this process gets (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2) are passed to the
    command; a third Ctrl-C kills it. Raises :class:`ContainerError` if it runs already."""
    return _start(
        store.containers_dir(),
        name,
        interactive=interactive,
        stdout=stdout,
        stderr=stderr,
        stdin=stdin,
    )


def _start(
    containers_dir: Path,
    name: str,
    *,
    interactive: bool = False,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
    stdin: IO[Any] | int | None = None,
) -> RunResult:
    directory = _directory(containers_dir, name)
    record = _read(directory / "container.json", name)
    lock = _open_lock(directory)
    try:
        if not _take(lock):
            raise ContainerError(f"container {name!r} is running", name)
        sandbox = _sandbox(directory, record)
        before = _read(directory / "state.json", name)
        state: dict[str, Any] = {"status": "running", "started": _now(), "pid": os.getpid()}
        _write(directory / "state.json", state)
        try:
            code = _supervise(
                sandbox,
                tty=bool(record.get("tty")),
                interactive=interactive,
                stdout=stdout,
                stderr=stderr,
                stdin=stdin,
            )
        except ContainerError:
            _write(directory / "state.json", before)  # the command never ran
            raise
        except BaseException:
            _write(directory / "state.json", _ended(state, None))
            raise
        state = _ended(state, code)
        _write(directory / "state.json", state)
    finally:
        os.close(lock)
    return RunResult(code, _info(directory, record, state))


def _ended(state: Mapping[str, Any], code: int | None) -> dict[str, Any]:
    return {"status": "exited", "started": state["started"], "finished": _now(), "exit_code": code}


class _Sandbox:
    """How a container's command starts: ``argv`` (bwrap, or ``unshare`` for a root caller
    running another user) with the environment ``env`` (None: this process's), in a private
    mount namespace (and user namespace with ``userns``) where the overlay ``options`` is
    mounted on ``directory/merged``."""

    __slots__ = ("argv", "directory", "env", "options", "userns")

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str] | None,
        directory: Path,
        options: str,
        userns: bool,
    ) -> None:
        self.argv, self.env, self.directory = argv, env, directory
        self.options, self.userns = options, userns


def _sandbox(directory: Path, record: Mapping[str, Any]) -> _Sandbox:
    """How the container in ``directory`` starts (see :class:`_Sandbox`)."""
    userns = record["xattrs"] == "user"
    if userns != (os.geteuid() != 0):
        raise ContainerError(
            "the container was made "
            + ("without" if userns else "with")
            + " root; run it as the user that made it",
            record["name"],
        )
    network = record["network"]
    env = dict(_split(e) for e in record["env"])
    env.setdefault("PATH", DEFAULT_PATH)
    mounts = [
        Mount("bind", Path(m["source"]), m["target"], bool(m["readonly"])) for m in record["mounts"]
    ]
    files = host_files_for(network)
    lower = _lower(directory, record["xattrs"])
    uid, gid = _ids(record["user"], lower, record["name"])
    _check_command(
        record, env["PATH"], MergedLower([*lower.snapshots, directory / "upper"], record["xattrs"])
    )
    merged = directory / "merged"
    argv = record["command"]
    workdir = record["workdir"]
    process_env: dict[str, str] | None = None
    if (uid, gid) != (0, 0) and not userns:
        command = chroot_command(
            merged, workdir, uid, gid, network, files, mounts, argv, prepare=False
        )
        process_env = env
    else:
        command = bwrap_command(merged, workdir, network, files, mounts, env, argv, userns=userns)
        if uid != 0 or gid != 0:
            at = command.index("--chdir")
            command[at:at] = ["--unshare-user", "--uid", str(uid), "--gid", str(gid)]
    lowers = [f"l/{i}" for i in reversed(range(len(lower.layers)))]  # as link_lowers named them
    options = overlay_options(lowers, userns=userns)
    return _Sandbox(command, process_env, directory, options, userns)


def _supervise(
    sandbox: _Sandbox,
    *,
    tty: bool,
    interactive: bool,
    stdout: IO[Any] | int | None,
    stderr: IO[Any] | int | None,
    stdin: IO[Any] | int | None,
) -> int:
    """Starts ``sandbox`` (the Rust core forks, makes the namespaces, mounts the overlay and
    execs the command: no ``unshare``, ``sh`` or ``mount`` process between), passes it this
    process's signals, and returns its exit code (128 + N for a signal);
    :class:`ContainerError` if it could not start."""
    master = slave = devnull = -1
    if tty:
        master, slave = os.openpty()
        _copy_window_size(stdin, master)
        fds = (slave, slave, slave)
    else:
        if interactive:
            source = _fd(stdin, sys.stdin)
        else:
            source = devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        fds = (source, _fd(stdout, sys.stdout), _fd(stderr, sys.stderr))
    # Handlers first: a signal this process catches is reset to its default in the child at
    # exec (one it ignores would stay ignored: a shell starts background jobs so).
    forwarding = _forwarding()
    try:
        with forwarding:
            # What this process wrote first comes out first.
            for stream, default in ((stdout, sys.stdout), (stderr, sys.stderr)):
                if not isinstance(stream, int):
                    with suppress(OSError, ValueError, AttributeError):
                        (stream or default).flush()
            try:
                pid = _core.spawn_in_overlay(
                    sandbox.argv,
                    sandbox.directory,
                    sandbox.options,
                    userns=sandbox.userns,
                    stdio=fds,
                    terminal=tty,
                    env=None if sandbox.env is None else list(sandbox.env.items()),
                )
            except FileNotFoundError as e:
                raise ContainerError(
                    f"running a container needs {sandbox.argv[0]} on PATH "
                    "(Debian: bubblewrap, util-linux)"
                ) from e
            finally:
                for fd in (slave, devnull):
                    if fd >= 0:
                        os.close(fd)
            forwarding.child = _Child(pid)
            if tty:
                _relay(master, interactive=interactive, stdin=stdin, stdout=stdout)
            code = forwarding.child.wait()
    finally:
        if master >= 0:
            os.close(master)
    return 128 - code if code < 0 else code


class _Child:
    """A started sandbox, by its pid (it leads its own session and process group)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _copy_window_size(source: IO[Any] | int | None, master: int) -> None:
    """Gives the pseudo-terminal ``master`` the window size of ``source`` (default: this
    process's stdin), or 24x80 when that is not a terminal."""
    import struct
    import termios

    size = struct.pack("HHHH", 24, 80, 0, 0)
    with suppress(AttributeError, OSError, ValueError):
        size = fcntl.ioctl(_fd(source, sys.stdin), termios.TIOCGWINSZ, size)
    with suppress(OSError):
        fcntl.ioctl(master, termios.TIOCSWINSZ, size)


class _forwarding:
    """Passes this process's signals to the command while it runs (only where signal
    handlers may be set: the main thread): to every process of its session's group but the
    sandbox's own (bwrap's monitor and init, or ``unshare``), as a terminal's Ctrl-C reaches
    a shell's foreground job; a third Ctrl-C kills the whole group. ``child`` is set once the
    sandbox is started; a signal before that only counts."""

    def __init__(self) -> None:
        self.child: _Child | None = None
        self.interrupts = 0
        self.saved: dict[int, Any] = {}
        self.installed = False

    def __enter__(self) -> _forwarding:
        try:
            for sig in _FORWARDED:
                self.saved[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: signals stay as they are
            for number, handler in self.saved.items():
                signal.signal(number, handler)
            self.saved.clear()
        else:
            self.installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        if exc[0] is not None and self.child is not None and self.child.poll() is None:
            with suppress(OSError):
                os.killpg(self.child.pid, signal.SIGKILL)
            self.child.wait()

    def _handle(self, sig: int, _frame: object) -> None:
        if sig == signal.SIGINT:
            self.interrupts += 1
        if self.child is None:
            return
        if sig == signal.SIGINT and self.interrupts >= _KILL_AFTER_INTERRUPTS:
            with suppress(OSError):
                os.killpg(self.child.pid, signal.SIGKILL)
            return
        for pid in _command_processes(self.child.pid):
            with suppress(OSError):
                os.kill(pid, sig)


def _command_processes(leader: int) -> list[int]:
    """The processes of the process group ``leader`` leads (the sandbox started with
    ``setsid``), but the sandbox's: the leader itself and, when it is bwrap, its init (the
    PID namespace's process 1, whose child is the command). A signal bwrap gets would end
    bwrap, not pass it on."""
    members: list[tuple[int, int]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                text = f.read()
        except OSError:
            continue
        fields = text[text.rindex(b")") + 2 :].split()
        if int(fields[2]) == leader:
            members.append((int(entry), int(fields[1])))
    sandbox = {leader}
    with suppress(OSError), open(f"/proc/{leader}/comm", "rb") as f:
        if f.read().strip() == b"bwrap":
            sandbox.update(pid for pid, parent in members if parent == leader)
    return [pid for pid, _ in members if pid not in sandbox]


def _relay(
    master: int,
    *,
    interactive: bool,
    stdin: IO[Any] | int | None,
    stdout: IO[Any] | int | None,
) -> None:
    """Copies the pseudo-terminal's output to ``stdout`` and, when ``interactive``, ``stdin``
    to it, until the command's side closes; this process's terminal is raw meanwhile."""
    import select
    import termios
    import tty

    out_fd = _fd(stdout, sys.stdout)
    in_fd = _fd(stdin, sys.stdin) if interactive else -1
    saved = None
    if in_fd >= 0 and os.isatty(in_fd):
        saved = termios.tcgetattr(in_fd)
        tty.setraw(in_fd, termios.TCSANOW)  # what was typed ahead is kept for the command
    resize = None
    if in_fd >= 0 and os.isatty(in_fd):
        with suppress(ValueError):  # only the main thread may set it
            resize = signal.signal(signal.SIGWINCH, lambda *_: _copy_window_size(in_fd, master))
    try:
        readers = [master] + ([in_fd] if in_fd >= 0 else [])
        while True:
            try:
                ready, _, _ = select.select(readers, [], [])
            except InterruptedError:
                continue
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError as e:
                    if e.errno != errno.EIO:
                        raise
                    data = b""
                if not data:
                    break
                _write_all(out_fd, data)
            if in_fd in ready:
                data = os.read(in_fd, 65536)
                if data:
                    _write_all(master, data)
                else:
                    readers.remove(in_fd)
                    # End of input: end of file for the command, as a terminal's Ctrl-D.
                    _write_all(master, termios.tcgetattr(master)[6][termios.VEOF])
    finally:
        if saved is not None:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
        if resize is not None:
            signal.signal(signal.SIGWINCH, resize)


def _fd(stream: IO[Any] | int | None, default: IO[Any]) -> int:
    if isinstance(stream, int):
        return stream
    return (stream or default).fileno()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- looking at containers -----------------------------------------------------------------------


def containers(store: Store) -> list[ContainerInfo]:
    """The store's containers, oldest first."""
    root = store.containers_dir()
    out = []
    with suppress(FileNotFoundError):
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            with suppress(ContainerNotFoundError):  # removed meanwhile
                out.append(inspect(store, entry.name))
    return sorted(out, key=lambda c: c.created)


def inspect(store: Store, name: str) -> ContainerInfo:
    """The container ``name``; :class:`ContainerNotFoundError` if the store has none."""
    directory = _directory(store.containers_dir(), name)
    record = _read(directory / "container.json", name)
    return _info(directory, record, _state(directory))


def changes(store: Store, name: str) -> list[ContainerChange]:
    """What the container changed, as ``docker diff`` lists it, sorted by path: ``A`` for a
    path the image does not have, ``C`` for one it has (a directory is ``C`` when something
    in it changed), ``D`` for one deleted (a whiteout; inside a directory that was replaced,
    every path of the image's that the new one lacks)."""
    directory = _directory(store.containers_dir(), name)
    record = _read(directory / "container.json", name)
    lower = _lower(directory, record["xattrs"])
    opaque = f"{record['xattrs']}.overlay.opaque"
    out: list[ContainerChange] = []

    def visit(upper: str, rel: str) -> None:
        with os.scandir(upper) as it:
            entries = [(e, e.stat(follow_symlinks=False)) for e in it]
        gone = {e.name for e, st in entries if _is_whiteout(e.path, st)}
        if rel and _xattr(upper, opaque) == b"y" and lower.lookup(rel) is not None:
            # A replaced directory: what the image had there and the new one lacks is gone.
            present = {e.name for e, _st in entries} - gone
            for name in sorted(set(lower.listdir(rel)) - present):
                out.append(ContainerChange("D", f"{rel}/{name}"))
        for entry, st in entries:
            path = f"{rel}/{entry.name}"
            if entry.name in gone:
                out.append(ContainerChange("D", path))
                continue
            out.append(ContainerChange("C" if lower.lookup(path) is not None else "A", path))
            if stat.S_ISDIR(st.st_mode):
                visit(entry.path, path)

    visit(os.fspath(directory / "upper"), "")
    return sorted(out, key=lambda c: c.path.split("/"))


def commit(
    store: Store,
    name: str,
    tag: str | None = None,
    *,
    message: str | None = None,
    author: str | None = None,
) -> Image:
    """The container's image with its writable layer on top (``docker commit``): the upper
    dir written as a layer (:meth:`Store.overlay_layer <layercore.Store.overlay_layer>`) and
    a history entry whose ``created_by`` is the command and ``comment`` the ``message``.
    Saved in the store (under ``tag`` if given). The container must not be running."""
    directory = _directory(store.containers_dir(), name)
    record = _read(directory / "container.json", name)
    lock = _open_lock(directory)
    try:  # held while the layer is written: the container cannot start meanwhile
        if not _take(lock):
            raise ContainerError(
                f"container {name!r} is running: commit it when it has ended", name
            )
        image = store.load(record["image_digest"])
        userns = record["xattrs"] == "user"
        layer = store.overlay_layer(
            directory / "upper",
            lower=image.stack if userns else None,
            owner="inherit" if userns else "numeric",
        )
    finally:
        os.close(lock)
    committed = image.append(
        layer, created_by=" ".join(record["command"]), comment=message, author=author
    )
    return store.save(committed, tag)


def remove(store: Store, name: str, *, force: bool = False) -> None:
    """Removes the container and its writable layer. A running one is an error unless
    ``force``, which stops it first: SIGTERM to the ``layercore`` process that runs it (which
    passes it to the command and puts its terminal back), SIGKILL after
    :data:`STOP_TIMEOUT` seconds (bwrap's sandbox dies with that process)."""
    _remove(store.containers_dir(), name, writing=store.writing, force=force)


def _remove(
    containers_dir: Path,
    name: str,
    *,
    writing: Callable[[], AbstractContextManager[None]],
    force: bool = False,
) -> None:
    """:func:`remove`, holding off gc with ``writing()`` while the directory goes."""
    directory = _directory(containers_dir, name)
    lock = _open_lock(directory)
    try:
        if not _take(lock):
            if not force:
                raise ContainerError(
                    f"container {name!r} is running: stop it, or remove it with --force", name
                )
            _stop(directory, lock)
        # Renamed away first: the name is free at once, and a crash leaves a ``.rm`` dir
        # that the store's next open (or gc) removes.
        with writing():
            gone = directory.with_name(f".{name}.{os.getpid()}.{os.urandom(4).hex()}.rm")
            directory.rename(gone)
            remove_tree(gone)
    finally:
        os.close(lock)


#: How long ``remove(force=True)`` waits for a container to end after SIGTERM (``docker
#: stop``'s default grace).
STOP_TIMEOUT = 10.0


def _stop(directory: Path, lock: int) -> None:
    """Stops the container in ``directory`` that another process runs, and takes ``lock``."""
    pid = _state(directory).get("pid")
    deadline = time.monotonic() + STOP_TIMEOUT
    sig = signal.SIGTERM
    while True:
        if isinstance(pid, int):
            with suppress(OSError):
                os.kill(pid, sig)
        while time.monotonic() < deadline or sig == signal.SIGKILL:
            if _take(lock):
                return
            time.sleep(0.05)
        sig = signal.SIGKILL


def _open_lock(directory: Path) -> int:
    """The container's lock file, open: held (exclusive) by whatever runs, commits or removes
    it."""
    return os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


def _take(lock: int) -> bool:
    """Takes ``lock`` if no one holds it."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


# -- helpers -------------------------------------------------------------------------------------


def _runtime(config: object, image: str) -> dict[str, Any]:
    """The fields of an image config's ``config`` object a run uses (absent or null ones
    None), each checked for its type."""
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ContainerError("the image's config is invalid: 'config' is not an object", image)
    out: dict[str, Any] = {}
    for key in ("Entrypoint", "Cmd", "Env"):
        value = config.get(key)
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(v, str) for v in value)
        ):
            raise ContainerError(
                f"the image's config is invalid: {key} is not a list of strings", image
            )
        out[key] = value
    for key in ("WorkingDir", "User"):
        value = config.get(key)
        if value is not None and not isinstance(value, str):
            raise ContainerError(f"the image's config is invalid: {key} is not a string", image)
        out[key] = value or None
    return out


def _command(
    runtime: Mapping[str, Any], cmd: Sequence[str] | None, entrypoint: Sequence[str] | None
) -> list[str]:
    """Docker's rule: Entrypoint + Cmd; a given command replaces Cmd, a given entrypoint
    replaces Entrypoint and drops the image's Cmd."""
    ep = list(entrypoint) if entrypoint is not None else list(runtime["Entrypoint"] or ())
    if cmd:
        return [*ep, *cmd]
    if entrypoint is not None:
        return ep
    return [*ep, *(runtime["Cmd"] or ())]


def _environment(
    image_env: Sequence[str], env: Mapping[str, str] | Sequence[str] | None
) -> list[str]:
    merged = dict(_split(e) for e in image_env)
    items: list[tuple[str, str | None]] = []
    if env is not None and hasattr(env, "items"):  # a mapping (no collections.abc at start-up)
        items = [(str(k), v) for k, v in env.items()]
    elif env is not None:
        for item in env:
            key, sep, text = item.partition("=")
            items.append((key, text if sep else None))
    for key, given in items:
        if not key:
            raise ValueError(f"invalid environment variable ={given}: no name")
        value = os.environ.get(key) if given is None else given
        if value is not None:
            merged[key] = value
    return [f"{k}={v}" for k, v in merged.items()]


def _split(item: str) -> tuple[str, str]:
    key, _, value = item.partition("=")
    return key, value


def _ready(mount: BindMount) -> BindMount:
    """``mount`` with an absolute host path (a missing one made a directory, as Docker does)
    and a normalised absolute target."""
    if not mount.target.startswith("/"):
        raise ValueError(f"mount target {mount.target!r} must be an absolute path")
    source = mount.source.absolute()
    if not os.path.lexists(source):
        source.mkdir(parents=True)
    target = os.path.normpath(mount.target)
    if target == "/":
        raise ValueError("a mount cannot replace the container's root")
    return BindMount(source, target, mount.readonly)


def _check_command(record: Mapping[str, Any], path: str, view: MergedLower) -> None:
    """Raises :class:`CommandNotFoundError` unless the command's program is a file of the
    container's tree (its image and writable layer), found as ``execvp`` finds it: by
    ``PATH`` for a bare name, from the working directory for a relative path. A program
    that may come from a bind mount, ``/proc`` or ``/dev`` is left to the sandbox."""
    program = record["command"][0]
    if "/" in program:
        candidates = [posixpath.normpath(posixpath.join(record["workdir"], program))]
    else:
        candidates = [posixpath.join(d, program) for d in path.split(":") if d.startswith("/")]
    outside = ["/proc", "/dev", *(m["target"] for m in record["mounts"])]
    for candidate in candidates:
        if any(candidate == o or candidate.startswith(o + "/") for o in outside):
            return
        resolved = view.resolve(candidate)
        found = view.lookup(resolved) if resolved else None
        if found is not None and not stat.S_ISDIR(found[0].st_mode):
            return
    if "/" in program:
        why = f"exec: {program!r}: no such file or directory"
    else:
        why = f"exec: {program!r}: executable file not found in $PATH ({path})"
    raise CommandNotFoundError(why, record["name"])


def _ids(user: str, lower: MergedLower, name: str) -> tuple[int, int]:
    """``user[:group]`` as ids, Docker's way: names from the image's ``/etc/passwd`` and
    ``/etc/group``; a uid not in ``/etc/passwd`` gets group 0."""
    if not user:
        return 0, 0
    spec, _, group = user.partition(":")
    passwd = _table(lower, "etc/passwd")
    if spec.isdigit():
        uid = int(spec)
        gid = next((g for u, g in passwd.values() if u == uid), 0)
    elif spec in passwd:
        uid, gid = passwd[spec]
    else:
        raise ContainerError(
            f"unable to find user {spec}: no matching entries in passwd file", name
        )
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            groups = _table(lower, "etc/group")
            if group not in groups:
                raise ContainerError(
                    f"unable to find group {group}: no matching entries in group file", name
                )
            gid = groups[group][0]
    return uid, gid


def _table(lower: MergedLower, rel: str) -> dict[str, tuple[int, int]]:
    """``name -> (id, gid)`` of an ``/etc/passwd``-like file of the image (read from the
    snapshots, so no index of the image is needed)."""
    path = lower.resolve(rel)
    found = lower.lookup(path) if path else None
    if found is None or not stat.S_ISREG(found[0].st_mode):
        return {}
    try:
        return id_table(found[2].read_text(errors="replace"))
    except OSError:
        return {}


def _lower(directory: Path, xattrs: str) -> MergedLower:
    links = sorted((directory / "l").iterdir(), key=lambda p: int(p.name))
    return MergedLower(links, xattrs)


def _is_whiteout(path: str, st: os.stat_result) -> bool:
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return True
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_size == 0
        and _xattr(path, "user.overlay.whiteout") is not None
    )


def _xattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def _directory(containers_dir: Path, name: str) -> Path:
    directory = containers_dir / name
    if not _NAME.fullmatch(name) or not (directory / "container.json").is_file():
        raise ContainerNotFoundError(f"no container named {name!r}", name)
    return directory


def _read(path: Path, name: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ContainerNotFoundError(f"no container named {name!r}", name) from None
    except ValueError as e:
        raise ContainerError(f"{path.name} is damaged: {e}", name) from None
    if not isinstance(value, dict):
        raise ContainerError(f"{path.name} is damaged: not a JSON object", name)
    return value


def _state(directory: Path) -> dict[str, Any]:
    """The state file, corrected: a container whose lock is free is not running (the process
    that ran it died)."""
    state = _read(directory / "state.json", directory.name)
    if state.get("status") == "running" and not _locked(directory / "lock"):
        state = {**state, "status": "exited", "exit_code": None}
    return state


def _locked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _info(directory: Path, record: Mapping[str, Any], state: Mapping[str, Any]) -> ContainerInfo:
    try:
        return ContainerInfo(
            name=record["name"],
            image=record["image"],
            image_digest=record["image_digest"],
            command=tuple(record["command"]),
            env=tuple(record["env"]),
            workdir=record["workdir"],
            user=record["user"],
            network=record["network"],
            mounts=tuple(
                BindMount(Path(m["source"]), m["target"], bool(m["readonly"]))
                for m in record["mounts"]
            ),
            tty=bool(record["tty"]),
            status=state.get("status", "created"),
            exit_code=state.get("exit_code"),
            created=record["created"],
            started=state.get("started"),
            finished=state.get("finished"),
            upper_dir=directory / "upper",
        )
    except (KeyError, TypeError) as e:
        raise ContainerError(f"container.json is damaged: {e}", directory.name) from None


def _write(path: Path, value: Mapping[str, Any]) -> None:
    """``value`` as JSON at ``path``, replaced whole (a temp file renamed over it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _generated_name(image: str) -> str:
    """``REPO-XXXXXX``: the image's repository's last part and six random hex digits."""
    base = image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]
    base = re.sub(r"[^A-Za-z0-9_.-]", "", base).lstrip("._-") or "container"
    return f"{base[:40]}-{os.urandom(3).hex()}"
