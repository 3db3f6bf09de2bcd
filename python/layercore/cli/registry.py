"""``layercore pull``, ``push``, ``copy``, ``login`` and ``logout``: images between the store
and OCI registries, with a progress bar per blob on a terminal and a summary line.

It may import the errors, ``layercore.registry``, ``cli.session``, ``cli.output`` and
``cli.parser``. Passwords come from stdin or a prompt, never from output: no message, log
line or ``--json`` field carries one.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from layercore.cli.output import human_size, image_json, short_digest
from layercore.cli.parser import Commands
from layercore.cli.session import Session, UsageError
from layercore.errors import AuthenticationError
from layercore.imageref import Reference

if TYPE_CHECKING:
    from layercore.registry import Transfers
    from layercore.registry.transfer import PushResult

# The registry client loads when a command uses it: `layercore build` and the other commands
# do not pay for its import.

__all__ = ["register"]

T = TypeVar("T")


def _transfer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain HTTP and unverified TLS (loopback hosts fall back to HTTP anyway)",
    )
    p.add_argument("--ca-file", metavar="PEM", help="trust this CA (default: certs.d/HOST/)")
    p.add_argument("--jobs", type=int, metavar="N", help="blobs transferred at once (default: 4)")


def _platform_options(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--platform",
        metavar="P",
        help="of a multi-platform image, the one for P (os/arch[/variant]; default: linux "
        "on this machine's architecture)",
    )
    group.add_argument(
        "--all-platforms",
        action="store_true",
        help="keep the whole image index and every platform's image",
    )


def register(commands: Commands) -> None:
    """Adds ``pull``, ``push``, ``copy``, ``login`` and ``logout``."""
    p = commands.add(
        "pull",
        _cmd_pull,
        "pull an image from a registry into the store",
        """
        Pulls REF ([host[:port]/]repo[:tag|@sha256:...]; no host means docker.io, a one-word
        repo gets library/, no tag means latest) and tags it T (default: REF as written).
        Blobs the store has are not downloaded; the rest are verified as they arrive.
        Credentials come from the Docker config ($DOCKER_CONFIG/config.json or
        ~/.docker/config.json, with its credential helpers), as `layercore login` writes it.
        """,
        [
            "layercore pull alpine:3.20",
            "layercore pull 127.0.0.1:5000/team/app:1 --tag app:1",
            "layercore pull ghcr.io/org/tool:2 --platform linux/arm64",
        ],
        json=True,
    )
    p.add_argument("reference", metavar="REF")
    p.add_argument("--tag", metavar="T", help="tag it T in the store")
    _platform_options(p)
    _transfer_options(p)
    p = commands.add(
        "push",
        _cmd_push,
        "push an image of the store to a registry",
        """
        Pushes IMAGE (a tag or digest of the store; an image index is pushed with every
        platform) to REF. Blobs the repository has are skipped, blobs another repository of
        the registry holds are mounted, the rest are uploaded; the summary says which.
        """,
        [
            "layercore push app:1 127.0.0.1:5000/team/app:1",
            "layercore push app:1 registry.example.com/app:1 --json",
        ],
        json=True,
    )
    p.add_argument("image", metavar="IMAGE", help="a tag or a digest of the store")
    p.add_argument("reference", metavar="REF")
    _transfer_options(p)
    p = commands.add(
        "copy",
        _cmd_copy,
        "copy an image from one registry reference to another, through the store",
        """
        Pulls SRC into the store (blobs it has are not downloaded) and pushes it to DEST
        (blobs on DEST's registry are mounted, not uploaded).
        """,
        [
            "layercore copy docker.io/library/alpine:3.20 127.0.0.1:5000/alpine:3.20",
            "layercore copy reg.example/app:1 reg.example/app-release:1 --all-platforms",
        ],
        json=True,
    )
    p.add_argument("src", metavar="SRC")
    p.add_argument("dest", metavar="DEST")
    _platform_options(p)
    _transfer_options(p)
    p = commands.add(
        "login",
        _cmd_login,
        "log in to a registry (the Docker config that docker and skopeo read)",
        """
        Checks the credentials against HOST, then stores them as `docker login` does: with
        the credential helper the Docker config names for HOST, else in its auths. The
        password is read from stdin with --password-stdin, else prompted for.
        """,
        [
            "layercore login 127.0.0.1:5000 -u alice",
            'echo "$TOKEN" | layercore login ghcr.io -u me --password-stdin',
        ],
    )
    p.add_argument("host", metavar="HOST", help="the registry: host[:port] (docker.io for Hub)")
    p.add_argument("-u", "--username", metavar="USER")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--insecure", action="store_true", help="allow plain HTTP, unverified TLS")
    p.add_argument("--ca-file", metavar="PEM", help="trust this CA (default: certs.d/HOST/)")
    p = commands.add(
        "logout",
        _cmd_logout,
        "forget the login for a registry",
        "Removes the stored credentials for HOST from the Docker config or its helper.",
        ["layercore logout 127.0.0.1:5000"],
    )
    p.add_argument("host", metavar="HOST")


def _jobs(args: argparse.Namespace) -> int | None:
    jobs: int | None = args.jobs
    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {jobs}")
    return jobs


def _check_platform(args: argparse.Namespace) -> None:
    if getattr(args, "platform", None) is not None:
        try:
            from layercore.registry.transfer import parse_platform

            parse_platform(args.platform)
        except ValueError as e:
            raise UsageError(f"--platform: {e}") from None


def _reference(text: str, what: str) -> Reference:
    try:
        return Reference.parse(text)
    except ValueError as e:
        raise UsageError(f"{what}: {e}") from None


@contextmanager
def _bars(transfers: Transfers, verb: str) -> Iterator[None]:
    """One progress bar per blob (bytes, rate) on stderr while the transfer runs, drawn from
    the counters the core advances; nothing when stderr is not a terminal."""
    if not sys.stderr.isatty():
        yield
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TransferSpeedColumn,
    )

    console = Console(file=sys.stderr, highlight=False, markup=False, emoji=False)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    stop = threading.Event()
    with Progress(*columns, console=console, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def draw() -> None:
            for item in transfers.snapshot():
                label = f"{item.kind:6} {short_digest(item.digest)} {item.state}"
                if item.digest not in tasks:
                    tasks[item.digest] = bar.add_task(label, total=item.size or None)
                done = item.size if item.state in ("present", "mounted", "stored") else item.moved
                bar.update(tasks[item.digest], completed=done, description=label)

        def loop() -> None:
            while not stop.wait(0.1):
                draw()

        thread = threading.Thread(target=loop, name=f"layercore-{verb}-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            draw()


def _run(transfers: Transfers, verb: str, work: Callable[[], T]) -> T:
    with _bars(transfers, verb):
        return work()


def _pull_counts(transfers: Transfers) -> dict[str, int]:
    items = transfers.snapshot()
    return {
        "fetched": sum(1 for i in items if i.state == "downloaded"),
        "already_stored": sum(1 for i in items if i.state == "stored"),
        "bytes_received": sum(i.moved for i in items),
    }


def _cmd_pull(args: argparse.Namespace, session: Session) -> int:
    _reference(args.reference, "pull")
    _check_platform(args)
    jobs = _jobs(args)
    tag = args.tag if args.tag is not None else args.reference
    from layercore.registry import Transfers

    transfers = Transfers()
    image = _run(
        transfers,
        "pull",
        lambda: session.store.pull(
            args.reference,
            tag=tag,
            platform=args.platform,
            all_platforms=args.all_platforms,
            insecure=args.insecure,
            ca_file=args.ca_file,
            jobs=jobs,
            transfers=transfers,
        ),
    )
    counts = _pull_counts(transfers)
    if session.json:
        session.emit_json({**image_json(tag, image), **counts})
        return 0
    session.print(f"{tag} {image.digest}")
    print(
        f"pulled: {counts['fetched']} blobs fetched ({human_size(counts['bytes_received'])}), "
        f"{counts['already_stored']} already stored",
        file=sys.stderr,
    )
    return 0


def _report_push(session: Session, result: PushResult) -> int:
    if session.json:
        session.emit_json(result.to_json())
        return 0
    session.print(f"{result.reference} {result.digest}")
    manifest = "manifest already there" if result.manifest == "present" else "manifest sent"
    print(
        f"pushed: {result.count('uploaded')} uploaded, {result.count('mounted')} mounted, "
        f"{result.count('present')} already there; {human_size(result.bytes_sent)} sent; "
        f"{manifest}",
        file=sys.stderr,
    )
    return 0


def _cmd_push(args: argparse.Namespace, session: Session) -> int:
    _reference(args.reference, "push")
    jobs = _jobs(args)
    from layercore.registry import Transfers

    transfers = Transfers()
    result = _run(
        transfers,
        "push",
        lambda: session.store.push(
            args.image,
            args.reference,
            insecure=args.insecure,
            ca_file=args.ca_file,
            jobs=jobs,
            transfers=transfers,
        ),
    )
    return _report_push(session, result)


def _cmd_copy(args: argparse.Namespace, session: Session) -> int:
    _reference(args.src, "copy")
    _reference(args.dest, "copy")
    _check_platform(args)
    jobs = _jobs(args)
    from layercore.registry import Transfers

    transfers = Transfers()
    result = _run(
        transfers,
        "copy",
        lambda: session.store.copy(
            args.src,
            args.dest,
            platform=args.platform,
            all_platforms=args.all_platforms,
            insecure=args.insecure,
            ca_file=args.ca_file,
            jobs=jobs,
            transfers=transfers,
        ),
    )
    return _report_push(session, result)


def _registry_host(text: str) -> str:
    """``HOST`` as `docker login` takes it: a host[:port], maybe with a scheme or path."""
    host = text.split("://", 1)[-1].split("/", 1)[0]
    if not host:
        raise UsageError(f"login: {text!r} is not a registry host")
    return "docker.io" if host in ("index.docker.io", "registry-1.docker.io") else host


def _cmd_login(args: argparse.Namespace, session: Session) -> int:
    from layercore.registry import Credentials, RegistryClient, login

    registry = _registry_host(args.host)
    username: str | None = args.username
    if args.password_stdin:
        if username is None:
            raise UsageError("login: --password-stdin needs --username")
        password = sys.stdin.read().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise UsageError(
                "login: stdin is not a terminal; give the password with --password-stdin"
            )
        if username is None:
            username = input("Username: ")
        password = getpass.getpass("Password: ")
    if not username or not password:
        raise UsageError("login: a user name and a password are needed")
    credentials = Credentials(username, password)
    api_host = Reference.parse(f"{registry}/x").api_host
    client = RegistryClient(
        registry,
        api_host=api_host,
        credentials=credentials,
        insecure=args.insecure,
        ca_file=args.ca_file,
    )
    try:
        client.check_login()
    except AuthenticationError as e:
        raise AuthenticationError(f"login failed: {e.message}", registry) from None
    path, helper = login(registry, credentials)
    where = f"the credential helper docker-credential-{helper}" if helper else str(path)
    session.print(f"Login Succeeded ({registry}, stored in {where})")
    return 0


def _cmd_logout(args: argparse.Namespace, session: Session) -> int:
    from layercore.registry import logout

    registry = _registry_host(args.host)
    if logout(registry):
        session.print(f"Removed login credentials for {registry}")
    else:
        session.print(f"Not logged in to {registry}")
    return 0
