"""Model reports: per-class quality, calibration with temperature scaling, the most confident mistakes and
fairness across groups, from a checkpoint's kept predictions, as HTML or Markdown with PNG figures."""

from resnetkit.report.groups import GroupAssignment, GroupFileError, ReportError, read_groups
from resnetkit.report.numbers import Calibration, calibration_by_halves, report_numbers
from resnetkit.report.render import FORMATS, report_from, write_report

__all__ = [
    "FORMATS",
    "Calibration",
    "GroupAssignment",
    "GroupFileError",
    "ReportError",
    "calibration_by_halves",
    "read_groups",
    "report_from",
    "report_numbers",
    "write_report",
]
