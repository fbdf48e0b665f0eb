"""Hypothesis profiles, registered before pytest's plugins configure (tests/conftest.py is too late).

``make test`` uses "drip" (set in pyproject's addopts): 150 examples per property test unless the
test fixes its own count, no deadline (shared 2-core machines stall), and under ``CI=true`` a fixed
example sequence, so that CI judges the change and not the luck of the draw; local runs keep
exploring new examples. ``pytest --hypothesis-profile=thorough`` runs 3000 where a test does not
fix its count.
"""

import os

from hypothesis import settings

settings.register_profile("drip", max_examples=150, deadline=None, derandomize=bool(os.environ.get("CI")))
settings.register_profile("thorough", max_examples=3000, deadline=None)
