"""Data check: counts, formats, unreadable files, duplicates and patients shared across splits, and its report."""

from .report import DataReport
from .scan import check_data, check_tables, parse_options

__all__ = ["DataReport", "check_data", "check_tables", "parse_options"]
