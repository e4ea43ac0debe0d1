"""Shared test set-up: a reproducible hypothesis profile.

CI (CI set in the environment) uses the derandomized 'ci' profile, so the
same examples run on every machine; by hand, 'dev' explores new ones.
"""
import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, max_examples=60, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
