"""Evolution overhead: the share of a proxy search's wall time spent outside its children's
training and validation.

    python bench/evolution_overhead.py                      # the demo search (python evolve.py), 1 generation
    python bench/evolution_overhead.py --generations 2 population=8 parents=2 epochs=3

Runs ``python evolve.py`` in its own process, as a user does (so the driver's start counts), in a
fresh sweep directory, with the given overrides on top of the defaults. Each child records its
clock times and the seconds its training and validation loops took (``callbacks.StageTimer``);
everything else is overhead, split into:

- driver start: from the command to the first child (imports, config, state, W&B search run);
- child set-up: from a child's start to its fit (data module, decoding the genotype, the
  LightningModule, loggers);
- in-fit, outside the loops: weight transfer, FLOP count, crop cache, loader workers,
  checkpoint saving;
- child wrap-up: measuring the child (writing its record comes after its clock stops, so it
  counts with the driver);
- driver, between children: launching, writing each child's record, finishing its W&B run, state writes,
  mutation, selection, the table and plots, to the end of the command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import machine, run_search


def breakdown(total: float, start: float, individuals: list[dict]) -> list[tuple[str, float]]:
    """(component, seconds) for a search that ran ``total`` seconds from ``start`` (wall clock)."""
    timed = [ind["timing"] for ind in individuals if ind.get("timing")]
    inside = sum(t["train"] + t["val"] for t in timed)
    children = sum(t["ended"] - t["started"] for t in timed)
    driver_start = min(t["started"] for t in timed) - start
    return [
        ("children's training and validation", inside),
        ("driver start", driver_start),
        ("child set-up", sum(t["fit_started"] - t["started"] for t in timed)),
        ("in-fit, outside the loops", sum(t["fit_ended"] - t["fit_started"] - t["train"] - t["val"] for t in timed)),
        ("child wrap-up", sum(t["ended"] - t["fit_ended"] for t in timed)),
        ("driver, between children", total - driver_start - children),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generations", type=int, default=1)
    parser.add_argument("--sweep-dir", type=Path, help="a new directory to run the search in, kept")
    parser.add_argument("overrides", nargs="*", help="evolve.py overrides, e.g. population=8 epochs=3")
    args = parser.parse_args(argv)
    if args.sweep_dir is not None and args.sweep_dir.exists():
        parser.error(f"--sweep-dir {args.sweep_dir} exists: the search would resume in it")
    shown, start, total, individuals = run_search([f"generations={args.generations}", *args.overrides], args.sweep_dir)
    parts = breakdown(total, start, individuals)
    overhead = total - parts[0][1]
    print(f"# evolution overhead on {machine()}")
    print(f"`{shown}` (in a fresh sweep directory): {len(individuals)} networks trained in {total:.1f} s\n")
    print("| component | seconds | share of wall time |")
    print("|---|---|---|")
    for name, seconds in parts:
        print(f"| {name} | {seconds:.1f} | {100 * seconds / total:.1f}% |")
    print(f"| **overhead (all but training and validation)** | {overhead:.1f} | {100 * overhead / total:.1f}% |")


if __name__ == "__main__":
    main()
