"""Estimator registry: one canonical name per estimator, every alias mapped here only."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from headig.attribution.estimators import Estimator

E = TypeVar("E", bound="type[Estimator]")

ESTIMATORS: dict[str, type[Estimator]] = {}
ALIASES: dict[str, str] = {}


def register_estimator(name: str, *, aliases: tuple[str, ...] = ()):
    """Class decorator: register an :class:`~headig.attribution.Estimator` under ``name``."""
    def add(cls: E) -> E:
        for n in (name, *aliases):
            if n in ESTIMATORS or n in ALIASES:
                raise ValueError(f"estimator name {n!r} is already registered")
        ESTIMATORS[name] = cls
        ALIASES.update(dict.fromkeys(aliases, name))
        cls.name = name
        return cls

    return add


def canonical_name(name: str) -> str:
    """The canonical estimator name of ``name`` or an alias (``"ig"`` -> ``"integrated_gradients"``)."""
    if name in ESTIMATORS:
        return name
    if name in ALIASES:
        return ALIASES[name]
    raise ValueError(f"unknown estimator {name!r}; expected one of {estimator_names()}")


def get_estimator(name: str) -> type[Estimator]:
    """The estimator class registered under ``name`` (or an alias)."""
    return ESTIMATORS[canonical_name(name)]


def estimator_names(aliases: bool = True) -> list[str]:
    """Registered names (canonical first), with the aliases unless ``aliases=False``."""
    return [*ESTIMATORS, *(ALIASES if aliases else ())]


__all__ = ["ALIASES", "ESTIMATORS", "canonical_name", "estimator_names", "get_estimator",
           "register_estimator"]
