"""The Dockerfile parser: directives, continuations, comments, forms, flags and heredocs as
BuildKit reads them, with the Dockerfile reference's own examples, and errors that name the
file, line and column."""

from __future__ import annotations

import textwrap

import pytest

from layercore.build import DockerfileError, Instruction, parse_dockerfile


def parse(text: str) -> list[Instruction]:
    return parse_dockerfile(textwrap.dedent(text).lstrip("\n"), "Dockerfile").instructions


def only(text: str) -> Instruction:
    [instruction] = parse(text)
    return instruction


# -- directives -----------------------------------------------------------------------------------


def test_escape_directive_changes_the_continuation_character() -> None:
    # The reference's Windows example: with ` as the escape, \ is an ordinary character.
    df = parse_dockerfile(
        "# escape=`\n\nFROM microsoft/nanoserver\nCOPY testfile.txt c:\\\nRUN dir c:\\\n"
    )
    assert df.escape == "`"
    assert [(i.keyword, i.args) for i in df.instructions] == [
        ("FROM", ("microsoft/nanoserver",)),
        ("COPY", ("testfile.txt", "c:\\")),
        ("RUN", ("dir c:\\",)),
    ]
    df = parse_dockerfile("# escape=`\nRUN echo a `\n  b\n")
    assert df.instructions[0].args == ("echo a   b",)


def test_directives_only_at_the_top_and_once() -> None:
    late = parse_dockerfile("FROM x\n# escape=`\nRUN a \\\n b\n")
    assert late.escape == "\\" and late.instructions[1].args == ("a  b",)
    after_comment = parse_dockerfile("# a comment\n# escape=`\nFROM x\n")
    assert after_comment.escape == "\\"
    with pytest.raises(DockerfileError, match="only one escape parser directive") as e:
        parse_dockerfile("# escape=\\\n# escape=`\nFROM x\n", "df")
    assert (e.value.path, e.value.line) == ("df", 2)
    with pytest.raises(DockerfileError, match="invalid escape token"):
        parse_dockerfile("# escape=x\nFROM x\n")


def test_syntax_directive_is_accepted_with_a_warning() -> None:
    df = parse_dockerfile("# syntax=docker/dockerfile:1.7\nFROM x\n", "app/Dockerfile")
    assert df.syntax == "docker/dockerfile:1.7"
    assert len(df.warnings) == 1 and df.warnings[0].startswith("app/Dockerfile:1:")
    assert "ignored" in df.warnings[0]


# -- lines ----------------------------------------------------------------------------------------


def test_continuations_comments_and_blank_lines() -> None:
    [run] = parse(
        """
        # leading comment
        RUN apt-get update && \\
            # a comment inside is dropped
            apt-get install -y \\
              curl
        """
    )
    assert run.args == ("apt-get update &&     apt-get install -y       curl",)
    assert (run.line, run.end_line) == (2, 5)
    assert run.comments == ("leading comment",)


def test_escaped_escape_does_not_continue() -> None:
    first, second = parse("RUN echo a\\\\\nRUN echo b\n")
    assert first.args == ("echo a\\\\",) and second.args == ("echo b",)


def test_empty_continuation_line_warns() -> None:
    df = parse_dockerfile("RUN a \\\n\n b\n", "Dockerfile")
    assert df.instructions[0].args == ("a  b",)
    assert df.warnings and "empty continuation" in df.warnings[0]


def test_only_newline_ends_a_line() -> None:
    # Found by fuzz/python/fuzz_dockerfile.py: str.splitlines also broke lines at \r, \f, \v,
    # \x1c-\x1e, \x85 and U+2028, so "k=er/docker" below became an instruction of line 3.
    assert parse_dockerfile(b"FROM x\nRUN O-mou\x1ck=er/docker").instructions[1].line == 2
    odd = "\r\f\v\x1c\x1d\x1e\x85\u2028\u2029"
    dockerfile = parse_dockerfile(f"FROM x\nRUN echo a{odd}b\nUSER u\n")
    run = dockerfile.instructions[1]
    assert [i.keyword for i in dockerfile.instructions] == ["FROM", "RUN", "USER"]
    assert (run.line, run.end_line) == (2, 2)
    assert f"a{odd}b" in run.text


@pytest.mark.parametrize("text", ["ENV\t\x1c\\\x1c", "FROM x\nLABEL \\\x1c"])
def test_pairs_of_a_lone_escape_are_an_error(text: str) -> None:
    # Found by fuzz/python/fuzz_dockerfile.py: an IndexError. Python's strip() removes the
    # \x1c after the escape, which then no longer ends the line as a continuation.
    with pytest.raises(DockerfileError, match="must have two arguments"):
        parse_dockerfile(text)


