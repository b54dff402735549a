"""The TensorFlow Similarity metric model of the seed, trained on labelled images.

Architecture (the seed's ``tfsim_seed_convnet``): Rescaling(1/255), Conv 64 ReLU,
BN, Conv 128 ReLU, BN, MaxPool 4x4, Conv 256 ReLU, BN, Conv 256 ReLU,
GlobalMaxPool, ``MetricEmbedding`` (a Dense layer whose output is
L2-normalised), all 3x3 convolutions without padding, so ``image_size`` must be
at least 24. ``width`` scales every channel count (1.0 = seed).

Training: class-balanced batches from tensorflow-similarity's
``MultiShotMemorySampler`` (``classes_per_batch`` x
``examples_per_class_per_batch``), a tfsim metric loss, Adam, and our own epoch
loop, so every epoch is checkpointed (weights, BN statistics and Adam's moments)
and a run can stop between batches and resume exactly: batches and initial
weights follow ``seed``. A stratified share of every class is held out to
measure ``val_loss``; training stops early when it has not improved for
``patience`` epochs (the last epoch's weights are kept).

After every epoch the BatchNormalization statistics are recomputed exactly over
(up to 1,024) training images ("precise BN"): Keras's running averages
(momentum 0.99) lag far behind the weights for the first few hundred steps, so
the published network (and ``val_loss``) would otherwise differ from the one
that was trained.

Files: ``model.weights.h5`` (tf-keras's weights-only format, no code); the
network is rebuilt from the manifest's ``architecture`` on load. The contrastive
kind trains this same network, so :class:`KerasEncoder` loads both kinds.

SimilarityModel's ``index``/``match``/``calibrate`` are never used (``match``
fails with NumPy 2.4); lookalike indexes the embeddings itself.
"""

import contextlib
import io
import math
import os
import random
import time
import warnings
from collections import Counter

import numpy as np

from lookalike.encoders import store
from lookalike.encoders.base import Encoder
from lookalike.encoders.training import TrainingConfigError, TrainingJob, TrainingStopped

KIND = "metric"
ARCHITECTURE = "tfsim_seed_convnet"
WEIGHTS = "model.weights.h5"
LOSSES = ("multisimilarity", "triplet", "circle", "pn")
MIN_IMAGE_SIZE = 24  # 3x3 valid convs and a 4x4 pool must leave a 1x1 map
PREPROCESSING = dict(resize="bilinear", color="RGB", scale="x/255 (inside the model)",
                     layout="NHWC")
DEFAULT_CLASSES_PER_BATCH = 16
VALIDATION_EXAMPLES_PER_CLASS = 2  # per batch, as in the seed's validation sampler


def _tf():
    from lookalike import frameworks

    tf = frameworks.tensorflow()
    _gpu_memory_growth(tf)
    return tf


def _tfsim():
    _tf()
    from lookalike import frameworks

    return frameworks.tensorflow_similarity()


def _gpu_memory_growth(tf):
    # TensorFlow grabs all GPU memory by default; Paddle may share the device.
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # the device is already initialised: too late, and harmless


# -- the network ----------------------------------------------------------------------

def channels(width):
    return [max(4, int(round(c * width))) for c in (64, 128, 256, 256)]


def architecture(embedding_size=256, width=1.0):
    """The manifest's ``architecture``: everything :func:`build` needs."""
    return dict(name=ARCHITECTURE, width=width, channels=channels(width), kernel_size=3,
                pool_size=4, pooling="global_max", embedding_size=int(embedding_size),
                embedding_layer="tfsim.layers.MetricEmbedding (L2-normalised)")


