"""Immutable value classes without the import cost of :mod:`dataclasses`.

A ``@dataclass`` writes its methods as source text and runs ``exec()`` on it when the class is created,
about 0.4 ms a class, and the modules on the start-up path define more than a dozen of them. A
:class:`Record` subclass lists its fields in ``__slots__`` and assigns them in a hand-written ``__init__``;
this base derives equality, hashing, ``repr`` and pickling from those slots, with no code generated. What it
promises is what a frozen dataclass promises:

- fields are the ``__slots__`` of the class and of its bases, bases first, each class's in the order they
  are annotated in its body (which ``repr`` shows);
- two records are equal when they are of the same class and their fields are equal, and the hash follows;
- a field can be assigned once (in ``__init__``); assigning it again or deleting it raises
  :class:`FrozenInstanceError`;
- pickling and :mod:`copy` work, and a record pickled as a dataclass (its state a ``__dict__``) still loads.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = ["FrozenInstanceError", "Record"]


_NOT_FIELDS = ("__dict__", "__weakref__")


class FrozenInstanceError(AttributeError):
    """A field of a record was assigned after ``__init__``, or deleted (as ``dataclasses`` names it)."""


class Record:
    """Base of tapster's immutable value classes; see the module docstring for the rules."""

    __slots__ = ()

    _record_fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields: list[str] = []
        for klass in reversed(cls.__mro__):
            own = klass.__dict__.get("__slots__", ())
            slots = [own] if isinstance(own, str) else [name for name in own if name not in _NOT_FIELDS]
            # In the order the fields are annotated, as a dataclass has them (__slots__ itself is kept sorted).
            # Not inspect.get_annotations: inspect costs ms to import, and without annotations here only the
            # order in repr changes.
            annotations = klass.__dict__.get("__annotations__", {})  # noqa: RUF063
            declared = [name for name in annotations if name in slots]
            fields += [name for name in dict.fromkeys(declared + sorted(slots)) if name not in fields]
        cls._record_fields = tuple(fields)

    def _record_values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._record_fields)

    def __setattr__(self, name: str, value: Any) -> None:
        if hasattr(self, name):
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Record) and other.__class__ is self.__class__:
            return self._record_values() == other._record_values()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._record_values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._record_fields)
        return f"{type(self).__qualname__}({fields})"

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._record_fields}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)
