"""The contrastive kind: the seed's network trained without labels, on two augmented views.

Near-duplicate search needs an embedding that ignores crops, flips, small
rotations, colour changes and JPEG re-encoding. Each image of a batch is drawn
twice through random such edits; the loss pulls its two views together and
pushes them away from the other images' views:

* ``simclr`` (default): tfsim's ``SimCLRLoss`` (NT-Xent, ``temperature``) on the
  L2-normalised embeddings; there is no projection head, so the trained network
  is exactly the metric kind's and :class:`~lookalike.encoders.keras_models.KerasEncoder`
  loads it;
* ``multisimilarity``: tfsim's ``MultiSimilarityLoss`` with pseudo-labels (each
  image is its own class).

The random edits are drawn with NumPy from ``(seed, epoch, step)`` and applied
with TensorFlow ops, so a resumed run sees the same views as an uninterrupted
one. The network, epoch loop and checkpoints are :mod:`~lookalike.encoders.keras_models`'s.
"""

import numpy as np

from lookalike.core import frameworks
from lookalike.encoders import keras_models as keras
from lookalike.encoders.training import TrainingConfigError, TrainingJob

KIND = "contrastive"
LOSSES = ("simclr", "multisimilarity")

# The random edits, as recorded in the manifest.
AUGMENTATIONS = dict(
    rotate=dict(p=0.3, max_degrees=10, fill="reflect"),
    random_resized_crop=dict(scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3)),
    horizontal_flip=dict(p=0.5),
    brightness=dict(max_delta=0.2),  # fraction of the 0..255 range
    contrast=dict(factor=(0.7, 1.3)),
    grayscale=dict(p=0.2),
    jpeg=dict(p=0.5, quality=(20, 90)),
)


# -- augmentation ---------------------------------------------------------------------

def draw_params(rng, n):
    """Random edit parameters for ``n`` views (NumPy, so they follow the seed exactly)."""
    a = AUGMENTATIONS
    rotate = rng.random(n) < a["rotate"]["p"]
    angle = np.radians(rng.uniform(-1, 1, n) * a["rotate"]["max_degrees"]) * rotate
    area = rng.uniform(*a["random_resized_crop"]["scale"], n)
    log_ratio = rng.uniform(*np.log(a["random_resized_crop"]["ratio"]), n)
    w = np.minimum(1.0, np.sqrt(area * np.exp(log_ratio)))
    h = np.minimum(1.0, np.sqrt(area / np.exp(log_ratio)))
    y0, x0 = rng.random(n) * (1 - h), rng.random(n) * (1 - w)
    return dict(
        angle=angle.astype(np.float32),
        boxes=np.stack([y0, x0, y0 + h, x0 + w], axis=1).astype(np.float32),
        flip=rng.random(n) < a["horizontal_flip"]["p"],
        brightness=(rng.uniform(-1, 1, n) * a["brightness"]["max_delta"] * 255).astype(np.float32),
        contrast=rng.uniform(*a["contrast"]["factor"], n).astype(np.float32),
        gray=rng.random(n) < a["grayscale"]["p"],
        jpeg=rng.random(n) < a["jpeg"]["p"],
        quality=rng.integers(a["jpeg"]["quality"][0], a["jpeg"]["quality"][1] + 1, n).astype(np.int32),
    )


def make_augment(image_size):
    """``augment(uint8 images, params) -> uint8 views`` as one compiled function."""
    tf = frameworks.tensorflow()
    size = image_size

    def rotation_transforms(angle):
        # Projective transforms mapping output to input pixels: rotation about the centre.
        c = (size - 1) / 2.0
        cos, sin = tf.cos(angle), tf.sin(angle)
        zeros = tf.zeros_like(angle)
        return tf.stack([cos, -sin, c - c * cos + c * sin,
                         sin, cos, c - c * sin - c * cos, zeros, zeros], axis=1)

    @tf.function(reduce_retracing=True)
    def augment(images, angle, boxes, flip, brightness, contrast, gray, jpeg, quality):
        x = tf.cast(images, tf.float32)
        x = tf.raw_ops.ImageProjectiveTransformV3(
            images=x, transforms=rotation_transforms(angle), output_shape=[size, size],
            fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")
        x = tf.image.crop_and_resize(x, boxes, tf.range(tf.shape(x)[0]), [size, size])
        x = tf.where(flip[:, None, None, None], tf.reverse(x, axis=[2]), x)
        mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
        x = (x - mean) * contrast[:, None, None, None] + mean + brightness[:, None, None, None]
        x = tf.where(gray[:, None, None, None], tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 1, 3]), x)
        x = tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)
        encoded = tf.map_fn(lambda a: tf.image.adjust_jpeg_quality(a[0], a[1]), (x, quality),
                            fn_output_signature=tf.uint8)
        return tf.where(jpeg[:, None, None, None], encoded, x)

    def apply(images, params):
        return augment(images, **params)

    return apply


