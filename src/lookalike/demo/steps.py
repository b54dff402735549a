"""The main job on the demo dataset, step by step (``make demo`` / ``lookalike demo``).

Train the three encoders (or reuse them when they already exist, so a rerun
costs nothing); embed and index the photos; calibrate label-free thresholds,
group near-duplicates and flag no-match outliers, scored against the demo's
ground truth; on the digits, TF Similarity's open-set calibration and the
retrieval evaluation of the metric encoder; and last, the seed's query /
database split: a query set held back from the dataset is matched against it.
"""

import time
from dataclasses import dataclass

from fiftyone import ViewField as F


@dataclass(frozen=True)
class EncoderPlan:
    name: str
    kind: str
    source: str  # which demo samples it trains on: "photo" | "digit"
    settings: dict
    quick: dict  # smaller settings for --quick (tests, smoke runs)


DEMO_ENCODERS = (
    # Near-duplicate search on photos: the seed's autoencoder ...
    EncoderPlan("demo-autoencoder", "autoencoder", "photo",
                dict(image_size=64, epochs=6, batch_size=16),
                dict(image_size=32, epochs=1, batch_size=16, width=0.25)),
    # ... and the self-supervised network that learns invariance to the edits.
    EncoderPlan("demo-contrastive", "contrastive", "photo",
                dict(image_size=32, epochs=20, batch_size=64),
                dict(image_size=32, epochs=1, batch_size=32, width=0.25)),
    # Label-based metric learning on the digits, as in the TF Similarity seed.
    EncoderPlan("demo-metric", "metric", "digit",
                dict(image_size=32, epochs=6, label_field="ground_truth"),
                dict(image_size=32, epochs=1, label_field="ground_truth", width=0.25)),
)


def train_demo_encoders(dataset, quick=False, retrain=False, log=print, store_dir=None):
    """Trains (or reuses) the demo encoders; returns their manifests by name."""
    from lookalike.encoders import (
        EncoderStoreError,
        describe,
        load_encoder,
        read_manifest,
        resolve_path,
        train_encoder,
    )

    manifests = {}
    for plan in DEMO_ENCODERS:
        name = plan.name + ("-quick" if quick else "")
        if not retrain:
            try:
                encoder = load_encoder(name, store_dir=store_dir)
                manifests[name] = encoder.manifest
                log(f"  reusing {describe(encoder.manifest)}")
                continue
            except EncoderStoreError:
                pass  # not trained yet (or unusable): train it
        settings = dict(plan.quick if quick else plan.settings)
        view = dataset.match(F("source") == plan.source)
        start = time.perf_counter()

        def on_epoch(epoch, epochs, metrics, name=name):
            log(f"    {name} epoch {epoch}/{epochs}: loss {metrics['loss']:.4f}, "
                f"{metrics.get('images_per_s', 0):.0f} images/s")

        log(f"  training {name} ({plan.kind}) on {len(view)} {plan.source}s ...")
        result = train_encoder(view, plan.kind, name, store_dir=store_dir, overwrite=retrain,
                               on_epoch=on_epoch, **settings)
        manifests[name] = read_manifest(resolve_path(name, store_dir))
        log(f"  trained {describe(result.manifest)} in {time.perf_counter() - start:.0f} s")
    return manifests


# Photos are embedded by both photo encoders and indexed, the best first; the
# summary checks each index against the demo's ground truth (each original's
# planted copies). FiftyOne's own similarity search offers the brain keys in
# alphabetical order, the first preselected: the names put the best-calibrated
# index (emb_contrastive_sim) first, the seed tutorial's autoencoder last.
PHOTO_INDEXES = (("demo-contrastive", "emb_contrastive"),
                 ("demo-autoencoder", "emb_seed_autoencoder"))


def embed_and_index_photos(dataset, quick=False, log=print, store_dir=None):
    """Embeds the demo photos with each photo encoder and builds one index per field."""
    import lookalike.similarity as ls
    from lookalike.embeddings.compute import compute_embeddings
    from lookalike.encoders import load_encoder

    photos = dataset.match(F("source") == "photo")
    keys = []
    for encoder_name, field in PHOTO_INDEXES:
        name = encoder_name + ("-quick" if quick else "")
        encoder = load_encoder(name, store_dir=store_dir)
        start = time.perf_counter()
        report = compute_embeddings(photos, encoder, field)
        key = f"{field}_sim"
        index = ls.build_index(dataset, field, key)
        log(f"  {field}: {report.embedded} embedded ({report.skipped_existing} already), "
            f"index '{key}' of {index.total_index_size} photos "
            f"in {time.perf_counter() - start:.1f} s")
        keys.append(key)
    return keys


