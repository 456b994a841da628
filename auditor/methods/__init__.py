"""Concept methods: each a pure `run(check, ctx) -> CheckResult`.

VALIDATORS: for methods that read files of their own (beyond the class, concept and random folders),
`validate(check, policy, pre, where, problems)` appends one line per problem during `prepare`, before any
computation starts, and returns the image sets it read (named after the check), for the provenance table.
"""

from auditor.methods import artifact, invert, rsvc, sacv, tcav

METHODS = {
    "tcav": tcav.run,
    "artifact_probe": artifact.run,
    "sacv": sacv.run,
    "rsvc": rsvc.run,
    "invert": invert.run,
}
VALIDATORS = {"sacv": sacv.validate, "rsvc": rsvc.validate, "invert": invert.validate}
