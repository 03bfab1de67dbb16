"""The knobs of a search (``Settings``) and its identity: the settings a resume must not change.

Every field of ``Settings`` is part of the identity unless its metadata says it may change on
resume (``MAY_CHANGE_ON_RESUME``): a new setting counts by default.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from evopose_pl.search import (
    GENOTYPES,
    Genotype,
    GenotypeError,
    SearchSpace,
    build_search_space,
    search_space_class,
    search_space_kind,
)

log = logging.getLogger(__name__)

# Field metadata of a setting that changes when a search stops or what it keeps, not what a fitness means.
MAY_CHANGE_ON_RESUME = {"identity": False}

#: How each generation's children are drawn: the paper's (mu + lambda); aging (regularized) evolution, whose
#: tournaments pick the parent and whose oldest individual dies; genotypes drawn uniformly (the baseline).
STRATEGIES = ("mu_plus_lambda", "regularized", "random")
#: What selection ranks by: the one-number fitness, or NSGA-II's fronts and crowding over ``objectives``.
SELECTIONS = ("fitness", "nsga2")
#: The cost in the fitness ``J = val_loss * (target / cost)^gamma``: parameters (the paper's) or latency.
FITNESS_COSTS = ("params", "latency")
#: What a multi-objective search minimises, as the individuals record them.
OBJECTIVES = ("val_loss", "params", "flops", "latency")


class SettingsError(ValueError):
    """An invalid search setting; the message names the override to fix."""


@dataclass(frozen=True)
class Settings:
    """The knobs of a search, named as the top-level overrides of ``evolve.py``."""

    population: int = 64
    parents: int = 4
    gamma: float = -0.07
    target_params: float = 5e6
    generations: int | None = field(default=None, metadata=MAY_CHANGE_ON_RESUME)
    epochs: int = 5
    ancestor_epochs: int = 30
    ancestor: Any = GENOTYPES["ancestor"]  # a genotype of the search space
    weight_transfer: bool = True
    seed: int = 0
    max_failure_rate: float = field(default=0.25, metadata=MAY_CHANGE_ON_RESUME)
    keep_checkpoints: bool = field(default=False, metadata=MAY_CHANGE_ON_RESUME)
    search_space: Any = field(default_factory=SearchSpace)  # any space (evopose_pl.search): E3 by default
    strategy: str = "mu_plus_lambda"
    batch: int = 4  # regularized and random: children per generation (the launcher's parallelism suits)
    sample_size: int = 4  # regularized: S, the individuals each tournament samples from the population
    fitness: str = "params"  # the fitness's cost: params (J = L (target_params / params)^gamma) or latency
    target_latency: float = 10.0  # T in ms of fitness=latency: J = L (target_latency / latency)^gamma
    selection: str = "fitness"
    objectives: tuple[str, ...] = ("val_loss", "params")  # nsga2's, and the hypervolume's
    reference: Mapping[str, float] | None = None  # the hypervolume's reference point; None: twice the ancestor's
    # What a child's fitness means besides the knobs above: the data, network, recipe and precision
    # settings its job trains with, as ``{"data.input_size": [64, 48], ...}``.
    training: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def need(ok: bool, override: str, message: str) -> None:
            if not ok:
                raise SettingsError(f"{override}={getattr(self, override)!r}: {message}")

        for name in ("population", "parents", "epochs", "ancestor_epochs", "seed"):
            need(is_int(getattr(self, name)), name, "must be an integer")
        need(self.population >= 1, "population", "must be at least 1")
        need(self.parents >= 1, "parents", "must be at least 1")
        need(self.strategy in STRATEGIES, "strategy", f"must be one of {', '.join(STRATEGIES)}")
        need(
            self.strategy != "mu_plus_lambda" or self.population % self.parents == 0,
            "population",
            f"must be divisible by parents={self.parents}: each parent has population/parents children",
        )
        need(is_int(self.batch) and self.batch >= 1, "batch", "must be a whole number of children >= 1")
        need(
            is_int(self.sample_size)
            and self.sample_size >= 1
            and (self.strategy != "regularized" or self.sample_size <= self.population),
            "sample_size",
            f"must be a whole number from 1 to population={self.population}",
        )
        need(self.fitness in FITNESS_COSTS, "fitness", f"must be one of {', '.join(FITNESS_COSTS)}")
        need(is_number(self.target_latency) and self.target_latency > 0, "target_latency", "must be positive (ms)")
        need(self.selection in SELECTIONS, "selection", f"must be one of {', '.join(SELECTIONS)}")
        objectives = self.objectives
        need(
            isinstance(objectives, (list, tuple))
            and 2 <= len(objectives) <= 3
            and len(set(objectives)) == len(objectives)
            and all(o in OBJECTIVES for o in objectives),
            "objectives",
            f"must be two or three different ones of {', '.join(OBJECTIVES)}",
        )
        object.__setattr__(self, "objectives", tuple(objectives))
        reference = self.reference
        need(
            reference is None
            or (
                isinstance(reference, Mapping)
                and set(reference) == set(objectives)
                and all(is_number(v) and v > 0 for v in reference.values())
            ),
            "reference",
            f"must be null (twice the ancestor's) or a positive value for each objective: {list(objectives)}",
        )
        need(self.epochs >= 1, "epochs", "must be at least 1")
        need(self.ancestor_epochs >= 1, "ancestor_epochs", "must be at least 1")
        need(
            self.generations is None or (is_int(self.generations) and self.generations >= 0),
            "generations",
            "must be null (run until stopped) or a whole number of generations >= 0",
        )
        need(is_number(self.gamma), "gamma", "must be a number")
        need(is_number(self.target_params) and self.target_params > 0, "target_params", "must be a positive number")
        need(
            is_number(self.max_failure_rate) and 0 <= self.max_failure_rate <= 1,
            "max_failure_rate",
            "must lie in [0, 1]",
        )
        need(isinstance(self.weight_transfer, bool), "weight_transfer", "must be true or false")
        need(isinstance(self.keep_checkpoints, bool), "keep_checkpoints", "must be true or false")
        need(
            isinstance(self.training, Mapping) and all(isinstance(k, str) for k in self.training),
            "training",
            "must map setting names to values",
        )

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Settings:
        """Build from the top-level config keys; errors name the override at fault.

        Without ``ancestor`` (or with null) the search starts from the space's default ancestor (E3's: its bounds
        genotype, the paper's ancestor).
        """
        values = {f.name: cfg[f.name] for f in fields(cls) if f.name in cfg and f.name != "search_space"}
        space = cfg.get("search_space")
        if space is None:
            raise SettingsError("search_space: no search space configured (pick one: search_space=e3)")
        try:
            values["search_space"] = build_search_space(space)
        except TypeError as e:
            kind = dict(space).get("kind", "e3")
            try:
                known = [f.name for f in fields(search_space_class(kind)) if f.init]
            except (GenotypeError, TypeError):
                known = "its class's arguments"
            raise SettingsError(f"search_space: {e}; its fields are {known}") from None
        except GenotypeError as e:
            raise SettingsError(f"search_space: {e}") from None
        if values.get("ancestor") is not None:
            values["ancestor"] = parse_ancestor(values["ancestor"], values["search_space"])
        else:
            values["ancestor"] = values["search_space"].default_ancestor
        return cls(**values)

    @classmethod
    def identity_fields(cls) -> tuple[str, ...]:
        """The settings that define a search: every field but those that may change on resume."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("identity", True))

    @property
    def measures_latency(self) -> bool:
        """Whether the children must measure their latency: the fitness or the objectives use it."""
        return self.fitness == "latency" or "latency" in self.objectives

    def identity(self) -> dict[str, Any]:
        """The settings that must match to resume a search, as JSON values (as ``state.json`` reads them back):
        the ancestor as its string, the search space as its ``kind`` and fields."""
        values = {name: getattr(self, name) for name in self.identity_fields()}
        values["ancestor"] = str(self.ancestor)
        values["search_space"] = {"kind": search_space_kind(self.search_space), **_json_value(self.search_space)}
        return json.loads(json.dumps({name: _json_value(value) for name, value in values.items()}))


