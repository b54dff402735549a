"""A FiftyOne model that computes embeddings (a zoo model, your own ``fiftyone.core.models.Model``)
as the encoder of a field.

FiftyOne models are Python objects, not files: nothing of them can go into the
model store without running code on load. So a model is *registered* in the
process under a name (:func:`register_model`), and from then on it is the
encoder ``fo:<name>`` there: ``compute_embeddings(samples, "fo:<name>")``
records that name and a version in the field, and queries by image file and
the synthetic copies of the label-free duplicate threshold load it by that
name (:func:`lookalike.encoders.load_encoder`) like one of ours. A process that
has not registered it (another script, the App server, a worker) says so in
one line instead of guessing: register it there too, or bring a file-based
model into the store (:mod:`lookalike.encoders.foreign`).

The model gets each image decoded and resized to ``image_size`` (RGB uint8,
HWC), as FiftyOne passes images to its models; its own transforms do the rest.
"""

import numpy as np

from lookalike.encoders.base import Encoder
from lookalike.core.errors import EncoderStoreError

PREFIX = "fo:"
KIND = "fiftyone-model"
_REGISTERED = {}


class FiftyOneModelEncoder(Encoder):
    """A registered FiftyOne model, embedding through its ``embed_all``."""

    def __init__(self, name, model, image_size, version):
        self.model = model
        manifest = dict(
            name=PREFIX + name, kind=KIND, framework="fiftyone", image_size=int(image_size),
            embedding_size=0, metric="cosine", files={},
            preprocessing=dict(decode="jpeg-draft", resize="bilinear", color="RGB",
                               layout="HWC uint8 (the model's own transforms follow)"),
            architecture=dict(model_class=f"{type(model).__module__}.{type(model).__qualname__}"),
            training_data=dict(dataset=None), version=version)
        super().__init__(None, manifest)
        blank = np.zeros((1, self.image_size, self.image_size, 3), np.uint8)
        manifest["embedding_size"] = int(self._forward(blank).shape[1])

    @property
    def version(self):
        from lookalike.encoders.base import variant_name

        return variant_name(f"{self.manifest['name']}@{self.manifest['version']}",
                            self.flip_average)

    def _forward(self, images):
        out = self.model.embed_all([np.asarray(image) for image in images])
        out = np.asarray(out, dtype=np.float32)
        return out.reshape(len(images), -1)


def register_model(name, model, image_size=224, version=None):
    """Registers the FiftyOne ``model`` as the encoder ``fo:<name>`` in this process; returns it.

    ``model``: a ``fiftyone.core.models.Model`` whose ``has_embeddings`` is True
    (a zoo model from ``foz.load_zoo_model``, or your own); ``image_size``: the
    square size images are resized to before the model's own transforms;
    ``version``: what identifies these weights (default the model's class): a
    field never mixes two versions, so change it when the weights change.
    """
    from lookalike.encoders.store import validate_name

    validate_name(name)
    if not getattr(model, "has_embeddings", False) or not hasattr(model, "embed_all"):
        raise EncoderStoreError(f"model {type(model).__name__} computes no embeddings "
                                "(its has_embeddings is False): it cannot be an encoder")
    encoder = FiftyOneModelEncoder(name, model, image_size,
                                   version or f"{type(model).__qualname__}")
    _REGISTERED[name] = encoder
    return encoder


def unregister_model(name):
    """Forgets ``fo:<name>`` in this process."""
    _REGISTERED.pop(name, None)


def registered_encoder(full_name):
    """The encoder registered as ``full_name`` (``fo:<name>``), or a one-line EncoderStoreError."""
    name = full_name[len(PREFIX):]
    if name not in _REGISTERED:
        raise EncoderStoreError(
            f"encoder '{full_name}' is a FiftyOne model registered in the process that used it; "
            "this process has not registered it: call lookalike.encoders.register_model"
            f"('{name}', model) here first")
    import copy

    return copy.copy(_REGISTERED[name])  # its own flip_average, the same model
