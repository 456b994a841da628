"""The head of an ONNX model from one layer to the logits, with derivatives by central finite differences
(auditor.models.onnx_model builds it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import onnxruntime as ort

from auditor.models.base import LayerInfo
from auditor.models.onnx_graph import _run_batched

if TYPE_CHECKING:
    from auditor.models.onnx_model import OnnxModel

# Rows (perturbed activations) per head run in the finite differences, and the memory those rows may take.
MAX_HEAD_ROWS = 4096
HEAD_BYTES_BUDGET = 256 * 2**20
# Relative step of the central differences: each perturbation moves the activation of one image by
# FD_RELATIVE_STEP times its own norm (see `_steps` for why this value).
FD_RELATIVE_STEP = 5e-4


# --------------------------------------------------------------------------------------------- the head


class OnnxHead:
    """The network from one layer to the logits, as a cut-out ONNX subgraph.

    Derivatives are central finite differences (onnxruntime inference sessions have no gradients): every
    (image, direction, sign) perturbation of the activations becomes one row, and rows are stacked into runs of up
    to MAX_HEAD_ROWS (and HEAD_BYTES_BUDGET bytes), so the cost is a few large runs, not a loop per image.

    Parameters
    ----------
    model : the model the head belongs to (computes the extra inputs from the images).
    layer : the layer the head starts at.
    session : the head's session, or None for the identity head of the logits layer.
    extras : tensors besides the layer that the head needs (skip paths), computed from `x` by the full model.
    """

    def __init__(
        self, model: OnnxModel, layer: LayerInfo, session: ort.InferenceSession | None, extras: list[str]
    ) -> None:
        self.layer = layer.name
        self.shape = layer.shape
        self.extras = extras
        self._model = model
        self._session = session
        self._size = int(np.prod(self.shape))

    # ----------------------------------------------------------------------------------------- plumbing

    def _check_acts(self, acts: np.ndarray) -> np.ndarray:
        acts = np.asarray(acts)
        if tuple(acts.shape[1:]) != self.shape:
            raise ValueError(f"activations of {self.layer!r} must be (n, *{self.shape}), got {acts.shape}")
        return np.ascontiguousarray(acts, dtype=np.float32)

    def _extra_values(self, x: np.ndarray | None, n: int) -> dict[str, np.ndarray]:
        """{extra tensor: (n, ...)} from one run of the full model on the images `x` (not read if no extras)."""
        if not self.extras:
            return {}
        if x is None or len(x) != n:
            raise ValueError(f"the head at {self.layer!r} needs the {n} input images (skip paths: {self.extras})")
        return self._model._outputs(x, self.extras)

    def _run(self, rows: np.ndarray, extras: dict[str, np.ndarray]) -> np.ndarray:
        """Logits (m, K) for activation rows (m, *shape) with matching extra rows, in runs of `_rows_per_run`."""
        if self._session is None:
            return rows.reshape(len(rows), -1).astype(np.float32, copy=False)
        model = self._model
        feeds = {self.layer: rows, **extras}
        (logits,) = _run_batched(
            self._session, feeds, [model._output], [(model._num_classes,)], self._rows_per_run(), model._fixed_batch
        )
        return logits

    def _rows_per_run(self) -> int:
        """How many rows fit one head run (even: each + row is paired with its - row)."""
        row_bytes = 4 * self._size
        for name in self.extras:
            info = self._model._layers.get(name)
            row_bytes += 4 * int(np.prod(info.shape if info is not None else self._model.input_shape))
        rows = min(MAX_HEAD_ROWS, HEAD_BYTES_BUDGET // max(row_bytes, 1))
        return max(2, rows - rows % 2)

    @staticmethod
    def _steps(acts_flat: np.ndarray, direction_norms: np.ndarray) -> np.ndarray:
        """Finite-difference steps eps (n, k) with eps * |v_j| = FD_RELATIVE_STEP * |a_i|.

        Equivalently eps = FD_RELATIVE_STEP * rms(a_i) / rms(v_j): each perturbation is a fixed fraction of the
        image's own activation, whatever the layer's units and the direction's norm.

        Why 5e-4. The graph is float32 and onnxruntime has no float64 Conv, so the step trades two errors:
        - rounding: each logit carries noise of a few to tens of ulps of the magnitudes summed inside the head;
          divided by the step, it grows as the step shrinks (noise-dominated below ~2e-4 on the test networks);
        - kinks: a ReLU/MaxPool head is piecewise linear, so central differences are exact unless a ReLU's zero
          or a MaxPool near-tie lies within the step, and then return the slope averaged over the step; the
          share of such units grows with the step (the same step in float64 torch gives the same error, so at
          5e-4 and above this, not rounding, is the error).
        Measured against torch autograd, with the error relative to |grad| * |v| (the largest the derivative can
        be): median ~1e-5 to 1e-4; the largest are images with a kink within the step, ~1e-3 on a 16-layer
        residual net and up to ~3e-2 on 3-layer test nets (where one unit is a large share of the gradient).
        Steps from 3e-4 to 1e-3 do about equally well overall; 5e-4 sits in the middle. For channel-pooled
        directions (one per channel, over all positions) in deep random-weight ReLU nets the error is ~1e-2 of
        the pooled gradient's norm at every step: kinks are too dense for float32 central differences there.
        """
        scale = np.linalg.norm(acts_flat.astype(np.float64), axis=1)
        # All-zero activations (a dead image): step as if the activation had unit rms.
        scale = np.where(scale > 0, scale, np.sqrt(acts_flat.shape[1]))
        norms = np.where(direction_norms > 0, direction_norms, 1.0)  # zero direction: rows equal, derivative 0
        return FD_RELATIVE_STEP * scale[:, None] / norms[None, :]

    def _central_differences(
        self,
        acts_flat: np.ndarray,
        extras: dict[str, np.ndarray],
        target: int,
        steps: np.ndarray,
        perturb: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None],
    ) -> np.ndarray:
        """(h(a_i + eps_ij v_j) - h(a_i - eps_ij v_j)) / (2 eps_ij) of logit[target], for all i, j.

        The n * k pairs of rows are laid out flat (pair p is image p // k, direction p % k) and cut into runs of
        `_rows_per_run` rows: the + rows of a run first, then its - rows.

        Parameters
        ----------
        acts_flat : (n, d) float32 activations, flattened.
        extras : {tensor: (n, ...)} extra head inputs, repeated for every row of their image.
        steps : (n, k) positive step sizes eps_ij.
        perturb : (rows (m, d) float32, image indices i (m,), direction indices j (m,), signed steps (m,)) -> None;
            adds step * v_j (or v_ij, for per-image directions) to each row in place.

        Returns
        -------
        (n, k) float64 directional derivatives.
        """
        n, k = steps.shape
        pairs = self._rows_per_run() // 2
        result = np.zeros(n * k)
        for start in range(0, n * k, pairs):
            flat = np.arange(start, min(start + pairs, n * k))
            i, j = flat // k, flat % k
            step = steps[i, j]
            m = len(flat)
            rows = np.concatenate([acts_flat[i], acts_flat[i]])
            perturb(rows[:m], i, j, step)
            perturb(rows[m:], i, j, -step)
            feeds = {name: np.concatenate([value[i], value[i]]) for name, value in extras.items()}
            logits = self._run(rows.reshape(-1, *self.shape), feeds)[:, target].astype(np.float64)
            result[flat] = (logits[:m] - logits[m:]) / (2 * step)
        return result.reshape(n, k)

    def _check_target(self, target: int) -> int:
        classes = self._model._num_classes
        if not 0 <= int(target) < classes:
            raise ValueError(f"target class {target} out of range [0, {classes})")
        return int(target)

    # ----------------------------------------------------------------------------------------- the protocol

    def logits(self, acts: np.ndarray, x: np.ndarray) -> np.ndarray:
        """(n, *layer_shape) activations (+ the images x, read only for skip paths) -> (n, K) float32 logits."""
        acts = self._check_acts(acts)
        return self._run(acts, self._extra_values(x, len(acts))).astype(np.float32, copy=False)

    def directional(self, acts: np.ndarray, x: np.ndarray, directions: np.ndarray, target: int) -> np.ndarray:
        """Directional derivatives of logit[target] along each direction.

        Parameters
        ----------
        acts : (n, *layer_shape) activations of the images `x`.
        x : (n, C, H, W) images; read only if the head has skip paths (extras).
        directions : (k, *layer_shape) directions (any norm; the derivative scales with it).
        target : class index.

        Returns
        -------
        (n, k) float32: d logit[target] / d acts . direction, by central finite differences.
        """
        acts = self._check_acts(acts)
        target = self._check_target(target)
        directions = np.asarray(directions)
        if tuple(directions.shape[1:]) != self.shape:
            raise ValueError(f"directions must be (k, *{self.shape}), got {directions.shape}")
        dirs = directions.astype(np.float64).reshape(-1, self._size)  # float64 for the norms
        n = len(acts)
        if self._session is None:  # identity head: the derivative of logit[target] is the direction's coordinate
            return np.broadcast_to(dirs[:, target].astype(np.float32), (n, len(dirs))).copy()
        acts_flat = acts.reshape(n, -1)
        steps = self._steps(acts_flat, np.linalg.norm(dirs, axis=1))

        dirs32 = dirs.astype(np.float32)

        def along(rows: np.ndarray, _i: np.ndarray, j: np.ndarray, step: np.ndarray) -> None:
            # The sum is rounded to float32 (u |a| per coordinate), as any float32 input to the graph must be.
            rows += step[:, None].astype(np.float32) * dirs32[j]

        extras = self._extra_values(x, n)
        return self._central_differences(acts_flat, extras, target, steps, along).astype(np.float32)

    def directional_per_image(
        self, acts: np.ndarray, x: np.ndarray, directions: np.ndarray, target: int
    ) -> np.ndarray:
        """Like `directional`, with directions of their own for every image: directions (n, k, *layer_shape) ->
        (n, k). SACV needs it: its direction for image i is the CAV restricted to the positions where the
        concept's relevance on image i is positive, a different direction per image."""
        acts = self._check_acts(acts)
        target = self._check_target(target)
        n = len(acts)
        directions = np.asarray(directions)
        if directions.shape[0] != n or tuple(directions.shape[2:]) != self.shape:
            raise ValueError(f"directions must be ({n}, k, *{self.shape}), got {directions.shape}")
        k = directions.shape[1]
        dirs = directions.reshape(n, k, self._size)
        if self._session is None:
            return dirs[:, :, target].astype(np.float32)
        acts_flat = acts.reshape(n, -1)
        norms = np.linalg.norm(dirs.astype(np.float64), axis=2)  # (n, k)
        scale = self._steps(acts_flat, np.ones(1))[:, 0] / FD_RELATIVE_STEP  # |a_i|, as `_steps` defines it
        steps = FD_RELATIVE_STEP * scale[:, None] / np.where(norms > 0, norms, 1.0)
        dirs32 = dirs.astype(np.float32)

        def along(rows: np.ndarray, i: np.ndarray, j: np.ndarray, step: np.ndarray) -> None:
            rows += step[:, None].astype(np.float32) * dirs32[i, j]

        extras = self._extra_values(x, n)
        return self._central_differences(acts_flat, extras, target, steps, along).astype(np.float32)

    def grad(self, acts: np.ndarray, x: np.ndarray, target: int) -> np.ndarray:
        """Full gradient d logit[target] / d acts, shape (n, *layer_shape) float32.

        Expensive: central differences along every coordinate (the identity basis) cost 2 * n * prod(layer_shape)
        head rows. Meant for small layers; prefer `directional` for large ones.
        """
        acts = self._check_acts(acts)
        target = self._check_target(target)
        n = len(acts)
        if self._session is None:
            out = np.zeros((n, self._size), np.float32)
            out[:, target] = 1.0
            return out.reshape(n, *self.shape)
        acts_flat = acts.reshape(n, -1)
        steps = self._steps(acts_flat, np.ones(self._size))

        def along_axis(rows: np.ndarray, _i: np.ndarray, j: np.ndarray, step: np.ndarray) -> None:
            rows[np.arange(len(rows)), j] += step  # the identity basis is never built: coordinate j of each row

        extras = self._extra_values(x, n)
        grads = self._central_differences(acts_flat, extras, target, steps, along_axis)
        return grads.astype(np.float32).reshape(n, *self.shape)
