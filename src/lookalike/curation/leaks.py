"""Leaks across splits: the same picture (or the same object or scene shot again) in train
and in test.

fiftyone-brain's ``compute_leaky_splits`` flags pairs within a distance nobody
calibrated. Here a leak is a duplicate pair as :func:`find_duplicates` finds
them (:func:`~lookalike.curation.duplicate_pairs.find_pairs`: the run's calibrated,
label-free duplicate threshold, geometric verification, byte-identical files),
or another shot of the same scene (kept apart from duplicates, a leak all the same),
whose two samples lie in different splits. Splits are tags (by default
``train``, ``val``, ``test``) or the values of a field.

Each leaking sample gets the tag ``leak``, ``leak_with`` (the file name of its
nearest partner in another split) and ``leak_reason`` (why they are the same
picture, as in ``dup_reason``). Like the other curation writes, a run holds the
lease ``curation:leaks`` of the dataset and is staged, applied and published
as one (:mod:`lookalike.curation.published_runs`); :func:`leaks_view` trusts only the
published run.
"""

import os
from collections import Counter
from dataclasses import dataclass, field

from lookalike.core import fo_adapter, leases
from lookalike.curation import published_runs as runs
from lookalike.curation.duplicate_pairs import (
    DEFAULT_CANDIDATES,
    IDENTICAL,
    SHOT,
    find_pairs,
    pair_key,
    pair_reason,
)
from lookalike.core.errors import CurationError
from lookalike.core.progress import scaled

SPLIT_TAGS = ("train", "val", "test")
DEFAULT_TAG = "leak"
PARTNER_FIELD = "leak_with"
REASON_FIELD = "leak_reason"
RUN_FIELD = "leak_run"
KIND = "leaks"


@dataclass
class LeakReport:
    splits: list  # the splits found in the view
    pairs: list  # (sample id, sample id, reason) across splits
    num_searched: int
    per_split: dict = field(default_factory=dict)  # "train / test" -> pairs
    verification: dict = None
    files: dict = field(default_factory=dict)  # sample id -> filepath, for printing
    warning: str = None  # the calibration's, when its duplicate threshold was used
    split_of: dict = field(default_factory=dict)  # sample id -> its split, for printing
    num_shot_pairs: int = 0  # of ``pairs``: another shot of one scene, not a duplicate

    @property
    def leak_ids(self):
        return sorted({s for a, b, _ in self.pairs for s in (a, b)})

    @property
    def num_leaks(self):
        """Samples with a duplicate in another split (tagged)."""
        return len(self.leak_ids)

    def to_record(self):
        return dict(splits=self.splits, num_pairs=len(self.pairs), num_leaks=self.num_leaks,
                    num_searched=self.num_searched, per_split=self.per_split,
                    verification=self.verification, warning=self.warning,
                    num_shot_pairs=self.num_shot_pairs)

    def summary(self):
        """One line, for the CLI and the App."""
        parts = ", ".join(f"{k}: {v}" for k, v in sorted(self.per_split.items())) or "none"
        shots = (f", {self.num_shot_pairs} of them another shot of the same scene"
                 if self.num_shot_pairs else "")
        text = (f"{len(self.pairs)} duplicate pairs across the splits {', '.join(self.splits)} "
                f"({parts}{shots}) among {self.num_searched} samples: {self.num_leaks} samples "
                f"tagged '{DEFAULT_TAG}'")
        return text + (f". Warning: {self.warning}" if self.warning else "")


def split_of(samples, splits=SPLIT_TAGS):
    """``{sample id: split}`` of the samples in a split; ``splits``: tags, or a field's name."""
    if isinstance(splits, str):
        import fiftyone as fo

        from lookalike.similarity.field_vectors import field_holds

        field = samples.get_field_schema().get(splits)
        if field is None:
            raise CurationError(f"the view has no field '{splits}' to read the splits from")
        if not isinstance(field, fo.StringField):
            raise CurationError(f"field '{splits}' holds {field_holds(field)}, not split names: "
                                "give a string field naming each sample's split (train, val, "
                                "test, ...)")
        ids, values = samples.values(["id", splits])
        return {s: str(v) for s, v in zip(ids, values) if v is not None}
    splits = list(splits)
    if len(splits) < 2:
        raise CurationError(f"leaks need at least 2 splits, got {splits}")
    ids, tags = samples.values(["id", "tags"])
    out, both = {}, 0
    for s, t in zip(ids, tags):
        mine = [name for name in splits if name in (t or [])]
        if len(mine) > 1:
            both += 1
        elif mine:
            out[s] = mine[0]
    if both:
        raise CurationError(f"{both} samples carry more than one of the split tags {splits}: "
                            "a sample belongs to one split")
    return out


def check_splits(found, splits):
    """Raises (one line) unless samples were ``found`` in at least 2 of ``splits``."""
    if len(found) < 2:
        held = f"only the split {found[0]!r}" if found else "no split"
        named = (f"field '{splits}'" if isinstance(splits, str)
                 else "the split tags " + ", ".join(splits))
        raise CurationError(f"the view holds {held} of {named}: leaks need samples in at "
                            "least 2 splits (tag them, or pick the field that names them)")


