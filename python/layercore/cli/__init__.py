"""The ``layercore`` command line: build layers, compose images and inspect them in the store.

Every command works on the embedded store (an OCI image layout; ``--store DIR``, else
``$LAYERCORE_HOME``, else ``~/.local/share/layercore``). IMAGE arguments are a tag
(``app:1.0``) or a manifest digest (``sha256:<hex>``, or a unique prefix of 12 hex digits or
more). Commands whose output is data take ``--json``: ``json.dumps(..., indent=2)`` of objects
with stable keys, sizes in exact bytes. Tables are for people: sizes human-readable, no colour
codes unless stdout is a terminal, a progress spinner on stderr only when stderr is one.

Exit status: 0 on success, 1 when layercore reports an error (an unknown image, a damaged
blob, a missing directory), 2 for a usage error (a bad option, an invalid tag); ``run`` and
``start`` exit with the container's command's status (125 when it could not run).

The package has one module per command group. Each has a ``register(commands)`` that adds its
commands to the parser, every command's handler in its defaults; ``build_parser`` calls them in
the order ``--help`` lists the commands, so a new group is one module and one entry in
``_GROUPS`` (the module and the top-level commands it adds: a command's parser is built from
its module alone). Beside them: ``session`` (what a command runs with: the arguments, the store, the
consoles; ``UsageError``), ``output`` (sizes, digests, tables, the JSON of images and layers)
and ``parser`` (``Commands``, how a module adds its commands).

This module owns the top-level parser (``--store``, ``--version``) and ``main``, which maps
errors to exit statuses; it may import every module of the package, and none of them imports
it. Nothing outside the command line imports ``layercore.cli``: ``import layercore`` stays
free of argparse and rich.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from contextlib import suppress

from layercore.cli.parser import Commands, Formatter, epilog
from layercore.cli.session import Session, UsageError, print_error
from layercore.errors import LayerError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn

    from layercore.cli.session import Handler

__all__ = ["build_parser", "diff_images", "main"]

_DESCRIPTION = """\
Build layers, compose images and inspect them in the embedded image store (an OCI image
layout: --store DIR, else $LAYERCORE_HOME, else ~/.local/share/layercore).

IMAGE is a tag (app:1.0) or a manifest digest (sha256:<hex>, or a unique prefix of at least
12 hex digits). --json prints machine-readable output with stable keys and exact byte counts.
Exit status: 0 on success, 1 when an operation fails (unknown image, damaged blob, missing
directory), 2 for a usage error (bad option, invalid tag)."""

#: Each command group's module, in the order ``layercore --help`` lists their commands, with
#: the top-level commands it adds: a command's parser is built by importing its module alone
#: (importing every module would cost a short command like ``run`` most of its start-up).
_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("layer", ("layer",)),
    ("image", ("image",)),
    ("inspect", ("images", "inspect", "history", "ls", "cat", "which", "diff")),
    ("report", ("report",)),
    ("analysis", ("waste",)),
    ("explain", ("explain",)),
    ("rewrite", ("flatten", "squash")),
    ("build", ("build",)),
    ("container", ("run", "start", "ps", "commit")),
    ("transport", ("export", "import")),
    ("registry", ("pull", "push", "copy", "login", "logout")),
    ("store", ("tag", "rm", "rmi", "gc", "prune", "du", "verify")),
)


def _register(name: str) -> Callable[[Commands], None]:
    module = importlib.import_module(f"layercore.cli.{name}")
    register: Callable[[Commands], None] = module.register
    return register


def __getattr__(name: str) -> Any:
    if name == "diff_images":  # the image diff, for callers of the command line's library
        from layercore.cli.inspect import diff_images

        return diff_images
    raise AttributeError(f"module 'layercore.cli' has no attribute {name!r}")


# --- the parser -----------------------------------------------------------------------------


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
        from layercore.version import build_info

        print(build_info().describe())
        parser.exit()


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``layercore`` argument parser (each command's ``handler`` is in its defaults); with
    ``only``, a parser of that one top-level command (see :func:`_command_of`)."""
    parser = argparse.ArgumentParser(
        prog="layercore",
        description=_DESCRIPTION,
        formatter_class=Formatter,
        epilog=epilog(
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
    commands = Commands.of(parser, only)
    for module, names in _GROUPS:
        if only is None or only in names:
            _register(module)(commands)
    return parser


# --- main -----------------------------------------------------------------------------------


def _choices(parser: argparse.ArgumentParser) -> set[str]:
    """The top-level command names ``parser`` holds."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 2


def _broken_pipe() -> NoReturn:
    """The reader went away (``layercore ls img | head``): stop quietly."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(1)


def _command_of(argv: Sequence[str]) -> str | None:
    """The top-level command ``argv`` names (its first word that is not an option or the
    value of ``--store``), or None (no command: ``--help``, ``--version``, a usage error)."""
    words = iter(argv)
    for word in words:
        if word == "--store":
            next(words, None)
        elif word == "--":
            return next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status.
    Only the named command's parser is built; a name that is no command gets the whole
    parser, whose error lists them all. Run as the program (no ``argv``), ``run`` and
    ``start`` end the process themselves, with the container's exit status."""
    as_program = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_of(argv)
    status = _run(argv, command)
    if as_program and command in _ENDS_AT_ONCE:
        # The container has ended and its state is written: skip the interpreter's teardown
        # (freeing every module, about 10 ms here), which is a fair part of `run`'s start-up
        # budget. Nothing else is pending: no threads, no temp files, no atexit work.
        for stream in (sys.stdout, sys.stderr):
            with suppress(OSError):  # the reader went away
                stream.flush()
        os._exit(status)
    return status


#: Commands whose process ends with ``os._exit`` once they are done (see :func:`main`).
_ENDS_AT_ONCE = ("run", "start")


def _run(argv: list[str], command: str | None) -> int:
    parser = build_parser(command)
    if command is not None and command not in _choices(parser):
        parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return _exit_status(exc.code)
    session = Session(args)
    handler: Handler = args.handler
    try:
        return handler(args, session)
    except BrokenPipeError:
        _broken_pipe()
    except UsageError as exc:
        print_error(str(exc))
        return 2
    except LayerError as exc:
        print_error(str(exc))
        return 1
    except ValueError as exc:
        print_error(str(exc))
        return 2
    except OSError as exc:
        if exc.filename is not None and exc.strerror:
            print_error(f"{exc.filename}: {exc.strerror}")
        else:
            print_error(str(exc))
        return 1
    except KeyboardInterrupt:
        print_error("interrupted")
        return 130
