"""Search strategies at the same budget: (mu + lambda) by fitness, (mu + lambda) with NSGA-II, aging
(regularized) evolution and random search, each training the same number of networks on the synthetic data,
with every network's latency measured.

    python bench/search_strategies.py                                   # CPU: 1 + 8 networks per search
    python bench/search_strategies.py --generations 4 --out outputs/bench/strategies
    python bench/search_strategies.py latency.device=cuda trainer=gpu   # the same on a GPU

Every search runs ``python evolve.py`` in its own process (the demo's recipe and data, ``population=4``
children per generation for the evolutions, ``batch=4`` for the others), in ``--out/<search>``. It prints,
per search and generation, the networks trained, device-hours, the best fitness so far and the hypervolume
of the front over (validation loss, latency) against one reference point for all (``report compare``), and
the rank correlation of latency with parameters and with FLOPs over every network trained: how much of the
speed the paper's size measures see.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import ROOT, machine, run_search
from scipy.stats import spearmanr

from evopose_pl.comparison import common_reference, read_searches, scaled_hypervolume, write_comparison
from evopose_pl.evolution import load_state

SEARCHES = {
    "plus_fitness": ["strategy=mu_plus_lambda", "selection=fitness"],
    "plus_nsga2": ["strategy=mu_plus_lambda", "selection=nsga2"],
    "regularized": ["strategy=regularized", "batch=4", "sample_size=2"],
    "random": ["strategy=random", "batch=4"],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--searches", nargs="+", choices=list(SEARCHES), default=list(SEARCHES))
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "strategies")
    parser.add_argument("overrides", nargs="*", help="evolve.py overrides for every search, e.g. epochs=3")
    args = parser.parse_args(argv)
    taken = [args.out / name for name in args.searches if (args.out / name).exists()]
    if taken:
        parser.error(f"{taken[0]} exists: the search would resume in it; choose another --out")
    common = ["objectives=[val_loss,latency]", "population=4", "parents=2", f"generations={args.generations}"]
    seconds = {}
    for name in args.searches:
        _, _, seconds[name], _ = run_search([*common, *SEARCHES[name], *args.overrides], args.out / name)
    searches = read_searches([str(args.out / name) for name in args.searches])
    reference = common_reference(searches)
    print(f"# search strategies on {machine()}")
    print(f"evolve.py {' '.join(common + args.overrides)}; hypervolume over (val_loss, latency), reference"
          f" {[f'{r:.4g}' for r in reference]}\n")  # fmt: skip
    print("| search | generation | networks | device-hours | best fitness | hypervolume |")
    print("|---|---|---|---|---|---|")
    for search in searches:
        for p in search.progress:
            print(f"| {search.label} | {p.generation} | {p.networks} | {p.device_hours:.3f} | {p.best_fitness:.4g}"
                  f" | {scaled_hypervolume(p.points, reference):.4f} |")  # fmt: skip
    print()
    networks = [ind for name in args.searches for ind in load_state(args.out / name).individuals if ind.latency]
    latency = [ind.latency for ind in networks]
    params = [ind.params for ind in networks]
    flops = [ind.flops for ind in networks]
    print(f"{len(networks)} networks; Spearman rank correlation of latency with parameters"
          f" {spearmanr(latency, params).statistic:.2f}, with FLOPs {spearmanr(latency, flops).statistic:.2f};"
          f" wall time per search: {', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())}")  # fmt: skip
    for path in write_comparison(searches, args.out):
        print(path)


if __name__ == "__main__":
    main()
