"""atheris target: ``WWW-Authenticate`` parsing (layercore.registry.auth.parse_challenges).

Contract: any header value (bytes as latin-1, as http.client hands them over) gives a list of
``Challenge`` whose scheme is a lowercase token and whose parameter names are lowercase
tokens; a malformed header gives the challenges read before the fault, never an exception.
And the challenges written back as a header (every value quoted and escaped) parse to the
same challenges. Any exception is a finding.
"""

from __future__ import annotations

import re
import sys

import atheris

with atheris.instrument_imports(include=["layercore"]):
    from layercore.registry.auth import Challenge, parse_challenges

TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def header_of(challenges: list[Challenge]) -> str:
    return ", ".join(
        " ".join([c.scheme, ",".join(f"{k}={quoted(v)}" for k, v in c.params.items())]).strip()
        for c in challenges
    )


def test_one(data: bytes) -> None:
    header = data.decode("latin-1")
    challenges = parse_challenges(header)
    assert isinstance(challenges, list)
    for c in challenges:
        assert isinstance(c, Challenge)
        assert TOKEN.fullmatch(c.scheme) and c.scheme == c.scheme.lower(), c
        for name, value in c.params.items():
            assert TOKEN.fullmatch(name) and name == name.lower(), c
            assert isinstance(value, str)
        c.realm, c.service, c.scopes, c.error  # noqa: B018 (the properties must not raise)
    again = parse_challenges(header_of(challenges))
    assert again == challenges, (header, header_of(challenges), challenges, again)


def main() -> None:
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
