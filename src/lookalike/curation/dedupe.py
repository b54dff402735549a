"""From a folder of images to reviewed duplicate groups in one call: :func:`dedupe`.

The steps a new user would otherwise run one by one, with their defaults:
import the folder (or add only the files the dataset lacks), train a
self-supervised encoder on a sample of the images unless one is given or this
dataset's was trained before, then :func:`~lookalike.curation.pipeline.curate`:
embed what has no embedding yet, index, calibrate label-free, find duplicates
(with geometric verification) and flag outliers. A rerun after new images arrive
imports only those, reuses the encoder and embeds only the new ones.
"""

import os
import re
import time
from dataclasses import dataclass, field

from lookalike.core import fo_adapter
from lookalike.core.errors import UsageError
from lookalike.core.progress import scaled

# The demo's contrastive settings (its photos' copies are found with them), on a sample:
# benchmarks/training_curve.py (334 mosaics, 2026-12-08) gave pair F1 0.56-0.61 from 100
# images x 5 epochs to all 334 x 20, flat within its noise (geometric verification
# decides most pairs), so 250 images: a quarter of the training time of 1,000.
SAMPLE_SIZE = 250
TRAINING = dict(image_size=32, epochs=20, batch_size=64)
# Shares of the progress bar: training dominates when it runs.
_SHARES = dict(import_=0.1, train=0.45, curate=0.45)


# Seconds per image of each stage on 2 quiet cores, for camera-size JPEGs (3000 x 2000,
# quality 90), from benchmarks/end_to_end.py (1,112 images, then 109 more; 2026-12-07).
# "duplicates" is in two parts: every image (candidate pairs, feature votes up to
# VOTE_UP_TO images, verification) and each new image (its local features, then cached).
# "train_overhead": what training took per sampled image and epoch beyond the fit's own
# rate (lookalike.encoders.estimate_seconds: measured without the JPEG augmentation), plus
# TRAIN_START_SECONDS (importing TensorFlow and TF Similarity, decoding the sample).
# Calibration samples a fixed number of images: a constant. Smaller files go faster.
SECONDS_PER_IMAGE = {"import": 0.0129, "train_overhead": 0.0068, "embed": 0.0066,
                     "index": 0.0001, "duplicates": 0.040, "new_features": 0.029,
                     "outliers": 0.0009}
TRAIN_START_SECONDS = 25.0
CALIBRATE_SECONDS = 20.0


def estimate_seconds(num_images, num_to_embed=None, train=True, sample_size=SAMPLE_SIZE,
                     epochs=None, num_to_import=0):
    """``{stage: seconds}`` of a :func:`dedupe` run on this CPU, before it starts.

    ``num_images``: the dataset's images after the import; ``num_to_embed``: those
    without an embedding yet (default all); ``train``: whether an encoder will be
    trained (on up to ``sample_size`` of them); ``num_to_import``: files of a folder
    the dataset lacks. From :data:`SECONDS_PER_IMAGE` and the training rate of
    :func:`lookalike.encoders.estimate_seconds`; None where those do not apply (a
    visible CUDA device).
    """
    from lookalike.encoders import estimate_seconds as encoder_seconds

    n = max(0, int(num_images))
    embed = n if num_to_embed is None else max(0, int(num_to_embed))
    out = {}
    if num_to_import:
        out["import"] = int(num_to_import) * SECONDS_PER_IMAGE["import"]
    if train:
        sample = min(n, int(sample_size)) if sample_size else n
        epochs = int(epochs or TRAINING["epochs"])
        fit = encoder_seconds("contrastive", "train", sample, image_size=TRAINING["image_size"],
                              epochs=epochs)
        if fit is None:
            return None
        out["train"] = (fit + sample * epochs * SECONDS_PER_IMAGE["train_overhead"]
                        + TRAIN_START_SECONDS)
    out["embed"] = embed * SECONDS_PER_IMAGE["embed"]
    out["index"] = n * SECONDS_PER_IMAGE["index"]
    out["calibrate"] = CALIBRATE_SECONDS if n else 0.0
    out["duplicates"] = (n * SECONDS_PER_IMAGE["duplicates"]
                         + embed * SECONDS_PER_IMAGE["new_features"])
    out["outliers"] = n * SECONDS_PER_IMAGE["outliers"]
    return out


def estimate_run(samples, encoder=None, sample_size=SAMPLE_SIZE, epochs=None, store_dir=None):
    """:func:`estimate_seconds` of :func:`dedupe` on ``samples`` (imported already) with
    ``encoder`` (None: this dataset's own, trained unless an earlier dedupe did)."""
    from lookalike.embeddings.compute import default_field_name
    from lookalike.encoders import list_encoders

    train = False
    if encoder is None:
        encoder = encoder_name(fo_adapter.root_dataset(samples).name)
        train = encoder not in {m["name"] for m in list_encoders(store_dir)}
    count = fo_adapter.exact_count(samples)
    field_name = default_field_name(encoder)
    embedded = samples.exists(field_name).count() if samples.has_field(field_name) else 0
    return estimate_seconds(count, count - embedded, train=train, sample_size=sample_size,
                            epochs=epochs)


