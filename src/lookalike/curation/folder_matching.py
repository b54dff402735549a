"""A folder of new images against a run: duplicate, match or new; optionally imported.

Every image of a folder is embedded with the run's
encoder and called a *duplicate* of its nearest sample (within the duplicate
threshold, and confirmed by ``verify`` when one is given), a *match* (within
the match threshold, with the predicted label when the run's calibration
has labels) or *new*. ``add="new"`` imports only the new ones (tagged with
the batch), so a library grows without duplicates; their vectors join the
index, so a rerun finds them as duplicates of themselves and adds nothing.

Crash safety of ``add``: the batch's tag is written into the calibration
record (``pending_batches``) before any sample is added; the new samples are
added, then their vectors (field and index), then the calibration is carried
over to the grown field (the new samples are unlabelled and were embedded by
the run's own encoder version, so neither threshold depends on them). A job
killed in between leaves a calibration that looks stale only because of
samples of a pending batch: the next run sees that, embeds what is missing
(their files are in the folder: they come back as "already in the dataset")
and carries the calibration over.

The duplicate threshold is two-sided (:mod:`lookalike.curation.thresholds`):
it admits almost no different images, so copies the encoder places farther
(crops, mirrored or re-shot views) lie beyond it. Geometric verification
(``verify="auto"``, as in ``find_duplicates``) checks each image's nearest
samples within the run's candidate threshold, mirrored too, and calls one it
confirms a duplicate of the sample it matched. ``verify`` may also be a
function ``verify(query_path, sample_path) -> bool`` that must confirm every
duplicate.
"""

import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from lookalike.core import faults, fo_adapter, leases
from lookalike.core.errors import (
    CurationError,
    EmptyViewError,
    StaleRecordError,
    UsageError,
)
from lookalike.core.paths import check_output_file, write_csv, write_json
from lookalike.curation.thresholds import decide
from lookalike.similarity.distance import cosine_distance

VERIFY_CHOICES = ("auto", True, False)
VERIFY_NEAREST = 5  # samples per image that geometric verification checks
ADD_MODES = ("none", "new", "all")
DECISIONS = ("duplicate", "match", "new")
_FOLDER_RECORD = "folder_match"
_PANEL_ROWS = 200  # rows of the last folder match kept with the run, for the panel
TABLE_FORMATS = (".csv", ".json")


@dataclass
class MatchRow:
    path: str
    decision: str  # duplicate | match | new
    nearest_id: str = None
    nearest_path: str = None
    distance: float = None
    label: str = None  # predicted label (nearest labelled sample within the match threshold)
    label_distance: float = None
    verified: bool = None  # None: no verification ran
    sample_id: str = None  # the sample it became (imported) or already is
    note: str = ""

    @property
    def file(self):
        return os.path.basename(self.path)


