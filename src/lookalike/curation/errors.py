"""What curation refuses, and why (the classes live in :mod:`lookalike.errors`)."""

from lookalike.errors import (  # noqa: F401 (re-exported)
    CalibrationError,
    CurationError,
    MissingRecordError,
    StaleRecordError,
)
