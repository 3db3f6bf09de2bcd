"""``layercore tag``, ``rm``, ``rmi``, ``gc``, ``du`` and ``verify``: the store's tags, the blobs
no image uses, the disk the store takes, and whether its blobs still match their digests.

It may import the errors, ``cli.session``, ``cli.output``, ``cli.parser`` and, for ``rm`` of a
container, ``cli.container``.
"""

from __future__ import annotations

import argparse
import re

from layercore.cli.output import borderless_table, human_size, plural, short_digest
from layercore.cli.parser import Commands
from layercore.cli.session import Session, print_error
from layercore.errors import ImageNotFoundError

__all__ = ["register"]


def register(commands: Commands) -> None:
    """Adds ``tag``, ``rm``, ``rmi``, ``gc``, ``prune``, ``du`` and ``verify``."""
    p = commands.add(
        "tag",
        _cmd_tag,
        "give an image another tag",
        "Tags the image IMAGE as NEW (moving NEW if it named another image).",
        ["layercore tag app:1 app:latest"],
        json=True,
    )
    p.add_argument("image", metavar="IMAGE", help="a tag or a digest")
    p.add_argument("new_tag", metavar="NEW")
    p = commands.add(
        "rm",
        _cmd_rm,
        "remove containers or tags",
        """
        Removes each NAME: the container of that name if there is one (with its writable
        layer; --force stops a running one first: SIGTERM, then SIGKILL after 10 seconds),
        else the tag. `layercore rmi` removes
        tags only. A tag's blobs stay until `layercore gc`.
        """,
        ["layercore rm app:1 app:2", "layercore rm web", "layercore rm app:1 && layercore gc"],
    )
    p.add_argument("tags", metavar="NAME", nargs="+")
    p.add_argument("-f", "--force", action="store_true", help="stop a running container first")
    p = commands.add(
        "rmi",
        _cmd_rmi,
        "remove tags",
        "Removes the tags; their blobs stay until `layercore gc`.",
        ["layercore rmi app:1 app:2"],
    )
    p.add_argument("tags", metavar="TAG", nargs="+")
    commands.add(
        "gc",
        _cmd_gc,
        "delete blobs no image uses",
        "Deletes every blob that no image in the store references.",
        ["layercore gc", "layercore gc --json"],
        json=True,
    )
    p = commands.add(
        "prune",
        _cmd_prune,
        "trim the build cache",
        """
        Removes build cache records, least recently used first, then the layers nothing
        uses any more. By default only the records whose layer no image has; --all takes
        them all; --until spares the ones used more recently; --keep-storage stops once the
        records left name at most SIZE of layers.
        """,
        [
            "layercore prune",
            "layercore prune --all",
            "layercore prune --keep-storage 5GB --until 24h",
        ],
        json=True,
    )
    p.add_argument("--all", action="store_true", help="consider every record")
    p.add_argument(
        "--keep-storage", metavar="SIZE", type=_size, help="keep up to SIZE (10GB, 512MiB, ...)"
    )
    p.add_argument(
        "--until", metavar="DURATION", type=_duration, help="only records unused for DURATION"
    )
    commands.add(
        "du",
        _cmd_du,
        "show the store's disk use",
        """
        Per image: its size (every blob it uses), the bytes only it uses (unique) and the
        bytes it shares with other images; then the blobs on disk, the bytes sharing saved,
        and the bytes no image uses (freed by gc).
        """,
        ["layercore du", "layercore du --json"],
        json=True,
    )
    p = commands.add(
        "verify",
        _cmd_verify,
        "re-hash blobs and report damaged ones",
        """
        Re-hashes the blobs of IMAGE (default: every image) and lists those whose bytes no
        longer match their digest; exit status 1 if there is one.
        """,
        ["layercore verify", "layercore verify app:1"],
        json=True,
    )
    p.add_argument("image", metavar="IMAGE", nargs="?", help="a tag or a digest")


