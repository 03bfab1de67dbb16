"""Hydra plugin: the EvoPose2D (mu + lambda) sweeper (``hydra/sweeper=evolution``)."""
