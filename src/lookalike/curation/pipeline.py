"""The curation job in one call: embed -> index -> calibrate -> duplicates -> outliers.

Each step reuses what is already there (embeddings already computed by the
same encoder are skipped), so an interrupted run resumes where it stopped.
"""

import time
from dataclasses import dataclass, field

from lookalike.curation.errors import CurationError


@dataclass
class CurationReport:
    embeddings_field: str
    brain_key: str
    embedded: int = 0
    calibration: dict = None
    duplicates: object = None  # DuplicateReport
    outliers: object = None  # OutlierReport
    evaluation: dict = None
    pngs: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


def curate(samples, encoder=None, embeddings_field=None, brain_key=None, label_field=None,
           method=None, target=None, keep="first", duplicate_threshold=None,
           outlier_threshold=None, png_dir=None, log=None):
    """Runs the whole curation job on ``samples``; returns a :class:`CurationReport`.

    Args:
        samples: the dataset or view
        encoder (None): an encoder name or object; None = ``embeddings_field``
            must already hold embeddings
        embeddings_field (None): where embeddings go (default ``emb_<encoder>``)
        brain_key (None): the similarity run (default ``<field>_sim``)
        label_field (None): calibrate and evaluate against these labels
        method, target: see :func:`calibrate_threshold`
        keep ("first"): which sample of each duplicate group stays untagged
        duplicate_threshold, outlier_threshold (None): override calibration
        png_dir (None): write the pictures there
        log (None): ``log(message)`` for progress lines
    """
    import lookalike.similarity as ls
    from lookalike.curation.calibrate import calibrate_threshold
    from lookalike.curation.duplicates import find_duplicates
    from lookalike.curation.evaluation import evaluate_retrieval
    from lookalike.curation.figures import write_pngs
    from lookalike.curation.outliers import flag_outliers
    from lookalike.embeddings import compute_embeddings
    from lookalike.encoders import load_encoder

    log = log or (lambda message: None)
    dataset = samples._root_dataset
    if encoder is not None and not hasattr(encoder, "embed"):
        encoder = load_encoder(encoder)
    if embeddings_field is None:
        if encoder is None:
            raise CurationError("give an encoder or an existing embeddings field")
        embeddings_field = "emb_" + encoder.name.replace("-", "_")
    brain_key = brain_key or f"{embeddings_field}_sim"
    report = CurationReport(embeddings_field, brain_key)

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        report.seconds[name] = round(time.perf_counter() - start, 2)
        return out

    if encoder is not None:
        emb = timed("embed", lambda: compute_embeddings(samples, encoder, embeddings_field))
        report.embedded = emb.embedded
        log(f"embeddings '{embeddings_field}': {emb.embedded} computed, "
            f"{emb.skipped_existing} already there, {len(emb.failures)} unreadable")
    index = timed("index", lambda: ls.build_index(dataset, embeddings_field, brain_key))
    log(f"index '{brain_key}': {index.total_index_size} samples")
    report.calibration = timed("calibrate", lambda: calibrate_threshold(
        samples, brain_key, label_field=label_field, method=method, target=target))
    cal = report.calibration
    log(f"calibrated ({cal['method']}): match threshold {cal['threshold']:.4f}, "
        f"duplicate threshold {cal['duplicate_threshold']:.4f} -- {cal['duplicate_rule']}")
    report.duplicates = timed("duplicates", lambda: find_duplicates(
        samples, brain_key, threshold=duplicate_threshold, keep=keep))
    log(f"duplicates: {report.duplicates.num_groups} groups, "
        f"{report.duplicates.num_duplicates} samples tagged 'duplicate'")
    report.outliers = timed("outliers", lambda: flag_outliers(
        samples, brain_key, threshold=outlier_threshold))
    log(f"outliers: {report.outliers.num_outliers} of {report.outliers.num_searched} "
        "samples tagged 'no_match'")
    if label_field:
        report.evaluation = timed("evaluate", lambda: evaluate_retrieval(
            samples, brain_key, label_field))
    if png_dir:
        report.pngs = write_pngs(ls.load_index(dataset, brain_key), png_dir)
    return report
