"""Low-dimensional error feedback: the readout's error reaches the E spikes through a fixed matrix ``B``.

In exact BPTT the readout ``u' = decay u + s_e w_out`` hands the E spikes the
adjoint ``l_u w_out^T``. With feedback alignment (``TrainConfig.feedback_rank
= d >= 1``) it hands them ``l_u B^T`` instead, ``B`` (n_e, n_classes) a fixed
random matrix of rank ``d``; everything else stays exact, the gradient of
``w_out`` itself (``sum_t s_e(t)^T l_u(t)``) included.

``B = U V^T`` with ``U`` (n_e, d) and ``V`` (n_classes, d) standard Gaussian,
drawn from the run's seed on a stream of its own (``SeedSequence([seed,
FEEDBACK_STREAM])``: the weights draw from ``[seed, 1, k]``, the inputs from
``[seed, 2, k]``, the sample order from ``[seed, 1..3]``), then scaled to the
Frobenius norm of the run's initial readout ``w_out`` (the draw of the same
seed; :func:`biosim.weights.init_weights`), so the feedback starts as strong
as the exact readout term. Seed and network parameters fix it: a resumed run
derives the same ``B``.

The engines take ``B`` as ``feedback=`` (None: exact). The eager engine routes
the readout's product through :class:`FeedbackReadout`; the fused engine uses
``[w_ei, B]`` in the adjoint's spike products (docs/engine.md).
"""

from __future__ import annotations

import numpy as np
import torch

from biosim.params import NetworkParams
from biosim.weights import init_weights

__all__ = ["FEEDBACK_STREAM", "FeedbackReadout", "check_feedback", "feedback_matrix", "readout_increment"]

FEEDBACK_STREAM = 4
"""Tag of the feedback matrix's random stream, ``SeedSequence([seed, FEEDBACK_STREAM])``."""


def feedback_matrix(params: NetworkParams, seed: int, rank: int) -> np.ndarray:
    """The fixed feedback matrix ``B`` (n_e, n_classes), float64, of rank ``rank`` (module docstring).

    Raises ``ValueError`` for a rank outside ``1 .. min(n_e, n_classes)``.
    """
    c = params.connectivity
    largest = min(c.n_e, c.n_classes)
    if not (isinstance(rank, int) and 1 <= rank <= largest):
        raise ValueError(f"feedback rank must be an int in 1 .. min(n_e, n_classes) = {largest}, got {rank!r}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, FEEDBACK_STREAM]))
    left = rng.standard_normal((c.n_e, rank))
    right = rng.standard_normal((c.n_classes, rank))
    product = left @ right.T
    target = float(np.linalg.norm(init_weights(params, seed).w_out))
    return product * (target / float(np.linalg.norm(product)))


def check_feedback(feedback: torch.Tensor | None, w_out: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``feedback`` is None or has the shape, dtype and device of ``w_out``."""
    if feedback is None:
        return
    if tuple(feedback.shape) != tuple(w_out.shape) or feedback.dtype != w_out.dtype or feedback.device != w_out.device:
        raise ValueError(
            f"feedback: expected a {tuple(w_out.shape)} {w_out.dtype} tensor on {w_out.device} (the shape of w_out), "
            f"got {tuple(feedback.shape)} {feedback.dtype} on {feedback.device}"
        )


class FeedbackReadout(torch.autograd.Function):
    """``spikes @ w_out`` forward; backward ``grad @ B^T`` to the spikes and the exact ``spikes^T @ grad`` to
    ``w_out`` (the two products autograd's ``mm`` makes, with ``B`` in the place of ``w_out`` in the first)."""

    @staticmethod
    def forward(ctx, spikes: torch.Tensor, w_out: torch.Tensor, feedback: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(spikes, feedback)
        return spikes @ w_out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        spikes, feedback = ctx.saved_tensors
        grad_spikes = grad.mm(feedback.t()) if ctx.needs_input_grad[0] else None
        grad_w_out = spikes.t().mm(grad) if ctx.needs_input_grad[1] else None
        return grad_spikes, grad_w_out, None


def readout_increment(spikes: torch.Tensor, w_out: torch.Tensor, feedback: torch.Tensor | None) -> torch.Tensor:
    """The readout's increment ``spikes @ w_out``, its spike gradient through ``feedback`` where one is given."""
    return spikes @ w_out if feedback is None else FeedbackReadout.apply(spikes, w_out, feedback)
