"""Input validation shared by every bnkit implementation.

Each check raises with a message that names the problem and the shapes
involved, so a wrong shape never broadcasts silently into a wrong answer.
"""
import numpy as np

MODES = {"train": "train", "eval": "eval", "test": "eval"}


def check_float_array(name, a):
    """Return `a` as an ndarray; raise TypeError unless it holds floats."""
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(
            f"{name} must hold floating-point values, got dtype {a.dtype} "
            f"with shape {a.shape}; convert it first, e.g. {name}.astype(np.float64)"
        )
    return a


def channel_axis(x, axis):
    """Normalise `axis` (may be negative) against x.ndim; x must be >= 2-D."""
    if x.ndim < 2:
        raise ValueError(
            f"batch norm expects an input of shape (N, C) or (N, C, *), got shape {x.shape}"
        )
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis={axis} is out of range for an input of shape {x.shape}")
    axis %= x.ndim
    if axis == 0:
        raise ValueError(
            f"axis=0 is the batch axis; the channel axis must be another one (input shape {x.shape})"
        )
    return axis


def check_param(name, p, expected_shape, x_shape):
    """Check that gamma/beta/running stats have exactly `expected_shape`."""
    p = check_float_array(name, p)
    if p.shape != tuple(expected_shape):
        raise ValueError(
            f"{name} must have shape {tuple(expected_shape)} for an input of shape "
            f"{tuple(x_shape)}, got shape {p.shape}"
        )
    return p


def check_eps(eps):
    if not np.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a positive number, got eps={eps!r}")
    return float(eps)


def check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"mode must be 'train' or 'eval' ('test' is an alias), got mode={mode!r}")
    return MODES[mode]


def check_momentum(momentum):
    if momentum is not None and not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1] or be None, got momentum={momentum!r}")
    return momentum


def check_dout(dout, out_shape):
    dout = check_float_array("dout", dout)
    if dout.shape != tuple(out_shape):
        raise ValueError(
            f"dout must have the shape of the forward output {tuple(out_shape)}, got shape {dout.shape}"
        )
    return dout


def check_enough_values(n, x_shape):
    if n < 2:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input of shape "
            f"{tuple(x_shape)} ({n} value per channel)"
        )
