"""Compliance evidence: HIPAA and GDPR controls decided from the audit log and the ledgers.

An oversight layer that reads what the federation recorded (the audit log, the privacy
ledger, the model registry, the certificate store and the config) and never gradients
or weights' values:

* :mod:`~fedshield.compliance.snapshot` reads a coordinator workdir into plain data;
* :mod:`~fedshield.compliance.evidence` decides each fact (pure);
* :mod:`~fedshield.compliance.controls` maps the facts to HIPAA 45 CFR 164.312 and GDPR
  controls and decides each control (pure);
* :mod:`~fedshield.compliance.report` renders JSON and a self-contained HTML page.

``fedshield compliance report`` and ``fedshield compliance check`` are the CLI.
"""

from fedshield.compliance.controls import (
    CONTROLS,
    Control,
    ControlResult,
    Evidence,
    Status,
    evaluate,
)
from fedshield.compliance.report import Report, build_report, charts, render_html
from fedshield.compliance.snapshot import Snapshot, read_snapshot, resolve_workdir

__all__ = [
    "CONTROLS",
    "Control",
    "ControlResult",
    "Evidence",
    "Report",
    "Snapshot",
    "Status",
    "build_report",
    "charts",
    "evaluate",
    "read_snapshot",
    "render_html",
    "resolve_workdir",
]
