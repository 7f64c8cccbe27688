"""Induced training instabilities and healthy controls, each with its true cause and place.

An independent yardstick for steadygrad's diagnosis (``bench/diagnosis_accuracy.py``): plain
PyTorch runs that attach steadygrad only through its public one-line attach. Scenarios flagged
``heldout`` are kept out of detector tuning.
"""

from scenarios import (  # noqa: F401  (registers the scenarios)
    cases_gpt,
    cases_heldout,
    cases_heldout3,
    cases_heldout4,
    cases_heldout5,
    cases_heldout6,
    cases_heldout7,
    cases_heldout8,
    cases_heldout9,
    cases_heldout10,
    cases_heldout11,
    cases_heldout12,
    cases_heldout13,
    cases_heldout14,
    cases_heldout15,
    cases_heldout16,
    cases_heldout17,
    cases_heldout18,
    cases_heldout19,
    cases_heldout20,
    cases_heldout21,
    cases_heldout22,
    cases_heldout23,
    cases_heldout24,
    cases_heldout25,
    cases_heldout26,
    cases_heldout27,
    cases_heldout28,
    cases_heldout29,
    cases_heldout30,
    cases_heldout31,
    cases_heldout32,
    cases_heldout33,
    cases_heldout34,
    cases_heldout35,
    cases_heldout36,
    cases_heldout37,
    cases_heldout38,
    cases_heldout39,
    cases_heldout40,
    cases_heldout41,
    cases_heldout42,
    cases_heldout43,
    cases_heldout44,
    cases_heldout45,
    cases_heldout46,
    cases_heldout47,
    cases_heldout48,
    cases_heldout50,
    cases_mlp,
    cases_other,
)
from scenarios.common import CAUSES, SCENARIOS, Scenario

__all__ = ["CAUSES", "SCENARIOS", "Scenario"]
