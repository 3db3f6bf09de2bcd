"""``layercore export`` and ``import``: an image out of the store into an OCI layout, an OCI
archive or a docker-archive, and back in, with a progress bar of bytes on a terminal.

It may import the errors, ``cli.session``, ``cli.output`` and ``cli.parser``; the formats
themselves are ``layercore.transport``'s, reached through the store.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from layercore.cli.output import short_digest
from layercore.cli.parser import Commands
from layercore.cli.session import Session, UsageError, print_error, report_saved
from layercore.errors import SourceNotFoundError

__all__ = ["register"]


def register(commands: Commands) -> None:
    """Adds ``export`` and ``import``."""
    p = commands.add(
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
        json=True,
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
    p = commands.add(
        "import",
        _cmd_import,
        "add an image from an OCI layout or an archive",
        """
        Adds the image in SRC (an OCI layout directory, an oci-archive or a docker-archive,
        detected) to the store and tags it T (default: its own name in SRC). --name picks one
        image of a SRC holding several.
        """,
        ["layercore import ./layout --tag app:1", "layercore import app.tar --name app:1"],
        json=True,
    )
    p.add_argument("src", metavar="SRC")
    p.add_argument("--tag", metavar="T", help="tag it T")
    p.add_argument("--name", metavar="N", help="the image's reference name in SRC")


def _cmd_export(args: argparse.Namespace, session: Session) -> int:
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
            print_error(str(exc))
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
        session.print(f"exported {args.image} ({short_digest(image.digest)}) to {dest} ({form})")
    return 0


def _cmd_import(args: argparse.Namespace, session: Session) -> int:
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
    return report_saved(session, tag, image)