def build(image_size, embedding_size=256, width=1.0, seed=None):
    """The seed's network as a ``tfsim.models.SimilarityModel`` (input 0..255, NHWC).

    ``seed`` fixes the initial weights (Keras's default initialisers, seeded).
    """
    tf, tfsim = _tf(), _tfsim()
    layers = tf.keras.layers
    c1, c2, c3, c4 = channels(width)
    # Unseeded, tf-keras seeds each initialiser from Python's global ``random``.
    init = iter(tf.keras.initializers.GlorotUniform(seed=None if seed is None else seed + i)
                for i in range(5))

    def conv(filters, name):
        return layers.Conv2D(filters, 3, activation="relu", kernel_initializer=next(init), name=name)

    # Explicit layer names: the weights file is keyed by them, so they must not
    # depend on how many models this process built before.
    inputs = layers.Input((image_size, image_size, 3), name="images")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = conv(c1, "conv1")(x)
    x = layers.BatchNormalization(name="bn1")(x)
    x = conv(c2, "conv2")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.MaxPool2D((4, 4), name="pool")(x)
    x = conv(c3, "conv3")(x)
    x = layers.BatchNormalization(name="bn3")(x)
    x = conv(c4, "conv4")(x)
    x = layers.GlobalMaxPool2D(name="global_max")(x)
    outputs = tfsim.layers.MetricEmbedding(int(embedding_size), kernel_initializer=next(init),
                                           name="embedding")(x)
    return tfsim.models.SimilarityModel(inputs, outputs, name=ARCHITECTURE)


def build_from_manifest(manifest):
    arch = manifest["architecture"]
    if not isinstance(arch, dict) or arch.get("name") != ARCHITECTURE:
        name = arch.get("name") if isinstance(arch, dict) else arch
        raise store.EncoderStoreError(
            f"encoder '{manifest['name']}': unknown architecture {name!r} (expected {ARCHITECTURE})")
    return build(int(manifest["image_size"]), arch["embedding_size"], arch.get("width", 1.0))


def check_image_size(image_size):
    if image_size < MIN_IMAGE_SIZE:
        raise TrainingConfigError(
            f"image_size must be at least {MIN_IMAGE_SIZE} for this network, got {image_size}")


def check_images(images, image_size, minimum=1):
    if images.ndim != 4 or images.shape[1:] != (image_size, image_size, 3):
        raise TrainingConfigError(
            f"expected images of shape (N, {image_size}, {image_size}, 3), got {images.shape}")
    if len(images) < minimum:
        raise TrainingConfigError(f"need at least {minimum} images to train, got {len(images)}")


# -- labels -----------------------------------------------------------------------------

def labelled_view(view, label_field):
    """``(view of the labelled samples, their labels as strings)``.

    ``label_field`` must be a ``fo.Classification`` field. Samples without a
    label are left out (with a warning); every class needs at least two
    examples, because metric learning compares examples of the same class.
    """
    import fiftyone as fo

    if not label_field:
        raise TrainingConfigError(
            "metric learning needs labels: pass label_field, the name of a Classification "
            "field (or train a 'contrastive' or 'autoencoder' encoder, which need none)")
    field = view.get_field(label_field)
    is_classification = isinstance(field, fo.EmbeddedDocumentField) and issubclass(
        field.document_type, fo.Classification)
    if not is_classification:
        schema = view.get_field_schema(embedded_doc_type=fo.Classification)
        choices = ", ".join(sorted(schema)) or "none in this dataset"
        what = "does not exist" if field is None else f"is a {type(field).__name__}"
        raise TrainingConfigError(
            f"label field '{label_field}' {what}; metric learning needs a Classification "
            f"field (Classification fields: {choices})")
    labelled = view.exists(f"{label_field}.label")
    missing = len(view) - len(labelled)
    labels = [str(label) for label in labelled.values(f"{label_field}.label")]
    if missing and labels:
        warnings.warn(f"{missing} of {len(view)} samples have no '{label_field}' label and are "
                      "left out of training")
    check_labels(labels, f"label field '{label_field}'", missing=missing)
    return labelled, labels


