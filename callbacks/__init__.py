"""Lightning callbacks that connect the library to training runs."""

from callbacks.architecture_monitor import ArchitectureMonitor
from callbacks.stage_timer import StageTimer
from callbacks.weight_transfer import WeightTransfer

__all__ = ["ArchitectureMonitor", "StageTimer", "WeightTransfer"]
