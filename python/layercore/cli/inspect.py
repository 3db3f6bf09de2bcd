"""Reading images without changing them: ``images`` (the store's list), ``inspect``,
``history``, and in the merged view ``ls``, ``cat``, ``which`` and ``diff``; ``diff_images`` is
the comparison behind ``diff``, for programs.

It may import the image model, the engine's entries and hashing, the errors, ``cli.session``,
``cli.output`` and ``cli.parser``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

from layercore._core import Entry, chain_id, sha256_file
from layercore.cli.output import (
    borderless_table,
    human_size,
    image_json,
    image_size,
    plural,
    short_digest,
    show_path,
)
from layercore.cli.parser import Commands
from layercore.cli.session import Session
from layercore.errors import SourceNotFoundError
from layercore.image import HistoryEntry, Image
from layercore.layer import Layer

__all__ = ["DIFF_FIELDS", "diff_images", "register"]

#: Entry fields whose difference makes a path "M" in ``layercore diff``.
DIFF_FIELDS = (
    "kind",
    "mode",
    "uid",
    "gid",
    "size",
    "mtime",
    "linkname",
    "xattrs",
    "devmajor",
    "devminor",
)

_KIND_BITS = {
    "file": stat.S_IFREG,
    "hardlink": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
}


def register(commands: Commands) -> None:
    """Adds ``images``, ``inspect``, ``history``, ``ls``, ``cat``, ``which`` and ``diff``."""
    commands.add(
        "images",
        _cmd_images,
        "list the images in the store",
        "Lists every image in the store: tag, digest, layers, size (all its blobs), created.",
        ["layercore images", "layercore images --json"],
        json=True,
    )
    p = commands.add(
        "inspect",
        _cmd_inspect,
        "show an image's manifest and config",
        """
        Shows an image: digest, media type, platform, runtime config and layers. --json prints
        {"digest", "manifest", "config"} with the manifest and config as stored.
        """,
        ["layercore inspect app:1", "layercore inspect sha256:3f2a9c1b7e4d --json"],
        json=True,
    )
    p.add_argument("image", metavar="IMAGE", help="a tag or a digest")
    p = commands.add(
        "history",
        _cmd_history,
        "show how an image was built",
        """
        One row per history entry, oldest first: the layer it made (or '-' and '(empty)' for
        config-only steps), the layer's digest and size, when and by what it was created.
        """,
        ["layercore history app:1"],
        json=True,
    )
    p.add_argument("image", metavar="IMAGE", help="a tag or a digest")
    p = commands.add(
        "ls",
        _cmd_ls,
        "list a directory of an image",
        """
        Lists PATH (default: the root) in the image's merged view, without extracting
        anything. -l shows mode, owner uid/gid, size, modification time (UTC) and link targets;
        -R lists everything below PATH (paths from the image's root).
        """,
        ["layercore ls app:1", "layercore ls app:1 /etc -l", "layercore ls app:1 -R --json"],
        json=True,
    )
    p.add_argument("image", metavar="IMAGE", help="a tag or a digest")
    p.add_argument("path", metavar="PATH", nargs="?", default="/", help="default: /")
    p.add_argument("-l", dest="long", action="store_true", help="long listing")
    p.add_argument("-R", dest="recursive", action="store_true", help="recursive")
    p = commands.add(
        "cat",
        _cmd_cat,
        "write a file of an image to stdout",
        """
        Writes the bytes of the regular file PATH of the image's merged view to stdout.
        Symbolic links are followed inside the image.
        """,
        ["layercore cat app:1 /etc/os-release", "layercore cat app:1 /bin/busybox > busybox"],
    )
    p.add_argument("image", metavar="IMAGE", help="a tag or a digest")
    p.add_argument("path", metavar="PATH")
    p = commands.add(
        "which",
        _cmd_which,
        "show which layer provides a path",
        """
        Shows the layer that provides PATH in the image (its index, digest and the history
        entry that created it), then every layer that touched PATH: added, modified, deleted
        or hidden, with that layer's created_by.
        """,
        ["layercore which app:1 /etc/passwd", "layercore which app:1 /usr/bin --json"],
        json=True,
    )
    p.add_argument("image", metavar="IMAGE", help="a tag or a digest")
    p.add_argument("path", metavar="PATH")
    p = commands.add(
        "diff",
        _cmd_diff,
        "compare two images' file trees, or list a container's changes",
        """
        Compares the merged views of two images and prints one line per change, sorted by
        path: A (only in the second), D (only in the first), M (in both, differing in kind,
        mode, owner, size, mtime, link target, xattrs or device numbers). Files with equal
        metadata are equal unless --content finds their bytes differ (files from the same
        layer are not read).

        With one argument, a container: what it changed, as `docker diff` lists it, read from
        its writable layer: A (added), C (changed; a directory when something in it changed),
        D (deleted).
        """,
        [
            "layercore diff app:1 app:2",
            "layercore diff app:1 app:2 --content --json",
            "layercore diff web",
        ],
        json=True,
    )
    p.add_argument("image", metavar="IMAGE", help="the old image (or a container, alone)")
    p.add_argument("other", metavar="IMAGE", nargs="?", help="the new image")
    p.add_argument(
        "--content", action="store_true", help="also compare the bytes of equal-metadata files"
    )


def _abs(path: str) -> str:
    """An image path as the command line shows it: from the image's root."""
    return "/" + path.strip("/")


def _rel(path: str) -> str:
    """An image path as the merged view takes it (``/etc/`` -> ``etc``; the root is ``""``)."""
    return path.strip("/")


def _time(mtime: int) -> str:
    """A Unix time as ``YYYY-MM-DD HH:MM`` (UTC), or the number when it is out of range."""
    try:
        from datetime import UTC, datetime

        return datetime.fromtimestamp(mtime, UTC).strftime("%Y-%m-%d %H:%M")
    except (OverflowError, OSError, ValueError):
        return str(mtime)


def _mode_string(entry: Entry) -> str:
    """``ls -l``'s mode column; ``h`` marks a hardlink, as ``tar -tv`` does."""
    text = stat.filemode(_KIND_BITS.get(entry.kind, stat.S_IFREG) | entry.mode)
    return "h" + text[1:] if entry.kind == "hardlink" else text


def _entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "path": _abs(entry.path),
        "kind": entry.kind,
        "mode": entry.mode,
        "uid": entry.uid,
        "gid": entry.gid,
        "uname": entry.uname,
        "gname": entry.gname,
        "size": entry.size,
        "mtime": entry.mtime,
        "linkname": entry.linkname,
        "devmajor": entry.devmajor,
        "devminor": entry.devminor,
        "xattrs": sorted(entry.xattrs),
        "layer": entry.layer,
    }


