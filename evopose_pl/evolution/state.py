"""What a search knows, and where it keeps it: the individuals, the parents, the genotype cache, the
generator state (``SearchState``), held in ``state.json`` of the sweep directory by a ``StateStore``
that loads it checked and saves it atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from evopose_pl.evolution.settings import Settings, check_resumable, is_int, is_number
from evopose_pl.files import FileFormatError, read_json, stale_temporaries, write_json_atomic
from evopose_pl.search import SEARCH_SPACES, GenotypeError

STATE_FILE = "state.json"
RESULT_FILE = "result.json"  # what a child measured, in its own directory
STATE_VERSION = 1

PENDING, COMPLETED, FAILED = "pending", "completed", "failed"


class StateError(ValueError):
    """A ``state.json`` that is not a state this search wrote; the message names the file and the field."""


class SearchStopped(RuntimeError):
    """The search stopped before its generation limit (too many failures, or no new genotype left).

    The state was saved first: fix the cause and re-run the same command to resume.
    """


@dataclass
class Individual:
    """One sampled network and what its training measured. ``directory`` is relative to the sweep."""

    id: int
    generation: int
    genotype: str
    parent: int | None
    directory: str
    status: str = PENDING
    params: int | None = None  # with BN statistics, as Keras counts them: the fitness uses this
    params_trainable: int | None = None
    flops: int | None = None
    val_loss: float | None = None
    fitness: float | None = None  # the driver's, from the measurements and the search's settings
    checkpoint: str | None = None  # relative to the sweep when inside it; None once deleted
    wall_time: float | None = None
    transfer: dict[str, float] | None = None  # the weight-transfer report; None: trained from scratch
    timing: dict[str, float] | None = None  # seconds in training and validation, and the child's clock times
    devices: int | None = None  # what it trained on: its device time is wall_time x devices (None: one)
    accuracy: float | None = None  # with test=true, its headline test figure (COCO AP, PCKh@0.5 Mean) ...
    accuracy_metric: str | None = None  # ... and that figure's name
    latency: float | None = None  # median ms per image at batch 1, measured after training (``latency.*``) ...
    throughput: float | None = None  # ... images per second at the throughput batch ...
    latency_device: str | None = None  # ... on this device, runtime and machine
    error: str | None = None

    @property
    def rank_key(self) -> tuple[float, int]:
        return (self.fitness if self.status == COMPLETED and self.fitness is not None else math.inf, self.id)


@dataclass
class SearchState:
    """Everything in ``state.json``."""

    settings: dict[str, Any]  # the search's identity (``Settings.identity``)
    generation: int = -1  # the newest planned generation
    individuals: list[Individual] = field(default_factory=list)  # individual k has id k
    parents: list[int] = field(default_factory=list)
    cache: list[str] = field(default_factory=list)  # every genotype sampled, in order
    rng: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # one summary per selected generation
    stopped: str | None = None
    version: int = STATE_VERSION

    def individual(self, id: int) -> Individual:
        return self.individuals[id]

    def generation_of(self, generation: int) -> list[Individual]:
        return [ind for ind in self.individuals if ind.generation == generation]

    def parent_individuals(self) -> list[Individual]:
        """The current parents, fittest first."""
        return [self.individuals[i] for i in self.parents]

    @property
    def unfinished(self) -> int | None:
        """The generation planned but not yet selected, if any."""
        return self.generation if self.generation >= 0 and len(self.history) <= self.generation else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, source: str | os.PathLike = STATE_FILE) -> SearchState:
        """The state in ``data``, checked: a state that does not hold together raises ``StateError``
        naming ``source`` and the field, before any of it is used."""
        if not isinstance(data, Mapping):
            raise StateError(f"{source}: not a search state (a JSON {type(data).__name__}, not an object)")
        if data.get("version") != STATE_VERSION:
            raise StateError(
                f"{source}: not a search state this version can read (version {data.get('version')!r},"
                f" expected {STATE_VERSION})"
            )
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(data) - known):
            raise StateError(f"{source}: not a search state this version can read (unknown fields {unknown})")
        if missing := sorted(f.name for f in fields(cls) if f.name not in data and f.name != "version"):
            raise StateError(f"{source}: not a complete search state (it lacks {missing})")
        if not isinstance(data["individuals"], list):
            raise StateError(f"{source}: individuals: must be a list")
        individuals = []
        for i, ind in enumerate(data["individuals"]):
            try:
                individuals.append(Individual(**ind))
            except TypeError as e:
                raise StateError(f"{source}: individuals[{i}] is not an individual ({e})") from None
        state = cls(**{**data, "individuals": individuals})
        state.check(source)
        return state

    def check(self, source: str | os.PathLike = STATE_FILE) -> None:
        """Raise ``StateError`` (naming ``source`` and the field) unless the state holds together."""

        def need(ok: bool, where: str, message: str) -> None:
            if not ok:
                raise StateError(f"{source}: {where}: {message}")

        space = self.settings.get("search_space") if isinstance(self.settings, dict) else None
        kind = space.get("kind", "e3") if isinstance(space, dict) else "e3"
        # A shipped space's genotypes are checked in its format; one of the user's (module:Class) is not
        # imported to read a file: its genotypes are checked as strings, and by the space when the search runs.
        genotype_type = SEARCH_SPACES[kind].genotype_type if kind in SEARCH_SPACES else None

        def is_genotype(value: Any) -> bool:
            if genotype_type is None:
                return isinstance(value, str) and bool(value)
            try:
                genotype_type.from_string(value)
            except (GenotypeError, TypeError, AttributeError, ValueError):
                return False
            return True

        need(isinstance(self.settings, dict), "settings", "must be an object")
        need(isinstance(self.settings.get("training", {}), dict), "settings.training", "must be an object")
        need(is_int(self.generation) and self.generation >= -1, "generation", f"{self.generation!r} is not >= -1")
        need(isinstance(self.cache, list), "cache", "must be a list of genotype strings")
        for k, genotype in enumerate(self.cache):
            need(is_genotype(genotype), f"cache[{k}]", f"{genotype!r} is not a genotype")
        need(self.rng is None or isinstance(self.rng, dict), "rng", "must be a generator state or null")
        need(self.stopped is None or isinstance(self.stopped, str), "stopped", "must be a reason or null")
        need(isinstance(self.history, list) and all(isinstance(h, dict) for h in self.history), "history",
             "must be a list of generation summaries")  # fmt: skip
        need(len(self.history) in (self.generation, self.generation + 1), "history",
             f"{len(self.history)} generations selected, but {self.generation} is the newest planned")  # fmt: skip
        by_id = {}
        for i, ind in enumerate(self.individuals):
            where = f"individuals[{i}]"
            need(ind.id == i, f"{where}.id", f"{ind.id!r}, but individuals are numbered in order from 0")
            need(ind.status in (PENDING, COMPLETED, FAILED), f"{where}.status", f"unknown status {ind.status!r}")
            need(is_int(ind.generation) and 0 <= ind.generation <= self.generation, f"{where}.generation",
                 f"{ind.generation!r} is not a planned generation (0..{self.generation})")  # fmt: skip
            need(is_genotype(ind.genotype), f"{where}.genotype", f"{ind.genotype!r} is not a genotype")
            need(ind.parent is None or (is_int(ind.parent) and ind.parent in by_id), f"{where}.parent",
                 f"{ind.parent!r} is not an earlier individual")  # fmt: skip
            need(isinstance(ind.directory, str), f"{where}.directory", f"{ind.directory!r} is not a path")
            need(ind.checkpoint is None or isinstance(ind.checkpoint, str), f"{where}.checkpoint",
                 f"{ind.checkpoint!r} is not a path")  # fmt: skip
            if ind.status == COMPLETED:
                for key in ("val_loss", "fitness"):
                    value = getattr(ind, key)
                    need(is_number(value), f"{where}.{key}", f"{value!r}: a completed individual needs a number")
                need(is_int(ind.params) and ind.params > 0, f"{where}.params",
                     f"{ind.params!r}: a completed individual needs its parameter count")  # fmt: skip
            for key in ("accuracy", "latency", "throughput"):
                value = getattr(ind, key)
                need(value is None or is_number(value), f"{where}.{key}", f"{value!r} is not a number")
            need(ind.devices is None or (is_int(ind.devices) and ind.devices >= 1), f"{where}.devices",
                 f"{ind.devices!r} is not a number of devices")  # fmt: skip
            by_id[ind.id] = ind
        planned = {ind.generation for ind in self.individuals}
        need(planned == set(range(self.generation + 1)), "individuals",
             f"hold generations {sorted(planned)}, but generations 0..{self.generation} were planned")  # fmt: skip
        need(isinstance(self.parents, list), "parents", "must be a list of individual ids")
        for k, parent in enumerate(self.parents):
            need(is_int(parent) and parent in by_id and by_id[parent].status == COMPLETED, f"parents[{k}]",
                 f"{parent!r} is not a completed individual")  # fmt: skip
        need(bool(self.parents) or not self.history, "parents", "a search with a selected generation has parents")


def load_state(path: str | os.PathLike) -> SearchState:
    """Read a sweep's ``state.json`` (a sweep directory or the file itself), checked."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no search state here (is this a sweep directory of evolve.py?)") from None
    except FileFormatError as e:
        raise StateError(str(e)) from None
    return SearchState.from_json(data, path)


class StateStore:
    """The ``state.json`` of a sweep directory: opened for ``settings`` (a new state, or the saved one,
    checked and refused when the settings would change what its fitness values mean), saved atomically.

    Temporary files left by a driver killed while it wrote the state are removed on opening.
    """

    def __init__(self, directory: str | os.PathLike, settings: Settings) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE
        for stale in stale_temporaries(self.path):
            stale.unlink(missing_ok=True)
        if self.path.exists():
            self.state = load_state(self.path)
            check_resumable(self.state.settings, settings, self.path)
        else:
            self.state = SearchState(settings=settings.identity())

    @property
    def resumed(self) -> bool:
        """Whether the directory held a search with individuals."""
        return bool(self.state.individuals)

    def save(self) -> None:
        write_json_atomic(self.path, self.state.to_json())

    def relative(self, path: str | os.PathLike | None) -> str | None:
        """``path`` as the state records it: relative to the sweep directory when inside it."""
        if path is None:
            return None
        p = Path(path).resolve()
        root = self.directory.resolve()
        return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)

    def absolute(self, path: str | None) -> Path | None:
        """A path the state records, resolved against the sweep directory."""
        if path is None:
            return None
        p = Path(path)
        return p if p.is_absolute() else (self.directory / p).resolve()