@dataclass
class FolderMatchReport:
    directory: str
    brain_key: str
    threshold: float
    duplicate_threshold: float
    label_field: str = None
    add: str = "none"
    tag: str = None
    rows: list = field(default_factory=list)  # MatchRow, in folder order
    unreadable: list = field(default_factory=list)  # lookalike.images.decode.ImageFailure
    added_ids: list = field(default_factory=list)
    seconds: float = 0.0
    warning: str = None  # the calibration's about its duplicate threshold

    @property
    def counts(self):
        out = {d: 0 for d in DECISIONS}
        for r in self.rows:
            out[r.decision] += 1
        return out

    @property
    def images_per_s(self):
        return (len(self.rows) + len(self.unreadable)) / self.seconds if self.seconds else 0.0

    def summary(self):
        c = self.counts
        text = (f"{len(self.rows)} images of {self.directory} matched against '{self.brain_key}' "
                f"(duplicate threshold {self.duplicate_threshold:.4f}"
                + (f", no-match threshold {self.threshold:.4f}" if self.label_field else "")
                + f"): {c['duplicate']} already there (duplicates")
        verified = sum(r.verified is True for r in self.rows)
        text += (f", {verified} of them beyond the threshold confirmed by geometric verification)"
                 if verified else ")")
        if self.label_field:
            text += f", {c['match']} match a '{self.label_field}' label"
        text += f", {c['new']} new"
        if self.unreadable:
            n = len(self.unreadable)
            text += f"; {n} unreadable file{'s' * (n != 1)} skipped"
        if self.add != "none":
            text += (f"; imported {len(self.added_ids)} ({self.add}) tagged '{self.tag}'"
                     if self.added_ids else "; nothing imported")
        text += f" ({self.images_per_s:.0f} images/s)."
        return text + (f" Warning: {self.warning}." if self.warning else "")

    def table(self):
        """Plain rows (dicts), unreadable files last with decision "unreadable"."""
        rows = [dict(file=r.file, **asdict(r)) for r in self.rows]
        rows += [dict(file=os.path.basename(f.path), path=f.path, decision="unreadable",
                      note=f.reason) for f in self.unreadable]
        return rows

    def write(self, path):
        """Writes the table as CSV or JSON (by the extension); returns the path."""
        path = check_output_file(path, TABLE_FORMATS)
        rows = self.table()
        columns = ["file", "decision", "nearest_path", "distance", "label", "label_distance",
                   "verified", "nearest_id", "sample_id", "note", "path"]
        if path.lower().endswith(".csv"):
            return write_csv(path, columns, rows)
        return write_json(path, {"summary": self.summary(), "counts": self.counts, "rows": rows},
                          "the table", indent=1)


def _current_index(dataset, brain_key):
    """The run as the database has it now, not as this process cached it.

    Another process (a killed or finished ``match --add``, a recalibration) may
    have changed its calibration record or its samples since this process
    loaded it; deciding on the cached copy would import the same files twice.
    """
    import lookalike.similarity as ls

    fo_adapter.forget_brain_results(dataset, brain_key)
    return ls.load_index(dataset, brain_key)


def _calibration(index):
    """The fresh calibration, or one whose only change is samples of pending match batches."""
    from lookalike.similarity import records

    try:
        return records.load(index, "calibration")
    except StaleRecordError:
        record = (index.curation or {}).get("calibration") or {}
        pending = record.get("pending_batches") or []
        if pending and _state_without(index, pending) == record.get("field_state"):
            return record  # a killed `match --add`: this run finishes it
        raise


def _state_without(index, tags):
    """The run's field state as if the samples tagged ``tags`` held no vector."""
    import fiftyone as fo

    from lookalike.similarity import records

    dataset = index.dataset
    state = records.field_state(index)
    field_name = index.config.embeddings_field
    if field_name is None:
        return state
    others = dataset.match_tags(tags, bool=False).exists(field_name)
    count, first, last = others.aggregate([fo.Count(), fo.Min("_id"), fo.Max("_id")])
    batch = set(dataset.match_tags(tags).values("id"))
    size = sum(1 for s in index.sample_ids if s not in batch)
    return dict(state, count=int(count), ids=[str(first), str(last)], size=size)


def _carry_over(index, added, tag):
    """The calibration follows the grown field (see the module docstring for why it may)."""
    from lookalike.similarity import records

    record = dict(index.curation["calibration"])
    record["field_state"] = records.field_state(index)
    record["pending_batches"] = []
    record["carried_over"] = (record.get("carried_over") or [])[-20:] + [
        {"batch": tag, "added": int(added), "at": time.time()}]
    records.commit(index, {"calibration": record})


def _mark_pending(index, tag):
    record = dict(index.curation["calibration"])
    record["pending_batches"] = sorted(set(record.get("pending_batches") or []) | {tag})
    from lookalike.similarity import records

    records.commit(index, {"calibration": record})