def _history_json(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "created": entry.created,
        "created_by": entry.created_by,
        "comment": entry.comment,
        "author": entry.author,
        "empty_layer": entry.empty_layer,
    }


def _cmd_images(args: argparse.Namespace, session: Session) -> int:
    images = session.store.images()
    if session.json:
        session.emit_json([image_json(tag, image) for tag, image in images])
        return 0
    table = borderless_table("TAG", "DIGEST", "LAYERS", "SIZE", "CREATED", right=("LAYERS", "SIZE"))
    for tag, image in images:
        table.add_row(
            tag if tag is not None else "<none>",
            short_digest(image.digest),
            str(len(image.layers)),
            human_size(image_size(image)),
            image.created or "-",
        )
    session.print_table(table)
    return 0


def _runtime_rows(image: Image) -> list[tuple[str, str]]:
    rc = image.runtime_config
    rows: list[tuple[str, str]] = []
    if rc.env:
        rows.append(("env", "\n".join(rc.env)))
    if rc.entrypoint is not None:
        rows.append(("entrypoint", json.dumps(list(rc.entrypoint))))
    if rc.cmd is not None:
        rows.append(("cmd", json.dumps(list(rc.cmd))))
    for name, value in (
        ("workdir", rc.working_dir),
        ("user", rc.user),
        ("stop signal", rc.stop_signal),
    ):
        if value:
            rows.append((name, value))
    if rc.labels:
        rows.append(("labels", "\n".join(f"{k}={v}" for k, v in sorted(rc.labels.items()))))
    if rc.exposed_ports:
        rows.append(("exposed ports", " ".join(rc.exposed_ports)))
    if rc.volumes:
        rows.append(("volumes", " ".join(rc.volumes)))
    return rows


