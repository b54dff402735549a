"""Near-duplicate groups on a dataset: found, written to sample fields and tags, deleted.

The FiftyOne side of near-duplicates. Pairs come from the run's vectors, by the
one pair search (:mod:`lookalike.similarity.pairs`, exact or faiss IVF), and
from byte-identical files (same SHA-256, no encoder needed); pairs are joined
into connected groups and each group keeps one sample (``keep``: first, largest
or sharpest, :mod:`lookalike.curation.keep`); the others get a tag, and
deleting them is a separate, explicit step with a dry run first.

Writes never mix two runs: each run holds the lease ``curation:duplicates`` of
the dataset, writes its groups under a run id (field ``dup_run``) and publishes
that id in one atomic update (see :mod:`lookalike.curation.runs`); readers
trust only samples of the published run.

Deletion re-derives the groups from the samples that exist at delete time (the
published run's ``dup_group`` of each, not the tags alone). A group's kept
sample is its member without the tag; the tagged members of a group whose kept
sample still exists are deleted, so the last member of a group never goes. When
groups lost their kept sample (deleted in the App, or concurrently) nothing is
deleted and the count is reported; tags that no published group explains are
never acted on. One function (:func:`deletion_plan`) computes what goes: the dry
run reports it, the real run journals it (:mod:`lookalike.curation.journal`)
and then deletes it.
"""

from dataclasses import dataclass, field

import numpy as np

from lookalike import faults, fo_adapter, leases
from lookalike.curation import records, runs
from lookalike.curation.keep import check_keep_policy, choose_kept, hash_pairs
from lookalike.errors import CurationError, DeletionRefusedError
from lookalike.progress import scaled
from lookalike.similarity.distance import cosine_distance
from lookalike.similarity.engine import check_engine
from lookalike.similarity.pairs import groups_from_pairs, vector_pairs

DEFAULT_TAG = "duplicate"
GROUP_FIELD = "dup_group"
DISTANCE_FIELD = "dup_distance"
RUN_FIELD = "dup_run"  # the run that wrote a sample's group; only the published one counts
KIND = "duplicates"
DELETE_BATCH = 10_000  # samples per delete; a kill between batches is undone from the journal


@dataclass
class DuplicateReport:
    threshold: float
    engine: str  # the pair search used: "exact", "approximate", or "files" (hashes only)
    keep: str
    groups: list  # lists of sample ids, the kept one first
    num_pairs: int = 0
    num_exact_pairs: int = 0
    num_searched: int = 0
    files: dict = field(default_factory=dict)  # sample id -> filepath, for printing

    @property
    def num_groups(self):
        return len(self.groups)

    @property
    def num_duplicates(self):
        """Samples that are not kept (tagged)."""
        return sum(len(g) - 1 for g in self.groups)

    def to_record(self):
        """The counts saved with the run (``index.curation["duplicates"]``)."""
        return dict(threshold=self.threshold, engine=self.engine, keep=self.keep,
                    num_groups=self.num_groups, num_duplicates=self.num_duplicates,
                    num_pairs=self.num_pairs, num_exact_pairs=self.num_exact_pairs,
                    num_searched=self.num_searched)

    def summary(self):
        """One paragraph, for the CLI and the App."""
        return (f"{self.num_groups} near-duplicate groups among {self.num_searched} samples "
                f"(threshold {self.threshold:.4f}, {self.engine} search, keep {self.keep}): "
                f"{self.num_duplicates} duplicates tagged, {self.num_exact_pairs} "
                "byte-identical pairs")


def find_duplicates(samples, brain_key=None, threshold=None, keep="first", engine="auto",
                    tag=DEFAULT_TAG, exact_files=True, progress=None):
    """Finds near-duplicate groups in ``samples``; writes ``dup_group``, ``dup_distance`` and a tag.

    Args:
        samples: the dataset or view to search (only samples in it are grouped)
        brain_key (None): a lookalike similarity run; None = byte-identical
            files only (no encoder needed)
        threshold (None): cosine distance; None = the run's calibrated
            ``duplicate_threshold`` (see ``calibrate_threshold``)
        keep ("first"): which sample of a group is kept untagged: "first" (in
            the view's order), "largest" (pixels, then bytes) or "sharpest"
            (variance of the Laplacian)
        engine ("auto"): the pair search, one of
            :data:`lookalike.similarity.engine.ENGINES`: "exact", "approximate"
            (faiss IVF) or "auto" (approximate from 50,000 samples)
        tag ("duplicate"): tag put on every grouped sample but the kept one
        exact_files (True): also pair byte-identical files (SHA-256)
        progress (None): ``progress(fraction, label)``

    Returns:
        a :class:`DuplicateReport`; the fields are ``dup_group`` (group number,
        1 = largest group) and ``dup_distance`` (distance to the kept sample)

    Raises :class:`LeaseHeldError` while another job writes this dataset's duplicates.
    """
    dataset = fo_adapter.root_dataset(samples)
    with leases.hold(dataset, runs.lease_name(KIND), job="find_duplicates",
                     label=runs.lease_label(dataset, KIND)):
        return _find_duplicates(samples, brain_key, threshold, keep, engine, tag,
                                exact_files, progress)


