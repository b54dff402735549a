"""The Paddle convolutional autoencoder of the CBIR seed, trained without labels.

Architecture (the seed's): encoder Conv 3->64->64, max-pool, 128->128, max-pool,
256->256->256, max-pool, ReLU after every conv; decoder three stride-2
transposed convolutions back to 3 channels. Input normalised (x-127.5)/127.5,
L1 reconstruction loss, Adam. ``width`` scales every channel count (1.0 = seed).

Embedding: the encoder's last feature map, global-average-pooled (``gap``,
``256 * width`` floats, any input size) or flattened as in the seed
(``flatten``: ``C * (S/8)^2`` floats, 3.2 MB per image at the seed's 448 px).

Speed: Paddle's dynamic graph runs convolutions slowly on CPU. Embedding uses
the exported encoder (``paddle.jit.save``: Paddle 3 writes ``.json`` +
``.pdiparams``) through Paddle Inference with oneDNN. Training: on a GPU in
Paddle's dynamic graph; on CPU, by default, the identical layers are trained in
TensorFlow and the weights copied into the Paddle model
(:mod:`lookalike.encoders.autoencoder_keras`), since ``paddle.jit.to_static``,
the legacy static executor and oneDNN measured no faster here (oneDNN refuses
transposed convolutions in training). The manifest records which trained it.
"""

import os
import random
import warnings

import numpy as np

from lookalike.images.edits import COPY_EDITS
from lookalike.encoders import store
from lookalike.encoders.base import Encoder, l2_normalize
from lookalike.encoders.preprocessing import PREPROCESSING
from lookalike.encoders.training import TrainingConfigError, TrainingJob

KIND = "autoencoder"
EMBEDDINGS = ("gap", "flatten")
EXPORT_PREFIX = "encoder"  # encoder.json + encoder.pdiparams
WEIGHTS = "autoencoder.npz"  # encoder + decoder, to reload the full model without pickle


def _paddle():
    from lookalike.core import frameworks

    paddle = frameworks.paddle()
    # Paddle keeps its dynamic/static mode per thread, and a new thread starts
    # static: FiftyOne runs operators in worker threads.
    if not paddle.in_dynamic_mode():
        paddle.disable_static()
    return paddle


def channels(width):
    return [max(4, int(round(c * width))) for c in (64, 128, 256)]


def build(width=1.0):
    """The seed's autoencoder as a ``paddle.nn.Layer`` with ``encoder`` and ``decoder``."""
    paddle = _paddle()
    nn = paddle.nn
    c1, c2, c3 = channels(width)

    def conv(cin, cout):
        return [nn.Conv2D(cin, cout, 3, padding=1), nn.ReLU()]

    class Autoencoder(nn.Layer):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(
                *conv(3, c1), *conv(c1, c1), nn.MaxPool2D(2, 2),
                *conv(c1, c2), *conv(c2, c2), nn.MaxPool2D(2, 2),
                *conv(c2, c3), *conv(c3, c3), *conv(c3, c3), nn.MaxPool2D(2, 2),
            )
            self.decoder = nn.Sequential(
                nn.Conv2DTranspose(c3, c2, 3, stride=2, padding=1, output_padding=1),
                nn.Conv2DTranspose(c2, c1, 3, stride=2, padding=1, output_padding=1),
                nn.Conv2DTranspose(c1, 3, 3, stride=2, padding=1, output_padding=1),
            )

        def forward(self, x):
            return self.decoder(self.encoder(x))

    return Autoencoder()




def build_embedder(model, embedding):
    """Encoder + pooling as one layer, the unit that is exported for inference."""
    paddle = _paddle()

    class Embedder(paddle.nn.Layer):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, x):
            fmap = self.encoder(x)
            if embedding == "gap":
                # adaptive_avg_pool2d, not paddle.mean: Paddle Inference's oneDNN
                # reduce_mean prints a debug line to stdout on every batch.
                pooled = paddle.nn.functional.adaptive_avg_pool2d(fmap, 1)
                return paddle.flatten(pooled, start_axis=1)
            return paddle.flatten(fmap, start_axis=1)

    return Embedder(model.encoder)


