"""Curation quality and speed (run on demand; prints figures, asserts nothing).

    .venv/bin/python benchmarks/curation.py                 # both parts
    .venv/bin/python benchmarks/curation.py --quality       # (a) only; needs `make demo` first
    .venv/bin/python benchmarks/curation.py --speed --sizes 100000 1000000
    .venv/bin/python benchmarks/curation.py --verification  # (c); needs `make demo` first
    .venv/bin/python benchmarks/curation.py --flip          # (d); needs `make demo` first
    .venv/bin/python benchmarks/curation.py --rules         # (e); needs `make demo` first

(a) Quality on the demo images, per method: the three demo encoders, an
untrained copy of the TF network, raw pixels and a perceptual hash
(``imagehash.phash``, the floor to beat; Hamming distance as the cosine
distance of +-1 bit vectors). For each of 3 seeds:

* near-duplicates on the 205 photos: the label-free threshold the product uses
  (95% of synthetic edited copies of 64 sampled photos, the seed choosing the
  photos and edit parameters), pairs within it joined into connected groups,
  scored as pairs against the planted groups (precision / recall / F1);
* for reference, the best pair F1 any single threshold reaches (an oracle that
  reads the ground truth: what the representation allows, whatever the rule);
* recall@1 and mAP@10 of the photos against their group (leave-one-out);
* unseen-class rejection on the 1,797 digits: 3 classes held out (the seed
  choosing them) of the gallery; the threshold accepts 95% of the known-class
  queries; the share of unknown-class queries rejected. The metric encoder is
  retrained per seed on the known classes only, so its unknowns are unseen.

(c) Geometric verification (``--verification``; needs `make demo`'s encoders):
``find_duplicates`` itself, with and without verification, on the demo photos
(each original with its edited copies, a synthetic viewpoint copy and the real
stereo pair) in a FiftyOne dataset of its own: pair precision, recall and F1,
and the recall of each relation kind (each edit, ``perspective``,
``other_view``), for the two photo encoders and a perceptual hash; then the
cost: local features per 1,000 images, verification per pair, and at 100k
images with k = 10 candidates the cost extrapolated from those measurements.

(d) Flip-averaged embeddings (``--flip``; needs `make demo`'s encoders): each
photo encoder plain and ``+flip`` (the mean of an image's and its mirror image's
embeddings) on the demo photos, through the product's own label-free path
(``workflow.curate_photos``: calibrated thresholds, duplicates with
verification, the default outlier rule) and the copy retrieval of ``make demo``
(R-precision): pair F1, outlier precision / recall, R-precision, embedding time.

(e) The duplicate and outlier threshold rules (``--rules``; needs `make demo`'s
encoders): the previous one-sided rule (the duplicate threshold keeps 95% of all
synthetic copies, every edit averaged in; the label-free outlier threshold is
the isolation rule floored at it) beside the two-sided rule
(:mod:`lookalike.curation.thresholds`), in the same run, on the same indexes,
through the same product code (``find_duplicates`` with verification,
``flag_outliers``; only the thresholds differ): for each demo encoder the
duplicate threshold, pair precision / recall / F1, outlier precision / recall,
the copies found per edit, and what each rule calls the junk probes (noise,
flat colours, patterns) and two unrelated photos (the previous rule by distance to
the nearest sample: duplicate, "match" (its label-free rule) or new; the two-sided
rule through ``match_images``, the product's own folder match) and, for the metric encoder,
the demo's held-out digits of unknown and known classes.

(b) Speed of ``find_duplicates``' pair search on clustered synthetic unit
vectors with planted near-duplicate pairs (d = 256): ours exact (tiled matrix
products), ours approximate (a list join over k-means lists), the previous
approximate search (a faiss IVF range search) and fiftyone-brain's
``compute_near_duplicates`` on the same vectors and threshold, in the same run;
recall against exact; the GEMM bound 2 * N^2 * d / the machine's measured
float32 matrix-product FLOP/s.
"""

import argparse
import os
import random
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))
sys.path.insert(0, os.path.join(REPO, "tests"))

SEEDS = (51, 52, 53)


# -- (a) quality ---------------------------------------------------------------
def _pairs_scores(groups, truth):
    from lookalike.demo.steps import pair_scores

    return pair_scores(dict(enumerate(groups)), dict(enumerate(truth)))


