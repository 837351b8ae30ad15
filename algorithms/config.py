"""Configuration fields every algorithm shares: data preprocessing, sampling and training length.

Each algorithm's ``Config`` subclasses :class:`BaseConfig` and adds its own hyper-parameters with the
paper's defaults. Configs are frozen dataclasses, so they are hashable and static under jit.

Every numeric field declares its valid range where it is introduced, with :func:`bounded`
(``discount: float = bounded(0.99, gt=0.0, le=1.0)``); a tuple field's range holds for each entry.
:func:`resolve_config` refuses NaN, infinities and values outside the range, so a bad ``-p`` or suite
value stops a run before any training.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from offbench.hints import suggest

RewardNormalization = Literal["none", "return_range"]
RANGE = "range"


@dataclasses.dataclass(frozen=True)
class Range:
    """Finite values between ``low`` and ``high``; an open end excludes the bound itself."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self, integer: bool, many: bool = False) -> str:
        """``a finite number >= 0``, ``a number in (0, 1]``, ``integers >= 1`` (``many``: for tuples)."""
        if many:
            kind, short = ("integers", "integers") if integer else ("finite numbers", "numbers")
        else:
            kind, short = ("an integer", "an integer") if integer else ("a finite number", "a number")
        if math.isinf(self.low) and math.isinf(self.high):
            return kind
        if math.isinf(self.high):
            return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        if math.isinf(self.low):
            return f"{kind} {'<' if self.high_open else '<='} {self.high:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"{short} in {left}{self.low:g}, {self.high:g}{right}"


