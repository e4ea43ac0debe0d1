"""bnkit: batch normalization, derived, implemented and checked.

- `bnkit.staged`: forward and backward as a computational graph, gate by gate.
- `bnkit.fast`: the closed-form backward, and the core every norm reuses.
- `bnkit.norms`: spatial batch norm, layer, instance and group norm.
- `bnkit.BatchNorm`: a numpy layer with torch.nn.BatchNorm's semantics.
- `bnkit.gradcheck`: centred-difference gradients and the relative error.
- `bnkit.torch`: the closed form as a torch.autograd.Function (imports torch;
  nothing else in bnkit's core does).
- `bnkit.conventions`: the defaults, the running-statistics update and the
  validation every backend (numpy, torch, Triton) shares.
"""
from importlib.metadata import PackageNotFoundError, version

from . import conventions, fast, gradcheck, norms, staged
from .gradcheck import numerical_gradient, rel_error
from .layer import BatchNorm

__all__ = ["BatchNorm", "conventions", "fast", "gradcheck", "norms", "numerical_gradient", "rel_error", "staged"]

try:  # the version is written once, in pyproject.toml
    __version__ = version("bnkit")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
