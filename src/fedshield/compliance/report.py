"""The compliance report: controls decided from evidence, as JSON and as one HTML file.

:func:`build_report` is pure (a snapshot in, a :class:`Report` out). :func:`render_html`
makes a self-contained page (inline CSS, charts as inline PNG images, no script and no
outside reference, so it opens the same offline and in an archive years later).
:func:`charts` draws epsilon over rounds and participation per round with matplotlib.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedshield.compliance.controls import CONTROLS, ControlResult, Evidence, evaluate
from fedshield.compliance.evidence import collect
from fedshield.compliance.snapshot import Snapshot

__all__ = ["Report", "build_report", "charts", "render_html"]

REPORT_VERSION = 1


@dataclass(frozen=True)
class Report:
    """Every control's status, the evidence behind it, and where it was read."""

    workdir: str
    federation: str | None
    generated_at: str
    evidence: tuple[Evidence, ...]
    controls: tuple[ControlResult, ...]
    sources: Mapping[str, str | None]

    @property
    def failed(self) -> list[ControlResult]:
        """The controls that fail."""
        return [c for c in self.controls if c.status == "fail"]

    def counts(self) -> dict[str, int]:
        """How many controls pass, warn and fail."""
        out = {"pass": 0, "warn": 0, "fail": 0}
        for control in self.controls:
            out[control.status] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        """Return the whole report as JSON-ready data."""
        return {
            "report_version": REPORT_VERSION,
            "federation": self.federation,
            "workdir": self.workdir,
            "generated_at": self.generated_at,
            "summary": self.counts(),
            "controls": [c.to_json() for c in self.controls],
            "evidence": [e.to_json() for e in self.evidence],
            "sources": dict(self.sources),
        }


def build_report(snapshot: Snapshot) -> Report:
    """Decide every control of :data:`~fedshield.compliance.controls.CONTROLS`."""
    evidence = collect(snapshot)
    return Report(
        workdir=snapshot.workdir,
        federation=snapshot.federation,
        generated_at=snapshot.now.isoformat(),
        evidence=tuple(evidence),
        controls=tuple(evaluate(evidence, CONTROLS)),
        sources={
            "database": snapshot.workdir + "/fedshield.db",
            "config": snapshot.config_source,
            "certificates": snapshot.certificates_source,
        },
    )


