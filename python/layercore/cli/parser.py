"""How a command group adds its commands to the ``layercore`` parser.

``Commands`` is one level of subcommands (``layercore COMMAND``, ``layercore image COMMAND``)
holding the options every command takes: ``--store``, and ``--json`` for the commands whose
output is data. Each command module's ``register(commands)`` adds its commands with
``Commands.add`` (the handler goes into the command's defaults) and its groups of commands with
``Commands.group``. ``Formatter`` and ``epilog`` keep the help's line breaks and examples.

It may import argparse and ``cli.session`` (for the handler's type), nothing else.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from layercore.cli.session import Handler

__all__ = ["Commands", "Formatter", "epilog"]


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' and epilogs' line breaks (the examples). The width is the
    terminal's, found as ``shutil.get_terminal_size`` finds it but without importing shutil,
    which argparse would do for every parser built (a few ms of a short command's start)."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = _columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _columns() -> int:
    """``$COLUMNS``, else stdout's terminal width, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 80
    return columns or 80


def epilog(*lines: str) -> str:
    """The ``examples:`` block at the end of a command's help."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


class Commands:
    """One level of subcommands; ``--help`` lists them in the order they were added."""

    def __init__(
        self,
        subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
        common: argparse.ArgumentParser,
        as_json: argparse.ArgumentParser,
        only: str | None = None,
    ) -> None:
        self._subparsers = subparsers
        self._common = common
        self._as_json = as_json
        # When set, the one command of this level that is built: a command line names one
        # command, and building the parsers of all ~30 costs more than running some of them.
        self._only = only

    @classmethod
    def of(cls, parser: argparse.ArgumentParser, only: str | None = None) -> Commands:
        """The top level of ``parser``'s commands (``layercore COMMAND``); with ``only``, just
        that command is built (the others are skipped: :class:`_Skipped`)."""
        common = argparse.ArgumentParser(add_help=False, formatter_class=Formatter)
        common.add_argument(
            "--store",
            metavar="DIR",
            default=argparse.SUPPRESS,
            help="the image store (default: $LAYERCORE_HOME, else ~/.local/share/layercore)",
        )
        as_json = argparse.ArgumentParser(add_help=False, formatter_class=Formatter)
        as_json.add_argument(
            "--json", action="store_true", help="print JSON (stable keys, exact byte counts)"
        )
        subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
        return cls(subparsers, common, as_json, only)

    def add(
        self,
        name: str,
        handler: Handler,
        summary: str,
        description: str,
        examples: Sequence[str],
        *,
        json: bool = False,
    ) -> argparse.ArgumentParser:
        """Adds the command ``name``, run by ``handler``: ``summary`` is its line in this level's
        help, ``description`` (dedented) and ``examples`` make its own ``--help``, and
        ``json=True`` gives it ``--json``. Returns its parser, for its own arguments."""
        if self._only is not None and name != self._only:
            return _SKIPPED  # type: ignore[return-value]
        sub = self._subparsers.add_parser(
            name,
            help=summary,
            description=textwrap.dedent(description).strip(),
            epilog=epilog(*examples),
            formatter_class=Formatter,
            parents=[self._common, self._as_json] if json else [self._common],
        )
        sub.set_defaults(handler=handler)
        return sub

    def group(self, name: str, summary: str, description: str) -> Commands:
        """Adds ``name`` as a command that holds commands (``layercore image COMMAND``) and
        returns the level its commands are added to."""
        if self._only is not None and name != self._only:
            return _SKIPPED  # type: ignore[return-value]
        parser = self._subparsers.add_parser(
            name,
            help=summary,
            description=description,
            formatter_class=Formatter,
            parents=[self._common],
        )
        subparsers = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)
        return Commands(subparsers, self._common, self._as_json)


class _Skipped:
    """What :meth:`Commands.add` and :meth:`Commands.group` return for a command that is not
    built: it takes the arguments, groups and commands a module adds, and keeps none."""

    def __getattr__(self, name: str) -> Any:
        return self._ignore

    def _ignore(self, *args: Any, **kwargs: Any) -> _Skipped:
        return self


_SKIPPED = _Skipped()
