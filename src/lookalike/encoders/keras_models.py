"""The Keras network, epoch loop and weights I/O shared by the metric and contrastive kinds.

Architecture (the seed's ``tfsim_seed_convnet``): Rescaling(1/255), Conv 64 ReLU,
BN, Conv 128 ReLU, BN, MaxPool 4x4, Conv 256 ReLU, BN, Conv 256 ReLU,
GlobalMaxPool, ``MetricEmbedding`` (a Dense layer whose output is
L2-normalised), all 3x3 convolutions without padding, so ``image_size`` must be
at least 24. ``width`` scales every channel count (1.0 = seed).

Training is our own epoch loop (:func:`run_epochs`) rather than ``model.fit``,
so every epoch is checkpointed (weights, BN statistics and Adam's moments) and a
run can stop between batches and resume exactly. After every epoch the
BatchNormalization statistics are recomputed exactly over (up to 1,024) training
images ("precise BN"): Keras's running averages (momentum 0.99) lag far behind
the weights for the first few hundred steps, so the published network (and
``val_loss``) would otherwise differ from the one that was trained.

Files: ``model.weights.h5`` (tf-keras's weights-only format, no code); the
network is rebuilt from the manifest's ``architecture`` on load, so
:class:`KerasEncoder` loads both kinds. SimilarityModel's
``index``/``match``/``calibrate`` are never used (``match`` fails with NumPy
2.4); lookalike indexes the embeddings itself.

TensorFlow is reached through :mod:`lookalike.core.frameworks`, inside the functions.
"""

import os
import time

import numpy as np

from lookalike.core import frameworks
from lookalike.encoders import store
from lookalike.encoders.base import Encoder, l2_normalize
from lookalike.core.errors import TrainingConfigError

ARCHITECTURE = "tfsim_seed_convnet"
WEIGHTS = "model.weights.h5"
MIN_IMAGE_SIZE = 24  # 3x3 valid convs and a 4x4 pool must leave a 1x1 map


# -- the network ----------------------------------------------------------------------

def channels(width):
    return [max(4, int(round(c * width))) for c in (64, 128, 256, 256)]


def architecture(embedding_size=256, width=1.0):
    """The manifest's ``architecture``: everything :func:`build` needs."""
    return dict(name=ARCHITECTURE, width=width, channels=channels(width), kernel_size=3,
                pool_size=4, pooling="global_max", embedding_size=int(embedding_size),
                embedding_layer="tfsim.layers.MetricEmbedding (L2-normalised)")


def build(image_size, embedding_size=256, width=1.0, seed=None, for_training=True):
    """The seed's network as a ``tfsim.models.SimilarityModel`` (input 0..255, NHWC).

    ``seed`` fixes the initial weights (Keras's default initialisers, seeded).
    ``for_training=False``: the same layers and weights as a plain Keras model (see
    :func:`_metric_embedding`): embedding needs no TensorFlow Similarity, whose import
    costs a fresh process (an App server, a worker, the CLI) seconds.
    """
    tf = frameworks.tensorflow()
    tfsim = frameworks.tensorflow_similarity() if for_training else None
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
    embedding = tfsim.layers.MetricEmbedding if tfsim else _metric_embedding()
    outputs = embedding(int(embedding_size), kernel_initializer=next(init), name="embedding")(x)
    if tfsim is None:
        return tf.keras.Model(inputs, outputs, name=ARCHITECTURE)
    return tfsim.models.SimilarityModel(inputs, outputs, name=ARCHITECTURE)


_METRIC_EMBEDDING = []


def _metric_embedding():
    """A Keras layer computing what ``tfsim.layers.MetricEmbedding`` does (Dense, then L2
    normalisation), under the same class name: the weights file keys each layer's
    variables by its class name, so these load the weights training saved."""
    if not _METRIC_EMBEDDING:
        tf = frameworks.tensorflow()

        class MetricEmbedding(tf.keras.layers.Dense):
            def call(self, inputs):
                return tf.math.l2_normalize(super().call(inputs), axis=1)

        _METRIC_EMBEDDING.append(MetricEmbedding)
    return _METRIC_EMBEDDING[0]


def build_from_manifest(manifest):
    arch = manifest["architecture"]
    if not isinstance(arch, dict) or arch.get("name") != ARCHITECTURE:
        name = arch.get("name") if isinstance(arch, dict) else arch
        raise store.EncoderStoreError(
            f"encoder '{manifest['name']}': unknown architecture {name!r} (expected {ARCHITECTURE})")
    return build(int(manifest["image_size"]), arch["embedding_size"], arch.get("width", 1.0),
                 for_training=False)


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


# -- training steps and checkpoints ------------------------------------------------------

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