def _find_duplicates(samples, brain_key, threshold, keep, engine, tag, exact_files, progress):
    check_keep_policy(keep)
    check_engine(engine)
    if len(samples) == 0:
        raise CurationError("the view is empty: there are no samples to search for duplicates")
    report_progress = progress or (lambda fraction, label: None)
    ids, paths = samples.values(["id", "filepath"])
    position = {sid: n for n, sid in enumerate(ids)}
    edges_i, edges_j = [], []
    vectors, used, index, row_in_vectors = None, "files", None, {}
    num_pairs, num_exact = 0, 0

    if brain_key is not None:
        import lookalike.similarity as ls

        index = ls.load_index(fo_adapter.root_dataset(samples), brain_key)
        threshold = records.threshold(index, "duplicate_threshold", threshold)
        rows_of = {sid: r for r, sid in enumerate(index.sample_ids)}
        in_index = [position[sid] for sid in ids if sid in rows_of]
        if len(in_index) < 2:
            raise CurationError(f"fewer than 2 samples of this view are in run '{brain_key}': "
                                "compute their embeddings and rebuild the index")
        rows = np.array([rows_of[ids[p]] for p in in_index])
        vectors = index.engine.matrix[rows]
        reuse = index.engine if len(rows) == index.total_index_size else None
        used, i, j, _ = vector_pairs(vectors, threshold, engine, reuse=reuse,
                                     progress=scaled(progress, 0.0, 0.8))
        in_index = np.asarray(in_index)
        edges_i.append(in_index[i])
        edges_j.append(in_index[j])
        num_pairs = len(i)
        row_in_vectors = {int(p): r for r, p in enumerate(in_index)}
    else:
        threshold = 0.0

    if exact_files:
        report_progress(0.8, "hashing files")
        hi, hj, _ = hash_pairs(paths)
        edges_i.append(hi)
        edges_j.append(hj)
        num_exact = len(hi)

    i = np.concatenate(edges_i) if edges_i else np.zeros(0, np.int64)
    j = np.concatenate(edges_j) if edges_j else np.zeros(0, np.int64)
    groups = groups_from_pairs(len(ids), i, j)
    report_progress(0.9, f"choosing the kept sample of {len(groups)} groups")
    ordered = []
    distances = {}
    for group in groups:
        kept = choose_kept(group, keep, paths)
        rest = sorted(p for p in group if p != kept)
        distances[kept] = 0.0
        for p in rest:
            if p in row_in_vectors and kept in row_in_vectors:
                distances[p] = float(cosine_distance(
                    vectors[row_in_vectors[p]] @ vectors[row_in_vectors[kept]]))
            else:
                distances[p] = 0.0  # byte-identical files
        ordered.append([kept] + rest)
    ordered.sort(key=lambda g: (-len(g), g[0]))

    write_groups(samples, ids, ordered, distances, tag)
    report = DuplicateReport(
        threshold=float(threshold), engine=used, keep=keep,
        groups=[[ids[p] for p in g] for g in ordered], num_pairs=int(num_pairs),
        num_exact_pairs=int(num_exact), num_searched=len(ids),
        files={ids[p]: paths[p] for g in ordered for p in g})
    if index is not None:
        records.save(index, "duplicates", report.to_record())
    report_progress(1.0, f"{report.num_groups} groups, {report.num_duplicates} duplicates")
    return report


def write_groups(samples, ids, groups, distances, tag):
    """Replaces earlier results on ``ids`` (the view's samples) with these groups; publishes.

    The caller holds the lease. :func:`runs.write` stages the values, then
    applies and publishes them: a kill anywhere leaves the old results or,
    rolled forward, the new ones (see :mod:`lookalike.curation.runs`).
    """
    import fiftyone as fo

    dataset = fo_adapter.root_dataset(samples)
    for name, ftype in ((GROUP_FIELD, fo.IntField), (DISTANCE_FIELD, fo.FloatField),
                        (RUN_FIELD, fo.StringField)):
        if name not in dataset.get_field_schema():
            dataset.add_sample_field(name, ftype)
    group_of, dist_of, tagged = {}, {}, []
    for number, group in enumerate(groups, 1):
        for n, p in enumerate(group):
            group_of[ids[p]] = number
            dist_of[ids[p]] = float(distances[p])
            if n > 0:
                tagged.append(ids[p])
    return runs.write(samples, KIND, RUN_FIELD, list(ids),
                      {GROUP_FIELD: group_of, DISTANCE_FIELD: dist_of}, tag, tagged,
                      num_groups=len(groups), num_duplicates=len(tagged))


