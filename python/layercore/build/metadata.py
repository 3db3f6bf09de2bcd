"""What the metadata instructions do to a stage's image config, and the history they leave.

``ENV``, ``ARG``, ``LABEL``, ``USER``, ``EXPOSE``, ``CMD``, ``ENTRYPOINT``, ``VOLUME``,
``STOPSIGNAL``, ``HEALTHCHECK``, ``SHELL``, ``MAINTAINER`` and ``ONBUILD`` change only the
config (the Go-style ``config`` object: ``Env``, ``Cmd``, ``Labels``, ...). Each leaves a
history entry with ``empty_layer: true`` and ``created_by`` exactly as BuildKit writes it
(``frontend/dockerfile/dockerfile2llb/convert.go``), except ``ONBUILD``, which leaves none:

====================  ==========================================================
``ENV A=1 B=two``     ``ENV A=1 B=two`` (values substituted)
``ARG V=1 W``         ``ARG V=1 W`` (defaults substituted; build args not shown)
``LABEL k=v``         ``LABEL k=v``
``USER app``          ``USER app``
``EXPOSE 80 53/udp``  ``EXPOSE [53/udp 80/tcp]``
``CMD echo hi``       ``CMD ["/bin/sh" "-c" "echo hi"]`` (Go ``%q``)
``VOLUME /data``      ``VOLUME [/data]`` (Go ``%v``)
``SHELL ["bash"]``    ``SHELL [bash]``
``HEALTHCHECK ...``   ``HEALTHCHECK &{["CMD-SHELL" "..."] "30s" "0s" "0s" "0s" '\\x00'}``
====================  ==========================================================

Substitution follows the Dockerfile reference: ``ADD``, ``COPY``, ``ENV``, ``EXPOSE``,
``FROM``, ``LABEL``, ``STOPSIGNAL``, ``USER``, ``VOLUME``, ``WORKDIR`` and ``ARG`` defaults
are expanded, with the stage's env and the build args in scope; an ``ENV`` always wins over an
``ARG`` of the same name. ``RUN``, ``CMD``, ``ENTRYPOINT`` and ``SHELL`` are left to the shell.

:class:`StageState` holds what a stage has so far; the builder applies filesystem
instructions itself and asks it for the environment, the shell and ``RUN``'s history line.
It imports the parser, the lexer and ``layercore.errors`` (and ``image`` for history entries).
"""

from __future__ import annotations

import copy
import re
import signal
from collections.abc import Mapping, Sequence
from typing import Any

from layercore.build.dockerfile import Dockerfile, Instruction
from layercore.build.lexer import ShellLexer, SubstitutionError
from layercore.errors import DockerfileError
from layercore.image import HistoryEntry

__all__ = [
    "BUILDKIT_COMMENT",
    "DEFAULT_SHELL",
    "StageState",
    "go_duration",
    "go_quote",
    "parse_duration",
]

#: The ``comment`` BuildKit gives every history entry it writes.
BUILDKIT_COMMENT = "buildkit.dockerfile.v0"
DEFAULT_SHELL = ("/bin/sh", "-c")
METADATA = frozenset(
    {
        "ARG",
        "CMD",
        "ENTRYPOINT",
        "ENV",
        "EXPOSE",
        "HEALTHCHECK",
        "LABEL",
        "MAINTAINER",
        "ONBUILD",
        "SHELL",
        "STOPSIGNAL",
        "USER",
        "VOLUME",
    }
)
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9}
_UNIT_NS["h"] = 3600 * 10**9
_PORT = re.compile(r"^(\d+)(?:-(\d+))?(?:/(tcp|udp|sctp))?$", re.IGNORECASE)


# -- Go formatting, as BuildKit's history strings use it ------------------------------------


_GO_ESCAPES = dict(zip("\a\b\f\n\r\t\v", "abfnrtv", strict=True))


