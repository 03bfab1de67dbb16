"""The search as a table and plots: ``individuals.csv``, ``pareto.png`` and ``fitness.png`` in the
sweep directory, and the same in a Weights & Biases search run.

    python -m evopose_pl.report outputs/evolve/<search_name>     # rebuild, finished or not
    python -m evopose_pl.report compare <search> <search> ...    # searches side by side (``comparison``)
"""

from __future__ import annotations

import argparse
import csv
import math
import netrc
import os
import re
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from evopose_pl.evolution import COMPLETED, PENDING, Individual, SearchState, load_state
from evopose_pl.evolution.objective import objective_values
from evopose_pl.evolution.pareto import front_ranks, pareto_front
from evopose_pl.evolution.settings import Settings

CSV_FILE = "individuals.csv"
PARETO_FILE = "pareto.png"
FITNESS_FILE = "fitness.png"
DEFAULT_OBJECTIVES = Settings.objectives
COLUMNS = (
    "id",
    "generation",
    "parent",
    "genotype",
    "status",
    "params",
    "params_trainable",
    "flops",
    "val_loss",
    "latency",
    "throughput",
    "fitness",
    "front_rank",
    "accuracy",
    "accuracy_metric",
    "inherited",
    "is_parent",
    "wall_time",
    "devices",
    "checkpoint",
    "error",
)


def wandb_key_configured() -> bool:
    """An API key in the environment or in ~/.netrc (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def rows(state: SearchState) -> list[dict[str, Any]]:
    """One row per individual, in the CSV's columns."""
    parents = set(state.parents)
    ranks = front_rank(state)
    return [
        {
            **{k: getattr(ind, k) for k in COLUMNS if hasattr(ind, k)},
            "inherited": ind.transfer.get("transfer/inherited_fraction") if ind.transfer else None,
            "is_parent": ind.id in parents,
            "front_rank": ranks.get(ind.id),
        }
        for ind in state.individuals
    ]


def generation_bests(state: SearchState) -> list[Individual]:
    """The fittest completed network of each generation."""
    best: dict[int, Individual] = {}
    for ind in _completed(state):
        if ind.generation not in best or ind.rank_key < best[ind.generation].rank_key:
            best[ind.generation] = ind
    return [best[g] for g in sorted(best)]


def device_hours(individuals: Sequence[Individual]) -> float:
    """What training ``individuals`` cost: the sum of their wall times times the devices each ran on."""
    return sum(ind.wall_time * (ind.devices or 1) for ind in individuals if ind.wall_time is not None) / 3600


def _completed(state: SearchState) -> list[Individual]:
    return [ind for ind in state.individuals if ind.status == COMPLETED]


def write_csv(state: SearchState, path: Path) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows(state))

    return save_atomic(write, path)


#: How each objective is drawn: its axis label and the unit it is divided by.
OBJECTIVE_AXES = {
    "val_loss": ("best validation loss", 1.0),
    "params": ("parameters (millions, with BN statistics)", 1e6),
    "flops": ("GFLOPs", 1e9),
    "latency": ("latency (ms per image, batch 1)", 1.0),
}


def objectives(state: SearchState) -> list[str]:
    """The search's objectives (its settings'; searches from before they existed: the paper's pair)."""
    return list(state.settings.get("objectives") or DEFAULT_OBJECTIVES)


def _measured(state: SearchState, names: Sequence[str]) -> list[Individual]:
    """The completed individuals that have every one of ``names`` measured."""
    return [ind for ind in _completed(state) if all(getattr(ind, n) is not None for n in names)]


def front_rank(state: SearchState) -> dict[int, int]:
    """Each completed individual's non-dominated front over the search's objectives (0: on the front)."""
    names = objectives(state)
    done = _measured(state, names)
    ranks = front_ranks([objective_values(ind, names) for ind in done])
    return {ind.id: rank for ind, rank in zip(done, ranks)}


