"""One registry idiom for the plug-in axes that are looked up by name: methods, dataset readers, landmark backends,
auxiliary (VA) sources and noise protocols. Each entry registers itself with a decorator where it is defined::

    _DATASETS = Registry("dataset")
    register_dataset = _DATASETS.register

    @register_dataset("rafdb")
    def read_rafdb(root, *, image_size: int | None = 100, ...): ...

A name registered twice raises; an unknown name raises one ValueError that lists the valid names. The
keyword-only parameters of a reader or backend are its options (:func:`full_options`). Notebooks, which are
files rather than Python objects, declare their role in their metadata instead (:data:`ferlib.study.ROLES`).
"""
from __future__ import annotations

import inspect
from types import MappingProxyType
from typing import Callable, Generic, Mapping, TypeVar

__all__ = ["Registry", "full_options"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A ``{name: entry}`` table filled by :meth:`register` (entries are never replaced or removed).

    Parameters
    ----------
    kind : str
        What an entry is, for messages (``"dataset"``, ``"landmark backend"``).
    listing : callable, optional
        ``listing() -> str``: the valid choices as an error should show them (default: the sorted names).
    """

    def __init__(self, kind: str, *, listing: Callable[[], str] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._listing = listing

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding its argument under ``name``; an empty or already registered name raises ValueError."""
        if not isinstance(name, str) or not name or name in self._entries:
            raise ValueError(f"{self.kind} name {name!r} is empty or already registered")

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return add

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def listing(self) -> str:
        """The valid choices as errors show them."""
        return self._listing() if self._listing else ", ".join(self.names())

    def get(self, name: str) -> T:
        """The entry of ``name``; an unknown name raises ValueError listing the valid ones."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} {name!r}; valid: {self.listing()}") from None

    def view(self) -> Mapping[str, T]:
        """A live read-only view of the table."""
        return MappingProxyType(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def full_options(entry: Callable, options: Mapping, *, what: str) -> dict:
    """``options`` with the defaults of ``entry``'s keyword-only parameters filled in, in signature order.

    An option ``entry`` does not take raises TypeError naming ``what`` (e.g. ``dataset 'ferplus'``) and the valid
    options.
    """
    params = {k: p.default for k, p in inspect.signature(entry).parameters.items() if p.kind == p.KEYWORD_ONLY}
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)} for {what}; valid: {', '.join(params) or '(none)'}")
    return {k: options.get(k, d) for k, d in params.items()}
