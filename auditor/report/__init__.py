"""The audit report: results.json -> report.html, report.pdf, junit.xml, summary.md and figures."""

from auditor.report.render import RenderedReport, RenderError, ResultsError, render_report

__all__ = ["RenderError", "RenderedReport", "ResultsError", "render_report"]
