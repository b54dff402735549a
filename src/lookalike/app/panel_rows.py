"""What there is to see: encoders, similarity runs and curation results as plain rows.

The panel (and anything else) renders these; nothing here knows about the App.
"""

import os

from lookalike.curation.index_choice import preferred_index, result_origin, when  # noqa: F401


def encoder_rows(store_dir=None, dataset_name=None):
    """One row per saved encoder, with its training facts and preview images (autoencoders);
    those trained on ``dataset_name`` first."""
    from lookalike.encoders import list_encoders, resolve_path

    rows = []
    saved = list_encoders(store_dir=store_dir)
    saved.sort(key=lambda m: (m.get("training_data") or {}).get("dataset") != dataset_name)
    for m in saved:
        data = m.get("training_data") or {}
        loss = (m.get("final_metrics") or {}).get("loss")
        previews = []
        try:
            pdir = os.path.join(resolve_path(m["name"], store_dir), "previews")
            if os.path.isdir(pdir):
                previews = sorted(os.path.join(pdir, f) for f in os.listdir(pdir)
                                  if f.endswith(".png"))
        except Exception:  # noqa: BLE001 - a broken encoder still gets listed
            pass
        rows.append({
            "name": m["name"], "kind": m["kind"], "image_size": int(m["image_size"]),
            "embedding_size": int(m["embedding_size"]), "epochs": m.get("epochs"),
            "training_data": (f"{data.get('num_samples', m.get('num_training_images', '?'))} "
                              f"images of '{data.get('dataset', '?')}'"),
            "final_loss": round(float(loss), 4) if isinstance(loss, (int, float)) else None,
            "previews": previews,
        })
    return rows


def run_rows(dataset):
    """One row per lookalike similarity run: field, encoder, size, engine and record freshness."""
    import lookalike.similarity as ls
    from lookalike.similarity import records

    rows = []
    for key in ls.our_brain_keys(dataset):
        try:
            index = ls.load_index(dataset, key)
        except Exception as e:  # noqa: BLE001 - one broken run must not hide the others
            rows.append({"brain_key": key, "field": "?", "status": f"unloadable: {e}"})
            continue
        state = {}
        for name in ("calibration", "evaluation"):
            if name not in (index.curation or {}):
                state[name] = "none"
            else:
                state[name] = "fresh" if records.is_fresh(index, name) else "stale"
        rows.append({
            "brain_key": key, "field": index.config.embeddings_field,
            "encoder": index.config.encoder or "-", "size": int(index.total_index_size),
            "engine": index.engine.name, "calibration": state["calibration"],
            "evaluation": state["evaluation"],
        })
    return rows


def run_summary(dataset, brain_key):
    """Thresholds, metrics and figure specs of one run (whatever has been computed)."""
    import lookalike.similarity as ls
    from lookalike.similarity import records
    from lookalike.curation.calibrate import Calibration
    from lookalike.curation.evaluation import RetrievalEvaluation
    from lookalike.curation.figures import run_figures

    index = ls.load_index(dataset, brain_key)
    curation = index.curation or {}
    out = {"brain_key": brain_key, "figures": run_figures(index), "lines": []}
    if curation.get("calibration"):
        stale = "" if records.is_fresh(index, "calibration") else "STALE, recalibrate: "
        out["lines"].append(stale + Calibration.from_record(curation["calibration"]).summary())
    else:
        out["lines"].append("Not calibrated yet.")
    if curation.get("evaluation"):
        out["lines"].append(RetrievalEvaluation.from_record(curation["evaluation"]).summary())
    for name in ("duplicates", "outliers"):
        if curation.get(name):
            summary = curation[name]
            if name == "duplicates":
                line = (f"Duplicates: {summary['num_groups']} groups, "
                        f"{summary['num_duplicates']} tagged")
                gone = _deleted_since(dataset, brain_key, summary)
                if gone:
                    line += (f" ({gone}; undelete restores them)")
            else:
                line = f"Outliers: {summary['num_outliers']} of {summary['num_searched']} tagged"
            out["lines"].append(f"{line}, {when(summary.get('saved_at'))}; "
                                f"{_shown_or_replaced(dataset, name, brain_key)}")
    return out


def _deleted_since(dataset, brain_key, summary):
    """How the dataset's duplicates differ now from what the run tagged, in words
    ("177 of them deleted since: 0 groups left"), or "" where nothing was deleted."""
    from lookalike.curation.duplicates import GROUP_FIELD

    shown = result_origin(dataset, "duplicates")
    if not shown or shown.get("brain_key") != brain_key:
        return ""
    groups = [g for g in _groups_now(dataset)]
    tagged = sum(len(members) - 1 for members in groups)
    deleted = int(summary.get("num_duplicates") or 0) - tagged
    if deleted <= 0 or GROUP_FIELD not in dataset.get_field_schema():
        return ""
    return f"{deleted} of them deleted since: {len(groups)} groups left"