def match_images(samples, brain_key, directory, add="none", label_field=None, verify="auto",
                 recursive=True, batch_size=64, chunk_size=512, tag=None, out=None,
                 progress=None):
    """Matches every image of ``directory`` against the indexed samples of ``samples``.

    Args:
        samples: the dataset or a view: its indexed samples are the candidates
        brain_key: a lookalike run with an encoder and a fresh calibration
        directory: a folder of images (searched recursively unless ``recursive=False``)
        add ("none"): "new" imports the new images (also new against each other:
            of two copies in the folder only the first is new), "all" every image
            not yet in the dataset, "none" nothing
        label_field (None): predict this label for matches (default: the
            calibration's label field, if any)
        verify ("auto"): geometric verification of each image against its
            nearest samples within the run's candidate threshold: a confirmed
            one is a duplicate even beyond the duplicate threshold. "auto": on
            when the calibration found images with local features; True, False,
            or a function ``verify(query_path, sample_path) -> bool`` that must
            confirm every duplicate (an unconfirmed one is a match or new)
        tag (None): the imported batch's tag (default ``match-<date>-<time>``)
        out (None): also write the table to this .csv or .json file
        progress (None): ``progress(fraction, label)``

    Returns:
        a :class:`FolderMatchReport`
    """
    import lookalike.similarity as ls
    from lookalike.core.labels import indexed_labels
    from lookalike.encoders import EncoderStoreError
    from lookalike.images.folder_import import ADD_LEASE, list_files, samples_by_file
    from lookalike.similarity import records

    start = time.perf_counter()
    if add not in ADD_MODES:
        raise UsageError(f"add must be one of {ADD_MODES}, got {add!r}")
    if out:  # refused before anything is embedded or imported, not after
        out = check_output_file(out, TABLE_FORMATS)
    dataset = fo_adapter.root_dataset(samples)
    index = _current_index(dataset, brain_key)
    try:
        encoder = ls.encoder_of(index)
    except (ValueError, EncoderStoreError) as e:
        raise UsageError(f"run '{brain_key}' cannot embed new images: {e}") from None
    calibration = _calibration(index)
    dup_threshold = float(calibration["duplicate_threshold"])
    geometric = _geometric_settings(calibration, verify, brain_key)
    if label_field and not calibration.get("label_field"):
        raise UsageError(f"run '{brain_key}' was calibrated without labels: calibrate it with "
                         f"label field '{label_field}' to match labels")
    label_field = label_field or calibration.get("label_field")
    # The no-match threshold decides label matches only: one calibrated on labels.
    threshold = float(calibration["threshold"])
    directory = os.path.abspath(os.path.expanduser(directory))
    paths = list_files(directory, recursive=recursive)
    if not paths:
        raise EmptyViewError(f"{directory}: the folder contains no files")

    row_of = {sid: r for r, sid in enumerate(index.sample_ids)}
    if samples is dataset:
        keep = None
    else:
        keep = np.array(sorted(row_of[s] for s in samples.values("id") if s in row_of), int)
        if len(keep) == 0:
            raise CurationError(f"no sample of this view is in run '{brain_key}': nothing to "
                                "match against")
    label_rows, label_of = None, {}
    if label_field:
        label_rows, labels, _ = indexed_labels(samples, index, label_field)
        label_of = dict(zip(label_rows.tolist(), labels.tolist()))
        label_rows = np.sort(label_rows) if len(label_rows) else None
    tag = tag or f"match-{time.strftime('%Y%m%d-%H%M%S')}"
    report = FolderMatchReport(directory=directory, brain_key=brain_key, threshold=threshold,
                               duplicate_threshold=dup_threshold, label_field=label_field,
                               add=add, tag=tag, warning=records.duplicate_warning(index))
    lease = (leases.acquire(dataset, ADD_LEASE, job="match_images",
                            label=f"importing into '{dataset.name}'")
             if add != "none" else None)
    try:
        # Under the lease: which files are already samples is read after taking it.
        known = samples_by_file(dataset)  # resolved paths: a symlinked folder is no new file
        pending = set(calibration.get("pending_batches") or [])
        pending_ids = set(dataset.match_tags(sorted(pending)).values("id")) if pending else set()
        embeddings, repair = [], []  # vectors of readable rows; (row, vector) to finish
        for begin in range(0, len(paths), chunk_size):
            chunk = paths[begin:begin + chunk_size]
            emb, ok, failed = encoder.embed_paths(chunk, batch_size=batch_size)
            report.unreadable.extend(failed)
            if len(ok):
                chunk_rows = _decide(index, emb, [chunk[i] for i in ok], keep, label_rows,
                                     label_of, threshold, dup_threshold, known, row_of,
                                     verify if callable(verify) else None, geometric,
                                     encoder.manifest)
                for row, vec in zip(chunk_rows, emb):
                    report.rows.append(row)
                    embeddings.append(vec)
                    if row.sample_id in pending_ids and row.sample_id not in row_of:
                        repair.append((row.sample_id, vec))
            if progress:
                done = min(begin + chunk_size, len(paths))
                progress(0.9 * done / len(paths), f"matched {done}/{len(paths)} files")
            faults.point("match.after_chunk")
        if not report.rows:
            first = report.unreadable[0]
            raise EmptyViewError(f"{directory}: none of its {len(paths)} files is a readable "
                                 f"image (e.g. {os.path.basename(first.path)}: {first.reason})")
        if add != "none":
            _within_batch(report.rows, embeddings, dup_threshold, add)
            _import(dataset, index, encoder, report, embeddings, repair, tag, calibration)
    finally:
        if lease is not None:
            lease.release()
    report.seconds = time.perf_counter() - start
    summary = dict(directory=directory, add=add, tag=tag,
                   counts=report.counts, summary=report.summary(),
                   num_unreadable=len(report.unreadable), added=len(report.added_ids),
                   rows=report.table()[:_PANEL_ROWS])
    records.save(index, _FOLDER_RECORD, summary)
    if out:
        report.write(out)
    if progress:
        progress(1.0, "done")
    return report


