"""Hypothesis profiles, registered before pytest's plugins configure (tests/conftest.py is too late).

``make test`` uses "drip" (150 examples per property test, set in pyproject's addopts);
``pytest --hypothesis-profile=thorough`` runs 3000.
"""

from hypothesis import settings

settings.register_profile("drip", max_examples=150)
settings.register_profile("thorough", max_examples=3000)
