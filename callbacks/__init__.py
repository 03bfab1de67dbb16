"""Lightning callbacks that connect the library to training runs."""

from callbacks.weight_transfer import WeightTransfer

__all__ = ["WeightTransfer"]
