"""Metadata instructions: the config they leave and the history lines BuildKit writes for them
(frontend/dockerfile/dockerfile2llb/convert.go, dockerfile_history_test.go)."""

from __future__ import annotations

import textwrap

import pytest

from layercore.build import DockerfileError, parse_dockerfile
from layercore.build.metadata import (
    BUILDKIT_COMMENT,
    StageState,
    go_duration,
    go_quote,
    parse_duration,
)


def run(
    text: str,
    config: dict[str, object] | None = None,
    **kwargs: dict[str, str],
) -> tuple[StageState, list[str]]:
    df = parse_dockerfile(textwrap.dedent(text).lstrip("\n"), "Dockerfile")
    state = StageState(df, config, **kwargs)
    lines = []
    for ins in df.instructions:
        entry = state.apply(ins)
        if entry is not None:
            assert entry.empty_layer and entry.comment == BUILDKIT_COMMENT
            assert entry.created_by is not None
            lines.append(entry.created_by)
    return state, lines


def test_env_label_user_and_their_history() -> None:
    state, lines = run(
        """
        ENV A=1 B="two words" C=$A-x
        ENV A=changed
        LABEL "com.example.vendor"="ACME Inc" version=${B}
        USER ${A}:app
        """,
        {"Env": ["PATH=/usr/bin:/bin", "A=base"]},
    )
    assert lines == [
        # Within one ENV, $A is still the value from before it (the reference's example).
        "ENV A=1 B=two words C=base-x",
        "ENV A=changed",
        "LABEL com.example.vendor=ACME Inc version=two words",
        "USER changed:app",
    ]
    assert state.config["Env"] == ["PATH=/usr/bin:/bin", "A=changed", "B=two words", "C=base-x"]
    assert state.config["Labels"] == {"com.example.vendor": "ACME Inc", "version": "two words"}
    assert state.config["User"] == "changed:app"


def test_the_references_env_example() -> None:
    state, _ = run("ENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\n")
    assert state.env == {"abc": "bye", "def": "hello", "ghi": "bye"}


def test_arg_scope_build_args_and_env_precedence() -> None:
    state, lines = run(
        """
        ARG foo=bar
        ARG bar=123
        ARG foo=bar2
        ARG GLOBAL
        ARG FROM_CLI=default
        ENV bar=from-env
        LABEL seen=$foo/$bar/$GLOBAL/$FROM_CLI
        """,
        meta_args={"GLOBAL": "meta"},
        build_args={"FROM_CLI": "cli"},
    )
    # BuildKit's history shows the Dockerfile's defaults, never the build-arg values.
    assert lines[:5] == [
        "ARG foo=bar",
        "ARG bar=123",
        "ARG foo=bar2",
        "ARG GLOBAL",
        "ARG FROM_CLI=default",
    ]
    assert state.config["Labels"] == {"seen": "bar2/from-env/meta/cli"}
    # moby/buildkit#5505: a re-declared arg keeps its first place; an ENV shows its value.
    assert state.run_history(["/bin/sh", "-c", "ls /etc/"]) == (
        "RUN |4 foo=bar2 bar=from-env GLOBAL=meta FROM_CLI=cli /bin/sh -c ls /etc/ # buildkit"
    )


def test_run_history_without_args_and_shell() -> None:
    state, lines = run('SHELL ["/bin/bash", "-o", "pipefail", "-c"]\n')
    assert lines == ["SHELL [/bin/bash -o pipefail -c]"]
    df = parse_dockerfile("RUN echo hi | wc -l\n")
    argv = state.command(df.instructions[0])
    assert argv == ["/bin/bash", "-o", "pipefail", "-c", "echo hi | wc -l"]
    assert state.run_history(argv) == "RUN /bin/bash -o pipefail -c echo hi | wc -l # buildkit"
    exec_form = parse_dockerfile('RUN ["ls", "-l"]\n').instructions[0]
    assert state.run_history(state.command(exec_form)) == "RUN ls -l # buildkit"


def test_cmd_entrypoint_and_inherited_cmd() -> None:
    state, lines = run(
        """
        CMD echo "hi there"
        ENTRYPOINT ["/entry.sh"]
        """,
        {"Cmd": ["old"]},
    )
    assert lines == [
        'CMD ["/bin/sh" "-c" "echo \\"hi there\\""]',
        'ENTRYPOINT ["/entry.sh"]',
    ]
    # CMD set in this stage survives the ENTRYPOINT after it...
    assert state.config["Cmd"] == ["/bin/sh", "-c", 'echo "hi there"']
    # ...an inherited one does not.
    state, _ = run('ENTRYPOINT ["/entry.sh"]\n', {"Cmd": ["old"]})
    assert state.config["Cmd"] is None and state.config["Entrypoint"] == ["/entry.sh"]


