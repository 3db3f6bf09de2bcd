"""``layercore build``: a Dockerfile and a context to an image in the store.

It may import ``layercore.build`` and the command line's ``parser``, ``session`` and
``output``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from contextlib import ExitStack
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

from layercore.cli.output import borderless_table, plain_table, short_digest
from layercore.cli.parser import Commands
from layercore.cli.session import Session, UsageError

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult

    from layercore.build.remote_cache import CacheRef

__all__ = ["register"]


def register(commands: Commands) -> None:
    """Adds ``build``."""
    p = commands.add(
        "build",
        _cmd_build,
        "build an image from a Dockerfile, without a daemon",
        """
        Builds the Dockerfile (CONTEXT/Dockerfile, or -f FILE; -f - reads it from stdin)
        with the directory CONTEXT and saves the image in the store under each -t TAG. RUN
        steps run in a sandbox (bwrap) over the stage's files; COPY reads the context as
        .dockerignore leaves it. History entries are BuildKit's. --source-date-epoch (or
        $SOURCE_DATE_EPOCH) makes the image reproducible. Progress goes to stderr: on a
        terminal (auto) a live view of the running steps with the last lines of their output;
        plain lines (plain, or auto when stderr is no terminal); one JSON event a line (json).
        --json prints the result. --cache-from REF lets steps hit a build cache another store
        pushed with --cache-to REF (only the layers of the steps that hit are downloaded); a
        cache that is missing or unreadable is a warning.
        """,
        [
            "layercore build -t app:1 .",
            "layercore build -f build/app.Dockerfile --target runtime -t app:1 .",
            "layercore build --build-arg VERSION=1.2 --label org.example.team=core -t app:1 .",
            "cat Dockerfile | layercore build -f - --progress json .",
            "layercore build --cache-from registry.example/app:cache "
            "--cache-to registry.example/app:cache,mode=max -t app:1 .",
        ],
        json=True,
    )
    p.add_argument("context", metavar="CONTEXT", help="the build context directory")
    p.add_argument("-f", "--file", metavar="FILE", help="the Dockerfile (- for stdin)")
    p.add_argument(
        "-t", "--tag", metavar="TAG", action="append", default=[], help="tag the image TAG"
    )
    p.add_argument("--target", metavar="STAGE", help="build this stage (default: the last)")
    p.add_argument(
        "--build-arg",
        metavar="K[=V]",
        action="append",
        default=[],
        help="a build arg; K alone takes its value from the environment",
    )
    p.add_argument(
        "--label", metavar="K=V", action="append", default=[], help="a label on the image"
    )
    p.add_argument(
        "--no-cache", action="store_true", help="run every step, whatever the build cache holds"
    )
    p.add_argument(
        "--no-cache-filter",
        metavar="STAGE",
        action="append",
        default=[],
        help="run every step of this stage (name or index), whatever the build cache holds",
    )
    p.add_argument(
        "--explain",
        action="store_true",
        help="print why each step was or was not taken from the build cache",
    )
    p.add_argument(
        "--progress",
        choices=("auto", "plain", "json"),
        default="auto",
        help="how progress is shown on stderr (default: auto)",
    )
    p.add_argument(
        "--secret",
        metavar="id=ID,src=PATH",
        action="append",
        default=[],
        help="a file for RUN --mount=type=secret,id=ID (never stored in the image)",
    )
    p.add_argument(
        "--cache-to",
        metavar="REF[,mode=min|max]",
        action="append",
        default=[],
        help="push the build cache to the registry reference REF after the build: the steps of "
        "the final image (mode=min, the default) or of every stage (mode=max); BuildKit's "
        "type=registry,ref=REF[,mode=max][,ignore-error=true] works too",
    )
    p.add_argument(
        "--cache-from",
        metavar="REF",
        action="append",
        default=[],
        help="use the build cache at the registry reference REF (or type=registry,ref=REF)",
    )
    p.add_argument("--compression", choices=("gzip", "zstd"), default="gzip")
    p.add_argument("--source-date-epoch", metavar="SECONDS", type=int)


def _pairs(values: list[str], what: str, *, from_env: bool) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not key:
            raise UsageError(f"{what} {value!r}: write KEY=VALUE")
        if not sep:
            if not from_env:
                raise UsageError(f"{what} {value!r}: write KEY=VALUE")
            if key not in os.environ:
                continue  # as docker does: an unset variable is no build arg
            rest = os.environ[key]
        out[key] = rest
    return out


def _cache_refs(values: list[str], *, export: bool) -> list[CacheRef]:
    """``--cache-to``/``--cache-from`` values, parsed; a malformed one is a usage error. The
    registry client is loaded only when there are some."""
    if not values:
        return []
    from layercore.build.remote_cache import CacheRef

    try:
        return [CacheRef.parse(value, export=export) for value in values]
    except ValueError as e:
        raise UsageError(str(e)) from None


class _Printer:
    """Progress on stderr: ``#N [stage:line] INSTRUCTION`` and the output of RUN steps, or
    one JSON object a line."""

    def __init__(self, mode: str, out: TextIO) -> None:
        self.mode = mode
        self.out = out
        self.count = 0

    def __call__(self, event: object) -> None:
        from layercore.build import BuildEvent

        assert isinstance(event, BuildEvent)
        if self.mode == "json":
            obj: dict[str, object] = {"event": event.kind}
            if event.stage or event.line:
                obj.update(stage=event.stage, line=event.line)
            if event.text:
                obj["text"] = event.text
            if event.step is not None:
                obj["step"] = event.step.to_json()
            print(json.dumps(obj), file=self.out, flush=True)
            return
        if event.kind == "step":
            self.count += 1
            print(f"#{self.count} [{event.stage}:{event.line}] {event.text}", file=self.out)
        elif event.kind == "output":
            print(f"#{self.count}   {event.text}", file=self.out)
        elif event.kind == "done" and event.step is not None:
            step = event.step
            layer = f" -> {short_digest(step.layer)}" if step.layer else ""
            if step.cached:
                print(f"#{self.count} CACHED{layer}", file=self.out)
            else:
                print(f"#{self.count} done in {step.seconds:.2f}s{layer}", file=self.out)
                if step.reason:
                    print(f"#{self.count} cache miss: {step.reason}", file=self.out)
        elif event.kind == "warning":
            print(f"warning: {event.text}", file=self.out)
        self.out.flush()


class _LiveStep:
    def __init__(self, stage: str, line: int, text: str) -> None:
        self.stage = stage
        self.line = line
        self.text = text
        self.start = time.monotonic()
        self.seconds: float | None = None
        self.failed = False
        self.cached = False
        self.output: list[str] = []


class _Live:
    """Progress on a terminal, redrawn in place as BuildKit's does: a line per step (``=>``,
    its stage and Dockerfile line, the instruction, the time it has taken), and under each
    running ``RUN`` the last lines of its output; the steps of stages built at once run side
    by side. What scrolls out of the terminal's height is the oldest finished steps."""

    OUTPUT_LINES = 6

    def __init__(self, out: TextIO) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=out, highlight=False, markup=False, emoji=False)
        self.steps: list[_LiveStep] = []
        self.running: dict[tuple[str, int], _LiveStep] = {}
        self.warnings: list[str] = []
        self.lock = threading.Lock()
        self.live = Live(
            self,
            console=self.console,
            refresh_per_second=8,
            redirect_stdout=False,
            redirect_stderr=False,
            vertical_overflow="visible",
        )

    def __enter__(self) -> _Live:
        self.live.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        with self.lock:
            for step in self.running.values():
                step.failed = kind is not None
                step.seconds = time.monotonic() - step.start
            self.running.clear()
        self.live.stop()

    def __call__(self, event: object) -> None:
        from layercore.build import BuildEvent

        assert isinstance(event, BuildEvent)
        with self.lock:
            key = (event.stage, event.line)
            if event.kind == "step":
                step = _LiveStep(event.stage, event.line, event.text)
                self.steps.append(step)
                self.running[key] = step
            elif event.kind == "output" and key in self.running:
                output = self.running[key].output
                output.append(event.text)
                del output[: -self.OUTPUT_LINES]
            elif event.kind == "done" and key in self.running:
                step = self.running.pop(key)
                step.seconds = event.step.seconds if event.step else None
                step.cached = bool(event.step and event.step.cached)
                step.output = []
            elif event.kind == "warning":
                self.warnings.append(event.text)
        self.live.refresh()

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.text import Text

        width = options.max_width
        lines: list[Text] = [Text(f"warning: {w}", style="yellow") for w in self.warnings]
        with self.lock:
            now = time.monotonic()
            for step in self.steps:
                seconds = step.seconds if step.seconds is not None else now - step.start
                state = (
                    "ERROR"
                    if step.failed
                    else "CACHED"
                    if step.cached
                    else "DONE"
                    if step.seconds is not None
                    else ""
                )
                right = f" {state} {seconds:.1f}s".rstrip() if state else f" {seconds:.1f}s"
                head = f"=> [{step.stage}:{step.line}] " + " ".join(step.text.split())
                room = max(width - len(right), 10)
                if len(head) > room:
                    head = head[: room - 3] + "..."
                style = "red" if step.failed else "blue" if step.seconds is None else ""
                lines.append(Text(head.ljust(room) + right, style=style))
                for out in step.output:
                    lines.append(Text("   " + out[: width - 3], style="dim"))
        height = max(options.height or console.height, 5)
        yield from lines[-height:]


