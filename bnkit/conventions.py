"""The batch-norm conventions every bnkit backend follows, stated once.

numpy (`staged`, `fast`, `norms`, `BatchNorm`), the torch Function
(`bnkit.torch`) and the Triton wrappers (`bnkit.triton_kernels`) all take
their defaults, running-statistics update and input validation from here, so
they give the same numbers and refuse bad input with the same error types and
messages (`tests/test_cross_backend.py` holds them to it).

The conventions are PyTorch's:

* statistics per channel, over every axis but the channel axis;
* normalisation uses the biased batch variance, var = mean((x - mean)**2);
* running_var is updated with the unbiased one, n / (n - 1) * var;
* running = (1 - factor) * running + factor * batch, where the factor is
  `momentum`, or, for momentum=None, the cumulative average
  1 / num_batches_tracked (counting the batch being added). Every backend
  accepts momentum=None: the numpy ones keep `num_batches_tracked` in
  bn_param or on the layer; the torch and Triton functional forms take it as
  an argument (a 0-d integer tensor, updated in place like
  nn.BatchNorm's buffer) and refuse momentum=None without it;
* num_batches_tracked is incremented by every training step that tracks
  running statistics.

Validation works on shapes, dtypes' names and plain numbers, so it serves
numpy arrays and torch tensors alike. Each check raises with a message that
names the problem and the shapes involved, so that a wrong shape never
broadcasts silently into a wrong answer.
"""
import math
import operator
from numbers import Real
from typing import Optional, Tuple

EPS = 1e-5  # added to the variance inside the square root
MOMENTUM = 0.1  # the default momentum of every backend (PyTorch's)
MODES = {"train": "train", "eval": "eval", "test": "eval"}  # 'test' is CS231n's name for eval


def momentum_factor(momentum: Optional[float], num_batches_tracked: int) -> float:
    """The weight of the new batch in the running statistics.

    - momentum: a number in [0, 1], or None for the cumulative average.
    - num_batches_tracked: batches seen *including* the one being added (>= 1).
    """
    if momentum is None:
        return 1.0 / num_batches_tracked
    return float(momentum)


def update_running(running_mean, running_var, mean, var, n, factor):
    """PyTorch's running-statistics recurrence; returns (new_mean, new_var).

    - running_mean, running_var: (C,) current running statistics.
    - mean, var: (C,) batch mean and *biased* batch variance.
    - n: values per channel in the batch (> 1); running_var takes the unbiased
      variance n / (n - 1) * var.
    - factor: from `momentum_factor`.

    Pure arithmetic on its arguments, so it serves numpy arrays and torch
    tensors alike, and the Triton kernels compile this very function
    (`triton.jit(update_running)` in `bnkit.triton_kernels`: keep its body to
    arithmetic and its parameters unannotated). The caller stores the result
    (and casts it to the running statistics' dtype).
    """
    unbiased = var * (n / (n - 1))
    new_mean = (1 - factor) * running_mean + factor * mean
    new_var = (1 - factor) * running_var + factor * unbiased
    return new_mean, new_var


# ---------------------------------------------------------------- validation

def check_floating(name: str, is_floating: bool, dtype_name: str, shape: Tuple[int, ...]) -> None:
    """TypeError unless `name` holds floating-point values."""
    if not is_floating:
        raise TypeError(
            f"{name} must hold floating-point values, got dtype {dtype_name} with shape {tuple(shape)}; "
            f"convert it to a float dtype first"
        )


def channel_axis(shape: Tuple[int, ...], axis: int) -> int:
    """`axis` normalised against len(shape) (it may be negative); the input
    must have at least 2 axes and the channel axis cannot be the batch axis."""
    ndim = len(shape)
    shape = tuple(shape)
    if ndim < 2:
        raise ValueError(f"batch norm expects an input of shape (N, C) or (N, C, *), got shape {shape}")
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"axis must be an integer, got axis={axis!r}") from None
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis={axis} is out of range for an input of shape {shape}")
    axis %= ndim
    if axis == 0:
        raise ValueError(f"axis=0 is the batch axis; the channel axis must be another one (input shape {shape})")
    return axis


def check_shape(name: str, shape: Tuple[int, ...], expected: Tuple[int, ...], x_shape: Tuple[int, ...]) -> None:
    """ValueError unless a parameter (gamma, beta, running stats) has exactly `expected` shape."""
    if tuple(shape) != tuple(expected):
        raise ValueError(
            f"{name} must have shape {tuple(expected)} for an input of shape {tuple(x_shape)}, "
            f"got shape {tuple(shape)}"
        )


def _is_real(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def check_eps(eps) -> float:
    """eps as a float; ValueError unless it is a finite positive number."""
    if not _is_real(eps) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a positive number, got eps={eps!r}")
    return float(eps)


def check_momentum(momentum) -> Optional[float]:
    """momentum as a float, or None; ValueError unless it lies in [0, 1]."""
    if momentum is None:
        return None
    if not _is_real(momentum) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1] or be None, got momentum={momentum!r}")
    return float(momentum)


def check_mode(mode) -> str:
    """'train' or 'eval' ('test' is an alias for 'eval')."""
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode must be 'train' or 'eval' ('test' is an alias), got mode={mode!r}")
    return MODES[mode]


def check_enough_values(n: int, x_shape: Tuple[int, ...]) -> None:
    """Training needs more than one value per channel (the unbiased variance divides by n - 1)."""
    if n < 2:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input of shape "
            f"{tuple(x_shape)} ({n} value per channel)"
        )


def check_dout_shape(shape: Tuple[int, ...], out_shape: Tuple[int, ...]) -> None:
    """ValueError unless the upstream gradient has the forward output's shape."""
    if tuple(shape) != tuple(out_shape):
        raise ValueError(
            f"dout must have the shape of the forward output {tuple(out_shape)}, got shape {tuple(shape)}"
        )


def check_cumulative(momentum: Optional[float], has_running: bool, num_batches_tracked) -> None:
    """momentum=None averages over num_batches_tracked, so it needs the count."""
    if momentum is None and has_running and num_batches_tracked is None:
        raise ValueError(
            "momentum=None (the cumulative average) needs num_batches_tracked, the count of batches "
            "seen so far: pass it, or use a float momentum"
        )


def check_eval_stats(has_running: bool) -> None:
    """Eval mode with tracked statistics needs both running_mean and running_var."""
    if not has_running:
        raise ValueError("eval mode needs running_mean and running_var (or pass training=True)")
