"""Searches side by side, whatever their method: each search's trained networks (accuracy, parameters, FLOPs),
what the search cost (device-hours), and for evolutions their progress (best fitness and the hypervolume of
their front against networks trained and device-hours), in one table (``comparison.csv``, also printed), one
Pareto plot (``comparison.png``) and one progress plot (``comparison_progress.png``).

    python -m evopose_pl.report compare outputs/compare/evolution outputs/compare/pnfs_sync
    python -m evopose_pl.report compare outputs/evolve/plus outputs/evolve/aging outputs/evolve/random
    python -m evopose_pl.report compare evo=outputs/evolve/e3 darts=<search run> darts=<derived network's run>

A search is an evolution's sweep directory (its ``state.json``; each individual's accuracy is recorded when
the search ran with ``test=true``) or one or more ``train.py`` run directories (each run's ``result.json``)
given the same label, such as a DARTS search and the retraining of its derived network: their costs add up.
Hypervolumes are recomputed against one reference point for all the evolutions compared (the largest of
their own), so that they compare.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evopose_pl.evolution import COMPLETED, PENDING, RESULT_FILE, STATE_FILE, SearchState, load_state
from evopose_pl.evolution.objective import objective_values
from evopose_pl.evolution.pareto import hypervolume, pareto_front
from evopose_pl.evolution.settings import is_int, is_number
from evopose_pl.files import read_json
from evopose_pl.report import device_hours, objectives, save_atomic

CSV_FILE = "comparison.csv"
PLOT_FILE = "comparison.png"
PROGRESS_FILE = "comparison_progress.png"
COLUMNS = (
    "search",
    "method",
    "network",
    "accuracy",
    "params",
    "flops",
    "networks",
    "device_hours",
    "best_fitness",
    "hypervolume",
    "on_front",
)
COST_AXES = {"params": "parameters (millions)", "flops": "GFLOPs (multiply-accumulates: the papers' FLOPs)"}


class ComparisonError(ValueError):
    """A directory that holds no comparable search, or searches that cannot be compared; names the path."""


@dataclass(frozen=True)
class Network:
    """One trained network as the comparison places it (accuracy: the data's headline test figure, None when
    it was not tested)."""

    name: str
    accuracy: float | None
    params: int
    flops: int


@dataclass(frozen=True)
class Progress:
    """An evolution after one generation: networks trained (failures included), device-hours, the best fitness
    so far, and the objectives of every network completed so far (for the hypervolume)."""

    generation: int
    networks: int
    device_hours: float
    best_fitness: float
    points: tuple[tuple[float, ...], ...]


@dataclass
class Search:
    """A search's networks, the one it answers with (``chosen``), its cost, and for an evolution its fitness,
    objectives, hypervolume reference and progress."""

    label: str
    method: str
    accuracy_metric: str | None
    networks: list[Network]
    chosen: Network
    device_hours: float
    sources: list[str] = field(default_factory=list)
    best_fitness: float | None = None
    objectives: tuple[str, ...] = ()
    reference: tuple[float, ...] | None = None
    progress: list[Progress] = field(default_factory=list)

    @property
    def tested(self) -> list[Network]:
        return [n for n in self.networks if n.accuracy is not None]


def read_search(path: str | os.PathLike, label: str) -> Search:
    """The search in ``path``: an evolution's sweep directory or ``state.json``, or a train.py run directory or
    its ``result.json``."""
    path = Path(path)
    directory = path.parent if path.name in (STATE_FILE, RESULT_FILE) else path
    if (directory / STATE_FILE).exists():
        return _evolution(directory, label)
    if (directory / RESULT_FILE).exists():
        return _training_run(directory, label)
    if not directory.exists():
        raise ComparisonError(f"{path}: no such directory")
    raise ComparisonError(
        f"{path}: neither an evolution's sweep directory ({STATE_FILE}) nor a train.py run directory ({RESULT_FILE})"
    )


def _evolution(directory: Path, label: str) -> Search:
    """An evolution: every completed individual (with its accuracy when tested), the fittest as its answer, the
    device time of every child, and its progress generation by generation."""
    state = load_state(directory)
    done = [ind for ind in state.individuals if ind.status == COMPLETED]
    if not done:
        raise ComparisonError(f"{directory}: the search has no trained network yet")
    metrics = {ind.accuracy_metric for ind in done if ind.accuracy is not None}
    if len(metrics) > 1:
        raise ComparisonError(f"{directory}: its networks were tested with different metrics {sorted(metrics)}")
    networks = {ind.id: Network(f"individual {ind.id}", ind.accuracy, ind.params, ind.flops) for ind in done}
    fittest = min(done, key=lambda ind: ind.rank_key)
    settings = state.settings
    names = tuple(objectives(state))
    strategy = settings.get("strategy", "mu_plus_lambda")
    shape = (
        f"mu {settings.get('parents')}, lambda {settings.get('population')}"
        if strategy == "mu_plus_lambda"
        else f"{'population ' + str(settings.get('population')) + ', ' if strategy == 'regularized' else ''}"
        f"batch {settings.get('batch')}"
    )
    untested = sum(ind.accuracy is None for ind in done)
    return Search(
        label=label,
        method=(
            f"evolution: {strategy}, selection {settings.get('selection', 'fitness')} ({shape},"
            f" {len(state.history)} generations){f', {untested} untested' if metrics and untested else ''}"
        ),
        accuracy_metric=metrics.pop() if metrics else None,
        networks=list(networks.values()),
        chosen=networks[fittest.id],
        device_hours=device_hours(state.individuals),
        sources=[str(directory)],
        best_fitness=fittest.fitness,
        objectives=names,
        reference=_reference(state, names),
        progress=_progress(state, names),
    )


def _reference(state: SearchState, names: Sequence[str]) -> tuple[float, ...] | None:
    """The search's hypervolume reference: its configured one, or twice its ancestor's objectives."""
    configured = state.settings.get("reference")
    if configured:
        return tuple(float(configured[n]) for n in names)
    ancestor = state.individuals[0]
    if ancestor.status != COMPLETED or any(getattr(ancestor, n) is None for n in names):
        return None
    return tuple(2 * v for v in objective_values(ancestor, names))


def _progress(state: SearchState, names: Sequence[str]) -> list[Progress]:
    progress = []
    for summary in state.history:
        upto = [ind for ind in state.individuals if ind.generation <= summary["generation"]]
        done = [ind for ind in upto if ind.status == COMPLETED and all(getattr(ind, n) is not None for n in names)]
        progress.append(
            Progress(
                generation=summary["generation"],
                networks=sum(ind.status != PENDING for ind in upto),
                device_hours=device_hours(upto),
                best_fitness=min(ind.fitness for ind in done) if done else math.inf,
                points=tuple(objective_values(ind, names) for ind in done),
            )
        )
    return progress


def _training_run(directory: Path, label: str) -> Search:
    """A train.py run: its network, tested, and its device time."""
    path = directory / RESULT_FILE
    record = read_json(path)
    if not isinstance(record, Mapping):
        raise ComparisonError(f"{path}: not a run's record (a JSON {type(record).__name__}, not an object)")
    if "accuracy" not in record:
        raise ComparisonError(f"{path}: the run did not test its network (test=false); test it to compare it")
    checks = {
        "params": lambda v: is_int(v) and v > 0,
        "flops": lambda v: is_int(v) and v >= 0,
        "accuracy": is_number,
        "accuracy_metric": lambda v: isinstance(v, str),
        "wall_time": lambda v: is_number(v) and v >= 0,
        "devices": lambda v: is_int(v) and v >= 1,
        "network": lambda v: isinstance(v, str),
    }
    for key, ok in checks.items():
        if not ok(record.get(key)):
            raise ComparisonError(f"{path}: {key}={record.get(key)!r} is not what a run records")
    method = record["network"]
    if record.get("search"):
        method += f", search={record['search']}"
    elif record.get("derived"):
        method += ", derived architecture retrained"
    network = Network(directory.name, float(record["accuracy"]), record["params"], record["flops"])
    return Search(
        label=label,
        method=method,
        accuracy_metric=record["accuracy_metric"],
        networks=[network],
        chosen=network,
        device_hours=record["wall_time"] * record["devices"] / 3600,
        sources=[str(directory)],
    )


def merge(searches: Sequence[Search]) -> Search:
    """Several runs under one label as one search (a search and the retraining of its answer): their networks,
    the last run's as the answer, and the sum of their costs."""
    first, last = searches[0], searches[-1]
    if len(searches) == 1:
        return first
    _same_metric(searches)
    return Search(
        label=first.label,
        method=" + ".join(s.method for s in searches),
        accuracy_metric=first.accuracy_metric,
        networks=[n for s in searches for n in s.networks],
        chosen=last.chosen,
        device_hours=sum(s.device_hours for s in searches),
        sources=[src for s in searches for src in s.sources],
    )


