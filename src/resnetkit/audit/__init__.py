"""The data audit (`resnetkit audit`): `run_audit(AuditOptions(...))` finds the problems, `write_report(findings)`
writes report.html, audit.json and the CSVs. Imported lazily: the CLI reads `audit.options` alone."""

from __future__ import annotations

from typing import Any

__all__ = ["AuditOptions", "Findings", "run_audit", "write_report"]


def __getattr__(name: str) -> Any:
    if name == "AuditOptions":
        from resnetkit.audit.options import AuditOptions

        return AuditOptions
    if name == "write_report":
        from resnetkit.audit.report import write_report

        return write_report
    if name in ("Findings", "run_audit"):
        from resnetkit.audit import run

        return getattr(run, name)
    raise AttributeError(f"module 'resnetkit.audit' has no attribute {name!r}")
