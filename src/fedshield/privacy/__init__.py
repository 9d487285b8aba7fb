"""Differential privacy: accounting, calibration and a site's privacy ledger.

The recipes are :func:`epsilon` (what ``rounds`` rounds of the sampled Gaussian mechanism
cost) and :func:`calibrate` (the noise multiplier that meets a budget). Both rest on
:func:`dp_event`, which states the rounds as a dp-accounting ``DpEvent``, and
:func:`epsilon_of`, which recomputes epsilon from such an event (:func:`compose` joins
events that differ): a ledger records events, never a running epsilon. A site's ledger
(:mod:`fedshield.privacy.ledger`: a :class:`PrivacyBudget` and one :class:`LedgerEntry`
per trained round) is checked before each round and refuses one that would exceed the
budget. See :mod:`fedshield.privacy.accounting` for the sampling schemes, the
neighbouring relations and the accountants.
"""

from __future__ import annotations

from fedshield.privacy.accounting import (
    ACCOUNTANTS,
    PLD_VALUE_DISCRETIZATION,
    SAMPLINGS,
    Accountant,
    Sampling,
    calibrate,
    calibrate_event,
    compose,
    dp_event,
    epsilon,
    epsilon_of,
)
from fedshield.privacy.ledger import LedgerEntry, PrivacyBudget

__all__ = [
    "ACCOUNTANTS",
    "LedgerEntry",
    "PLD_VALUE_DISCRETIZATION",
    "PrivacyBudget",
    "SAMPLINGS",
    "Accountant",
    "Sampling",
    "calibrate",
    "calibrate_event",
    "compose",
    "dp_event",
    "epsilon",
    "epsilon_of",
]
