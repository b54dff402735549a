"""Curation on a lookalike similarity run: thresholds, outliers, near-duplicates, evaluation.

    import lookalike.curation as lc
    lc.calibrate_threshold(dataset, "emb_sim")                    # label-free
    lc.calibrate_threshold(dataset, "emb_sim", label_field="ground_truth")  # TF Similarity's
    report = lc.find_duplicates(dataset, "emb_sim", keep="largest")
    session.view = lc.duplicates_view(dataset)
    lc.delete_duplicates(dataset, dry_run=True)                   # a count first
    outliers = lc.flag_outliers(dataset, "emb_sim")
    metrics = lc.evaluate_retrieval(dataset, "emb_sim", "ground_truth", k=10)
    lc.visualize_embeddings(dataset, "emb")                        # UMAP for the App
    lc.match_labels(dataset, "emb_sim", "ground_truth")           # unlabelled -> label / no match
    report = lc.match_images(dataset, "emb_sim", "/new/photos", add="new")
    leaks = lc.find_leaks(dataset, "emb_sim", splits=("train", "test"))  # or a field's name

Results are saved with the similarity run (``index.curation``) and in sample
fields: ``dup_group``, ``dup_distance``, ``nn_distance``, ``no_match``.
"""

from lookalike.curation.calibrate import Calibration, calibrate_threshold, get_calibration
from lookalike.curation.deletion import DeletionResult, delete_duplicates
from lookalike.curation.dedupe import DedupeReport, dedupe
from lookalike.curation.duplicates import (
    DuplicateReport,
    duplicates_view,
    find_duplicates,
    shots_view,
)
from lookalike.curation.evaluation import RetrievalEvaluation, evaluate_retrieval
from lookalike.curation.leaks import LeakReport, find_leaks, leaks_view
from lookalike.curation.folder_matching import FolderMatchReport, match_images
from lookalike.curation.label_matching import LabelMatchReport, match_labels, no_match_view
from lookalike.curation.outliers import OutlierReport, flag_outliers, outliers_view
from lookalike.curation.pipeline import CurationReport, curate
from lookalike.curation.projection import visualize_embeddings
from lookalike.core.errors import (
    CalibrationError,
    CurationError,
    MissingRecordError,
    StaleRecordError,
)

__all__ = [
    "Calibration",
    "CalibrationError",
    "CurationError",
    "CurationReport",
    "DedupeReport",
    "DeletionResult",
    "DuplicateReport",
    "FolderMatchReport",
    "LabelMatchReport",
    "LeakReport",
    "MissingRecordError",
    "OutlierReport",
    "RetrievalEvaluation",
    "StaleRecordError",
    "calibrate_threshold",
    "curate",
    "dedupe",
    "delete_duplicates",
    "duplicates_view",
    "shots_view",
    "evaluate_retrieval",
    "find_duplicates",
    "find_leaks",
    "flag_outliers",
    "get_calibration",
    "leaks_view",
    "match_images",
    "match_labels",
    "no_match_view",
    "outliers_view",
    "visualize_embeddings",
]
