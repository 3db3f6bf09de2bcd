"""The ``layercore`` command line: build layers, compose images and inspect them in the store.

Every command works on the embedded store (an OCI image layout; ``--store DIR``, else
``$LAYERCORE_HOME``, else ``~/.local/share/layercore``). IMAGE arguments are a tag
(``app:1.0``) or a manifest digest (``sha256:<hex>``, or a unique prefix of 12 hex digits or
more). Commands whose output is data take ``--json``: ``json.dumps(..., indent=2)`` of objects
with stable keys, sizes in exact bytes. Tables are for people: sizes human-readable, no colour
codes unless stdout is a terminal, a progress spinner on stderr only when stderr is one.

Exit status: 0 on success, 1 when layercore reports an error (an unknown image, a damaged
blob, a missing directory), 2 for a usage error (a bad option, an invalid tag).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from layercore._core import Entry, chain_id, sha256_file
from layercore.errors import ImageNotFoundError, LayerError, SourceNotFoundError
from layercore.image import HistoryEntry, Image
from layercore.layer import Compression, Layer
from layercore.store import Store
from layercore.version import build_info

__all__ = ["build_parser", "diff_images", "main"]

_DESCRIPTION = """\
Build layers, compose images and inspect them in the embedded image store (an OCI image
layout: --store DIR, else $LAYERCORE_HOME, else ~/.local/share/layercore).

IMAGE is a tag (app:1.0) or a manifest digest (sha256:<hex>, or a unique prefix of at least
12 hex digits). --json prints machine-readable output with stable keys and exact byte counts.
Exit status: 0 on success, 1 when an operation fails (unknown image, damaged blob, missing
directory), 2 for a usage error (bad option, invalid tag)."""

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
_COMPRESSIONS: dict[str, Compression] = {"gzip": "gzip", "zstd": "zstd", "none": None}
_PORT = re.compile(r"[0-9]+(-[0-9]+)?(/(tcp|udp|sctp))?")
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


class UsageError(Exception):
    """A command line that parses but asks for something impossible (exit status 2)."""


# --- output ---------------------------------------------------------------------------------


def _show(name: str) -> str:
    """A path as a terminal can show it: undecodable bytes and control characters escaped."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text.translate(_CONTROL)


def _abs(path: str) -> str:
    """An image path as the command line shows it: from the image's root."""
    return "/" + path.strip("/")


def _rel(path: str) -> str:
    """An image path as the merged view takes it (``/etc/`` -> ``etc``; the root is ``""``)."""
    return path.strip("/")


def _short(digest: str | None) -> str:
    """The first 12 hex digits of a digest, as listings show it."""
    return "-" if digest is None else digest.partition(":")[2][:12]


def _human(size: int | None) -> str:
    """A byte count for people (binary units, one decimal)."""
    if size is None:
        return "-"
    if size < 1024:
        return f"{size} B"
    value, units = size / 1024, ["KiB", "MiB", "GiB", "TiB"]
    while value >= 1024 and len(units) > 1:
        value /= 1024
        units.pop(0)
    return f"{value:.1f} {units[0]}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _time(mtime: int) -> str:
    """A Unix time as ``YYYY-MM-DD HH:MM`` (UTC), or the number when it is out of range."""
    try:
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


def _layer_json(layer: Layer) -> dict[str, Any]:
    return {
        "media_type": layer.media_type,
        "digest": layer.digest,
        "size": layer.size,
        "diff_id": layer.diff_id,
        "uncompressed_size": layer.uncompressed_size,
        "compression": layer.compression,
        "path": str(layer.path),
    }


def _image_size(image: Image) -> int:
    """Bytes of every blob the image is made of: manifest, config and layers."""
    return len(image.manifest_bytes) + len(image.config_bytes) + sum(x.size for x in image.layers)


def _image_json(tag: str | None, image: Image) -> dict[str, Any]:
    return {
        "tag": tag,
        "digest": image.digest,
        "media_type": image.media_type,
        "config_digest": image.config_digest,
        "architecture": image.architecture,
        "os": image.os,
        "created": image.created,
        "size": _image_size(image),
        "layers": [
            {
                "media_type": x.media_type,
                "digest": x.digest,
                "diff_id": x.diff_id,
                "size": x.size,
            }
            for x in image.layers
        ],
    }


def _history_json(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "created": entry.created,
        "created_by": entry.created_by,
        "comment": entry.comment,
        "author": entry.author,
        "empty_layer": entry.empty_layer,
    }


def _table(*columns: str, right: Sequence[str] = ()) -> Table:
    """A borderless table with an upper-case header, ``docker images`` style."""
    table = Table(box=None, header_style="bold", pad_edge=False, show_edge=False)
    for name in columns:
        table.add_column(name, justify="right" if name in right else "left", overflow="fold")
    return table