def parse_ancestor(value: Any, space: Any) -> Any:
    """A named genotype (``ancestor``, ``evopose2d_s``, ...) or a genotype, checked against the space."""
    try:
        return space.parse(value, what="the ancestor")
    except (GenotypeError, TypeError, ValueError) as e:
        raise SettingsError(
            f"ancestor={value!r}: {e}. Give a genotype of the search space such as {space.default_ancestor}, or"
            f" null for that one (E3's spaces also take the names {', '.join(sorted(GENOTYPES))})"
        ) from None


def check_resumable(saved: dict[str, Any], settings: Settings, path: str | os.PathLike) -> None:
    """Refuse to resume the search saved with identity ``saved`` (read from ``path``) with ``settings``
    that change what a fitness means, naming the first setting that differs with both values.

    ``saved`` is brought up to date in place: the state records it when it is next saved.
    """
    wanted = settings.identity()
    _upgrade(saved, wanted, path)
    for key, value in wanted.items():
        if key == "training":
            continue
        if saved.get(key, _UNSET) != value:
            _refuse(path, key, repr(value), "(not recorded)" if key not in saved else repr(saved[key]))
    if "training" in wanted:
        old, new = saved["training"], wanted["training"]
        for key in sorted(set(old) | set(new)):
            if old.get(key, _UNSET) != new.get(key, _UNSET):
                _refuse(path, key, _override_value(new.get(key, _UNSET)), _override_value(old.get(key, _UNSET)))