def _cmd_tag(args: argparse.Namespace, session: Session) -> int:
    session.store.tag(args.image, args.new_tag)
    if not session.json:
        session.print(f"tagged {args.new_tag} -> {session.store.tags()[args.new_tag]}")
    else:
        session.emit_json({"tag": args.new_tag, "digest": session.store.tags()[args.new_tag]})
    return 0


def _cmd_rm(args: argparse.Namespace, session: Session) -> int:
    from layercore.cli.container import is_container, remove_containers

    status = 0
    for name in args.tags:
        if is_container(session, name):
            status |= remove_containers(session, [name], force=args.force)
        else:
            status |= _untag(session, name)
    return status


def _cmd_rmi(args: argparse.Namespace, session: Session) -> int:
    status = 0
    for tag in args.tags:
        status |= _untag(session, tag)
    return status


def _untag(session: Session, tag: str) -> int:
    try:
        session.store.remove(tag)
    except ImageNotFoundError as exc:
        print_error(str(exc))
        return 1
    session.print(f"untagged {tag}")
    return 0


def _cmd_gc(args: argparse.Namespace, session: Session) -> int:
    with session.progress("removing blobs no image uses"):
        report = session.store.gc()
    if session.json:
        session.emit_json({"removed": list(report.removed), "bytes_freed": report.bytes_freed})
    else:
        removed = plural(len(report.removed), "blob")
        session.print(f"removed {removed}, freed {human_size(report.bytes_freed)}")
    return 0


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _size(text: str) -> int:
    """``10GB``, ``512MiB``, ``1.5gb``, ``4096`` as bytes."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if match is None or match.group(2).lower() not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (write 10GB, 512MiB, 4096)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def _duration(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d``, ``2w`` (or several: ``1h30m``) as seconds."""
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)([smhdw])", text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (write 24h, 30m, 7d)")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def _cmd_prune(args: argparse.Namespace, session: Session) -> int:
    with session.progress("trimming the build cache"):
        report = session.store.prune_cache(
            all_records=args.all, keep_storage=args.keep_storage, until=args.until
        )
    if session.json:
        session.emit_json({"records": report.records, "bytes_freed": report.bytes_freed})
    else:
        records = plural(report.records, "cache record")
        session.print(f"removed {records}, freed {human_size(report.bytes_freed)}")
    return 0


def _cmd_du(args: argparse.Namespace, session: Session) -> int:
    usage = session.store.du()
    if session.json:
        session.emit_json(
            {
                "total_bytes": usage.total_bytes,
                "shared_bytes": usage.shared_bytes,
                "saved_bytes": usage.saved_bytes,
                "unreferenced_bytes": usage.unreferenced_bytes,
                "images": [
                    {
                        "tag": u.tag,
                        "digest": u.digest,
                        "size": u.size,
                        "unique_bytes": u.unique_bytes,
                        "shared_bytes": u.shared_bytes,
                    }
                    for u in usage.images
                ],
            }
        )
        return 0
    table = borderless_table(
        "TAG", "DIGEST", "SIZE", "UNIQUE", "SHARED", right=("SIZE", "UNIQUE", "SHARED")
    )
    for u in usage.images:
        table.add_row(
            u.tag if u.tag is not None else "<none>",
            short_digest(u.digest),
            human_size(u.size),
            human_size(u.unique_bytes),
            human_size(u.shared_bytes),
        )
    session.print_table(table)
    session.print()
    session.print(
        f"blobs on disk: {human_size(usage.total_bytes)}; shared by several images: "
        f"{human_size(usage.shared_bytes)}; saved by sharing: {human_size(usage.saved_bytes)}; "
        f"unreferenced: {human_size(usage.unreferenced_bytes)}"
        + (" (`layercore gc` frees it)" if usage.unreferenced_bytes else "")
    )
    return 0


def _cmd_verify(args: argparse.Namespace, session: Session) -> int:
    with session.progress(f"verifying {args.image or 'every image'}"):
        damaged = session.store.verify(args.image)
    if session.json:
        session.emit_json({"damaged": damaged})
    elif damaged:
        for digest in damaged:
            session.print(f"damaged {digest}")
    else:
        session.print(f"{args.image or 'every image'}: every blob matches its digest")
    return 1 if damaged else 0
