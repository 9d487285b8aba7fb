"""Differential privacy for client-level DP: accounting and calibration.

The recipes are :func:`epsilon` (what ``rounds`` rounds of the sampled Gaussian mechanism
cost) and :func:`calibrate` (the noise multiplier that meets a budget). Both rest on
:func:`dp_event`, which states the rounds as a dp-accounting ``DpEvent``, and
:func:`epsilon_of`, which recomputes epsilon from such an event: a ledger records events,
never a running epsilon. See :mod:`fedshield.privacy.accounting` for the sampling schemes,
the neighbouring relations and the accountants.
"""

from __future__ import annotations

from fedshield.privacy.accounting import (
    ACCOUNTANTS,
    PLD_VALUE_DISCRETIZATION,
    SAMPLINGS,
    Accountant,
    Sampling,
    calibrate,
    dp_event,
    epsilon,
    epsilon_of,
)

__all__ = [
    "ACCOUNTANTS",
    "PLD_VALUE_DISCRETIZATION",
    "SAMPLINGS",
    "Accountant",
    "Sampling",
    "calibrate",
    "dp_event",
    "epsilon",
    "epsilon_of",
]
