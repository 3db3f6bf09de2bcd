"""Immutable records for the runtime's results, written by hand.

``dataclasses`` would do the same, but importing it (and ``inspect``, which it imports) and
making each class costs ``layercore run`` several milliseconds of its start-up budget.

It imports the standard library only.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar

__all__ = ["Record"]


class Record:
    """A value: its fields are its ``__slots__``, set once by ``__init__`` (through
    :meth:`_set`); equal and hashed by them; shown by them, but those in ``_hidden``."""

    __slots__: tuple[str, ...] = ()
    _hidden: ClassVar[tuple[str, ...]] = ()

    def _set(self, **fields: object) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {name!r}")

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Record)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        shown = (f"{n}={getattr(self, n)!r}" for n in self.__slots__ if n not in self._hidden)
        return f"{type(self).__name__}({', '.join(shown)})"
