"""Families of problems (docs/datasets.md, "Families"): each record its own system constants, horizon, bound,
weights and target, drawn from ranges stated here, written in its prompt, labelled with the exact optimum of
exactly that problem.

A family is a name (`double_integrator_family`), the builder of its system in lib/control/systems.py and the
ranges its parameters are drawn from. A record of a family carries the drawn values (`params`, plain names
and numbers), and `family_system(name, params)` rebuilds its System from them: every reader (labels,
validation, rewards, metrics, MPC, plots, baselines) takes the record's problem from there, never from a
default (`record_system`). The values are drawn on the grid the prompt prints them on (a uniform range to
`digits` decimals, a log-uniform one to `digits` significant digits, an integer range exactly), so the
prompt states the problem exactly and the text alone rebuilds it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from lib.common.errors import UsageError
from lib.control.systems import SYSTEMS, System, double_integrator, pendulum, two_mass_spring, van_der_pol


@dataclass(frozen=True)
class Range:
    """Where one parameter is drawn: uniform in [low, high] to `digits` decimals, log-uniform to `digits`
    significant digits, or a whole number from low to high (both included)."""

    low: float
    high: float
    scale: str = "uniform"  # uniform | log | integer
    digits: int = 2

    def draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        if self.scale == "integer":
            return rng.integers(int(self.low), int(self.high) + 1, count).astype(float)
        if self.scale == "log":
            values = np.exp(rng.uniform(math.log(self.low), math.log(self.high), count))
            return np.array([float(f"{v:.{self.digits}g}") for v in values])
        return np.round(rng.uniform(self.low, self.high, count), self.digits)

    def holds(self, value: float) -> bool:
        return self.low - 1e-12 <= value <= self.high + 1e-12


@dataclass(frozen=True)
class Family:
    name: str
    base: str  # the fixed system it generalises
    build: Callable[..., System]  # lib/control/systems.py builder, called with the drawn values
    ranges: Mapping[str, Range]  # the parameters, in the order records store them


# The ranges, the one place they are stated. Weights: Q = q x (the fixed system's Q shape), R = r,
# Qf = qf x (its Qf shape); the target moves along the position axes only (a state the system can rest in).
FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "double_integrator_family",
            "double_integrator",
            double_integrator,
            {
                "dt": Range(0.2, 0.6),
                "steps": Range(8, 12, "integer"),
                "u_max": Range(0.5, 3.0),
                "q": Range(0.5, 2.0),
                "r": Range(0.01, 1.0, "log"),
                "qf": Range(1.0, 20.0, digits=1),
                "p_target": Range(-0.5, 0.5),
            },
        ),
        Family(
            "van_der_pol_family",
            "van_der_pol",
            van_der_pol,
            {
                "mu": Range(0.5, 2.0),
                "dt": Range(0.05, 0.15),
                "steps": Range(20, 40, "integer"),
                "u_max": Range(0.5, 1.5),
                "q": Range(0.5, 2.0),
                "r": Range(0.01, 1.0, "log"),
                "qf": Range(1.0, 20.0, digits=1),
                "x1_target": Range(-0.5, 0.5),
            },
        ),
        Family(
            "two_mass_spring_family",
            "two_mass_spring",
            two_mass_spring,
            {
                "k": Range(0.5, 2.0),
                "m1": Range(0.5, 2.0),
                "m2": Range(0.5, 2.0),
                "dt": Range(0.15, 0.25),
                "steps": Range(30, 50, "integer"),
                "u_max": Range(0.5, 1.5),
                "q": Range(0.5, 2.0),
                "r": Range(0.01, 1.0, "log"),
                "qf": Range(1.0, 20.0, digits=1),
                "p_target": Range(-0.3, 0.3),
            },
        ),
        Family(
            "pendulum_family",
            "pendulum",
            pendulum,
            {
                "m": Range(0.5, 1.5),
                "length": Range(0.5, 1.5),
                "b": Range(0.0, 0.3),
                "dt": Range(0.08, 0.12),
                "steps": Range(35, 45, "integer"),
                # at most ~0.45 m g l for the smallest m l (2.45 N m): every member has to pump
                "u_max": Range(1.0, 2.0),
                "q": Range(0.5, 2.0),
                "r": Range(0.005, 0.05, "log"),
                "qf": Range(0.5, 2.0),
            },
        ),
    )
}


def draw_parameters(family: Family, count: int, rng: np.random.Generator) -> list[dict[str, float | int]]:
    """`count` parameter sets of the family, each value on its printed grid (module docstring)."""
    columns = {name: rng_range.draw(rng, count) for name, rng_range in family.ranges.items()}
    return [
        {
            name: int(columns[name][i]) if family.ranges[name].scale == "integer" else float(columns[name][i])
            for name in family.ranges
        }
        for i in range(count)
    ]


def lowest(name: str) -> tuple[float, bool]:
    """(bound, included) of what a parameter may physically be: a target anywhere, friction b >= 0, every
    other parameter (a step, a horizon, a bound, a weight, a mass, a stiffness, mu, a length) > 0."""
    if name.endswith("_target"):
        return -math.inf, True
    return 0.0, name == "b"


def check_parameters(family: Family, params: object, in_ranges: bool = True) -> str | None:
    """What is wrong with a record's params for this family (None when nothing): every parameter once, a finite
    number of its kind (a whole number for an integer range) that the physics allows (`lowest`), and with
    `in_ranges` inside the family's ranges (a dataset's own, from its info.json, when it overrode them)."""
    if not isinstance(params, dict):
        return f"'params' should be a table of {', '.join(family.ranges)}"
    if list(params) != list(family.ranges):
        return f"'params' should hold {', '.join(family.ranges)} (in that order), got {', '.join(map(str, params))}"
    for name, value in params.items():
        rng_range = family.ranges[name]
        integer = rng_range.scale == "integer"
        kind_ok = isinstance(value, int) if integer else isinstance(value, float)
        bound, included = lowest(name)
        if isinstance(value, bool) or not kind_ok or not math.isfinite(value):
            return (
                f"'params.{name}' should be a finite {'whole number' if integer else 'float'}, got {value!r}"
            )
        if value < bound or (value == bound and not included):
            return f"'params.{name}' should be {'>=' if included else '>'} {bound:g}, got {value!r}"
        if in_ranges and not rng_range.holds(value):
            return f"'params.{name}' should lie in [{rng_range.low:g}, {rng_range.high:g}], got {value!r}"
    return None


def with_ranges(family: Family, overrides: Mapping | None, source: str = "generate.family_ranges") -> Family:
    """The family with some ranges replaced ({parameter: [low, high]}, scale and digits kept): what a config's
    generate.family_ranges, or a dataset's info.json, says it was drawn from."""
    if not overrides:
        return family
    if not isinstance(overrides, Mapping):
        raise UsageError(
            f"{source}.{family.name} should be a table {{parameter: [low, high]}}, got {overrides!r}."
        )
    ranges = dict(family.ranges)
    for name, value in overrides.items():
        if name not in ranges:
            raise UsageError(
                f"{source}.{family.name} names '{name}', which {family.name} does not draw.",
                fix=f"name some of: {', '.join(ranges)}.",
            )
        bound, included = lowest(name)
        old = ranges[name]
        integer = old.scale == "integer"
        ok = (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
            )
            and value[0] <= value[1]
            and (value[0] > bound or (included and value[0] == bound))
            and (not integer or all(float(v).is_integer() for v in value))
            and (old.scale != "log" or value[0] > 0)
        )
        if not ok:
            raise UsageError(
                f"{source}.{family.name}.{name} should be [low, high] with low <= high, "
                f"{'whole numbers, ' if integer else ''}low {'>=' if included else '>'} {bound:g}; got {value!r}.",
                fix=f"e.g. {name}: [{old.low:g}, {old.high:g}] (the default range).",
            )
        ranges[name] = Range(float(value[0]), float(value[1]), old.scale, old.digits)
    return replace(family, ranges=ranges)


