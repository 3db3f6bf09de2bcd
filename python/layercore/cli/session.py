"""What a command runs with: the ``Session`` (the parsed arguments, the store opened on first
use, the consoles and the progress displays on stderr), ``UsageError`` for a command line that
parses but asks for something impossible, the ``layercore: error:`` line, and how a command
saves a changed image and reports it.

Every command module imports it. It may import the store, the image model, rich and
``cli.output``, nothing else of the command line. rich is imported only when something is
drawn with it (a table, a progress display on a terminal): a command that prints plain lines
starts without it.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager

# Types only: a command imports the store and the image model when it uses them (`run` of an
# image whose snapshots exist never does; see layercore.runtime.containers.launch).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any, TypeAlias

    from rich.console import Console
    from rich.table import Table

    from layercore.image import Image
    from layercore.store import Store

    Handler: TypeAlias = Callable[[argparse.Namespace, "Session"], int]

__all__ = ["Handler", "Session", "UsageError", "out_tag", "print_error", "report_saved"]


class UsageError(Exception):
    """A command line that parses but asks for something impossible (exit status 2)."""


class Session:
    """What every command needs: the parsed arguments, the store (opened on first use), and
    the consoles."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._store: Store | None = None
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        """rich's console on stdout, made on first use."""
        if self._console is None:
            from rich.console import Console

            tty = sys.stdout.isatty()
            # Off a terminal: no colour codes, and no wrapping of long digests or paths.
            self._console = Console(
                file=sys.stdout,
                highlight=False,
                markup=False,
                emoji=False,
                no_color=not tty,
                width=None if tty else 4096,
            )
        return self._console

    @property
    def store(self) -> Store:
        if self._store is None:
            from layercore.store import Store

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
        # What rich's console would write with markup, highlighting and wrapping off.
        print(text, file=sys.stdout)

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
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

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
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        console = Console(file=sys.stderr, highlight=False, markup=False, emoji=False)
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(description, total=None)
            yield lambda text: bar.update(task, description=text)


#: What runs a command: it gets the parsed arguments and the session, returns the exit status.


def print_error(message: str) -> None:
    """The ``layercore: error: MESSAGE`` line on stderr."""
    print(f"layercore: error: {message}", file=sys.stderr)


def out_tag(session: Session, ref: str, new_tag: str | None) -> str | None:
    """Where a changed image is saved: ``--tag NEW``, else the tag it was loaded by; an image
    loaded by digest is saved untagged."""
    if new_tag is not None:
        return new_tag
    return ref if session.is_tag(ref) else None


def report_saved(session: Session, tag: str | None, image: Image, **extra: Any) -> int:
    """Prints a saved image (``TAG DIGEST``, or its JSON with ``extra`` keys); exit status 0."""
    if session.json:
        from layercore.cli.output import image_json

        session.emit_json({**image_json(tag, image), **extra})
    else:
        session.print(f"{tag if tag is not None else '<untagged>'} {image.digest}")
    return 0