def _same_metric(searches: Sequence[Search]) -> None:
    metrics = {s.accuracy_metric for s in searches if s.accuracy_metric is not None}
    if len(metrics) > 1:
        measured = "; ".join(f"{', '.join(s.sources)}: {s.accuracy_metric}" for s in searches if s.accuracy_metric)
        raise ComparisonError(
            f"the searches were tested with different metrics ({measured}): compare searches run on the same data"
        )


def read_searches(arguments: Sequence[str]) -> list[Search]:
    """The searches ``[LABEL=]PATH`` arguments name, in order of first appearance; a label given twice
    merges its runs. Without a label a search is named by its directory."""
    by_label: dict[str, list[Search]] = {}
    explicit: set[str] = set()
    for argument in arguments:
        label, sep, path = argument.partition("=")
        if not sep:
            path = label
            directory = Path(path)
            label = (directory.parent if directory.name in (STATE_FILE, RESULT_FILE) else directory).resolve().name
            if label in by_label:
                raise ComparisonError(
                    f"{path}: another search is also named {label!r} by its directory; give each a label (LABEL=PATH)"
                )
        elif not label or not path:
            raise ComparisonError(f"{argument!r}: give a search as PATH or LABEL=PATH")
        else:
            if label in by_label and label not in explicit:
                raise ComparisonError(f"{argument!r}: the label {label!r} is already a search's directory name")
            explicit.add(label)
        by_label.setdefault(label, []).append(read_search(path, label))
    searches = [merge(runs) for runs in by_label.values()]
    _same_metric(searches)
    return searches