def bounded(
    default: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> Any:
    """A dataclass field whose value (each entry, for a tuple) must be finite and > ``gt`` / >= ``ge``,
    < ``lt`` / <= ``le``; no bound at all means any finite number."""
    valid = Range(
        low=-math.inf if gt is None and ge is None else (gt if gt is not None else ge),
        high=math.inf if lt is None and le is None else (lt if lt is not None else le),
        low_open=gt is not None,
        high_open=lt is not None,
    )
    return dataclasses.field(default=default, metadata={RANGE: valid})


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    batch_size: int = bounded(256, ge=1)
    discount: float = bounded(0.99, gt=0.0, le=1.0)
    # Standardise observations with the dataset's mean and std (+1e-3); the statistics travel with
    # the trained policy and are applied at evaluation.
    normalize_observations: bool = True
    # Rewards become ``reward_scale * r / range + reward_shift`` where ``range`` is
    # (max - min) episode return under "return_range" (IQL's locomotion rule) and 1 under "none".
    reward_normalization: RewardNormalization = "none"
    reward_scale: float = bounded(1.0, gt=0.0)
    reward_shift: float = bounded(0.0)
    # Which transitions a batch is drawn from (see ``sampling.py``): uniform, rw, aw or topk.
    sampler: str = "uniform"
    sampler_temperature: float = bounded(0.1, gt=0.0)
    sampler_top_fraction: float = bounded(0.1, gt=0.0, le=1.0)
    # Length of the whole run; learning-rate schedules (IQL's cosine actor decay) need it.
    total_steps: int = bounded(1_000_000, ge=1)


DatasetOverrides = Sequence[tuple[str, Mapping[str, Any]]]


def config_fields(config_type: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(config_type)}


def _is_numeric(annotation: Any) -> bool:
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (tuple, typing.Union, types.UnionType):
        return any(_is_numeric(arg) for arg in typing.get_args(annotation) if arg is not Ellipsis)
    return False


def numeric_fields(config_type: type) -> list[str]:
    """The fields holding numbers or tuples of numbers (bool is not a number here)."""
    hints = typing.get_type_hints(config_type)
    return [f.name for f in dataclasses.fields(config_type) if _is_numeric(hints[f.name])]


def field_range(config_type: type, name: str) -> Range | None:
    """The range declared for a field, looked up through the base classes: a subclass that only changes
    a default (``sampler_temperature: float = 0.2``) keeps the range its parent declared."""
    for cls in config_type.__mro__:
        field = getattr(cls, "__dataclass_fields__", {}).get(name)
        if field is not None and RANGE in field.metadata:
            return field.metadata[RANGE]
    return None


def owner(config_type: type) -> str:
    """The name of the algorithm a config belongs to, for messages: its module's declared name (a plug-in
    file is loaded under a generated module name), else the module's last part."""
    declaration = getattr(sys.modules.get(config_type.__module__), "ALGORITHM", None)
    name = getattr(declaration, "name", None)
    return name if isinstance(name, str) else config_type.__module__.rsplit(".", 1)[-1]


def check_ranges(config_type: type, values: Mapping[str, Any]) -> None:
    """Refuse NaN, infinities and values outside each numeric field's declared range; fields missing from
    ``values`` take their defaults."""
    algorithm = owner(config_type)
    hints = typing.get_type_hints(config_type)
    fields = config_fields(config_type)
    for name in numeric_fields(config_type):
        valid = field_range(config_type, name)
        if valid is None:
            raise TypeError(f"{config_type.__qualname__}.{name} declares no range: define it with bounded().")
        value = values.get(name, fields[name].default)
        if value is None:  # an optional field left unset
            continue
        entries = value if isinstance(value, tuple) else (value,)
        if entries and all(entry in valid for entry in entries):
            continue
        integer = int in (hints[name], *typing.get_args(hints[name]))
        requirement = valid.describe(integer, many=isinstance(value, tuple))
        if isinstance(value, tuple):
            requirement = f"one or more {requirement}"
        raise ValueError(
            f"{algorithm}: {name}={value!r} is out of range: it must be {requirement}. "
            "Fix the -p/suite value."
        )


def published_override(dataset_id: str, dataset_overrides: DatasetOverrides) -> Mapping[str, Any]:
    """The settings of the first override whose shell-style glob matches ``dataset_id`` ({} if none)."""
    for pattern, override in dataset_overrides:
        if fnmatch.fnmatch(dataset_id, pattern):
            return override
    return {}


def resolve_config(
    config_type: type,
    dataset_id: str,
    dataset_overrides: DatasetOverrides = (),
    user_overrides: Mapping[str, Any] | None = None,
) -> Any:
    """Paper defaults, then the first matching per-dataset override, then the user's values; every
    numeric field is then checked against its declared range.

    Dataset patterns are shell-style globs matched against the dataset id, in table order.
    """
    values = dict(published_override(dataset_id, dataset_overrides))
    fields = config_fields(config_type)
    for key, value in (user_overrides or {}).items():
        if key not in fields:
            raise ValueError(
                f"{owner(config_type)} has no hyper-parameter {key!r}."
                f"{suggest(key, list(fields))} Known: {', '.join(sorted(fields))}."
            )
        values[key] = coerce(value, fields[key], key)
    check_ranges(config_type, values)  # before the config's own cross-field checks see a bad value
    return config_type(**values)


def coerce(value: Any, field: dataclasses.Field, name: str) -> Any:
    """Convert a CLI/TOML value to the field's type (tuples from lists, numbers from strings)."""
    default = field.default
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in {"true", "false", "1", "0"}:
                    raise ValueError(value)
                return value.lower() in {"true", "1"}
            return bool(value)
        if isinstance(value, bool):  # TOML's true is not the number 1
            raise ValueError(value)
        if isinstance(default, int):
            number = float(value)
            if number != int(number):
                raise ValueError(value)
            return int(number)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            items = value.split(",") if isinstance(value, str) else value
            return tuple(type(default[0])(item) for item in items) if default else tuple(items)
    except (TypeError, ValueError, OverflowError) as error:  # int(inf) overflows
        raise ValueError(
            f"hyper-parameter {name}={value!r} is not a valid {type(default).__name__}. "
            "Fix the -p/suite value."
        ) from error
    return value
