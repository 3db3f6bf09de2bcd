""".dockerignore as Docker reads it, and COPY sources resolved inside the context with Go's
filepath.Match wildcards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from layercore.build.context import (
    IgnoreRules,
    glob_regex,
    ignore_file_for,
    read_ignore_file,
    resolve_sources,
)
from layercore.errors import DockerfileError, SourceNotFoundError


def rules(*patterns: str) -> IgnoreRules:
    return IgnoreRules(patterns)


@pytest.mark.parametrize(
    ("patterns", "path", "ignored"),
    [
        # The Dockerfile reference's .dockerignore example.
        (("*/temp*",), "somedir/temporary.txt", True),
        (("*/temp*",), "somedir/temp", True),
        (("*/temp*",), "temp", False),
        (("*/*/temp*",), "somedir/subdir/temporary.txt", True),
        (("temp?",), "tempa", True),
        (("temp?",), "tempab", False),
        # A directory's pattern covers what is below it.
        (("node_modules",), "node_modules/a/b.js", True),
        (("node_modules",), "src/node_modules/a.js", False),
        (("**/node_modules",), "src/node_modules/a.js", True),
        (("**/node_modules",), "node_modules/x", True),
        (("**/*.go",), "a/b/c.go", True),
        (("**/*.go",), "c.go", True),
        (("dir/**",), "dir/x/y", True),
        (("dir/**",), "dirx", False),
        (("a/**/b",), "a/b", True),
        (("a/**/b",), "a/x/y/b", True),
        # The last match wins; ! makes exceptions.
        (("*.md", "!README.md"), "README.md", False),
        (("*.md", "!README.md"), "CHANGES.md", True),
        (("!README.md", "*.md"), "README.md", True),
        (("*.md", "!README*.md", "README-secret.md"), "README-secret.md", True),
        (("*.md", "!README*.md", "README-secret.md"), "README-x.md", False),
        # Classes and escapes.
        (("file[0-9]",), "file7", True),
        (("file[^0-9]",), "file7", False),
        (("file[!0-9]",), "filex", True),
        (("a\\*b",), "a*b", True),
        (("a\\*b",), "axb", False),
        ((".git",), ".git/HEAD", True),
    ],
)
def test_ignore_patterns(patterns: tuple[str, ...], path: str, ignored: bool) -> None:
    assert rules(*patterns).ignored(path) is ignored


def test_read_ignore_file_cleans_patterns(tmp_path: Path) -> None:
    f = tmp_path / ".dockerignore"
    f.write_text(
        "\ufeff# comment\n\n  /abs/path  \n! ./keep/../keep.txt\ndir//sub/\n  # indented comment\n"
    )
    read = read_ignore_file(f)
    assert [p.text for p in read.patterns] == ["abs/path", "!keep.txt", "dir/sub"]
    assert read.ignored("abs/path/x") and read.ignored("dir/sub/y")
    assert not read_ignore_file(tmp_path / "missing")
    with pytest.raises(DockerfileError, match="bad pattern") as e:
        IgnoreRules(["x[a"], "ctx/.dockerignore")
    assert e.value.path == "ctx/.dockerignore"


def test_dockerfile_specific_ignore_file_wins(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("*\n")
    dockerfile = tmp_path / "build" / "app.Dockerfile"
    dockerfile.parent.mkdir()
    dockerfile.write_text("FROM x\n")
    assert ignore_file_for(tmp_path, dockerfile) == tmp_path / ".dockerignore"
    specific = tmp_path / "build" / "app.Dockerfile.dockerignore"
    specific.write_text("secret\n")
    assert ignore_file_for(tmp_path, dockerfile) == specific
    assert ignore_file_for(tmp_path, None) == tmp_path / ".dockerignore"


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("*", "anything", True),
        ("hom*", "home", True),
        ("hom*", "xhome", False),
        ("hom?", "home", True),
        ("hom?", "homes", False),
        ("[a-c]x", "bx", True),
        ("[^a-c]x", "bx", False),
        ("[^a-c]x", "dx", True),
        ("[\\]]", "]", True),
        ("\\*", "*", True),
        ("\\*", "a", False),
        ("*.txt", ".txt", True),
    ],
)
def test_glob_is_filepath_match(pattern: str, name: str, matches: bool) -> None:
    assert (glob_regex(pattern).match(name) is not None) is matches


@pytest.mark.parametrize("bad", ["[", "[a", "a\\"])
def test_bad_glob(bad: str) -> None:
    with pytest.raises(ValueError, match="syntax error in pattern"):
        glob_regex(bad)


@pytest.fixture
def context(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    for rel in ("home.txt", "homework.md", "hom", "src/a.py", "src/b.py", "src/sub/c.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    (root / "docs").mkdir()
    os.symlink("../../etc/passwd", root / "link")
    return root


def test_resolve_plain_and_wildcard_sources(context: Path) -> None:
    assert resolve_sources(context, "home.txt") == ["home.txt"]
    assert resolve_sources(context, "/src/../src/a.py") == ["src/a.py"]
    assert resolve_sources(context, ".") == ["."]
    assert resolve_sources(context, "hom*") == ["hom", "home.txt", "homework.md"]
    assert resolve_sources(context, "*/*.py") == ["src/a.py", "src/b.py"]
    assert resolve_sources(context, "s?c/sub/*") == ["src/sub/c.py"]
    # A symlink is a source like any other: it is copied as a link, never followed.
    assert resolve_sources(context, "link") == ["link"]


def test_ignored_files_are_not_in_the_context(context: Path) -> None:
    ignore = IgnoreRules(["*.md", "src/sub"])
    assert resolve_sources(context, "hom*", ignore) == ["hom", "home.txt"]
    assert resolve_sources(context, "src/*", ignore) == ["src/a.py", "src/b.py"]
    with pytest.raises(SourceNotFoundError, match="dockerignore excludes it"):
        resolve_sources(context, "homework.md", ignore)
    kept = IgnoreRules(["src", "!src/b.py"])
    assert resolve_sources(context, "src/*", kept) == ["src/b.py"]


def test_sources_outside_the_context_or_missing(context: Path) -> None:
    for outside in ("../x", "/../x", "src/../../x"):
        with pytest.raises(DockerfileError, match="outside the build context") as e:
            resolve_sources(context, outside, line=7, dockerfile="Dockerfile")
        assert (e.value.path, e.value.line) == ("Dockerfile", 7)
    with pytest.raises(SourceNotFoundError, match="not in the build context") as nf:
        resolve_sources(context, "nope.txt")
    assert nf.value.path == str(context / "nope.txt")
    with pytest.raises(SourceNotFoundError, match="matches no file"):
        resolve_sources(context, "*.rs")
    with pytest.raises(DockerfileError, match="syntax error in pattern"):
        resolve_sources(context, "src/[a")
