"""concept-auditor: concept-based audits of two image models into a signed PDF report."""

__version__ = "0.1.0"