def _upgrade(saved: dict[str, Any], wanted: dict[str, Any], path: str | os.PathLike) -> None:
    """What states written by earlier versions record differently."""
    space = saved.get("search_space")
    if isinstance(space, dict) and "ancestor" in space and "bounds" not in space:  # renamed to bounds
        space["bounds"] = space.pop("ancestor")
    if isinstance(space, dict) and "kind" not in space:  # before spaces were parts: E3's
        space["kind"] = "e3"
    for key in ADDED_LATER:  # a search from before these settings ran with their defaults
        if key in wanted and key not in saved:
            saved[key] = _json_value(next(f.default for f in fields(Settings) if f.name == key))
    if "training" in wanted and "training" not in saved:  # before the training settings were part of the identity
        log.warning(f"{path} does not record its training settings: taking this run's as the search's")
        saved["training"] = wanted["training"]


def _refuse(path: str | os.PathLike, key: str, wanted: str, saved: str) -> None:
    unset = _override_value(_UNSET)
    fix = f"without {key}" if saved == unset else f"with {'+' if wanted == unset else ''}{key}={saved}"
    raise SettingsError(
        f"{key}={wanted}, but {path} holds a search with {key}={saved}. To resume it, re-run {fix};"
        " for a new search, choose another search_name (or hydra.sweep.dir)"
    )


_UNSET = object()
# Settings that states written before them do not record; those searches ran with the defaults.
ADDED_LATER = ("strategy", "batch", "sample_size", "fitness", "target_latency", "selection", "objectives", "reference")


def _override_value(value: Any) -> str:
    """A training setting as it would be written on the command line (``[64,48]``, ``null``, ``0.001``)."""
    if value is _UNSET:
        return "(not set)"
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _json_value(value: Any) -> Any:
    """A setting as JSON: a genotype as its string, a dataclass (the search space) as its constructor's fields."""
    if isinstance(value, Genotype):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _json_value(getattr(value, f.name)) for f in fields(value) if f.init}
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
