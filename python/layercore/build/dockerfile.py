"""The Dockerfile parser: text to instructions, each with the line and column it came from.

It follows BuildKit's parser (``frontend/dockerfile/parser``), which is what the Dockerfile
reference describes:

- **Parser directives** (``# escape=``` or ``\\``, ``# syntax=``, ``# check=``) are read only
  at the top, before any instruction, comment or blank line; each may appear once. ``syntax``
  names a frontend image, which this builder does not run: it is accepted with a warning.
- **Lines.** A trailing escape character continues an instruction on the next line (an escaped
  escape does not); comment lines inside a continued instruction are dropped, and empty ones
  draw a warning. ``#`` starts a comment only at the start of a line. A UTF-8 byte-order mark
  is ignored.
- **Forms.** ``RUN``, ``CMD``, ``ENTRYPOINT`` and ``SHELL`` take a JSON array (exec form) or a
  string (shell form); ``COPY``, ``ADD`` and ``VOLUME`` a JSON array or words; ``ENV`` and
  ``LABEL`` ``key=value`` pairs (or the old ``key value``); ``ARG`` names with optional
  defaults; ``FROM`` and ``EXPOSE`` words; ``HEALTHCHECK`` ``NONE`` or ``CMD ...``;
  ``ONBUILD`` another instruction. Leading ``--flag[=value]`` words are the instruction's flags.
- **Heredocs** (``RUN``, ``COPY``, ``ADD``): each ``<<WORD`` (``<<-WORD`` strips leading tabs,
  a quoted ``WORD`` turns off expansion, ``N<<WORD`` names a file descriptor) takes the lines
  after the instruction up to one that is exactly ``WORD``; several in one instruction are
  read in order.

Words are not substituted here: which instructions expand variables, and with what
environment, is the builder's business (with :class:`~layercore.build.lexer.ShellLexer`).
Errors are :class:`~layercore.errors.DockerfileError`, naming the file, line and column.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from layercore.build.lexer import ShellLexer, SubstitutionError
from layercore.errors import DockerfileError

__all__ = ["Dockerfile", "Heredoc", "Instruction", "parse_dockerfile"]

#: Every instruction the parser knows, and how its arguments are read.
_FORMS = {
    "ADD": "json-or-words",
    "ARG": "names",
    "CMD": "json-or-string",
    "COPY": "json-or-words",
    "ENTRYPOINT": "json-or-string",
    "ENV": "pairs",
    "EXPOSE": "words",
    "FROM": "words",
    "HEALTHCHECK": "healthcheck",
    "LABEL": "pairs",
    "MAINTAINER": "string",
    "ONBUILD": "instruction",
    "RUN": "json-or-string",
    "SHELL": "json-or-string",
    "STOPSIGNAL": "string",
    "USER": "string",
    "VOLUME": "json-or-words",
    "WORKDIR": "string",
}
_HEREDOC_INSTRUCTIONS = frozenset({"ADD", "COPY", "RUN"})
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_DIRECTIVES = frozenset({"escape", "syntax", "check"})
_HEREDOC = re.compile(r"^(\d*)<<(-?)\s*([^<]*)$")
_SPACE = re.compile(r"[\t\v\f\r ]+")


@dataclass(frozen=True)
class Heredoc:
    """A here-document of an instruction: ``name`` (its delimiter), ``content`` (the lines up
    to the delimiter, each with its newline; leading tabs already removed when ``chomp``),
    ``expand`` (False when the delimiter was quoted: no substitution in the content) and
    ``fd`` (``3<<EOF``; 0 when not given)."""

    name: str
    content: str
    expand: bool = True
    chomp: bool = False
    fd: int = 0


@dataclass(frozen=True)
class Instruction:
    """One instruction as written.

    ``keyword`` is upper case (``RUN``); ``flags`` the leading ``--name[=value]`` words,
    unquoted; ``args`` the arguments as the instruction's form reads them (for the string
    forms one string; for ``ENV``/``LABEL`` alternating keys and values; for ``ARG`` the
    ``name[=default]`` words); ``json`` is True for an exec-form JSON array. ``text`` is the
    instruction with its continuations joined. ``line`` and ``end_line`` (from 1) span it in
    the file, heredocs included; ``column`` is where its keyword starts. ``sub`` is the
    instruction an ``ONBUILD`` holds."""

    keyword: str
    args: tuple[str, ...]
    text: str
    line: int
    end_line: int
    column: int = 1
    flags: tuple[str, ...] = ()
    json: bool = False
    heredocs: tuple[Heredoc, ...] = ()
    sub: Instruction | None = None
    comments: tuple[str, ...] = ()

    def flag(self, name: str) -> str | None:
        """The value of ``--name=value`` (``""`` for a bare ``--name``), or None; the last
        wins when it is given twice."""
        found = None
        for f in self.flags:
            key, sep, value = f[2:].partition("=")
            if key == name:
                found = value if sep else ""
        return found

    def flag_values(self, name: str) -> list[str]:
        """Every value of a flag that may repeat (``--mount``, ``--exclude``)."""
        out = []
        for f in self.flags:
            key, sep, value = f[2:].partition("=")
            if key == name:
                out.append(value if sep else "")
        return out


@dataclass
class Dockerfile:
    """A parsed Dockerfile: its instructions in order, the escape character, the ``syntax``
    directive if any, and the warnings the parser has for it (``path:line: text``)."""

    instructions: list[Instruction]
    path: str | None = None
    escape: str = "\\"
    syntax: str | None = None
    warnings: list[str] = field(default_factory=list)

    def error(self, message: str, instruction: Instruction, column: int = 0) -> DockerfileError:
        """A :class:`DockerfileError` at ``instruction`` (and ``column`` in its first line)."""
        return DockerfileError(
            message, self.path, line=instruction.line, column=column or instruction.column
        )


def parse_dockerfile(source: str | bytes, path: str | os.PathLike[str] | None = None) -> Dockerfile:
    """Parses ``source`` (the Dockerfile's text; ``path`` is only for messages)."""
    name = None if path is None else os.fspath(path)
    if isinstance(source, bytes):
        try:
            text = source.decode("utf-8")
        except UnicodeDecodeError as e:
            line = source[: e.start].count(b"\n") + 1
            raise DockerfileError("is not UTF-8 text", name, line=line) from None
    else:
        text = source
    return _Parser(text, name).parse()


class _Parser:
    def __init__(self, source: str, path: str | None) -> None:
        source = source.removeprefix("\ufeff")
        # Lines keep their newline: heredoc contents need it. Only "\n" ends a line, as in
        # BuildKit (str.splitlines would also break at "\r", "\f", "\v", "\x1c".."\x1e",
        # "\x85" and U+2028, splitting an instruction that holds one: found by fuzzing).
        lines = source.split("\n")
        self.lines = [line + "\n" for line in lines[:-1]]
        if lines[-1]:
            self.lines.append(lines[-1])
        self.pos = 0
        self.path = path
        self.escape = "\\"
        self.syntax: str | None = None
        self.seen_directives: set[str] = set()
        self.directives_done = False
        self.warnings: list[str] = []

    def error(self, message: str, line: int, column: int = 0) -> DockerfileError:
        return DockerfileError(message, self.path, line=line, column=column)

    # -- lines

    def next_line(self) -> str | None:
        if self.pos >= len(self.lines):
            return None
        line = self.lines[self.pos]
        self.pos += 1
        return line

    def continuation(self, text: str) -> tuple[str, bool]:
        """``text`` without a trailing escape character, and whether the instruction goes on.
        An escape that is itself escaped (``foo \\\\``) does not continue the line."""
        e = re.escape(self.escape)
        match = re.search(rf"(^|[^{e}]){e}[ \t]*$", text)
        if match is None:
            return text, False
        return text[: match.start()] + match.group(1), True

    def directive(self, text: str, line: int) -> bool:
        """Reads a parser directive at the top of the file; whether ``text`` was one."""
        if self.directives_done:
            return False
        match = _DIRECTIVE.match(text)
        key = match.group(1).lower() if match else ""
        if match is None or key not in _DIRECTIVES:
            self.directives_done = True
            return False
        if key in self.seen_directives:
            raise self.error(f"only one {key} parser directive can be used", line, 1)
        self.seen_directives.add(key)
        value = match.group(2)
        if key == "escape":
            if value not in ("\\", "`"):
                raise self.error(f"invalid escape token '{value}' does not match ` or \\", line, 1)
            self.escape = value
        elif key == "syntax":
            self.syntax = value
            self.warnings.append(
                f"{self.path or 'Dockerfile'}:{line}: # syntax={value} is ignored: layercore "
                "parses Dockerfiles itself and runs no frontend image"
            )
        return True

    # -- the file

    def parse(self) -> Dockerfile:
        instructions: list[Instruction] = []
        comments: list[str] = []
        while True:
            raw = self.next_line()
            if raw is None:
                break
            start = self.pos
            text = raw.rstrip("\r\n")
            stripped = text.lstrip()
            if self.directive(stripped, start):
                continue
            if stripped.startswith("#"):
                comment = stripped[1:].strip()
                comments = [*comments, comment] if comment else []
                continue
            column = len(text) - len(stripped) + 1
            body, more = self.continuation(stripped)
            if not more and not body.strip():
                continue
            parts = [body]
            empty_continuation = False
            while more:
                raw = self.next_line()
                if raw is None:
                    break
                text = raw.rstrip("\r\n")
                if text.lstrip().startswith("#"):
                    continue
                if not text.strip():
                    empty_continuation = True
                    continue
                body, more = self.continuation(text)
                parts.append(body)
            joined = "".join(parts)
            if empty_continuation:
                self.warnings.append(
                    f"{self.path or 'Dockerfile'}:{start}: empty continuation line (an error in "
                    "future Dockerfile syntax)"
                )
            instruction = self.instruction(joined, start, column, tuple(comments))
            comments = []
            instructions.append(instruction)
        if not instructions:
            raise self.error("the file has no instructions", max(len(self.lines), 1))
        return Dockerfile(instructions, self.path, self.escape, self.syntax, self.warnings)

    # -- one instruction

    def instruction(
        self, text: str, line: int, column: int, comments: tuple[str, ...]
    ) -> Instruction:
        keyword, flags, rest, args_column = self.split(text, line, column)
        args, is_json, sub = self.arguments(keyword, rest, line, column, args_column)
        heredocs: tuple[Heredoc, ...] = ()
        if keyword in _HEREDOC_INSTRUCTIONS and "<<" in rest and not is_json:
            heredocs = self.heredocs(rest, line, args_column)
        return Instruction(
            keyword=keyword,
            args=args,
            text=text,
            line=line,
            end_line=self.pos,
            column=column,
            flags=flags,
            json=is_json,
            heredocs=heredocs,
            sub=sub,
            comments=comments,
        )

    def split(self, text: str, line: int, column: int) -> tuple[str, tuple[str, ...], str, int]:
        """The keyword, the flags and the rest; and the column where the arguments start."""
        stripped = text.strip()
        parts = _SPACE.split(stripped, maxsplit=1)
        keyword = parts[0].upper()
        if keyword not in _FORMS:
            raise self.error(f"unknown instruction: {parts[0]}", line, column)
        after = parts[1] if len(parts) > 1 else ""
        rest, flags = _extract_flags(after)
        offset = len(stripped) - len(rest.lstrip()) if rest.strip() else len(stripped)
        return keyword, tuple(flags), rest.strip(), column + offset

    def arguments(
        self, keyword: str, rest: str, line: int, column: int, args_column: int
    ) -> tuple[tuple[str, ...], bool, Instruction | None]:
        form = _FORMS[keyword]

        def fail(message: str) -> DockerfileError:
            return self.error(message, line, args_column)

        if form == "instruction":
            if not rest:
                raise fail("ONBUILD requires an instruction to run later")
            sub = self.instruction(rest, line, args_column, ())
            if sub.keyword in ("ONBUILD", "FROM", "MAINTAINER"):
                raise fail(f"{sub.keyword} isn't allowed as an ONBUILD trigger")
            return (rest,), False, sub
        if form in ("json-or-string", "json-or-words"):
            parsed = _json_array(rest)
            if parsed is not None:
                return tuple(parsed), True, None
            if not rest:
                raise fail(f"{keyword} requires at least one argument")
            if form == "json-or-string":
                return (rest,), False, None
            return tuple(_words(rest, self.escape)), False, None
        if not rest:
            raise fail(f"{keyword} requires at least one argument")
        if form == "string":
            return (rest,), False, None
        if form == "words":
            return tuple(_SPACE.split(rest)), False, None
        if form == "names":
            return tuple(_words(rest, self.escape)), False, None
        if form == "pairs":
            return _pairs(keyword, rest, self.escape, fail), False, None
        # HEALTHCHECK: NONE, or CMD in either form.
        words = _SPACE.split(rest, maxsplit=1)
        kind = words[0].upper()
        if kind == "NONE":
            if len(words) > 1:
                raise fail("HEALTHCHECK NONE takes no arguments")
            return ("NONE",), False, None
        if kind != "CMD" or len(words) < 2:
            raise fail("HEALTHCHECK takes NONE, or CMD and a command")
        parsed = _json_array(words[1])
        if parsed is not None:
            return ("CMD", *parsed), True, None
        return ("CMD", words[1]), False, None

    def heredocs(self, rest: str, line: int, column: int) -> tuple[Heredoc, ...]:
        lexer = ShellLexer(self.escape, raw_quotes=True, raw_escapes=True, skip_unset_env=True)
        try:
            words = lexer.process_words(rest, {})
        except SubstitutionError:
            words = []
        found = []
        for word in words:
            match = _HEREDOC.match(word)
            if match is None or not match.group(3):
                continue
            fd = int(match.group(1) or 0)
            chomp = match.group(2) == "-"
            try:
                name, expand = _heredoc_name(match.group(3))
            except SubstitutionError as e:
                raise self.error(f"heredoc {word}: {e.message}", line, column) from None
            if name is None:
                continue
            content = []
            while True:
                raw = self.next_line()
                if raw is None:
                    raise self.error(
                        f"unterminated heredoc: no line {name!r} ends it", line, column
                    )
                candidate = raw.rstrip("\r\n")
                if chomp:
                    candidate = candidate.lstrip("\t")
                if candidate == name:
                    break
                content.append(raw.lstrip("\t") if chomp else raw)
            found.append(Heredoc(name, "".join(content), expand, chomp, fd))
        return tuple(found)


def _heredoc_name(rest: str) -> tuple[str | None, bool]:
    """The delimiter of ``<<rest`` and whether the content is expanded (it is not when any
    part of the delimiter was quoted); None when ``rest`` is not one word."""
    plain = ShellLexer(skip_unset_env=True).process_words(rest, {})
    if len(plain) != 1:
        return None, True
    raw = ShellLexer(raw_quotes=True, skip_unset_env=True).process_words(rest, {})
    quotes = plain[0].count("'") + plain[0].count('"')
    raw_quotes = raw[0].count("'") + raw[0].count('"')
    return plain[0], quotes == raw_quotes


def _json_array(rest: str) -> list[str] | None:
    """``rest`` as a JSON array of strings (the exec form), or None if it is not one."""
    if not rest.startswith("["):
        return None
    try:
        value = json.loads(rest)
    except ValueError:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return value


def _extract_flags(line: str) -> tuple[str, list[str]]:
    """Splits the leading ``--flag[=value]`` words (quotes and escapes removed) from the rest
    of an instruction's line; ``--`` alone ends the flags."""
    flags: list[str] = []
    pos, n = 0, len(line)
    while True:
        while pos < n and line[pos].isspace():
            pos += 1
        if pos >= n or not line.startswith("--", pos) or pos + 2 > n:
            return line[pos:], flags
        word, blank_ok, quote = "", False, ""
        while pos < n:
            ch = line[pos]
            if quote:
                if ch == quote:
                    quote = ""
                elif ch == "\\" and pos + 1 < n:
                    pos += 1
                    word += line[pos]
                elif ch != "\\":
                    word += ch
                pos += 1
                continue
            if ch.isspace():
                break
            if ch in "'\"":
                quote, blank_ok = ch, True
            elif ch == "\\":
                if pos + 1 < n:
                    pos += 1
                    word += line[pos]
            else:
                word += ch
            pos += 1
        if word == "--":
            return line[pos:], flags
        if word or blank_ok:
            flags.append(word)


def _words(rest: str, escape: str) -> list[str]:
    """``rest`` split on white space outside quotes; quotes and escapes are kept (the builder
    lexes each word later)."""
    words: list[str] = []
    word, blank_ok, quote = "", False, ""
    in_word = False
    i, n = 0, len(rest)
    while i < n:
        ch = rest[i]
        if quote:
            if ch == quote:
                quote = ""
            elif ch == escape and quote != "'":
                # An escape at the very end is dropped; otherwise it stays with what it escapes.
                word += rest[i : i + 2] if i + 1 < n else ""
                i += 2
                continue
            word += ch
            i += 1
            continue
        if ch.isspace():
            if in_word and (word or blank_ok):
                words.append(word)
            word, blank_ok, in_word = "", False, False
            i += 1
            continue
        in_word = True
        if ch in "'\"":
            quote, blank_ok = ch, True
        elif ch == escape:
            word += rest[i : i + 2] if i + 1 < n else ""
            i += 2
            continue
        word += ch
        i += 1
    if in_word and (word or blank_ok):
        words.append(word)
    return words


def _pairs(
    keyword: str, rest: str, escape: str, fail: Callable[[str], DockerfileError]
) -> tuple[str, ...]:
    """``ENV``/``LABEL`` arguments as alternating keys and values: ``k=v ...``, or the old
    ``k value`` (one pair, the value the rest of the line)."""
    words = _words(rest, escape)
    # No words at all: a lone escape character, which lexes to nothing.
    if not words or "=" not in words[0]:
        parts = _SPACE.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise fail(f"{keyword} must have two arguments")
        return (parts[0], parts[1])
    out: list[str] = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise fail(f"can't find = in {word!r}: write name=value")
        if not key:
            raise fail(f"{keyword} has a pair with no name: {word!r}")
        out += [key, value]
    return tuple(out)
