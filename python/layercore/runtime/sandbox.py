"""The sandbox a command runs in: an overlay of snapshots, bwrap (or util-linux ``unshare``).

Both the builder's ``RUN`` and ``layercore run`` use it. A command runs over an overlay of an
image's snapshots (:meth:`Store.snapshots <layercore.Store.snapshots>`) with a writable upper
dir: the overlay is mounted in a private mount namespace (a user namespace with ``userxattr``
for a caller that is not root; bwrap 0.8 cannot mount overlays itself), then the command runs
with ``bwrap`` (new mount, PID, IPC and UTS namespaces, the network unless ``none``, ``/proc``
and a minimal ``/dev``), or, to run as another user when the caller is root, with ``unshare``
(:func:`chroot_command`). Mount points the image lacks are made in a skeleton directory, the
top lower dir (:func:`make_skeleton`), so they never reach the upper dir.

It may import the standard library and :mod:`layercore.runtime.records` only: it is a lower
layer of ``layercore.build`` and of ``layercore.runtime``, and ``layercore run`` imports it at
start-up (so nothing here is imported that a run does not use).
"""

from __future__ import annotations

import os
import stat
from contextlib import suppress
from pathlib import Path

from layercore.runtime.records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Mapping, Sequence
    from typing import Literal

__all__ = [
    "DEFAULT_PATH",
    "HOST_FILES",
    "MOUNT_FAILED_CODE",
    "MOUNT_FAILED_MARK",
    "MergedLower",
    "Mount",
    "OverlayUnavailable",
    "bwrap_command",
    "chroot_command",
    "host_files_for",
    "id_table",
    "in_overlay",
    "kill_group",
    "link_lowers",
    "make_skeleton",
    "overlay_failed",
    "overlay_options",
    "overlay_works",
    "unmount",
]

#: The ``PATH`` a command gets when the image sets none (Docker's default).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The host's files a command with a network sees (read-only).
HOST_FILES = ("/etc/hosts", "/etc/resolv.conf")
#: What the overlay wrapper prints, and its exit code, when the mount fails (before the
#: command has run, so nothing else was printed).
MOUNT_FAILED_MARK = "layercore: overlay mount failed"
MOUNT_FAILED_CODE = 219
#: Users (euid) for whom an overlay could not be mounted in this process.
_overlay_failed: set[int] = set()


class Mount(Record):
    """What a command gets mounted: ``bind`` of ``source`` (read-only or not) or a ``tmpfs``,
    at ``target`` in the sandbox."""

    __slots__ = ("kind", "readonly", "source", "target")
    kind: Literal["bind", "tmpfs"]
    source: Path | None
    target: str
    readonly: bool

    def __init__(
        self, kind: Literal["bind", "tmpfs"], source: Path | None, target: str, readonly: bool
    ) -> None:
        self._set(kind=kind, source=source, target=target, readonly=readonly)


def bwrap_command(
    rootfs: Path,
    workdir: str,
    network: str,
    host_files: list[str],
    mounts: Sequence[Mount],
    env: Mapping[str, str],
    argv: Sequence[str],
    *,
    userns: bool = False,
) -> list[str]:
    """The command as root (or, for a caller that is not root, as root of a user namespace;
    ``userns``: bwrap already runs as root of one) in ``rootfs``: new mount, PID, IPC and UTS
    namespaces, ``/proc``, a minimal ``/dev``."""
    command = ["bwrap", "--bind", str(rootfs), "/", "--proc", "/proc", "--dev", "/dev"]
    command += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent"]
    if network == "none":
        command.append("--unshare-net")
    for f in host_files:
        command += ["--ro-bind", f, f]
    for m in mounts:
        if m.kind == "tmpfs":
            command += ["--tmpfs", m.target]
        else:
            command += ["--ro-bind" if m.readonly else "--bind", str(m.source), m.target]
    if os.geteuid() != 0 and not userns:
        command += ["--unshare-user", "--uid", "0", "--gid", "0"]
    command += ["--chdir", workdir, "--clearenv"]
    for k, v in env.items():
        command += ["--setenv", k, v]
    return [*command, "--", *argv]


