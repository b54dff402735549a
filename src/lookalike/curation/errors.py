"""What curation refuses, and why."""

from lookalike.calibration import CalibrationError


class CurationError(CalibrationError):
    """Input that curation cannot work on: an empty view, a threshold outside [0, 2], ..."""


class StaleRecordError(CurationError):
    """A calibration (or evaluation) made on embeddings that have changed since."""


class MissingRecordError(CurationError):
    """No calibration (or evaluation) has been saved on this run yet."""
