"""The two-sided duplicate threshold: copies on one side, different images on the other.

A threshold set from copies alone ("keep 95% of them") is one-sided: it says
nothing about what else falls within it. With an encoder that is not invariant
to an edit (a mirrored digit is another glyph), that edit's copies drag the
threshold out among ordinary neighbours, and every unknown becomes a
"duplicate". So the rule, in the spirit of TF Similarity's calibration (choose
the distance from both the matches and the non-matches) and of FAISS-style
range-search thresholds (fix the false-positive rate, read off the recall):

1. **Negatives** are distances between *different* images, by kind: each
   sample's nearest neighbours (the hard ones), random pairs, junk probes
   (noise, blank images) against their nearest sample, and, with labels, pairs
   of one class (siblings). See ``calibrate.negative_distances``.
2. An edit whose **median** copy lies beyond the ``exclude_at`` quantile of the
   negatives is one the encoder is **not invariant to**: it is named and left
   out, never averaged in.
3. The threshold keeps ``recall`` of the remaining copies, but never admits
   more than ``false_pair_target`` of any kind of negatives: it is the lower of
   the two.
4. When what is left keeps less than ``min_recall`` of the copies (or no edit
   is left), the encoder **cannot separate** copies from different images here:
   the rule says so, with its figures and what to do.

Pure arithmetic on distance arrays: no index, no images (tested on
constructed distance sets).
"""

from dataclasses import asdict, dataclass, field

import numpy as np

from lookalike.core.errors import CalibrationError

FALSE_PAIR_TARGET = 0.001  # at most 0.1% of each kind of negatives within the threshold
EXCLUDE_AT = 0.05  # an edit whose median copy lies beyond this quantile of negatives is excluded
MIN_USEFUL_RECALL = 0.5  # below this share of copies kept, the threshold cannot separate
WHAT_TO_DO = ("train the encoder longer or on more images, use another encoder, or rely on "
              "geometric verification")


@dataclass
class DuplicateRule:
    """What the rule decided, with the figures that say why (saved in the calibration)."""

    threshold: float
    separable: bool
    false_pair_target: float
    false_pair_rate: dict  # kind of negatives -> share within the threshold
    recall: float  # of the copies of the invariant edits
    recall_per_edit: dict  # every edit, the excluded ones too
    excluded_edits: dict  # edit -> median copy distance
    num_negatives: dict  # kind -> count
    limited_by: str  # "copies" (the recall target) or the kind of negatives that capped it
    ceiling: float = None  # with labels: the typical distance between two siblings
    notes: list = field(default_factory=list)

    def to_record(self):
        return asdict(self)

    @property
    def not_invariant(self):
        return describe_excluded(self.excluded_edits)

    def explain(self):
        """One line: the threshold, the recall it keeps, what it excludes, whether it separates."""
        rates = ", ".join(f"{k} {100 * v:.2f}%" for k, v in self.false_pair_rate.items())
        text = (f"{self.threshold:.4f} keeps {100 * self.recall:.0f}% of the copies of the "
                f"invariant edits at {rates} of different-image pairs "
                f"(target {100 * self.false_pair_target:g}%)")
        if self.excluded_edits:
            text += f"; not invariant to: {self.not_invariant}"
        if not self.separable:
            text += f"; {self.why_not()}"
        return text

    def why_not(self):
        if self.separable:
            return ""
        if not self.recall_per_edit or len(self.excluded_edits) == len(self.recall_per_edit):
            return ("cannot separate copies from different images: the encoder is invariant to "
                    f"none of the edits; {WHAT_TO_DO}")
        return (f"cannot separate copies from different images: at a false-pair rate of "
                f"{100 * self.false_pair_target:g}% it keeps only {100 * self.recall:.0f}% of "
                f"the copies (needs {100 * MIN_USEFUL_RECALL:.0f}%); {WHAT_TO_DO}")


def describe_excluded(excluded_edits):
    """``"hflip (median 0.55), text_overlay (0.63)"``, or "" when no edit is excluded."""
    return ", ".join(f"{e} ({'median ' if n == 0 else ''}{m:.2f})"
                     for n, (e, m) in enumerate(excluded_edits.items()))


def _finite(values):
    v = np.asarray(values, dtype=np.float64).ravel()
    return np.sort(v[np.isfinite(v)])