def _groups_now(samples):
    """The published duplicate groups that still have 2 or more members, as lists of ids."""
    from lookalike.curation.duplicates import GROUP_FIELD, duplicates_view

    if GROUP_FIELD not in samples.get_field_schema():
        return []
    members = {}
    for sid, g in zip(*duplicates_view(samples).values(["id", GROUP_FIELD])):
        members.setdefault(g, []).append(sid)
    return [m for m in members.values() if len(m) > 1]


def shot_line(samples):
    """What the panel says of the published run's other shots of one scene (not
    duplicates), or "" when there are none."""
    from lookalike.curation.duplicates import SHOT_GROUP_FIELD, shots_view

    if SHOT_GROUP_FIELD not in samples.get_field_schema():
        return ""
    groups = shots_view(samples).values(SHOT_GROUP_FIELD)
    if not groups:
        return ""
    return (f"{len(groups)} images in {len(set(groups))} groups are another shot of the same "
            "scene (the camera moved): not duplicates, never deleted as such; mind them "
            "across splits")


def _shown_or_replaced(dataset, kind, brain_key):
    """Whether the dataset's tags and fields of ``kind`` are ``brain_key``'s results, in words."""
    shown = result_origin(dataset, kind)
    if shown and shown.get("brain_key") == brain_key:
        return "these are the tags in the dataset now"
    job = "find duplicates" if kind == "duplicates" else "flag outliers"
    other = (f"index '{shown['brain_key']}' ({when(shown.get('at'))})" if shown and
             shown.get("brain_key") else "another run")
    return f"the dataset now shows {other}: {job} with this index to show these again"


def duplicate_group_rows(samples, limit=100):
    """One row per duplicate group (largest first): size, kept file, widest distance, and
    the fewest inliers a member has with the kept image (local features; "-" where
    verification did not run)."""
    from lookalike.curation.duplicates import (
        DISTANCE_FIELD,
        GROUP_FIELD,
        INLIERS_FIELD,
        duplicates_view,
    )

    schema = samples.get_field_schema()
    if GROUP_FIELD not in schema:
        return []
    view = duplicates_view(samples)  # only the published run's groups
    groups, dists, paths, tags = view.values([GROUP_FIELD, DISTANCE_FIELD, "filepath", "tags"])
    inliers = view.values(INLIERS_FIELD) if INLIERS_FIELD in schema else [None] * len(groups)
    rows = {}
    for g, d, p, t, n in zip(groups, dists, paths, tags, inliers):
        row = rows.setdefault(g, {"group": int(g), "size": 0, "kept": None, "max_distance": 0.0,
                                  "fewest_inliers": None})
        row["size"] += 1
        row["max_distance"] = round(max(row["max_distance"], float(d or 0.0)), 4)
        if "duplicate" not in (t or []):
            row["kept"] = os.path.basename(p)
        elif n is not None:
            row["fewest_inliers"] = n if row["fewest_inliers"] is None else min(
                row["fewest_inliers"], n)
    for row in rows.values():
        row["fewest_inliers"] = "-" if row["fewest_inliers"] is None else row["fewest_inliers"]
    # A group whose duplicates were deleted is resolved: only its kept image is left.
    return sorted((r for r in rows.values() if r["size"] > 1),
                  key=lambda r: r["group"])[:limit]


def group_member_rows(samples, sample_id):
    """The members of ``sample_id``'s duplicate group (of the published run), kept one first:
    file, distance and inliers to the kept sample, and why each is in the group.

    ``[]`` when the sample is in no group.
    """
    from fiftyone import ViewField as F

    from lookalike.curation.duplicates import (
        DEFAULT_TAG,
        DISTANCE_FIELD,
        GROUP_FIELD,
        INLIERS_FIELD,
        REASON_FIELD,
        duplicates_view,
    )

    schema = samples.get_field_schema()
    if GROUP_FIELD not in schema:
        return []
    view = duplicates_view(samples)
    group = view.select(sample_id).values(GROUP_FIELD)
    if not group:
        return []
    members = view.match(F(GROUP_FIELD) == group[0])
    fields = ["id", "filepath", "tags", DISTANCE_FIELD]
    ids, paths, tags, dists = members.values(fields)
    inliers = (members.values(INLIERS_FIELD) if INLIERS_FIELD in schema
               else [None] * len(ids))
    reasons = members.values(REASON_FIELD) if REASON_FIELD in schema else [None] * len(ids)
    kept = [DEFAULT_TAG not in (t or []) for t in tags]
    rows = [{"id": i, "file": os.path.basename(p), "kept": k,
             "distance": None if d is None else round(float(d), 4),
             "inliers": None if n is None else int(n),
             "reason": "kept" if k else (why or "")}
            for i, p, k, d, n, why in zip(ids, paths, kept, dists, inliers, reasons)]
    return sorted(rows, key=lambda r: (not r["kept"], r["distance"] or 0.0))