def make_optimizer(model, learning_rate, epsilon=1e-7):
    """Adam (Keras's default ``epsilon``), its moments created now so a checkpoint can restore them."""
    tf = frameworks.tensorflow()
    optimizer = tf.keras.optimizers.Adam(learning_rate, epsilon=epsilon)
    optimizer.build(model.trainable_variables)
    return optimizer


def model_for_job(job, image_size, embedding_size, width, learning_rate, seed):
    """``(network, its Adam)`` for a training job: at its last checkpoint, else seeded fresh."""
    model = build(image_size, embedding_size, width, seed=seed)
    optimizer = make_optimizer(model, learning_rate)
    checkpoint = job.load_checkpoint()
    if checkpoint is not None:
        set_model_arrays(model, optimizer, checkpoint)
    return model, optimizer


def make_train_step(model, optimizer, loss_of):
    """A compiled step: ``step(uint8 or float images, targets) -> loss``, with
    ``loss_of(targets, model output)``."""
    tf = frameworks.tensorflow()

    @tf.function(reduce_retracing=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_of(y, model(tf.cast(x, tf.float32), training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


def make_eval_step(model, loss_of):
    tf = frameworks.tensorflow()

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
    tf = frameworks.tensorflow()
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


def run_epochs(job, model, optimizer, train_step, batches_for_epoch, start_epoch, recalibrate,
               eval_step=None, val_batches=None, patience=None):
    """The epoch loop: train, fix BN statistics (every epoch where there is validation,
    else once after the last), validate, checkpoint and report (the
    :class:`~lookalike.encoders.training.TrainingJob` does both), stop (early).

    ``batches_for_epoch(epoch)`` yields ``(x, y, n_images)``. Returns True when
    early stopping ended the run before ``job.epochs``.
    """
    for epoch in range(start_epoch, job.epochs):
        if patience and epochs_without_improvement(job.history) >= patience:
            return True  # decided before an interruption: do not train on
        losses, seen, t0 = [], 0, time.perf_counter()
        for x, y, n_images in batches_for_epoch(epoch):
            job.check_stop(epoch)
            losses.append(float(train_step(x, y)))
            seen += n_images
        metrics = dict(loss=float(np.mean(losses)),
                       images_per_s=seen / (time.perf_counter() - t0))
        if val_batches:  # val_loss needs the exact statistics every epoch
            recalibrate()
            metrics["val_loss"] = float(np.mean([float(eval_step(x, y)) for x, y in val_batches]))
        if not np.isfinite(metrics["loss"]):
            raise TrainingConfigError(
                f"training '{job.name}' diverged in epoch {epoch + 1} (loss {metrics['loss']}): "
                "lower the learning rate")
        job.end_epoch(model_arrays(model, optimizer), metrics)
    if not val_batches:
        # Training itself runs on batch statistics, so only the published network needs
        # the exact ones: once here, not every epoch (that took 40% of a 20-epoch run).
        recalibrate()
    return False


# -- files ------------------------------------------------------------------------------

def save_weights(directory, model):
    model.save_weights(os.path.join(directory, WEIGHTS))
    return [WEIGHTS]


def framework_info():
    tf, tfsim = frameworks.tensorflow(), frameworks.tensorflow_similarity()
    import tf_keras  # already loaded by frameworks.tensorflow(), as tf.keras

    return dict(framework="tensorflow", framework_version=tf.__version__,
                keras_version=f"tf-keras {tf_keras.__version__}",
                tensorflow_similarity_version=tfsim.__version__)


def network_manifest(kind, image_size, embedding_size, width):
    """What every Keras kind's manifest says of its network: framework, layers, input, output."""
    from lookalike.encoders.preprocessing import PREPROCESSING

    return dict(**framework_info(), architecture=architecture(embedding_size, width),
                image_size=image_size, preprocessing=PREPROCESSING[kind],
                embedding_size=int(embedding_size), metric="cosine")


# -- loading and embedding ----------------------------------------------------------------

class KerasEncoder(Encoder):
    """The metric or contrastive network, rebuilt from the manifest, run as a ``tf.function``."""

    reusable = True

    def __init__(self, path, manifest, batch_size=256):
        super().__init__(path, manifest)
        tf = frameworks.tensorflow()
        store.check_framework_version(manifest, tf.__version__)
        if WEIGHTS not in manifest["files"]:
            raise store.EncoderStoreError(f"{path}: the manifest lists no {WEIGHTS}")
        weights = store.model_file(path, manifest, "weights")  # inside, listed, checked
        self.model = build_from_manifest(manifest)
        try:
            self.model.load_weights(weights)
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
        out = self.model.predict(np.asarray(images, dtype=np.float32), batch_size=self.batch_size,
                                 verbose=0)
        return l2_normalize(out) if normalize else out
