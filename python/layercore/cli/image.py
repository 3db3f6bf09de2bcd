"""``layercore image new|append|config``: make an image and change it; every change is saved as
a new image, under the tag it was loaded by or ``--tag NEW``.

It may import the image model, the layer engine, the errors, ``cli.session``, ``cli.output``,
``cli.parser``, and ``cli.layer`` for the build options of ``image append``.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from layercore.cli.layer import add_build_options, build_options
from layercore.cli.output import layer_json
from layercore.cli.parser import Commands
from layercore.cli.session import Session, UsageError, out_tag, report_saved
from layercore.errors import SourceNotFoundError
from layercore.image import Image
from layercore.layer import Layer

__all__ = ["register"]

_PORT = re.compile(r"[0-9]+(-[0-9]+)?(/(tcp|udp|sctp))?")


def register(commands: Commands) -> None:
    """Adds ``image new``, ``image append`` and ``image config`` (under ``image``)."""
    group = commands.group(
        "image",
        "create and change images",
        "Create images and change them (every change saves a new image).",
    )
    p = group.add(
        "new",
        _cmd_image_new,
        "save an empty image under TAG",
        """
        Saves an image with no layers and an empty config (scratch) under TAG. The
        architecture defaults to this machine's (amd64, arm64, ...).
        """,
        ["layercore image new app:1", "layercore image new base:arm --arch arm64 --variant v8"],
        json=True,
    )
    p.add_argument("tag", metavar="TAG", help="the tag to save it under, e.g. app:1.0")
    p.add_argument("--arch", metavar="A", help="architecture, GOARCH spelling (amd64, arm64)")
    p.add_argument("--os", metavar="O", default="linux", help="operating system (default: linux)")
    p.add_argument("--variant", metavar="V", help="CPU variant, e.g. v8 for arm64")

    p = group.add(
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
        json=True,
    )
    p.add_argument("image", metavar="TAG", help="the image to add to (a tag or a digest)")
    p.add_argument("src", metavar="SRC", help="a directory, or a layer blob file")
    p.add_argument("--created-by", metavar="S", help="the history entry's created_by")
    p.add_argument("--comment", metavar="S", help="the history entry's comment")
    add_build_options(p)
    p.add_argument(
        "--owner",
        choices=("root", "keep"),
        default="root",
        help="owner policy, as for layer create",
    )
    p.add_argument("--tag", metavar="NEW", help="save under NEW instead of TAG")

    p = group.add(
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
        json=True,
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


def _cmd_image_new(args: argparse.Namespace, session: Session) -> int:
    image = Image.scratch(architecture=args.arch, os=args.os, variant=args.variant)
    image = session.store.save(image, args.tag)
    return report_saved(session, args.tag, image)


def _cmd_image_append(args: argparse.Namespace, session: Session) -> int:
    image = session.load(args.image)
    tag = out_tag(session, args.image, args.tag)
    src = Path(args.src)
    if not src.exists():
        raise SourceNotFoundError("no such directory or layer blob", src)
    created_by = args.created_by
    if created_by is None:
        created_by = f"layercore image append {args.src}"
    with session.progress(f"adding {src}") as step, session.store.writing():
        if src.is_dir():
            step(f"building a layer from {src}")
            layer = session.store.build_layer(src, **build_options(args))
        else:
            step(f"reading the layer blob {src}")
            layer = Layer.open(src)
        step(f"saving {tag or 'the image'}")
        image = image.append(layer, created_by=created_by, comment=args.comment)
        image = session.store.save(image, tag)
    return report_saved(session, tag, image, layer=layer_json(image.layers[-1]))


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


def _cmd_image_config(args: argparse.Namespace, session: Session) -> int:
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
    tag = out_tag(session, args.image, args.tag)
    image = image.with_config(**changes, created_by=args.created_by, comment=args.comment)
    image = session.store.save(image, tag)
    return report_saved(session, tag, image)
