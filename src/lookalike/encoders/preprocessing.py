"""The one way a decoded image becomes an encoder's input: the rule its manifest records.

Every encoder's manifest records ``image_size`` and ``preprocessing``: the resize
and colour applied here, outside the network, and the scaling and layout its
network applies itself (recorded for readers; :mod:`~lookalike.encoders.autoencoder`
and :mod:`~lookalike.encoders.keras_models` apply them on the arrays made here).
Embedding files, training and the synthetic copies that set the duplicate
threshold all call :func:`to_input` with the encoder's manifest, so an encoder
is never measured under another preprocessing than its own. A training run,
whose manifest is not written yet, passes :func:`input_manifest`: the part of
the manifest it will write.

``preprocessing["decode"]`` says how a file is decoded before that resize:
``"jpeg-draft"`` (every encoder trained since it existed) lets the JPEG decoder
work at 1/2, 1/4 or 1/8 scale in the DCT domain, never below the input size
(:func:`lookalike.images.decode.open_image`'s ``min_side``), which decodes camera-sized
photos about 4x faster; other formats are decoded in full. A manifest without it
(encoders saved before) means ``"full"``: those encoders keep making exactly
the vectors their fields already hold. The decode is fixed by the manifest
written with the weights, so one encoder version always embeds one way and a
field (whose record holds that version) never mixes two decodes.
"""

import numpy as np

from lookalike.core.errors import EncoderStoreError
from lookalike.images.decode import load_image

# What each kind records; the decode is applied by load_decoded, the resize and
# colour by to_input.
PREPROCESSING = {
    "autoencoder": dict(decode="jpeg-draft", resize="bilinear", color="RGB",
                        scale="(x-127.5)/127.5", layout="NCHW"),
    "metric": dict(decode="jpeg-draft", resize="bilinear", color="RGB",
                   scale="x/255 (inside the model)", layout="NHWC"),
}
DECODES = ("full", "jpeg-draft")
PREPROCESSING["contrastive"] = PREPROCESSING["metric"]  # the metric kind's network


def _resampling(name):
    from PIL import Image

    methods = {"bilinear": Image.Resampling.BILINEAR}
    if name not in methods:
        raise EncoderStoreError(f"unknown resize {name!r} in the encoder's preprocessing "
                                f"(this lookalike knows {', '.join(methods)})")
    return methods[name]


def input_manifest(kind, image_size):
    """The part of the manifest of a ``kind`` encoder at ``image_size`` that :func:`to_input` reads."""
    return dict(kind=kind, image_size=int(image_size), preprocessing=PREPROCESSING[kind])


def to_input(image, manifest):
    """A decoded RGB PIL image -> the ``(S, S, 3)`` uint8 array the encoder of ``manifest`` embeds.

    ``S`` is the manifest's ``image_size``; the image is resized to a square with
    the manifest's ``preprocessing["resize"]`` (its aspect ratio is not kept).
    """
    size = int(manifest["image_size"])
    recipe = manifest["preprocessing"]
    if recipe.get("color", "RGB") != "RGB":
        raise EncoderStoreError(f"unknown colour {recipe['color']!r} in the encoder's preprocessing")
    resample = _resampling(recipe.get("resize"))
    if image.size != (size, size):
        image = image.resize((size, size), resample)
    return np.asarray(image, dtype=np.uint8)


def decode_side(manifest, headroom=1):
    """The side both sides of a decoded file may shrink to for ``manifest``'s encoder
    (``headroom`` times its input size), or None for a full decode."""
    decode = manifest["preprocessing"].get("decode", "full")  # none: saved before the draft
    if decode not in DECODES:
        raise EncoderStoreError(f"unknown decode {decode!r} in the encoder's preprocessing "
                                f"(this lookalike knows {', '.join(DECODES)})")
    return None if decode == "full" else int(headroom) * int(manifest["image_size"])


def load_decoded(path, manifest, headroom=1):
    """The RGB PIL image of the file ``path``, decoded as ``manifest`` says (before
    :func:`to_input`'s resize). ``headroom``: keep that many times the input size,
    for edits that shrink the image before it is resized (synthetic copies)."""
    return load_image(path, min_side=decode_side(manifest, headroom))


def load_input(path, manifest):
    """:func:`to_input` of the image file ``path``, decoded as the manifest says.

    Raises :class:`~lookalike.core.errors.UnreadableImageError` (path and reason) for
    every file that is missing, not an image, over the pixel limit, truncated or
    corrupt.
    """
    return to_input(load_decoded(path, manifest), manifest)