def copy_retrieval(dataset, brain_key):
    """For each original photo with copies: the share of its copies among its nearest neighbours.

    Returns ``(recall, groups)``: recall over all planted copies when each
    original retrieves as many neighbours as it has copies (R-precision).
    """
    index = dataset.load_brain_results(brain_key)
    photos = dataset.match(F("source") == "photo")
    groups = photos.values("gt_group")
    ids = photos.values("id")
    group_of = dict(zip(ids, groups))
    originals = photos.match((F("gt_edit") == "original") & (F("gt_unique") == False))  # noqa: E712
    found = total = 0
    for sample_id, group in zip(originals.values("id"), originals.values("gt_group")):
        copies = sum(1 for g in groups if g == group) - 1
        neighbours, _ = index.nearest(sample_id, k=copies + 1)
        found += sum(1 for n in neighbours if n != sample_id and group_of.get(n) == group)
        total += copies
    return found / max(total, 1), len(originals)


def pair_scores(predicted_groups, true_groups):
    """Precision, recall and F1 of "same group" over all pairs of samples.

    Both arguments map sample ids to a group (None = in no group).
    """
    from collections import Counter

    def pairs(groups):
        sizes = Counter(g for g in groups.values() if g is not None)
        return sum(n * (n - 1) // 2 for n in sizes.values())

    both = Counter((predicted_groups.get(s), true_groups.get(s)) for s in predicted_groups
                   if predicted_groups.get(s) is not None and true_groups.get(s) is not None)
    tp = sum(n * (n - 1) // 2 for n in both.values())
    predicted, actual = pairs(predicted_groups), pairs(true_groups)
    precision = tp / predicted if predicted else 1.0
    recall = tp / actual if actual else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "pairs": predicted,
            "true_pairs": actual}


# Relations that are another shot of the scene (the real stereo pair), not a duplicate:
# find_duplicates names them apart (``shot_groups``), so the duplicate truth leaves
# them out and their recall is counted among the other shots.
SHOT_RELATIONS = ("other_view", "other_shot")


def true_groups(samples):
    """``{sample id: true duplicate group or None}``: unique photos and other shots of a
    scene (:data:`SHOT_RELATIONS`) are in no duplicate group."""
    ids, groups, unique, edits = samples.values(["id", "gt_group", "gt_unique", "gt_edit"])
    return {s: (None if u or e in SHOT_RELATIONS else g)
            for s, g, u, e in zip(ids, groups, unique, edits)}


def group_of(ids, groups):
    """``{sample id: group number or None}`` of ``ids``, from lists of ids (a report's groups)."""
    out = dict.fromkeys(ids)
    out.update((s, n) for n, group in enumerate(groups) for s in group)
    return out


def relation_recall(photos, predicted_groups, predicted_shots=None):
    """``{relation: (found, total)}``: copies in the same predicted group as their original.

    The relation is the copy's ``gt_edit`` (an edit kind, ``perspective`` for a
    synthetic viewpoint, ``other_view`` for the real stereo pair).
    ``predicted_groups`` maps sample ids to a group (None = in no group);
    ``predicted_shots`` likewise to a group of other shots of one scene, for the
    :data:`SHOT_RELATIONS` (None: they are looked for among the duplicate groups).
    """
    ids, groups, edits = photos.values(["id", "gt_group", "gt_edit"])
    original = {g: s for s, g, e in zip(ids, groups, edits) if e == "original"}
    out = {}
    for sid, group, edit in zip(ids, groups, edits):
        if edit in (None, "original") or group not in original:
            continue
        by = (predicted_shots if predicted_shots is not None and edit in SHOT_RELATIONS
              else predicted_groups)
        mine, theirs = by.get(sid), by.get(original[group])
        found, total = out.get(edit, (0, 0))
        out[edit] = (found + int(mine is not None and mine == theirs), total + 1)
    return out


def flag_scores(flagged, truth):
    """Precision and recall of a set of flagged ids against the true ones."""
    flagged, truth = set(flagged), set(truth)
    tp = len(flagged & truth)
    return {"precision": tp / len(flagged) if flagged else 1.0,
            "recall": tp / len(truth) if truth else 1.0,
            "flagged": len(flagged), "true": len(truth)}


def duplicate_rule_line(cal):
    """The duplicate threshold in one line: what it keeps, what it leaves out, any warning."""
    if cal.duplicate_recall_kept is None:  # no synthetic copies (an encoder that cannot load)
        return f"{cal.duplicate_threshold:.4f} ({cal.duplicate_rule})"
    worst = max((cal.false_pair_rate or {}).values(), default=0.0)
    text = (f"{cal.duplicate_threshold:.4f}: keeps {100 * cal.duplicate_recall_kept:.0f}% of "
            f"the synthetic copies at {100 * worst:.2f}% false pairs (target "
            f"{100 * cal.false_pair_target:g}%); not invariant to: {cal.not_invariant or 'none'}")
    if cal.duplicate_warning:
        text += f"; WARNING {cal.duplicate_warning}"
    return text


def curate_photos(dataset, brain_key, log=print):
    """Label-free calibration, duplicates and outliers on the demo photos, scored against the truth."""
    import lookalike.curation as lc

    photos = dataset.match(F("source") == "photo")
    cal = lc.calibrate_threshold(photos, brain_key)
    dups = lc.find_duplicates(photos, brain_key)
    outliers = lc.flag_outliers(photos, brain_key)
    ids, unique = photos.values(["id", "gt_unique"])
    predicted = group_of(ids, dups.groups)
    dup = pair_scores(predicted, true_groups(photos))
    relations = relation_recall(photos, predicted, group_of(ids, dups.shot_groups))
    out = flag_scores(outliers.outlier_ids, [s for s, u in zip(ids, unique) if u])
    log(f"  {brain_key}: duplicate threshold {duplicate_rule_line(cal)}")
    log(f"  {brain_key}: {dups.num_groups} groups -> pairs precision {dup['precision']:.3f} "
        f"recall {dup['recall']:.3f} F1 {dup['f1']:.3f}")
    v = dups.verification or {}
    log(f"  {brain_key}: " + (f"geometric verification: {dups.num_verified_pairs} pairs added "
                              f"of {v['num_candidates']} checked (>= {v['min_inliers']} inliers)"
                              if v.get("ran") else f"no geometric verification "
                              f"({v.get('why_not', 'no run')})"))
    log(f"  {brain_key}: copies found with their original: " + ", ".join(
        f"{edit} {found}/{total}" for edit, (found, total) in sorted(relations.items())
        if edit not in SHOT_RELATIONS))
    log(f"  {brain_key}: another shot of the same scene, found apart from the duplicates: "
        + (", ".join(f"{edit} {found}/{total}" for edit, (found, total)
                     in sorted(relations.items()) if edit in SHOT_RELATIONS) or "none planted")
        + f" ({len(dups.shot_groups)} groups of other shots)")
    log(f"  {brain_key}: outlier threshold {cal.threshold:.4f} ({cal.note}), "
        f"{out['flagged']} flagged -> precision {out['precision']:.3f} "
        f"recall {out['recall']:.3f} of the {out['true']} unique photos")
    return {"duplicates": dup, "outliers": out, "calibration": cal, "relations": relations,
            "report": dups}


def curate_digits(dataset, quick=False, log=print, store_dir=None):
    """The metric encoder on the digits: embed, index, open-set calibration, evaluation."""
    import lookalike.curation as lc
    import lookalike.similarity as ls
    from lookalike.embeddings.compute import compute_embeddings
    from lookalike.encoders import load_encoder

    digits = dataset.match(F("source") == "digit")
    encoder = load_encoder("demo-metric" + ("-quick" if quick else ""), store_dir=store_dir)
    compute_embeddings(digits, encoder, "emb_metric")
    ls.build_index(dataset, "emb_metric", "emb_metric_sim")
    cal = lc.calibrate_threshold(digits, "emb_metric_sim", label_field="ground_truth")
    ev = lc.evaluate_retrieval(digits, "emb_metric_sim", "ground_truth", k=10)
    unknown = cal.unknown_classes
    conf = ev.confusion
    rejected = conf["matrix"][-1][-1] / max(sum(conf["matrix"][-1]), 1) if conf else float("nan")
    log(f"  emb_metric_sim: no-match threshold {cal.threshold:.4f} (F1 "
        f"{cal.metric_values['f1']:.3f}, classes {', '.join(unknown)} held out as unknown); "
        f"recall@1 {ev.recall_at_1:.3f}, precision@{ev.k} {ev.precision_at_k:.3f}, "
        f"mAP@{ev.k} {ev.map_at_k:.3f}; unknown digits rejected {rejected:.3f} by the "
        f"no-match threshold, {cal.unknown_rejection or 0:.3f} called new by the decision rule "
        f"(both thresholds)")
    log(f"  emb_metric_sim: duplicate threshold {duplicate_rule_line(cal)}")
    return {"calibration": cal, "evaluation": ev}


# The seed's query/database split: held-back images, matched against the rest.
QUERY_EDITS = ("crop", "jpeg", "rotate", "brightness_contrast", "text_overlay")
QUERY_KNOWN_DIGITS_PER_CLASS = 3
QUERY_UNKNOWN_DIGITS_PER_CLASS = 10


def write_query_set(dataset, query_dir, seed=99):
    """Writes the demo's query folder; returns ``(photo truth, digit truth, held-back digit ids)``.

    Photos: a new edited copy of 5 originals (other edit parameters than the
    planted copies: they should come back as duplicates of that photo) and the
    two photos of scikit-learn that the dataset lacks (they should be new).
    Digits: copies of a few digits of each known class, held back from the
    gallery (they should match their class), and of the classes the
    calibration held out as unknown (they should be new).
    """
    import os
    import random
    import shutil

    import sklearn.datasets
    from PIL import Image

    from lookalike.images.edits import apply_edit

    if os.path.isdir(query_dir):
        shutil.rmtree(query_dir)  # ours: rebuilt so that no stale file lingers
    photo_dir, digit_dir = os.path.join(query_dir, "photos"), os.path.join(query_dir, "digits")
    os.makedirs(photo_dir)
    os.makedirs(digit_dir)
    photos = dataset.match((F("source") == "photo") & (F("gt_edit") == "original")
                           & (F("gt_unique") == False))  # noqa: E712
    rng = random.Random(seed)
    photo_truth = {}
    for (path, group), edit in zip(sorted(zip(*photos.values(["filepath", "gt_group"]))),
                                   QUERY_EDITS):
        with Image.open(path) as img:
            img.load()
            edited, ext = apply_edit(img, edit, rng)
        out = os.path.join(photo_dir, f"{group}_{edit}{ext}")
        edited.convert("RGB").save(out, **({"quality": 85} if ext == ".jpg" else {}))
        photo_truth[os.path.basename(out)] = group
    images = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    for name in ("china.jpg", "flower.jpg"):
        shutil.copyfile(os.path.join(images, name), os.path.join(photo_dir, f"unseen_{name}"))
        photo_truth[f"unseen_{name}"] = None

    unknown = set(_digit_calibration(dataset).unknown_classes or [])
    digits = dataset.match(F("source") == "digit")
    per_class, digit_truth, held_back = {}, {}, []
    for sid, path, label in zip(*digits.values(["id", "filepath", "ground_truth.label"])):
        limit = QUERY_UNKNOWN_DIGITS_PER_CLASS if label in unknown else QUERY_KNOWN_DIGITS_PER_CLASS
        if per_class.get(label, 0) >= limit:
            continue
        per_class[label] = per_class.get(label, 0) + 1
        name = f"query_{label}_{os.path.basename(path)}"
        shutil.copyfile(path, os.path.join(digit_dir, name))
        digit_truth[name] = None if label in unknown else label
        if label not in unknown:
            held_back.append(sid)
    return photo_truth, digit_truth, held_back


def _digit_calibration(dataset):
    import lookalike.curation as lc

    return lc.get_calibration(dataset, "emb_metric_sim")


def match_query_set(dataset, photo_key="emb_contrastive_sim", log=print):
    """Matches the held-back query set and scores it against what it really is."""
    import os

    import lookalike.curation as lc
    from lookalike.core.paths import default_data_dir

    data_dir = (dataset.info.get("lookalike_demo") or {}).get("data_dir") or os.path.join(
        default_data_dir(), "demo")
    query_dir = os.path.join(data_dir, "query")
    photo_truth, digit_truth, held_back = write_query_set(dataset, query_dir)

    photos = dataset.match(F("source") == "photo")
    report = lc.match_images(photos, photo_key, os.path.join(query_dir, "photos"))
    groups = dict(zip(*photos.values(["id", "gt_group"])))
    copies = [r for r in report.rows if photo_truth.get(r.file)]
    dup_ok = sum(r.decision == "duplicate" and groups.get(r.nearest_id) == photo_truth[r.file]
                 for r in copies)
    unseen = [r for r in report.rows if photo_truth.get(r.file, 0) is None]
    new_ok = sum(r.decision == "new" for r in unseen)
    log(f"  photos ({photo_key}): {dup_ok} of {len(copies)} new edited copies recognised as "
        f"duplicates of the right photo; {new_ok} of {len(unseen)} unseen photos called new "
        f"({report.images_per_s:.0f} images/s)")

    unknown = _digit_calibration(dataset).unknown_classes or []
    gallery = dataset.match((F("source") == "digit")
                            & ~F("ground_truth.label").is_in(unknown)).exclude(held_back)
    digits = lc.match_images(gallery, "emb_metric_sim", os.path.join(query_dir, "digits"))
    known = [r for r in digits.rows if digit_truth.get(r.file)]
    right = sum(r.decision == "match" and r.label == digit_truth[r.file] for r in known)
    strangers = [r for r in digits.rows if digit_truth.get(r.file, 0) is None]
    called_new = sum(r.decision == "new" for r in strangers)
    log(f"  digits (emb_metric_sim, gallery without classes {', '.join(unknown)}): {right} of "
        f"{len(known)} known digits a match with the right label; {called_new} of "
        f"{len(strangers)} digits of the held-out classes called new")
    return {"photos": {"duplicates": dup_ok, "copies": len(copies), "new": new_ok,
                       "unseen": len(unseen)},
            "digits": {"right_class": right, "known": len(known), "new": called_new,
                       "held_out": len(strangers)}}
