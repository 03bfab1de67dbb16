"""EvoPose2D-PL: neuroevolution of 2D human pose estimation networks.

Layers: ``search`` (pure Python), ``nets`` and ``transfer`` (torch). Nothing in this
package imports Hydra; the Hydra edge lives in ``conf/`` and the entry-point scripts.
"""

__version__ = "0.1.0"
