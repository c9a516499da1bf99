"""The search space of a sweep: a YAML file mapping `--set` keys to ranges or lists of choices.

    train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}    # a float range, sampled on a log scale
    train.warmup_steps: {low: 0, high: 200, step: 50}    # an int range (low and high are ints)
    train.schedule: {choices: [cosine, wsd]}             # one of a list

Every key is checked as `--set` checks it (`gptkit.config.apply_overrides`), and every bound
and choice is built into a config, so a value the run would refuse is refused before any trial
starts. Shipped spaces (gptkit/sweep/spaces/*.yaml) are named like shipped recipes. Parsing
needs no Optuna: only `suggest` and `grid` touch a trial or a sampler's search space.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gptkit.config import apply_overrides, build_config, inherit_init_model, load_recipe
from gptkit.errors import GptkitError

if TYPE_CHECKING:
    import optuna

Number = int | float
Choice = bool | int | float | str | None


def as_text(value: Choice) -> str:
    """A value as `--set` takes it (true/false/null, numbers in full precision)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


class Range(BaseModel):
    """A numeric range: ints when low, high (and step) are ints, else floats."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    low: Number
    high: Number
    log: bool = False
    step: Number | None = None

    @model_validator(mode="after")
    def _bounds(self) -> Range:
        if not all(math.isfinite(v) for v in (self.low, self.high)):
            raise ValueError("low and high must be finite numbers")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low}); raise low or drop log")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be > 0 (got {self.step})")
        if self.log and self.step is not None:
            raise ValueError("log and step do not go together (Optuna samples a log range "
                             "continuously); drop one")
        return self

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool)
                   for v in (self.low, self.high, self.step) if v is not None)

    def points(self) -> list[Number]:
        """The grid of this range: every int (or every step), low and high included."""
        if self.is_int:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        assert self.step is not None
        count = int(math.floor((self.high - self.low) / self.step + 1e-9))
        return [round(self.low + i * self.step, 12) for i in range(count + 1)]


class Choices(BaseModel):
    """One of a list of values."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    choices: list[Choice] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> Choices:
        if len(set(map(as_text, self.choices))) != len(self.choices):
            raise ValueError(f"choices must differ from each other (got {self.choices})")
        return self


Param = Range | Choices


class Space(BaseModel):
    """Dotted `--set` keys and what each may take."""

    model_config = ConfigDict(frozen=True)
    params: dict[str, Param]
    source: str = "space"

    def suggest(self, trial: optuna.Trial) -> dict[str, Choice]:
        """This trial's values, drawn by its study's sampler."""
        values: dict[str, Choice] = {}
        for key, p in self.params.items():
            if isinstance(p, Choices):
                values[key] = trial.suggest_categorical(key, p.choices)
            elif p.is_int:
                values[key] = trial.suggest_int(key, int(p.low), int(p.high),
                                                step=int(p.step or 1), log=p.log)
            else:
                values[key] = trial.suggest_float(key, float(p.low), float(p.high),
                                                  step=p.step, log=p.log)
        return values

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """What Optuna stores of each key, to compare a study's earlier trials with."""
        from optuna.distributions import (
            BaseDistribution,
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        found: dict[str, BaseDistribution] = {}
        for key, p in self.params.items():
            if isinstance(p, Choices):
                found[key] = CategoricalDistribution(p.choices)
            elif p.is_int:
                found[key] = IntDistribution(int(p.low), int(p.high), log=p.log,
                                             step=int(p.step or 1))
            else:
                found[key] = FloatDistribution(float(p.low), float(p.high), log=p.log,
                                               step=p.step)
        return found

    def grid(self) -> dict[str, list[Choice]]:
        """Every point to try, for Optuna's GridSampler; a continuous range has none."""
        grid: dict[str, list[Choice]] = {}
        for key, p in self.params.items():
            if isinstance(p, Choices):
                grid[key] = list(p.choices)
            elif p.is_int or p.step is not None:
                grid[key] = list(p.points())
            else:
                raise GptkitError(
                    f"{self.source}: {key} is a continuous range, which a grid cannot cover; "
                    "give it a step (or choices), or use --sampler tpe or random")
        return grid

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values())


def _read(space: str | Path) -> tuple[str, Any]:
    """(name for messages, parsed YAML) of a space file, or of a shipped space by name."""
    text = str(space)
    path = Path(space)
    if text.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise GptkitError(f"sweep space file {text!r} does not exist")
        content = path.read_text(encoding="utf-8")
    else:
        resource = resources.files("gptkit") / "sweep" / "spaces" / f"{text}.yaml"
        if not resource.is_file():
            raise GptkitError(f"unknown sweep space {text!r}; choose one of: "
                              f"{', '.join(space_names())}, or a .yaml path")
        content = resource.read_text(encoding="utf-8")
    try:
        return text, yaml.safe_load(content)
    except yaml.YAMLError as exc:
        raise GptkitError(f"sweep space {text!r} is not valid YAML: "
                          f"{' '.join(str(exc).split())}") from None


def space_names() -> list[str]:
    """Names of the spaces shipped with gptkit."""
    folder = resources.files("gptkit") / "sweep" / "spaces"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_space(space: str | Path, recipe: str, overrides: list[str]) -> Space:
    """The space of a file (or shipped name), every key and value checked against `recipe`
    with `overrides` as `gptkit train --recipe RECIPE --set ...` would check them."""
    name, raw = _read(space)
    if not raw:
        raise GptkitError(f"sweep space {name!r} is empty; name at least one --set key, e.g. "
                          "train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}")
    if not isinstance(raw, dict):
        raise GptkitError(f"sweep space {name!r} must map --set keys to ranges or choices, "
                          f"got {type(raw).__name__}")
    params: dict[str, Param] = {}
    for key, spec in raw.items():
        where = f"sweep space {name!r}: {key}"
        if not isinstance(key, str) or "=" in key:
            raise GptkitError(f"{where}: keys are --set keys such as train.lr")
        apply_overrides({}, [f"{key}=0"])  # an unknown key: the one-line error of --set
        if not isinstance(spec, dict):
            raise GptkitError(f"{where} must be a mapping: {{low: .., high: ..}} (optional log, "
                              f"step) or {{choices: [..]}}, got {spec!r}")
        try:
            params[key] = Choices(**spec) if "choices" in spec else Range(**spec)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(p) for p in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            raise GptkitError(f"{where}: {field + ': ' if field else ''}{message}") from None
    result = Space(params=params, source=f"sweep space {name!r}")
    check_values(result, recipe, overrides)
    return result


def check_values(space: Space, recipe: str, overrides: list[str]) -> None:
    """Build the config of each bound and each choice (the others at their first value): a
    value the config refuses is an error now, not a failed trial later."""
    raw = load_recipe(recipe)
    first = {k: p.choices[0] if isinstance(p, Choices) else p.low
             for k, p in space.params.items()}
    for key, p in space.params.items():
        for value in p.choices if isinstance(p, Choices) else [p.low, p.high]:
            values = {**first, key: value}
            try:
                build_config(inherit_init_model(raw, [*overrides, *trial_sets(values)]))
            except GptkitError as exc:
                raise GptkitError(f"{space.source}: {key}={as_text(value)} is refused: "
                                  f"{exc}") from None


def trial_sets(values: dict[str, Choice]) -> list[str]:
    """A trial's values as `--set` overrides (they come after, so win over, the sweep's own)."""
    return [f"{key}={as_text(value)}" for key, value in values.items()]