def plot_pareto(state: SearchState, path: Path) -> Path:
    """The first objective against the second (validation loss against parameters: the paper's Pareto figure)
    for every trained network, with the front of everything trained by the end of each generation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cost, error = objectives(state)[1], objectives(state)[0]
    (x_label, x_unit), (y_label, y_unit) = OBJECTIVE_AXES[cost], OBJECTIVE_AXES[error]
    done = _measured(state, (cost, error))
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    if done:
        generations = sorted({ind.generation for ind in done})
        colours = plt.get_cmap("viridis")
        shade = {g: colours(k / max(1, len(generations) - 1)) for k, g in enumerate(generations)}
        x = [getattr(ind, cost) / x_unit for ind in done]
        y = [getattr(ind, error) / y_unit for ind in done]
        points = ax.scatter(x, y, c=[ind.generation for ind in done], cmap="viridis", s=22, alpha=0.8, zorder=2)
        bar = fig.colorbar(points, ax=ax, label="generation")
        bar.set_ticks(generations)
        for g in generations:  # the front of everything trained by the end of generation g
            upto = [i for i, ind in enumerate(done) if ind.generation <= g]
            front = [upto[k] for k in pareto_front([(x[i], y[i]) for i in upto])]
            last = g == generations[-1]
            label = "front" if last else ("fronts of earlier generations" if g == generations[0] else None)
            ax.step([x[i] for i in front], [y[i] for i in front], where="post", color="tab:red" if last else shade[g],
                    lw=1.4 if last else 0.8, alpha=1 if last else 0.6, zorder=1, label=label)  # fmt: skip
        bests = [b for b in generation_bests(state) if b in done]
        ax.scatter(
            [getattr(b, cost) / x_unit for b in bests],
            [getattr(b, error) / y_unit for b in bests],
            marker="*",
            s=160,
            facecolor="none",
            edgecolor="black",
            lw=1.0,
            label="best fitness of its generation",
            zorder=3,
        )
        for b in bests:
            ax.annotate(f"g{b.generation}", (getattr(b, cost) / x_unit, getattr(b, error) / y_unit),
                        textcoords="offset points", xytext=(5, 4), fontsize=7)  # fmt: skip
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    last = f", generations 0-{state.history[-1]['generation']}" if state.history else ""
    ax.set_title(f"{len(done)} networks trained{last}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_fitness(state: SearchState, path: Path) -> Path:
    """Every network's fitness by generation, with each generation's best and median and the best parent; below,
    the hypervolume of the front over the objectives after each generation (the figure searches compare by)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = _completed(state)
    volumes = [(h["generation"], h["hypervolume"]) for h in state.history if h.get("hypervolume") is not None]
    if volumes:
        fig, (ax, lower) = plt.subplots(2, 1, figsize=(7, 6.5), dpi=120, sharex=True, height_ratios=(2, 1))
        lower.plot(*zip(*volumes), "o-", color="tab:green")
        lower.set_ylabel("hypervolume")
        lower.set_title(f"front over {', '.join(objectives(state))}, scaled by the reference point", fontsize=8)
        lower.grid(alpha=0.3)
        lower.set_xlabel("generation")
    else:
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
        ax.set_xlabel("generation")
    ax.scatter(
        [d.generation for d in done], [d.fitness for d in done], s=14, alpha=0.5, color="tab:gray", label="network"
    )
    gens = sorted({d.generation for d in done})
    per_gen = [[d.fitness for d in done if d.generation == g] for g in gens]
    ax.plot(gens, [min(f) for f in per_gen], "o-", color="tab:blue", label="best of generation")
    ax.plot(gens, [statistics.median(f) for f in per_gen], "s--", color="tab:orange", label="median of generation")
    if state.history:
        ax.plot(
            [h["generation"] for h in state.history],
            [min(h["parent_fitness"]) for h in state.history],
            color="tab:red",
            lw=1,
            label="best so far",
        )
    ax.set_ylabel("fitness (lower is better)")
    ax.grid(alpha=0.3)
    if done:
        ax.legend(fontsize=8)
        ax.set_xticks(gens)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(sweep_dir: str | os.PathLike, state: SearchState | None = None) -> list[Path]:
    """Write the CSV and both plots into the sweep directory; returns their paths."""
    sweep_dir = Path(sweep_dir)
    state = state or load_state(sweep_dir)
    return [
        write_csv(state, sweep_dir / CSV_FILE),
        save_atomic(lambda tmp: plot_pareto(state, tmp), sweep_dir / PARETO_FILE),
        save_atomic(lambda tmp: plot_fitness(state, tmp), sweep_dir / FITNESS_FILE),
    ]