def common_reference(searches: Sequence[Search]) -> tuple[float, ...] | None:
    """One reference point for every evolution's hypervolume: the largest of their own, objective by objective
    (None when they have different objectives, or one has no reference)."""
    evolutions = [s for s in searches if s.progress]
    if not evolutions or len({s.objectives for s in evolutions}) > 1 or any(s.reference is None for s in evolutions):
        return None
    return tuple(max(values) for values in zip(*(s.reference for s in evolutions)))


def scaled_hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """The share of the box between the origin and ``reference`` that ``points`` dominate (as selection logs it)."""
    return hypervolume([tuple(v / r for v, r in zip(p, reference)) for p in points], (1.0,) * len(reference))


def rows(searches: Sequence[Search]) -> list[dict[str, Any]]:
    """One row per search: its answer, the size of what it trained, its cost, and whether its answer lies on the
    front of all the networks compared (no other network is as accurate with fewer parameters)."""
    everything = [n for s in searches for n in s.tested]
    front = {id(everything[i]) for i in pareto_front([(n.params, -n.accuracy) for n in everything])}
    reference = common_reference(searches)
    return [
        {
            "search": s.label,
            "method": s.method,
            "network": s.chosen.name,
            "accuracy": s.chosen.accuracy,
            "params": s.chosen.params,
            "flops": s.chosen.flops,
            "networks": s.progress[-1].networks if s.progress else len(s.networks),
            "device_hours": s.device_hours,
            "best_fitness": s.best_fitness,
            "hypervolume": scaled_hypervolume(s.progress[-1].points, reference) if s.progress and reference else None,
            "on_front": id(s.chosen) in front if s.chosen.accuracy is not None else None,
        }
        for s in searches
    ]