def _copy_threshold(embed, images, seed, num=64, recall=0.95):
    from lookalike.images.edits import COPY_EDITS, edited_copy
    from lookalike.similarity.distance import cosine_distance

    rng = np.random.default_rng(seed)
    erng = random.Random(seed)
    chosen = rng.choice(len(images), min(num, len(images)), replace=False)
    dists = []
    for i in chosen:
        batch = [images[i]] + [edited_copy(images[i], e, erng) for e in COPY_EDITS]
        v = embed(batch)
        dists.extend(cosine_distance(v[1:] @ v[0]).tolist())
    return float(np.percentile(dists, 100 * recall))


def _duplicates(vectors, threshold):
    from lookalike.similarity.pairs import groups_within

    labels = np.full(len(vectors), None, dtype=object)
    for n, g in enumerate(groups_within(vectors, threshold, engine="exact")):
        labels[g] = n
    return labels


def _best_f1(vectors, truth):
    """The best pair F1 over every threshold (an oracle: it reads the ground truth)."""
    from lookalike.similarity.distance import cosine_distance
    from lookalike.similarity.pairs import groups_from_pairs

    n = len(vectors)
    iu = np.triu_indices(n, 1)
    d = cosine_distance(vectors @ vectors.T)[iu]
    best = (0.0, 0.0)
    for t in np.unique(np.quantile(d, np.linspace(0.0005, 0.2, 120))):
        keep = d <= t
        labels = np.full(n, None, dtype=object)
        for g, members in enumerate(groups_from_pairs(n, iu[0][keep], iu[1][keep])):
            labels[members] = g
        f1 = _pairs_scores(labels, truth)["f1"]
        best = max(best, (f1, float(t)))
    return best


def _retrieval(vectors, labels, k=10):
    from lookalike.curation.evaluation import retrieval_metrics
    from lookalike.curation.neighbours import leave_one_out
    from lookalike.similarity.engine import ExactEngine

    labels = np.asarray(labels, dtype=object)
    inds, _ = leave_one_out(ExactEngine(vectors), k=k)
    rel = labels[inds] == labels[:, None]
    counts = {c: int((labels == c).sum()) for c in set(labels.tolist())}
    return retrieval_metrics(rel, [counts[c] - 1 for c in labels])


def _rejection(vectors, labels, unknown, keep=0.95):
    from lookalike.curation.neighbours import leave_one_out
    from lookalike.similarity.engine import ExactEngine

    labels = np.asarray(labels)
    known = ~np.isin(labels, unknown)
    _, d = leave_one_out(ExactEngine(vectors), gallery=np.flatnonzero(known), k=1)
    threshold = np.percentile(d[known, 0], 100 * keep)
    return float((d[~known, 0] > threshold).mean())


def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _resized(images, manifest):
    """PIL images as the input arrays of ``manifest``'s encoder (its own preprocessing)."""
    from lookalike.encoders.preprocessing import to_input

    return np.stack([to_input(im.convert("RGB"), manifest) for im in images])


def _at_32_px():
    from lookalike.encoders.preprocessing import input_manifest

    return input_manifest("metric", 32)


def embedders(store_dir=None, digits_known=None):
    """{name: (embed(list of PIL) -> unit vectors)} of every method compared."""
    from lookalike.encoders import keras_models as keras, load_encoder

    out = {}
    for name in ("demo-contrastive", "demo-autoencoder", "demo-metric"):
        enc = load_encoder(name, store_dir=store_dir)
        out[name] = (lambda ims, enc=enc: enc.embed(_resized(ims, enc.manifest)))
    net = keras.build(32, 128, seed=0)
    out["untrained network"] = lambda ims: _unit(net(_resized(ims, _at_32_px()).astype(np.float32),
                                                     training=False).numpy())

    def pixels(ims):
        x = _resized(ims, _at_32_px()).reshape(len(ims), -1).astype(np.float32)
        return _unit(x - x.mean(axis=1, keepdims=True))

    out["raw pixels (32 px)"] = pixels
    try:
        import imagehash
    except ImportError:
        print("imagehash is not installed (pip install -e '.[bench]'): no perceptual-hash floor")
    else:
        def phash(ims):
            bits = np.stack([imagehash.phash(im).hash.ravel() for im in ims]).astype(np.float32)
            return _unit(2 * bits - 1)

        out["perceptual hash (phash)"] = phash
    return out


