"""Searches side by side, whatever their method: each search's trained networks (accuracy, parameters, FLOPs)
and what the search cost (device-hours), in one table (``comparison.csv``, also printed) and one Pareto plot
(``comparison.png``).

    python -m evopose_pl.report compare outputs/compare/evolution outputs/compare/pnfs_sync
    python -m evopose_pl.report compare evo=outputs/evolve/e3 darts=<search run> darts=<derived network's run>

A search is an evolution's sweep directory (its ``state.json``; each individual's accuracy is recorded when
the search ran with ``test=true``) or one or more ``train.py`` run directories (each run's ``result.json``)
given the same label, such as a DARTS search and the retraining of its derived network: their costs add up.
"""

from __future__ import annotations

import argparse
import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evopose_pl.evolution import COMPLETED, RESULT_FILE, STATE_FILE, load_state
from evopose_pl.evolution.settings import is_int, is_number
from evopose_pl.files import read_json
from evopose_pl.report import pareto_front, save_atomic

CSV_FILE = "comparison.csv"
PLOT_FILE = "comparison.png"
COLUMNS = ("search", "method", "network", "accuracy", "params", "flops", "networks", "device_hours", "on_front")
COST_AXES = {"params": "parameters (millions)", "flops": "GFLOPs (multiply-accumulates: the papers' FLOPs)"}


class ComparisonError(ValueError):
    """A directory that holds no comparable search, or searches that cannot be compared; names the path."""


@dataclass(frozen=True)
class Network:
    """One trained network as the comparison places it (accuracy: the data's headline test figure)."""

    name: str
    accuracy: float
    params: int
    flops: int


@dataclass
class Search:
    """A search's networks, the one it answers with (``chosen``), and its cost."""

    label: str
    method: str
    accuracy_metric: str
    networks: list[Network]
    chosen: Network
    device_hours: float
    sources: list[str] = field(default_factory=list)


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
    """An evolution: every tested individual, the fittest as its answer, the device time of every child."""
    state = load_state(directory)
    done = [ind for ind in state.individuals if ind.status == COMPLETED]
    if not done:
        raise ComparisonError(f"{directory}: the search has no trained network yet")
    fittest = min(done, key=lambda ind: ind.rank_key)
    if fittest.accuracy is None:
        raise ComparisonError(
            f"{directory}: its networks were not tested (individual {fittest.id}, the fittest, has no accuracy);"
            " run the search with test=true to record each network's accuracy"
        )
    tested = [ind for ind in done if ind.accuracy is not None]
    metrics = {ind.accuracy_metric for ind in tested}
    if len(metrics) > 1:
        raise ComparisonError(f"{directory}: its networks were tested with different metrics {sorted(metrics)}")
    networks = {ind.id: Network(f"individual {ind.id}", ind.accuracy, ind.params, ind.flops) for ind in tested}
    settings = state.settings
    untested = f", {len(done) - len(tested)} untested left out" if len(tested) < len(done) else ""
    seconds = sum(ind.wall_time * (ind.devices or 1) for ind in state.individuals if ind.wall_time is not None)
    return Search(
        label=label,
        method=(
            f"EvoPose2D evolution (mu {settings.get('parents')}, lambda {settings.get('population')},"
            f" {len(state.history)} generations selected{untested})"
        ),
        accuracy_metric=metrics.pop(),
        networks=list(networks.values()),
        chosen=networks[fittest.id],
        device_hours=seconds / 3600,
        sources=[str(directory)],
    )


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
    metrics = {s.accuracy_metric for s in searches}
    if len(metrics) > 1:
        measured = "; ".join(f"{', '.join(s.sources)}: {s.accuracy_metric}" for s in searches)
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


def rows(searches: Sequence[Search]) -> list[dict[str, Any]]:
    """One row per search: its answer, the size of what it trained, its cost, and whether its answer lies on the
    front of all the networks compared (no other network is as accurate with fewer parameters)."""
    everything = [n for s in searches for n in s.networks]
    front = {id(everything[i]) for i in pareto_front([(n.params, -n.accuracy) for n in everything])}
    return [
        {
            "search": s.label,
            "method": s.method,
            "network": s.chosen.name,
            "accuracy": s.chosen.accuracy,
            "params": s.chosen.params,
            "flops": s.chosen.flops,
            "networks": len(s.networks),
            "device_hours": s.device_hours,
            "on_front": id(s.chosen) in front,
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
    return f"accuracy ({searches[0].accuracy_metric})" if column == "accuracy" else column


def plot(searches: Sequence[Search], path: Path) -> Path:
    """Accuracy against parameters and against FLOPs: every network of every search, each search's answer
    starred, and the front of all of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    everything = [n for s in searches for n in s.networks]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), dpi=120, sharey=True)
    for ax, cost in zip(axes, ("params", "flops")):
        for k, s in enumerate(searches):
            label = f"{s.label}: {len(s.networks)} trained, {s.device_hours:.3g} device-h"
            ax.scatter([_cost(n, cost) for n in s.networks], [n.accuracy for n in s.networks], s=18, alpha=0.45,
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


def write_comparison(searches: Sequence[Search], out: str | os.PathLike) -> list[Path]:
    """Write the table and the plot into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [write_csv(searches, out / CSV_FILE), save_atomic(lambda tmp: plot(searches, tmp), out / PLOT_FILE)]


def print_table(searches: Sequence[Search]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Searches side by side")
    for column in COLUMNS:
        justify = "left" if column in ("search", "method", "network") else "right"
        table.add_column(_heading(column, searches), justify=justify)
    for row in rows(searches):
        table.add_row(
            row["search"],
            row["method"],
            row["network"],
            f"{row['accuracy']:.4g}",
            f"{row['params'] / 1e6:.2f}M",
            f"{row['flops'] / 1e9:.3g}G",
            str(row["networks"]),
            f"{row['device_hours']:.3g}",
            "yes" if row["on_front"] else "no",
        )
    Console(width=160).print(table)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m evopose_pl.report compare",
        description="Put searches side by side: one table and one Pareto plot of accuracy against size and cost.",
    )
    parser.add_argument(
        "searches",
        nargs="+",
        metavar="[LABEL=]PATH",
        help="an evolution's sweep directory (run with test=true) or a train.py run directory; runs given the same"
        " label are one search (their costs add up)",
    )
    parser.add_argument("--out", type=Path, default=Path("."), help="where to write comparison.csv and comparison.png")
    args = parser.parse_args(argv)
    try:
        searches = read_searches(args.searches)
    except (ValueError, FileNotFoundError) as e:  # ComparisonError, and a state or record that is not one
        parser.error(str(e))
    print_table(searches)
    for path in write_comparison(searches, args.out):
        print(path)
