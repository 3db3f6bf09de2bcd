"""The shell-word lexer against BuildKit's rules (frontend/dockerfile/shell/lex.go): quotes,
escapes, word splitting after substitution, and every ``${...}`` form the Dockerfile reference
lists."""

from __future__ import annotations

import pytest

from layercore.build.lexer import ShellLexer, SubstitutionError
from layercore.errors import DockerfileError

ENV = {
    "PWD": "/home",
    "SHELL": "bash",
    "EMPTY": "",
    "SPACED": "a  b c",
    "FILE": "archive.tar.gz",
    "PATHV": "/usr/local/bin:/usr/bin:/bin",
}


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("hello", "hello"),
        ("he'll'o", "hello"),
        ("he'llo", None),
        ('he"ll"o', "hello"),
        ("he\\'llo", "he'llo"),
        ("'$PWD'", "$PWD"),
        ('"$PWD"', "/home"),
        ("$PWD", "/home"),
        ("${PWD}", "/home"),
        ("x${PWD}y", "x/homey"),
        ("\\$PWD", "$PWD"),
        ('"\\$PWD"', "$PWD"),
        ('"a\\b"', "a\\b"),
        ('"a\\"b"', 'a"b'),
        ('"a\\\\b"', "a\\b"),
        ("$", "$"),
        ("a$", "a$"),
        ("$/x", "$/x"),
        ("$UNSET", ""),
        ("${UNSET}x", "x"),
        ("${UNSET:-default}", "default"),
        ("${UNSET-default}", "default"),
        ("${EMPTY:-default}", "default"),
        ("${EMPTY-default}", ""),
        ("${PWD:-default}", "/home"),
        ("${PWD:+alt}", "alt"),
        ("${PWD+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET+alt}", ""),
        ("${UNSET:-${PWD}/x}", "/home/x"),
        ("${UNSET:-'quoted $PWD'}", "quoted $PWD"),
        ("${FILE%.gz}", "archive.tar"),
        ("${FILE%.*}", "archive.tar"),
        ("${FILE%%.*}", "archive"),
        ("${FILE#*.}", "tar.gz"),
        ("${FILE##*.}", "gz"),
        ("${FILE#nomatch}", "archive.tar.gz"),
        ("${PATHV/bin/BIN}", "/usr/local/BIN:/usr/bin:/bin"),
        ("${PATHV//bin/BIN}", "/usr/local/BIN:/usr/BIN:/BIN"),
        ("${PATHV//:/ }", "/usr/local/bin /usr/bin /bin"),
        ("$1", ""),
        ("$12x", "x"),
        ("${PWD:?must be set}", "/home"),
    ],
)
def test_process_word(word: str, expected: str | None) -> None:
    lexer = ShellLexer()
    if expected is None:
        with pytest.raises(SubstitutionError, match="single-quote"):
            lexer.process_word(word, ENV)
    else:
        assert lexer.process_word(word, ENV) == expected


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("a b  c", ["a", "b", "c"]),
        ("'a b' c", ["a b", "c"]),
        ('"a  b"c d', ["a  bc", "d"]),
        ("a\\ b", ["a b"]),
        ("$SPACED", ["a", "b", "c"]),
        ('"$SPACED"', ["a  b c"]),
        ("x$SPACED", ["xa", "b", "c"]),
        # BuildKit drops empty words, quoted or not (a shell would keep '' as one).
        ("''", []),
        ("a '' b", ["a", "b"]),
        ("$EMPTY", []),
        ("  lead trail  ", ["lead", "trail"]),
    ],
)
def test_words_split_after_substitution(word: str, expected: list[str]) -> None:
    assert ShellLexer().process_words(word, ENV) == expected


def test_process_keeps_spaces_between_words() -> None:
    result = ShellLexer().process("a  $SPACED", ENV)
    assert result.result == "a  a  b c"
    assert result.words == ["a", "a", "b", "c"]


def test_matched_and_unmatched_names() -> None:
    result = ShellLexer().process("$PWD ${UNSET:-x} ${SHELL}", ENV)
    assert result.matched == {"PWD", "SHELL"}
    assert result.unmatched == {"UNSET"}


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("${UNSET?}", "UNSET: is not allowed to be unset"),
        ("${UNSET:?needs a value}", "UNSET: needs a value"),
        ("${EMPTY:?}", "EMPTY: is not allowed to be empty"),
        ("${PWD", "missing '}'"),
        ("${PWD:-x", "missing '}'"),
        ("${}", "bad substitution"),
        ("${:x}", "bad substitution"),
        ("${PWD^x}", r"unsupported modifier \(\^\)"),
        ("${PWD:=x}", r"unsupported modifier \(:=\)"),
        ('"open', "double-quote"),
        ("${FILE#\\x}", "invalid escape"),
    ],
)
def test_errors_say_what_is_wrong(word: str, message: str) -> None:
    with pytest.raises(SubstitutionError, match=message) as e:
        ShellLexer().process_word(word, ENV)
    assert isinstance(e.value, DockerfileError)
    assert repr(word) in str(e.value)


def test_backtick_escape() -> None:
    lexer = ShellLexer("`")
    assert lexer.process_word("a`$PWD", ENV) == "a$PWD"
    assert lexer.process_word("C:\\path\\x", ENV) == "C:\\path\\x"
    assert lexer.process_words("a` b c", ENV) == ["a b", "c"]
    with pytest.raises(ValueError, match="escape"):
        ShellLexer("x")


def test_raw_modes_keep_what_they_name() -> None:
    raw = ShellLexer(raw_quotes=True, raw_escapes=True, skip_unset_env=True)
    assert raw.process_word("'a' \"b\" \\c $UNSET ${UNSET:-x} $PWD", ENV) == (
        "'a' \"b\" \\c $UNSET ${UNSET:-x} /home"
    )
    assert ShellLexer(skip_process_quotes=True).process_words("'a b'", ENV) == ["'a", "b'"]


def test_escaped_closing_brace_in_a_pattern() -> None:
    assert ShellLexer().process_word("${FILE/.tar\\}/X}", {"FILE": "a.tar}b"}) == "aXb"
    assert ShellLexer().process_word("${V/\\//-}", {"V": "a/b/c"}) == "a-b/c"
