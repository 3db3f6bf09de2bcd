"""atheris target: the Dockerfile parser, then stage planning and word substitution.

Contract (layercore.build.dockerfile, stages, lexer): ``parse_dockerfile`` returns a
``Dockerfile`` or raises ``DockerfileError`` with a line inside the file; ``plan_build``
returns a plan or raises ``DockerfileError``; ``ShellLexer.process`` returns a result or raises
``SubstitutionError`` (a ``DockerfileError``). Any other exception is a finding.

Run: ``.venv/bin/python fuzz/python/fuzz_dockerfile.py [corpus dirs] [libFuzzer flags]``.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports(include=["layercore"]):
    from layercore.build.dockerfile import Dockerfile, parse_dockerfile
    from layercore.build.lexer import ShellLexer
    from layercore.build.stages import plan_build
    from layercore.errors import DockerfileError

ENV = {"A": "a", "B": "", "PATH": "/bin:/usr/bin"}


def test_one(data: bytes) -> None:
    try:
        dockerfile = parse_dockerfile(data, "Dockerfile")
    except DockerfileError as e:
        lines = data.count(b"\n") + 1
        assert 0 <= e.line <= lines, f"error line {e.line} outside the file's {lines} lines"
        assert e.column >= 0
        str(e)
        return
    assert isinstance(dockerfile, Dockerfile)
    for instruction in dockerfile.instructions:
        assert instruction.keyword == instruction.keyword.upper(), instruction
        assert 1 <= instruction.line <= instruction.end_line, instruction
    with contextlib.suppress(DockerfileError):
        plan_build(dockerfile, build_args={"V": "1"})
    lexer = ShellLexer(dockerfile.escape)
    for instruction in dockerfile.instructions[:8]:
        for word in instruction.args[:4]:
            with contextlib.suppress(DockerfileError):
                lexer.process(word, ENV)


def main() -> None:
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
