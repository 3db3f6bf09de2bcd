"""BuildKit's shell-word lexer: quotes, escapes and variable substitution in Dockerfile words.

The Dockerfile reference defers to BuildKit (``frontend/dockerfile/shell/lex.go``) for what
``$V`` and friends mean, and so does this module, rule for rule:

- ``'...'`` keeps everything literally; ``"..."`` keeps everything but ``$`` substitutions and
  the escapes of ``"``, ``$`` and the escape character; outside quotes the escape character
  (``\\``, or a backtick under ``# escape=```) takes the next character literally.
- ``$V`` and ``${V}``; ``${V:-w}``/``${V-w}`` (the default when unset, or with ``:`` when empty
  too), ``${V:+w}``/``${V+w}`` (the alternative when set), ``${V:?msg}``/``${V?msg}`` (an error
  when unset), ``${V#p}``/``${V##p}``/``${V%p}``/``${V%%p}`` (shortest or longest prefix or
  suffix removed; ``*`` and ``?`` wildcards), ``${V/p/r}``/``${V//p/r}`` (first or every match
  replaced). The word after a modifier is itself lexed, so ``${A:-${B}}`` nests.
- ``$`` before anything that is not a name stays ``$``; a name is letters, digits and ``_`` not
  starting with a digit, or all digits (``$1``), or one of ``@*#?-$!0``.
- Words are split on white space *after* substitution, except inside quotes: an unquoted
  ``$V`` whose value has spaces makes several words, as in a shell.

It knows nothing of Dockerfiles beyond that; the parser and the builder use it. It imports only
``layercore.errors``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from layercore.errors import DockerfileError

__all__ = ["ShellLexer", "SubstitutionError", "SubstitutionResult"]

_SPECIAL_PARAMS = frozenset("@*#?-$!0")


class SubstitutionError(DockerfileError):
    """A word whose quotes or substitutions are malformed, or a ``${V?message}`` on an unset
    variable. The parser and the builder add the file, line and column."""


@dataclass
class SubstitutionResult:
    """What lexing one word gave: ``result`` (the word with quotes and escapes processed and
    variables substituted, spaces kept), ``words`` (the same, split as a shell would), and the
    names it found (``matched``) or did not find (``unmatched``) in the environment."""

    result: str
    words: list[str]
    matched: set[str] = field(default_factory=set)
    unmatched: set[str] = field(default_factory=set)


class _Words:
    """Words as they are assembled: white space splits, except what is added raw."""

    def __init__(self) -> None:
        self.word = ""
        self.words: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if ch.isspace():
            if self.in_word and self.word:
                self.words.append(self.word)
                self.word = ""
                self.in_word = False
        else:
            self.add_raw_char(ch)

    def add_raw_char(self, ch: str) -> None:
        self.word += ch
        self.in_word = True

    def add_string(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def add_raw_string(self, text: str) -> None:
        self.word += text
        self.in_word = True

    def done(self) -> list[str]:
        if self.word:
            self.words.append(self.word)
            self.word = ""
            self.in_word = False
        return self.words


class ShellLexer:
    """Lexes words the way BuildKit does. ``escape`` is the Dockerfile's escape character.

    ``raw_quotes`` keeps the quote characters in the result, ``raw_escapes`` the escape
    characters, ``skip_unset_env`` leaves references to unset variables as written (the
    parser uses these to find heredoc words without changing them); ``skip_process_quotes``
    treats quotes as ordinary characters."""

    def __init__(
        self,
        escape: str = "\\",
        *,
        raw_quotes: bool = False,
        raw_escapes: bool = False,
        skip_process_quotes: bool = False,
        skip_unset_env: bool = False,
    ) -> None:
        if escape not in ("\\", "`"):
            raise ValueError(f"the escape character is \\ or `, not {escape!r}")
        self.escape = escape
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.skip_process_quotes = skip_process_quotes
        self.skip_unset_env = skip_unset_env

    def process(self, word: str, env: Mapping[str, str]) -> SubstitutionResult:
        """Lexes ``word`` against ``env``; raises :class:`SubstitutionError`."""
        return _Scan(self, word, env).run()

    def process_word(self, word: str, env: Mapping[str, str]) -> str:
        """``word`` with quotes, escapes and substitutions processed, spaces kept."""
        return self.process(word, env).result

    def process_words(self, word: str, env: Mapping[str, str]) -> list[str]:
        """``word`` processed, then split into words as a shell would."""
        return self.process(word, env).words


class _Scan:
    """One pass over one word (``lex.go``'s ``shellWord``)."""

    def __init__(self, lexer: ShellLexer, text: str, env: Mapping[str, str]) -> None:
        self.lexer = lexer
        self.text = text
        self.pos = 0
        self.env = env
        self.raw_escapes = lexer.raw_escapes
        self.matched: set[str] = set()
        self.unmatched: set[str] = set()

    def run(self) -> SubstitutionResult:
        try:
            result, words = self.until(None, self.raw_escapes)
        except SubstitutionError as e:
            raise SubstitutionError(f"{e.message} in {self.text!r}") from None
        return SubstitutionResult(result, words, self.matched, self.unmatched)

    # -- the scanner

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        if self.pos >= len(self.text):
            return ""
        ch = self.text[self.pos]
        self.pos += 1
        return ch

    # -- the grammar

    def until(self, stop: str | None, raw_escapes: bool) -> tuple[str, list[str]]:
        """Processes up to ``stop`` (consumed) or the end of the text."""
        saved = self.raw_escapes
        self.raw_escapes = raw_escapes
        try:
            return self._until(stop)
        finally:
            self.raw_escapes = saved

    def _until(self, stop: str | None) -> tuple[str, list[str]]:
        result: list[str] = []
        words = _Words()
        quotes = not self.lexer.skip_process_quotes
        escape = self.lexer.escape
        while self.peek():
            ch = self.peek()
            if stop is not None and ch == stop:
                self.next()
                return "".join(result), words.done()
            if ch == "$":
                value = self.dollar()
                result.append(value)
                words.add_string(value)
            elif quotes and ch in "'\"":
                value = self.single_quoted() if ch == "'" else self.double_quoted()
                result.append(value)
                words.add_raw_string(value)
            else:
                ch = self.next()
                if ch == escape:
                    if self.raw_escapes:
                        words.add_raw_char(ch)
                        result.append(ch)
                    ch = self.next()
                    if not ch:
                        break
                    words.add_raw_char(ch)
                else:
                    words.add_char(ch)
                result.append(ch)
        if stop is not None:
            raise SubstitutionError(
                f"unexpected end of statement while looking for matching {stop}"
            )
        return "".join(result), words.done()

    def single_quoted(self) -> str:
        """Everything up to the next ``'`` as it is (a ``'`` cannot be escaped inside)."""
        out: list[str] = []
        ch = self.next()
        if self.lexer.raw_quotes:
            out.append(ch)
        while True:
            ch = self.next()
            if not ch:
                raise SubstitutionError(
                    "unexpected end of statement while looking for matching single-quote"
                )
            if ch == "'":
                if self.lexer.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def double_quoted(self) -> str:
        """Up to the next ``"``: substitutions done, ``\\"``, ``\\$`` and ``\\\\`` unescaped,
        other escapes kept."""
        out: list[str] = []
        ch = self.next()
        if self.lexer.raw_quotes:
            out.append(ch)
        escape = self.lexer.escape
        while True:
            nxt = self.peek()
            if not nxt:
                raise SubstitutionError(
                    "unexpected end of statement while looking for matching double-quote"
                )
            if nxt == '"':
                ch = self.next()
                if self.lexer.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if nxt == "$":
                out.append(self.dollar())
                continue
            ch = self.next()
            if ch == escape:
                if self.raw_escapes:
                    out.append(ch)
                following = self.peek()
                if not following:
                    continue
                if following in ('"', "$", escape):
                    ch = self.next()
            out.append(ch)

    def name(self) -> str:
        """A variable name: letters, digits and ``_``; all digits; or one special character."""
        out: list[str] = []
        while self.peek():
            ch = self.peek()
            if not out and ch.isdigit():
                while self.peek() and self.peek().isdigit():
                    out.append(self.next())
                return "".join(out)
            if not out and ch in _SPECIAL_PARAMS:
                return self.next()
            if not (ch.isalpha() or ch.isdigit() or ch == "_"):
                break
            out.append(self.next())
        return "".join(out)

    def lookup(self, name: str) -> tuple[str, bool]:
        if name in self.env:
            self.matched.add(name)
            return self.env[name], True
        self.unmatched.add(name)
        return "", False

    def dollar(self) -> str:
        self.next()  # the $
        if self.peek() != "{":
            name = self.name()
            if not name:
                return "$"
            value, found = self.lookup(name)
            if not found and self.lexer.skip_unset_env:
                return "$" + name
            return value
        self.next()  # the {
        first = self.peek()
        if not first:
            raise SubstitutionError("syntax error: missing '}'")
        if first in "{}:":
            raise SubstitutionError("syntax error: bad substitution")
        name = self.name()
        ch = self.next()
        if not ch:
            raise SubstitutionError("syntax error: missing '}'")
        if ch == "}":
            value, found = self.lookup(name)
            if not found and self.lexer.skip_unset_env:
                return "${" + name + "}"
            return value
        if ch == "/":
            return self.replace(name)
        modifier = ch
        null_is_unset = False
        if ch == ":":
            null_is_unset = True
            ch = self.next()
            modifier += ch
        if ch not in "+-?#%" or not ch:
            raise SubstitutionError(f"unsupported modifier ({modifier}) in substitution")
        try:
            word, _ = self.until("}", ch in "#%")
        except SubstitutionError:
            if not self.peek():
                raise SubstitutionError("syntax error: missing '}'") from None
            raise
        value, found = self.lookup(name)
        if self.lexer.skip_unset_env and not found:
            return "${" + name + modifier + word + "}"
        empty = not found or (null_is_unset and value == "")
        if ch == "-":
            return word if empty else value
        if ch == "+":
            return "" if empty else word
        if ch == "?":
            if not found:
                raise SubstitutionError(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise SubstitutionError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        greedy = word.startswith(ch)
        if greedy:
            word = word[1:]
        if ch == "%":
            return _trim_suffix(word, value, greedy)
        return _trim_prefix(word, value, greedy)

    def replace(self, name: str) -> str:
        """``${V/pattern/replacement}`` and ``${V//pattern/replacement}``."""
        replace_all = self.peek() == "/"
        if replace_all:
            self.next()
        try:
            pattern, _ = self.until("/", True)
        except SubstitutionError:
            if not self.peek():
                raise SubstitutionError("syntax error: missing '/' in ${}") from None
            raise
        try:
            replacement, _ = self.until("}", True)
        except SubstitutionError:
            if not self.peek():
                raise SubstitutionError("syntax error: missing '}'") from None
            raise
        value, found = self.lookup(name)
        if self.lexer.skip_unset_env and not found:
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        regex = _pattern_regex(pattern, greedy=True, anchored=False)
        if replace_all:
            return regex.sub(lambda _m: replacement, value)
        return regex.sub(lambda _m: replacement, value, count=1)


def _pattern_regex(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """A shell wildcard pattern (``*``, ``?``, ``\\`` escapes; no brackets) as a regex."""
    out = ["^"] if anchored else []
    star = ".*" if greedy else ".*?"
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(star)
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            following = pattern[i] if i < len(pattern) else ""
            if following in ("}", "/"):
                continue  # escaped only for the ${} syntax, not part of the pattern
            if following not in ("*", "?", "\\"):
                raise SubstitutionError(
                    f"invalid pattern ({pattern}) in substitution: invalid escape '\\{following}'"
                )
            out.append(re.escape(following))
            i += 1
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    match = _pattern_regex(pattern, greedy=greedy, anchored=True).match(value)
    return value[match.end() :] if match else value


def _reverse_pattern(pattern: str) -> str:
    """The pattern reversed, each escape kept before the character it escapes."""
    units = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            units.append(pattern[i : i + 2])
            i += 2
        else:
            units.append(pattern[i])
            i += 1
    return "".join(reversed(units))


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # A regex finds the leftmost match; reversing both finds the shortest (or longest) suffix.
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]
