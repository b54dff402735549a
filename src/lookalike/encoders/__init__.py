"""Encoders: train them on FiftyOne samples, save them to the model store, load them to embed.

Kinds:

* ``autoencoder`` -- the Paddle convolutional autoencoder (no labels needed);
* ``metric`` -- the TensorFlow Similarity metric model (needs a label field);
* ``contrastive`` -- the same network trained self-supervised on two augmented
  views of each image (no labels; learns invariance to crops, flips, colour
  and re-encoding).

Modules: ``store`` (the model store and manifests), ``training`` (a training
run's options, checkpoints and publishing), ``preprocessing`` (image -> input
array, as the manifest records), ``data`` (files -> input arrays, in threads),
``base`` (what a loaded encoder offers), ``keras`` (the network, epoch loop and
encoder shared by the metric and contrastive kinds), one module per kind, and
``autoencoder_keras`` (the autoencoder's tf-keras twin, its CPU trainer).

Nothing here imports Paddle or TensorFlow until an encoder is trained or loaded.
"""

import collections
import copy
import json
import os
import threading
from dataclasses import dataclass, field

from lookalike.core import fo_adapter
from lookalike.encoders import fiftyone_models
from lookalike.encoders.fiftyone_models import register_model, unregister_model  # noqa: F401
from lookalike.encoders.foreign import import_keras, import_paddle_inference  # noqa: F401
from lookalike.encoders.store import (  # noqa: F401  (public API)
    ImportResult,
    FOREIGN_KINDS,
    KINDS,
    EncoderStoreError,
    default_store_dir,
    list_encoders,
    read_manifest,
    validate_name,
)
from lookalike.encoders.training import (  # noqa: F401
    TrainingConfigError,
    TrainingStopped,
    request_stop,
)

DEFAULT_IMAGE_SIZE = {"autoencoder": 64, "metric": 32, "contrastive": 32}

# Images per second on 2 quiet CPU cores, width 1.0, at the sizes measured: where the
# README's two benchmarks (benchmarks/encoders.py, benchmarks/autoencoder_training.py)
# differ, the faster figure, so that an estimate from them errs short. Keys: (kind, step,
# trainer); the contrastive kind trains on two views of every image (half the rate).
CPU_RATES = {
    ("autoencoder", "train", "tensorflow"): {32: 94.8, 64: 15.7, 128: 4.9},
    ("autoencoder", "train", "paddle"): {32: 28.5, 64: 2.3, 128: 1.2},
    ("metric", "train", "tensorflow"): {32: 211.4, 128: 9.0},
    ("contrastive", "train", "tensorflow"): {32: 105.7, 128: 4.5},
    ("autoencoder", "embed", "paddle"): {32: 474.4, 128: 26.0},
    ("metric", "embed", "tensorflow"): {32: 952.0, 128: 26.4},
    ("contrastive", "embed", "tensorflow"): {32: 952.0, 128: 26.4},
}
RATES_CORES = 2


def _cuda_device_visible():
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1")
    return not hidden and (os.path.exists("/dev/nvidia0") or bool(
        os.path.isdir("/proc/driver/nvidia/gpus") and os.listdir("/proc/driver/nvidia/gpus")))


def estimate_seconds(kind, step, num_images, image_size=None, epochs=1, trainer="auto",
                     width=1.0):
    """A short estimate of how long ``step`` ("train" or "embed") takes on this CPU, in seconds.

    From :data:`CPU_RATES`, scaled from the nearest measured size at or below
    ``image_size`` by the pixel count (cost grows at least that fast), by ``width``
    (squared below 1, linearly above) and by the cores beyond the 2 measured
    (linearly): every step errs towards the faster, so a run estimated over a limit
    is over it. Loading the images is not counted. None where the figures do not
    apply: a CUDA device is visible (training may run there), or no figure exists.
    """
    if _cuda_device_visible():
        return None
    if trainer == "auto":  # what "auto" resolves to without a GPU
        trainer = "paddle" if kind == "autoencoder" and step == "embed" else "tensorflow"
    rates = CPU_RATES.get((kind, step, trainer))
    if not rates or num_images <= 0:
        return None if not rates else 0.0
    size = int(image_size or DEFAULT_IMAGE_SIZE[kind])
    measured = max([s for s in rates if s <= size] or [min(rates)])
    rate = rates[measured] * (measured / size) ** 2
    rate /= width ** 2 if width < 1 else width
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rate *= max(1.0, (cores or 1) / RATES_CORES)  # (no sched_getaffinity on macOS)
    return num_images * max(1, int(epochs)) / rate