def preprocess(images):
    """uint8 NHWC -> float32 NCHW in [-1, 1], as the seed normalises (the manifest's
    ``preprocessing`` scale and layout; the resize is :mod:`~lookalike.encoders.preprocessing`'s)."""
    x = np.asarray(images, dtype=np.float32)
    return np.ascontiguousarray(((x - 127.5) / 127.5).transpose(0, 3, 1, 2))


def postprocess(x):
    """float NCHW in [-1, 1] -> uint8 NHWC."""
    x = np.clip(np.asarray(x).transpose(0, 2, 3, 1) * 127.5 + 127.5, 0, 255)
    return np.round(x).astype(np.uint8)


def embedding_size(width, image_size, embedding):
    c3 = channels(width)[2]
    return c3 if embedding == "gap" else c3 * (image_size // 8) ** 2


# -- state <-> numpy (checkpoints and weights without pickle) ------------------

def model_arrays(model):
    return {f"model/{k}": v.numpy() for k, v in model.state_dict().items()}


def set_model_arrays(model, arrays):
    state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise store.EncoderStoreError(f"weights lack {sorted(missing)[:3]}...")
    model.set_state_dict(state)


def optimizer_arrays(model, optimizer):
    # Optimiser state is keyed by Paddle's auto-generated parameter names, which
    # differ between processes; store it under the structured names instead.
    by_auto = {p.name: k for k, p in model.named_parameters()}
    out = {}
    for key, value in optimizer.state_dict().items():
        if not hasattr(value, "numpy"):
            continue
        for auto, struct in by_auto.items():
            if key.startswith(auto + "_"):
                out[f"opt/{struct}/{key[len(auto) + 1:]}"] = value.numpy()
                break
    return out


def set_optimizer_arrays(model, optimizer, arrays):
    paddle = _paddle()
    by_struct = {k: p.name for k, p in model.named_parameters()}
    state = {}
    for key, value in arrays.items():
        if not key.startswith("opt/"):
            continue
        struct, suffix = key[4:].rsplit("/", 1)
        state[f"{by_struct[struct]}_{suffix}"] = paddle.to_tensor(value)
    if state:
        optimizer.set_state_dict(state)


# -- training ---------------------------------------------------------------------

def train(
    images,
    name,
    image_size=64,
    epochs=10,
    batch_size=32,
    learning_rate=1e-3,
    width=1.0,
    embedding="gap",
    seed=51,
    preview_images=None,
    trainer="auto",
    denoise=False,
    **job_options,
):
    """Trains the autoencoder on ``images`` ((N, S, S, 3) uint8 at ``image_size``).

    ``denoise``: the input of each step is an edited copy of the image (one of
    :data:`lookalike.images.edits.COPY_EDITS` at random: crop, resize, rotation, flip,
    JPEG, lighting, grayscale, caption) and the target the image itself, still
    with the seed's L1 loss: an encoder that has to undo the edits embeds a
    copy near its original.

    ``job_options`` (``store_dir``, ``overwrite``, ``resume``, ``progress``,
    ``on_epoch``, ``should_stop``, ``source``): see
    :class:`~lookalike.encoders.training.TrainingJob`.
    ``trainer``: "paddle" (dynamic graph), "tensorflow" (the same layers in
    tf-keras, weights copied into the Paddle model; 3x+ faster on CPU) or
    "auto" (Paddle on a GPU, else TensorFlow).
    Returns the path of the published encoder directory.
    """
    paddle = _paddle()
    images = np.asarray(images)
    _check_settings(images, image_size, epochs, batch_size, learning_rate, width, embedding)
    trainer = resolve_trainer(trainer)
    if embedding == "flatten":
        nbytes = embedding_size(width, image_size, embedding) * 4
        warnings.warn(
            f"flattened embeddings take {_human(nbytes)} per image at {image_size} px "
            f"({_human(nbytes * 1_000_000)} per million images); 'gap' takes "
            f"{_human(channels(width)[2] * 4)} at any size"
        )

    settings = dict(image_size=image_size, epochs=epochs, batch_size=batch_size,
                    learning_rate=learning_rate, width=width, embedding=embedding, seed=seed,
                    num_images=int(len(images)), trainer=trainer, denoise=bool(denoise))
    job = TrainingJob(name, KIND, settings, **job_options)
    start_epoch = job.open()

    paddle.seed(seed)
    model = build(width)
    optimizer = paddle.optimizer.Adam(learning_rate=learning_rate, parameters=model.parameters())
    checkpoint = job.load_checkpoint()
    keras = None
    if trainer == "tensorflow":
        from lookalike.encoders import autoencoder_keras

        keras = autoencoder_keras.Trainer(channels(width), image_size, learning_rate,
                                          model_arrays(model))
        if checkpoint is not None:
            keras.load(checkpoint)
    elif checkpoint is not None:
        set_model_arrays(model, checkpoint)
        set_optimizer_arrays(model, optimizer, checkpoint)

    import time

    for epoch in range(start_epoch, epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(images))
        edit_rng = random.Random(f"{seed}/{epoch}")  # the same edits on a resumed epoch
        model.train()
        losses, seen, t0 = [], 0, time.perf_counter()
        for start in range(0, len(order), batch_size):
            job.check_stop(epoch)
            clean = images[order[start:start + batch_size]]
            batch = preprocess(clean)
            inputs = preprocess(edited_inputs(clean, image_size, edit_rng)) if denoise else batch
            if keras is not None:
                loss = keras.step(inputs, batch)
            else:
                loss = paddle.nn.functional.l1_loss(model(paddle.to_tensor(inputs)),
                                                    paddle.to_tensor(batch))
                loss.backward()
                optimizer.step()
                optimizer.clear_grad()
            losses.append(float(loss) * len(batch))
            seen += len(batch)
        metrics = dict(loss=sum(losses) / seen, images_per_s=seen / (time.perf_counter() - t0))
        arrays = (keras.arrays() if keras is not None
                  else {**model_arrays(model), **optimizer_arrays(model, optimizer)})
        job.end_epoch(arrays, metrics)

    if keras is not None:
        set_model_arrays(model, keras.arrays())  # the trained weights, into the seed's model
    model.eval()
    files = save_model_files(job.dir, model, image_size, embedding)
    if preview_images is not None and len(preview_images):
        files += write_previews(job.dir, model, np.asarray(preview_images)[:8])
    manifest = dict(
        framework="paddle",
        framework_version=paddle.__version__,
        trained_with=trained_with(trainer, paddle),
        architecture=dict(name="seed_conv_autoencoder", width=width, channels=channels(width),
                          embedding=embedding),
        image_size=image_size,
        preprocessing=PREPROCESSING[KIND],
        embedding_size=embedding_size(width, image_size, embedding),
        metric="cosine",
        loss="l1",
        optimizer=dict(name="adam", learning_rate=learning_rate),
        batch_size=batch_size,
        num_training_images=int(len(images)),
    )
    if denoise:
        manifest["denoising"] = dict(inputs="edited copies", edits=list(COPY_EDITS))
    return job.finish(manifest, files)


def edited_inputs(images, image_size, rng):
    """Each image (uint8 NHWC) as a random edit of itself, back at the input size (denoising)."""
    from PIL import Image

    from lookalike.images.edits import edited_copy
    from lookalike.encoders.preprocessing import input_manifest, to_input

    manifest = input_manifest(KIND, image_size)
    return np.stack([to_input(edited_copy(Image.fromarray(im), rng.choice(COPY_EDITS), rng),
                              manifest) for im in images])


TRAINERS = ("auto", "paddle", "tensorflow")


def resolve_trainer(trainer):
    """"auto" -> "paddle" where Paddle has a GPU, else "tensorflow" (faster on CPU)."""
    if trainer not in TRAINERS:
        raise TrainingConfigError(f"trainer must be one of {TRAINERS}, got {trainer!r}")
    if trainer != "auto":
        return trainer
    paddle = _paddle()
    on_gpu = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    return "paddle" if on_gpu else "tensorflow"


def trained_with(trainer, paddle):
    if trainer == "paddle":
        device = "gpu" if paddle.device.get_device().startswith("gpu") else "cpu"
        return dict(framework="paddle", version=paddle.__version__, device=device)
    from lookalike.core import frameworks

    tf = frameworks.tensorflow()
    return dict(framework="tensorflow", version=tf.__version__, device="cpu",
                note="the same layers in tf-keras, weights copied into this Paddle model")


def _human(nbytes):
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if nbytes < 1000 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000


def _check_settings(images, image_size, epochs, batch_size, learning_rate, width, embedding):
    if image_size < 8 or image_size % 8:
        raise TrainingConfigError(f"image_size must be a multiple of 8 (>= 8), got {image_size}")
    if images.ndim != 4 or images.shape[1:] != (image_size, image_size, 3):
        raise TrainingConfigError(
            f"expected images of shape (N, {image_size}, {image_size}, 3), got {images.shape}")
    if len(images) == 0:
        raise TrainingConfigError("no images to train on")
    if epochs < 1 or batch_size < 1 or learning_rate <= 0 or width <= 0:
        raise TrainingConfigError("epochs, batch_size, learning_rate and width must be positive")
    if embedding not in EMBEDDINGS:
        raise TrainingConfigError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")


def save_model_files(directory, model, image_size, embedding):
    """Writes the exported encoder (fast path) and the full weights; returns file names."""
    paddle = _paddle()
    np.savez(os.path.join(directory, WEIGHTS), **model_arrays(model))
    embedder = build_embedder(model, embedding)
    embedder.eval()
    spec = [paddle.static.InputSpec([None, 3, image_size, image_size], "float32", "images")]
    paddle.jit.save(embedder, os.path.join(directory, EXPORT_PREFIX), input_spec=spec)
    exported = sorted(f for f in os.listdir(directory) if f.startswith(EXPORT_PREFIX + "."))
    return [WEIGHTS] + exported


def write_previews(directory, model, images):
    """Raw-vs-decoded image pairs, so a user can see what the model learned."""
    from PIL import Image

    paddle = _paddle()
    with paddle.no_grad():
        decoded = postprocess(model(paddle.to_tensor(preprocess(images))).numpy())
    os.makedirs(os.path.join(directory, "previews"), exist_ok=True)
    files = []
    for i, (raw, dec) in enumerate(zip(images, decoded)):
        pair = np.concatenate([raw, dec], axis=1)
        rel = os.path.join("previews", f"reconstruction_{i:02d}.png")
        Image.fromarray(pair).resize((pair.shape[1] * 2, pair.shape[0] * 2),
                                     Image.Resampling.NEAREST).save(os.path.join(directory, rel))
        files.append(rel)
    return files


# -- loading and embedding ------------------------------------------------------------

class AutoencoderEncoder(Encoder):
    """Embeds through Paddle Inference (oneDNN on CPU, GPU when available)."""

    def __init__(self, path, manifest, use_gpu=None, threads=None):
        super().__init__(path, manifest)
        paddle = _paddle()
        store.check_framework_version(manifest, paddle.__version__)
        import paddle.inference as paddle_infer

        # Only files the manifest lists (checked inside the folder, checksums verified on load).
        config = paddle_infer.Config(store.model_file(path, manifest, "program"),
                                     store.model_file(path, manifest, "params"))
        if use_gpu is None:
            use_gpu = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
        if use_gpu:
            config.enable_use_gpu(256, 0)
        else:
            config.disable_gpu()
            config.enable_onednn()
            config.set_cpu_math_library_num_threads(threads or os.cpu_count() or 1)
        config.disable_glog_info()
        self.device = "gpu" if use_gpu else "cpu"
        self._predictor = paddle_infer.create_predictor(config)
        self._input = self._predictor.get_input_handle(self._predictor.get_input_names()[0])
        self._output = self._predictor.get_output_handle(self._predictor.get_output_names()[0])

    def _forward(self, images):
        self._input.reshape([len(images), 3, self.image_size, self.image_size])
        self._input.copy_from_cpu(preprocess(images))
        self._predictor.run()
        return self._output.copy_to_cpu()

    def dynamic_model(self):
        """The full autoencoder in Paddle's dynamic graph (slow; for checks and fine-tuning)."""
        model = build(self.manifest["architecture"]["width"])
        with np.load(store.model_file(self.path, self.manifest, "weights"),
                     allow_pickle=False) as data:
            set_model_arrays(model, {k: data[k] for k in data.files})
        model.eval()
        return model

    def embed_dynamic(self, images, normalize=True):
        """The same embedding computed in the dynamic graph (reference for the fast path)."""
        paddle = _paddle()
        model = self.dynamic_model()
        embedder = build_embedder(model, self.manifest["architecture"]["embedding"])
        with paddle.no_grad():
            out = embedder(paddle.to_tensor(preprocess(images))).numpy()
        return l2_normalize(out) if normalize else out
