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

# The demo's contrastive settings (its photos' copies are found with them); how many images
# an encoder needs is #29's measurement, this sample is a first bound on training time.
SAMPLE_SIZE = 1000
TRAINING = dict(image_size=32, epochs=20, batch_size=64)
# Shares of the progress bar: training dominates when it runs.
_SHARES = dict(import_=0.1, train=0.45, curate=0.45)


@dataclass
class DedupeReport:
    dataset_name: str
    encoder: str
    imported: object = None  # ImportReport, when a folder was given
    trained: object = None  # TrainResult, when this call trained the encoder
    reused: bool = False  # the encoder an earlier dedupe of this dataset trained
    curation: object = None  # CurationReport
    seconds: dict = field(default_factory=dict)

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
    return DedupeReport(dataset.name, encoder, imported, trained, reused, curation, seconds)
