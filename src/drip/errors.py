"""The exceptions drip raises: one base class, one subclass per kind of fault.

Every message says what was expected, what was found, and where, so that a device log line is
enough to find the cause. Catch ``DripError`` to handle them all.
"""

from __future__ import annotations


class DripError(Exception):
    """Base class of every error drip raises on purpose."""


class DripInputError(DripError, ValueError):
    """A sample, a label or an argument is malformed (shape, dtype, NaN/inf, range, count)."""


class DripModelError(DripError):
    """The model does not fit what was asked of it (layer missing or unused, head mismatch)."""


class DripModelMismatchError(DripModelError):
    """Thresholds calibrated for one model were applied to another."""


class DripThresholdsError(DripError):
    """A thresholds file is missing, corrupt, of an unknown version, or inconsistent."""


class DripStoreError(DripError):
    """A sample store cannot be opened or written (not a drip store, newer schema, disk full)."""


class DripDataError(DripError):
    """A data set is missing, corrupt, truncated, or fails its checksum."""


class DripMalformedSampleError(DripInputError):
    """A data-set job told to stop at the first malformed sample (``--strict``) met one."""
