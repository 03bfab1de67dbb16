"""Recording what children report: their measurements, checked, with the driver's fitness; or their failure.

A child reports only what it measured (``RESULT_FIELDS``), returned through the launcher and
written to ``result.json`` in its directory. The recorder checks it, computes its fitness with the
search's settings (``fitness``) and saves the state after every change.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from evopose_pl.evolution.objective import fitness
from evopose_pl.evolution.settings import Settings, is_int, is_number
from evopose_pl.evolution.state import COMPLETED, FAILED, PENDING, RESULT_FILE, Individual, StateStore
from evopose_pl.files import FileFormatError, read_json

log = logging.getLogger(__name__)

# What a child reports: the measured fields of its Individual (and, optionally, its timing). A "fitness"
# in a record (children of earlier versions computed their own) is ignored: the driver's counts.
RESULT_FIELDS = ("params", "params_trainable", "flops", "val_loss", "checkpoint", "wall_time", "transfer")
# Recorded when present: timing; the devices the child trained on (its device time is wall_time x devices);
# with test=true, its headline test figure and that figure's name; its measured latency (required when the
# search's fitness or objectives use it), throughput and what they were measured on.
OPTIONAL_RESULT_FIELDS = (
    "timing",
    "devices",
    "accuracy",
    "accuracy_metric",
    "latency",
    "throughput",
    "latency_device",
)


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
        if not is_int(result[key]) or result[key] < (1 if key == "params" else 0):
            return f"{key}={result[key]!r} is not a count"
    for key in ("val_loss", "wall_time"):
        if not is_number(result[key]):
            return f"{key}={result[key]!r} is not a finite number"
    if result["checkpoint"] is not None and not isinstance(result["checkpoint"], str):
        return f"checkpoint={result['checkpoint']!r} is not a path"
    if "devices" in result and not (is_int(result["devices"]) and result["devices"] >= 1):
        return f"devices={result['devices']!r} is not a number of devices"
    if ("accuracy" in result) != ("accuracy_metric" in result):
        return "it holds one of accuracy and accuracy_metric without the other"
    if "accuracy" in result and not (is_number(result["accuracy"]) and isinstance(result["accuracy_metric"], str)):
        return f"accuracy={result['accuracy']!r} ({result['accuracy_metric']!r}) is not a finite number with its name"
    for key in ("latency", "throughput"):
        if key in result and not (is_number(result[key]) and result[key] > 0):
            return f"{key}={result[key]!r} is not a positive number"
    if "latency_device" in result and not isinstance(result["latency_device"], str):
        return f"latency_device={result['latency_device']!r} is not a description"
    for key in ("transfer", "timing"):
        value = result.get(key)
        if value is not None and not (
            isinstance(value, Mapping) and all(isinstance(k, str) and is_number(v) for k, v in value.items())
        ):
            return f"{key}={value!r} is not a table of finite numbers"
    return None


class Recorder:
    """Adopts children's results into the state: ``record`` (returned by the launcher), ``adopt_result``
    (left on disk), ``record_failure``; ``reopen`` takes up an unfinished generation again."""

    def __init__(self, store: StateStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def record(self, id: int, result: Any) -> Individual:
        """A child finished and returned ``result``: store its measurements and the driver's fitness.

        A result that fails ``result_problem`` gives way to the child's result file, checked on its
        own (``adopt_result``); without a valid one the child is recorded as failed.
        """
        ind = self.store.state.individual(id)
        problem = result_problem(result, ind)
        if problem is None and self.settings.measures_latency and "latency" not in result:
            problem = "it lacks latency, which the search's fitness or objectives need (latency.measure)"
        if problem is not None:
            if (self.store.directory / ind.directory / RESULT_FILE).exists():
                self.adopt_result(id)  # adopted, or the file rejected and named
                return ind
            return self.record_failure(id, f"result rejected: {problem}")
        try:
            score = fitness(result, self.settings)
        except (ArithmeticError, ValueError) as e:
            score, problem = math.nan, f"{type(e).__name__}: {e}"
        if not is_number(score):
            return self.record_failure(
                id,
                f"fitness of val_loss={result['val_loss']!r}, params={result['params']!r} with"
                f" target_params={self.settings.target_params!r}, gamma={self.settings.gamma!r}"
                f" is not a finite number ({problem or score})",
            )
        for key in (*RESULT_FIELDS, *(k for k in OPTIONAL_RESULT_FIELDS if k in result)):
            setattr(ind, key, result[key])
        ind.checkpoint = self.store.relative(ind.checkpoint)
        ind.fitness = score
        ind.status, ind.error = COMPLETED, None
        self.store.save()
        return ind

    def record_failure(self, id: int, error: str) -> Individual:
        ind = self.store.state.individual(id)
        ind.status, ind.error, ind.fitness = FAILED, error, math.inf
        self.store.save()
        return ind

    def adopt_result(self, id: int) -> bool:
        """Take the result file a child left in its directory (it finished while the driver was gone).

        A file that is not this child's valid record is moved aside and the child recorded as failed,
        with the file named, so that it is trained again rather than adopted again.
        """
        ind = self.store.state.individual(id)
        path = self.store.directory / ind.directory / RESULT_FILE
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
        return self.record(id, data).status == COMPLETED

    def reopen(self, generation: int) -> None:
        """Take up a generation planned but not selected: its failed children are to be trained again,
        and its pending children that left a result on disk (while the driver was gone) are recorded."""
        children = self.store.state.generation_of(generation)
        for ind in children:
            if ind.status == FAILED:  # a re-run after a stop retries the failures
                _retry(ind)
        for ind in children:
            if ind.status == PENDING and not self.adopt_result(ind.id) and ind.status == FAILED:
                _retry(ind)  # its result was rejected (and moved aside): train it again now
        self.store.save()

    def _reject(self, ind: Individual, reason: str) -> Individual:
        """Record ``ind`` as failed because of its result; keep the file for inspection under another name."""
        path = self.store.directory / ind.directory / RESULT_FILE
        aside = ""
        if path.exists():
            k = 1
            while (target := path.with_name(f"result.rejected-{k}.json")).exists():
                k += 1
            path.rename(target)
            aside = f"; the file is kept as {target.name}"
        log.warning(f"individual {ind.id}: result rejected: {reason}{aside}")
        return self.record_failure(ind.id, f"result rejected: {reason}{aside}")


def _retry(ind: Individual) -> None:
    ind.status, ind.error, ind.fitness = PENDING, None, None