def check_labels(labels, what="the labels", missing=0):
    """Raises :class:`TrainingConfigError` unless there are >= 2 classes with >= 2 examples each."""
    counts = Counter(labels)
    if not counts:
        extra = f" ({missing} samples have no label)" if missing else ""
        raise TrainingConfigError(f"no labelled samples in {what}{extra}: nothing to learn from")
    if len(counts) < 2:
        raise TrainingConfigError(
            f"{what} has only one class ({next(iter(counts))!r}): metric learning needs at "
            "least two classes to tell apart")
    single = sorted(c for c, n in counts.items() if n < 2)
    if single:
        shown = ", ".join(repr(c) for c in single[:10]) + (", ..." if len(single) > 10 else "")
        raise TrainingConfigError(
            f"{len(single)} classes in {what} have a single example ({shown}): metric learning "
            "needs at least 2 examples per class; label more samples or leave those out")
    return counts


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


# -- the training loop shared with the contrastive kind ----------------------------------

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
    tfsim = _tfsim()
    with _seeded_random(seed):  # the constructor shuffles
        return tfsim.samplers.MultiShotMemorySampler(
            np.asarray(x_indices), np.asarray(class_ids), classes_per_batch=classes_per_batch,
            examples_per_class_per_batch=examples_per_class, steps_per_epoch=1)


def sample_batches(sampler, steps, seed):
    """``steps`` batches of ``(indices, class ids)``, reproducible from ``seed``."""
    with _seeded_random(seed):
        batches = [sampler.generate_batch(i) for i in range(steps)]
    return [(np.asarray(x), np.asarray(y)) for x, y in batches]


def model_arrays(model, optimizer):
    """Weights (with BN statistics) and Adam's moments as numpy, for checkpoints."""
    arrays = {f"w/{i:04d}": w for i, w in enumerate(model.get_weights())}
    arrays.update({f"opt/{i:04d}": v.numpy() for i, v in enumerate(optimizer.variables)})
    return arrays


def set_model_arrays(model, optimizer, arrays):
    weights = [arrays[k] for k in sorted(arrays) if k.startswith("w/")]
    opt = [arrays[k] for k in sorted(arrays) if k.startswith("opt/")]
    variables = optimizer.variables
    if len(opt) != len(variables) or any(a.shape != tuple(v.shape) for a, v in zip(opt, variables)):
        raise TrainingConfigError("the checkpoint does not fit this network: pass resume=False")
    model.set_weights(weights)
    for var, value in zip(variables, opt):
        var.assign(value)


def make_optimizer(model, learning_rate):
    tf = _tf()
    optimizer = tf.keras.optimizers.Adam(learning_rate)
    optimizer.build(model.trainable_variables)  # creates the moments now, so they can be restored
    return optimizer


