"""Parallel children on one machine: the same search with its children one after another, two at a
time with their share of the cores each (the default), and two at a time each with all the cores
(oversubscribed, what a launcher that does not limit its workers' threads gives).

    python bench/parallel_children.py                                # the demo's data and networks
    python bench/parallel_children.py --jobs 2 population=4 epochs=2 # any evolve.py overrides after the flags

Each variant runs ``python evolve.py generations=1`` in its own process and a fresh sweep
directory: the ancestor, then ``population`` children of it (the same genotypes and the same work
in every variant, since the mutations depend only on the seed). The figures are the children's:
the wall time from the first child's start to the last child's end, the seconds their training
and validation loops took in all, and the aggregate throughput, children per minute of wall time.
"""

from __future__ import annotations

import argparse
import os

from common import machine, run_search

DEFAULT = ["generations=1", "population=4", "parents=1", "epochs=2", "ancestor_epochs=2", "logger=none"]


def children_figures(individuals: list[dict]) -> tuple[float, float, int]:
    """(wall seconds from the first child's start to the last one's end, seconds in their loops, count)."""
    timing = [ind["timing"] for ind in individuals if ind["generation"] > 0]
    wall = max(t["ended"] for t in timing) - min(t["started"] for t in timing)
    return wall, sum(t["train"] + t["val"] for t in timing), len(timing)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="children at a time in the parallel variants")
    parser.add_argument("overrides", nargs="*", help="evolve.py overrides on top of the benchmark's")
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    parallel = ["launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}"]
    variants = [
        ("one after another", ["launcher=basic"], f"{cores} (all)"),
        (f"{args.jobs} at a time, shared cores", parallel, f"{max(1, cores // args.jobs)} (cores / {args.jobs})"),
        (f"{args.jobs} at a time, oversubscribed", [*parallel, f"threads={cores}"], f"{cores} (all)"),
    ]
    print(f"# parallel children on {machine()}")
    print(f"`python evolve.py {' '.join([*DEFAULT, *args.overrides])}` with each variant's launcher\n")
    columns = ["variant", "threads per child", "children", "children's wall s", "loops s (sum)", "children per minute",
               "speed-up"]  # fmt: skip
    print("| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    baseline = None
    for name, overrides, threads in variants:
        _, _, _, individuals = run_search([*DEFAULT, *args.overrides, *overrides])
        wall, loops, count = children_figures(individuals)
        baseline = baseline or wall
        rate, speed_up = 60 * count / wall, baseline / wall
        print(f"| {name} | {threads} | {count} | {wall:.1f} | {loops:.1f} | {rate:.2f} | {speed_up:.2f}x |")


if __name__ == "__main__":
    main()