@dataclass
class TrainResult:
    path: str
    manifest: dict
    failures: list = field(default_factory=list)  # lookalike.images.decode.ImageFailure: skipped images

    def summary(self):
        """One line, for the CLI and the App."""
        skipped = f"; {len(self.failures)} unreadable images skipped" if self.failures else ""
        return describe(self.manifest) + skipped


# Of train_encoder's progress: decoding the images, then the epochs (far longer).
LOADING_SHARE = 0.05


def _source(samples, label_field=None):
    return dict(dataset=fo_adapter.root_dataset(samples).name,
                view_stages=fo_adapter.view_stages(samples), num_samples=fo_adapter.exact_count(samples),
                label_field=label_field)


def train_encoder(samples, kind, name, image_size=None, epochs=10, batch_size=None,
                  label_field=None, store_dir=None, overwrite=False, resume=True,
                  progress=None, on_epoch=None, should_stop=None, **kwargs):
    """Trains an encoder of ``kind`` on the images of ``samples`` (a FiftyOne dataset or view).

    Unreadable images are skipped and returned in ``result.failures``
    (:class:`~lookalike.images.decode.ImageFailure`). ``progress(fraction, label)`` runs
    over decoding the images, then the epochs; ``on_epoch(epoch, epochs,
    metrics)`` gets every finished epoch's metrics (``loss``, ``images_per_s``,
    ``val_loss`` where there is validation); ``should_stop()`` is polled between
    batches. ``kwargs`` are the kind's own settings (its module's ``train``).
    Interrupted runs resume from their last finished epoch when called again
    with the same settings. Returns a :class:`TrainResult`.
    """
    from lookalike.encoders.data import load_samples_images
    from lookalike.encoders.preprocessing import input_manifest
    from lookalike.core.progress import scaled

    if kind not in KINDS:
        raise TrainingConfigError(f"unknown encoder kind {kind!r}; choose from {KINDS}")
    validate_name(name)
    image_size = int(image_size or DEFAULT_IMAGE_SIZE[kind])
    job_options = dict(store_dir=store_dir, overwrite=overwrite, resume=resume,
                       progress=scaled(progress, LOADING_SHARE, 1 - LOADING_SHARE),
                       on_epoch=on_epoch, should_stop=should_stop,
                       source=_source(samples, label_field))
    loading = scaled(progress, 0.0, LOADING_SHARE)
    spec = input_manifest(kind, image_size)
    if kind == "metric":
        from lookalike.encoders import metric
        from lookalike.core.labels import labelled_view

        samples, labels = labelled_view(samples, label_field)
        loaded = load_samples_images(samples, spec, progress=loading)
        by_id = dict(zip(samples.values("id"), labels))
        path = metric.train(loaded.images, [by_id[i] for i in loaded.sample_ids], name,
                            image_size=image_size, epochs=epochs, batch_size=batch_size,
                            **job_options, **kwargs)
    else:
        loaded = load_samples_images(samples, spec, progress=loading)
        if kind == "autoencoder":
            from lookalike.encoders import autoencoder as module

            kwargs.setdefault("preview_images", loaded.images[:8])
        else:
            from lookalike.encoders import contrastive as module
        path = module.train(loaded.images, name, image_size=image_size, epochs=epochs,
                            **({"batch_size": batch_size} if batch_size else {}),
                            **job_options, **kwargs)
    return TrainResult(path=path, manifest=read_manifest(path), failures=loaded.failures)


