"""Image references parse with Docker's defaults and grammar (distribution's normalize.go)."""

from __future__ import annotations

import pytest

from layercore.errors import InvalidReferenceError
from layercore.imageref import Reference

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest", "familiar"),
    [
        ("ubuntu", "docker.io", "library/ubuntu", "latest", None, "ubuntu:latest"),
        ("ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None, "ubuntu:22.04"),
        ("bitnami/redis", "docker.io", "bitnami/redis", "latest", None, "bitnami/redis:latest"),
        ("docker.io/ubuntu", "docker.io", "library/ubuntu", "latest", None, "ubuntu:latest"),
        ("index.docker.io/x/y:1", "docker.io", "x/y", "1", None, "x/y:1"),
        ("localhost/app", "localhost", "app", "latest", None, "localhost/app:latest"),
        ("localhost:5000/a/b:v1", "localhost:5000", "a/b", "v1", None, "localhost:5000/a/b:v1"),
        (
            "127.0.0.1:5000/app",
            "127.0.0.1:5000",
            "app",
            "latest",
            None,
            "127.0.0.1:5000/app:latest",
        ),
        ("ghcr.io/o/r@" + D, "ghcr.io", "o/r", None, D, "ghcr.io/o/r@" + D),
        ("ghcr.io/o/r:t@" + D, "ghcr.io", "o/r", "t", D, "ghcr.io/o/r:t@" + D),
        ("a__b/c-d.e_f", "docker.io", "a__b/c-d.e_f", "latest", None, "a__b/c-d.e_f:latest"),
    ],
)
def test_docker_defaults(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None, familiar: str
) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert ref.familiar == familiar
    assert Reference.parse(str(ref)) == ref
    assert ref.target == (digest or tag)


def test_docker_hub_api_host() -> None:
    assert Reference.parse("ubuntu").api_host == "registry-1.docker.io"
    assert Reference.parse("localhost:5000/x").api_host == "localhost:5000"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("Ubuntu", "must be lowercase"),
        ("ubuntu:", "tag ''"),
        ("ubuntu:-x", "tag '-x'"),
        ("ubuntu@sha256:abc", "is not a digest"),
        ("a//b", "repository component ''"),
        ("a-/b", "repository component 'a-'"),
        ("localhost:5000/", "no repository name"),
        ("host_x.io/a", "is not a registry host"),
        ("x/" + "a" * 260, "longer than 255"),
    ],
)
def test_invalid_references_say_why(text: str, why: str) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        Reference.parse(text)
    assert why in str(info.value)
    assert isinstance(info.value, ValueError) and info.value.path == text
