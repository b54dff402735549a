"""The metric kind: the seed's network (:mod:`~lookalike.encoders.keras_models`) trained on labelled images.

Training: class-balanced batches from tensorflow-similarity's
``MultiShotMemorySampler`` (``classes_per_batch`` x
``examples_per_class_per_batch``), a tfsim metric loss, Adam, and the shared
epoch loop (:func:`~lookalike.encoders.keras_models.run_epochs`), so a run can stop
between batches and resume exactly: batches and initial weights follow
``seed``. A stratified share of every class is held out to measure
``val_loss``; training stops early when it has not improved for ``patience``
epochs (the last epoch's weights are kept).
"""

import contextlib
import io
import math
import random

import numpy as np

from lookalike.core import frameworks
from lookalike.encoders import keras_models as keras
from lookalike.encoders.training import TrainingConfigError, TrainingJob
from lookalike.core.labels import check_labels

KIND = "metric"
LOSSES = ("multisimilarity", "triplet", "circle", "pn")
DEFAULT_CLASSES_PER_BATCH = 16
VALIDATION_EXAMPLES_PER_CLASS = 2  # per batch, as in the seed's validation sampler


def stratified_split(class_ids, validation_split, seed):
    """``(train indices, validation indices)``, the same share of every class held out.

    A class keeps all its examples in training when fewer than 2 would go to
    validation (or fewer than 2 would stay); with fewer than 2 validation
    classes there is no validation at all.
    """
    rng = np.random.default_rng([seed, 7])
    train, val, val_classes = [], [], 0
    for c in np.unique(class_ids):
        idx = rng.permutation(np.flatnonzero(class_ids == c))
        n_val = int(len(idx) * validation_split)
        if n_val < 2 or len(idx) - n_val < 2:
            n_val = 0
        val_classes += n_val > 0
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    if val_classes < 2:
        return np.arange(len(class_ids)), np.zeros(0, np.int64)
    return np.sort(np.array(train)), np.sort(np.array(val))


# -- batches ----------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet():
    # tfsim's samplers print batch sizes and warnings and draw tqdm bars.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


@contextlib.contextmanager
def _seeded_random(seed):
    # tfsim's samplers draw from Python's global ``random``: seed it for them and
    # restore its state afterwards, so nobody else's randomness changes.
    state = random.getstate()
    random.seed(seed)
    try:
        with _quiet():
            yield
    finally:
        random.setstate(state)


def make_sampler(x_indices, class_ids, classes_per_batch, examples_per_class, seed):
    """A tfsim ``MultiShotMemorySampler`` over indices (batches gather the images later)."""
    tfsim = frameworks.tensorflow_similarity()
    with _seeded_random(seed):  # the constructor shuffles
        return tfsim.samplers.MultiShotMemorySampler(
            np.asarray(x_indices), np.asarray(class_ids), classes_per_batch=classes_per_batch,
            examples_per_class_per_batch=examples_per_class, steps_per_epoch=1)


def sample_batches(sampler, steps, seed):
    """``steps`` batches of ``(indices, class ids)``, reproducible from ``seed``."""
    with _seeded_random(seed):
        batches = [sampler.generate_batch(i) for i in range(steps)]
    return [(np.asarray(x), np.asarray(y)) for x, y in batches]


# -- training -------------------------------------------------------------------------------

def make_loss(loss):
    tfsim = frameworks.tensorflow_similarity()
    losses = {"multisimilarity": tfsim.losses.MultiSimilarityLoss, "triplet": tfsim.losses.TripletLoss,
              "circle": tfsim.losses.CircleLoss, "pn": tfsim.losses.PNLoss}
    return losses[loss]()  # cosine distance, tfsim's defaults


def batch_layout(num_classes, batch_size, classes_per_batch, examples_per_class):
    """``(classes_per_batch, examples_per_class)``: ``batch_size`` picks the class count."""
    if examples_per_class < 2:
        raise TrainingConfigError("examples_per_class_per_batch must be at least 2 "
                                  "(positive pairs come from the same class)")
    if classes_per_batch is None:
        wanted = batch_size // examples_per_class if batch_size else DEFAULT_CLASSES_PER_BATCH
        classes_per_batch = max(2, wanted)
    if classes_per_batch < 2:
        raise TrainingConfigError("classes_per_batch must be at least 2 (negatives come from "
                                  "other classes)")
    return min(int(classes_per_batch), num_classes), int(examples_per_class)


