"""Image references as Docker, skopeo and crane read them: ``[host[:port]/]repo[:tag][@digest]``.

The grammar and the defaults are the distribution project's (``reference/normalize.go``): the
first component is a registry host only if it has a ``.`` or a ``:`` or is ``localhost``; no
host means ``docker.io``, where a one-component repository gets ``library/``; no tag and no
digest means ``latest``. ``index.docker.io`` is an alias of ``docker.io``, and the API of both
is served at ``registry-1.docker.io``.

It sits beside the store, not in :mod:`layercore.registry`: the archive transports name images
with the same grammar (a docker-archive's ``RepoTags``), and lower layers never import upper ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from layercore.errors import InvalidReferenceError

__all__ = ["DEFAULT_REGISTRY", "Reference"]

DEFAULT_REGISTRY = "docker.io"
_DOCKER_API_HOST = "registry-1.docker.io"
_DOCKER_ALIASES = ("docker.io", "index.docker.io")
_NAME_MAX = 255

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_HOST = re.compile(
    r"(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"|\[[0-9a-fA-F:.]+\])"
    r"(?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed, normalised reference. ``tag`` is None only when a digest is given alone."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parses ``text`` with Docker's defaults; raises :class:`InvalidReferenceError`."""

        def bad(why: str) -> InvalidReferenceError:
            return InvalidReferenceError(f"invalid image reference: {why}", text)

        if not text or text != text.strip():
            raise bad("empty, or surrounded by white space")
        name, at, digest = text.partition("@")
        if at and not _DIGEST.fullmatch(digest):
            raise bad(f"{digest!r} is not a digest (sha256:<64 hex> or sha512:<128 hex>)")
        tag: str | None = None
        slash = name.rfind("/")
        colon = name.rfind(":")
        if colon > slash:
            name, tag = name[:colon], name[colon + 1 :]
            if not _TAG.fullmatch(tag):
                raise bad(
                    f"tag {tag!r} must be 1 to 128 of [A-Za-z0-9_.-], not starting with . or -"
                )
        first, sep, rest = name.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost"):
            registry, path = first, rest
            if not _HOST.fullmatch(registry):
                raise bad(f"{registry!r} is not a registry host[:port]")
        else:
            registry, path = DEFAULT_REGISTRY, name
        if registry in _DOCKER_ALIASES:
            registry = DEFAULT_REGISTRY
            if "/" not in path:
                path = f"library/{path}"
        if not path:
            raise bad("no repository name")
        if path != path.lower():
            raise bad(f"repository name {path!r} must be lowercase")
        for component in path.split("/"):
            if not _COMPONENT.fullmatch(component):
                raise bad(
                    f"repository component {component!r} must be lowercase letters and digits, "
                    "separated by '.', '_', '__' or dashes"
                )
        if len(registry) + 1 + len(path) > _NAME_MAX:
            raise bad(f"the name is longer than {_NAME_MAX} characters")
        if tag is None and not at:
            tag = "latest"
        return cls(registry, path, tag, digest if at else None)

    @property
    def api_host(self) -> str:
        """The host whose ``/v2/`` API serves this reference (Docker Hub's is not docker.io)."""
        return _DOCKER_API_HOST if self.registry == DEFAULT_REGISTRY else self.registry

    @property
    def name(self) -> str:
        """``registry/repository``, fully qualified."""
        return f"{self.registry}/{self.repository}"

    @property
    def qualified(self) -> str:
        """In full, never abbreviated: ``docker.io/library/ubuntu:22.04``."""
        return str(self)

    @property
    def familiar(self) -> str:
        """The short form Docker prints: ``ubuntu:22.04`` for ``docker.io/library/ubuntu:22.04``."""
        repo = self.name
        if self.registry == DEFAULT_REGISTRY:
            repo = self.repository.removeprefix("library/")
        return repo + self._suffix()

    @property
    def target(self) -> str:
        """What the manifest endpoint takes: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name + self._suffix()