@functools.lru_cache(
    maxsize=4096
)  # records of one batch share their systems; a dataset's worth would not fit
def _system(name: str, values: tuple) -> System:
    family = FAMILIES[name]
    return family.build(name=name, family=name, **dict(zip(family.ranges, values, strict=True)))


def family_system(name: str, params: Mapping[str, float | int]) -> System:
    """The System of one family member, from its drawn values."""
    family = FAMILIES[check_system_name(name)]  # a family's name (a fixed system's has no params)
    return _system(name, tuple(params[key] for key in family.ranges))


def check_system_name(name: str) -> str:
    """`name` when it names a fixed system or a family; UsageError listing them otherwise."""
    if name in SYSTEMS or name in FAMILIES:
        return name
    valid = ", ".join([*SYSTEMS, *FAMILIES])
    raise UsageError(f"unknown system '{name}'. Valid systems: {valid}.", fix=f"pick one or more of: {valid}")


def record_system(record: Mapping) -> System:
    """The problem a record states: its family member (record["params"]) or its fixed system."""
    name = check_system_name(record["system"])
    if name not in FAMILIES:
        return SYSTEMS[name]
    params = record.get("params")
    problem = check_parameters(FAMILIES[name], params, in_ranges=False)  # a dataset may have drawn wider
    if problem:
        raise UsageError(f"a {name} problem without its values: {problem}.",
                         fix="pass the record's 'params' (every reader of a family record needs them).")  # fmt: skip
    return family_system(name, params)


def problem_key(name: str, params: object = None) -> tuple:
    """What makes two rows the same problem: the system, and for a family member its drawn values."""
    return (name, tuple(params.values())) if name in FAMILIES and isinstance(params, dict) else (name, ())


def system_groups(records: Sequence[Mapping], k: int = 1) -> list[tuple[System, np.ndarray]]:
    """(system, row indices) over rows that repeat each record k times (row i answers record i // k): a fixed
    system's rows form one group, simulated in one vectorised call; a family's rows are grouped by member.
    Groups come in the order their first record does."""
    groups: dict[tuple, list[int]] = {}
    systems: dict[tuple, System] = {}
    for i, record in enumerate(records):
        key = problem_key(record["system"], record.get("params"))
        if key not in systems:
            systems[key] = record_system(record)
        groups.setdefault(key, []).extend(range(i * k, (i + 1) * k))
    return [(systems[key], np.array(rows, dtype=int)) for key, rows in groups.items()]
