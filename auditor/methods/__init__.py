"""Concept methods: each a pure `run(check, ctx) -> CheckResult`."""

from auditor.methods import artifact, tcav

METHODS = {"tcav": tcav.run, "artifact_probe": artifact.run}
