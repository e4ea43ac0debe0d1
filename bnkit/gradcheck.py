"""Numerical gradients by centred differences, and the relative error.

Use float64: with h = 1e-5 the truncation error is O(h**2) ~ 1e-10 and the
rounding error O(eps_machine / h) ~ 1e-11, so a correct analytic gradient
typically agrees to a relative error below 1e-7. float32 cannot get there.
"""
from typing import Callable, Optional

import numpy as np


def numerical_gradient(f: Callable[[np.ndarray], object], x: np.ndarray, dout: Optional[np.ndarray] = None,
                       h: float = 1e-5) -> np.ndarray:
    """Gradient of f at x by centred differences.

    - f: function of the array x. If dout is None, f returns a scalar and
      the result is df/dx. Otherwise f returns an array shaped like dout and
      the result is the gradient of sum(f(x) * dout), i.e. what a backward
      pass returns for the upstream gradient dout.
    - x: float array, perturbed in place one element at a time and restored
      (also if f raises).

    Returns an array shaped like x.
    """
    if not np.issubdtype(np.asarray(x).dtype, np.floating):
        raise TypeError(f"x must be a float array, got dtype {np.asarray(x).dtype}")
    def g():
        return float(f(x)) if dout is None else float(np.sum(f(x) * dout))

    grad = np.zeros_like(x, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        i = it.multi_index
        old = x[i]
        try:
            x[i] = old + h
            plus = g()
            x[i] = old - h
            minus = g()
        finally:
            x[i] = old
        grad[i] = (plus - minus) / (2 * h)
        it.iternext()
    return grad


def eval_numerical_gradient_array(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, df: np.ndarray,
                                  h: float = 1e-5) -> np.ndarray:
    """CS231n's name for `numerical_gradient(f, x, df, h)`."""
    return numerical_gradient(f, x, df, h)


def rel_error(a, b) -> float:
    """max |a - b| / max(1e-8, |a| + |b|), elementwise: CS231n's measure.

    Around 1e-7 or below: correct. Above 1e-3: almost surely a bug.
    Shapes must match exactly (no broadcasting).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error needs equal shapes, got {a.shape} and {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))