def train(
    images,
    labels,
    name,
    image_size=32,
    epochs=10,
    batch_size=None,
    embedding_size=256,
    loss="multisimilarity",
    classes_per_batch=None,
    examples_per_class_per_batch=4,
    learning_rate=1e-3,
    validation_split=0.2,
    patience=3,
    steps_per_epoch=None,
    width=1.0,
    seed=51,
    **job_options,
):
    """Trains the metric model on ``images`` ((N, S, S, 3) uint8) with string ``labels``.

    Batches hold ``classes_per_batch`` classes x ``examples_per_class_per_batch``
    examples (``batch_size`` given: ``classes_per_batch = batch_size //
    examples_per_class_per_batch``). ``steps_per_epoch`` defaults to one pass
    over the training images. Training stops early when ``val_loss`` has not
    improved for ``patience`` epochs (the last epoch's weights are kept).
    ``job_options`` (``store_dir``, ``overwrite``, ``resume``, ``progress``,
    ``on_epoch``, ``should_stop``, ``source``): see
    :class:`~lookalike.encoders.training.TrainingJob`; ``on_epoch``'s metrics hold
    ``val_loss`` when there is a validation split. Returns the path of the
    published encoder directory.
    """
    images = np.asarray(images)
    labels = [str(label) for label in labels]
    keras.check_image_size(image_size)
    keras.check_images(images, image_size)
    if len(labels) != len(images):
        raise TrainingConfigError(f"{len(images)} images but {len(labels)} labels")
    if loss not in LOSSES:
        raise TrainingConfigError(f"loss must be one of {LOSSES}, got {loss!r}")
    if epochs < 1 or learning_rate <= 0 or embedding_size < 1 or width <= 0:
        raise TrainingConfigError("epochs, learning_rate, embedding_size and width must be positive")
    if not 0 <= validation_split < 1:
        raise TrainingConfigError(f"validation_split must be in [0, 1), got {validation_split}")
    check_labels(labels)

    classes = sorted(set(labels))
    class_ids = np.array([classes.index(label) for label in labels])
    train_idx, val_idx = stratified_split(class_ids, validation_split, seed)
    cpb, epc = batch_layout(len(classes), batch_size, classes_per_batch,
                            examples_per_class_per_batch)
    steps = int(steps_per_epoch or max(1, math.ceil(len(train_idx) / (cpb * epc))))

    settings = dict(image_size=image_size, epochs=epochs, embedding_size=embedding_size, loss=loss,
                    classes_per_batch=cpb, examples_per_class_per_batch=epc,
                    steps_per_epoch=steps, learning_rate=learning_rate,
                    validation_split=validation_split, patience=patience, width=width, seed=seed,
                    num_images=int(len(images)), classes=classes)
    job = TrainingJob(name, KIND, settings, **job_options)
    start_epoch = job.open()

    model, optimizer = keras.model_for_job(job, image_size, embedding_size, width, learning_rate,
                                           seed)

    loss_fn = make_loss(loss)
    loss_of = lambda y, emb: loss_fn(y, emb)  # noqa: E731  (y: class ids)
    sampler = make_sampler(train_idx, class_ids[train_idx], cpb, epc, seed)

    def batches_for_epoch(epoch):
        for idx, y in sample_batches(sampler, steps, seed=seed * 100_003 + epoch):
            yield images[idx], y, len(idx)

    val_batches = None
    if len(val_idx):
        val_classes = len(set(class_ids[val_idx]))
        val_sampler = make_sampler(val_idx, class_ids[val_idx], min(cpb, val_classes),
                                   VALIDATION_EXAMPLES_PER_CLASS, seed)
        val_steps = max(1, math.ceil(len(val_idx) / val_sampler.batch_size))
        # The same batches every epoch, so val_loss is comparable between epochs.
        val_batches = [(images[idx], y) for idx, y in sample_batches(val_sampler, val_steps, seed)]

    stopped_early = keras.run_epochs(
        job, model, optimizer, keras.make_train_step(model, optimizer, loss_of), batches_for_epoch,
        start_epoch, keras.make_bn_recalibration(model, images[train_idx], seed=seed),
        eval_step=keras.make_eval_step(model, loss_of), val_batches=val_batches,
        patience=patience if val_batches else None)

    files = keras.save_weights(job.dir, model)
    val_losses = [h["val_loss"] for h in job.history if "val_loss" in h]
    manifest = dict(
        **keras.network_manifest(KIND, image_size, embedding_size, width),
        loss=loss,
        sampler=dict(name="tfsim.samplers.MultiShotMemorySampler", classes_per_batch=cpb,
                     examples_per_class_per_batch=epc, steps_per_epoch=steps),
        batch_size=cpb * epc,
        optimizer=dict(name="adam", learning_rate=learning_rate),
        validation=dict(split=validation_split, num_images=int(len(val_idx)), patience=patience,
                        best_epoch=int(np.argmin(val_losses)) + 1 if val_losses else None),
        stopped_early=stopped_early,
        num_training_images=int(len(train_idx)),
        classes=classes,
        class_counts={c: int(n) for c, n in zip(classes, np.bincount(class_ids))},
    )
    return job.finish(manifest, files)