def estimate_line(stages):
    """``stages`` (of :func:`estimate_seconds`) in one line, or None."""
    if not stages:
        return None
    total = sum(stages.values())
    about = f"{total / 60:.0f} min" if total >= 90 else f"{max(1, round(total))} s"
    return (f"estimated on this CPU: about {about} ("
            + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()) + ")")


@dataclass
class DedupeReport:
    dataset_name: str
    encoder: str
    imported: object = None  # ImportReport, when a folder was given
    trained: object = None  # TrainResult, when this call trained the encoder
    reused: bool = False  # the encoder an earlier dedupe of this dataset trained
    curation: object = None  # CurationReport
    seconds: dict = field(default_factory=dict)
    estimate: dict = None  # estimate_seconds before the stages after the import, or None

    def summary(self):
        """A line per stage, for the CLI and the App."""
        lines = []
        if self.imported is not None:
            i = self.imported
            lines.append(f"import: {i.imported} new images into '{self.dataset_name}'"
                         + (f", {len(i.failures)} unreadable files skipped" if i.failures else ""))
        if self.trained is not None:
            lines.append(f"encoder '{self.encoder}' trained: {self.trained.summary()}")
        else:
            lines.append(f"encoder '{self.encoder}': " + (
                "reused (trained by an earlier dedupe)" if self.reused else "given"))
        lines.append(self.curation.summary())
        lines.append("seconds per stage: " + ", ".join(
            f"{k} {v}" for k, v in self.seconds.items()))
        if self.estimate:
            lines.append(estimate_line(self.estimate).replace("estimated", "estimated beforehand",
                                                              1))
        return "\n".join(lines)


def encoder_name(dataset_name):
    """The name of the encoder ``dedupe`` trains for a dataset: "<dataset>-dedupe"."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", dataset_name).strip("-._") or "dataset"
    return f"{base[:50]}-dedupe"


def dedupe(source, dataset_name=None, encoder=None, sample_size=SAMPLE_SIZE, epochs=None,
           store_dir=None, progress=None):
    """Imports, trains if needed and curates; returns a :class:`DedupeReport`.

    Args:
        source: a folder of images (searched recursively), or a dataset or view
        dataset_name (None): the dataset a folder goes into (default: the folder's
            name); an existing one gets only the files it lacks
        encoder (None): an encoder name; None trains a contrastive encoder
            "<dataset>-dedupe" on up to ``sample_size`` random images (once: a rerun
            reuses it)
        epochs (None): training epochs (default ``TRAINING["epochs"]``)
        progress (None): ``progress(fraction, label)`` over all the stages
    """
    import fiftyone as fo

    from lookalike.curation.pipeline import curate
    from lookalike.encoders import list_encoders, load_encoder, train_encoder
    from lookalike.images.folder_import import import_images

    if sample_size is not None and int(sample_size) < 2:
        raise UsageError(f"sample_size must be at least 2, got {sample_size}")
    seconds, imported, trained = {}, None, None
    start = time.perf_counter()
    if isinstance(source, (str, os.PathLike)):
        folder = os.path.abspath(os.path.expanduser(os.fspath(source)))
        name = dataset_name or os.path.basename(folder.rstrip(os.sep))
        imported = import_images(folder, name, append=fo.dataset_exists(name),
                                 progress=scaled(progress, 0.0, _SHARES["import_"]))
        samples = fo.load_dataset(name)
        seconds["import"] = round(time.perf_counter() - start, 2)
    elif dataset_name is not None:
        raise UsageError("dataset_name goes with a folder; samples name their dataset")
    else:
        samples = source
    dataset = fo_adapter.root_dataset(samples)
    done = _SHARES["import_"]
    estimate = estimate_run(samples, encoder, sample_size, epochs, store_dir)
    if progress is not None and estimate:
        progress(done, estimate_line(estimate))

    reused = False
    if encoder is None:
        encoder = encoder_name(dataset.name)
        reused = encoder in {m["name"] for m in list_encoders(store_dir)}
        if not reused:
            start = time.perf_counter()
            count = fo_adapter.exact_count(samples)
            view = samples.take(int(sample_size), seed=51) if sample_size and \
                count > int(sample_size) else samples
            settings = dict(TRAINING, epochs=int(epochs or TRAINING["epochs"]))
            trained = train_encoder(view, "contrastive", encoder, store_dir=store_dir,
                                    progress=scaled(progress, done, _SHARES["train"]),
                                    **settings)
            seconds["train"] = round(time.perf_counter() - start, 2)
    done += _SHARES["train"]
    model = load_encoder(encoder, store_dir=store_dir)
    curation = curate(samples, model, progress=scaled(progress, done, _SHARES["curate"]))
    seconds.update(curation.seconds)
    return DedupeReport(dataset.name, encoder, imported, trained, reused, curation, seconds,
                        estimate)
