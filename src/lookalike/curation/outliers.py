"""No-match outliers: samples farther than the match threshold from every other sample.

Each sample's leave-one-out nearest-neighbour distance goes to a float field;
those beyond the threshold (by default the run's calibrated one) are marked in
a boolean field and tagged, and the view of them lists the most isolated first.

Like ``find_duplicates``, a run holds the lease ``curation:outliers`` of the
dataset, writes under a run id (field ``nn_run``) and publishes it atomically at
the end (:mod:`lookalike.curation.published_runs`): after a kill the previous run stays
published, and :func:`outliers_view` shows only the published run's samples.
"""

from dataclasses import dataclass

import numpy as np

from lookalike.core import fo_adapter, leases
from lookalike.similarity import records
from lookalike.curation import published_runs as runs
from lookalike.curation.neighbours import leave_one_out
from lookalike.core.errors import CurationError
from lookalike.core.progress import stage

DEFAULT_TAG = "no_match"
DISTANCE_FIELD = "nn_distance"
FLAG_FIELD = "no_match"
RUN_FIELD = "nn_run"  # the run that wrote a sample's values; only the published one counts
KIND = "outliers"
VERIFIED_NEIGHBOURS = 5  # of a flagged sample, checked for a copy by geometric verification


@dataclass
class OutlierReport:
    threshold: float
    num_searched: int
    outlier_ids: list  # most isolated first
    distances: dict  # sample id -> nearest-neighbour distance, for the outliers
    brain_key: str = None  # the index that found them
    num_verified_copies: int = 0  # beyond the threshold, but geometric verification found a copy

    @property
    def num_outliers(self):
        return len(self.outlier_ids)

    def to_record(self):
        """The counts saved with the run (``index.curation["outliers"]``)."""
        return dict(threshold=self.threshold, num_searched=self.num_searched,
                    num_outliers=self.num_outliers)

    def summary(self):
        """One line, for the CLI and the App."""
        by = f" (index '{self.brain_key}')" if self.brain_key else ""
        text = (f"{self.num_outliers} of {self.num_searched} samples match nothing within "
                f"the no-match threshold {self.threshold:.4f}{by}")
        if self.num_verified_copies:
            text += (f"; {self.num_verified_copies} more lie beyond it but have a copy that "
                     "geometric verification confirms")
        return text


def flag_outliers(samples, brain_key, threshold=None, tag=DEFAULT_TAG, progress=None):
    """Writes ``nn_distance`` and ``no_match`` on the indexed samples of ``samples`` and tags outliers.

    ``threshold`` (cosine distance) defaults to the run's calibrated match
    threshold (see ``calibrate_threshold``); neighbours are searched among all
    of the run's samples, never the sample itself. Raises :class:`LeaseHeldError`
    while another job flags outliers on the same dataset.
    """
    dataset = fo_adapter.root_dataset(samples)
    with leases.hold(dataset, runs.lease_name(KIND), job="flag_outliers",
                     label=runs.lease_label(dataset, KIND)):
        return _flag_outliers(samples, brain_key, threshold, tag, progress)


def _flag_outliers(samples, brain_key, threshold, tag, progress):
    import fiftyone as fo

    import lookalike.similarity as ls

    dataset = fo_adapter.root_dataset(samples)
    index = ls.load_index(dataset, brain_key)
    threshold = records.threshold(index, "threshold", threshold)
    if fo_adapter.exact_count(samples) == 0:
        raise CurationError("the view is empty: there are no samples to check")
    if index.total_index_size < 2:
        raise CurationError(f"run '{brain_key}' holds fewer than 2 embeddings: nothing to compare")
    rows_of = {sid: r for r, sid in enumerate(index.sample_ids)}
    ids = [sid for sid in samples.values("id") if sid in rows_of]
    if not ids:
        raise CurationError(f"no sample of this view is in run '{brain_key}': compute their "
                         "embeddings and rebuild the index")
    rows = np.array([rows_of[sid] for sid in ids])
    # Isolated within the view: its neighbours come from the view too.
    whole = len(rows) == index.total_index_size
    _, dists = leave_one_out(index.engine, rows=rows, k=1, gallery=None if whole else rows,
                             progress=stage(progress, 0.0, 1.0, "searched"))
    nn = dists[:, 0].astype(float)
    flagged = nn > threshold
    num_verified = _unflag_verified(index, rows, flagged, whole)

    for name, ftype in ((DISTANCE_FIELD, fo.FloatField), (FLAG_FIELD, fo.BooleanField),
                        (RUN_FIELD, fo.StringField)):
        if name not in dataset.get_field_schema():
            dataset.add_sample_field(name, ftype)
    order = np.argsort(-nn[flagged], kind="stable")
    outlier_ids = [ids[i] for i in np.flatnonzero(flagged)[order]]
    # Staged, applied and published as one run (see lookalike.curation.published_runs).
    runs.write(samples, KIND, RUN_FIELD, ids,
               {DISTANCE_FIELD: dict(zip(ids, nn.tolist())),
                FLAG_FIELD: dict(zip(ids, flagged.tolist()))},
               tag, outlier_ids, brain_key=brain_key, num_outliers=len(outlier_ids),
               num_searched=len(ids))
    report = OutlierReport(threshold=threshold, num_searched=len(ids), outlier_ids=outlier_ids,
                           num_verified_copies=num_verified,
                           distances={sid: float(nn[rows_pos]) for rows_pos, sid in
                                      enumerate(ids) if flagged[rows_pos]},
                           brain_key=brain_key)
    records.save(index, "outliers", report.to_record())
    return report


def _unflag_verified(index, rows, flagged, whole, k=VERIFIED_NEIGHBOURS):
    """Unflags (in place) the flagged rows with a copy among their ``k`` nearest neighbours
    that geometric verification confirms: the embedding put a copy far (a grayscale
    copy, say), but the library does show the image. Only where the run's
    calibration found that verification tells copies apart on it. Returns how many."""
    from lookalike.images import local_features as verification

    calibration = (index.curation or {}).get("calibration") or {}
    min_inliers = calibration.get("min_inliers")
    if not flagged.any() or min_inliers is None or not calibration.get("verification_judges"):
        return 0
    positions = np.flatnonzero(flagged)
    inds, _ = leave_one_out(index.engine, rows=rows[positions], k=k,
                            gallery=None if whole else rows)
    pairs = [(int(rows[p]), int(j)) for p, row in zip(positions, inds) for j in row if j >= 0]
    ids = index.sample_ids
    wanted = sorted({r for pair in pairs for r in pair})
    path_of = dict(zip(*index.dataset.select([ids[r] for r in wanted]).values(["id", "filepath"])))
    same, _ = verification.confirm_pairs({r: path_of.get(ids[r]) for r in wanted}, pairs,
                                         int(min_inliers), verification.cache_dir(index.dataset))
    copied = {x for x, _ in same}
    for p in positions:
        if int(rows[p]) in copied:
            flagged[p] = False
    return len(copied)


def outliers_view(samples):
    """The published run's flagged samples, most isolated first."""
    from fiftyone import ViewField as F

    return runs.published_view(samples, KIND, RUN_FIELD, F(FLAG_FIELD) == True,  # noqa: E712
                               DISTANCE_FIELD, reverse=True)