def outlier_rows(samples, limit=100):
    """The flagged no-match samples, most isolated first."""
    from lookalike.curation.outliers import DISTANCE_FIELD, FLAG_FIELD, outliers_view

    if FLAG_FIELD not in samples.get_field_schema():
        return []
    view = outliers_view(samples).limit(limit)
    ids, paths, dists = view.values(["id", "filepath", DISTANCE_FIELD])
    return [{"id": i, "file": os.path.basename(p), "nn_distance": round(float(d), 4)}
            for i, p, d in zip(ids, paths, dists)]


def folder_match_rows(rows, limit=100):
    """The first ``limit`` rows of a folder match's table (``MatchReport.table()``), for display."""
    return [{"file": r["file"],
             # An unreadable file says why ("unreadable: not an image file ...").
             "decision": (f"{r['decision']}: {r['note']}" if r["decision"] == "unreadable"
                          and r.get("note") else r["decision"]),
             "nearest_file": os.path.basename(r.get("nearest_path") or "") or None,
             "distance": None if r.get("distance") is None else round(float(r["distance"]), 4),
             "label": r.get("label")} for r in rows[:limit]]


def match_rows(dataset, limit=100):
    """The last label matching (a line) and folder match (a line and its first rows)."""
    from lookalike.curation.index_choice import latest_record as last_record

    labels, folder = last_record(dataset, "label_match"), last_record(dataset, "folder_match")
    rows = folder_match_rows((folder or {}).get("rows", []), limit)
    return {"labels": (f"{labels['num_matched']} labelled, {labels['num_no_match']} 'no match' "
                       f"in '{labels['pred_field']}'") if labels else None,
            "folder": folder["summary"] if folder else None, "rows": rows}


def neighbour_rows(dataset, brain_key, sample_id, k=10):
    """The ``k`` nearest other samples of ``sample_id``: distances and geometric inliers.

    Verified neighbours (the same object or scene seen again) come first, as
    :func:`lookalike.images.local_features.rerank` orders them.
    """
    import lookalike.similarity as ls

    ids, dists = ls.nearest(dataset, brain_key, query_ids=[sample_id], k=k + 1)
    pairs = [(i, d) for i, d in zip(ids, dists) if i != sample_id][:k]
    paths = dict(zip(*dataset.select([sample_id] + [i for i, _ in pairs])
                     .values(["id", "filepath"])))
    order, counts = ls.verify_results(ls.load_index(dataset, brain_key), paths[sample_id],
                                      [paths[i] for i, _ in pairs])
    return [{"id": pairs[n][0], "file": os.path.basename(paths[pairs[n][0]]),
             "distance": round(float(pairs[n][1]), 4), "inliers": int(counts[n])}
            for n in order]



def next_step(dataset, encoders, runs, groups):
    """The next useful step on ``dataset``, in one sentence (the panel leads with it).

    ``encoders``, ``runs``, ``groups``: the panel's rows (:func:`encoder_rows`,
    :func:`run_rows`, :func:`duplicate_group_rows`)."""
    from lookalike.curation import journal
    from lookalike.embeddings.compute import field_records

    if dataset is None:
        return "Open a dataset."
    undo = [e for e in journal.list_journals(dataset) if e.restored_at is None]
    if groups:
        step = (f"Review the {len(groups)} duplicate groups below (Show), then Delete "
                "duplicates; Find similar on a selected image.")
    elif runs and not any(r.get("calibration") == "fresh" for r in runs):
        step = "Calibrate an index (Calibrate), then Find duplicates and Outliers."
    elif runs:
        step = ("Find duplicates, Outliers or Leaks with an index; select an image and Find "
                "similar.")
    elif field_records(dataset):
        step = "Build an index over the embeddings (Index)."
    elif encoders:
        step = "Embed the dataset with an encoder (Embed)."
    else:
        step = ("Curate all (one job): it trains an encoder on a sample of this dataset, then "
                "embeds, indexes, calibrates and finds duplicates and outliers; or step by "
                "step: Train an encoder (Train), or load one.")
    if undo:
        step += f" Undelete restores the {undo[0].num_samples} samples deleted last."
    return step
