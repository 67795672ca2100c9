"""Data check: counts, formats, unreadable files, duplicates and patients shared across splits.

Its report (``report.json``, ``report.html``, the terminal summary) is :mod:`medcls.reports.data_check`.
"""

from ..sources import parse_options
from .scan import check_data, check_tables
from .summary import DataReport

__all__ = ["DataReport", "check_data", "check_tables", "parse_options"]