def _cmd_build(args: argparse.Namespace, session: Session) -> int:
    import layercore.build as builder

    build_args = _pairs(args.build_arg, "--build-arg", from_env=True)
    labels = _pairs(args.label, "--label", from_env=False)
    secrets = {}
    for spec in args.secret:
        fields = dict(part.partition("=")[::2] for part in spec.split(","))
        source = fields.get("src") or fields.get("source")
        if not fields.get("id") or not source:
            raise UsageError(f"--secret {spec!r}: write id=ID,src=PATH")
        secrets[fields["id"]] = source
    cache_to = _cache_refs(args.cache_to, export=True)
    cache_from = _cache_refs(args.cache_from, export=False)
    text = None
    dockerfile = args.file
    if dockerfile == "-":
        text, dockerfile = sys.stdin.buffer.read(), None
    if not os.path.isdir(args.context):
        raise UsageError(f"build: the context {args.context!r} is not a directory")
    mode = args.progress
    if mode == "auto":
        mode = "tty" if sys.stderr.isatty() and os.environ.get("TERM") != "dumb" else "plain"
    display = _Live(sys.stderr) if mode == "tty" else None
    with ExitStack() as scope:
        if display is not None:
            scope.enter_context(display)
        result = builder.build(
            args.context,
            dockerfile=dockerfile,
            dockerfile_text=text,
            tags=args.tag,
            target=args.target,
            build_args=build_args,
            labels=labels,
            store=session.store,
            source_date_epoch=args.source_date_epoch,
            compression=args.compression,
            no_cache=True if args.no_cache else args.no_cache_filter,
            progress=display if display is not None else _Printer(mode, sys.stderr),
            secrets=secrets,
            cache_to=cache_to,
            cache_from=cache_from,
        )
    if session.json:
        session.emit_json(
            {
                "digest": result.digest,
                "tags": result.tags,
                "steps": [s.to_json() for s in result.steps],
                "warnings": result.warnings,
                "cache_exports": [e.to_json() for e in result.cache_exports],
            }
        )
        return 0
    if args.progress != "json":
        columns = ["STEP", "LINE", "INSTRUCTION", "LAYER", "CACHE", "SECONDS"]
        if args.explain:
            columns.append("WHY")
        rows = []
        for step in result.steps:
            row = [
                step.stage,
                str(step.line),
                step.instruction if len(step.instruction) <= 60 else step.instruction[:57] + "...",
                short_digest(step.layer) if step.layer else "-",
                "hit" if step.cached else ("miss" if step.layer else "-"),
                f"{step.seconds:.2f}",
            ]
            if args.explain:
                why = step.reason or ("" if not step.layer else "same inputs as a recorded step")
                if step.evidence:
                    more = step.evidence_count - len(step.evidence)
                    why += "\n" + "\n".join(step.evidence) + (f"\n(+{more} more)" if more else "")
                row.append(why)
            rows.append(row)
        if sys.stderr.isatty():
            from rich.console import Console

            table = borderless_table(*columns, right=("LINE", "SECONDS"))
            for row in rows:
                table.add_row(*row)
            Console(file=sys.stderr, highlight=False, markup=False, emoji=False).print(table)
        else:
            print(plain_table(columns, rows, right=("LINE", "SECONDS")), file=sys.stderr)
        for export in result.cache_exports:
            print(
                f"cache: {export.records} records ({export.layers} layers, mode={export.mode}) "
                f"-> {export.reference} {short_digest(export.digest)}; {export.push.summary()}",
                file=sys.stderr,
            )
    session.print(" ".join([result.digest, *result.tags]))
    return 0
