"""Stages, meta args, dependencies and the target, as BuildKit's frontend reads them."""

from __future__ import annotations

import textwrap

import pytest

from layercore.build import BuildPlan, DockerfileError, parse_dockerfile, plan_build


def plan(text: str, **kwargs: object) -> BuildPlan:
    df = parse_dockerfile(textwrap.dedent(text).lstrip("\n"), "Dockerfile")
    return plan_build(df, **kwargs)  # type: ignore[arg-type]


def test_meta_args_expand_from_lines() -> None:
    text = """
        ARG VERSION=3.20
        ARG BASE=alpine:${VERSION}
        FROM ${BASE} AS build
        FROM busybox:${VERSION:-latest}
        """
    p = plan(text)
    assert [s.base for s in p.stages] == ["alpine:3.20", "busybox:3.20"]
    assert p.meta_args == {"VERSION": "3.20", "BASE": "alpine:3.20"}
    # A build arg overrides the default, and defaults after it see the new value.
    p = plan(text, build_args={"VERSION": "3.19"})
    assert [s.base for s in p.stages] == ["alpine:3.19", "busybox:3.19"]
    p = plan("ARG IMG\nFROM ${IMG:-scratch}\n")
    assert p.stages[0].base == "scratch"


def test_stage_names_targets_and_what_the_target_needs() -> None:
    text = """
        FROM alpine AS Base
        RUN echo base
        FROM base AS build
        COPY --from=tools /bin/x /bin/x
        FROM busybox AS tools
        FROM scratch AS unused
        FROM base AS final
        COPY --from=build /out /out
        COPY --from=0 /etc/os-release /
        COPY --from=nginx:1.27 /etc/nginx /etc/nginx
        """
    with pytest.raises(DockerfileError, match="does not come before it") as e:
        plan(text)
    assert e.value.line == 4
    fixed = (
        textwrap.dedent(text)
        .replace("FROM busybox AS tools\n", "")
        .replace("FROM alpine AS Base\n", "FROM alpine AS Base\nFROM busybox AS tools\n")
    )
    p = plan(fixed)
    labels = [s.label for s in p.stages]
    assert labels == ["base", "tools", "build", "unused", "final"]
    assert p.target.label == "final"
    assert [p.stages[i].label for i in p.needed] == ["base", "tools", "build", "final"]
    build = p.stages[2]
    assert build.base_stage == 0 and build.depends_on == frozenset({0, 1})
    assert p.stages[4].depends_on == frozenset({0, 2})  # nginx:1.27 is an image
    only_tools = plan(fixed, target="TOOLS")
    assert [only_tools.stages[i].label for i in only_tools.needed] == ["tools"]
    with pytest.raises(DockerfileError, match="target stage 'nope' could not be found"):
        plan(fixed, target="nope")


def test_run_mount_from_is_a_dependency() -> None:
    p = plan(
        """
        FROM alpine AS deps
        FROM alpine
        RUN --mount=type=bind,from=deps,source=/x,target=/y cat /y
        """
    )
    assert p.stages[1].depends_on == frozenset({0})
    assert p.needed == (0, 1)


def test_copy_from_expands_stage_args() -> None:
    p = plan(
        """
        FROM alpine AS one
        FROM alpine AS two
        ARG SRC=one
        COPY --from=${SRC} /a /a
        """,
        build_args={"SRC": "one"},
    )
    assert p.stages[1].depends_on == frozenset({0})


def test_unused_build_args_are_reported() -> None:
    p = plan(
        """
        ARG USED_GLOBALLY
        FROM alpine AS a
        ARG USED_IN_A
        FROM alpine AS b
        ARG ONLY_IN_B
        FROM alpine
        """,
        build_args={
            "USED_GLOBALLY": "1",
            "USED_IN_A": "2",
            "ONLY_IN_B": "3",
            "TYPO": "4",
            "HTTP_PROXY": "http://proxy:3128",
        },
        target="a",
    )
    assert p.unused_build_args == ("ONLY_IN_B", "TYPO")


def test_platform_args_are_meta_args() -> None:
    p = plan(
        "FROM --platform=$BUILDPLATFORM golang AS build\nFROM alpine-${TARGETARCH}\n",
        platform_args={"BUILDPLATFORM": "linux/amd64", "TARGETARCH": "amd64"},
    )
    assert p.stages[0].platform == "linux/amd64"
    assert p.stages[1].base == "alpine-amd64"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("RUN true\nFROM x\n", 1, "RUN before the first FROM"),
        ("ARG A\n", 1, "has no FROM"),
        ("FROM a AS x\nFROM b AS X\n", 2, "duplicate stage name 'x'"),
        ("FROM a AS 1st\n", 1, "invalid stage name '1st'"),
        ("FROM a b\n", 1, "FROM takes an image and optionally AS NAME"),
        ("FROM ${EMPTY}\n", 1, "expands to nothing"),
        ("FROM ${A:?required}\n", 1, "A: required"),
    ],
)
def test_errors_name_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(DockerfileError, match=message) as e:
        plan_build(parse_dockerfile(text, "Dockerfile"))
    assert (e.value.path, e.value.line) == ("Dockerfile", line)
