"""The Dockerfile builder: from a Dockerfile and a context to an image in the store.

This subpackage sits above the store and the registry client: it may import ``layercore.store``,
``image``, ``layer``, ``stack``, ``registry`` and ``errors``; nothing below it imports it.

- ``lexer``: BuildKit's shell-word lexer (quotes, escapes, ``$V``/``${V:-w}`` substitution);
- ``dockerfile``: the Dockerfile parser (directives, continuations, comments, heredocs, exec
  and shell forms, instruction flags), every instruction with its line and column;
- ``context``: ``.dockerignore`` rules and the files a ``COPY`` source names in the context;
- ``stages``: the stages, meta args, dependencies and target of a build (``plan_build``);
- ``metadata``: what ``ENV``, ``ARG``, ``LABEL``, ``CMD`` ... do to a stage's config, and the
  history lines BuildKit writes for them (``StageState``);
- ``executor``: the build itself (``build``, ``BuildResult``, ``BuildStep``);
- ``remote_cache``: the build cache in a registry (``--cache-to``, ``--cache-from``), loaded
  only by a build given cache references.

Importing the package loads none of them: ``import layercore`` imports it, and stays cheap;
each name below is loaded on first use. The package is callable: ``layercore.build(context,
...)`` is :func:`layercore.build.build` (typed code can import that function by name).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from layercore.build.dockerfile import Dockerfile, Heredoc, Instruction, parse_dockerfile
    from layercore.build.executor import BuildEvent, BuildResult, BuildStep, build
    from layercore.build.lexer import ShellLexer, SubstitutionResult
    from layercore.build.remote_cache import CacheExport, CacheRef
    from layercore.build.stages import BuildPlan, Stage, plan_build
    from layercore.errors import BuildError, DockerfileError

__all__ = [
    "BuildError",
    "BuildEvent",
    "BuildPlan",
    "BuildResult",
    "BuildStep",
    "CacheExport",
    "CacheRef",
    "Dockerfile",
    "DockerfileError",
    "Heredoc",
    "Instruction",
    "ShellLexer",
    "Stage",
    "SubstitutionResult",
    "build",
    "parse_dockerfile",
    "plan_build",
]

_WHERE = {
    "Dockerfile": "dockerfile",
    "Heredoc": "dockerfile",
    "Instruction": "dockerfile",
    "parse_dockerfile": "dockerfile",
    "BuildEvent": "executor",
    "BuildResult": "executor",
    "BuildStep": "executor",
    "build": "executor",
    "ShellLexer": "lexer",
    "SubstitutionResult": "lexer",
    "CacheExport": "remote_cache",
    "CacheRef": "remote_cache",
    "BuildPlan": "stages",
    "Stage": "stages",
    "plan_build": "stages",
}


def __getattr__(name: str) -> Any:
    if name in ("BuildError", "DockerfileError"):
        return getattr(importlib.import_module("layercore.errors"), name)
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'layercore.build' has no attribute {name!r}")
    return getattr(importlib.import_module(f"layercore.build.{module}"), name)


class _Package(types.ModuleType):
    """The package's module type: calling it runs a build."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from layercore.build.executor import build as run_build

        return run_build(*args, **kwargs)


sys.modules[__name__].__class__ = _Package
