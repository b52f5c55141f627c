"""Reporting: everything that reads run records and writes leaderboards, tables, plots, CKA figures,
qualitative and Grad-CAM grids and report.html. It reads results folders and imports nothing of
the orchestration (bench.study); the rest of the harness calls it through `write_reports` (every
report of a results folder) and `where` (the lines that say where they are)."""

from bench.report.aggregate import where, write_reports

__all__ = ["where", "write_reports"]