def _go_escape(ch: str, quote: str) -> str:
    """One character as Go's ``strconv`` quotes it between ``quote`` characters."""
    code = ord(ch)
    if ch in (quote, "\\"):
        return "\\" + ch
    if ch in _GO_ESCAPES:
        return "\\" + _GO_ESCAPES[ch]
    if ch.isprintable():
        return ch
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def go_quote(text: str) -> str:
    """``strconv.Quote``: double quotes, Go escapes, printable characters kept as they are."""
    return '"' + "".join(_go_escape(ch, '"') for ch in text) + '"'


def _go_quote_list(items: Sequence[str]) -> str:
    """``fmt.Sprintf("%q", []string{...})``: ``["a" "b"]``."""
    return "[" + " ".join(go_quote(i) for i in items) + "]"


def _go_list(items: Sequence[str]) -> str:
    """``fmt.Sprintf("%v", []string{...})``: ``[a b]``."""
    return "[" + " ".join(items) + "]"


def _go_quote_int(value: int) -> str:
    """``%q`` of an integer: a Go character literal (``'\\x03'``, ``'a'``)."""
    return "'" + _go_escape(chr(value), "'") + "'"


def parse_duration(text: str) -> int:
    """A Go duration (``30s``, ``1m30s``, ``1.5h``, ``500ms``) in nanoseconds."""
    if text in ("0", ""):
        return 0
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_NS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"time: invalid duration {text!r}")
    return round(total)