def _cmd_inspect(args: argparse.Namespace, session: Session) -> int:
    image = session.load(args.image)
    if session.json:
        session.emit_json(
            {"digest": image.digest, "manifest": image.manifest, "config": image.config}
        )
        return 0
    platform = f"{image.os}/{image.architecture}"
    if image.config.get("variant"):
        platform += f"/{image.config['variant']}"
    summary = borderless_table("FIELD", "VALUE")
    summary.show_header = False
    rows = [
        ("digest", image.digest),
        ("media type", image.media_type),
        ("size", f"{human_size(image_size(image))} ({plural(len(image.layers), 'layer')})"),
        ("config", image.config_digest),
        ("created", image.created or "-"),
        ("platform", platform),
        ("tags", " ".join(session.tags_of(image.digest)) or "-"),
    ]
    if image.diff_ids:
        rows.append(("chain id", chain_id(list(image.diff_ids))))
    for key, value in [*rows, *_runtime_rows(image)]:
        summary.add_row(key, value)
    session.print_table(summary)
    if image.layers:
        session.print()
        table = borderless_table(
            "LAYER", "DIGEST", "SIZE", "MEDIA TYPE", "DIFF ID", right=("LAYER", "SIZE")
        )
        for i, layer in enumerate(image.layers):
            table.add_row(
                str(i), layer.digest, human_size(layer.size), layer.media_type, layer.diff_id
            )
        session.print_table(table)
    return 0


def _layer_entries(image: Image) -> list[HistoryEntry]:
    """The history entry of each layer, bottom first."""
    return [entry for layer, entry in image.layer_history() if layer is not None]


def _cmd_history(args: argparse.Namespace, session: Session) -> int:
    image = session.load(args.image)
    rows: list[tuple[int | None, Layer | None, HistoryEntry]] = []
    index = 0
    for layer, entry in image.layer_history():
        rows.append((None if layer is None else index, layer, entry))
        if layer is not None:
            index += 1
    if session.json:
        session.emit_json(
            [
                {
                    "layer": i,
                    "digest": None if layer is None else layer.digest,
                    "size": None if layer is None else layer.size,
                    **_history_json(entry),
                }
                for i, layer, entry in rows
            ]
        )
        return 0
    table = borderless_table(
        "LAYER", "DIGEST", "SIZE", "CREATED", "CREATED BY", "COMMENT", right=("LAYER", "SIZE")
    )
    for i, layer, entry in rows:
        table.add_row(
            "-" if i is None else str(i),
            "(empty)" if layer is None else short_digest(layer.digest),
            "-" if layer is None else human_size(layer.size),
            entry.created or "-",
            entry.created_by or "",
            entry.comment or "",
        )
    session.print_table(table)
    return 0


def _require(image: Image, ref: str, path: str) -> Entry:
    entry = image.stack.lookup(_rel(path))
    if entry is None:
        raise SourceNotFoundError(f"no such path in image {ref}", _abs(path))
    return entry


def _ls_row(entry: Entry, name: str) -> tuple[str, str, str, str, str]:
    if entry.kind in ("char", "block"):
        size = f"{entry.devmajor},{entry.devminor}"
    else:
        size = human_size(entry.size)
    shown = show_path(name)
    if entry.kind == "symlink":
        shown += f" -> {show_path(entry.linkname or '')}"
    elif entry.kind == "hardlink":
        shown += f" link to {_abs(show_path(entry.linkname or ''))}"
    return _mode_string(entry), f"{entry.uid}/{entry.gid}", size, _time(entry.mtime), shown


def _cmd_ls(args: argparse.Namespace, session: Session) -> int:
    image = session.load(args.image)
    stack = image.stack
    path = _rel(args.path)
    entries: list[tuple[Entry, str]]
    top = None if path == "" else _require(image, args.image, path)
    if top is not None and top.kind != "dir":
        entries = [(top, _abs(path))]
    elif args.recursive:
        prefix = f"{path}/" if path else ""
        entries = [(e, _abs(e.path)) for e in stack.walk() if e.path.startswith(prefix)]
    else:
        names = stack.listdir(path)
        found = stack.lookup_many([f"{path}/{n}" if path else n for n in names])
        entries = [(e, n) for e, n in zip(found, names, strict=True) if e is not None]
    if session.json:
        session.emit_json([_entry_json(e) for e, _name in entries])
        return 0
    if not args.long:
        sys.stdout.write("".join(show_path(name) + "\n" for _e, name in entries))
        return 0
    table = borderless_table("MODE", "OWNER", "SIZE", "MODIFIED", "NAME", right=("SIZE",))
    table.show_header = False
    for entry, name in entries:
        table.add_row(*_ls_row(entry, name))
    session.print_table(table)
    return 0


