"""The (mu + lambda) neuroevolution (SPEC sections 5 and 6): settings, the population and its
persistent state, the mutation plan of each generation, selection.

Pure Python, no torch and no Hydra: the sweeper in ``hydra_plugins/`` drives an ``Evolution``
and launches its children through any Hydra launcher; a child reports back its measured
record (``RESULT_FILE`` in its own directory, and the job's return value).

The sweep directory holds everything needed to resume: ``state.json`` (every individual, the
parents, the genotype cache, the generator state), rewritten atomically after every change.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import socket
import statistics
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from evopose_pl.files import FileFormatError, read_json, stale_temporaries, write_json_atomic
from evopose_pl.search import GENOTYPES, Genotype, GenotypeError, SearchExhaustedError, SearchSpace, mutate

STATE_FILE = "state.json"
RESULT_FILE = "result.json"
LOCK_FILE = "driver.lock"
STATE_VERSION = 1

PENDING, COMPLETED, FAILED = "pending", "completed", "failed"

log = logging.getLogger(__name__)


def fitness(val_loss: float, params: int, target_params: float, gamma: float) -> float:
    """``J = L_val * (T / n_params)^gamma``, lower is better; gamma < 0 penalises large networks."""
    return float(val_loss) * (float(target_params) / float(params)) ** float(gamma)


class SettingsError(ValueError):
    """An invalid search setting; the message names the override to fix."""


class StateError(ValueError):
    """A ``state.json`` that is not a state this search wrote; the message names the file and the field."""


class SearchLocked(RuntimeError):
    """Another driver holds the search's directory; the message names the directory and that process."""


class SearchStopped(RuntimeError):
    """The search stopped before its generation limit (too many failures, or no new genotype left).

    The state was saved first: fix the cause and re-run the same command to resume.
    """


# Settings that define a search: resuming with any of them changed would mix two searches.
IDENTITY = (
    "population",
    "parents",
    "gamma",
    "target_params",
    "epochs",
    "ancestor_epochs",
    "ancestor",
    "weight_transfer",
    "seed",
    "search_space",
)


