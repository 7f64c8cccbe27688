"""Report: a terminal summary and a self-contained HTML page, built from recorded runs only."""

from steadygrad.report.html import write_html
from steadygrad.report.terminal import print_summary, summary

__all__ = ["print_summary", "summary", "write_html"]
