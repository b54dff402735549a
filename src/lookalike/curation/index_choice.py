"""Which index a job offers first, and which run's results a dataset shows now.

The App's forms and panel, the CLI and ``other_backends.lookup`` all choose with
:func:`preferred_index`, so they offer the same index.
"""


def when(at):
    """A time as the panel shows it: UTC, to the minute (``at``: a datetime or epoch seconds)."""
    import datetime

    if at is None:
        return "time unknown"
    if not isinstance(at, datetime.datetime):
        at = datetime.datetime.fromtimestamp(float(at), datetime.timezone.utc)
    return at.strftime("%Y-%m-%d %H:%M UTC")


def result_origin(dataset, kind):
    """``{"brain_key", "at", "text"}`` of the results of ``kind`` ("duplicates", "outliers",
    "leaks") the dataset shows now, or None before any run."""
    from lookalike.curation import published_runs as runs

    info = runs.published_info(dataset, kind)
    if not info:
        return None
    key = info.get("brain_key")
    by = f"index '{key}'" if key else ("byte-identical files" if kind == "duplicates"
                                      else "an earlier version")
    return {"brain_key": key, "at": info.get("at"),
            "text": f"by {by}, {when(info.get('at'))}"}


# dataset.info[INFO_KEY]: the index the last job on the dataset ran with.
INFO_KEY = "lookalike_last_index"


def remember_index(dataset, brain_key):
    """Remembers ``brain_key`` as the index the last job on ``dataset`` used: the App's
    forms and panel, the CLI and other backends' lookups then offer it first. Only a
    job that ran with it should call this (looking at an index is not using it)."""
    from lookalike.core import fo_adapter

    if brain_key:
        fo_adapter.set_info_key(dataset, INFO_KEY, brain_key)


def remembered_index(dataset):
    """The index the last job on ``dataset`` used, or None."""
    from lookalike.core import fo_adapter

    return fo_adapter.read_info_key(dataset, INFO_KEY)


def preferred_index(dataset, remembered=None):
    """The index a form or the panel offers first, or None without one.

    ``remembered`` (default: :func:`remembered_index`, the one the last job used) while it
    exists; else the
    index whose duplicates or outliers the dataset shows now (the latest such
    run); else the best-calibrated: a fresh calibration before a stale one, one
    from labels before a label-free one, the most recent first.
    """
    import lookalike.similarity as ls
    from lookalike.similarity import records

    keys = ls.our_brain_keys(dataset)
    if remembered is None:
        remembered = remembered_index(dataset)
    if remembered in keys:
        return remembered
    shown = [r for r in (result_origin(dataset, k) for k in ("duplicates", "outliers"))
             if r and r["brain_key"] in keys]
    if shown:
        return max(shown, key=lambda r: r["at"])["brain_key"]

    def rank(key):
        try:
            index = ls.load_index(dataset, key)
        except Exception:  # noqa: BLE001 - an index that cannot load comes last
            return (0, 0, 0.0)
        cal = (index.curation or {}).get("calibration")
        if not cal:
            return (0, 0, 0.0)
        return (1 + records.is_fresh(index, "calibration"), bool(cal.get("label_field")),
                float(cal.get("saved_at") or 0.0))

    return max(keys, key=rank) if keys else None


def latest_record(samples, name):
    """The most recent ``name`` record (a label or folder match, say) over the dataset's runs."""
    import lookalike.similarity as ls

    from lookalike.core import fo_adapter

    dataset = fo_adapter.root_dataset(samples)
    best = None
    for key in ls.our_brain_keys(dataset):
        try:
            record = (ls.load_index(dataset, key).curation or {}).get(name)
        except Exception:  # noqa: BLE001 - one broken run must not hide the others
            continue
        if record and (best is None or record.get("saved_at", 0) > best.get("saved_at", 0)):
            best = record
    return best


def covering(dataset, keys, sample_ids):
    """The keys among ``keys`` whose index holds every one of ``sample_ids`` (a query by
    samples needs their vectors: an index over other samples cannot answer it)."""
    import numpy as np

    import lookalike.similarity as ls

    ids = np.asarray(list(sample_ids), dtype=str)
    out = []
    for key in keys:
        try:
            held = ls.load_index(dataset, key).sample_ids
        except Exception:  # noqa: BLE001 - an index that cannot load covers nothing
            continue
        if np.isin(ids, held).all():
            out.append(key)
    return out
