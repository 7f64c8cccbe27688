"""What the store raises and warns: a run that cannot be read, and storage faults while writing."""

from __future__ import annotations

import logging

logger = logging.getLogger("steadygrad")


class UnreadableRunError(ValueError):
    """A run database that exists but cannot be read (empty, corrupt, not a steadygrad run).

    The message names the file and what is wrong with it.
    """


class StorageWarning(RuntimeWarning):
    """The run store could not write (disk full, read-only, deleted, locked); training went on."""