def resolve_path(name_or_path, store_dir=None):
    """A store name or a directory path -> the encoder directory."""
    if os.sep in str(name_or_path) or str(name_or_path).startswith((".", "~")):
        return os.path.abspath(os.path.expanduser(name_or_path))
    return os.path.join(store_dir or default_store_dir(), validate_name(name_or_path))


def load_encoder(name_or_path, store_dir=None, image_size=None, flip_average=False, **kwargs):
    """Loads an encoder by store name or directory; validates everything first.

    ``flip_average`` (or a name ending in ``+flip``): embeddings averaged with
    the mirror image's (see :class:`~lookalike.encoders.base.Encoder`).

    Raises :class:`EncoderStoreError` for a directory that is not ours, missing
    or corrupt weights, an ``image_size`` other than the one it was trained at,
    or weights written by a framework version this installation cannot read.
    """
    from lookalike.encoders.base import FLIP_SUFFIX

    if str(name_or_path).endswith(FLIP_SUFFIX):
        name_or_path, flip_average = str(name_or_path)[:-len(FLIP_SUFFIX)], True
    if str(name_or_path).startswith(fiftyone_models.PREFIX):
        encoder = fiftyone_models.registered_encoder(str(name_or_path))
        encoder.flip_average = bool(flip_average)
        return encoder
    path = resolve_path(name_or_path, store_dir)
    manifest = read_manifest(path)
    if image_size is not None and int(image_size) != int(manifest["image_size"]):
        raise EncoderStoreError(
            f"encoder '{manifest['name']}' was trained at {manifest['image_size']} px; "
            f"{image_size} px was asked for"
        )
    kind = manifest["kind"]
    if kind == "autoencoder":
        from lookalike.encoders.autoencoder import AutoencoderEncoder as cls
    elif kind in FOREIGN_KINDS:
        from lookalike.encoders.foreign import ENCODER_CLASSES

        cls = ENCODER_CLASSES[kind]
    else:
        from lookalike.encoders.keras_models import KerasEncoder as cls
    if cls.reusable:
        encoder = _loaded_encoder(cls, path, manifest, kwargs)
    else:
        encoder = cls(path, manifest, **kwargs)
    encoder.flip_average = bool(flip_average)
    return encoder


# Encoders built in this process, by folder and the checksums read_manifest has just
# verified: building a network and tracing its function take seconds, and the App
# server, a worker or a pipeline loads the same encoder for every step and query.
_LOADED = collections.OrderedDict()
_LOADED_MAX = 4
_LOADED_LOCK = threading.Lock()


def _loaded_encoder(cls, path, manifest, kwargs):
    """A copy of the encoder built from these very files (same checksums), built once."""
    key = (cls, path, json.dumps(manifest, sort_keys=True, default=str),
           tuple(sorted(kwargs.items())))
    with _LOADED_LOCK:
        built = _LOADED.get(key)
        if built is not None:
            _LOADED.move_to_end(key)
    if built is None:
        built = cls(path, manifest, **kwargs)
        with _LOADED_LOCK:
            _LOADED[key] = built
            while len(_LOADED) > _LOADED_MAX:
                _LOADED.popitem(last=False)
    return copy.copy(built)  # its own flip_average; the network and function shared


