"""The (mu + lambda) neuroevolution (SPEC sections 5 and 6), the logic behind the sweeper.

Pure Python, no torch and no Hydra: the sweeper in ``hydra_plugins/`` drives an ``Evolution``
and launches its children through any Hydra launcher; a child reports back what it measured
(``RESULT_FILE`` in its own directory, and the job's return value), and the driver scores it.

One piece per job:

- ``settings``: the knobs of a search, and its identity (what a resume must not change);
- ``state``: the individuals, parents, genotype cache and generator state, and the ``StateStore``
  that keeps them in ``state.json``, loaded checked and saved atomically after every change;
- ``planner``: each generation's individuals (the ancestor, then mutations of the parents) and jobs;
- ``recorder``: children's results checked and recorded, with their fitness, or their failures;
- ``objective``: the fitness of a child's measurements, computed by the driver (lower is better);
- ``selection``: the next parents, and when a generation's failures stop the search;
- ``checkpoints``: deleting the checkpoints no parent needs;
- ``lock``: one driver per search;
- ``strategy``: ``Evolution``, the one object the sweeper drives.
"""

from evopose_pl.evolution.checkpoints import prune_checkpoints
from evopose_pl.evolution.lock import LOCK_FILE, SearchLock, SearchLocked
from evopose_pl.evolution.objective import fitness
from evopose_pl.evolution.planner import Job, Planner
from evopose_pl.evolution.recorder import OPTIONAL_RESULT_FIELDS, RESULT_FIELDS, Recorder, result_problem
from evopose_pl.evolution.selection import select
from evopose_pl.evolution.settings import MAY_CHANGE_ON_RESUME, Settings, SettingsError, parse_ancestor
from evopose_pl.evolution.state import (
    COMPLETED,
    FAILED,
    PENDING,
    RESULT_FILE,
    STATE_FILE,
    STATE_VERSION,
    Individual,
    SearchState,
    SearchStopped,
    StateError,
    StateStore,
    load_state,
)
from evopose_pl.evolution.strategy import Evolution

__all__ = [
    "COMPLETED",
    "FAILED",
    "LOCK_FILE",
    "MAY_CHANGE_ON_RESUME",
    "OPTIONAL_RESULT_FIELDS",
    "PENDING",
    "RESULT_FIELDS",
    "RESULT_FILE",
    "STATE_FILE",
    "STATE_VERSION",
    "Evolution",
    "Individual",
    "Job",
    "Planner",
    "Recorder",
    "SearchLock",
    "SearchLocked",
    "SearchState",
    "SearchStopped",
    "Settings",
    "SettingsError",
    "StateError",
    "StateStore",
    "fitness",
    "load_state",
    "parse_ancestor",
    "prune_checkpoints",
    "result_problem",
    "select",
]