def duplicates_view(samples):
    """The published run's grouped samples, group by group, the kept one first."""
    from fiftyone import ViewField as F

    return runs.published_view(samples, KIND, RUN_FIELD, F(GROUP_FIELD) != None,  # noqa: E711
                               [(GROUP_FIELD, 1), (DISTANCE_FIELD, 1)])


@dataclass
class DeletionPlan:
    """What :func:`delete_duplicates` deletes now, derived from the samples that exist now."""

    tag: str
    run: str  # the published find_duplicates run (None: none published yet)
    delete_ids: list  # tagged members of groups whose kept sample still exists
    num_groups: int  # groups that lose samples
    lost_groups: list  # numbers of groups (with tagged members in the view) whose kept sample is gone
    unexplained: int  # samples tagged ``tag`` in the view that no published group explains

    @property
    def count(self):
        return len(self.delete_ids)

    def check(self, dataset_name):
        """Raises :class:`DeletionRefusedError` when groups lost their kept sample."""
        if self.lost_groups:
            n = len(self.lost_groups)
            raise DeletionRefusedError(
                f"{n} duplicate group{'s' if n > 1 else ''} of dataset '{dataset_name}' lost "
                f"{'their' if n > 1 else 'its'} kept sample since find_duplicates ran (group"
                f"{'s' if n > 1 else ''} {', '.join(map(str, self.lost_groups[:10]))}"
                f"{', ...' if n > 10 else ''}): nothing deleted; run find_duplicates again")


def deletion_plan(samples, tag=DEFAULT_TAG, lease_held=False):
    """The samples of ``samples`` that deleting duplicates removes now (see the module docstring).

    ``lease_held``: the caller holds the lease of the dataset's duplicates.
    """
    from fiftyone import ViewField as F

    from lookalike.curation import journal

    dataset = fo_adapter.root_dataset(samples)
    journal.check_flat(dataset)
    runs.check_complete(dataset, KIND, lease_held=lease_held)
    run = runs.published_run(dataset, KIND)
    in_view = set(samples.values("id"))
    tagged_in_view = set(samples.match_tags(tag).values("id"))
    members = {}
    if run is not None and RUN_FIELD in dataset.get_field_schema():
        # The whole dataset: a group's kept sample may lie outside the view.
        ids, numbers, tags = dataset.match(F(RUN_FIELD) == run).values(
            ["id", GROUP_FIELD, "tags"])
        for sid, number, sample_tags in zip(ids, numbers, tags):
            if number is not None:
                members.setdefault(number, []).append((sid, tag in (sample_tags or [])))
    delete_ids, lost, explained, touched = [], [], set(), 0
    for number in sorted(members):
        marked = [sid for sid, is_tagged in members[number] if is_tagged and sid in in_view]
        explained.update(marked)
        if not marked:
            continue
        if all(is_tagged for _, is_tagged in members[number]):
            lost.append(number)
            continue
        delete_ids.extend(marked)
        touched += 1
    return DeletionPlan(tag=tag, run=run, delete_ids=delete_ids, num_groups=touched,
                        lost_groups=lost, unexplained=len(tagged_in_view - explained))


@dataclass
class DeletionResult:
    plan: DeletionPlan
    journal: str  # the journal file of the deleted samples (None when nothing was deleted)

    @property
    def count(self):
        return self.plan.count


def delete_planned(samples, tag=DEFAULT_TAG):
    """Deletes what :func:`deletion_plan` lists, after journaling it; returns a :class:`DeletionResult`.

    Holds the lease of the dataset's duplicates, so no find_duplicates can
    change the groups between the plan and the delete. Image files stay.
    """
    from lookalike.curation import journal

    dataset = fo_adapter.root_dataset(samples)
    with leases.hold(dataset, runs.lease_name(KIND), job="delete_duplicates",
                     label=runs.lease_label(dataset, KIND)):
        plan = deletion_plan(samples, tag, lease_held=True)
        plan.check(dataset.name)
        if not plan.delete_ids:
            return DeletionResult(plan, None)
        path = journal.write(dataset, plan.delete_ids, "delete_duplicates", run=plan.run,
                             tag=tag)
        faults.point("delete.after_journal")
        for start in range(0, len(plan.delete_ids), DELETE_BATCH):
            dataset.delete_samples(plan.delete_ids[start:start + DELETE_BATCH])
            faults.point("delete.after_batch")
    return DeletionResult(plan, path)


def delete_duplicates(samples, tag=DEFAULT_TAG, dry_run=True):
    """Deletes the tagged duplicates that the published groups explain (not their files).

    With ``dry_run`` only counts them; both follow :func:`deletion_plan`, and
    both raise :class:`DeletionRefusedError` when groups lost their kept sample.
    A real run first writes a journal (``lookalike undelete`` restores it).

    Returns the number of samples that are (or would be) deleted.
    """
    if dry_run:
        plan = deletion_plan(samples, tag)
        plan.check(fo_adapter.root_dataset(samples).name)
        return plan.count
    return delete_planned(samples, tag).count
