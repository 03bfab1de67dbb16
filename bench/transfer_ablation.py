"""The paper's weight-transfer ablation at proxy scale, on the synthetic data.

    python bench/transfer_ablation.py                       # the demo's recipe: e0 6, e 2, 4 children
    python bench/transfer_ablation.py --children 8 ancestor_epochs=10 epochs=3

The ancestor (``ancestor=``) trains e0 epochs with the search-time recipe (``python evolve.py``'s config);
then the same children, one mutation each from it, train e epochs twice: inheriting the
ancestor's weights (SPEC section 4), and from scratch. It prints each child's best validation
loss both ways against the ancestor's and plots every validation curve, the children's drawn
after the ancestor's e0 epochs, as the paper's ablation figure does.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import fields
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
from common import ROOT, compose, machine
from omegaconf import OmegaConf

from evopose_pl.evolution import Settings
from evopose_pl.search import Genotype
from session import build


class ValidationCurve(pl.Callback):
    """The validation loss after every training epoch."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.losses.append(float(trainer.callback_metrics["val/loss"]))


def train(genotype: Genotype, epochs: int, parent: Path | None, out: Path, overrides: list[str]) -> tuple:
    """(validation curve, best checkpoint, parameters) of one network trained as a search child."""
    cfg = compose("evolve", [
        f"individual.genotype={genotype}", "individual.id=0", "logger=none", f"trainer.max_epochs={epochs}",
        f"individual.parent_checkpoint={parent or 'null'}", *overrides,
    ], out)  # fmt: skip
    session = build(cfg)
    curve = ValidationCurve()
    session.trainer.callbacks.append(curve)
    session.trainer.fit(session.module, session.datamodule)
    return curve.losses, session.best_checkpoint, session.module.size["params"]


def plot(path: Path, ancestor: list[float], children: list[dict], e0: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(range(1, e0 + 1), ancestor, "k-o", label="ancestor")
    for i, child in enumerate(children):
        epochs = range(e0 + 1, e0 + 1 + len(child["transfer"]))
        ax.plot(epochs, child["transfer"], "-o", color="tab:blue", label="with weight transfer" if i == 0 else None)
        ax.plot(epochs, child["scratch"], "--s", color="tab:red", label="from scratch" if i == 0 else None)
    ax.axhline(min(ancestor), color="k", lw=0.8, ls=":")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss")
    ax.set_title("Weight-transfer ablation (synthetic data, proxy scale)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--children", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="seeds the mutations")
    parser.add_argument("--plot", type=Path, default=ROOT / "outputs" / "bench" / "transfer_ablation.png")
    parser.add_argument("overrides", nargs="*", help="evolve.py overrides, e.g. ancestor_epochs=10 epochs=3")
    args = parser.parse_args(argv)
    cfg = compose("evolve", args.overrides, ROOT)
    knobs = {f.name: cfg[f.name] for f in fields(Settings) if f.name in cfg}
    settings = Settings.from_config(OmegaConf.to_container(OmegaConf.create(knobs), resolve=True))
    e0, e, origin = settings.ancestor_epochs, settings.epochs, settings.ancestor
    rng, cache = np.random.default_rng(args.seed), {origin}
    with tempfile.TemporaryDirectory() as tmp:
        ancestor, checkpoint, ancestor_params = train(origin, e0, None, Path(tmp) / "ancestor", args.overrides)
        children = []
        for i in range(args.children):
            genotype = settings.search_space.mutate(origin, rng, cache)
            transfer, _, params = train(genotype, e, Path(checkpoint), Path(tmp) / f"{i}-wt", args.overrides)
            scratch, _, _ = train(genotype, e, None, Path(tmp) / f"{i}-scratch", args.overrides)
            children.append({"genotype": str(genotype), "params": params, "transfer": transfer, "scratch": scratch})
    plot(args.plot, ancestor, children, e0)
    print(f"# weight-transfer ablation on {machine()}")
    print(f"ancestor {origin} ({ancestor_params / 1e6:.2f}M), e0 = {e0}: best validation loss {min(ancestor):.1f};"
          f" children e = {e}\n")  # fmt: skip
    print("| child | params | with transfer | from scratch | scratch / transfer | below the ancestor's? |")
    print("|---|---|---|---|---|---|")
    for child in children:
        best_wt, best_scratch = min(child["transfer"]), min(child["scratch"])
        print(f"| {child['genotype']} | {child['params'] / 1e6:.2f}M | {best_wt:.1f} | {best_scratch:.1f} |"
              f" {best_scratch / best_wt:.2f}x | {'yes' if best_wt < min(ancestor) else 'no'} /"
              f" {'yes' if best_scratch < min(ancestor) else 'no'} |")  # fmt: skip
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
