"""The seed's Paddle autoencoder, layer for layer in tf-keras: a faster CPU trainer.

Paddle's dynamic graph trains these convolutions 3-5x slower on CPU than
TensorFlow trains the identical layers (``benchmarks/encoders.py``). So on CPU
the autoencoder is trained here and its weights are copied, exactly, into the
Paddle model that the store saves and that Paddle Inference embeds with: the
model, its file format and its inference path stay the seed's Paddle ones.

What makes the two the same model:
* the same layers (3x3 convolutions with ReLU, 2x2 max-pools, stride-2
  transposed convolutions), in NHWC here and NCHW in Paddle;
* the same initial weights (Paddle's own initialisation, copied in);
* Paddle's transposed convolution with ``padding=1, output_padding=1`` keeps
  rows and columns 1..2n of the full ("valid") transposed output: Keras'
  ``padding="same"`` keeps 0..2n-1, one pixel off, so here a valid transposed
  convolution is cropped by one at the top and left;
* the same loss (mean absolute error) and optimiser (Adam with Paddle's
  epsilon 1e-8), the same batches in the same order.
Weight layouts: Paddle convolutions are OIHW, Keras HWIO; Paddle transposed
convolutions are (in, out, H, W), Keras (H, W, out, in).
"""

import numpy as np

from lookalike.core import frameworks
from lookalike.encoders import keras_models as keras


def build(channels, image_size):
    """``(full model, conv layers in Paddle's order, transposed conv layers)``."""
    tf = frameworks.tensorflow()
    layers = tf.keras.layers
    c1, c2, c3 = channels
    convs, deconvs = [], []
    inp = tf.keras.Input((image_size, image_size, 3))
    h = inp
    for c in (c1, c1, "pool", c2, c2, "pool", c3, c3, c3, "pool"):
        if c == "pool":
            h = layers.MaxPool2D(2)(h)
        else:
            convs.append(layers.Conv2D(c, 3, padding="same", activation="relu"))
            h = convs[-1](h)
    for c in (c2, c1, 3):
        deconvs.append(layers.Conv2DTranspose(c, 3, strides=2, padding="valid"))
        h = layers.Cropping2D(((1, 0), (1, 0)))(deconvs[-1](h))
    return tf.keras.Model(inp, h), convs, deconvs


def _paddle_keys(arrays, prefix):
    """Layer keys like ``model/encoder.0`` in layer order."""
    keys = {k.rsplit(".", 1)[0] for k in arrays if k.startswith(prefix) and k.endswith(".weight")}
    return sorted(keys, key=lambda k: int(k.rsplit(".", 1)[1]))


def set_from_paddle(convs, deconvs, arrays):
    """Loads Paddle ``model/...`` arrays (see ``autoencoder.model_arrays``) into the layers."""
    for layer, key in zip(convs, _paddle_keys(arrays, "model/encoder.")):
        layer.set_weights([arrays[key + ".weight"].transpose(2, 3, 1, 0), arrays[key + ".bias"]])
    for layer, key in zip(deconvs, _paddle_keys(arrays, "model/decoder.")):
        layer.set_weights([arrays[key + ".weight"].transpose(2, 3, 1, 0), arrays[key + ".bias"]])


def to_paddle(convs, deconvs, like):
    """The layers' weights as Paddle ``model/...`` arrays with the keys of ``like``."""
    out = {}
    for layers, prefix in ((convs, "model/encoder."), (deconvs, "model/decoder.")):
        for layer, key in zip(layers, _paddle_keys(like, prefix)):
            kernel, bias = layer.get_weights()
            out[key + ".weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
            out[key + ".bias"] = bias
    missing = set(like) - set(out)
    if missing:
        raise ValueError(f"no Keras weights for {sorted(missing)[:3]}")
    return out


class Trainer:
    """Adam + L1 on the Keras twin; checkpoints hold Paddle weights and Keras' Adam state."""

    def __init__(self, channels, image_size, learning_rate, initial_paddle_arrays):
        tf = frameworks.tensorflow()
        self.model, self.convs, self.deconvs = build(channels, image_size)
        self.like = {k: v for k, v in initial_paddle_arrays.items() if k.startswith("model/")}
        set_from_paddle(self.convs, self.deconvs, self.like)
        # Paddle's Adam epsilon (Keras' default is 1e-7).
        self.optimizer = keras.make_optimizer(self.model, learning_rate, epsilon=1e-8)
        self._step = keras.make_train_step(self.model, self.optimizer,
                                           lambda x, out: tf.reduce_mean(tf.abs(out - x)))

    def step(self, nchw_batch, nchw_target=None):
        """One Adam step on a batch in Paddle's layout (float32 NCHW in [-1, 1]); the loss.

        ``nchw_target``: what to reconstruct (None: the input itself; denoising:
        the image the input was edited from).
        """
        x = np.ascontiguousarray(nchw_batch.transpose(0, 2, 3, 1))
        y = x if nchw_target is None else np.ascontiguousarray(nchw_target.transpose(0, 2, 3, 1))
        return float(self._step(x, y))  # L1 reconstruction

    def arrays(self):
        out = to_paddle(self.convs, self.deconvs, self.like)
        out.update({f"tfopt/{i:04d}": v.numpy() for i, v in enumerate(self.optimizer.variables)})
        return out

    def load(self, arrays):
        set_from_paddle(self.convs, self.deconvs, arrays)
        opt = [arrays[k] for k in sorted(arrays) if k.startswith("tfopt/")]
        variables = self.optimizer.variables
        if len(opt) == len(variables):
            for var, value in zip(variables, opt):
                var.assign(value)
