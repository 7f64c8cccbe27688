"""Attach steadygrad where people train: thin callbacks that build the same Monitor.

- :mod:`steadygrad.integrations.transformers`: ``SteadygradCallback`` for the Hugging Face
  ``Trainer`` (``Trainer(..., callbacks=[SteadygradCallback()])``).
- :mod:`steadygrad.integrations.lightning`: ``SteadygradCallback`` for ``lightning.Trainer``.
- accelerate needs no callback: ``steadygrad.Monitor`` takes the prepared optimizer.

Nothing here is imported by ``import steadygrad``: each module imports its framework.
"""