def go_duration(ns: int) -> str:
    """``time.Duration.String()``: ``0s``, ``500ms``, ``1.5s``, ``5m0s``, ``1h0m0s``."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 10**9:
        for unit, size in (("ms", 10**6), ("µs", 10**3), ("ns", 1)):
            if ns >= size:
                return sign + _trim(ns / size) + unit
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    seconds = _trim(rest / 10**9) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{sign}{minutes}m{seconds}"
    return sign + seconds


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def _signal_ok(name: str) -> bool:
    """What ``signal.ParseSignal`` accepts: a number, or a name with or without ``SIG``."""
    if name.isdigit():
        return 0 < int(name) < 65
    upper = name.upper()
    upper = upper if upper.startswith("SIG") else "SIG" + upper
    return upper in signal.Signals.__members__ or bool(
        re.fullmatch(r"SIGRTM(IN|AX)([+-]\d+)?", upper)
    )


# -- the stage ------------------------------------------------------------------------------------


class StageState:
    """A stage's config and environment as its instructions change them.

    ``config`` is the Go-style config object of the base image (copied); ``meta_args`` the
    values of the args declared before ``FROM``; ``build_args`` the ``--build-arg`` values."""

    def __init__(
        self,
        dockerfile: Dockerfile,
        config: Mapping[str, Any] | None = None,
        *,
        meta_args: Mapping[str, str] | None = None,
        build_args: Mapping[str, str] | None = None,
    ) -> None:
        self.dockerfile = dockerfile
        self.config: dict[str, Any] = copy.deepcopy(dict(config or {}))
        self.author: str | None = None
        self.meta_args = dict(meta_args or {})
        self.build_args = dict(build_args or {})
        #: The ARGs declared in this stage, in order of first declaration, with their values.
        self.args: dict[str, str | None] = {}
        self.cmd_set = False
        self.lexer = ShellLexer(dockerfile.escape)

    # -- what the builder reads

    @property
    def env(self) -> dict[str, str]:
        """The config's ``Env`` as a mapping, in order."""
        out: dict[str, str] = {}
        for item in self.config.get("Env") or []:
            key, _, value = item.partition("=")
            out[key] = value
        return out

    def expansion_env(self) -> dict[str, str]:
        """What ``$V`` sees: the args in scope with a value, then the env over them."""
        scope = {k: v for k, v in self.args.items() if v is not None}
        return {**scope, **self.env}

    def run_env(self) -> dict[str, str]:
        """What a ``RUN`` command's process gets: the env, plus the args not shadowed by it."""
        return self.expansion_env()

    @property
    def shell(self) -> tuple[str, ...]:
        shell = self.config.get("Shell")
        return tuple(shell) if shell else DEFAULT_SHELL

    @property
    def workdir(self) -> str:
        return self.config.get("WorkingDir") or "/"

    def expand(self, word: str, instruction: Instruction) -> str:
        try:
            return self.lexer.process_word(word, self.expansion_env())
        except SubstitutionError as e:
            raise self.dockerfile.error(e.message, instruction) from None

    def expand_words(self, word: str, instruction: Instruction) -> list[str]:
        try:
            return self.lexer.process_words(word, self.expansion_env())
        except SubstitutionError as e:
            raise self.dockerfile.error(e.message, instruction) from None

    def command(self, instruction: Instruction) -> list[str]:
        """The argv of a ``RUN``/``CMD``/``ENTRYPOINT``: the exec form as written, the shell
        form through ``SHELL`` (default ``/bin/sh -c``)."""
        if instruction.json:
            return list(instruction.args)
        return [*self.shell, instruction.args[0]]

    def run_history(self, argv: Sequence[str]) -> str:
        """``RUN``'s ``created_by``: ``RUN [|N K=V ...] ARGV... # buildkit``, with the build
        args in scope (an env of the same name shows the env's value)."""
        env = self.env
        pairs = [f"{k}={env.get(k, v or '')}" for k, v in self.args.items()]
        prefix = [f"|{len(pairs)}", *pairs] if pairs else []
        return "RUN " + " ".join([*prefix, *argv]) + " # buildkit"

    # -- applying an instruction

    def apply(self, instruction: Instruction) -> HistoryEntry | None:
        """Applies a metadata instruction; its history entry (None for ``ONBUILD``)."""
        keyword = instruction.keyword
        if keyword not in METADATA:
            raise ValueError(f"{keyword} is not a metadata instruction")
        created_by = getattr(self, "_" + keyword.lower())(instruction)
        if created_by is None:
            return None
        return HistoryEntry(created_by=created_by, comment=BUILDKIT_COMMENT, empty_layer=True)

    def _fail(self, instruction: Instruction, message: str) -> DockerfileError:
        return self.dockerfile.error(message, instruction)

    def _pairs(self, instruction: Instruction) -> list[tuple[str, str]]:
        args = instruction.args
        return [
            (self.expand(args[i], instruction), self.expand(args[i + 1], instruction))
            for i in range(0, len(args), 2)
        ]

    def _env(self, instruction: Instruction) -> str:
        pairs = self._pairs(instruction)
        env = self.config.get("Env") or []
        for key, value in pairs:
            if not key:
                raise self._fail(instruction, "ENV names no variable")
            for i, item in enumerate(env):
                if item.partition("=")[0] == key:
                    env[i] = f"{key}={value}"
                    break
            else:
                env.append(f"{key}={value}")
        self.config["Env"] = env
        return "ENV " + " ".join(f"{k}={v}" for k, v in pairs)

    def _arg(self, instruction: Instruction) -> str:
        shown = []
        for word in instruction.args:
            name, sep, default = word.partition("=")
            if not name:
                raise self._fail(instruction, f"ARG {word!r} names no variable")
            value: str | None = self.expand(default, instruction) if sep else None
            shown.append(name + ("=" + value if value is not None else ""))
            if name in self.build_args:
                value = self.build_args[name]
            elif value is None:
                value = self.meta_args.get(name)
            self.args[name] = value
        return "ARG " + " ".join(shown)

    def _label(self, instruction: Instruction) -> str:
        pairs = self._pairs(instruction)
        labels = dict(self.config.get("Labels") or {})
        for key, value in pairs:
            labels[key] = value
        self.config["Labels"] = labels
        return "LABEL " + " ".join(f"{k}={v}" for k, v in pairs)

    def _user(self, instruction: Instruction) -> str:
        user = self.expand(instruction.args[0], instruction)
        self.config["User"] = user
        return f"USER {user}"

    def _expose(self, instruction: Instruction) -> str:
        ports = dict.fromkeys(self.config.get("ExposedPorts") or {})
        added: set[str] = set()
        for word in instruction.args:
            for spec in self.expand_words(word, instruction):
                added.update(self._port_spec(spec, instruction))
        for port in sorted(added):
            ports[port] = None
        self.config["ExposedPorts"] = {p: {} for p in ports}
        return "EXPOSE " + _go_list(sorted(added))

    def _port_spec(self, spec: str, instruction: Instruction) -> list[str]:
        # ip:hostPort:containerPort and hostPort:containerPort publish forms expose the last.
        container = spec.rsplit(":", 1)[-1]
        match = _PORT.match(container)
        if match is None:
            raise self._fail(instruction, f"invalid port {spec!r}: write PORT[-PORT][/PROTOCOL]")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        proto = (match.group(3) or "tcp").lower()
        if not 0 < low <= high <= 65535:
            raise self._fail(instruction, f"invalid port range {spec!r}")
        return [f"{p}/{proto}" for p in range(low, high + 1)]

    def _cmd(self, instruction: Instruction) -> str:
        argv = self.command(instruction)
        self.config["Cmd"] = argv
        self.cmd_set = True
        return "CMD " + _go_quote_list(argv)

    def _entrypoint(self, instruction: Instruction) -> str:
        argv = self.command(instruction)
        self.config["Entrypoint"] = argv
        if not self.cmd_set:
            # An inherited CMD was written for another entrypoint.
            self.config["Cmd"] = None
        return "ENTRYPOINT " + _go_quote_list(argv)

    def _volume(self, instruction: Instruction) -> str:
        volumes = dict(self.config.get("Volumes") or {})
        paths = [self.expand(a, instruction) for a in instruction.args]
        for path in paths:
            if not path:
                raise self._fail(instruction, "VOLUME specified can not be an empty string")
            volumes[path] = {}
        self.config["Volumes"] = volumes
        return "VOLUME " + _go_list(paths)

    def _stopsignal(self, instruction: Instruction) -> str:
        sig = self.expand(instruction.args[0], instruction)
        if not _signal_ok(sig):
            raise self._fail(instruction, f"invalid signal: {sig}")
        self.config["StopSignal"] = sig
        return f"STOPSIGNAL {sig}"

    def _shell(self, instruction: Instruction) -> str:
        if not instruction.json:
            raise self._fail(instruction, "SHELL requires the arguments to be in JSON form")
        if not instruction.args:
            raise self._fail(instruction, "SHELL requires at least one argument")
        self.config["Shell"] = list(instruction.args)
        return "SHELL " + _go_list(instruction.args)

    def _maintainer(self, instruction: Instruction) -> str:
        self.author = instruction.args[0]
        return f"MAINTAINER {self.author}"

    def _onbuild(self, instruction: Instruction) -> None:
        self.config["OnBuild"] = [*(self.config.get("OnBuild") or []), instruction.args[0]]

    def _healthcheck(self, instruction: Instruction) -> str:
        args = instruction.args
        if args[0] == "NONE":
            if instruction.flags:
                raise self._fail(instruction, "HEALTHCHECK NONE takes no options")
            test = ["NONE"]
        elif instruction.json:
            test = ["CMD", *args[1:]]
        else:
            test = ["CMD-SHELL", args[1]]
        durations = {}
        for flag in ("interval", "timeout", "start-period", "start-interval"):
            text = instruction.flag(flag)
            try:
                ns = parse_duration(text) if text else 0
            except ValueError as e:
                raise self._fail(instruction, f"--{flag}: {e}") from None
            if ns and ns < 10**6:
                raise self._fail(instruction, f"--{flag} cannot be less than 1ms")
            durations[flag] = ns
        retries_text = instruction.flag("retries") or "0"
        if not retries_text.isdigit():
            raise self._fail(instruction, f"--retries must be a whole number, not {retries_text!r}")
        retries = int(retries_text)
        health: dict[str, Any] = {"Test": test}
        for key, flag in (
            ("Interval", "interval"),
            ("Timeout", "timeout"),
            ("StartPeriod", "start-period"),
            ("StartInterval", "start-interval"),
        ):
            if durations[flag]:
                health[key] = durations[flag]
        if retries:
            health["Retries"] = retries
        self.config["Healthcheck"] = health
        fields = [
            _go_quote_list(test),
            *(go_quote(go_duration(durations[f])) for f in durations),
            _go_quote_int(retries),
        ]
        return "HEALTHCHECK &{" + " ".join(fields) + "}"
