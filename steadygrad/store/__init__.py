"""One SQLite database per run: scalars in long form, findings, actions, and the run's status."""

from steadygrad.store.background import LostSteps
from steadygrad.store.errors import StorageWarning, UnreadableRunError
from steadygrad.store.run import Run, load
from steadygrad.store.schema import DB_NAME as DB_NAME_FILE
from steadygrad.store.writer import RunStore

__all__ = [
    "DB_NAME_FILE",
    "LostSteps",
    "Run",
    "RunStore",
    "StorageWarning",
    "UnreadableRunError",
    "load",
]