def _geometric_settings(calibration, verify, brain_key):
    """``{"min_inliers", "candidate_threshold"}`` when geometric verification runs, else None."""
    if callable(verify):
        return None
    if verify not in VERIFY_CHOICES:
        raise UsageError(f"verify must be one of {VERIFY_CHOICES} or a function, got {verify!r}")
    ready = (calibration.get("min_inliers") is not None
             and calibration.get("candidate_threshold") is not None)
    if verify is True and not ready:
        raise UsageError(f"cannot verify against run '{brain_key}': "
                         f"{calibration.get('inlier_rule') or 'run calibrate_threshold again'}")
    if verify is False or not ready:
        return None
    return {"min_inliers": int(calibration["min_inliers"]),
            "candidate_threshold": float(calibration["candidate_threshold"])}


def _verify_beyond(index, emb, rows, keep, geometric):
    """Rows beyond the duplicate threshold that geometric verification shows to copy one of
    their :data:`VERIFY_NEAREST` nearest samples within the candidate threshold become
    duplicates of the nearest such sample."""
    from lookalike.images import local_features as verification

    todo = [n for n, r in enumerate(rows) if r.decision != "duplicate" and r.distance is not None
            and r.distance <= geometric["candidate_threshold"]]
    if not todo:
        return
    inds, dists = index.engine.knn(emb[todo], VERIFY_NEAREST, keep=keep)
    inds, dists = np.asarray(inds), np.asarray(dists, float)
    if keep is not None:
        inds = np.where(inds >= 0, keep[np.clip(inds, 0, None)], -1)
    pairs = [(n, int(r), float(d)) for n, ir, dr in zip(todo, inds, dists)
             for r, d in zip(ir, dr) if r >= 0 and d <= geometric["candidate_threshold"]]
    if not pairs:
        return
    sample_rows = sorted({r for _, r, _ in pairs})
    ids = [str(index.sample_ids[r]) for r in sample_rows]
    path_of = dict(zip(*index.dataset.select(ids).values(["id", "filepath"])))
    paths = {("sample", r): path_of.get(i) for r, i in zip(sample_rows, ids)}
    paths.update({("query", n): rows[n].path for n in todo})
    paths = {k: p for k, p in paths.items() if p}
    pairs = [p for p in pairs if ("sample", p[1]) in paths]
    keys = sorted(paths, key=str)
    cache = verification.cache_dir(index.dataset)
    got, _ = verification.compute_features([paths[k] for k in keys], cache)
    features = dict(zip(keys, got))
    a = [("query", n) for n, _, _ in pairs]
    b = [("sample", r) for _, r, _ in pairs]
    counts = verification.verify_pairs(features, a, b)
    counts = verification.verify_mirrored(features, a, b, counts, geometric["min_inliers"],
                                          paths, cache)
    for n in todo:
        rows[n].verified = False
    for (n, r, d), c in sorted(zip(pairs, counts), key=lambda t: t[0][2]):
        row = rows[n]
        if c >= geometric["min_inliers"] and row.decision != "duplicate":
            row.decision, row.verified = "duplicate", True
            row.nearest_id, row.nearest_path = str(index.sample_ids[r]), paths[("sample", r)]
            row.distance, row.note = d, f"verified by {int(c)} inliers"


