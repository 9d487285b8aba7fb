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

Participant-level DP-FedAvg: :class:`ParticipantDP` (the settings a round applies),
:func:`clip_update` and :class:`AdaptiveClipping` (Andrew et al. 2021),
:func:`central_mean` and :func:`local_update` (central and local Gaussian noise), and
:class:`DistributedEncoding` (discrete Gaussian shares inside secure aggregation, after a
:class:`Rotation`).
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
from fedshield.privacy.clipping import AdaptiveClipping, clip_update
from fedshield.privacy.distributed import DistributedEncoding, Rotation
from fedshield.privacy.dpfedavg import ParticipantDP, central_mean, local_update
from fedshield.privacy.ledger import LedgerEntry, PrivacyBudget

__all__ = [
    "ACCOUNTANTS",
    "AdaptiveClipping",
    "DistributedEncoding",
    "ParticipantDP",
    "Rotation",
    "central_mean",
    "clip_update",
    "local_update",
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