@dataclass(frozen=True)
class Settings:
    """The knobs of a search, named as the top-level overrides of ``evolve.py``."""

    population: int = 64
    parents: int = 4
    gamma: float = -0.07
    target_params: float = 5e6
    generations: int | None = None
    epochs: int = 5
    ancestor_epochs: int = 30
    ancestor: Genotype = GENOTYPES["ancestor"]
    weight_transfer: bool = True
    seed: int = 0
    max_failure_rate: float = 0.25
    keep_checkpoints: bool = False
    search_space: SearchSpace = field(default_factory=SearchSpace)
    # What a child's fitness means besides the knobs above: the data, network, recipe and precision
    # settings its job trains with, as ``{"data.input_size": [64, 48], ...}``. Part of the search's identity.
    training: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def need(ok: bool, override: str, message: str) -> None:
            if not ok:
                raise SettingsError(f"{override}={getattr(self, override)!r}: {message}")

        for name in ("population", "parents", "epochs", "ancestor_epochs", "seed"):
            need(_is_int(getattr(self, name)), name, "must be an integer")
        need(self.population >= 1, "population", "must be at least 1")
        need(self.parents >= 1, "parents", "must be at least 1")
        need(
            self.population % self.parents == 0,
            "population",
            f"must be divisible by parents={self.parents}: each parent has population/parents children",
        )
        need(self.epochs >= 1, "epochs", "must be at least 1")
        need(self.ancestor_epochs >= 1, "ancestor_epochs", "must be at least 1")
        need(
            self.generations is None or (_is_int(self.generations) and self.generations >= 0),
            "generations",
            "must be null (run until stopped) or a whole number of generations >= 0",
        )
        need(_is_number(self.gamma), "gamma", "must be a number")
        need(_is_number(self.target_params) and self.target_params > 0, "target_params", "must be a positive number")
        need(
            _is_number(self.max_failure_rate) and 0 <= self.max_failure_rate <= 1,
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
        """Build from the top-level config keys; errors name the override at fault."""
        values = {f.name: cfg[f.name] for f in fields(cls) if f.name in cfg and f.name != "search_space"}
        space = cfg.get("search_space")
        if space is None:
            raise SettingsError("search_space: no search space configured (pick one: search_space=e3)")
        try:
            values["search_space"] = SearchSpace(**dict(space))
        except TypeError as e:
            known = [f.name for f in fields(SearchSpace) if f.init]
            raise SettingsError(f"search_space: {e}; its fields are {known}") from None
        except GenotypeError as e:
            raise SettingsError(f"search_space: {e}") from None
        if "ancestor" in values:
            values["ancestor"] = parse_ancestor(values["ancestor"], values["search_space"])
        else:
            values["ancestor"] = values["search_space"].ancestor
        return cls(**values)

    def identity(self) -> dict[str, Any]:
        """The settings that must match to resume a search, as JSON values."""
        space = self.search_space
        return {
            **{name: getattr(self, name) for name in IDENTITY if name not in ("ancestor", "search_space")},
            "ancestor": str(self.ancestor),
            "search_space": {
                "ancestor": str(space.ancestor),
                "kernels": list(space.kernels),
                "max_repeats": space.max_repeats,
                "stride_modules": list(space.stride_modules),
                "max_stride2": space.max_stride2,
            },
            "training": json.loads(json.dumps(dict(self.training))),  # as state.json will read it back
        }


def parse_ancestor(value: Any, space: SearchSpace) -> Genotype:
    """A named genotype (``ancestor``, ``evopose2d_s``, ...) or a genotype, checked against the space."""
    try:
        genotype = GENOTYPES[value] if isinstance(value, str) and value in GENOTYPES else Genotype.coerce(value)
        return space.validate(genotype, what="the ancestor")
    except GenotypeError as e:
        raise SettingsError(
            f"ancestor={value!r}: {e}. Give a named genotype ({', '.join(sorted(GENOTYPES))}) or a genotype"
            " string such as k3r1c2s1-k3r2c3s2-k5r2c5s2-k3r3c10s2-k5r3c14s1-k5r4c24s2-k3r1c40s1"
        ) from None


_UNSET = object()


def _override_value(value: Any) -> str:
    """A training setting as it would be written on the command line (``[64,48]``, ``null``, ``0.001``)."""
    if value is _UNSET:
        return "(not set)"
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
    fitness: float | None = None
    checkpoint: str | None = None  # relative to the sweep when inside it; None once deleted
    wall_time: float | None = None
    transfer: dict[str, float] | None = None  # the weight-transfer report; None: trained from scratch
    timing: dict[str, float] | None = None  # seconds in training and validation, and the child's clock times
    error: str | None = None

    @property
    def rank_key(self) -> tuple[float, int]:
        return (self.fitness if self.status == COMPLETED and self.fitness is not None else math.inf, self.id)


# What a child reports: the measured fields of its Individual (and, optionally, its timing).
RESULT_FIELDS = ("params", "params_trainable", "flops", "val_loss", "fitness", "checkpoint", "wall_time", "transfer")
OPTIONAL_RESULT_FIELDS = ("timing",)


def result_problem(result: Any, ind: Individual) -> str | None:
    """What makes ``result`` unfit to record for ``ind``, or None: it must be this individual's record,
    with every field present, counts as whole numbers and measurements as finite numbers."""
    if not isinstance(result, Mapping):
        return f"not an object but a JSON {type(result).__name__}"
    if result.get("id") != ind.id or result.get("genotype") != ind.genotype:
        return (
            f"it is the record of individual {result.get('id')!r} {result.get('genotype')!r},"
            f" not of individual {ind.id} {ind.genotype}"
        )
    if missing := [k for k in RESULT_FIELDS if k not in result]:
        return f"it lacks {missing}"
    for key in ("params", "params_trainable", "flops"):
        if not _is_int(result[key]) or result[key] < (1 if key == "params" else 0):
            return f"{key}={result[key]!r} is not a count"
    for key in ("val_loss", "fitness", "wall_time"):
        if not _is_number(result[key]):
            return f"{key}={result[key]!r} is not a finite number"
    if result["checkpoint"] is not None and not isinstance(result["checkpoint"], str):
        return f"checkpoint={result['checkpoint']!r} is not a path"
    for key in ("transfer", "timing"):
        value = result.get(key)
        if value is not None and not (
            isinstance(value, Mapping) and all(isinstance(k, str) and _is_number(v) for k, v in value.items())
        ):
            return f"{key}={value!r} is not a table of finite numbers"
    return None


@dataclass
class SearchState:
    """Everything in ``state.json``."""

    settings: dict[str, Any]
    generation: int = -1  # the newest planned generation
    individuals: list[Individual] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    cache: list[str] = field(default_factory=list)  # every genotype sampled, in order
    rng: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # one summary per selected generation
    stopped: str | None = None
    version: int = STATE_VERSION

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

        def is_genotype(value: Any) -> bool:
            try:
                Genotype.from_string(value)
            except (GenotypeError, TypeError, AttributeError, ValueError):
                return False
            return True

        need(isinstance(self.settings, dict), "settings", "must be an object")
        need(isinstance(self.settings.get("training", {}), dict), "settings.training", "must be an object")
        need(_is_int(self.generation) and self.generation >= -1, "generation", f"{self.generation!r} is not >= -1")
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
            need(_is_int(ind.generation) and 0 <= ind.generation <= self.generation, f"{where}.generation",
                 f"{ind.generation!r} is not a planned generation (0..{self.generation})")  # fmt: skip
            need(is_genotype(ind.genotype), f"{where}.genotype", f"{ind.genotype!r} is not a genotype")
            need(ind.parent is None or (_is_int(ind.parent) and ind.parent in by_id), f"{where}.parent",
                 f"{ind.parent!r} is not an earlier individual")  # fmt: skip
            need(isinstance(ind.directory, str), f"{where}.directory", f"{ind.directory!r} is not a path")
            need(ind.checkpoint is None or isinstance(ind.checkpoint, str), f"{where}.checkpoint",
                 f"{ind.checkpoint!r} is not a path")  # fmt: skip
            if ind.status == COMPLETED:
                for key in ("val_loss", "fitness"):
                    value = getattr(ind, key)
                    need(_is_number(value), f"{where}.{key}", f"{value!r}: a completed individual needs a number")
                need(_is_int(ind.params) and ind.params > 0, f"{where}.params",
                     f"{ind.params!r}: a completed individual needs its parameter count")  # fmt: skip
            by_id[ind.id] = ind
        planned = {ind.generation for ind in self.individuals}
        need(planned == set(range(self.generation + 1)), "individuals",
             f"hold generations {sorted(planned)}, but generations 0..{self.generation} were planned")  # fmt: skip
        need(isinstance(self.parents, list), "parents", "must be a list of individual ids")
        for k, parent in enumerate(self.parents):
            need(_is_int(parent) and parent in by_id and by_id[parent].status == COMPLETED, f"parents[{k}]",
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


class SearchLock:
    """An exclusive lock on a sweep directory for one driver's lifetime: one driver per search.

    A POSIX record lock on ``driver.lock``. The OS drops it when its holder dies, SIGKILL included,
    so a lock is never stale, and processes the driver forks (loader workers) do not inherit it.
    The file says who holds it (pid, host, start time), for the message a second driver gets.
    The holding process must not open the file otherwise: closing any of its descriptors of the
    file drops a POSIX lock.
    """

    _held: set[Path] = set()  # POSIX locks belong to a process: this one must not lock a directory twice

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> SearchLock:
        """Take the lock, or raise ``SearchLocked`` at once naming the directory and the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        refusal = (
            f"{self.path.parent} is the directory of a search that another evolve.py is driving"
            " ({holder}). One driver per search: wait for it to finish or stop it, then re-run to resume"
            " (a killed driver's lock is released at once); for another search, choose another search_name"
        )
        if key in SearchLock._held:
            raise SearchLocked(refusal.format(holder="this very process"))
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            holder = self.path.read_text(errors="replace").strip() or "a process starting up"
            raise SearchLocked(refusal.format(holder=holder)) from None
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n".encode())
        self._fd = fd
        SearchLock._held.add(key)
        return self

    def release(self) -> None:
        """Drop the lock (closing the file does); the file stays, holding the last holder's name."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            SearchLock._held.discard(self.path.resolve())

    def __enter__(self) -> SearchLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Job(NamedTuple):
    """What a launched child needs besides the search's own config."""

    individual: Individual
    parent_checkpoint: Path | None
    epochs: int


class Evolution:
    """The search behind the sweeper: plan a generation, record its children, select.

    The driver loop::

        evolution = Evolution(sweep_dir, settings)
        while (generation := evolution.next_generation()) is not None:
            for job in evolution.jobs(generation): launch it, then record() or record_failure()
            evolution.select(generation)

    Opening a directory with a state resumes it: a generation already planned is finished
    (its completed children kept, children whose result file exists adopted), never re-drawn.
    """

    def __init__(self, directory: str | os.PathLike, settings: Settings) -> None:
        self.directory = Path(directory)
        self.settings = settings
        self.path = self.directory / STATE_FILE
        for stale in stale_temporaries(self.path):  # left by a driver killed while it wrote the state
            stale.unlink(missing_ok=True)
        if self.path.exists():
            self.state = load_state(self.path)
            self._check_identity()
        else:
            self.state = SearchState(settings=settings.identity())
        self.rng = np.random.default_rng(settings.seed)
        if self.state.rng is not None:
            try:
                self.rng.bit_generator.state = self.state.rng
            except (TypeError, ValueError, KeyError) as e:
                raise StateError(f"{self.path}: rng: not the state of numpy's default generator ({e})") from None
        self._by_id = {ind.id: ind for ind in self.state.individuals}

    @property
    def resumed(self) -> bool:
        return bool(self.state.individuals)

    def _check_identity(self) -> None:
        """Refuse to resume with any setting that changes what a fitness means, naming it with both values."""
        saved, wanted = self.state.settings, self.settings.identity()
        for key in IDENTITY:
            if saved.get(key) != wanted[key]:
                self._refuse(key, repr(wanted[key]), repr(saved.get(key)))
        if "training" not in saved:  # a state written before the training settings were part of the identity
            log.warning(f"{self.path} does not record its training settings: taking this run's as the search's")
            saved["training"] = wanted["training"]
            return
        old, new = saved["training"], wanted["training"]
        for key in sorted(set(old) | set(new)):
            if old.get(key, _UNSET) != new.get(key, _UNSET):
                self._refuse(key, _override_value(new.get(key, _UNSET)), _override_value(old.get(key, _UNSET)))

    def _refuse(self, key: str, wanted: str, saved: str) -> None:
        unset = _override_value(_UNSET)
        fix = f"without {key}" if saved == unset else f"with {'+' if wanted == unset else ''}{key}={saved}"
        raise SettingsError(
            f"{key}={wanted}, but {self.path} holds a search with {key}={saved}. To resume it, re-run {fix};"
            " for a new search, choose another search_name (or hydra.sweep.dir)"
        )

    def individual(self, id: int) -> Individual:
        return self._by_id[id]

    def generation_of(self, generation: int) -> list[Individual]:
        return [ind for ind in self.state.individuals if ind.generation == generation]

    @property
    def parents(self) -> list[Individual]:
        return [self._by_id[i] for i in self.state.parents]

    def save(self) -> None:
        self.state.rng = self.rng.bit_generator.state
        write_json_atomic(self.path, self.state.to_json())

    # -- planning --------------------------------------------------------------------------

    def next_generation(self) -> int | None:
        """The generation to run now: an unfinished one, or a newly planned one; None at the limit."""
        state = self.state
        if state.generation >= 0 and len(state.history) <= state.generation:
            generation = state.generation  # planned, not yet selected: finish it
            for ind in self.generation_of(generation):
                if ind.status == FAILED:  # a re-run after a stop retries the failures
                    _retry(ind)
            for ind in self.generation_of(generation):
                if ind.status == PENDING and not self.adopt_result(ind.id) and ind.status == FAILED:
                    _retry(ind)  # its result was rejected (and moved aside): train it again now
            state.stopped = None
            self.save()
            return generation
        generation = state.generation + 1
        limit = self.settings.generations
        if limit is not None and generation > limit:
            return None
        children = self._plan(generation)
        if not children:
            state.stopped = "search space exhausted: every single-gene mutation of every parent was sampled already"
            self.save()
            raise SearchStopped(state.stopped)
        state.individuals.extend(children)
        self._by_id.update((c.id, c) for c in children)
        state.generation = generation
        state.stopped = None
        self.save()
        return generation

    def _plan(self, generation: int) -> list[Individual]:
        state, settings = self.state, self.settings
        next_id = len(state.individuals)
        if generation == 0:
            state.cache.append(str(settings.ancestor))
            return [Individual(0, 0, str(settings.ancestor), None, _directory(0))]
        cache = {Genotype.from_string(g) for g in state.cache}
        parents = self.parents
        quota = [settings.population // len(parents)] * len(parents)
        for k in range(settings.population - sum(quota)):  # fewer parents than mu: the fittest take more
            quota[k % len(parents)] += 1
        children: list[Individual] = []
        exhausted: set[int] = set()
        while sum(quota) and len(exhausted) < len(parents):
            for k, parent in enumerate(parents):
                while quota[k] and k not in exhausted:
                    try:
                        genotype = mutate(Genotype.from_string(parent.genotype), self.rng, cache, settings.search_space)
                    except SearchExhaustedError:
                        exhausted.add(k)
                        # its remaining children go to the next parent that can still produce
                        open_parents = [j for j in range(len(parents)) if j not in exhausted]
                        if open_parents:
                            quota[open_parents[0]] += quota[k]
                        quota[k] = 0
                        break
                    quota[k] -= 1
                    state.cache.append(str(genotype))
                    child_id = next_id + len(children)
                    children.append(Individual(child_id, generation, str(genotype), parent.id, _directory(child_id)))
        return children

    def adopt_result(self, id: int) -> bool:
        """Take the result file a child left in its directory (it finished while the driver was gone).

        A file that is not this child's valid record is moved aside and the child recorded as failed,
        with the file named, so that it is trained again rather than adopted again.
        """
        ind = self._by_id[id]
        path = self.directory / ind.directory / RESULT_FILE
        try:
            data = read_json(path)
        except FileNotFoundError:
            return False
        except FileFormatError as e:
            self._reject(ind, str(e))
            return False
        problem = result_problem(data, ind)
        if problem is not None:
            self._reject(ind, f"{path}: {problem}")
            return False
        self.record(id, data)
        return True

    def jobs(self, generation: int) -> Iterator[Job]:
        """The children of ``generation`` still to train, with what each one inherits."""
        for ind in self.generation_of(generation):
            if ind.status != PENDING:
                continue
            parent_checkpoint = None
            if ind.parent is not None and self.settings.weight_transfer:
                parent_checkpoint = self._absolute(self._by_id[ind.parent].checkpoint)
            epochs = self.settings.ancestor_epochs if ind.generation == 0 else self.settings.epochs
            yield Job(ind, parent_checkpoint, epochs)

    def prepare(self, job: Job) -> Path:
        """The job's directory, cleared of checkpoints an interrupted attempt left behind."""
        directory = self.directory / job.individual.directory
        for stale in [*(directory / "checkpoints").glob("*.ckpt"), *stale_temporaries(directory / RESULT_FILE)]:
            stale.unlink()
        (directory / RESULT_FILE).unlink(missing_ok=True)
        return directory

    # -- recording -------------------------------------------------------------------------

    def record(self, id: int, result: Any) -> Individual:
        """A child finished and returned ``result``: store its measurements (and save the state).

        A result that fails ``result_problem`` gives way to the child's result file, checked on its
        own (``adopt_result``); without a valid one the child is recorded as failed.
        """
        ind = self._by_id[id]
        problem = result_problem(result, ind)
        if problem is not None:
            if (self.directory / ind.directory / RESULT_FILE).exists():
                self.adopt_result(id)  # adopted, or the file rejected and named
                return ind
            return self.record_failure(id, f"result rejected: {problem}")
        for key in (*RESULT_FIELDS, *(k for k in OPTIONAL_RESULT_FIELDS if k in result)):
            setattr(ind, key, result[key])
        ind.checkpoint = self._relative(ind.checkpoint)
        ind.status, ind.error = COMPLETED, None
        self.save()
        return ind

    def _reject(self, ind: Individual, reason: str) -> Individual:
        """Record ``ind`` as failed because of its result; keep the file for inspection under another name."""
        path = self.directory / ind.directory / RESULT_FILE
        aside = ""
        if path.exists():
            k = 1
            while (target := path.with_name(f"result.rejected-{k}.json")).exists():
                k += 1
            path.rename(target)
            aside = f"; the file is kept as {target.name}"
        log.warning(f"individual {ind.id}: result rejected: {reason}{aside}")
        return self.record_failure(ind.id, f"result rejected: {reason}{aside}")

    def record_failure(self, id: int, error: str) -> Individual:
        ind = self._by_id[id]
        ind.status, ind.error, ind.fitness = FAILED, error, math.inf
        self.save()
        return ind

    # -- selection -------------------------------------------------------------------------

    def select(self, generation: int) -> dict[str, Any]:
        """Keep the mu fittest of the parents and this generation's children; delete what cannot be a parent.

        Raises ``SearchStopped`` (with the state saved) when the generation's failure rate
        exceeds ``max_failure_rate`` or nothing completed.
        """
        children = self.generation_of(generation)
        unfinished = [c.id for c in children if c.status == PENDING]
        if unfinished:
            raise RuntimeError(f"generation {generation} still has unfinished children {unfinished}")
        failed = [c for c in children if c.status == FAILED]
        rate = len(failed) / len(children)
        candidates = [p for p in self.parents if p.status == COMPLETED]
        candidates += [c for c in children if c.status == COMPLETED]
        if rate > self.settings.max_failure_rate or not candidates:
            first = failed[0]
            self.state.stopped = (
                f"generation {generation}: {len(failed)} of {len(children)} children failed"
                f" (rate {rate:.2f} > max_failure_rate={self.settings.max_failure_rate});"
                f" first error, individual {first.id} ({first.directory}): {first.error}"
            )
            self.save()
            raise SearchStopped(self.state.stopped)
        parents = sorted(candidates, key=lambda ind: ind.rank_key)[: self.settings.parents]
        self.state.parents = [p.id for p in parents]
        completed = [c.fitness for c in children if c.status == COMPLETED]
        best_child = min((c for c in children if c.status == COMPLETED), key=lambda ind: ind.rank_key)
        summary = {
            "generation": generation,
            "children": len(children),
            "failed": len(failed),
            "best_fitness": best_child.fitness,
            "best_id": best_child.id,
            "median_fitness": statistics.median(completed),
            "parents": list(self.state.parents),
            "parent_fitness": [p.fitness for p in parents],
        }
        self.state.history.append(summary)
        if not self.settings.keep_checkpoints:
            self._delete_checkpoints()
        self.save()
        return summary

    def _delete_checkpoints(self) -> None:
        """(mu + lambda): a network that is not a parent now never will be; its record stays."""
        keep = set(self.state.parents)
        for ind in self.state.individuals:
            if ind.id in keep or ind.status == PENDING:
                continue
            if ind.checkpoint is not None:
                path = self._absolute(ind.checkpoint)
                if path is not None and path.is_relative_to(self.directory.resolve()):
                    path.unlink(missing_ok=True)
                ind.checkpoint = None
            for stale in (self.directory / ind.directory / "checkpoints").glob("*.ckpt"):
                stale.unlink()  # a failed child may have saved one before failing

    # -- paths -----------------------------------------------------------------------------

    def _relative(self, path: str | None) -> str | None:
        if path is None:
            return None
        p = Path(path).resolve()
        root = self.directory.resolve()
        return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)

    def _absolute(self, path: str | None) -> Path | None:
        if path is None:
            return None
        p = Path(path)
        return p if p.is_absolute() else (self.directory / p).resolve()


def _retry(ind: Individual) -> None:
    ind.status, ind.error, ind.fitness = PENDING, None, None


def _directory(id: int) -> str:
    return f"individuals/{id:04d}"