def make_train_step(model, optimizer, loss_of):
    """A compiled step: ``step(uint8 or float images, labels) -> loss``."""
    tf = _tf()

    @tf.function(reduce_retracing=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_of(y, model(tf.cast(x, tf.float32), training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


def make_eval_step(model, loss_of):
    tf = _tf()

    @tf.function(reduce_retracing=True)
    def step(x, y):
        return loss_of(y, model(tf.cast(x, tf.float32), training=False))

    return step


def make_bn_recalibration(model, images, max_images=1024, seed=51, batch_size=256):
    """A function that sets every BatchNormalization's running statistics to their exact
    values over (up to ``max_images`` of) ``images`` ("precise BN").

    Keras updates them as running averages (momentum 0.99), so after a few hundred
    steps they still lag far behind the weights: inference (and ``val_loss``) would
    then see another network than training did (measured: validation loss 0.68 with
    the running averages, 0.05 with exact statistics, after 48 steps).
    """
    tf = _tf()
    if len(images) > max_images:
        images = images[np.sort(np.random.default_rng([seed, 3]).choice(len(images), max_images,
                                                                        replace=False))]
    bns = [layer for layer in model.layers
           if isinstance(layer, tf.keras.layers.BatchNormalization)]
    # One feed per layer, run in order: a layer's input depends on the statistics
    # of the layers before it, which are set first.
    feeds = [tf.function(tf.keras.Model(model.inputs, bn.input)) for bn in bns]

    def recalibrate():
        for bn, feed in zip(bns, feeds):
            total, squares, n = 0.0, 0.0, 0
            for i in range(0, len(images), batch_size):
                x = feed(tf.constant(images[i:i + batch_size], tf.float32), training=False)
                x = x.numpy().astype(np.float64).reshape(-1, x.shape[-1])
                total, squares, n = total + x.sum(0), squares + (x * x).sum(0), n + len(x)
            mean = total / n
            bn.moving_mean.assign(mean.astype(np.float32))
            bn.moving_variance.assign(np.maximum(squares / n - mean * mean, 0).astype(np.float32))

    return recalibrate


def epochs_without_improvement(history):
    """Epochs since the best ``val_loss`` (0 when the last epoch was the best)."""
    losses = [h.get("val_loss") for h in history]
    if not losses or any(v is None for v in losses):
        return 0
    return len(losses) - 1 - int(np.argmin(losses))


def run_epochs(job, model, optimizer, train_step, batches_for_epoch, epochs, start_epoch,
               recalibrate, progress=None, should_stop=None, eval_step=None, val_batches=None,
               patience=None):
    """The epoch loop: train, fix BN statistics, validate, checkpoint, report, stop (early).

    ``batches_for_epoch(epoch)`` yields ``(x, y, n_images)``. Returns True when
    early stopping ended the run before ``epochs``.
    """
    for epoch in range(start_epoch, epochs):
        if patience and epochs_without_improvement(job.history) >= patience:
            return True  # decided before an interruption: do not train on
        losses, seen, t0 = [], 0, time.perf_counter()
        for x, y, n_images in batches_for_epoch(epoch):
            if job.stop_requested(should_stop):
                raise TrainingStopped(
                    f"training '{job.name}' stopped during epoch {epoch + 1}; "
                    f"{job.epochs_done} epochs are saved and a rerun resumes from there")
            losses.append(float(train_step(x, y)))
            seen += n_images
        metrics = dict(loss=float(np.mean(losses)),
                       images_per_s=seen / (time.perf_counter() - t0))
        recalibrate()
        if val_batches:
            metrics["val_loss"] = float(np.mean([float(eval_step(x, y)) for x, y in val_batches]))
        if not np.isfinite(metrics["loss"]):
            raise TrainingConfigError(
                f"training '{job.name}' diverged in epoch {epoch + 1} (loss {metrics['loss']}): "
                "lower the learning rate")
        job.end_epoch(model_arrays(model, optimizer), metrics)
        if progress is not None:
            progress(epoch + 1, epochs, metrics)
    return False


def save_weights(directory, model):
    model.save_weights(os.path.join(directory, WEIGHTS))
    return [WEIGHTS]


def framework_info():
    tf, tfsim = _tf(), _tfsim()
    import tf_keras  # already loaded by frameworks.tensorflow(), as tf.keras

    return dict(framework="tensorflow", framework_version=tf.__version__,
                keras_version=f"tf-keras {tf_keras.__version__}",
                tensorflow_similarity_version=tfsim.__version__)


# -- training -------------------------------------------------------------------------------

def make_loss(loss):
    tfsim = _tfsim()
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
    store_dir=None,
    overwrite=False,
    resume=True,
    progress=None,
    should_stop=None,
    source=None,
):
    """Trains the metric model on ``images`` ((N, S, S, 3) uint8) with string ``labels``.

    Batches hold ``classes_per_batch`` classes x ``examples_per_class_per_batch``
    examples (``batch_size`` given: ``classes_per_batch = batch_size //
    examples_per_class_per_batch``). ``steps_per_epoch`` defaults to one pass
    over the training images. Training stops early when ``val_loss`` has not
    improved for ``patience`` epochs (the last epoch's weights are kept).
    ``progress(epoch, epochs, metrics)`` gets ``loss``, ``val_loss`` (when there
    is a validation split) and ``images_per_s``; ``should_stop()`` is polled
    between batches. Returns the path of the published encoder directory.
    """
    images = np.asarray(images)
    labels = [str(label) for label in labels]
    check_image_size(image_size)
    check_images(images, image_size)
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
    job = TrainingJob(name, KIND, settings, store_dir=store_dir, overwrite=overwrite,
                      resume=resume)
    start_epoch = job.open()

    model = build(image_size, embedding_size, width, seed=seed)
    optimizer = make_optimizer(model, learning_rate)
    checkpoint = job.load_checkpoint()
    if checkpoint is not None:
        set_model_arrays(model, optimizer, checkpoint)

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

    stopped_early = run_epochs(
        job, model, optimizer, make_train_step(model, optimizer, loss_of), batches_for_epoch,
        epochs, start_epoch, make_bn_recalibration(model, images[train_idx], seed=seed),
        progress=progress, should_stop=should_stop,
        eval_step=make_eval_step(model, loss_of), val_batches=val_batches,
        patience=patience if val_batches else None)

    files = save_weights(job.dir, model)
    val_losses = [h["val_loss"] for h in job.history if "val_loss" in h]
    manifest = dict(
        **framework_info(),
        architecture=architecture(embedding_size, width),
        image_size=image_size,
        preprocessing=PREPROCESSING,
        embedding_size=int(embedding_size),
        metric="cosine",
        loss=loss,
        sampler=dict(name="tfsim.samplers.MultiShotMemorySampler", classes_per_batch=cpb,
                     examples_per_class_per_batch=epc, steps_per_epoch=steps),
        batch_size=cpb * epc,
        optimizer=dict(name="adam", learning_rate=learning_rate),
        validation=dict(split=validation_split, num_images=int(len(val_idx)), patience=patience,
                        best_epoch=int(np.argmin(val_losses)) + 1 if val_losses else None),
        stopped_early=stopped_early,
        training_data=source or {},
        num_training_images=int(len(train_idx)),
        classes=classes,
        class_counts={c: int(n) for c, n in zip(classes, np.bincount(class_ids))},
    )
    return job.finish(manifest, files)


# -- loading and embedding ----------------------------------------------------------------

class KerasEncoder(Encoder):
    """The metric or contrastive network, rebuilt from the manifest, run as a ``tf.function``."""

    def __init__(self, path, manifest, batch_size=256):
        super().__init__(path, manifest)
        tf = _tf()
        store.check_framework_version(manifest, tf.__version__)
        if WEIGHTS not in manifest["files"]:
            raise store.EncoderStoreError(f"{path}: the manifest lists no {WEIGHTS}")
        self.model = build_from_manifest(manifest)
        try:
            self.model.load_weights(os.path.join(path, WEIGHTS))
        except Exception as e:  # noqa: BLE001  (h5py and Keras raise many kinds)
            raise store.EncoderStoreError(
                f"{path}: cannot load {WEIGHTS} into the network the manifest describes ({e})"
            ) from None
        self.batch_size = int(batch_size)
        size = self.image_size
        spec = [tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")]
        model = self.model
        # One trace for every batch size: no retracing, no Keras predict overhead.
        self._embed_fn = tf.function(lambda x: model(tf.cast(x, tf.float32), training=False),
                                     input_signature=spec)

    def _forward(self, images):
        images = np.asarray(images, dtype=np.uint8)
        out = [self._embed_fn(images[i:i + self.batch_size]).numpy()
               for i in range(0, len(images), self.batch_size)]
        return np.concatenate(out).astype(np.float32, copy=False)

    def embed_keras(self, images, normalize=True):
        """The same embedding through ``model.predict`` (reference for the fast path)."""
        from lookalike.encoders.base import l2_normalize

        out = self.model.predict(np.asarray(images, dtype=np.float32), batch_size=self.batch_size,
                                 verbose=0)
        return l2_normalize(out) if normalize else out
