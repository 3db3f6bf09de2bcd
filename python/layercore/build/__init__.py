"""The Dockerfile builder: from a Dockerfile and a context to an image in the store.

This subpackage sits above the store and the registry client: it may import ``layercore.store``,
``image``, ``layer``, ``stack``, ``registry`` and ``errors``; nothing below it imports it.

- ``lexer``: BuildKit's shell-word lexer (quotes, escapes, ``$V``/``${V:-w}`` substitution);
- ``dockerfile``: the Dockerfile parser (directives, continuations, comments, heredocs, exec
  and shell forms, instruction flags), every instruction with its line and column;
- ``context``: ``.dockerignore`` rules and the files a ``COPY`` source names in the context;
- ``stages``: the stages, meta args, dependencies and target of a build (``plan_build``);
- ``metadata``: what ``ENV``, ``ARG``, ``LABEL``, ``CMD`` ... do to a stage's config, and the
  history lines BuildKit writes for them (``StageState``).
"""

from layercore.build.dockerfile import Dockerfile, Heredoc, Instruction, parse_dockerfile
from layercore.build.lexer import ShellLexer, SubstitutionResult
from layercore.build.stages import BuildPlan, Stage, plan_build
from layercore.errors import DockerfileError

__all__ = [
    "BuildPlan",
    "Dockerfile",
    "DockerfileError",
    "Heredoc",
    "Instruction",
    "ShellLexer",
    "Stage",
    "SubstitutionResult",
    "parse_dockerfile",
    "plan_build",
]
