"""Exceptions that map to the CLI's exit codes."""


class UserError(Exception):
    """A mistake in the user's input (policy, file, layer name, image): exit code 2, one line, no traceback."""


class CheckError(Exception):
    """A check could not be computed; the audit records ERROR for it and goes on."""


class NonFiniteError(CheckError):
    """A model gave NaN or infinite logits, activations or gradients: the check is ERROR with this reason (which
    names the model and layer), the rest of the audit runs, and no NaN reaches results.json."""


def require_finite(values, what: str):
    """`values` (an array, first axis images) when every entry is finite, else NonFiniteError naming `what`."""
    import numpy as np

    arr = np.asarray(values)
    ok = np.isfinite(arr)
    if ok.all():
        return values
    n = len(arr) if arr.ndim else 1
    bad = int((~ok).reshape(n, -1).any(axis=1).sum()) if arr.ndim else 1
    raise NonFiniteError(f"{what}: NaN or infinite values for {bad} of {n} images")
