"""The book's experiments, small enough to run on a laptop CPU.

Each function trains tiny networks on scikit-learn's 8x8 digits (offline,
1,797 images) and returns plain dicts of measurements, so the book can plot
them and `tests/test_experiments.py` can assert their qualitative outcome on
a smaller budget. Everything is seeded and single-threaded; pass
`progress=True` to see one line per evaluation on stderr.

- `bnkit.experiments.common`: data, models' building blocks, the SGD loop.
- `bnkit.experiments.shift`: chapter 1, internal covariate shift (Ioffe &
  Szegedy 2015, Fig. 1) and the learning-rate sweep (their section 3.3).
- `bnkit.experiments.critique`: chapter 2, Santurkar et al. 2018: noisy BN,
  their ICS measure, and the loss-landscape probe.
- `bnkit.experiments.practice`: chapter 8, batch size, training only gamma
  and beta, where to put BN, forgetting eval(), folding BN, variance shift.

Importing this package imports torch (``import bnkit`` does not).
"""
from . import common, critique, practice, shift

__all__ = ["common", "critique", "practice", "shift"]
