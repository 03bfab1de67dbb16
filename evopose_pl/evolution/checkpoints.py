"""Pruning checkpoints: in (mu + lambda), a network that is not a parent now never will be again."""

from __future__ import annotations

from evopose_pl.evolution.state import PENDING, StateStore


def prune_checkpoints(store: StateStore) -> None:
    """Delete the checkpoints (inside the sweep directory) of every finished individual that is not a
    parent, and forget them in the state; their records stay. The caller saves the state."""
    keep = set(store.state.parents)
    root = store.directory.resolve()
    for ind in store.state.individuals:
        if ind.id in keep or ind.status == PENDING:
            continue
        if ind.checkpoint is not None:
            path = store.absolute(ind.checkpoint)
            if path is not None and path.is_relative_to(root):
                path.unlink(missing_ok=True)
            ind.checkpoint = None
        for stale in (store.directory / ind.directory / "checkpoints").glob("*.ckpt"):
            stale.unlink()  # a failed child may have saved one before failing