def chroot_command(
    rootfs: Path,
    workdir: str,
    uid: int,
    gid: int,
    network: str,
    host_files: list[str],
    mounts: Sequence[Mount],
    argv: Sequence[str],
    *,
    prepare: bool = True,
) -> list[str]:
    """The command as ``uid:gid`` in ``rootfs``, for a caller that is root: files it creates
    are owned by that user on disk, so the layer records them so. bwrap can only give another
    uid inside a user namespace, where that uid maps to the caller; util-linux ``unshare``
    sets it directly: a private mount namespace gets the host's ``/dev`` and files bound in,
    then new PID, IPC and UTS namespaces, ``/proc``, the root, the working directory, the ids.
    ``prepare``: create the mount points in ``rootfs`` first (an overlay's skeleton has them)."""
    import shlex

    if prepare:
        for point in ("dev", "proc"):
            (rootfs / point).mkdir(exist_ok=True)
        for f in host_files:
            target = rootfs / f.lstrip("/")
            target.parent.mkdir(exist_ok=True)
            if not target.exists():
                target.touch()
    binds = "".join(f' && mount --bind {f} "$r{f}"' for f in host_files)
    for m in mounts:
        target = rootfs / m.target.lstrip("/")
        if prepare and (m.kind == "tmpfs" or (m.source is not None and m.source.is_dir())):
            target.mkdir(parents=True, exist_ok=True)
        elif prepare:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(exist_ok=True)
        quoted = shlex.quote(str(target))
        if m.kind == "tmpfs":
            binds += f" && mount -t tmpfs tmpfs {quoted}"
        else:
            binds += f" && mount --bind {shlex.quote(str(m.source))} {quoted}"
            if m.readonly:
                binds += f" && mount -o remount,ro,bind {quoted}"
    script = f'r="$1"; shift; mount --rbind /dev "$r/dev"{binds} && exec "$@"'
    inner = ["unshare", "--pid", "--fork", "--ipc", "--uts", "--mount-proc=/proc"]
    inner += ["--root", str(rootfs), "--wd", workdir, "--setgid", str(gid), "--setuid", str(uid)]
    outer = ["unshare", "--mount", "--propagation", "private"]
    if network == "none":
        outer.append("--net")
    return [*outer, "--", "/bin/sh", "-c", script, "sh", str(rootfs), *inner, "--", *argv]


def in_overlay(command: list[str], ws: Path, options: str, *, userns: bool) -> list[str]:
    """``command`` run after an overlay is mounted on ``ws/merged`` with ``options`` (paths
    relative to ``ws``), in a private mount namespace (and, for a caller that is not root, a
    user namespace where the caller is root, with ``userxattr``): the mount is gone when the
    command ends, however it ends. A failed mount prints :data:`MOUNT_FAILED_MARK` and exits
    with :data:`MOUNT_FAILED_CODE`. (A container starts the same way from the Rust core,
    ``_core.spawn_in_overlay``, with no process between.)"""
    script = (
        'cd "$1" && { mount -t overlay overlay -o "$2" merged 2>/dev/null || '
        f'{{ echo "{MOUNT_FAILED_MARK}"; exit {MOUNT_FAILED_CODE}; }}; }} && shift 2 && exec "$@"'
    )
    outer = ["unshare", "--mount", "--propagation", "private"]
    if userns:
        outer[1:1] = ["--user", "--map-root-user"]
    return [*outer, "--", "/bin/sh", "-c", script, "sh", str(ws), options, *command]


def id_table(text: str) -> dict[str, tuple[int, int]]:
    """``name -> (id, gid)`` of an ``/etc/passwd``- or ``/etc/group``-like file's text
    (a missing or odd gid field is 0), for ``USER name`` and ``--user name``."""
    rows = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            gid = int(fields[3]) if len(fields) > 3 and fields[3].isdigit() else 0
            rows[fields[0]] = (int(fields[2]), gid)
    return rows


def host_files_for(network: str) -> list[str]:
    """The host's files a command with ``network`` sees (none without a network)."""
    return [f for f in HOST_FILES if network != "none" and os.path.exists(f)]


def overlay_options(lowers: Sequence[str], *, userns: bool) -> str:
    """The mount options of a writable overlay with the skeleton dir ``skel`` on top of
    ``lowers`` (top first, as :func:`link_lowers` names them), ``upper`` and ``work``: paths
    relative to the directory that holds them; ``userxattr`` in a user namespace, else no
    index, redirects or metacopy (an upper dir must be a plain changeset to become a layer)."""
    prefix = "userxattr," if userns else "index=off,redirect_dir=off,metacopy=off,"
    return f"{prefix}lowerdir={':'.join(['skel', *lowers])},upperdir=upper,workdir=work"


def link_lowers(ws: Path, snapshots: Sequence[Path]) -> list[str]:
    """Short names (``l/0``, ``l/1``, ...) in ``ws`` for the snapshot directories, top first,
    as an overlay's ``lowerdir`` lists them: a mount's options fit in one page, and these
    names keep hundreds of layers within it."""
    links = ws / "l"
    links.mkdir()
    for i, path in enumerate(snapshots):
        os.symlink(path, links / str(i))
    return [f"l/{i}" for i in reversed(range(len(snapshots)))]


