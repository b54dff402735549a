"""Every error lookalike raises, in one family.

Each class derives from :class:`LookalikeError` (so the CLI and the plugin can
tell our one-line reasons from bugs) and keeps the builtin base it always had
(``ValueError`` for bad input, ``RuntimeError`` for an unusable environment), so
``except ValueError`` in user code keeps working. The modules that raise them
re-export them under their old names.
"""


class LookalikeError(Exception):
    """Base of every error lookalike raises on purpose: its message is the whole story."""


def one_line(error):
    """``error``'s message on one line (the CLI and the App show reasons as one line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines) or type(error).__name__


# -- bad input -----------------------------------------------------------------
class UsageError(LookalikeError, ValueError):
    """An argument that names nothing usable (no such dataset, field, file, ...)."""


class EmptyViewError(LookalikeError, ValueError):
    """No sample (or no readable image) to work on."""


class UnreadableImageError(LookalikeError, ValueError):
    """A file that is missing, not an image, too large or not fully decodable."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ImageImportError(LookalikeError, ValueError):
    """The folder cannot be imported: nothing was written."""


class EncoderStoreError(LookalikeError, ValueError):
    """A model directory that is not ours, incomplete, corrupt or unreadable here."""


class TrainingConfigError(LookalikeError, ValueError):
    """Settings that cannot train (bad values, unusable labels, ...)."""


class EmbeddingFieldError(LookalikeError, ValueError):
    """The field cannot take these embeddings (another encoder's, or not ours)."""


class InvalidEmbeddingsError(LookalikeError, ValueError):
    """Vectors that cannot be indexed: wrong shape, mixed dimensions, NaN or inf."""


class SimilarityIndexError(LookalikeError, ValueError):
    """A similarity index that cannot be used: missing, not ours, incomplete."""


class NotOurIndexError(SimilarityIndexError):
    """A brain key that does not exist or is not a lookalike similarity index."""


class IncompleteIndexError(SimilarityIndexError):
    """A brain run whose results were never written (a build that was killed)."""


class IndexSettingsError(SimilarityIndexError):
    """Settings an index cannot build or answer with (nprobe, recall target, k, engine)."""


class CurationError(LookalikeError, ValueError):
    """Input that curation cannot work on: an empty view, a threshold outside [0, 2], ..."""


class CalibrationError(CurationError):
    """Data that cannot be calibrated (too few samples, one class, ...)."""


class StaleRecordError(CurationError):
    """A calibration (or evaluation) made on embeddings that have changed since."""


class MissingRecordError(CurationError):
    """No calibration (or evaluation) has been saved on this run yet."""


class IncompleteCurationError(CurationError):
    """A find_duplicates / flag_outliers run that was killed before publishing its results."""


class DeletionRefusedError(CurationError):
    """A deletion that would remove samples no published result still justifies."""


class PluginInstallError(UsageError):
    """The plugin cannot be installed there (another plugin's folder, a folder we must not serve)."""


class BrainConfigError(UsageError):
    """A brain config file that cannot be read or written."""


class JournalError(LookalikeError, ValueError):
    """A deletion journal that cannot be restored: missing, not ours, another dataset's."""


# -- the environment -------------------------------------------------------------
class FrameworkError(LookalikeError, RuntimeError):
    """A deep-learning framework is missing or cannot be used as we need it."""


class DatabaseSetupError(LookalikeError, RuntimeError):
    """No usable MongoDB for FiftyOne."""


class TrainingStopped(LookalikeError, RuntimeError):
    """The job was asked to stop; its last finished epoch is checkpointed."""


class LeaseHeldError(LookalikeError, RuntimeError):
    """Another live job is writing the same field, index or curation results."""


class FileWriteError(LookalikeError, OSError):
    """A file that cannot be written: no space left, a quota, a read-only or forbidden folder.

    An ``OSError`` still (``except OSError`` keeps working, ``errno`` and ``filename``
    -- the folder -- are set), whose one line names the folder, what was being written
    and the way on; nothing half-written is left.
    """

    def __str__(self):  # the line itself, not OSError's "[Errno n] ..." form
        return str(self.args[0]) if self.args else ""


class LeaseLostError(LookalikeError, RuntimeError):
    """A job that could not renew its lease (the database went away) stopped writing."""
