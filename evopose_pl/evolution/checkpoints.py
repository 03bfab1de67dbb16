"""Pruning checkpoints: a network that is not a parent now (in aging evolution, no longer alive) never will
be again, and no child will inherit its weights."""

from __future__ import annotations

from collections.abc import Collection

from evopose_pl.evolution.state import PENDING, StateStore


def prune_checkpoints(store: StateStore, also_keep: Collection[int] = ()) -> None:
    """Delete the checkpoints (inside the sweep directory) of every finished individual that is neither a
    parent nor in ``also_keep``, and forget them in the state; their records stay. The caller saves the state."""
    keep = {*store.state.parents, *also_keep}
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
