"""Configuration fields every algorithm shares: data preprocessing, sampling and training length.

Each algorithm's ``Config`` subclasses :class:`BaseConfig` and adds its own hyper-parameters with the
paper's defaults. Configs are frozen dataclasses, so they are hashable and static under jit.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any, Literal

RewardNormalization = Literal["none", "return_range"]


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    batch_size: int = 256
    discount: float = 0.99
    # Standardise observations with the dataset's mean and std (+1e-3); the statistics travel with
    # the trained policy and are applied at evaluation.
    normalize_observations: bool = True
    # Rewards become ``reward_scale * r / range + reward_shift`` where ``range`` is
    # (max - min) episode return under "return_range" (IQL's locomotion rule) and 1 under "none".
    reward_normalization: RewardNormalization = "none"
    reward_scale: float = 1.0
    reward_shift: float = 0.0
    # Which transitions a batch is drawn from (see ``sampling.py``): uniform, rw, aw or topk.
    sampler: str = "uniform"
    sampler_temperature: float = 0.1
    sampler_top_fraction: float = 0.1
    # Length of the whole run; learning-rate schedules (IQL's cosine actor decay) need it.
    total_steps: int = 1_000_000


DatasetOverrides = Sequence[tuple[str, Mapping[str, Any]]]


def config_fields(config_type: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(config_type)}


def resolve_config(
    config_type: type,
    dataset_id: str,
    dataset_overrides: DatasetOverrides = (),
    user_overrides: Mapping[str, Any] | None = None,
) -> Any:
    """Paper defaults, then the first matching per-dataset override, then the user's values.

    Dataset patterns are shell-style globs matched against the dataset id, in table order.
    """
    values: dict[str, Any] = {}
    for pattern, override in dataset_overrides:
        if fnmatch.fnmatch(dataset_id, pattern):
            values.update(override)
            break
    fields = config_fields(config_type)
    for key, value in (user_overrides or {}).items():
        if key not in fields:
            from offbench.datasets.dataset import suggest

            raise ValueError(
                f"{config_type.__module__.rsplit('.', 1)[-1]} has no hyper-parameter {key!r}."
                f"{suggest(key, list(fields))} Known: {', '.join(sorted(fields))}."
            )
        values[key] = coerce(value, fields[key], key)
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
        if isinstance(default, int) and not isinstance(default, bool):
            number = float(value)
            if number != int(number):
                raise ValueError(value)
            return int(number)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            items = value.split(",") if isinstance(value, str) else value
            return tuple(type(default[0])(item) for item in items) if default else tuple(items)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"hyper-parameter {name}={value!r} is not a valid {type(default).__name__}."
        ) from error
    return value