def rate_limit(negatives, target):
    """The largest distance within which at most ``target`` of ``negatives`` lie (sorted, finite).

    Just below the ``floor(target * n) + 1``-th nearest negative; 0 when even
    that is at distance 0.
    """
    allowed = int(np.floor(target * len(negatives) + 1e-9))
    if allowed >= len(negatives):
        return 2.0
    return max(0.0, float(np.nextafter(negatives[allowed], -np.inf)))


def two_sided_threshold(copies, negatives, recall=0.95, false_pair_target=FALSE_PAIR_TARGET,
                        exclude_at=EXCLUDE_AT, min_recall=MIN_USEFUL_RECALL, ceiling=None):
    """The duplicate threshold from ``copies`` ({edit: distances}) and ``negatives``
    ({kind: distances between different images}); returns a :class:`DuplicateRule`.

    ``ceiling``: a distance the threshold must stay below (with labels: the
    median distance between two samples of one class: a duplicate is closer
    than a sibling).
    """
    if not 0 < recall <= 1:
        raise CalibrationError(f"duplicate_recall must be in (0, 1], got {recall}")
    if not 0 < false_pair_target < 1:
        raise CalibrationError(f"false_pair_target must be in (0, 1), got {false_pair_target}")
    negs = {k: _finite(v) for k, v in negatives.items()}
    negs = {k: v for k, v in negs.items() if len(v)}
    if not negs:
        raise CalibrationError("no distances between different images to calibrate against")
    pos = {e: _finite(v) for e, v in copies.items()}
    pos = {e: v for e, v in pos.items() if len(v)}
    if not pos:
        raise CalibrationError("no synthetic copies to calibrate with")

    pool = np.sort(np.concatenate(list(negs.values())))
    line = float(np.quantile(pool, exclude_at))
    medians = {e: float(np.median(v)) for e, v in pos.items()}
    excluded = {e: m for e, m in sorted(medians.items(), key=lambda x: x[1]) if m > line}
    kept = np.concatenate([v for e, v in pos.items() if e not in excluded] or [np.zeros(0)])

    limits = {k: rate_limit(v, false_pair_target) for k, v in negs.items()}
    limited_by = "copies"
    threshold = float(np.percentile(kept, 100 * recall)) if len(kept) else 0.0
    for kind, limit in sorted(limits.items(), key=lambda x: x[1]):
        if limit < threshold:
            threshold, limited_by = limit, kind
    notes = []
    if ceiling is not None and np.isfinite(ceiling) and threshold >= ceiling:
        threshold = max(0.0, float(np.nextafter(ceiling, -np.inf)))
        limited_by = "siblings"
        notes.append(f"capped below {ceiling:.4f}, the median distance between two samples of "
                     "one class (a duplicate is closer than a sibling)")
    threshold = min(2.0, max(0.0, threshold))

    kept_recall = float((kept <= threshold).mean()) if len(kept) else 0.0
    return DuplicateRule(
        threshold=threshold,
        separable=bool(len(kept)) and kept_recall >= min_recall,
        false_pair_target=float(false_pair_target),
        false_pair_rate={k: float((v <= threshold).mean()) for k, v in negs.items()},
        recall=kept_recall,
        recall_per_edit={e: float((v <= threshold).mean()) for e, v in pos.items()},
        excluded_edits=excluded,
        num_negatives={k: int(len(v)) for k, v in negs.items()},
        limited_by=limited_by,
        ceiling=None if ceiling is None else float(ceiling),
        notes=notes)


def decide(nearest, duplicate_threshold, labelled=None, match_threshold=None):
    """The one decision rule: ``"duplicate"``, ``"match"`` or ``"new"``.

    ``nearest``: the distance to the nearest sample; ``labelled``: to the
    nearest *labelled* one, with ``match_threshold`` the threshold calibrated on
    labels. Without labels there is no "match": "matches a known sample" names
    nothing a user can act on, so an image is a duplicate or new.
    """
    if nearest is not None and np.isfinite(nearest) and nearest <= duplicate_threshold:
        return "duplicate"
    if (labelled is not None and match_threshold is not None and np.isfinite(labelled)
            and labelled <= match_threshold):
        return "match"
    return "new"


def match_threshold(record):
    """The calibration record's threshold for label matches, None when it has no labels."""
    return float(record["threshold"]) if record.get("label_field") else None