def import_encoder(path, name=None, store_dir=None, overwrite=False):
    """Copies an encoder directory (e.g. shared by a colleague) into the store, checked.

    Only ``manifest.json`` and the files it lists are copied, each a regular
    file inside the directory opened without following links; a manifest entry
    that is a link, absolute or with ``..`` refuses the whole directory, and
    anything else there (unlisted files, pickles, links, folders) is left behind
    and named in ``result.left_behind`` / ``result.note``. The checksums are
    verified on the copies, then the encoder is loaded from them and run on one
    blank image, all before it is published under ``name``. Returns an
    :class:`ImportResult`.
    """
    import json
    import shutil
    import tempfile

    import numpy as np

    from lookalike.core import faults
    from lookalike.encoders import store

    source = os.path.abspath(os.path.expanduser(path))
    manifest = read_manifest(source, verify_files=False)  # "not ours" said plainly first
    name = validate_name(name or manifest["name"])
    store_dir = store_dir or default_store_dir()
    final = store.encoder_dir(name, store_dir)
    if os.path.abspath(final) == source:
        load_encoder(source)  # already in the store under that name: just checked
        return ImportResult(final)
    if os.path.exists(final) and not overwrite:
        raise EncoderStoreError(
            f"an encoder named '{name}' already exists: choose another name or pass overwrite=True")
    os.makedirs(store_dir, exist_ok=True)
    # A folder of this import's own: not the training job's .<name>.partial, whose
    # checkpoints a resumable run of the same name still needs.
    staging = tempfile.mkdtemp(prefix=f".{name}.import-", dir=store_dir)
    copy = os.path.join(staging, "encoder")
    try:
        with store.naming_the_source((copy, source)):
            left = store.copy_listed_files(source, copy)
            faults.point("import.copied")
            encoder = load_encoder(copy)  # checksums verified on the copies, not the originals
            encoder.embed(np.zeros((1, encoder.image_size, encoder.image_size, 3), np.uint8))
        with open(os.path.join(copy, store.MANIFEST)) as f:
            manifest = json.load(f)
        manifest.update(name=name, imported_from=source, imported_at=store.now_iso())
        store.write_manifest(copy, manifest, list(manifest["files"]))
        store.publish(copy, final, overwrite=overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ImportResult(final, left)


MODEL_FORMATS = ("auto", "lookalike") + FOREIGN_KINDS


def import_model(path, name=None, format="auto", image_size=None, normalization=None,
                 output=None, store_dir=None, overwrite=False):
    """Brings a model into the store as an encoder: ours or one you already have.

    ``format`` (one of :data:`MODEL_FORMATS`; "auto": told from ``path``):
    "lookalike" (an encoder folder, :func:`import_encoder`), "paddle-inference"
    (a PaddleClas / PP-ShiTu export folder) or "keras" (a ``.keras`` file), see
    :mod:`lookalike.encoders.foreign`. ``image_size``, ``normalization``
    ("imagenet" or "none") and ``output`` apply to the last two; ``name`` is
    required for them. Returns an :class:`ImportResult`.
    """
    from lookalike.encoders import foreign

    if format not in MODEL_FORMATS:
        raise EncoderStoreError(f"unknown model format {format!r}: choose from "
                                f"{', '.join(MODEL_FORMATS)}")
    kind = foreign.detect_format(path) if format == "auto" else format
    if kind == "lookalike":
        return import_encoder(path, name=name, store_dir=store_dir, overwrite=overwrite)
    if not name:
        raise EncoderStoreError(f"{path}: give the name to store this {kind} model under")
    return foreign.import_foreign(path, name, kind, image_size=image_size,
                                  normalization=normalization, output=output,
                                  store_dir=store_dir, overwrite=overwrite)


def describe(manifest):
    """One line about an encoder, for lists and dropdowns."""
    head = (f"{manifest['name']}: {manifest['kind']}, {manifest['image_size']} px, "
            f"{manifest['embedding_size']}-d")
    if manifest["kind"] in FOREIGN_KINDS:
        return f"{head}, imported from {manifest.get('imported_from', '?')}"
    metrics = manifest.get("final_metrics") or {}
    loss = f", loss {metrics['loss']:.4f}" if isinstance(metrics.get("loss"), (int, float)) else ""
    data = (manifest.get("training_data") or {}).get("dataset") or "?"
    return f"{head}, {manifest.get('epochs', '?')} epochs on '{data}'{loss}"
