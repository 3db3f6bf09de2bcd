"""The build context: what ``.dockerignore`` leaves in it, and which files a ``COPY`` source
names.

- **Ignore files** follow Docker's rules (``moby/patternmatcher``): one pattern a line, ``#``
  comments, white space trimmed, paths cleaned and made relative to the context; ``*`` and
  ``?`` do not cross ``/``, ``**`` matches any number of directories, ``[...]`` is a class,
  ``\\`` escapes; a pattern that matches a directory matches everything below it; ``!`` makes
  an exception, and the last pattern that matches a path decides. ``NAME.dockerignore`` beside
  a Dockerfile called ``NAME`` takes precedence over the context's ``.dockerignore``.
- **COPY sources** are paths relative to the context root (a leading ``/`` is the root, too)
  with Go ``filepath.Match`` wildcards in any component. A source may not leave the context:
  ``COPY ../x`` is an error, not a file from outside. Symlinks on the way to a source (a
  directory of the path, or one a wildcard descends into) are followed inside the context, as
  BuildKit's scoped resolution does: an absolute target starts again at the context root and
  ``..`` stops there, so ``dir -> /etc`` makes ``COPY dir/passwd`` name the context's
  ``etc/passwd``, never the host's. A source that is itself a symlink is copied as the link.

It imports only the standard library and ``layercore.errors``.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from layercore.errors import DockerfileError, SourceNotFoundError

__all__ = [
    "IgnoreRules",
    "glob_regex",
    "has_wildcards",
    "ignore_file_for",
    "read_ignore_file",
    "resolve_sources",
]


def _clean(path: str) -> str:
    """Go's ``filepath.Clean`` for ``/``-separated paths (``""`` becomes ``"."``)."""
    return posixpath.normpath(path) if path else "."


@dataclass(frozen=True)
class _Pattern:
    text: str
    exclusion: bool
    regex: re.Pattern[str]


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """A ``.dockerignore`` pattern as a regex over a ``/``-separated relative path."""
    out: list[str] = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 2
                if i >= n:
                    out.append(".*")  # a trailing ** matches everything
                elif pattern[i] == "/":
                    i += 1
                    out.append("(.*/)?")  # **/ matches zero or more directories
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        elif ch == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                raise ValueError("unterminated character class")
            body = pattern[i + 1 : end]
            negate = body.startswith(("^", "!"))
            if negate:
                body = body[1:]
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    out.append("$")
    return re.compile("".join(out), re.DOTALL)


class IgnoreRules:
    """The patterns of an ignore file, in order; ``source`` names the file for messages."""

    def __init__(self, patterns: Iterable[str] = (), source: str | None = None) -> None:
        self.source = source
        self.patterns: list[_Pattern] = []
        for text in patterns:
            exclusion = text.startswith("!")
            body = text[1:] if exclusion else text
            try:
                regex = _ignore_regex(body)
            except (ValueError, re.error) as e:
                raise DockerfileError(f"bad pattern {text!r}: {e}", source) from None
            self.patterns.append(_Pattern(text, exclusion, regex))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def ignored(self, path: str) -> bool:
        """Whether the context-relative ``path`` is left out of the context: the last pattern
        matching it, or one of its parent directories, decides."""
        path = _clean(path)
        parts = path.split("/")
        result = False
        for pattern in self.patterns:
            matched = pattern.regex.match(path) is not None
            if not matched and len(parts) > 1:
                # A pattern that matches a parent directory matches what is below it.
                for depth in range(1, len(parts)):
                    if pattern.regex.match("/".join(parts[:depth])):
                        matched = True
                        break
            if matched:
                result = not pattern.exclusion
        return result

    def may_hold_kept(self, directory: str) -> bool:
        """Whether an ignored ``directory`` may still hold paths an exception brings back (so
        a walk must go into it)."""
        return any(p.exclusion for p in self.patterns)


def read_ignore_file(path: str | os.PathLike[str]) -> IgnoreRules:
    """Reads an ignore file as Docker does; a missing file is no rules."""
    source = os.fspath(path)
    try:
        data = Path(source).read_bytes()
    except FileNotFoundError:
        return IgnoreRules((), source)
    except OSError as e:
        raise DockerfileError(f"cannot read the ignore file: {e.strerror}", source) from None
    text = data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    patterns = []
    for line in text.splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = _clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append(("!" if invert else "") + pattern)
    return IgnoreRules(patterns, source)


def ignore_file_for(
    context: str | os.PathLike[str], dockerfile: str | os.PathLike[str] | None
) -> Path:
    """The ignore file a build uses: ``NAME.dockerignore`` beside the Dockerfile ``NAME`` if
    it exists, else the context's ``.dockerignore``."""
    if dockerfile is not None:
        beside = Path(dockerfile).with_name(Path(dockerfile).name + ".dockerignore")
        if beside.is_file():
            return beside
    return Path(context) / ".dockerignore"