def quality(args):
    from PIL import Image

    from lookalike.demo.dataset import write_demo_images
    from lookalike.encoders import metric as tfmetric
    from lookalike.images.decode import load_image

    tmp = tempfile.mkdtemp(prefix="lookalike-bench-demo-")
    records = write_demo_images(tmp)
    photos = [r for r in records if r["source"] == "photo"]
    digits = [r for r in records if r["source"] == "digit"]
    photo_images = [load_image(r["filepath"]) for r in photos]
    digit_images = [Image.open(r["filepath"]).convert("RGB") for r in digits]
    truth = [None if r["gt_unique"] else r["gt_group"] for r in photos]
    groups = [r["gt_group"] for r in photos]
    digit_labels = np.array([r["label"] for r in digits])
    methods = embedders()
    rows = {name: [] for name in list(methods) + ["demo-metric (known classes only)"]}
    for seed in SEEDS:
        unknown = np.random.default_rng(seed).choice([str(c) for c in range(10)], 3,
                                                     replace=False).tolist()
        print(f"seed {seed}: unknown digits {unknown}", flush=True)
        # The metric encoder, retrained on the known classes only.
        known_idx = [i for i, lab in enumerate(digit_labels) if lab not in unknown]
        arrays = _resized([digit_images[i] for i in known_idx], _at_32_px())
        store = tempfile.mkdtemp(prefix="lookalike-bench-models-")
        t = time.perf_counter()
        tfmetric.train(arrays, digit_labels[known_idx].tolist(), "known-only", store_dir=store,
                       image_size=32, epochs=6, seed=seed)
        print(f"  trained the metric encoder on {len(known_idx)} known digits in "
              f"{time.perf_counter() - t:.0f} s", flush=True)
        from lookalike.encoders import load_encoder

        enc = load_encoder("known-only", store_dir=store)
        seeded = dict(methods)
        seeded["demo-metric (known classes only)"] = (
            lambda ims, enc=enc: enc.embed(_resized(ims, enc.manifest)))
        for name, embed in seeded.items():
            t = time.perf_counter()
            vp = embed(photo_images)
            threshold = _copy_threshold(embed, photo_images, seed)
            dup = _pairs_scores(_duplicates(vp, threshold), truth)
            oracle_f1, oracle_t = _best_f1(vp, truth)
            ret = _retrieval(vp, groups)
            rej = _rejection(embed(digit_images), digit_labels, unknown)
            rows[name].append(dict(p=dup["precision"], r=dup["recall"], f1=dup["f1"],
                                   threshold=threshold, oracle=oracle_f1,
                                   r1=ret.recall_at_1,
                                   map10=ret.map_at_k, rejection=rej))
            print(f"  {name}: dup P {dup['precision']:.3f} R {dup['recall']:.3f} "
                  f"F1 {dup['f1']:.3f} at {threshold:.4f} (best {oracle_f1:.3f} at "
                  f"{oracle_t:.4f}); recall@1 {ret.recall_at_1:.3f} "
                  f"mAP@10 {ret.map_at_k:.3f}; unseen rejected {rej:.3f} "
                  f"({time.perf_counter() - t:.1f} s)", flush=True)
    print("\n| method | dup precision | dup recall | dup F1 | threshold | best F1 (oracle "
          "threshold) | recall@1 | mAP@10 | unseen-class rejection at 95% known kept |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rs in rows.items():
        if not rs:
            continue

        def ms(key, rs=rs):
            v = np.array([r[key] for r in rs])
            return f"{v.mean():.3f} ± {v.std():.3f}"

        print(f"| {name} | {ms('p')} | {ms('r')} | {ms('f1')} | {ms('threshold')} | "
              f"{ms('oracle')} | {ms('r1')} | "
              f"{ms('map10')} | {ms('rejection')} |")
    print("(mean ± std over seeds " + ", ".join(map(str, SEEDS)) + "; the demo encoders "
          "are those `make demo` trained; demo-metric saw every digit class in training)")


# -- (b) speed -----------------------------------------------------------------
def planted(n, d, seed=0, dup_share=0.05, noise=0.02):
    """Clustered unit vectors, ``dup_share`` of them near-copies of another row."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(10, int(np.sqrt(n))), d)).astype(np.float32)
    base_n = n - int(n * dup_share)
    x = np.empty((n, d), np.float32)
    x[:base_n] = centers[rng.integers(0, len(centers), base_n)]
    x[:base_n] += 0.35 * rng.normal(size=(base_n, d)).astype(np.float32)
    x[:base_n] /= np.linalg.norm(x[:base_n], axis=1, keepdims=True)
    src = rng.integers(0, base_n, n - base_n)
    x[base_n:] = x[src] + noise / np.sqrt(d) * rng.normal(size=(n - base_n, d)).astype(np.float32)
    x[base_n:] /= np.linalg.norm(x[base_n:], axis=1, keepdims=True)
    return x, set(zip(src.tolist(), range(base_n, n)))


def gemm_flops():
    a = np.random.default_rng(0).normal(size=(4096, 256)).astype(np.float32)
    b = np.random.default_rng(1).normal(size=(256, 16384)).astype(np.float32)
    a @ b
    t = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 4096 * 256 * 16384 / (time.perf_counter() - t)


def previous_pairs(x, threshold, nprobe=4, batch=16384):
    """The pair search as it was: a faiss IVF (2 * sqrt(N) lists) range search, 4 lists probed."""
    import faiss

    from lookalike.similarity.distance import cosine_distance, similarity_cutoff

    n, d = x.shape
    nlist = max(1, min(int(2 * np.sqrt(n)), n // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10
    index.train(x[np.random.default_rng(51).choice(n, min(n, 39 * nlist), replace=False)])
    index.add(x)
    params = faiss.SearchParametersIVF(nprobe=nprobe)
    found = set()
    for start in range(0, n, batch):
        lims, sims, inds = index.range_search(x[start:start + batch], similarity_cutoff(threshold),
                                              params=params)
        i = np.repeat(np.arange(start, start + len(lims) - 1), np.diff(lims).astype(np.int64))
        keep = (inds != i) & (cosine_distance(sims) <= threshold)
        found.update(zip(np.minimum(i, inds)[keep].tolist(), np.maximum(i, inds)[keep].tolist()))
    return found


def speed(args):
    from lookalike.similarity.pairs import approximate_pairs, exact_pairs

    flops = gemm_flops()
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}, "
          f"float32 GEMM {flops / 1e9:.0f} GFLOP/s", flush=True)
    d, threshold = 256, args.threshold
    rows = []
    for n in args.sizes:
        x, planted_pairs = planted(n, d)
        bound = 2 * n * n * d / flops
        row = dict(N=n, bound=bound)
        t = time.perf_counter()
        ai, aj, _ = approximate_pairs(x, threshold)
        row["ivf_s"] = time.perf_counter() - t
        found = set(zip(ai.tolist(), aj.tolist()))
        row["ivf_planted"] = len(found & planted_pairs) / len(planted_pairs)
        print(f"N={n:,}: list join {row['ivf_s']:.1f} s, {len(found):,} pairs, "
              f"{row['ivf_planted']:.4f} of planted", flush=True)
        t = time.perf_counter()
        before = previous_pairs(x, threshold)
        row["prev_s"] = time.perf_counter() - t
        row["prev_planted"] = len(before & planted_pairs) / len(planted_pairs)
        print(f"  previous (faiss IVF range search) {row['prev_s']:.1f} s, {len(before):,} pairs, "
              f"{row['prev_planted']:.4f} of planted", flush=True)
        if n <= args.max_exact:
            t = time.perf_counter()
            ei, ej, _ = exact_pairs(x, threshold)
            row["exact_s"] = time.perf_counter() - t
            exact = set(zip(ei.tolist(), ej.tolist()))
            row["ivf_recall"] = len(found & exact) / max(len(exact), 1)
            row["exact_pairs"] = len(exact)
            print(f"  exact {row['exact_s']:.1f} s ({row['exact_s'] / bound:.2f}x the GEMM bound), "
                  f"{len(exact):,} pairs; IVF recall of exact {row['ivf_recall']:.4f}", flush=True)
        if n <= args.max_fob:
            row["fob_s"], row["fob_recall"] = fob_near_duplicates(x, threshold, exact if
                                                                  "exact_s" in row else None)
            print(f"  fob.compute_near_duplicates {row['fob_s']:.1f} s "
                  f"(ours approximate {row['fob_s'] / row['ivf_s']:.1f}x faster)", flush=True)
        rows.append(row)
    print(f"\n| N (d = {d}, threshold {threshold}) | ours approximate (list join) s | recall of exact | "
          "planted found | previous (IVF range search) s | its planted found | ours exact s | "
          "fob.compute_near_duplicates s | fob / ours | GEMM bound s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fmt = lambda k, f="{:.1f}": f.format(r[k]) if k in r else "-"  # noqa: E731
        ratio = f"{r['fob_s'] / r['ivf_s']:.1f}x" if "fob_s" in r else "-"
        print(f"| {r['N']:,} | {r['ivf_s']:.1f} | {fmt('ivf_recall', '{:.4f}')} | "
              f"{r['ivf_planted']:.4f} | {r['prev_s']:.1f} | {r['prev_planted']:.4f} | "
              f"{fmt('exact_s')} | {fmt('fob_s')} | {ratio} | {r['bound']:.1f} |")


def fob_near_duplicates(x, threshold, exact=None):
    import fiftyone as fo
    import fiftyone.brain as fob

    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.jpg") for i in range(len(x))],
                   progress=False)
    try:
        t = time.perf_counter()
        index = fob.compute_near_duplicates(ds, threshold=threshold, embeddings=x,
                                            progress=False)
        seconds = time.perf_counter() - t
        recall = None
        if exact is not None:
            flagged = set(index.duplicate_ids)
            ids = ds.values("id")
            dup_rows = {j for _, j in exact} | {i for i, _ in exact}
            recall = len({ids[r] for r in dup_rows} & flagged) / max(len(dup_rows), 1)
            print(f"  fob flagged {len(flagged):,} samples; {recall:.4f} of the samples in exact "
                  "pairs", flush=True)
        return seconds, recall
    finally:
        ds.delete()


def verification(args):
    import fiftyone as fo
    from fiftyone import ViewField as F

    import lookalike.curation as lc
    import lookalike.similarity as ls
    from lookalike.images import local_features as V
    from lookalike.demo.dataset import build_demo_dataset
    from lookalike.embeddings.compute import compute_embeddings
    from lookalike.encoders import load_encoder
    from lookalike.images.decode import load_image
    from lookalike.demo.steps import group_of, pair_scores, relation_recall, true_groups

    tmp = tempfile.mkdtemp(prefix="lookalike-bench-verify-")
    ds = build_demo_dataset("bench-verification", data_dir=tmp, max_digits=1)
    photos = ds.match(F("source") == "photo")
    ids, groups, unique = photos.values(["id", "gt_group", "gt_unique"])
    truth = true_groups(photos)  # the stereo pair is another shot, not a duplicate
    for name in ("demo-contrastive", "demo-autoencoder"):
        compute_embeddings(photos, load_encoder(name, store_dir=args.store_dir), f"emb_{name}")
    phash = embedders(args.store_dir).get("perceptual hash (phash)")
    fields = [f"emb_{n}" for n in ("demo-contrastive", "demo-autoencoder")]
    if phash is not None:
        photos.set_values("emb_phash", list(phash([load_image(p) for p in
                                                   photos.values("filepath")])))
        fields.append("emb_phash")
    rows = []
    for field in fields:
        key = field.replace("-", "_") + "_sim"
        ls.build_index(ds, field, key)
        cal = lc.calibrate_threshold(photos, key)
        for verify in (False, True):
            t = time.perf_counter()
            report = lc.find_duplicates(photos, key, verify=verify)
            seconds = time.perf_counter() - t
            predicted = group_of(ids, report.groups)
            scores = pair_scores(predicted, truth)
            rows.append((field, verify, scores, relation_recall(photos, predicted), seconds,
                         report.num_verified_pairs))
            print(f"  {field} verify={verify}: P {scores['precision']:.3f} "
                  f"R {scores['recall']:.3f} F1 {scores['f1']:.3f} ({seconds:.1f} s; "
                  f"{report.num_verified_pairs} pairs verified; min_inliers "
                  f"{cal.min_inliers})", flush=True)
    kinds = sorted({k for row in rows for k in row[3]})
    print("\n| method | verification | pair precision | pair recall | pair F1 | "
          + " | ".join(kinds) + " |")
    print("|---|---|---|---|---|" + "---|" * len(kinds))
    for field, verify, scores, relations, _, _ in rows:
        print(f"| {field[4:]} | {'on' if verify else 'off'} | {scores['precision']:.3f} | "
              f"{scores['recall']:.3f} | {scores['f1']:.3f} | "
              + " | ".join("{}/{}".format(*relations.get(k, (0, 0))) for k in kinds) + " |")

    # The cost, measured here, then extrapolated.
    paths = photos.values("filepath")
    t = time.perf_counter()
    features, _ = V.compute_features(paths)  # no cache: every image decoded and described
    per_image = (time.perf_counter() - t) / len(paths)
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(paths), 600), rng.integers(0, len(paths), 600)
    t = time.perf_counter()
    V.verify_pairs(features, i, j)
    per_pair = (time.perf_counter() - t) / len(i)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n, k = 100_000, 10
    print(f"\nfeatures: {1000 * per_image:.1f} s per 1,000 images; verification: "
          f"{1000 * per_pair:.2f} ms per pair ({cores} cores, wall clock, both in parallel)")
    print(f"at {n:,} images with k = {k} candidates (at most {n * k // 2:,} pairs): features "
          f"{n * per_image / 60:.0f} min, verification {n * k / 2 * per_pair / 60:.0f} min "
          "(the features are cached: a rerun pays only the pairs)")
    fo.delete_dataset("bench-verification")


def flip(args):
    import fiftyone as fo
    from fiftyone import ViewField as F

    import lookalike.similarity as ls
    from lookalike.demo.dataset import build_demo_dataset
    from lookalike.embeddings.compute import compute_embeddings
    from lookalike.encoders import load_encoder
    from lookalike.demo.steps import copy_retrieval, curate_photos

    tmp = tempfile.mkdtemp(prefix="lookalike-bench-flip-")
    ds = build_demo_dataset("bench-flip", data_dir=tmp, max_digits=1)
    photos = ds.match(F("source") == "photo")
    rows = []
    for name in ("demo-contrastive", "demo-autoencoder"):
        for flip_average in (False, True):
            encoder = load_encoder(name, store_dir=args.store_dir, flip_average=flip_average)
            field = "emb_" + encoder.name.replace("-", "_").replace("+", "_")
            t = time.perf_counter()
            compute_embeddings(photos, encoder, field)
            seconds = time.perf_counter() - t
            key = field + "_sim"
            ls.build_index(ds, field, key)
            result = curate_photos(ds, key, log=lambda line: print(line, flush=True))
            r_precision, _ = copy_retrieval(ds, key)
            rows.append((encoder.name, result, r_precision, seconds))
    print("\n| encoder | pair precision | pair recall | pair F1 | outlier precision | "
          "outlier recall | R-precision | embedding s / 205 photos |")
    print("|---|---|---|---|---|---|---|---|")
    for name, result, r_precision, seconds in rows:
        d, o = result["duplicates"], result["outliers"]
        print(f"| {name} | {d['precision']:.3f} | {d['recall']:.3f} | {d['f1']:.3f} | "
              f"{o['precision']:.3f} ({o['flagged']} flagged) | {o['recall']:.3f} | "
              f"{r_precision:.3f} | {seconds:.1f} |")
    fo.delete_dataset("bench-flip")


def _old_rule(index, nn1, recall=0.95):
    """The previous one-sided thresholds: ``(duplicate, outlier)``."""
    from lookalike.curation.synthetic_copies import copy_distances
    from lookalike.curation.isolation import isolation_threshold
    from lookalike.images.edits import COPY_EDITS

    dists = copy_distances(index, num_images=64, seed=51)
    flat = np.concatenate([np.asarray(v, float) for e, v in dists.items() if e in COPY_EDITS])
    dup = float(np.percentile(flat, 100 * recall))
    outlier, _ = isolation_threshold(nn1[np.isfinite(nn1)], floor=dup)
    return dup, outlier


def _probe_folder(root):
    """Junk probes (other seeds and sizes than calibration's) and scikit-learn's two photos."""
    import shutil

    import sklearn.datasets

    from lookalike.curation.synthetic_copies import junk_images

    os.makedirs(root, exist_ok=True)
    for n, (kind, img) in enumerate(junk_images(size=96, seed=7, per_kind=1)):
        img.save(os.path.join(root, f"junk_{n:02d}_{kind}.png"))
    images = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    for name in ("china.jpg", "flower.jpg"):
        shutil.copyfile(os.path.join(images, name), os.path.join(root, f"unrelated_{name}"))
    return root


def _nearest(index, folder, keep=None, labels=None):
    """``[(file, distance to the nearest sample of keep, its label)]`` of a folder's images."""
    from lookalike.encoders.preprocessing import load_input
    from lookalike.similarity import encoder_of

    encoder = encoder_of(index)
    files = sorted(os.listdir(folder))
    emb = np.asarray(encoder.embed(np.stack([load_input(os.path.join(folder, f),
                                                        encoder.manifest) for f in files])),
                     np.float32)
    inds, dists = index.engine.knn(emb, 1, keep=keep)  # indices into keep, when given
    rows = inds[:, 0] if keep is None else np.asarray(keep)[inds[:, 0]]
    return [(f, float(d[0]), (labels or {}).get(int(r))) for f, r, d in zip(files, rows, dists)]


def _old_decide(d, dup, outlier):
    """The previous label-free folder decision: a "match" within the outlier threshold."""
    return "duplicate" if d <= dup else "match" if d <= outlier else "new"


def rules(args):
    import collections

    import fiftyone as fo
    from fiftyone import ViewField as F

    import lookalike.curation as lc
    import lookalike.similarity as ls
    from lookalike.curation.neighbours import leave_one_out
    from lookalike.curation.thresholds import decide
    from lookalike.demo.dataset import build_demo_dataset
    from lookalike.embeddings.compute import compute_embeddings
    from lookalike.encoders import load_encoder
    from lookalike.demo.steps import (
        flag_scores,
        group_of,
        pair_scores,
        relation_recall,
        true_groups,
        write_query_set,
    )

    tmp = tempfile.mkdtemp(prefix="lookalike-bench-rules-")
    probes = _probe_folder(os.path.join(tmp, "probes"))
    ds = build_demo_dataset("bench-rules", data_dir=os.path.join(tmp, "demo"))
    photos = ds.match(F("source") == "photo")
    ids, groups, unique = photos.values(["id", "gt_group", "gt_unique"])
    truth = true_groups(photos)  # the stereo pair is another shot, not a duplicate
    unique_ids = [s for s, u in zip(ids, unique) if u]
    rows = []
    for name in ("demo-contrastive", "demo-autoencoder"):
        field = "emb_" + name.replace("-", "_")
        compute_embeddings(photos, load_encoder(name, store_dir=args.store_dir), field)
        key = field + "_sim"
        index = ls.build_index(ds, field, key)
        cal = lc.calibrate_threshold(photos, key)
        _, nn = leave_one_out(index.engine, k=1)
        old_dup, old_out = _old_rule(index, nn[:, 0])
        near = _nearest(index, probes)
        for rule, dup_t, out_t in (("one-sided (before)", old_dup, old_out),
                                   ("two-sided (now)", None, None)):
            report = lc.find_duplicates(photos, key, threshold=dup_t)
            predicted = group_of(ids, report.groups)
            outliers = lc.flag_outliers(photos, key, threshold=out_t)
            if dup_t is None:  # the product's own folder match
                found = lc.match_images(photos, key, probes).rows
                named = [(r.file, r.decision, r.distance) for r in found]
            else:  # the previous rule, by distance
                named = [(f, _old_decide(d, dup_t, out_t), d) for f, d, _ in near]
            calls = [c for _, c, _ in named]
            print(f"  {name} {rule}: probes not new: " + ", ".join(
                f"{f} {c} {d:.4f}" for f, c, d in named if c != "new"))
            rows.append(dict(encoder=name, rule=rule, threshold=report.threshold,
                             outlier_threshold=outliers.threshold,
                             pairs=pair_scores(predicted, truth),
                             outliers=flag_scores(outliers.outlier_ids, unique_ids),
                             relations=relation_recall(photos, predicted),
                             probes=collections.Counter(calls),
                             excluded=cal.not_invariant if dup_t is None else "(none: averaged)",
                             separable=cal.duplicate_separable if dup_t is None else "-"))
            print(f"  {name} {rule}: {rows[-1]}", flush=True)

    # The metric encoder on the digits, with the demo's open-set query step.
    digits = ds.match(F("source") == "digit")
    compute_embeddings(digits, load_encoder("demo-metric", store_dir=args.store_dir), "emb_metric")
    index = ls.build_index(ds, "emb_metric", "emb_metric_sim")
    cal = lc.calibrate_threshold(digits, "emb_metric_sim", label_field="ground_truth")
    _, nn = leave_one_out(index.engine, k=1)
    old_dup, _ = _old_rule(index, nn[:, 0])
    _, digit_truth, held_back = write_query_set(ds, os.path.join(tmp, "query"))
    unknown = cal.unknown_classes or []
    gallery = digits.match(~F("ground_truth.label").is_in(unknown)).exclude(held_back)
    row_of = {s: r for r, s in enumerate(index.sample_ids)}
    keep = np.sort([row_of[s] for s in gallery.values("id")])
    label_of = {row_of[s]: lab for s, lab in zip(*gallery.values(["id", "ground_truth.label"]))}
    queries = _nearest(index, os.path.join(tmp, "query", "digits"), keep=keep, labels=label_of)
    junk = _nearest(index, probes, keep=keep)
    for rule, dup_t in (("one-sided (before)", old_dup), ("two-sided (now)",
                                                          cal.duplicate_threshold)):
        def call(d, dup_t=dup_t):
            return decide(d, dup_t, d, cal.threshold)

        known = [(call(d), lab == digit_truth[f]) for f, d, lab in queries if digit_truth[f]]
        strangers = [call(d) for f, d, _ in queries if digit_truth[f] is None]
        rows.append(dict(encoder="demo-metric", rule=rule, threshold=dup_t,
                         known_right=sum(c == "match" and ok for c, ok in known),
                         known_dup=sum(c == "duplicate" for c, _ in known),
                         known=len(known), unknown_new=strangers.count("new"),
                         unknown_dup=strangers.count("duplicate"), unknown=len(strangers),
                         probes=collections.Counter(
                             [r.decision for r in lc.match_images(gallery, "emb_metric_sim",
                                                                  probes).rows]
                             if rule.startswith("two") else [call(d) for _, d, _ in junk]),
                         excluded=cal.not_invariant if rule.startswith("two") else
                         "(none: averaged)"))
        print(f"  demo-metric {rule}: {rows[-1]}", flush=True)

    def probes_text(c):
        return ", ".join(f"{c[k]} {k}" for k in ("duplicate", "match", "new") if c.get(k))

    print("\n| encoder | rule | duplicate threshold | pair P | pair R | pair F1 | outlier P | "
          "outlier R (flagged) | junk + 2 unrelated photos called | not invariant to |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "pairs" not in r:
            continue
        p, o = r["pairs"], r["outliers"]
        print(f"| {r['encoder']} | {r['rule']} | {r['threshold']:.4f} | {p['precision']:.3f} | "
              f"{p['recall']:.3f} | {p['f1']:.3f} | {o['precision']:.3f} | {o['recall']:.3f} "
              f"({o['flagged']}) | {probes_text(r['probes'])} | {r['excluded']} |")
    kinds = sorted({k for r in rows if "relations" in r for k in r["relations"]})
    print("\n| encoder | rule | " + " | ".join(kinds) + " |")
    print("|---|---|" + "---|" * len(kinds))
    for r in rows:
        if "relations" in r:
            print(f"| {r['encoder']} | {r['rule']} | " + " | ".join(
                "{}/{}".format(*r["relations"].get(k, (0, 0))) for k in kinds) + " |")
    print("\n| encoder | rule | duplicate threshold | known digits matched to their class | "
          "known called duplicate | unknown digits called new | unknown called duplicate | "
          "junk + 2 photos called | not invariant to |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "known" in r:
            print(f"| {r['encoder']} | {r['rule']} | {r['threshold']:.4f} | "
                  f"{r['known_right']}/{r['known']} | {r['known_dup']}/{r['known']} | "
                  f"{r['unknown_new']}/{r['unknown']} | "
                  f"{r['unknown_dup']}/{r['unknown']} | {probes_text(r['probes'])} | "
                  f"{r['excluded']} |")
    fo.delete_dataset("bench-rules")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quality", action="store_true", help="only part (a)")
    parser.add_argument("--speed", action="store_true", help="only part (b)")
    parser.add_argument("--verification", action="store_true", help="only part (c)")
    parser.add_argument("--flip", action="store_true", help="only part (d)")
    parser.add_argument("--rules", action="store_true", help="only part (e)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--threshold", type=float, default=0.01)
    parser.add_argument("--max-exact", type=int, default=100_000)
    parser.add_argument("--max-fob", type=int, default=100_000)
    args = parser.parse_args()
    every = not (args.quality or args.speed or args.verification or args.flip or args.rules)
    from lookalike.encoders import default_store_dir

    args.store_dir = default_store_dir()  # make demo's encoders, before the tests' set-up
    if args.quality or every:
        quality(args)
    if (args.speed and args.max_fob) or args.verification or args.flip or args.rules or every:
        import conftest  # the tests' isolated mongod, same set-up

        conftest._start_isolated_database()
        # The calibration re-embeds synthetic copies with the index's encoder, by
        # name: from make demo's store, not the tests' empty one.
        os.environ["LOOKALIKE_MODELS_DIR"] = args.store_dir
        from lookalike.core.database import quiet_mongodb_version_warning

        quiet_mongodb_version_warning()
    if args.verification or every:
        verification(args)
    if args.flip or every:
        flip(args)
    if args.rules or every:
        rules(args)
    if args.speed or every:
        speed(args)


if __name__ == "__main__":
    main()