# -- charts ------------------------------------------------------------------------------------


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def charts(snapshot: Snapshot) -> dict[str, str]:
    """Base64 PNGs: ``epsilon`` (spent over rounds) and ``participation`` (per round).

    A chart with nothing to show is left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    privacy = snapshot.privacy
    if privacy is not None and any(p.dp and p.epsilon is not None for p in privacy.points):
        figure, axes = plt.subplots(figsize=(7.0, 3.4))
        try:
            budgets: set[float] = set()
            for name in privacy.participants:
                series = privacy.series(name)
                if series:
                    axes.plot(
                        [p.round for p in series],
                        [p.epsilon or 0.0 for p in series],
                        marker="o",
                        markersize=3,
                        label=name,
                    )
                    budgets.update(p.budget for p in series if p.budget is not None)
            for budget in sorted(budgets):
                axes.axhline(budget, color="crimson", linestyle="--", linewidth=1)
            axes.set_xlabel("round")
            axes.set_ylabel("epsilon spent")
            axes.set_title("Privacy budget spent (dashed: budget)")
            axes.grid(alpha=0.3)
            if len(privacy.participants) <= 12:
                axes.legend(fontsize=7, ncol=2)
            out["epsilon"] = _png(figure)
        finally:
            plt.close(figure)
    fits = [r for r in snapshot.rounds if r.kind == "fit"]
    if fits:
        figure, axes = plt.subplots(figsize=(7.0, 3.0))
        try:
            labels = [f"{r.number}.{r.attempt}" if r.attempt > 1 else str(r.number) for r in fits]
            answered = [len(r.answered) for r in fits]
            dropped = [len(r.dropped) for r in fits]
            positions = list(range(len(fits)))
            axes.bar(positions, answered, color="seagreen", label="answered")
            axes.bar(positions, dropped, bottom=answered, color="darkorange", label="dropped")
            axes.set_xticks(positions, labels, fontsize=7)
            axes.set_xlabel("round (.attempt)")
            axes.set_ylabel("participants")
            axes.set_title("Participation per round")
            axes.legend(fontsize=7)
            out["participation"] = _png(figure)
        finally:
            plt.close(figure)
    return out


# -- HTML --------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #222; }
h1 { margin-bottom: 0.2rem; } .meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; width: 100%; margin: 1rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.35rem 0.55rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.pass { background: #e3f4e6; } .warn { background: #fff3cd; } .fail { background: #f8d7da; }
.badge { font-weight: 700; text-transform: uppercase; font-size: 0.8rem; }
.summary span { display: inline-block; margin-right: 1rem; padding: 0.3rem 0.7rem; }
details { margin: 0.3rem 0; } pre { white-space: pre-wrap; font-size: 0.8rem; }
.note { color: #555; font-size: 0.85rem; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _facts(facts: Mapping[str, Any]) -> str:
    text = json.dumps(facts, indent=2, sort_keys=True, default=str)
    if len(text) > 20_000:
        text = text[:20_000] + "\n... (cut; see the JSON report)"
    return f"<details><summary>facts</summary><pre>{_e(text)}</pre></details>"


def render_html(report: Report, images: Mapping[str, str]) -> str:
    """Render the report as one self-contained HTML page."""
    counts = report.counts()
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>fedshield compliance report: {_e(report.federation or report.workdir)}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>fedshield compliance report</h1>",
        f"<p class='meta'>federation <b>{_e(report.federation or 'unknown')}</b> · "
        f"workdir {_e(report.workdir)} · generated {_e(report.generated_at)}</p>",
        "<p class='summary'>"
        + "".join(
            f"<span class='{status}'><span class='badge'>{status}</span> {counts[status]}</span>"
            for status in ("pass", "warn", "fail")
        )
        + "</p>",
        "<p class='note'>Each control is decided from the evidence below it: fail if any "
        "evidence fails, warn if any warns or is missing, pass otherwise. This is evidence "
        "about the system, not a legal opinion.</p>",
        "<h2>Controls</h2><table><tr><th>control</th><th>status</th><th>evidence</th></tr>",
    ]
    for result in report.controls:
        items = "".join(
            f"<li class='{e.status}'><b>{_e(e.id)}</b>: {_e(e.summary)}</li>"
            for e in result.evidence
        )
        if result.missing:
            items += f"<li class='warn'>missing evidence: {_e(', '.join(result.missing))}</li>"
        note = f"<div class='note'>{_e(result.control.note)}</div>" if result.control.note else ""
        parts.append(
            f"<tr id='{_e(_anchor(result.control.key))}'><td><b>{_e(result.control.key)}</b>"
            f"<br>{_e(result.control.title)}{note}</td>"
            f"<td class='{result.status}'><span class='badge'>{result.status}</span></td>"
            f"<td><ul>{items}</ul></td></tr>"
        )
    parts.append("</table>")
    if images:
        parts.append("<h2>Charts</h2>")
        for key, alt in (
            ("epsilon", "epsilon spent over rounds per participant"),
            ("participation", "participants answered and dropped per round"),
        ):
            if key in images:
                parts.append(
                    f"<p><img alt='{_e(alt)}' src='data:image/png;base64,{images[key]}'></p>"
                )
    parts.append(
        "<h2>Evidence</h2><table><tr><th>evidence</th><th>status</th><th>finding</th></tr>"
    )
    for item in report.evidence:
        parts.append(
            f"<tr id='{_e(item.id)}'><td><b>{_e(item.title)}</b><br>"
            f"<span class='note'>{_e(item.id)} · from {_e(', '.join(item.sources))}</span></td>"
            f"<td class='{item.status}'><span class='badge'>{item.status}</span></td>"
            f"<td>{_e(item.summary)}{_facts(item.facts)}</td></tr>"
        )
    parts.append("</table>")
    parts.append(
        "<h2>Sources</h2><ul>"
        + "".join(
            f"<li>{_e(k)}: {_e(v if v is not None else 'not available')}</li>"
            for k, v in report.sources.items()
        )
        + "</ul></body></html>"
    )
    return "\n".join(parts)


def _anchor(key: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in key).strip("-").lower()


def statuses(results: Sequence[ControlResult]) -> dict[str, str]:
    """``{control key: status}``, for the CLI's summary."""
    return {r.control.key: r.status for r in results}