# -- training ---------------------------------------------------------------------------

def make_loss_of(loss, temperature):
    tf, tfsim = frameworks.tensorflow(), frameworks.tensorflow_similarity()
    if loss == "simclr":
        fn = tfsim.losses.SimCLRLoss(temperature=temperature)

        def loss_of(y, emb):  # views are [first views; second views]
            half = tf.shape(emb)[0] // 2
            return fn(emb[:half], emb[half:])
    else:
        fn = tfsim.losses.MultiSimilarityLoss()

        def loss_of(y, emb):  # y: the image each view came from
            return fn(y, emb)

    return loss_of


def train(
    images,
    name,
    image_size=32,
    epochs=10,
    batch_size=64,
    embedding_size=256,
    loss="simclr",
    temperature=0.1,
    learning_rate=1e-3,
    width=1.0,
    seed=51,
    **job_options,
):
    """Trains the seed's network on two augmented views of ``images`` ((N, S, S, 3) uint8).

    ``batch_size`` images (so twice as many views) per step; an epoch is
    ``N // batch_size`` steps over a fresh shuffle (at least one step).
    ``job_options`` (``store_dir``, ``overwrite``, ``resume``, ``progress``,
    ``on_epoch``, ``should_stop``, ``source``): see
    :class:`~lookalike.encoders.training.TrainingJob`; ``images_per_s`` counts
    source images, each seen as two views. Returns the path of the published
    encoder directory.
    """
    images = np.asarray(images)
    keras.check_image_size(image_size)
    keras.check_images(images, image_size, minimum=2)  # negatives come from other images
    if loss not in LOSSES:
        raise TrainingConfigError(f"loss must be one of {LOSSES}, got {loss!r}")
    if epochs < 1 or batch_size < 2 or learning_rate <= 0 or embedding_size < 1 or width <= 0:
        raise TrainingConfigError("epochs, learning_rate, embedding_size and width must be "
                                  "positive and batch_size at least 2")
    if temperature <= 0:
        raise TrainingConfigError(f"temperature must be positive, got {temperature}")
    batch = min(int(batch_size), len(images))
    steps = max(1, len(images) // batch)

    settings = dict(image_size=image_size, epochs=epochs, batch_size=batch,
                    embedding_size=embedding_size, loss=loss, temperature=temperature,
                    learning_rate=learning_rate, width=width, seed=seed,
                    num_images=int(len(images)), augmentations=AUGMENTATIONS)
    job = TrainingJob(name, KIND, settings, **job_options)
    start_epoch = job.open()

    model, optimizer = keras.model_for_job(job, image_size, embedding_size, width, learning_rate,
                                           seed)
    augment = make_augment(image_size)
    pseudo_labels = np.tile(np.arange(batch, dtype=np.int32), 2)

    def batches_for_epoch(epoch):
        order = np.random.default_rng([seed, epoch]).permutation(len(images))
        for step in range(steps):
            rng = np.random.default_rng([seed, epoch, step, 1])
            x = images[order[step * batch:(step + 1) * batch]]
            views = augment(np.concatenate([x, x]), draw_params(rng, 2 * batch))
            yield views, pseudo_labels, batch

    keras.run_epochs(
        job, model, optimizer, keras.make_train_step(model, optimizer, make_loss_of(loss, temperature)),
        batches_for_epoch, start_epoch, keras.make_bn_recalibration(model, images, seed=seed))

    files = keras.save_weights(job.dir, model)
    manifest = dict(
        **keras.network_manifest(KIND, image_size, embedding_size, width),
        loss=loss,
        temperature=temperature if loss == "simclr" else None,
        augmentations=AUGMENTATIONS,
        batch_size=batch,
        steps_per_epoch=steps,
        optimizer=dict(name="adam", learning_rate=learning_rate),
        num_training_images=int(len(images)),
    )
    return job.finish(manifest, files)
