"""Rounds: the sans-I/O state machine, the coordinator shell, participants, simulation.

:mod:`~fedshield.federation.round` is pure; :mod:`~fedshield.federation.coordinator` adds
persistence; :mod:`~fedshield.federation.simulation` runs everything in one process and
:mod:`~fedshield.federation.service` / :mod:`~fedshield.federation.agent` over HTTPS.
"""