def splits_present(samples, splits=SPLIT_TAGS):
    """The splits that hold samples of ``samples`` (one aggregation: cheap enough for a form);
    raises (one line) unless there are at least 2."""
    if isinstance(splits, str):
        split_of(samples.limit(0), splits)  # the field's checks
        found = sorted(str(v) for v, n in samples.count_values(splits).items()
                       if v is not None and n)
    else:
        if len(list(splits)) < 2:
            raise CurationError(f"leaks need at least 2 splits, got {list(splits)}")
        counts = samples.count_values("tags")
        found = [name for name in splits if counts.get(name)]
    check_splits(found, splits)
    return found


def find_leaks(samples, brain_key, splits=SPLIT_TAGS, threshold=None, verify="auto",
               min_inliers=None, candidates=DEFAULT_CANDIDATES, tag=DEFAULT_TAG, progress=None):
    """Tags the samples of ``samples`` that have a duplicate in another split.

    Args:
        samples: the dataset or a view (samples in no split are ignored)
        brain_key: a lookalike similarity run
        splits (("train", "val", "test")): split tags, or the name of a field
            whose value is the split
        threshold, verify, min_inliers, candidates: as for :func:`find_duplicates`
        tag ("leak"): tag of every leaking sample
        progress (None): ``progress(fraction, label)``

    Returns a :class:`LeakReport`; writes ``leak_with`` and ``leak_reason``.
    Raises :class:`LeaseHeldError` while another job writes this dataset's leaks.
    """
    dataset = fo_adapter.root_dataset(samples)
    with leases.hold(dataset, runs.lease_name(KIND), job="find_leaks",
                     label=runs.lease_label(dataset, KIND)):
        return _find_leaks(samples, brain_key, splits, threshold, verify, min_inliers,
                           candidates, tag, progress)


def _find_leaks(samples, brain_key, splits, threshold, verify, min_inliers, candidates, tag,
                progress):
    import fiftyone as fo

    split = split_of(samples, splits)
    found = sorted(set(split.values()))
    check_splits(found, splits)
    view = samples.select(list(split))
    pairs = find_pairs(view, brain_key, threshold, verify=verify, min_inliers=min_inliers,
                       candidates=candidates, progress=scaled(progress, 0.0, 0.9))
    ids, paths = pairs.ids, pairs.paths
    leaks, partner, per_split, num_shots = [], {}, Counter(), 0
    strongest = {}  # a pair found several ways counts once, by its strongest reason
    for a, b, kind in zip(pairs.i.tolist(), pairs.j.tolist(), pairs.kinds.tolist()):
        strongest[pair_key(a, b)] = min(kind, strongest.get(pair_key(a, b), kind))
    for a, b, kind in zip(pairs.i.tolist(), pairs.j.tolist(), pairs.kinds.tolist()):
        key = pair_key(a, b)
        if split[ids[a]] == split[ids[b]] or strongest.get(key) != kind:
            continue
        del strongest[key]  # the same pair twice by the same way: once
        d = pairs.distance(a, b)
        reason = pair_reason(kind, d, pairs.inliers(a, b), None, pairs.turned_of.get(key),
                             pairs.contained_of.get(key), pairs.shot_of.get(key))
        num_shots += kind == SHOT
        leaks.append((ids[a], ids[b], reason))
        per_split[" / ".join(sorted((split[ids[a]], split[ids[b]])))] += 1
        closeness = -1.0 if kind == IDENTICAL else (d or 0.0)
        for me, other in ((a, b), (b, a)):
            if me not in partner or closeness < partner[me][0]:
                partner[me] = (closeness, f"{os.path.basename(paths[other])} "
                                          f"({split[ids[other]]})", reason)
    dataset = fo_adapter.root_dataset(samples)
    schema = dataset.get_field_schema()
    for name in (PARTNER_FIELD, REASON_FIELD, RUN_FIELD):
        if name not in schema:
            dataset.add_sample_field(name, fo.StringField)
    leaked = {ids[p] for p in partner}
    runs.write(view, KIND, RUN_FIELD, list(ids),
               {PARTNER_FIELD: {ids[p]: who for p, (_, who, _) in partner.items()},
                REASON_FIELD: {ids[p]: why for p, (_, _, why) in partner.items()}},
               tag, sorted(leaked), brain_key=brain_key, num_leaks=len(leaked),
               num_pairs=len(leaks))
    if progress:
        progress(1.0, f"{len(leaks)} pairs across splits")
    return LeakReport(splits=found, pairs=leaks, num_searched=len(ids),
                      per_split=dict(per_split), verification=pairs.verification,
                      num_shot_pairs=num_shots,
                      warning=pairs.warning,
                      files={s: paths[n] for n, s in enumerate(ids) if s in leaked},
                      split_of={s: split[s] for s in leaked})


def leaks_view(samples):
    """The published run's leaking samples, by their partner's file name."""
    from fiftyone import ViewField as F

    return runs.published_view(samples, KIND, RUN_FIELD, F(PARTNER_FIELD) != None,  # noqa: E711
                               PARTNER_FIELD)