class _Session:
    """What every command needs: the parsed arguments, the store (opened on first use), and
    the consoles."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._store: Store | None = None
        tty = sys.stdout.isatty()
        # Off a terminal: no colour codes, and no wrapping of long digests or paths.
        self.console = Console(
            file=sys.stdout,
            highlight=False,
            markup=False,
            emoji=False,
            no_color=not tty,
            width=None if tty else 4096,
        )

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.args.store)
        return self._store

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    def load(self, ref: str) -> Image:
        return self.store.load(ref)

    def is_tag(self, ref: str) -> bool:
        """Whether ``ref`` names a tag (rather than a digest) in the store."""
        return ref in self.store.tags()

    def tags_of(self, digest: str) -> list[str]:
        return [tag for tag, d in self.store.tags().items() if d == digest]

    def emit_json(self, obj: object) -> None:
        print(json.dumps(obj, indent=2), file=sys.stdout)

    def print(self, text: str = "") -> None:
        self.console.print(text, soft_wrap=True)

    def print_table(self, table: Table) -> None:
        if self.console.is_terminal:
            self.console.print(table)
            return
        with self.console.capture() as captured:
            self.console.print(table)
        lines = captured.get().splitlines()
        sys.stdout.write("".join(line.rstrip() + "\n" for line in lines))

    @contextmanager
    def transfer(self, description: str) -> Iterator[Callable[[int, int | None], None]]:
        """A progress bar of bytes moved (with speed and time left) on stderr while blobs are
        copied (only when stderr is a terminal); yields the ``(done, total)`` callback that
        export and import report to."""
        if not sys.stderr.isatty():
            yield lambda _done, _total: None
            return
        console = Console(file=sys.stderr, highlight=False, markup=False, emoji=False)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(description, total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)

    @contextmanager
    def progress(self, description: str) -> Iterator[Callable[[str], None]]:
        """A spinner with the elapsed time on stderr while a long step runs (only when stderr
        is a terminal); yields a function that changes the description between steps."""
        if not sys.stderr.isatty():
            yield lambda _text: None
            return
        console = Console(file=sys.stderr, highlight=False, markup=False, emoji=False)
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(description, total=None)
            yield lambda text: bar.update(task, description=text)


def _out_tag(session: _Session, ref: str, new_tag: str | None) -> str | None:
    """Where a changed image is saved: ``--tag NEW``, else the tag it was loaded by; an image
    loaded by digest is saved untagged."""
    if new_tag is not None:
        return new_tag
    return ref if session.is_tag(ref) else None


def _report_saved(session: _Session, tag: str | None, image: Image, **extra: Any) -> int:
    if session.json:
        session.emit_json({**_image_json(tag, image), **extra})
    else:
        session.print(f"{tag if tag is not None else '<untagged>'} {image.digest}")
    return 0


# --- layer ----------------------------------------------------------------------------------


def _source_date_epoch(args: argparse.Namespace) -> int | None:
    """``--source-date-epoch``, else ``$SOURCE_DATE_EPOCH`` (the reproducible-builds
    convention), else None."""
    if args.source_date_epoch is not None:
        return int(args.source_date_epoch)
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH must be a Unix time, not {value!r}") from None


def _build_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "compression": _COMPRESSIONS[args.compression],
        "level": args.level,
        "source_date_epoch": _source_date_epoch(args),
        "owner": args.owner,
    }


def _check_dir(path: Path) -> None:
    if not path.exists():
        raise SourceNotFoundError("no such directory", path)
    if not path.is_dir():
        raise SourceNotFoundError("not a directory", path)


def _cmd_layer_create(args: argparse.Namespace, session: _Session) -> int:
    src = Path(args.dir)
    _check_dir(src)
    with session.progress(f"building a layer from {src}"):
        if args.output is not None:
            layer = Layer.from_dir(src, args.output, **_build_options(args))
        else:
            layer = session.store.build_layer(src, **_build_options(args))
    if session.json:
        session.emit_json(_layer_json(layer))
        return 0
    table = _table("FIELD", "VALUE")
    table.show_header = False
    for key, value in _layer_json(layer).items():
        shown = _human(value) if key in ("size", "uncompressed_size") else value
        table.add_row(key, "-" if shown is None else str(shown))
    session.print_table(table)
    return 0


# --- image new / append / config ------------------------------------------------------------


def _cmd_image_new(args: argparse.Namespace, session: _Session) -> int:
    image = Image.scratch(architecture=args.arch, os=args.os, variant=args.variant)
    image = session.store.save(image, args.tag)
    return _report_saved(session, args.tag, image)


def _cmd_image_append(args: argparse.Namespace, session: _Session) -> int:
    image = session.load(args.image)
    tag = _out_tag(session, args.image, args.tag)
    src = Path(args.src)
    if not src.exists():
        raise SourceNotFoundError("no such directory or layer blob", src)
    created_by = args.created_by
    if created_by is None:
        created_by = f"layercore image append {args.src}"
    with session.progress(f"adding {src}") as step, session.store.writing():
        if src.is_dir():
            step(f"building a layer from {src}")
            layer = session.store.build_layer(src, **_build_options(args))
        else:
            step(f"reading the layer blob {src}")
            layer = Layer.open(src)
        step(f"saving {tag or 'the image'}")
        image = image.append(layer, created_by=created_by, comment=args.comment)
        image = session.store.save(image, tag)
    return _report_saved(session, tag, image, layer=_layer_json(image.layers[-1]))


def _key_value(option: str) -> Callable[[str], tuple[str, str | None]]:
    def parse(text: str) -> tuple[str, str | None]:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{option} takes KEY=VALUE, not {text!r}")
        return key, value

    return parse


def _key_only(option: str) -> Callable[[str], tuple[str, str | None]]:
    def parse(text: str) -> tuple[str, str | None]:
        if not text or "=" in text:
            raise argparse.ArgumentTypeError(f"{option} takes a KEY (no '='), not {text!r}")
        return text, None

    return parse


def _json_argv(option: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"{option}: not JSON ({exc.msg}): {text!r}") from exc
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise argparse.ArgumentTypeError(
                f'{option} takes a JSON array of strings, e.g. \'["sh", "-c", "date"]\''
            )
        return value

    return parse


def _port(text: str) -> str:
    if not _PORT.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"not a port: {text!r} (PORT[-PORT][/tcp|/udp|/sctp], e.g. 80 or 53/udp)"
        )
    return text if "/" in text else f"{text}/tcp"


def _edit(
    current: Sequence[str], add: Sequence[str] | None, drop: Sequence[str] | None
) -> list[str]:
    result = [x for x in current if x not in (drop or ())]
    for x in add or ():
        if x not in result:
            result.append(x)
    return result


def _cmd_image_config(args: argparse.Namespace, session: _Session) -> int:
    changes: dict[str, Any] = {}
    if args.env is not None:
        changes["env"] = dict(args.env)
    if args.labels is not None:
        changes["labels"] = dict(args.labels)
    for name in ("cmd", "entrypoint"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    for name in ("working_dir", "user", "stop_signal"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    image = session.load(args.image)
    current = image.runtime_config
    if args.expose is not None or args.unexpose is not None:
        changes["exposed_ports"] = _edit(current.exposed_ports, args.expose, args.unexpose)
    if args.volume is not None or args.unset_volume is not None:
        changes["volumes"] = _edit(current.volumes, args.volume, args.unset_volume)
    if not changes:
        raise UsageError("image config: nothing to change (see `layercore image config --help`)")
    tag = _out_tag(session, args.image, args.tag)
    image = image.with_config(**changes, created_by=args.created_by, comment=args.comment)
    image = session.store.save(image, tag)
    return _report_saved(session, tag, image)


# --- listing and inspecting -----------------------------------------------------------------


def _cmd_images(args: argparse.Namespace, session: _Session) -> int:
    images = session.store.images()
    if session.json:
        session.emit_json([_image_json(tag, image) for tag, image in images])
        return 0
    table = _table("TAG", "DIGEST", "LAYERS", "SIZE", "CREATED", right=("LAYERS", "SIZE"))
    for tag, image in images:
        table.add_row(
            tag if tag is not None else "<none>",
            _short(image.digest),
            str(len(image.layers)),
            _human(_image_size(image)),
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


def _cmd_inspect(args: argparse.Namespace, session: _Session) -> int:
    image = session.load(args.image)
    if session.json:
        session.emit_json(
            {"digest": image.digest, "manifest": image.manifest, "config": image.config}
        )
        return 0
    platform = f"{image.os}/{image.architecture}"
    if image.config.get("variant"):
        platform += f"/{image.config['variant']}"
    summary = _table("FIELD", "VALUE")
    summary.show_header = False
    rows = [
        ("digest", image.digest),
        ("media type", image.media_type),
        ("size", f"{_human(_image_size(image))} ({_plural(len(image.layers), 'layer')})"),
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
        table = _table("LAYER", "DIGEST", "SIZE", "MEDIA TYPE", "DIFF ID", right=("LAYER", "SIZE"))
        for i, layer in enumerate(image.layers):
            table.add_row(str(i), layer.digest, _human(layer.size), layer.media_type, layer.diff_id)
        session.print_table(table)
    return 0


def _layer_entries(image: Image) -> list[HistoryEntry]:
    """The history entry of each layer, bottom first."""
    return [entry for layer, entry in image.layer_history() if layer is not None]


def _cmd_history(args: argparse.Namespace, session: _Session) -> int:
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
    table = _table(
        "LAYER", "DIGEST", "SIZE", "CREATED", "CREATED BY", "COMMENT", right=("LAYER", "SIZE")
    )
    for i, layer, entry in rows:
        table.add_row(
            "-" if i is None else str(i),
            "(empty)" if layer is None else _short(layer.digest),
            "-" if layer is None else _human(layer.size),
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
        size = _human(entry.size)
    shown = _show(name)
    if entry.kind == "symlink":
        shown += f" -> {_show(entry.linkname or '')}"
    elif entry.kind == "hardlink":
        shown += f" link to {_abs(_show(entry.linkname or ''))}"
    return _mode_string(entry), f"{entry.uid}/{entry.gid}", size, _time(entry.mtime), shown


def _cmd_ls(args: argparse.Namespace, session: _Session) -> int:
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
        sys.stdout.write("".join(_show(name) + "\n" for _e, name in entries))
        return 0
    table = _table("MODE", "OWNER", "SIZE", "MODIFIED", "NAME", right=("SIZE",))
    table.show_header = False
    for entry, name in entries:
        table.add_row(*_ls_row(entry, name))
    session.print_table(table)
    return 0


def _cmd_cat(args: argparse.Namespace, session: _Session) -> int:
    image = session.load(args.image)
    _require(image, args.image, args.path)
    out = sys.stdout.buffer
    # Streamed through a temp file: memory stays small whatever the file's size.
    with tempfile.TemporaryDirectory(prefix="layercore-cat-") as tmp:
        body = Path(tmp) / "body"
        image.stack.read_into(_rel(args.path), body)
        with body.open("rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
    out.flush()
    return 0


def _cmd_which(args: argparse.Namespace, session: _Session) -> int:
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
        f"{_show(_abs(path))}: layer {entry.layer} {_short(provider.digest)} "
        f"({created_by(entry.layer) or 'no history'})"
    )
    mode, owner, size, mtime, shown = _ls_row(entry, "")
    session.print(f"  {mode} {owner} {size} {mtime}{shown}")
    session.print("history:")
    table = _table("LAYER", "CHANGE", "DIGEST", "CREATED BY", right=("LAYER",))
    table.show_header = False
    for i, change in changes:
        table.add_row(f"  {i}", change, _short(image.layers[i].digest), created_by(i) or "")
    session.print_table(table)
    return 0


# --- diff -----------------------------------------------------------------------------------


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


def _cmd_diff(args: argparse.Namespace, session: _Session) -> int:
    a, b = session.load(args.image), session.load(args.other)
    with session.progress(f"comparing {args.image} and {args.other}"):
        changes = diff_images(a, b, content=args.content)
    if session.json:
        session.emit_json(changes)
    else:
        sys.stdout.write("".join(f"{c['change']} {_show(c['path'])}\n" for c in changes))
    return 0


# --- flatten, squash ------------------------------------------------------------------------


def _rewrite_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "compression": _COMPRESSIONS[args.compression],
        "level": args.level,
        "source_date_epoch": _source_date_epoch(args),
        "created_by": args.created_by,
    }


def _cmd_flatten(args: argparse.Namespace, session: _Session) -> int:
    image = session.load(args.image)
    if not image.layers:
        raise UsageError(f"flatten: image {args.image} has no layers")
    tag = _out_tag(session, args.image, args.tag)
    with session.progress(f"flattening {len(image.layers)} layers of {args.image}"):
        flat = session.store.flatten(image, tag, **_rewrite_options(args))
    return _report_saved(session, tag, flat)


def _cmd_squash(args: argparse.Namespace, session: _Session) -> int:
    image = session.load(args.image)
    count = len(image.layers)
    if not 0 <= args.start < args.end <= count:
        raise UsageError(
            f"squash: START..END must satisfy 0 <= START < END <= {count} "
            f"(image {args.image} has {count} layers), not {args.start}..{args.end}"
        )
    tag = _out_tag(session, args.image, args.tag)
    with session.progress(f"squashing layers {args.start}..{args.end} of {args.image}"):
        squashed = session.store.squash(image, args.start, args.end, tag, **_rewrite_options(args))
    return _report_saved(session, tag, squashed)


# --- moving images in and out ---------------------------------------------------------------


def _cmd_export(args: argparse.Namespace, session: _Session) -> int:
    docker_layout = args.docker_layout
    if args.format == "docker-archive":
        docker_layout = docker_layout or "oci"
    elif docker_layout is not None:
        raise UsageError(
            f"export: --docker-layout applies to --format docker-archive only, not {args.format}"
        )
    image = session.load(args.image)
    with session.transfer(f"exporting {args.image}") as report:
        try:
            dest = session.store.export_image(
                args.image,
                args.dest,
                args.format,
                name=args.name,
                docker_layout=docker_layout or "oci",
                progress=report,
            )
        except ImportError as exc:  # an optional dependency (zstandard) that is not installed
            _error(str(exc))
            return 1
    if session.json:
        session.emit_json(
            {
                "digest": image.digest,
                "dest": str(dest),
                "format": args.format,
                "docker_layout": docker_layout,
                "name": args.name,
            }
        )
    else:
        form = args.format if docker_layout is None else f"{args.format}, {docker_layout} layout"
        session.print(f"exported {args.image} ({_short(image.digest)}) to {dest} ({form})")
    return 0


def _cmd_import(args: argparse.Namespace, session: _Session) -> int:
    src = Path(args.src)
    if not src.exists():
        raise SourceNotFoundError("no such image layout or archive", src)
    before = session.store.tags()
    with session.transfer(f"importing {src.name}") as report:
        image = session.store.import_image(src, args.tag, name=args.name, progress=report)
    tag = args.tag
    if tag is None:
        # The tag the import gave it (its name in SRC): the one that now points at it.
        tags = session.tags_of(image.digest)
        moved = [t for t in tags if before.get(t) != image.digest]
        tag = next(iter(moved or tags), None)
    return _report_saved(session, tag, image)


# --- tags and the store ---------------------------------------------------------------------


def _cmd_tag(args: argparse.Namespace, session: _Session) -> int:
    session.store.tag(args.image, args.new_tag)
    if not session.json:
        session.print(f"tagged {args.new_tag} -> {session.store.tags()[args.new_tag]}")
    else:
        session.emit_json({"tag": args.new_tag, "digest": session.store.tags()[args.new_tag]})
    return 0


def _cmd_rm(args: argparse.Namespace, session: _Session) -> int:
    status = 0
    for tag in args.tags:
        try:
            session.store.remove(tag)
        except ImageNotFoundError as exc:
            _error(str(exc))
            status = 1
        else:
            session.print(f"untagged {tag}")
    return status


def _cmd_gc(args: argparse.Namespace, session: _Session) -> int:
    with session.progress("removing blobs no image uses"):
        report = session.store.gc()
    if session.json:
        session.emit_json({"removed": list(report.removed), "bytes_freed": report.bytes_freed})
    else:
        removed = _plural(len(report.removed), "blob")
        session.print(f"removed {removed}, freed {_human(report.bytes_freed)}")
    return 0


def _cmd_du(args: argparse.Namespace, session: _Session) -> int:
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
    table = _table("TAG", "DIGEST", "SIZE", "UNIQUE", "SHARED", right=("SIZE", "UNIQUE", "SHARED"))
    for u in usage.images:
        table.add_row(
            u.tag if u.tag is not None else "<none>",
            _short(u.digest),
            _human(u.size),
            _human(u.unique_bytes),
            _human(u.shared_bytes),
        )
    session.print_table(table)
    session.print()
    session.print(
        f"blobs on disk: {_human(usage.total_bytes)}; shared by several images: "
        f"{_human(usage.shared_bytes)}; saved by sharing: {_human(usage.saved_bytes)}; "
        f"unreferenced: {_human(usage.unreferenced_bytes)}"
        + (" (`layercore gc` frees it)" if usage.unreferenced_bytes else "")
    )
    return 0


def _cmd_verify(args: argparse.Namespace, session: _Session) -> int:
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


# --- the parser -----------------------------------------------------------------------------


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' and epilogs' line breaks (the examples)."""


