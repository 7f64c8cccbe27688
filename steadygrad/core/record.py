"""The Record: everything the Monitor measured at one step, as plain host values.

Per-module families with thousands of members (a gradient norm per parameter tensor) travel as
one array per family (:class:`Values`), with member names built once (:class:`Members`), so a
step costs a few array operations, not thousands of dictionary entries.
"""

from __future__ import annotations

import math
from collections.abc import ItemsView, Iterator, Mapping, MutableMapping, Sequence, ValuesView
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Members:
    """The members of one per-module family, in a fixed order: their names, their metric keys
    (``signal/name``) and the position of each name, computed once and shared by every step.

    Example:
        >>> m = Members("grad_norm", ["fc.weight", "fc.bias"])
        >>> m.keys, m.position("fc.bias")
        (['grad_norm/fc.weight', 'grad_norm/fc.bias'], 1)
    """

    __slots__ = ("signal", "names", "_keys", "_positions")

    def __init__(self, signal: str, names: Sequence[str]) -> None:
        self.signal = signal
        self.names: tuple[str, ...] = tuple(names)
        self._keys: list[str] | None = None
        self._positions: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def keys(self) -> list[str]:
        if self._keys is None:
            self._keys = [f"{self.signal}/{n}" for n in self.names]
        return self._keys

    def position(self, name: str) -> int | None:
        if self._positions is None:
            self._positions = {n: i for i, n in enumerate(self.names)}
        return self._positions.get(name)

    def subset(self, index: Sequence[int]) -> Members:
        return Members(self.signal, [self.names[i] for i in index])


class Family:
    """One per-module family at one step: its members and a float64 array of their values."""

    __slots__ = ("members", "values")

    def __init__(self, members: Members, values: np.ndarray) -> None:
        if len(values) != len(members):
            raise ValueError(f"{len(members)} members of {members.signal} for {len(values)} values")
        self.members = members
        self.values = values

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.members.names, self.values.tolist(), strict=True))


class Values(MutableMapping[str, float]):
    """A step's values by metric name, as a mapping: scalars in a dict, and per-module families
    as arrays (``values["grad_norm/fc.weight"]`` reads one element). Iterating yields every key.

    Example:
        >>> v = Values({"loss": 2.0}, [Family(Members("grad_norm", ["a", "b"]), np.ones(2))])
        >>> v["grad_norm/b"], len(v), dict(v)
        (1.0, 3, {'loss': 2.0, 'grad_norm/a': 1.0, 'grad_norm/b': 1.0})
    """

    __slots__ = ("scalars", "families")

    def __init__(
        self, scalars: Mapping[str, float] | None = None, families: Sequence[Family] = ()
    ) -> None:
        self.scalars: dict[str, float] = dict(scalars or {})
        self.families: dict[str, Family] = {f.members.signal: f for f in families}

    def _locate(self, key: str) -> tuple[Family, int] | None:
        if not self.families:
            return None
        signal, sep, name = key.partition("/")
        family = self.families.get(signal) if sep else None
        i = None if family is None else family.members.position(name)
        return None if i is None else (family, i)

    def __getitem__(self, key: str) -> float:
        try:
            return self.scalars[key]
        except KeyError:
            found = self._locate(key)
            if found is None:
                raise
            return float(found[0].values[found[1]])

    def get(self, key: str, default: Any = None) -> Any:
        value = self.scalars.get(key, self)
        if value is not self:
            return value
        found = self._locate(key)
        return default if found is None else float(found[0].values[found[1]])

    def __contains__(self, key: object) -> bool:
        return key in self.scalars or (isinstance(key, str) and self._locate(key) is not None)

    def __setitem__(self, key: str, value: float) -> None:
        found = None if key in self.scalars else self._locate(key)
        if found is None:
            self.scalars[key] = value
        else:
            found[0].values[found[1]] = value

    def __delitem__(self, key: str) -> None:
        if key in self.scalars:
            del self.scalars[key]
            return
        found = self._locate(key)
        if found is None:
            raise KeyError(key)
        family = self.families.pop(found[0].members.signal)  # its other members stay, loose
        self.scalars.update(zip(family.members.keys, family.values.tolist(), strict=True))
        del self.scalars[key]

    def __iter__(self) -> Iterator[str]:
        yield from self.scalars
        for family in self.families.values():
            yield from family.members.keys

    def __len__(self) -> int:
        return len(self.scalars) + sum(len(f.members) for f in self.families.values())

    def items(self) -> ItemsView[str, float]:
        return _Items(self)

    def values(self) -> ValuesView[float]:
        return _Values(self)

    def without(self, signals: set[str] | frozenset[str]) -> Values:
        """These values less the families of ``signals`` (the dict of scalars is shared)."""
        kept = [f for s, f in self.families.items() if s not in signals]
        if any("/" in k and k.partition("/")[0] in signals for k in self.scalars):
            scalars = {k: v for k, v in self.scalars.items() if k.partition("/")[0] not in signals}
        else:
            scalars = self.scalars
        out = Values(families=kept)
        out.scalars = scalars
        return out

    def __repr__(self) -> str:
        return repr(dict(self.items()))


