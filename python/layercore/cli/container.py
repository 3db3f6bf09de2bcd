"""``layercore run``, ``start``, ``ps`` and ``commit``, and the container forms of ``diff`` and
``rm``: containers of the store's images (:mod:`layercore.runtime.containers`).

``run`` and ``start`` exit with the command's exit code, as ``docker run`` does; when
layercore itself cannot run it (an unknown image, a name in use, no sandbox) they exit with
125, and 127 when the command is not in the image, Docker's codes, so a script can tell the
command's failure from layercore's.

It may import the errors, ``cli.session``, ``cli.output`` and ``cli.parser``, and
``layercore.runtime`` where a command needs it.
"""

from __future__ import annotations

import argparse
import sys
import time

from layercore.cli.output import human_size, plain_table, short_digest, show_path
from layercore.cli.parser import Commands
from layercore.cli.session import Session, print_error
from layercore.errors import ContainerNotFoundError, ImageNotFoundError, LayerError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from layercore.runtime.containers import ContainerInfo

__all__ = ["is_container", "register", "remove_containers", "show_changes"]

#: ``docker run``'s exit codes for a run that failed before the command did.
_CANNOT_RUN = 125
_NOT_FOUND = 127


def register(commands: Commands) -> None:
    """Adds ``run``, ``start``, ``ps`` and ``commit``."""
    p = commands.add(
        "run",
        _cmd_run,
        "run a command in a new container of an image",
        """
        Runs the image's Entrypoint and Cmd (or CMD, after IMAGE) in a new container: an
        overlay of the image's snapshots (each layer extracted once, shared by every
        container and build) under the container's own writable layer, kept in the store
        under its name until `layercore rm`. The command runs in new mount, PID, IPC and UTS
        namespaces (as root of a user namespace when layercore is not root), with no network
        unless --network host. Its output is this command's; it reads stdin with -i, and
        gets a terminal with -t. Ctrl-C and other signals go to the command (a third Ctrl-C
        kills it).

        An IMAGE the store lacks is pulled from its registry first (--pull never refuses,
        --pull always pulls anyway). The exit status is the command's (128+N when signal N
        ended it), 125 when the container could not run and 127 when the command is not in
        the image.
        """,
        [
            "layercore run busybox:1 echo hello",
            "layercore run --rm -it busybox:1 sh",
            "layercore run --name web -e PORT=8080 -v ./site:/srv:ro --network host app:1",
        ],
    )
    p.add_argument("--name", help="the container's name (default: the image's name and 6 hex)")
    p.add_argument("--rm", action="store_true", help="remove the container when it ends")
    p.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="set an environment variable (K alone: this shell's value)",
    )
    p.add_argument("-w", "--workdir", metavar="DIR", help="the working directory (absolute)")
    p.add_argument("-u", "--user", metavar="USER", help="name|uid[:group|gid] to run as")
    p.add_argument(
        "--network", choices=("none", "host"), default="none", help="the network (default none)"
    )
    p.add_argument(
        "-v",
        "--volume",
        action="append",
        default=[],
        metavar="HOST:CTR[:ro]",
        help="bind a host path into the container",
    )
    p.add_argument("--entrypoint", metavar="CMD", help="replace the image's Entrypoint")
    p.add_argument(
        "--pull",
        choices=("missing", "always", "never"),
        default="missing",
        help="pull IMAGE from its registry when the store lacks it (default), always, or never",
    )
    p.add_argument("-i", "--interactive", action="store_true", help="pass stdin to the command")
    p.add_argument("-t", "--tty", action="store_true", help="give the command a terminal")
    p.add_argument("image", metavar="IMAGE", help="a tag or a digest")
    p.add_argument("cmd", metavar="CMD", nargs=argparse.REMAINDER, help="the command and its args")

    p = commands.add(
        "start",
        _cmd_start,
        "run a container's command again",
        """
        Runs the container's command again on its writable layer (what earlier runs wrote is
        there), attached: it exits with the command's exit code, as `layercore run`.
        """,
        ["layercore start web", "layercore start -i shell"],
    )
    p.add_argument("-i", "--interactive", action="store_true", help="pass stdin to the command")
    p.add_argument("container", metavar="CONTAINER")

    p = commands.add(
        "ps",
        _cmd_ps,
        "list containers",
        """
        Lists the store's containers, oldest first: name, image, command, status (Created,
        Up, Exited (CODE)) and the size of the writable layer.
        """,
        ["layercore ps", "layercore ps --json", "layercore rm $(layercore ps -q)"],
        json=True,
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print the names only")

    p = commands.add(
        "commit",
        _cmd_commit,
        "make an image of a container's changes",
        """
        Writes the container's writable layer as a layer on top of its image, with a history
        entry (the command, and --message as its comment), and saves the image under TAG
        (untagged without one). The container must have ended.
        """,
        ["layercore commit web app:2", "layercore commit web app:2 -m 'add the site'"],
        json=True,
    )
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("tag", metavar="TAG", nargs="?")
    p.add_argument("-m", "--message", help="the history entry's comment")
    p.add_argument("-a", "--author", help="the history entry's author")


def _cmd_run(args: argparse.Namespace, session: Session) -> int:
    cmd = list(args.cmd)
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    # The same container whichever way it is made (see _launch).
    options: dict[str, Any] = {
        "name": args.name,
        "env": args.env,
        "workdir": args.workdir,
        "user": args.user,
        "mounts": args.volume,
        "network": args.network,
        "entrypoint": None if args.entrypoint is None else [args.entrypoint],
        "rm": args.rm,
        "tty": args.tty,
        "interactive": args.interactive,
    }

    def run() -> int:
        return session.store.run(args.image, cmd or None, **options).exit_code

    try:
        if args.pull == "always":
            _pull(session, args.image)
        else:
            # A tag whose snapshots exist runs without the store and image modules, whose
            # import would be most of the start-up; anything else goes the whole way.
            launched = _launch(args.store, args.image, cmd or None, options)
            if launched is not None:
                return launched
        try:
            return run()
        except ImageNotFoundError:
            if args.pull != "missing" or not _pullable(args.image):
                raise
            print(f"Unable to find image {args.image!r} locally", file=sys.stderr)
            _pull(session, args.image)
            return run()
    except (LayerError, ValueError, OSError) as exc:
        return _cannot_run(exc)


def _launch(
    store: str | None, image: str, cmd: list[str] | None, options: dict[str, Any]
) -> int | None:
    """The exit code of ``run`` through :func:`layercore.runtime.containers.launch`, or None
    when that does not apply."""
    import os

    from layercore import layout
    from layercore.runtime.containers import launch

    root = os.path.abspath(os.path.expanduser(store or layout.default_root()))
    result = launch(root, image, cmd, **options)
    return None if result is None else result.exit_code


def _pullable(ref: str) -> bool:
    """Whether ``ref`` names an image in a registry (not a digest or digest prefix of the
    store's)."""
    from layercore.imageref import Reference

    if ref.startswith("sha256:") or (len(ref) >= 12 and all(c in "0123456789abcdef" for c in ref)):
        return False
    try:
        Reference.parse(ref)
    except ValueError:
        return False
    return True


def _pull(session: Session, ref: str) -> None:
    """Pulls ``ref`` into the store under the name as written (``docker run``'s pull)."""
    print(f"pulling {ref}", file=sys.stderr)
    image = session.store.pull(ref)
    print(f"{ref} {image.digest}", file=sys.stderr)


def _cmd_start(args: argparse.Namespace, session: Session) -> int:
    try:
        result = session.store.start(args.container, interactive=args.interactive)
    except (LayerError, OSError) as exc:
        return _cannot_run(exc)
    return result.exit_code


def _cannot_run(exc: BaseException) -> int:
    from layercore.errors import CommandNotFoundError

    print_error(str(exc))
    return _NOT_FOUND if isinstance(exc, CommandNotFoundError) else _CANNOT_RUN


def _cmd_ps(args: argparse.Namespace, session: Session) -> int:
    found = session.store.containers()
    if args.quiet:
        sys.stdout.write("".join(f"{c.name}\n" for c in found))
        return 0
    if session.json:
        session.emit_json([{**c.to_json(), "size": c.size()} for c in found])
        return 0
    now = time.time()
    rows = [
        [
            c.name,
            c.image,
            _command_cell(c.command),
            _status(c, now),
            human_size(c.size()),
        ]
        for c in found
    ]
    sys.stdout.write(plain_table(("NAME", "IMAGE", "COMMAND", "STATUS", "SIZE"), rows) + "\n")
    return 0


def _command_cell(command: tuple[str, ...]) -> str:
    text = " ".join(command)
    return text if len(text) <= 40 else text[:39] + "…"


def _status(c: ContainerInfo, now: float) -> str:
    """``docker ps``'s status column: Created, Up 3 seconds, Exited (0) 2 minutes ago."""
    if c.status == "created":
        return "Created"
    if c.status == "running":
        return f"Up {_ago(c.started, now)}"
    code = "?" if c.exit_code is None else str(c.exit_code)
    return f"Exited ({code}) {_ago(c.finished, now)} ago"


def _ago(stamp: str | None, now: float) -> str:
    if stamp is None:
        return "a while"
    import calendar

    seconds = max(0, int(now - calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}" + ("s" if count != 1 else "")
    return f"{seconds} second" + ("s" if seconds != 1 else "")


def _cmd_commit(args: argparse.Namespace, session: Session) -> int:
    with session.progress(f"committing {args.container}"):
        image = session.store.commit_container(
            args.container, args.tag, message=args.message, author=args.author
        )
    if session.json:
        session.emit_json(
            {"tag": args.tag, "digest": image.digest, "layer": image.layers[-1].digest}
        )
    else:
        session.print(f"{args.tag or '<untagged>'} {image.digest}")
        print(f"layer {short_digest(image.layers[-1].digest)}", file=sys.stderr)
    return 0


# -- the container forms of diff and rm ----------------------------------------------------------


def is_container(session: Session, name: str) -> bool:
    """Whether ``name`` names a container of the store (a tag never does: container names
    have no ``:``, ``/`` or ``@``)."""
    try:
        session.store.container(name)
    except ContainerNotFoundError:
        return False
    return True


def show_changes(session: Session, name: str) -> int:
    """``layercore diff CONTAINER``: ``docker diff``'s A/C/D lines (or JSON)."""
    changes = session.store.container_changes(name)
    if session.json:
        session.emit_json([{"change": c.kind, "path": c.path} for c in changes])
    else:
        sys.stdout.write("".join(f"{c.kind} {show_path(c.path)}\n" for c in changes))
    return 0


def remove_containers(session: Session, names: list[str], *, force: bool) -> int:
    """``layercore rm CONTAINER...``: removes each; status 1 if one could not be."""
    status = 0
    for name in names:
        try:
            session.store.remove_container(name, force=force)
        except LayerError as exc:
            print_error(str(exc))
            status = 1
        else:
            session.print(name)
    return status
