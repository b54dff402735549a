"""Encoder speed: training and embedding images/s, Paddle vs Paddle Inference vs TensorFlow.

Run on demand (not part of the tests):

    .venv/bin/python benchmarks/encoders.py                 # 32 and 128 px
    .venv/bin/python benchmarks/encoders.py --sizes 32 128 224

For every input size, with batch 64 (fewer timed batches at large sizes):

* autoencoder training: Paddle dynamic graph (what lookalike uses) vs the
  identical layers in tf-keras;
* autoencoder embedding: Paddle dynamic graph vs Paddle Inference with oneDNN
  (lookalike's fast path) vs the identical encoder in tf-keras under
  ``tf.function`` -- the ratio Paddle Inference / TensorFlow is the target
  figure (>= 0.8);
* metric / contrastive network (TensorFlow): training and embedding;
* bytes per stored embedding.

``--cold-start``: what a fresh process (an App server's first query, a worker, a CLI run)
pays to embed one image with a contrastive encoder, as lookalike loads it (a plain Keras
network) beside the previous way (the training network, TensorFlow Similarity imported),
each in new Pythons; then a second load in the same process, shared vs rebuilt.

Random weights and random images: speed does not depend on them. Timings are
medians over the timed batches; the machine's load is printed with them.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))


def timed(fn, batches, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(batches):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def n_batches(size):
    return 5 if size <= 32 else (2 if size <= 128 else 1)


def paddle_autoencoder(size, batch, width, results, tmp):
    from lookalike.encoders import autoencoder as ae, store

    paddle = ae._paddle()
    model = ae.build(width)
    opt = paddle.optimizer.Adam(1e-3, parameters=model.parameters())
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    x = paddle.to_tensor(ae.preprocess(images))

    def train_step():
        loss = paddle.nn.functional.l1_loss(model(x), x)
        loss.backward()
        opt.step()
        opt.clear_grad()

    nb = n_batches(size)
    results.append(("autoencoder", size, "train", "paddle dynamic", batch / timed(train_step, nb)))

    model.eval()
    embedder = ae.build_embedder(model, "gap")

    def dyn_embed():
        with paddle.no_grad():
            embedder(paddle.to_tensor(ae.preprocess(images))).numpy()

    results.append(("autoencoder", size, "embed", "paddle dynamic", batch / timed(dyn_embed, nb)))

    directory = os.path.join(tmp, f"ae{size}")
    os.makedirs(directory)
    ae.save_model_files(directory, model, size, "gap")
    manifest = dict(name="bench", kind="autoencoder", image_size=size, embedding_size=ae.channels(width)[2],
                    framework="paddle", framework_version=paddle.__version__,
                    architecture={"width": width, "embedding": "gap"},
                    # Every model file checksummed, as the store writes them (loads verify it).
                    files={rel: store.sha256(os.path.join(directory, rel))
                           for rel in os.listdir(directory)})
    fast = ae.AutoencoderEncoder(directory, manifest)
    results.append(("autoencoder", size, "embed", "paddle inference (oneDNN)",
                    batch / timed(lambda: fast.embed(images), nb)))
    ref = embedder(paddle.to_tensor(ae.preprocess(images[:4]))).numpy()
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    return weights, ref, images


def tf_autoencoder(size, batch, width, weights, ref, images, results):
    """The same layers in tf-keras, with the Paddle weights (checked equal)."""
    from lookalike.core import frameworks
    from lookalike.encoders import autoencoder as ae

    tf = frameworks.tensorflow()
    keras = tf.keras
    c1, c2, c3 = ae.channels(width)
    convs = []

    def conv(c):
        layer = keras.layers.Conv2D(c, 3, padding="same", activation="relu")
        convs.append(layer)
        return layer

    inp = keras.Input((size, size, 3))
    h = inp
    for c in (c1, c1, "pool", c2, c2, "pool", c3, c3, c3, "pool"):
        h = keras.layers.MaxPool2D(2)(h) if c == "pool" else conv(c)(h)
    encoder = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(h))
    # Paddle conv weights are OIHW; Keras wants HWIO.
    paddle_convs = sorted({k.rsplit(".", 1)[0] for k in weights if k.startswith("encoder")},
                          key=lambda k: int(k.split(".")[1]))
    for layer, key in zip(convs, paddle_convs):
        layer.set_weights([weights[key + ".weight"].transpose(2, 3, 1, 0), weights[key + ".bias"]])
    fn = tf.function(lambda x: encoder(x, training=False))
    nhwc = lambda imgs: ((imgs.astype(np.float32) - 127.5) / 127.5)  # noqa: E731
    diff = float(np.abs(fn(nhwc(images[:4])).numpy() - ref).max())
    nb = n_batches(size)
    results.append(("autoencoder", size, "embed", f"tensorflow same layers (max diff {diff:.1e})",
                    batch / timed(lambda: fn(nhwc(images)).numpy(), nb)))

    h = encoder.layers[-2].output
    for c in (c2, c1, 3):
        h = keras.layers.Conv2DTranspose(c, 3, strides=2, padding="same")(h)
    full = keras.Model(inp, h)
    opt = keras.optimizers.Adam(1e-3)
    x = tf.constant(nhwc(images))

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.abs(full(x, training=True) - x))
        opt.apply_gradients(zip(tape.gradient(loss, full.trainable_variables),
                                full.trainable_variables))

    results.append(("autoencoder", size, "train", "tensorflow same layers",
                    batch / timed(train_step, nb)))


def tf_metric(size, batch, results):
    from lookalike.core import frameworks
    from lookalike.encoders import keras_models as keras

    tf = frameworks.tensorflow()
    model = keras.build(size)
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    fn = tf.function(lambda x: model(x, training=False))
    nb = n_batches(size)
    results.append(("metric/contrastive", size, "embed", "tensorflow (tf.function)",
                    batch / timed(lambda: fn(tf.constant(images, tf.float32)).numpy(), nb)))
    tfsim = frameworks.tensorflow_similarity()
    loss_fn = tfsim.losses.MultiSimilarityLoss()
    opt = tf.keras.optimizers.Adam(1e-3)
    labels = tf.constant(np.repeat(np.arange(batch // 4), 4))
    x = tf.constant(images, tf.float32)

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(x, training=True))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                model.trainable_variables))

    results.append(("metric/contrastive", size, "train", "tensorflow (MultiSimilarity)",
                    batch / timed(train_step, nb)))


COLD = """
import sys, time
start = time.perf_counter()
import numpy as np
from lookalike.encoders import keras_models, load_encoder
if {previous}:  # the training network, as loading built it before
    from lookalike.core import frameworks
    frameworks.tensorflow_similarity()
    keras_models.build_from_manifest = lambda m: keras_models.build(
        int(m["image_size"]), m["architecture"]["embedding_size"], m["architecture"]["width"])