class _VersionAction(argparse.Action):
    """``--version``: the version, then the build (core, compiler, wheel tag), and exit 0.

    argparse's own ``version`` action takes its text when the parser is built; this one reads
    the build only when asked, so other commands never pay for the metadata look-up."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(build_info().describe())
        parser.exit()


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _add_build_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compression",
        choices=sorted(_COMPRESSIONS),
        default="gzip",
        help="layer compression (default: gzip; none writes a plain tar)",
    )
    parser.add_argument(
        "--level", type=int, metavar="N", help="compression level (default: 1 gzip, 3 zstd)"
    )
    parser.add_argument(
        "--source-date-epoch",
        type=int,
        metavar="N",
        help="clamp file mtimes to this Unix time, for reproducible layers "
        "(default: $SOURCE_DATE_EPOCH when set)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``layercore`` argument parser (each command's ``handler`` is in its defaults)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="the image store (default: $LAYERCORE_HOME, else ~/.local/share/layercore)",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument(
        "--json", action="store_true", help="print JSON (stable keys, exact byte counts)"
    )
    data = [common, as_json]

    parser = argparse.ArgumentParser(
        prog="layercore",
        description=_DESCRIPTION,
        formatter_class=_Formatter,
        epilog=_examples(
            "layercore layer create ./rootfs",
            "layercore image new app:1",
            "layercore image append app:1 ./rootfs --created-by 'ADD rootfs /'",
            "layercore image config app:1 --env PATH=/bin --cmd sh",
            "layercore which app:1 /etc/passwd",
            "layercore export app:1 app.tar --format docker-archive",
        ),
    )
    parser.add_argument(
        "--store",
        metavar="DIR",
        help="the image store (default: $LAYERCORE_HOME, else ~/.local/share/layercore)",
    )
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="show the version and the build of the core (compiler, target, wheel tag), and exit",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str,
        handler: Callable[[argparse.Namespace, _Session], int],
        summary: str,
        description: str,
        examples: Sequence[str],
        *,
        parents: Sequence[argparse.ArgumentParser] = (common,),
        group: Any = commands,
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name,
            help=summary,
            description=textwrap.dedent(description).strip(),
            epilog=_examples(*examples),
            formatter_class=_Formatter,
            parents=list(parents),
        )
        sub.set_defaults(handler=handler)
        return sub

    # layer
    layer = commands.add_parser(
        "layer",
        help="build layer blobs",
        description="Build layer blobs from directories.",
        formatter_class=_Formatter,
        parents=[common],
    )
    layer_commands = layer.add_subparsers(dest="layer_command", metavar="COMMAND", required=True)
    p = command(
        "create",
        _cmd_layer_create,
        "build a layer from a directory",
        """
        Writes the directory DIR as a layer blob (a deterministic tar, compressed) into the
        store, or to OUT with -o, and prints its descriptor: media type, digest (of the blob),
        size, diff_id (of the uncompressed tar). A layer in the store that no image uses yet is
        removed by the next `layercore gc`; `image append` builds and adds one in one step.
        """,
        [
            "layercore layer create ./rootfs",
            "layercore layer create ./app --compression zstd --source-date-epoch 0",
            "layercore layer create ./app -o app.tar.gz --json",
        ],
        parents=data,
        group=layer_commands,
    )
    p.add_argument("dir", metavar="DIR", help="the directory to pack")
    _add_build_options(p)
    p.add_argument(
        "--owner",
        choices=("root", "keep"),
        default="root",
        help="root: every entry 0:0 (default); keep: the files' own uid/gid and names",
    )
    p.add_argument("-o", "--output", metavar="OUT", help="write the blob here, not to the store")

    # image
    image = commands.add_parser(
        "image",
        help="create and change images",
        description="Create images and change them (every change saves a new image).",
        formatter_class=_Formatter,
        parents=[common],
    )
    image_commands = image.add_subparsers(dest="image_command", metavar="COMMAND", required=True)
    p = command(
        "new",
        _cmd_image_new,
        "save an empty image under TAG",
        """
        Saves an image with no layers and an empty config (scratch) under TAG. The
        architecture defaults to this machine's (amd64, arm64, ...).
        """,
        ["layercore image new app:1", "layercore image new base:arm --arch arm64 --variant v8"],
        parents=data,
        group=image_commands,
    )
    p.add_argument("tag", metavar="TAG", help="the tag to save it under, e.g. app:1.0")
    p.add_argument("--arch", metavar="A", help="architecture, GOARCH spelling (amd64, arm64)")
    p.add_argument("--os", metavar="O", default="linux", help="operating system (default: linux)")
    p.add_argument("--variant", metavar="V", help="CPU variant, e.g. v8 for arm64")

    p = command(
        "append",
        _cmd_image_append,
        "add a layer on top of an image",
        """
        Adds a layer on top of image TAG and saves the result under TAG (or NEW). SRC is a
        directory (packed into the store as a layer, options as for `layer create`) or an
        existing layer blob (tar, tar.gz or tar.zst). The history entry records --created-by
        (default: the command) and --comment.
        """,
        [
            "layercore image append app:1 ./rootfs --created-by 'ADD rootfs.tar /'",
            "layercore image append app:1 layer.tar.gz --tag app:2",
        ],
        parents=data,
        group=image_commands,
    )
    p.add_argument("image", metavar="TAG", help="the image to add to (a tag or a digest)")
    p.add_argument("src", metavar="SRC", help="a directory, or a layer blob file")
    p.add_argument("--created-by", metavar="S", help="the history entry's created_by")
    p.add_argument("--comment", metavar="S", help="the history entry's comment")
    _add_build_options(p)
    p.add_argument(
        "--owner",
        choices=("root", "keep"),
        default="root",
        help="owner policy, as for layer create",
    )
    p.add_argument("--tag", metavar="NEW", help="save under NEW instead of TAG")

    p = command(
        "config",
        _cmd_image_config,
        "change an image's runtime config",
        """
        Changes the runtime config of image TAG (adding one empty-layer history entry) and
        saves the result under TAG (or NEW). --env/--label set a key, --unset-env/--unset-label
        drop it; --cmd/--entrypoint give one argument each and replace the old value
        (--cmd-json/--entrypoint-json take a JSON array; '[]' clears it); --expose/--volume add
        to the image's ports/volumes, --unexpose/--unset-volume remove from them.
        An argument that starts with '-' is written --cmd=-c.
        """,
        [
            "layercore image config app:1 --env PATH=/usr/bin:/bin --unset-env DEBUG",
            "layercore image config app:1 --cmd sh --cmd=-c --cmd 'echo hi'",
            "layercore image config app:1 --entrypoint-json '[\"/app/run\"]' --cmd-json '[]'",
            "layercore image config app:1 --expose 8080 --volume /data --workdir /app --tag app:2",
        ],
        parents=data,
        group=image_commands,
    )
    p.add_argument("image", metavar="TAG", help="the image to change (a tag or a digest)")
    env = _key_value("--env")
    p.add_argument(
        "--env", dest="env", action="append", type=env, metavar="KEY=VALUE", help="set KEY in Env"
    )
    p.add_argument(
        "--unset-env",
        dest="env",
        action="append",
        type=_key_only("--unset-env"),
        metavar="KEY",
        help="remove KEY from Env",
    )
    cmd = p.add_mutually_exclusive_group()
    cmd.add_argument("--cmd", action="append", metavar="ARG", help="one argument of Cmd")
    cmd.add_argument(
        "--cmd-json",
        dest="cmd",
        type=_json_argv("--cmd-json"),
        metavar="JSON",
        help="Cmd as a JSON array",
    )
    entrypoint = p.add_mutually_exclusive_group()
    entrypoint.add_argument(
        "--entrypoint", action="append", metavar="ARG", help="one argument of Entrypoint"
    )
    entrypoint.add_argument(
        "--entrypoint-json",
        dest="entrypoint",
        type=_json_argv("--entrypoint-json"),
        metavar="JSON",
        help="Entrypoint as a JSON array",
    )
    p.add_argument("--workdir", dest="working_dir", metavar="DIR", help="WorkingDir")
    p.add_argument("--user", metavar="USER", help="User (name, uid, or uid:gid)")
    label = _key_value("--label")
    p.add_argument(
        "--label",
        dest="labels",
        action="append",
        type=label,
        metavar="KEY=VALUE",
        help="set a label",
    )
    p.add_argument(
        "--unset-label",
        dest="labels",
        action="append",
        type=_key_only("--unset-label"),
        metavar="KEY",
        help="remove a label",
    )
    p.add_argument(
        "--expose", action="append", type=_port, metavar="PORT", help="expose a port (80, 53/udp)"
    )
    p.add_argument("--unexpose", action="append", type=_port, metavar="PORT", help="stop exposing")
    p.add_argument("--volume", action="append", metavar="PATH", help="add a volume")
    p.add_argument("--unset-volume", action="append", metavar="PATH", help="remove a volume")
    p.add_argument("--stop-signal", metavar="SIGNAL", help="StopSignal, e.g. SIGTERM")
    p.add_argument(
        "--created-by", metavar="S", help="the history entry's created_by (default: like ENV ...)"
    )
    p.add_argument("--comment", metavar="S", help="the history entry's comment")
    p.add_argument("--tag", metavar="NEW", help="save under NEW instead of TAG")

    # listing and inspecting
    command(
        "images",
        _cmd_images,
        "list the images in the store",
        "Lists every image in the store: tag, digest, layers, size (all its blobs), created.",
        ["layercore images", "layercore images --json"],
        parents=data,
    )
    p = command(
        "inspect",
        _cmd_inspect,
        "show an image's manifest and config",
        """
        Shows an image: digest, media type, platform, runtime config and layers. --json prints
        {"digest", "manifest", "config"} with the manifest and config as stored.
        """,
        ["layercore inspect app:1", "layercore inspect sha256:3f2a9c1b7e4d --json"],
        parents=data,
    )
    p.add_argument("image", metavar="IMAGE", help="a tag or a digest")
    p = command(
        "history",
        _cmd_history,
        "show how an image was built",
        """
        One row per history entry, oldest first: the layer it made (or '-' and '(empty)' for
        config-only steps), the layer's digest and size, when and by what it was created.
        """,
        ["layercore history app:1"],
        parents=data,
    )
    p.add_argument("image", metavar="IMAGE", help="a tag or a digest")
    p = command(
        "ls",
        _cmd_ls,
        "list a directory of an image",
        """
        Lists PATH (default: the root) in the image's merged view, without extracting
        anything. -l shows mode, owner uid/gid, size, modification time (UTC) and link targets;
        -R lists everything below PATH (paths from the image's root).
        """,
        ["layercore ls app:1", "layercore ls app:1 /etc -l", "layercore ls app:1 -R --json"],
        parents=data,
    )
    p.add_argument("image", metavar="IMAGE", help="a tag or a digest")
    p.add_argument("path", metavar="PATH", nargs="?", default="/", help="default: /")
    p.add_argument("-l", dest="long", action="store_true", help="long listing")
    p.add_argument("-R", dest="recursive", action="store_true", help="recursive")
    p = command(
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
    p = command(
        "which",
        _cmd_which,
        "show which layer provides a path",
        """
        Shows the layer that provides PATH in the image (its index, digest and the history
        entry that created it), then every layer that touched PATH: added, modified, deleted
        or hidden, with that layer's created_by.
        """,
        ["layercore which app:1 /etc/passwd", "layercore which app:1 /usr/bin --json"],
        parents=data,
    )
    p.add_argument("image", metavar="IMAGE", help="a tag or a digest")
    p.add_argument("path", metavar="PATH")
    p = command(
        "diff",
        _cmd_diff,
        "compare two images' file trees",
        """
        Compares the merged views of two images and prints one line per change, sorted by
        path: A (only in the second), D (only in the first), M (in both, differing in kind,
        mode, owner, size, mtime, link target, xattrs or device numbers). Files with equal
        metadata are equal unless --content finds their bytes differ (files from the same
        layer are not read).
        """,
        ["layercore diff app:1 app:2", "layercore diff app:1 app:2 --content --json"],
        parents=data,
    )
    p.add_argument("image", metavar="IMAGE", help="the old image")
    p.add_argument("other", metavar="IMAGE", help="the new image")
    p.add_argument(
        "--content", action="store_true", help="also compare the bytes of equal-metadata files"
    )

    # rewriting
    p = command(
        "flatten",
        _cmd_flatten,
        "merge all of an image's layers into one",
        """
        Writes the image's merged view as a single layer and saves the image under IMAGE (if
        it is a tag) or NEW. The history keeps every old entry (as empty layers) and adds one.
        """,
        ["layercore flatten app:1 --tag app:1-flat"],
        parents=data,
    )
    p.add_argument("image", metavar="IMAGE", help="a tag or a digest")
    p.add_argument("--tag", metavar="NEW", help="save under NEW instead of IMAGE")
    p.add_argument("--created-by", metavar="S", help="default: layercore flatten")
    _add_build_options(p)
    p = command(
        "squash",
        _cmd_squash,
        "merge a range of an image's layers into one",
        """
        Merges layers START..END (END exclusive, bottom = 0) into one layer that shows
        exactly what they showed, keeps the others, and saves the image under IMAGE (if it is
        a tag) or NEW.
        """,
        ["layercore squash app:1 1 4 --tag app:1-squashed"],
        parents=data,
    )
    p.add_argument("image", metavar="IMAGE", help="a tag or a digest")
    p.add_argument("start", metavar="START", type=int)
    p.add_argument("end", metavar="END", type=int)
    p.add_argument("--tag", metavar="NEW", help="save under NEW instead of IMAGE")
    p.add_argument("--created-by", metavar="S", help="default: layercore squash START..END")
    _add_build_options(p)

    # moving images
    p = command(
        "export",
        _cmd_export,
        "write an image to an OCI layout or an archive",
        """
        Writes the image to DEST: an OCI image layout directory (oci; added to an existing
        layout), a tar of one (oci-archive), or a `docker save` archive (docker-archive), by
        default as Docker 25 and later write it (an OCI layout plus manifest.json);
        --docker-layout legacy writes the form older Docker, skopeo and buildah write
        (<id>/layer.tar, uncompressed, with <id>/json and repositories).
        --name sets the reference name (default: the tag part of IMAGE).
        """,
        [
            "layercore export app:1 ./layout",
            "layercore export app:1 app.tar --format docker-archive --name example.com/app:1",
            "layercore export app:1 app.tar --format docker-archive --docker-layout legacy",
        ],
        parents=data,
    )
    p.add_argument("image", metavar="IMAGE", help="a tag or a digest")
    p.add_argument("dest", metavar="DEST")
    p.add_argument(
        "--format",
        choices=("oci", "oci-archive", "docker-archive"),
        default="oci",
        help="default: oci",
    )
    p.add_argument(
        "--docker-layout",
        choices=("oci", "legacy"),
        help="the form of a docker-archive: oci (Docker >= 25, the default) or legacy",
    )
    p.add_argument("--name", metavar="N", help="the reference name written to DEST")
    p = command(
        "import",
        _cmd_import,
        "add an image from an OCI layout or an archive",
        """
        Adds the image in SRC (an OCI layout directory, an oci-archive or a docker-archive,
        detected) to the store and tags it T (default: its own name in SRC). --name picks one
        image of a SRC holding several.
        """,
        ["layercore import ./layout --tag app:1", "layercore import app.tar --name app:1"],
        parents=data,
    )
    p.add_argument("src", metavar="SRC")
    p.add_argument("--tag", metavar="T", help="tag it T")
    p.add_argument("--name", metavar="N", help="the image's reference name in SRC")

    # tags and the store
    p = command(
        "tag",
        _cmd_tag,
        "give an image another tag",
        "Tags the image IMAGE as NEW (moving NEW if it named another image).",
        ["layercore tag app:1 app:latest"],
        parents=data,
    )
    p.add_argument("image", metavar="IMAGE", help="a tag or a digest")
    p.add_argument("new_tag", metavar="NEW")
    p = command(
        "rm",
        _cmd_rm,
        "remove tags",
        "Removes the tags; their blobs stay until `layercore gc`.",
        ["layercore rm app:1 app:2", "layercore rm app:1 && layercore gc"],
    )
    p.add_argument("tags", metavar="TAG", nargs="+")
    command(
        "gc",
        _cmd_gc,
        "delete blobs no image uses",
        "Deletes every blob that no image in the store references.",
        ["layercore gc", "layercore gc --json"],
        parents=data,
    )
    command(
        "du",
        _cmd_du,
        "show the store's disk use",
        """
        Per image: its size (every blob it uses), the bytes only it uses (unique) and the
        bytes it shares with other images; then the blobs on disk, the bytes sharing saved,
        and the bytes no image uses (freed by gc).
        """,
        ["layercore du", "layercore du --json"],
        parents=data,
    )
    p = command(
        "verify",
        _cmd_verify,
        "re-hash blobs and report damaged ones",
        """
        Re-hashes the blobs of IMAGE (default: every image) and lists those whose bytes no
        longer match their digest; exit status 1 if there is one.
        """,
        ["layercore verify", "layercore verify app:1"],
        parents=data,
    )
    p.add_argument("image", metavar="IMAGE", nargs="?", help="a tag or a digest")
    return parser


# --- main -----------------------------------------------------------------------------------


def _error(message: str) -> None:
    print(f"layercore: error: {message}", file=sys.stderr)


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 2


def _broken_pipe() -> NoReturn:
    """The reader went away (``layercore ls img | head``): stop quietly."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return _exit_status(exc.code)
    session = _Session(args)
    handler: Callable[[argparse.Namespace, _Session], int] = args.handler
    try:
        return handler(args, session)
    except BrokenPipeError:
        _broken_pipe()
    except UsageError as exc:
        _error(str(exc))
        return 2
    except LayerError as exc:
        _error(str(exc))
        return 1
    except ValueError as exc:
        _error(str(exc))
        return 2
    except OSError as exc:
        if exc.filename is not None and exc.strerror:
            _error(f"{exc.filename}: {exc.strerror}")
        else:
            _error(str(exc))
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
