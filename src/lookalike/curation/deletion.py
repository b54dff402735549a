"""Deleting the tagged members of near-duplicate groups, journaled and undoable.

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

from dataclasses import dataclass

from lookalike.core import faults, fo_adapter, leases
from lookalike.core.errors import DeletionRefusedError
from lookalike.curation import published_runs as runs
from lookalike.curation.duplicates import DEFAULT_TAG, GROUP_FIELD, KIND, RUN_FIELD

DELETE_BATCH = 10_000  # samples per delete; a kill between batches is undone from the journal


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
    """What a deletion did (or, a dry run, would do): the plan it carried out, and the
    journal that undoes it."""

    plan: DeletionPlan
    journal: str  # the journal file of the deleted samples (None when nothing was deleted)
    dry_run: bool = False

    @property
    def count(self):
        return self.plan.count

    def summary(self, dataset_name=None):
        """The plan in words, for the CLI and the App (one line each)."""
        plan, tag = self.plan, self.plan.tag
        lines = []
        if plan.unexplained:
            lines.append(f"left alone: {plan.unexplained} samples tagged '{tag}' that no "
                         "published find_duplicates group explains")
        if self.dry_run:
            lines.append(f"would delete {plan.count} samples tagged '{tag}' from "
                         f"{plan.num_groups} groups (each keeps its kept sample)")
        elif self.journal:
            undo = (f"`lookalike undelete --dataset {dataset_name} --last`" if dataset_name
                    else "undelete")
            lines.append(f"deleted {plan.count} samples tagged '{tag}' from {plan.num_groups} "
                         f"groups (their files are untouched); journal {self.journal}: undo "
                         f"with {undo}")
        else:
            lines.append(f"deleted 0 samples: no published duplicate group has members tagged "
                         f"'{tag}'")
        return "\n".join(lines)


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
            leases.check_held()
            dataset.delete_samples(plan.delete_ids[start:start + DELETE_BATCH])
            faults.point("delete.after_batch")
    return DeletionResult(plan, path)


def delete_duplicates(samples, tag=DEFAULT_TAG, dry_run=True):
    """Deletes the tagged duplicates that the published groups explain (not their files).

    With ``dry_run`` only plans; both follow :func:`deletion_plan`, and both raise
    :class:`DeletionRefusedError` when groups lost their kept sample. A real run
    first writes a journal (``lookalike undelete`` restores it).

    Returns a :class:`DeletionResult`: ``.count`` samples are (or would be)
    deleted, ``.plan`` says which and why, ``.journal`` undoes it.
    """
    if dry_run:
        plan = deletion_plan(samples, tag)
        plan.check(fo_adapter.root_dataset(samples).name)
        return DeletionResult(plan, None, dry_run=True)
    return delete_planned(samples, tag)
