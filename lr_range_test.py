"""The learning-rate range test that picks a cyclical recipe's first peak, ``recipe.lr_max``
(SPEC-EfficientPose section 4: the largest rate that does not diverge during the first cycle).

    python lr_range_test.py recipe=efficientpose data=mpii_synthetic
    python lr_range_test.py experiment=... lr_range.min=1e-6 lr_range.max=1 lr_range.steps=300

The Hydra edge: compose train.py's config (conf/lr_range_test.yaml adds the ``lr_range`` settings), build
the same session, sweep the rate with Lightning's tuner (``evopose_pl.lr_range``), write
``lr_range_test.png`` and ``lr_range_test.json`` to the run directory, and print the pick and the
override that trains with it. Loggers are off: a range test is not a training run.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("EVOPOSE_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from evopose_pl.lr_range import RangeTest, plot, run_sweep, steps_per_epoch, write_json  # noqa: E402
from evopose_pl.recipes import global_batch  # noqa: E402
from session import ConfigError, build, report_bad_input  # noqa: E402

PLOT_FILE, JSON_FILE = "lr_range_test.png", "lr_range_test.json"


def check_settings(cfg: DictConfig) -> None:
    """Refuse, before anything is built, a recipe with no peak rate to pick and sweep settings that cannot work."""
    if "lr_max" not in cfg.recipe:
        raise ConfigError(
            f"recipe ({cfg.recipe.get('_target_')}) has no lr_max for the range test to pick: "
            "use a cyclical recipe, e.g. recipe=efficientpose"
        )
    sweep = cfg.lr_range
    if not 0 < sweep.min < sweep.max:
        raise ConfigError(f"lr_range.min={sweep.min}, lr_range.max={sweep.max}: need 0 < min < max")
    if sweep.steps is not None and (not isinstance(sweep.steps, int) or sweep.steps < 2):
        raise ConfigError(f"lr_range.steps={sweep.steps}: a whole number of steps >= 2, or null for one cycle")
    if not sweep.divergence > 1:
        raise ConfigError(f"lr_range.divergence={sweep.divergence}: must exceed 1")
    transfer = (cfg.get("callbacks") or {}).get("weight_transfer")
    if transfer is not None and transfer.get("parent") is not None:
        raise ConfigError(
            f"callbacks.weight_transfer.parent={transfer.parent}: the tuner stops before callbacks seed the network, "
            "so the range test would sweep its initial weights; unset it (callbacks.weight_transfer.parent=null)"
        )


def sweep_steps(steps: int | None, cycle_epochs: float, per_epoch: int, max_epochs: int | None) -> int:
    """The sweep's length: ``steps``, or one cycle of the recipe; refused when the trainer would stop it sooner."""
    asked = f"lr_range.steps={steps}" if steps else f"lr_range.steps=null (one cycle of {cycle_epochs} epochs)"
    steps = steps or max(2, round(cycle_epochs * per_epoch))
    if max_epochs is not None and max_epochs >= 0 and steps > max_epochs * per_epoch:
        raise ConfigError(
            f"{asked}: {steps} steps, more than trainer.max_epochs={max_epochs} epochs of {per_epoch} steps; "
            "raise trainer.max_epochs or lower lr_range.steps"
        )
    return steps


def run(cfg: DictConfig) -> RangeTest:
    """Sweep, write the plot and the JSON to ``paths.output_dir``, print the pick and its override."""
    check_settings(cfg)
    with open_dict(cfg):
        cfg.logger = None
    session = build(cfg)
    datamodule, module, trainer = session.datamodule, session.module, session.trainer
    sweep = cfg.lr_range
    per_epoch = steps_per_epoch(datamodule, trainer)
    steps = sweep_steps(sweep.steps, module.recipe.cycle_epochs, per_epoch, trainer.max_epochs)
    result = run_sweep(module, datamodule, trainer, sweep.min, sweep.max, steps, sweep.divergence)
    if result.rate is None:
        raise ConfigError("the training loss was not finite at the sweep's first step, before any update")
    batch = global_batch(trainer, datamodule.batch_size)
    lr_max = module.recipe.lr_max_for(result.rate, batch)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"min": sweep.min, "max": sweep.max, "steps": steps, "global_batch": batch, "lr_max": lr_max}
    write_json(result, out / JSON_FILE, **settings)
    plot(result, out / PLOT_FILE)
    end = result.diverged_at
    if end is None:
        print(f"The loss did not diverge up to lr_range.max={sweep.max}: the pick is only a lower bound, raise it")
    else:
        print(f"The smoothed loss diverged at rate {result.rates[end]:.3g} (step {end} of the sweep)")
        if result.pick == 0:
            print(f"It diverged from the sweep's first steps: lower lr_range.min={sweep.min} to bracket the pick")
    reached = "swept" if end is None else "before divergence"
    print(f"Pick: {result.rate:.3g}, the largest rate {reached} at a global batch of {batch}")
    print(f"Wrote {PLOT_FILE} and {JSON_FILE} in {out}")
    print(f"Train with: recipe.lr_max={lr_max:.3g}")
    return result


@hydra.main(version_base="1.3", config_path="conf", config_name="lr_range_test")
def main(cfg: DictConfig) -> None:
    report_bad_input(lambda: run(cfg))


if __name__ == "__main__":
    main()
