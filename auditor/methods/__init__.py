"""Concept methods: each a pure `run(check, ctx) -> CheckResult`."""

from auditor.methods import tcav

METHODS = {"tcav": tcav.run}