image = np.zeros((1, 64, 64, 3), np.uint8)
load_encoder({path!r}).embed(image)
first = time.perf_counter() - start
t = time.perf_counter(); load_encoder({path!r}).embed(image); again = time.perf_counter() - t
import lookalike.encoders as e
e._LOADED.clear()
t = time.perf_counter(); load_encoder({path!r}).embed(image); rebuilt = time.perf_counter() - t
print("COLD", first, again, rebuilt, "tensorflow_similarity" in sys.modules)
"""


def cold_start(repeats):
    import subprocess

    from lookalike.encoders import contrastive

    with tempfile.TemporaryDirectory() as store:
        images = np.random.default_rng(0).integers(0, 255, (16, 64, 64, 3), dtype=np.uint8)
        path = contrastive.train(images, "cold", image_size=64, epochs=1, batch_size=8,
                                 store_dir=store)
        print("\n| loading | first embedding in a fresh process (s) | second load, shared (s) "
              "| second load, rebuilt (s) | TF Similarity imported |")
        print("|---|---|---|---|---|")
        for previous in (False, True):
            runs = []
            for _ in range(repeats):
                out = subprocess.run([sys.executable, "-c", COLD.format(previous=previous,
                                                                         path=path)],
                                     capture_output=True, text=True, check=True)
                line = next(x for x in out.stdout.splitlines() if x.startswith("COLD"))
                runs.append(line.split()[1:])
            med = [float(np.median([float(r[i]) for r in runs])) for i in range(3)]
            name = "previous (training network)" if previous else "lookalike (plain Keras)"
            print(f"| {name} | {med[0]:.2f} | {med[1]:.3f} | {med[2]:.2f} | {runs[0][3]} |",
                  flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--cold-start", action="store_true",
                        help="only the fresh-process figures (see the module's docstring)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.cold_start:
        print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")
        return cold_start(args.repeats)
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            weights, ref, images = paddle_autoencoder(size, args.batch, args.width, results, tmp)
            tf_autoencoder(size, args.batch, args.width, weights, ref, images, results)
            try:
                tf_metric(size, args.batch, results)
            except ImportError as e:
                print(f"metric network skipped: {e}")
            for row in results:
                if row[1] == size:
                    print(f"{row[0]:20s} {row[1]:4d}px {row[2]:6s} {row[3]:48s} {row[4]:9.1f} img/s",
                          flush=True)
    print("\n| encoder | size | step | implementation | images/s |")
    print("|---|---|---|---|---|")
    for kind, size, step, impl, ips in results:
        print(f"| {kind} | {size} | {step} | {impl} | {ips:.1f} |")
    print("\nratios:")
    for size in args.sizes:
        get = {(r[2], r[3].split(" (")[0]): r[4] for r in results if r[1] == size and r[0] == "autoencoder"}
        infer, tfe = get.get(("embed", "paddle inference")), get.get(("embed", "tensorflow same layers"))
        dyn = get.get(("embed", "paddle dynamic"))
        if infer and tfe:
            print(f"  {size}px: Paddle Inference / TensorFlow = {infer / tfe:.2f}; "
                  f"Paddle Inference / Paddle dynamic = {infer / dyn:.1f}; "
                  f"Paddle training / TensorFlow training = "
                  f"{get[('train', 'paddle dynamic')] / get[('train', 'tensorflow same layers')]:.2f}")
    from lookalike.encoders import autoencoder as ae

    print("\nbytes per embedding (float32):")
    for size in sorted(set(args.sizes) | {448}):
        print(f"  autoencoder gap {size}px: {ae.embedding_size(args.width, size, 'gap') * 4:,}; "
              f"flatten: {ae.embedding_size(args.width, size, 'flatten') * 4:,}")
    print("  metric / contrastive (256-d): 1,024")


if __name__ == "__main__":
    main()
