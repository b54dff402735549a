"""The main job on the demo dataset, step by step (``make demo`` / ``lookalike demo``).

Today: train the three encoders (or reuse them when they already exist, so a
rerun costs nothing). Later steps -- embed, index, calibrate, flag -- append
here, so that ``make demo`` always runs the whole job as far as it exists.
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

        def progress(epoch, epochs, metrics, name=name):
            log(f"    {name} epoch {epoch}/{epochs}: loss {metrics['loss']:.4f}, "
                f"{metrics.get('images_per_s', 0):.0f} images/s")

        log(f"  training {name} ({plan.kind}) on {len(view)} {plan.source}s ...")
        result = train_encoder(view, plan.kind, name, store_dir=store_dir, overwrite=retrain,
                               progress=progress, **settings)
        manifests[name] = read_manifest(resolve_path(name, store_dir))
        log(f"  trained {describe(result.manifest)} in {time.perf_counter() - start:.0f} s")
    return manifests


# Photos are embedded by both photo encoders and indexed; the summary checks the
# index against the demo's ground truth (each original's planted copies).
PHOTO_INDEXES = (("demo-contrastive", "emb_contrastive"), ("demo-autoencoder", "emb_autoencoder"))


def embed_and_index_photos(dataset, quick=False, log=print, store_dir=None):
    """Embeds the demo photos with each photo encoder and builds one index per field."""
    import lookalike.similarity as ls
    from lookalike.embeddings import compute_embeddings
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
        neighbours, _ = index._kneighbors(sample_id, k=copies + 1)
        found += sum(1 for n in neighbours if n != sample_id and group_of.get(n) == group)
        total += copies
    return found / max(total, 1), len(originals)