def _cmd_cat(args: argparse.Namespace, session: Session) -> int:
    image = session.load(args.image)
    _require(image, args.image, args.path)
    out = sys.stdout.buffer
    # Streamed through a temp file: memory stays small whatever the file's size.
    import tempfile

    with tempfile.TemporaryDirectory(prefix="layercore-cat-") as tmp:
        body = Path(tmp) / "body"
        image.stack.read_into(_rel(args.path), body)
        with body.open("rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
    out.flush()
    return 0


def _cmd_which(args: argparse.Namespace, session: Session) -> int:
    image = session.load(args.image)
    stack = image.stack
    path = _rel(args.path)
    entry = stack.lookup(path)
    changes = stack.history(path)
    by_layer = _layer_entries(image)

    def created_by(i: int) -> str | None:
        return by_layer[i].created_by if i < len(by_layer) else None

    if entry is None or entry.layer is None:
        reason = ""
        if changes:
            i, change = changes[-1]
            reason = f" ({change} by layer {i}: {created_by(i) or 'no history'})"
        raise SourceNotFoundError(f"no such path in image {args.image}{reason}", _abs(path))
    provider = image.layers[entry.layer]
    if session.json:
        session.emit_json(
            {
                "path": _abs(path),
                "layer": entry.layer,
                "digest": provider.digest,
                "diff_id": provider.diff_id,
                "created_by": created_by(entry.layer),
                "entry": _entry_json(entry),
                "history": [
                    {
                        "layer": i,
                        "change": change,
                        "digest": image.layers[i].digest,
                        "created_by": created_by(i),
                    }
                    for i, change in changes
                ],
            }
        )
        return 0
    session.print(
        f"{show_path(_abs(path))}: layer {entry.layer} {short_digest(provider.digest)} "
        f"({created_by(entry.layer) or 'no history'})"
    )
    mode, owner, size, mtime, shown = _ls_row(entry, "")
    session.print(f"  {mode} {owner} {size} {mtime}{shown}")
    session.print("history:")
    table = borderless_table("LAYER", "CHANGE", "DIGEST", "CREATED BY", right=("LAYER",))
    table.show_header = False
    for i, change in changes:
        table.add_row(f"  {i}", change, short_digest(image.layers[i].digest), created_by(i) or "")
    session.print_table(table)
    return 0


def _path_key(path: str) -> tuple[bytes, ...]:
    """The merged view's walk order: depth first, names sorted by bytes."""
    return tuple(path.encode("utf-8", "surrogateescape").split(b"/"))


def _same_body(a: Image, b: Image, path: str, tmp: Path) -> bool:
    """Whether ``path`` has the same bytes in both images; streamed, never held in memory."""
    digests = []
    for side, image in (("a", a), ("b", b)):
        body = tmp / side
        image.stack.read_into(path, body)
        digests.append(sha256_file(os.fspath(body)))
        body.unlink()
    return digests[0] == digests[1]


def diff_images(a: Image, b: Image, *, content: bool = False) -> list[dict[str, Any]]:
    """The changes from ``a``'s merged view to ``b``'s: ``{"change": "A"|"D"|"M", "path",
    "fields"}`` sorted by path, ``fields`` naming what differs (``"content"`` for bodies, which
    are compared only with ``content=True`` and only when the metadata is equal)."""
    left = {e.path: e for e in a.stack.walk()}
    right = {e.path: e for e in b.stack.walk()}
    changes: list[dict[str, Any]] = []
    import tempfile

    with tempfile.TemporaryDirectory(prefix="layercore-diff-") as tmp:
        for path in sorted(left.keys() | right.keys(), key=_path_key):
            old, new = left.get(path), right.get(path)
            if old is None or new is None:
                changes.append({"change": "A" if old is None else "D", "path": _abs(path)})
                changes[-1]["fields"] = []
                continue
            fields = [f for f in DIFF_FIELDS if getattr(old, f) != getattr(new, f)]
            if not fields and content and old.kind in ("file", "hardlink"):
                assert old.layer is not None and new.layer is not None
                same_layer = a.layers[old.layer].diff_id == b.layers[new.layer].diff_id
                if not same_layer and not _same_body(a, b, path, Path(tmp)):
                    fields = ["content"]
            if fields:
                changes.append({"change": "M", "path": _abs(path), "fields": fields})
    return changes


def _cmd_diff(args: argparse.Namespace, session: Session) -> int:
    if args.other is None:
        from layercore.cli.container import show_changes

        return show_changes(session, args.image)
    a, b = session.load(args.image), session.load(args.other)
    with session.progress(f"comparing {args.image} and {args.other}"):
        changes = diff_images(a, b, content=args.content)
    if session.json:
        session.emit_json(changes)
    else:
        sys.stdout.write("".join(f"{c['change']} {show_path(c['path'])}\n" for c in changes))
    return 0