class _Items(ItemsView):
    def __iter__(self) -> Iterator[tuple[str, float]]:
        values: Values = self._mapping  # type: ignore[assignment]
        yield from values.scalars.items()
        for family in values.families.values():
            yield from zip(family.members.keys, family.values.tolist(), strict=True)


class _Values(ValuesView):
    def __iter__(self) -> Iterator[float]:
        values: Values = self._mapping  # type: ignore[assignment]
        yield from values.scalars.values()
        for family in values.families.values():
            yield from family.values.tolist()


@dataclass
class Record:
    """One step's measurements.

    ``values`` maps metric names (DESIGN.md: ``signal`` or ``signal/module.path``) to floats;
    NaN and Inf are kept as they are. The Monitor gives a :class:`Values` (large per-module
    families held as arrays); any mapping works. ``meta`` carries non-scalar facts detectors may
    need: ``skipped`` (the optimizer did not step, e.g. a GradScaler overflow),
    ``nonfinite_origin`` (where a NaN/Inf was first seen), ``batch_ids`` (the ids the user
    passed), and so on.
    """

    step: int
    values: MutableMapping[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    wall_time: float = 0.0
    _families: dict[str, dict[str, float]] | None = field(default=None, repr=False, compare=False)
    _arrays: dict[str, tuple[tuple[str, ...], np.ndarray]] = field(
        default_factory=dict, repr=False, compare=False
    )
    _dicts: dict[str, dict[str, float]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def nonfinite(self) -> bool:
        """Whether NaN/Inf reached the loss, the gradients or the weights at this step: the
        step's other values are then NaN-driven and no evidence of any other mechanism."""
        return bool(self.meta.get("nonfinite"))

    def get(self, name: str, default: float = math.nan) -> float:
        return self.values.get(name, default)

    def family(self, signal: str) -> dict[str, float]:
        """The per-module values of one signal: ``{module.path: value}``."""
        loose = self._loose().get(signal, {})
        values = self.values
        if not (isinstance(values, Values) and signal in values.families):
            return loose
        if signal not in self._dicts:
            members = values.families[signal].as_dict()
            self._dicts[signal] = {**members, **loose} if loose else members
        return self._dicts[signal]

    def family_array(self, signal: str) -> tuple[tuple[str, ...], np.ndarray]:
        """The per-module values of one signal as (names, float64 array): what a detector that
        works on whole families reads (no dictionary per member)."""
        values = self.values
        if isinstance(values, Values) and signal in values.families:
            family = values.families[signal]
            return family.members.names, family.values
        found = self._arrays.get(signal)
        if found is None:
            members = self.family(signal)
            found = (tuple(members), np.fromiter(members.values(), float, len(members)))
            self._arrays[signal] = found
        return found

    def families(self) -> dict[str, dict[str, float]]:
        """Every per-module signal, grouped (detectors ask for several)."""
        signals = list(self._loose())
        if isinstance(self.values, Values):
            signals += [s for s in self.values.families if s not in signals]
        return {signal: self.family(signal) for signal in signals}

    def _loose(self) -> dict[str, dict[str, float]]:
        """The per-module values held one by one (not as a family array), grouped once."""
        if self._families is None:
            grouped: dict[str, dict[str, float]] = {}
            values = self.values
            loose = values.scalars if isinstance(values, Values) else values
            for key, value in loose.items():
                signal, sep, module = key.partition("/")
                if sep:
                    grouped.setdefault(signal, {})[module] = value
            self._families = grouped
        return self._families
