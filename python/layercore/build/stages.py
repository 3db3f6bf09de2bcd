"""Stages of a Dockerfile, and which of them a build needs.

A Dockerfile is a list of stages, each from one ``FROM`` to the next. This module reads them
as BuildKit's frontend does (``dockerfile2llb``), before anything runs:

- **ARG before FROM** declares *meta args*: in scope for every ``FROM`` line (and, when a
  stage re-declares the name with a bare ``ARG NAME``, inside that stage). Their values come
  from the build args, else their defaults, which may use the meta args declared before them.
- **FROM** ``[--platform=P] IMAGE [AS NAME]``: ``IMAGE`` is expanded with the meta args; it
  is ``scratch``, an earlier stage's name, or an image reference. Stage names are
  case-insensitive, start with a letter and are unique.
- **Dependencies**: ``FROM`` an earlier stage, ``COPY``/``ADD --from=STAGE`` (a name or an
  index; anything else is an image), ``RUN --mount=...,from=STAGE``. A stage may only depend
  on stages before it.
- **The target** is the last stage unless named; only the stages it needs are built, and the
  plan lists them dependencies first.
- **Build args** that no needed stage declares are reported (BuildKit warns of them); the
  predefined proxy args (``HTTP_PROXY`` ...) need no declaration.

It imports the parser, the lexer and ``layercore.errors``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from layercore.build.dockerfile import Dockerfile, Instruction
from layercore.build.lexer import ShellLexer, SubstitutionError

__all__ = ["PREDEFINED_ARGS", "BuildPlan", "Stage", "plan_build"]

#: Build args every Dockerfile may use without declaring them (the Dockerfile reference).
PREDEFINED_ARGS = (
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
)
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9\-_.]*$")


@dataclass(frozen=True)
class Stage:
    """One stage: ``index`` (from 0), ``name`` (lower case, or None), ``base`` (the ``FROM``
    image after expansion: ``scratch``, a reference, or the name of ``base_stage``),
    ``platform`` (``--platform``, expanded), the ``FROM`` instruction and the instructions
    after it, and the indexes of the stages it ``depends_on``."""

    index: int
    name: str | None
    base: str
    base_stage: int | None
    platform: str | None
    origin: Instruction
    instructions: tuple[Instruction, ...]
    depends_on: frozenset[int] = frozenset()

    @property
    def label(self) -> str:
        """How messages and progress name the stage: its name, else its index."""
        return self.name if self.name is not None else str(self.index)


@dataclass(frozen=True)
class BuildPlan:
    """What a build does: every ``stage``, the ``target``, the stages it needs in the order
    they can be built (``needed``, dependencies first, the target last), the meta args'
    values, and the build args nothing declares (``unused_build_args``)."""

    stages: tuple[Stage, ...]
    target: Stage
    needed: tuple[int, ...]
    meta_args: dict[str, str] = field(default_factory=dict)
    unused_build_args: tuple[str, ...] = ()


def _arg_pairs(instruction: Instruction) -> list[tuple[str, str | None]]:
    """An ``ARG`` instruction's ``(name, default or None)``; the default is still unexpanded."""
    out = []
    for word in instruction.args:
        name, sep, default = word.partition("=")
        out.append((name, default if sep else None))
    return out