class MergedLower:
    """The merged tree of overlay snapshots (top first), looked up on disk as overlayfs does:
    the highest layer with a path gives it, a whiteout device hides it, a file hides what is
    below it, and an opaque directory hides the lower layers' contents of that directory. A
    few stat calls per layer, so a RUN needs no index of the image."""

    def __init__(self, snapshots: Sequence[Path], xattrs: str) -> None:
        #: The snapshots, bottom first, as given.
        self.snapshots = list(snapshots)
        self.layers = list(reversed(snapshots))
        self.opaque = f"{xattrs}.overlay.opaque"

    def lookup(self, rel: str) -> tuple[os.stat_result, str, Path] | None:
        """``(lstat, symlink target or "", the path in its snapshot)`` of ``rel`` in the
        merged tree, or ``None``."""
        parts = [p for p in rel.split("/") if p]
        if not parts:
            return None
        for layer in self.layers:
            hidden = False  # an opaque directory of this layer hides the lower ones
            for i in range(len(parts)):
                path = layer.joinpath(*parts[: i + 1])
                try:
                    st = os.lstat(path)
                except OSError:
                    break
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    return None
                if i == len(parts) - 1:
                    link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
                    return st, link, path
                if not stat.S_ISDIR(st.st_mode):
                    return None
                with suppress(OSError):
                    hidden = hidden or os.getxattr(path, self.opaque) == b"y"
            if hidden:
                return None
        return None

    def listdir(self, rel: str) -> list[str]:
        """The names in the directory ``rel`` of the merged tree, sorted (none if it is not
        a directory there)."""
        found = self.lookup(rel)
        if found is None or not stat.S_ISDIR(found[0].st_mode):
            return []
        candidates: set[str] = set()
        rel = rel.strip("/")
        for layer in self.layers:
            with suppress(OSError), os.scandir(layer / rel) as it:
                candidates.update(entry.name for entry in it)
        return sorted(n for n in candidates if self.lookup(f"{rel}/{n}") is not None)

    def resolve(self, path: str) -> str | None:
        """``path`` with the merged tree's symlinks resolved inside it, as the sandbox resolves
        them; ``None`` after 40 links."""
        parts = [p for p in path.split("/") if p]
        out: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == ".":
                continue
            if part == "..":
                if out:
                    out.pop()
                continue
            found = self.lookup("/".join([*out, part]))
            if found is not None and found[1]:
                hops += 1
                if hops > 40:
                    return None
                if found[1].startswith("/"):
                    out = []
                parts = [p for p in found[1].split("/") if p] + parts
                continue
            out.append(part)
        return "/".join(out)


def make_skeleton(lower: MergedLower, skel: Path, points: Sequence[tuple[str, bool]]) -> None:
    """Makes in ``skel`` each mount point ``(path, is_dir)`` that the merged tree ``lower``
    lacks, with the missing directories leading to it (0755), after resolving symlinks in it
    as the sandbox will; a path blocked by a file is left alone. A directory of the skeleton
    shows its own attributes in the merged tree (and a copy-up takes them), so those on the
    way that the tree has are made with its mode, owner and mtime."""
    skel.mkdir(exist_ok=True)
    times: list[tuple[Path, os.stat_result]] = []
    for path, is_dir in points:
        resolved = lower.resolve(path)
        if resolved is None:
            continue
        parts = [p for p in resolved.split("/") if p]
        found: list[tuple[Path, os.stat_result]] = []  # the tree's directories on the way
        for i in range(len(parts)):
            rel = "/".join(parts[: i + 1])
            last = i == len(parts) - 1
            entry = lower.lookup(rel)
            if entry is not None:
                if last or not stat.S_ISDIR(entry[0].st_mode):
                    break  # there, or a file where a directory should be: not ours to fix
                found.append((skel / rel, entry[0]))
                continue
            for mirror, st in found:
                if not mirror.is_dir():
                    mirror.mkdir()
                    os.chmod(mirror, stat.S_IMODE(st.st_mode))
                    if os.geteuid() == 0:
                        os.lchown(mirror, st.st_uid, st.st_gid)
                    times.append((mirror, st))
            found.clear()
            target = skel / rel
            if not last or is_dir:
                target.mkdir(mode=0o755, exist_ok=True)
            elif not os.path.lexists(target):
                target.touch(mode=0o644)
    # Times last: making the mount points changed them.
    for mirror, st in times:
        os.utime(mirror, ns=(st.st_atime_ns, st.st_mtime_ns))


def unmount(path: Path) -> None:
    import subprocess

    subprocess.run(["umount", "-l", str(path)], capture_output=True)


class OverlayUnavailable(Exception):
    """The overlay could not be mounted: RUN falls back to a copied root filesystem."""


def overlay_works() -> bool:
    """Whether RUN should mount an overlay (``LAYERCORE_SNAPSHOTTER=copy`` says never,
    ``overlay`` always): yes unless a mount failed for this user in this process. Nothing is
    probed ahead: a RUN whose mount fails says so (:data:`MOUNT_FAILED_MARK`) and runs again
    on a copied root filesystem."""
    choice = os.environ.get("LAYERCORE_SNAPSHOTTER", "")
    if choice in ("copy", "overlay"):
        return choice == "overlay"
    return os.geteuid() not in _overlay_failed


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kills the sandbox's whole process group (Ctrl-C, or the build failing around it)."""
    with suppress(OSError):
        os.killpg(proc.pid, 9)
    proc.wait()


def overlay_failed(euid: int) -> None:
    """Remembers that an overlay could not be mounted for the user ``euid``: later commands of
    this process do not try again (see :func:`overlay_works`)."""
    _overlay_failed.add(euid)