def save_atomic(write: Callable[[Path], Any], path: Path) -> Path:
    """``write(tmp)`` to a sibling of ``path``, then rename it into place: a reader never sees half a table or
    plot. The sibling keeps the suffix, which matplotlib reads the format from."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class SearchRun:
    """The driver's W&B run: per finished child, the fitness the driver gave it with its validation
    loss and size (``individual/*``, by individual id); per generation, the best and median fitness,
    and a table of all individuals with scatter plots of validation loss and fitness against parameters.

    Created with ``reinit="create_new"`` so that it never becomes the process's global run:
    children trained in this process (the basic launcher) open their own runs beside it.
    """

    def __init__(self, project: str, name: str, group: str, directory: Path, offline: bool | None = None) -> None:
        import wandb

        if offline is None:
            offline = not wandb_key_configured()
        if offline:  # read once by wandb's process-wide settings: children in this process inherit it
            os.environ.setdefault("WANDB_MODE", "offline")
        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project,
            name=name,
            group=group,
            job_type="search",
            dir=str(directory),
            mode="offline" if offline else "online",
            reinit="create_new",
            id=re.sub(r"[^A-Za-z0-9_.-]", "_", f"{group}-search")[-64:],  # the same run when resumed
            resume="allow",
        )
        self.run.define_metric("search/generation")
        self.run.define_metric("search/*", step_metric="search/generation")
        self.run.define_metric("individual/id")
        self.run.define_metric("individual/*", step_metric="individual/id")
        self.offline = offline

    def log_individual(self, ind: Individual) -> None:
        """A child the driver recorded: its fitness, validation loss, parameters and FLOPs, or that it failed."""
        metrics: dict[str, Any] = {
            "individual/id": ind.id,
            "individual/generation": ind.generation,
            "individual/failed": int(ind.status != COMPLETED),
        }
        if ind.status == COMPLETED:
            metrics.update(
                {
                    "individual/fitness": ind.fitness,
                    "individual/val_loss": ind.val_loss,
                    "individual/params": ind.params,
                    "individual/flops": ind.flops,
                }
            )
            for key in ("accuracy", "latency", "throughput"):
                if getattr(ind, key) is not None:
                    metrics[f"individual/{key}"] = getattr(ind, key)
        self.run.log(metrics)

    def log_generation(self, state: SearchState, summary: dict[str, Any]) -> None:
        import wandb

        table = wandb.Table(columns=list(COLUMNS))
        for row in rows(state):
            table.add_data(*(_wandb_value(row[c]) for c in COLUMNS))
        done = wandb.Table(columns=["params", "val_loss", "fitness", "generation", "id"])
        for ind in _completed(state):
            done.add_data(ind.params, ind.val_loss, ind.fitness, ind.generation, ind.id)
        figures = {
            "search/best_fitness": summary["best_fitness"],
            "search/median_fitness": summary["median_fitness"],
            "search/hypervolume": summary.get("hypervolume"),
        }
        self.run.log(
            {
                "search/generation": summary["generation"],
                "search/networks_trained": sum(ind.status != PENDING for ind in state.individuals),
                "search/device_hours": device_hours(state.individuals),
                **{k: v for k, v in figures.items() if v is not None},
                "search/best_parent_fitness": min(summary["parent_fitness"]),
                "search/failed": summary["failed"],
                "search/individuals": table,
                "search/val_loss_vs_params": wandb.plot.scatter(
                    done, "params", "val_loss", title="Validation loss against parameters"
                ),
                "search/fitness_vs_params": wandb.plot.scatter(
                    done, "params", "fitness", title="Fitness against parameters"
                ),
            }
        )

    def finish(self) -> None:
        self.run.finish()
        if self.offline:
            print(f"W&B ran offline; upload the search with: wandb sync {Path(self.run.dir).parent}")


def _wandb_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        from evopose_pl import comparison  # it builds on this module

        return comparison.main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m evopose_pl.report",
        description="Rebuild a search's table and plots from its state.json"
        " (python -m evopose_pl.report compare ...: put searches side by side).",
    )
    parser.add_argument("sweep_dir", type=Path, help="the search's sweep directory (it holds state.json)")
    args = parser.parse_args(argv)
    try:
        state = load_state(args.sweep_dir)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    for path in write_report(args.sweep_dir, state):
        print(path)
    done = _completed(state)
    best = min(done, key=lambda ind: ind.rank_key) if done else None
    print(f"{len(state.individuals)} individuals, {len(done)} trained, {len(state.history)} generations selected")
    if best is not None:
        print(
            f"fittest: individual {best.id} (generation {best.generation}) {best.genotype}"
            f" fitness {best.fitness:.4g}, validation loss {best.val_loss:.4g}, {best.params / 1e6:.2f}M parameters"
        )


if __name__ == "__main__":
    main()
