"""Lightning callbacks that connect the library to training runs."""

from callbacks.architecture_monitor import ArchitectureMonitor
from callbacks.ema import ExponentialMovingAverage
from callbacks.stage_timer import StageTimer
from callbacks.weight_transfer import WeightTransfer

__all__ = ["ArchitectureMonitor", "ExponentialMovingAverage", "StageTimer", "WeightTransfer"]