def _decide(index, emb, paths, keep, label_rows, label_of, threshold, dup_threshold, known,
            row_of, verify, geometric=None, manifest=None):
    """One :class:`MatchRow` per embedded file; ``known``: {resolved path: sample id}."""
    from lookalike.images.folder_import import resolved_paths

    engine, sample_ids = index.engine, index.sample_ids
    inds, dists = engine.knn(emb, 1, keep=keep)
    inds = np.asarray(inds)[:, 0]
    dists = np.asarray(dists, float)[:, 0]
    if keep is not None:
        inds = np.where(inds >= 0, keep[np.clip(inds, 0, None)], -1)
    if label_rows is not None:
        l_inds, l_dists = engine.knn(emb, 1, keep=label_rows)
        l_inds = label_rows[np.clip(np.asarray(l_inds)[:, 0], 0, None)]
        l_dists = np.asarray(l_dists, float)[:, 0]
    rows = []
    for n, (path, real) in enumerate(zip(paths, resolved_paths(paths))):
        row = MatchRow(path=path, decision="new")
        same = known.get(real)
        if same is not None:
            # The file itself is a sample already (a rerun after importing it).
            row.sample_id = row.nearest_id = same
            row.nearest_path = path
            row.decision = "duplicate"
            if same in row_of:
                row.distance = float(cosine_distance(engine.matrix[row_of[same]] @ emb[n]))
            row.note = "already in the dataset"
        elif inds[n] >= 0:
            row.nearest_id = str(sample_ids[inds[n]])
            row.distance = float(dists[n])
        labelled = float(l_dists[n]) if label_rows is not None else None
        if same is None:
            row.decision = decide(row.distance, dup_threshold, labelled, threshold)
        if labelled is not None and np.isfinite(labelled) and labelled <= threshold:
            row.label = label_of.get(int(l_inds[n]))
            row.label_distance = labelled
        rows.append(row)
    need = {r.nearest_id for r in rows if r.nearest_id and not r.nearest_path}
    if need:
        ds = index.dataset
        paths_of = dict(zip(*ds.select(sorted(need)).values(["id", "filepath"])))
        for r in rows:
            if r.nearest_id and not r.nearest_path:
                r.nearest_path = paths_of.get(r.nearest_id)
    if verify is not None:
        for r in rows:
            if r.decision == "duplicate" and r.note != "already in the dataset":
                r.verified = bool(verify(r.path, r.nearest_path))
                if not r.verified:
                    r.decision = decide(None, dup_threshold, r.label_distance, threshold)
    if geometric is not None:
        _verify_beyond(index, emb, rows, keep, geometric)
    if manifest:
        _flat_queries_are_new(rows, manifest)
    return rows