def test_hash_inside_an_instruction_is_not_a_comment() -> None:
    assert only("RUN echo hello # not a comment\n").args == ("echo hello # not a comment",)


def test_byte_order_mark_crlf_and_lowercase_keywords() -> None:
    df = parse_dockerfile(b"\xef\xbb\xbffrom alpine\r\nrun echo hi\r\n")
    assert [(i.keyword, i.args) for i in df.instructions] == [
        ("FROM", ("alpine",)),
        ("RUN", ("echo hi",)),
    ]


def test_indented_instruction_column() -> None:
    [_from, run] = parse("FROM x\n    RUN true\n")
    assert (run.line, run.column) == (2, 5)


# -- forms ----------------------------------------------------------------------------------------


def test_exec_and_shell_forms() -> None:
    exec_form = only('RUN ["/bin/bash", "-c", "echo hello"]')
    assert exec_form.json and exec_form.args == ("/bin/bash", "-c", "echo hello")
    shell = only("RUN /bin/bash -c 'echo hello'")
    assert not shell.json and shell.args == ("/bin/bash -c 'echo hello'",)
    # Not valid JSON (single quotes): the shell form, as BuildKit reads it.
    broken = only("CMD ['echo', 'x']")
    assert not broken.json and broken.args == ("['echo', 'x']",)
    assert only("ENTRYPOINT []").args == () and only("ENTRYPOINT []").json
    assert only('SHELL ["powershell", "-command"]').args == ("powershell", "-command")


def test_copy_add_volume_take_json_or_words() -> None:
    assert only('COPY ["a b", "c", "/dst/"]').args == ("a b", "c", "/dst/")
    assert only("COPY hom* /mydir/").args == ("hom*", "/mydir/")
    assert only('ADD "a b" /x/').args == ('"a b"', "/x/")
    assert only("VOLUME /var/log /var/db").args == ("/var/log", "/var/db")
    assert only('VOLUME ["/data"]').args == ("/data",)


def test_env_and_label_pairs() -> None:
    env = only('ENV MY_NAME="John Doe" MY_DOG=Rex\\ The\\ Dog MY_CAT=fluffy')
    assert env.args == ("MY_NAME", '"John Doe"', "MY_DOG", "Rex\\ The\\ Dog", "MY_CAT", "fluffy")
    assert only("ENV MY_VAR my-value is here").args == ("MY_VAR", "my-value is here")
    label = only('LABEL "com.example.vendor"="ACME Incorporated" version="1.0"')
    assert label.args == ('"com.example.vendor"', '"ACME Incorporated"', "version", '"1.0"')
    multi = only(
        'LABEL description="This text illustrates \\\nthat label-values can span multiple lines."'
    )
    assert multi.args[1] == '"This text illustrates that label-values can span multiple lines."'
    assert only("ENV EMPTY=").args == ("EMPTY", "")


def test_arg_from_expose_and_string_forms() -> None:
    assert only("ARG user1=someuser buildno").args == ("user1=someuser", "buildno")
    assert only("FROM --platform=$BUILDPLATFORM golang:1.22 AS build").flags == (
        "--platform=$BUILDPLATFORM",
    )
    assert only("FROM golang:1.22 AS build").args == ("golang:1.22", "AS", "build")
    assert only("EXPOSE 80/tcp 80/udp").args == ("80/tcp", "80/udp")
    assert only("WORKDIR /path/to/workdir").args == ("/path/to/workdir",)
    assert only("USER patrick:admin").args == ("patrick:admin",)
    assert only("STOPSIGNAL SIGKILL").args == ("SIGKILL",)
    assert only("MAINTAINER Jane <jane@example.com>").args == ("Jane <jane@example.com>",)


def test_healthcheck_and_onbuild() -> None:
    hc = only("HEALTHCHECK --interval=5m --timeout=3s CMD curl -f http://localhost/ || exit 1")
    assert hc.flag("interval") == "5m" and hc.flag("timeout") == "3s"
    assert hc.args == ("CMD", "curl -f http://localhost/ || exit 1") and not hc.json
    assert only('HEALTHCHECK CMD ["true"]').args == ("CMD", "true")
    assert only("HEALTHCHECK NONE").args == ("NONE",)
    onbuild = only("ONBUILD RUN /usr/local/bin/python-build --dir /app/src")
    assert onbuild.sub is not None and onbuild.sub.keyword == "RUN"
    assert onbuild.sub.args == ("/usr/local/bin/python-build --dir /app/src",)
    with pytest.raises(DockerfileError, match="isn't allowed as an ONBUILD trigger"):
        parse("ONBUILD ONBUILD RUN x")


