"""The curation job in one call: embed -> index -> calibrate -> duplicates -> outliers.

Each step reuses what is already there (embeddings already computed by the
same encoder are skipped), so an interrupted run resumes where it stopped.
"""

import time
from dataclasses import dataclass, field

from lookalike.core import fo_adapter
from lookalike.core.errors import CurationError
from lookalike.core.paths import check_output_folder
from lookalike.core.progress import scaled


# Each step's share of curate's progress (embedding dominates when it runs).
_SHARES = dict(embed=0.5, index=0.05, calibrate=0.15, duplicates=0.15, outliers=0.1,
               evaluate=0.05)


@dataclass
class CurationReport:
    embeddings_field: str
    brain_key: str
    embedded: int = 0
    embedding: object = None  # EmbeddingReport, when curate embedded
    num_indexed: int = 0
    calibration: object = None  # Calibration
    duplicates: object = None  # DuplicateReport
    outliers: object = None  # OutlierReport
    evaluation: object = None  # RetrievalEvaluation
    pngs: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    def summary(self):
        """A line per step, for the CLI and the App."""
        lines = []
        if self.embedding is not None:
            e = self.embedding
            lines.append(f"embeddings '{self.embeddings_field}': {e.embedded} computed, "
                         f"{e.skipped_existing} already there, {len(e.failures)} unreadable")
        lines.append(f"index '{self.brain_key}': {self.num_indexed} samples")
        cal = self.calibration
        if cal is not None:
            lines.append(f"calibrated ({cal.method}): no-match threshold {cal.threshold:.4f}, "
                         f"duplicate threshold {cal.duplicate_threshold:.4f} -- "
                         f"{cal.duplicate_rule}")
        if self.duplicates is not None:
            lines.append("duplicates: " + self.duplicates.summary())
        if self.outliers is not None:
            lines.append("outliers: " + self.outliers.summary())
        if self.evaluation is not None:
            lines.append("evaluation: " + self.evaluation.summary())
        return "\n".join(lines)


def curate(samples, encoder=None, embeddings_field=None, brain_key=None, label_field=None,
           method=None, target=None, keep="first", duplicate_threshold=None,
           outlier_threshold=None, png_dir=None, progress=None):
    """Runs the whole curation job on ``samples``; returns a :class:`CurationReport`.

    Args:
        samples: the dataset or view
        encoder (None): an encoder name or object; None = ``embeddings_field``
            must already hold embeddings
        embeddings_field (None): where embeddings go (default
            :func:`lookalike.embeddings.compute.default_field_name`)
        brain_key (None): the similarity run (default
            :func:`lookalike.similarity.default_brain_key`)
        label_field (None): calibrate and evaluate against these labels
        method, target: see :func:`calibrate_threshold`
        keep ("first"): which sample of each duplicate group stays untagged
        duplicate_threshold, outlier_threshold (None): override calibration
        png_dir (None): write the pictures there
        progress (None): ``progress(fraction, label)``, over all the steps
    """
    import lookalike.similarity as ls
    from lookalike.curation.calibrate import calibrate_threshold
    from lookalike.curation.duplicates import find_duplicates
    from lookalike.curation.evaluation import evaluate_retrieval
    from lookalike.curation.figures import write_pngs
    from lookalike.curation.outliers import flag_outliers
    from lookalike.embeddings.compute import compute_embeddings, default_field_name
    from lookalike.encoders import load_encoder
    from lookalike.similarity import default_brain_key

    dataset = fo_adapter.root_dataset(samples)
    if png_dir:
        png_dir = check_output_folder(png_dir)  # before the work, not after it
    if encoder is not None and not hasattr(encoder, "embed"):
        encoder = load_encoder(encoder)
    if embeddings_field is None:
        if encoder is None:
            raise CurationError("give an encoder or an existing embeddings field")
        embeddings_field = default_field_name(encoder)
    brain_key = brain_key or default_brain_key(embeddings_field)
    report = CurationReport(embeddings_field, brain_key)
    steps = [s for s in _SHARES if (s != "embed" or encoder is not None)
             and (s != "evaluate" or label_field)]
    total = sum(_SHARES[s] for s in steps)
    done = 0.0

    def run(name, fn):
        """``fn(step_progress)``, timed, its progress mapped onto the step's share."""
        nonlocal done
        share = _SHARES[name] / total
        start = time.perf_counter()
        out = fn(scaled(progress, done, share))
        report.seconds[name] = round(time.perf_counter() - start, 2)
        done += share
        return out

    if encoder is not None:
        report.embedding = run("embed", lambda p: compute_embeddings(
            samples, encoder, embeddings_field, progress=p))
        report.embedded = report.embedding.embedded
    index = run("index", lambda p: ls.build_index(dataset, embeddings_field, brain_key))
    report.num_indexed = index.total_index_size
    report.calibration = run("calibrate", lambda p: calibrate_threshold(
        samples, brain_key, label_field=label_field, method=method, target=target,
        progress=p))
    report.duplicates = run("duplicates", lambda p: find_duplicates(
        samples, brain_key, threshold=duplicate_threshold, keep=keep, progress=p))
    report.outliers = run("outliers", lambda p: flag_outliers(
        samples, brain_key, threshold=outlier_threshold, progress=p))
    if label_field:
        report.evaluation = run("evaluate", lambda p: evaluate_retrieval(
            samples, brain_key, label_field, progress=p))
    if png_dir:
        report.pngs = write_pngs(ls.load_index(dataset, brain_key), png_dir)
    if progress is not None:
        progress(1.0, f"curated '{brain_key}'")
    return report