def _flat_queries_are_new(rows, manifest):
    """A flat image (blank, one colour) is a duplicate or a match only of a flat sample:
    next to a photo with structure, its distance means nothing (see ``images.is_flat``)."""
    from lookalike.encoders.preprocessing import load_input
    from lookalike.images.decode import UnreadableImageError, is_flat

    for r in rows:
        if r.decision == "new" or r.note == "already in the dataset" or r.verified:
            continue
        try:
            if not is_flat(load_input(r.path, manifest)):
                continue
            if r.nearest_path and is_flat(load_input(r.nearest_path, manifest)):
                continue
        except UnreadableImageError:
            continue
        r.decision, r.label, r.note = "new", None, "a flat image: no photo's duplicate or match"


def _within_batch(rows, embeddings, dup_threshold, add):
    """Of new images that duplicate each other, only the first stays new (``add="new"``)."""
    from lookalike.similarity.pairs import exact_pairs

    if add != "new":
        return
    new = [n for n, r in enumerate(rows) if r.decision == "new"]
    if len(new) < 2:
        return
    i, j, d = exact_pairs(np.stack([embeddings[n] for n in new]), dup_threshold)
    earlier = {}
    for a, b, dist in sorted(zip(i.tolist(), j.tolist(), d.tolist()), key=lambda t: t[2]):
        earlier.setdefault(b, (a, dist))  # b > a: b copies an earlier file of the batch
    for b in sorted(earlier):
        a, dist = earlier[b]
        # Only a file that stays new can be the original of another.
        while rows[new[a]].decision != "new" and a in earlier:
            a, dist = earlier[a]
        if rows[new[a]].decision == "new":
            row = rows[new[b]]
            row.decision, row.nearest_path, row.distance = "duplicate", rows[new[a]].path, dist
            row.nearest_id, row.note = None, "copy of another new image of this folder"


def _import(dataset, index, encoder, report, embeddings, repair, tag, calibration):
    """Adds the chosen images as samples and their vectors to the field and the index."""
    from lookalike.images.folder_import import _make_sample, probe_images

    if report.add == "new":
        chosen = [n for n, r in enumerate(report.rows) if r.decision == "new"]
    else:
        chosen = [n for n, r in enumerate(report.rows) if r.sample_id is None]
    if not chosen and not repair and not calibration.get("pending_batches"):
        return
    field_name = index.config.embeddings_field
    with leases.hold(dataset, f"field:{field_name}", job="match_images",
                     same=encoder.version, label=f"field '{field_name}'"):
        ids, vectors = [r for r, _ in repair], [v for _, v in repair]
        if chosen:
            _mark_pending(index, tag)
            probes = probe_images([report.rows[n].path for n in chosen])
            new_samples = []
            for probe in probes:
                sample = _make_sample(probe, report.directory, labels_from_folders=False)
                sample.tags.append(tag)
                new_samples.append(sample)
            with leases.hold(dataset, "schema", job="match_images", wait=120,
                             label=f"the field list of dataset '{dataset.name}'"):
                new_ids = dataset.add_samples(new_samples, progress=False)
            faults.point("match.after_import")
            for n, sid in zip(chosen, new_ids):
                report.rows[n].sample_id = str(sid)
                report.added_ids.append(str(sid))
            ids += [str(s) for s in new_ids]
            vectors += [embeddings[n] for n in chosen]
        if ids:
            index.add_to_index(np.stack(vectors).astype(np.float32), ids, reload=False)
            faults.point("match.after_vectors")
        _carry_over(index, len(ids), tag)