def test_flags_are_unquoted_and_repeatable() -> None:
    run = only(
        'RUN --mount=type=cache,target=/root/.cache --mount="type=secret,id=tok" '
        "--network=none pip install -r requirements.txt"
    )
    assert run.flag_values("mount") == ["type=cache,target=/root/.cache", "type=secret,id=tok"]
    assert run.flag("network") == "none" and run.flag("missing") is None
    assert run.args == ("pip install -r requirements.txt",)
    copy = only("COPY --link --chmod=755 --exclude=*.md . /app")
    assert copy.flag("link") == "" and copy.flag("chmod") == "755"
    assert copy.args == (".", "/app")
    # `--` ends the flags.
    assert only("RUN -- --not-a-flag").args == ("--not-a-flag",)


# -- heredocs -------------------------------------------------------------------------------------


def test_heredocs_from_the_reference() -> None:
    df = parse(
        """
        FROM debian
        RUN <<EOT bash
          set -ex
          apt-get update
          apt-get install -y vim
        EOT
        RUN <<EOT
          mkdir -p foo/bar
        EOT
        RUN <<FILE1 cat > file1 && <<FILE2 cat > file2
        I am
        first
        FILE1
        I am
        second
        FILE2
        COPY <<-"EOT" /app/script.sh
        \techo hello ${FOO}
        \tEOT
        COPY <<robots.txt <<humans.txt /usr/share/nginx/html/
        (robots content)
        robots.txt
        (humans content)
        humans.txt
        """
    )
    run1 = df[1]
    assert run1.args == ("<<EOT bash",)
    assert run1.heredocs[0].name == "EOT"
    assert run1.heredocs[0].content == "  set -ex\n  apt-get update\n  apt-get install -y vim\n"
    assert (run1.line, run1.end_line) == (2, 6)
    two = df[3]
    assert [(h.name, h.content) for h in two.heredocs] == [
        ("FILE1", "I am\nfirst\n"),
        ("FILE2", "I am\nsecond\n"),
    ]
    chomped = df[4].heredocs[0]
    assert (chomped.name, chomped.chomp, chomped.expand) == ("EOT", True, False)
    assert chomped.content == "echo hello ${FOO}\n"
    assert [h.name for h in df[5].heredocs] == ["robots.txt", "humans.txt"]
    assert df[5].args == ("<<robots.txt", "<<humans.txt", "/usr/share/nginx/html/")


def test_heredoc_quoting_fd_and_where_heredocs_apply() -> None:
    assert only("RUN <<'EOF'\n$X\nEOF\n").heredocs[0].expand is False
    assert only('RUN <<E"O"F\n$X\nEOF\n').heredocs[0].expand is False
    assert only("RUN <<EOF\n$X\nEOF\n").heredocs[0].expand is True
    assert only("RUN 3<<EOF cat /proc/self/fd/3\nx\nEOF\n").heredocs[0].fd == 3
    # Not a heredoc instruction, and not in the exec form: << is just text.
    assert only("ENV A=<<EOF").heredocs == ()
    assert only('RUN ["cat", "<<EOF"]').heredocs == ()
    # A here-string-looking word without a name is not a heredoc either.
    assert only("RUN echo a <<  ").heredocs == ()


def test_unterminated_heredoc_names_the_instruction() -> None:
    with pytest.raises(DockerfileError, match="unterminated heredoc") as e:
        parse_dockerfile("FROM x\nRUN <<EOF\necho\n", "Dockerfile")
    assert (e.value.line, str(e.value).split(":")[0]) == (2, "Dockerfile")


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        ("FROM x\n  FRM y\n", 2, 3, "unknown instruction: FRM"),
        ("FROM x\nRUN\n", 2, 4, "RUN requires at least one argument"),
        ("FROM x\nENV A\n", 2, 5, "ENV must have two arguments"),
        ("FROM x\nENV A=1 B\n", 2, 5, "can't find = in 'B'"),
        ("FROM x\nHEALTHCHECK curl x\n", 2, 13, "HEALTHCHECK takes NONE, or CMD"),
        ("FROM x\nCOPY --from=a\n", 2, 14, "COPY requires at least one argument"),
        ("", 1, 0, "no instructions"),
        ("# only a comment\n", 1, 0, "no instructions"),
    ],
)
def test_errors_name_file_line_and_column(text: str, line: int, column: int, message: str) -> None:
    with pytest.raises(DockerfileError, match=message) as e:
        parse_dockerfile(text, "ctx/Dockerfile")
    assert (e.value.path, e.value.line, e.value.column) == ("ctx/Dockerfile", line, column)
    prefix = f"ctx/Dockerfile:{line}" + (f":{column}" if column else "")
    assert str(e.value).startswith(prefix + ": ")


def test_not_utf8_names_the_line() -> None:
    with pytest.raises(DockerfileError, match="not UTF-8") as e:
        parse_dockerfile(b"FROM x\nRUN echo \xff\n", "Dockerfile")
    assert e.value.line == 2