def write_csv(searches: Sequence[Search], path: Path) -> Path:
    """The table, its accuracy column named by the metric (``accuracy (COCO keypoints AP)``)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writerow({c: _heading(c, searches) for c in COLUMNS})
            writer.writerows(rows(searches))

    return save_atomic(write, path)


def _heading(column: str, searches: Sequence[Search]) -> str:
    metric = next((s.accuracy_metric for s in searches if s.accuracy_metric), None)
    return f"accuracy ({metric})" if column == "accuracy" and metric else column


def plot(searches: Sequence[Search], path: Path) -> Path:
    """Accuracy against parameters and against FLOPs: every network of every search, each search's answer
    starred, and the front of all of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    searches = [s for s in searches if s.chosen.accuracy is not None]
    everything = [n for s in searches for n in s.tested]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), dpi=120, sharey=True)
    for ax, cost in zip(axes, ("params", "flops")):
        for k, s in enumerate(searches):
            label = f"{s.label}: {len(s.networks)} trained, {s.device_hours:.3g} device-h"
            ax.scatter([_cost(n, cost) for n in s.tested], [n.accuracy for n in s.tested], s=18, alpha=0.45,
                       color=f"C{k}")  # fmt: skip
            ax.scatter(_cost(s.chosen, cost), s.chosen.accuracy, marker="*", s=220, color=f"C{k}", edgecolor="black",
                       lw=0.8, zorder=3, label=label)  # fmt: skip
        front = [everything[i] for i in pareto_front([(_cost(n, cost), -n.accuracy) for n in everything])]
        ax.step([_cost(n, cost) for n in front], [n.accuracy for n in front], where="post", color="black", lw=1,
                alpha=0.7, label="front of all networks", zorder=1)  # fmt: skip
        ax.set_xlabel(COST_AXES[cost])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(searches[0].accuracy_metric)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=min(4, len(searches) + 1), fontsize=8)
    fig.suptitle("Searches side by side (stars: each search's answer)")
    fig.tight_layout(rect=(0, 0.05 + 0.04 * (len(searches) // 4), 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def _cost(network: Network, cost: str) -> float:
    """``network``'s parameters in millions or FLOPs in billions."""
    return network.params / 1e6 if cost == "params" else network.flops / 1e9


def plot_progress(searches: Sequence[Search], path: Path) -> Path:
    """Each evolution's best fitness and hypervolume (one reference for all) after each generation, against the
    networks it had trained and the device-hours it had spent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = common_reference(searches)
    rows_ = 2 if reference else 1
    fig, axes = plt.subplots(rows_, 2, figsize=(11, 4 * rows_), dpi=120, squeeze=False)
    for k, s in enumerate(searches):
        if not s.progress:
            continue
        for column, spent in enumerate(("networks", "device_hours")):
            x = [getattr(p, spent) for p in s.progress]
            axes[0][column].plot(x, [p.best_fitness for p in s.progress], "o-", ms=3, color=f"C{k}", label=s.label)
            if reference:
                volumes = [scaled_hypervolume(p.points, reference) for p in s.progress]
                axes[1][column].plot(x, volumes, "o-", ms=3, color=f"C{k}", label=s.label)
    for row, figure in enumerate(("best fitness so far (lower is better)", "hypervolume of the front")[:rows_]):
        for column, spent in enumerate(("networks trained", "device-hours")):
            axes[row][column].set_xlabel(spent)
            axes[row][column].set_ylabel(figure)
            axes[row][column].grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if reference:
        objectives_ = next(s.objectives for s in searches if s.progress)
        axes[1][0].set_title(f"over {', '.join(objectives_)}; reference {[f'{r:.4g}' for r in reference]}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_comparison(searches: Sequence[Search], out: str | os.PathLike) -> list[Path]:
    """Write the table, the Pareto plot (when networks were tested) and the progress plot (when evolutions are
    compared) into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [write_csv(searches, out / CSV_FILE)]
    if any(s.chosen.accuracy is not None for s in searches):
        written.append(save_atomic(lambda tmp: plot(searches, tmp), out / PLOT_FILE))
    if any(s.progress for s in searches):
        written.append(save_atomic(lambda tmp: plot_progress(searches, tmp), out / PROGRESS_FILE))
    return written


def print_table(searches: Sequence[Search]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Searches side by side")
    for column in COLUMNS:
        justify = "left" if column in ("search", "method", "network") else "right"
        table.add_column(_heading(column, searches), justify=justify)

    def figure(value: float | None) -> str:
        return "" if value is None else f"{value:.4g}"

    for row in rows(searches):
        table.add_row(
            row["search"],
            row["method"],
            row["network"],
            figure(row["accuracy"]),
            f"{row['params'] / 1e6:.2f}M",
            f"{row['flops'] / 1e9:.3g}G",
            str(row["networks"]),
            f"{row['device_hours']:.3g}",
            figure(row["best_fitness"]),
            figure(row["hypervolume"]),
            {True: "yes", False: "no", None: ""}[row["on_front"]],
        )
    Console(width=160).print(table)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m evopose_pl.report compare",
        description="Put searches side by side: one table, a Pareto plot of accuracy against size and cost, and"
        " the evolutions' progress.",
    )
    parser.add_argument(
        "searches",
        nargs="+",
        metavar="[LABEL=]PATH",
        help="an evolution's sweep directory (test=true records its networks' accuracy) or a train.py run"
        " directory; runs given the same label are one search (their costs add up)",
    )
    parser.add_argument("--out", type=Path, default=Path("."), help="where to write the table and the plots")
    args = parser.parse_args(argv)
    try:
        searches = read_searches(args.searches)
    except (ValueError, FileNotFoundError) as e:  # ComparisonError, and a state or record that is not one
        parser.error(str(e))
    print_table(searches)
    for path in write_comparison(searches, args.out):
        print(path)