class _Planner:
    def __init__(
        self, dockerfile: Dockerfile, build_args: Mapping[str, str], extra: Mapping[str, str]
    ) -> None:
        self.df = dockerfile
        self.build_args = dict(build_args)
        self.lexer = ShellLexer(dockerfile.escape)
        self.meta: dict[str, str] = dict(extra)
        self.declared: set[str] = set()
        self.count = 0

    def fail(self, message: str, instruction: Instruction) -> Exception:
        return self.df.error(message, instruction)

    def expand(self, word: str, env: Mapping[str, str], instruction: Instruction) -> str:
        try:
            return self.lexer.process_word(word, env)
        except SubstitutionError as e:
            raise self.fail(e.message, instruction) from None

    def arg_value(
        self, name: str, default: str | None, env: Mapping[str, str], instruction: Instruction
    ) -> str | None:
        self.declared.add(name)
        if name in self.build_args:
            return self.build_args[name]
        if default is None:
            return None
        return self.expand(default, env, instruction)

    def plan(self, target: str | None) -> BuildPlan:
        instructions = self.df.instructions
        i = 0
        while i < len(instructions) and instructions[i].keyword != "FROM":
            ins = instructions[i]
            if ins.keyword != "ARG":
                raise self.fail(
                    f"{ins.keyword} before the first FROM: only ARG may come before it", ins
                )
            for name, default in _arg_pairs(ins):
                value = self.arg_value(name, default, self.meta, ins)
                if value is not None:
                    self.meta[name] = value
                else:
                    self.meta.pop(name, None)
            i += 1
        if i == len(instructions):
            raise self.fail("the Dockerfile has no FROM", instructions[-1])
        starts = [j for j in range(i, len(instructions)) if instructions[j].keyword == "FROM"]
        stages: list[Stage] = []
        names: dict[str, int] = {}
        for n, start in enumerate(starts):
            end = starts[n + 1] if n + 1 < len(starts) else len(instructions)
            stage = self.stage(n, instructions[start], tuple(instructions[start + 1 : end]), names)
            if stage.name is not None:
                names[stage.name] = n
            stages.append(stage)
        self.count = len(stages)
        stages = [self.with_dependencies(s, names) for s in stages]
        if target is None:
            chosen = stages[-1]
        else:
            index = names.get(target.lower())
            if index is None:
                raise self.fail(
                    f"target stage {target!r} could not be found (stages: "
                    + ", ".join(s.label for s in stages)
                    + ")",
                    stages[-1].origin,
                )
            chosen = stages[index]
        needed = self.order(stages, chosen.index)
        for index in needed:
            for ins in stages[index].instructions:
                if ins.keyword == "ARG":
                    self.declared.update(name for name, _ in _arg_pairs(ins))
        unused = tuple(
            sorted(
                name
                for name in self.build_args
                if name not in self.declared and name not in PREDEFINED_ARGS
            )
        )
        return BuildPlan(tuple(stages), chosen, needed, dict(self.meta), unused)

    def stage(
        self,
        index: int,
        origin: Instruction,
        body: tuple[Instruction, ...],
        names: dict[str, int],
    ) -> Stage:
        args = list(origin.args)
        if len(args) == 3 and args[1].upper() == "AS":
            written: str | None = args[2]
        elif len(args) == 1:
            written = None
        else:
            raise self.fail("FROM takes an image and optionally AS NAME", origin)
        name = None if written is None else written.lower()
        if name is not None:
            if not _STAGE_NAME.match(name):
                raise self.fail(
                    f"invalid stage name {written!r}: it must start with a letter and hold "
                    "only letters, digits, '-', '_' and '.'",
                    origin,
                )
            if name in names:
                raise self.fail(f"duplicate stage name {name!r}", origin)
        base = self.expand(args[0], self.meta, origin)
        if not base:
            raise self.fail(f"FROM {args[0]} expands to nothing", origin)
        platform = origin.flag("platform")
        if platform is not None:
            platform = self.expand(platform, self.meta, origin)
        base_stage = names.get(base.lower())
        return Stage(index, name, base, base_stage, platform, origin, body)

    def with_dependencies(self, stage: Stage, names: dict[str, int]) -> Stage:
        deps: set[int] = set()
        if stage.base_stage is not None:
            deps.add(stage.base_stage)
        env = dict(self.meta)
        for ins in stage.instructions:
            if ins.keyword == "ARG":
                for name, default in _arg_pairs(ins):
                    if name in self.build_args:
                        env[name] = self.build_args[name]
                    elif default is not None:
                        env[name] = self.expand(default, env, ins)
            sources = []
            if ins.keyword in ("COPY", "ADD") and ins.flag("from") is not None:
                sources.append(ins.flag("from") or "")
            if ins.keyword == "RUN":
                for mount in ins.flag_values("mount"):
                    for option in mount.split(","):
                        key, _, value = option.partition("=")
                        if key.strip() == "from":
                            sources.append(value)
            for source in sources:
                ref = self.expand(source, env, ins)
                index = self.stage_index(ref, names)
                if index is None:
                    continue  # an image, pulled or read from the store
                if index >= stage.index:
                    raise self.fail(
                        f"stage {stage.label} uses stage {ref!r}, which does not come before "
                        "it (a circular dependency)",
                        ins,
                    )
                deps.add(index)
        return Stage(
            stage.index,
            stage.name,
            stage.base,
            stage.base_stage,
            stage.platform,
            stage.origin,
            stage.instructions,
            frozenset(deps),
        )

    def stage_index(self, ref: str, names: Mapping[str, int]) -> int | None:
        if ref.isdigit():
            index = int(ref)
            return index if index < self.count else None
        return names.get(ref.lower())

    def order(self, stages: list[Stage], target: int) -> tuple[int, ...]:
        """The stages ``target`` needs, each after its dependencies (a depth-first walk; the
        graph points only backwards, so there is no cycle)."""
        done: list[int] = []
        seen: set[int] = set()

        def visit(index: int) -> None:
            if index in seen:
                return
            seen.add(index)
            for dep in sorted(stages[index].depends_on):
                visit(dep)
            done.append(index)

        visit(target)
        return tuple(done)


def plan_build(
    dockerfile: Dockerfile,
    *,
    build_args: Mapping[str, str] | None = None,
    target: str | None = None,
    platform_args: Mapping[str, str] | None = None,
) -> BuildPlan:
    """Reads the stages of ``dockerfile`` and picks those ``target`` (default: the last stage)
    needs. ``build_args`` are ``--build-arg`` values; ``platform_args`` are the automatic
    meta args (``TARGETPLATFORM``, ``BUILDARCH`` ...) the caller computed for this machine.
    Raises :class:`~layercore.errors.DockerfileError` naming the line at fault."""
    planner = _Planner(dockerfile, build_args or {}, platform_args or {})
    return planner.plan(target)