# -- COPY sources -------------------------------------------------------------------------------

_WILDCARD = re.compile(r"[*?\[\\]")


def has_wildcards(path: str) -> bool:
    """Whether ``path`` has ``filepath.Match`` syntax (``*``, ``?``, ``[``, ``\\``)."""
    return _WILDCARD.search(path) is not None


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Go's ``filepath.Match`` for one path component: ``*`` (any run), ``?`` (one
    character), ``[...]``/``[^...]`` classes with ranges, ``\\`` escapes."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            if i + 1 >= n:
                raise ValueError("syntax error in pattern: a trailing \\")
            i += 1
            out.append(re.escape(pattern[i]))
        elif ch == "[":
            j = i + 1
            negate = j < n and pattern[j] == "^"
            if negate:
                j += 1
            members: list[str] = []
            while True:
                if j >= n:
                    raise ValueError("syntax error in pattern: unterminated [")
                c = pattern[j]
                if c == "]" and members:
                    break
                if c == "\\":
                    j += 1
                    if j >= n:
                        raise ValueError("syntax error in pattern: unterminated [")
                    c = pattern[j]
                members.append(re.escape(c) if c != "-" else "-")
                j += 1
            out.append("[" + ("^" if negate else "") + "".join(members) + "]")
            i = j
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _inside(context: Path, source: str, line: int, path: str | None) -> str:
    """``source`` as a clean path relative to the context, or an error if it leaves it."""
    rel = _clean("/" + source).lstrip("/") or "."
    if _clean(source.lstrip("/")).split("/")[0] == "..":
        raise DockerfileError(
            f"COPY source {source!r} is outside the build context {str(context)!r}",
            path,
            line=line,
        )
    return rel


#: Symlinks followed while resolving one source path (Linux's limit).
_MAX_SYMLINKS = 40


def resolve_in(root: Path, rel: str, *, follow_last: bool = False) -> str:
    """``rel`` (relative to ``root``) with every symlink on the way resolved inside ``root``:
    absolute targets from ``root``, ``..`` never above it. The last component is followed
    only with ``follow_last``. No component of the result but (perhaps) the last is a
    symlink, so ``root / result`` cannot lead out of ``root``."""
    pending = [p for p in rel.split("/") if p not in ("", ".")]
    pending.reverse()  # a stack: the next component is at the end
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        if (pending or follow_last) and os.path.islink(root.joinpath(*resolved, part)):
            links += 1
            if links > _MAX_SYMLINKS:
                raise SourceNotFoundError(
                    f"too many levels of symbolic links resolving {rel!r}", root / rel
                )
            target = os.readlink(root.joinpath(*resolved, part))
            if target.startswith("/"):
                resolved = []
            pending.extend(reversed(target.split("/")))
            continue
        resolved.append(part)
    return "/".join(resolved) or "."


def resolve_sources(
    context: str | os.PathLike[str],
    source: str,
    ignore: IgnoreRules | None = None,
    *,
    line: int = 0,
    dockerfile: str | None = None,
) -> list[str]:
    """The context-relative paths a ``COPY``/``ADD`` source names, sorted: the path itself,
    or every path its wildcards match (in any component), with the symlinks on the way
    resolved inside the context (:func:`resolve_in`). Ignored paths are not there. A source
    that names nothing is an error, as in BuildKit."""
    root = Path(context)
    rel = _inside(root, source, line, dockerfile)
    ignore = ignore or IgnoreRules()
    if not has_wildcards(rel):
        rel = resolve_in(root, rel)
        if rel != "." and (ignore.ignored(rel) or not os.path.lexists(root / rel)):
            raise SourceNotFoundError(
                f"COPY source {source!r} is not in the build context"
                + (" (.dockerignore excludes it)" if ignore.ignored(rel) else ""),
                root / rel,
            )
        return [rel]
    try:
        regexes = [glob_regex(part) for part in rel.split("/")]
    except ValueError as e:
        raise DockerfileError(f"COPY source {source!r}: {e}", dockerfile, line=line) from None
    found: list[str] = []
    frontier = [""]
    for depth, regex in enumerate(regexes):
        last = depth == len(regexes) - 1
        next_frontier = []
        for base in frontier:
            directory = root / base if base else root
            try:
                names = sorted(os.listdir(directory))
            except (NotADirectoryError, FileNotFoundError):
                continue
            for name in names:
                if not regex.match(name):
                    continue
                candidate = f"{base}/{name}" if base not in ("", ".") else name
                if ignore.ignored(candidate) and not ignore.may_hold_kept(candidate):
                    continue
                if last:
                    if not ignore.ignored(candidate):
                        found.append(candidate)
                else:
                    next_frontier.append(resolve_in(root, candidate, follow_last=True))
        frontier = next_frontier
    if not found:
        raise SourceNotFoundError(
            f"COPY source {source!r} matches no file in the build context", root
        )
    return found