def test_expose_volume_stopsignal_maintainer_onbuild() -> None:
    state, lines = run(
        """
        ARG P=8080
        EXPOSE 2375 5000 1234/udp
        EXPOSE ${P} 7000-7002/udp
        VOLUME ["/data", "/var/log"]
        VOLUME /cache $P
        STOPSIGNAL SIGKILL
        STOPSIGNAL 9
        MAINTAINER Jane <jane@example.com>
        ONBUILD RUN echo later
        """,
        {"ExposedPorts": {"22/tcp": {}}},
    )
    assert lines[1:] == [
        "EXPOSE [1234/udp 2375/tcp 5000/tcp]",
        "EXPOSE [7000/udp 7001/udp 7002/udp 8080/tcp]",
        "VOLUME [/data /var/log]",
        "VOLUME [/cache 8080]",
        "STOPSIGNAL SIGKILL",
        "STOPSIGNAL 9",
        "MAINTAINER Jane <jane@example.com>",
    ]
    assert sorted(state.config["ExposedPorts"]) == [
        "1234/udp", "22/tcp", "2375/tcp", "5000/tcp", "7000/udp", "7001/udp", "7002/udp",
        "8080/tcp",
    ]  # fmt: skip
    assert state.config["Volumes"] == {"/data": {}, "/var/log": {}, "/cache": {}, "8080": {}}
    assert state.config["StopSignal"] == "9"
    assert state.config["OnBuild"] == ["RUN echo later"]
    assert state.author == "Jane <jane@example.com>"


def test_healthcheck_config_and_history() -> None:
    state, lines = run(
        "HEALTHCHECK --interval=5m --timeout=3s --retries=3 "
        "CMD curl -f http://localhost/ || exit 1\n"
    )
    assert state.config["Healthcheck"] == {
        "Test": ["CMD-SHELL", "curl -f http://localhost/ || exit 1"],
        "Interval": 300 * 10**9,
        "Timeout": 3 * 10**9,
        "Retries": 3,
    }
    assert lines == [
        'HEALTHCHECK &{["CMD-SHELL" "curl -f http://localhost/ || exit 1"] '
        '"5m0s" "3s" "0s" "0s" \'\\x03\'}'
    ]
    state, _ = run('HEALTHCHECK CMD ["/check", "-q"]\nHEALTHCHECK NONE\n')
    assert state.config["Healthcheck"] == {"Test": ["NONE"]}
    state, _ = run('HEALTHCHECK --start-period=1m30s CMD ["/check"]\n')
    assert state.config["Healthcheck"] == {"Test": ["CMD", "/check"], "StartPeriod": 90 * 10**9}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SHELL /bin/bash -c\n", "JSON form"),
        ("STOPSIGNAL SIGNOPE\n", "invalid signal: SIGNOPE"),
        ("EXPOSE 80/tcpx\n", "invalid port '80/tcpx'"),
        ("EXPOSE 90-80\n", "invalid port range"),
        ('VOLUME [""]\n', "can not be an empty string"),
        ("HEALTHCHECK --interval=5x CMD true\n", "invalid duration"),
        ("HEALTHCHECK --retries=two CMD true\n", "whole number"),
        ("HEALTHCHECK --interval=1ns CMD true\n", "less than 1ms"),
        ("ENV A=${UNSET:?required}\n", "UNSET: required"),
    ],
)
def test_errors_name_the_instruction(text: str, message: str) -> None:
    df = parse_dockerfile("FROM x\n" + text, "Dockerfile")
    state = StageState(df)
    with pytest.raises(DockerfileError, match=message) as e:
        state.apply(df.instructions[1])
    assert (e.value.path, e.value.line) == ("Dockerfile", 2)


def test_filesystem_instructions_are_not_metadata() -> None:
    df = parse_dockerfile("RUN true\n")
    with pytest.raises(ValueError, match="RUN is not a metadata instruction"):
        StageState(df).apply(df.instructions[0])


@pytest.mark.parametrize(
    ("text", "ns", "shown"),
    [
        ("30s", 30 * 10**9, "30s"),
        ("1m30s", 90 * 10**9, "1m30s"),
        ("1.5h", 5400 * 10**9, "1h30m0s"),
        ("500ms", 500 * 10**6, "500ms"),
        ("1.5s", 1500 * 10**6, "1.5s"),
        ("2h", 7200 * 10**9, "2h0m0s"),
        ("0", 0, "0s"),
    ],
)
def test_durations_as_go_reads_and_writes_them(text: str, ns: int, shown: str) -> None:
    assert parse_duration(text) == ns
    assert go_duration(ns) == shown


def test_go_quote() -> None:
    assert go_quote('a "b" \\c') == '"a \\"b\\" \\\\c"'
    assert go_quote("tab\there\n") == '"tab\\there\\n"'
    assert go_quote("\x00\x7f") == '"\\x00\\x7f"'
    assert go_quote("héllo ☃") == '"héllo ☃"'
