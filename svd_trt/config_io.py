"""Frozen config dataclasses <-> the dicts of config.json files, for every family's configs.

Lists become tuples on the way in (configs stay hashable and comparable) and lists again on the way out.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def fields_from_dict(cls: type[T], d: dict[str, Any]) -> T:
    """Pick the fields `cls` knows; lists become tuples so configs stay hashable."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in d and d[f.name] is not None:
            v = d[f.name]
            kwargs[f.name] = tuplify(v)
    return cls(**kwargs)


def tuplify(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(tuplify(x) for x in v)
    return v


def listify(v: Any) -> Any:
    if isinstance(v, tuple):
        return [listify(x) for x in v]
    return v
