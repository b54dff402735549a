"""What a loaded encoder offers, whatever its framework."""

import numpy as np

from lookalike.encoders.data import iter_batches
from lookalike.core.progress import report


def l2_normalize(x, eps=1e-12):
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


# A flip-averaged encoder is named after its weights plus this suffix (store names
# cannot hold "+"), so a field's record, an index and a query all load the same kind.
FLIP_SUFFIX = "+flip"


def variant_name(name, flip_average):
    """The name (or version) of an encoder's flip-averaged variant, or ``name`` itself."""
    return name + FLIP_SUFFIX if flip_average else name


class Encoder:
    """A trained encoder, ready to embed. Subclasses implement :meth:`_forward`.

    ``flip_average``: each embedding is the mean of the image's and its mirror
    image's (each L2-normalised first), so an image and its left-right flip get
    the same vector; twice the compute. It is part of :attr:`name` and
    :attr:`version` (``<name>+flip``): a field never mixes the two kinds.
    """

    flip_average = False
    # Whether one built instance may serve every load of the same files in this process
    # (from several threads): a Keras ``tf.function`` may; a Paddle predictor may not.
    reusable = False

    def __init__(self, path, manifest):
        self.path = path
        self.manifest = manifest

    name = property(lambda self: variant_name(self.manifest["name"], self.flip_average))
    kind = property(lambda self: self.manifest["kind"])
    image_size = property(lambda self: int(self.manifest["image_size"]))
    embedding_size = property(lambda self: int(self.manifest["embedding_size"]))

    @property
    def version(self):
        """Identifies these exact weights (name + checksum of the manifest's files)."""
        digest = "".join(sorted(self.manifest["files"].values()))
        import hashlib

        weights = f"{self.manifest['name']}@{hashlib.sha256(digest.encode()).hexdigest()[:12]}"
        return variant_name(weights, self.flip_average)

    def _forward(self, images):
        """(N, S, S, 3) uint8 at ``image_size`` -> (N, D) float32, not normalised."""
        raise NotImplementedError

    def embed(self, images, normalize=True):
        """Embeds a batch of RGB uint8 images already resized to ``image_size``."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(
                f"expected images of shape (N, {self.image_size}, {self.image_size}, 3), "
                f"got {images.shape}"
            )
        if len(images) == 0:
            return np.zeros((0, self.embedding_size), np.float32)
        out = np.asarray(self._forward(images), dtype=np.float32)
        if self.flip_average:
            mirrored = np.asarray(self._forward(np.ascontiguousarray(images[:, :, ::-1])),
                                  dtype=np.float32)
            out = (l2_normalize(out) + l2_normalize(mirrored)) / 2
        return l2_normalize(out) if normalize else out

    def iter_embed_paths(self, paths, batch_size=64, normalize=True, sample_ids=None,
                         num_workers=None):
        """Yields ``(indices, embeddings, failures)`` per batch of image files.

        ``indices`` index into ``paths``; ``failures`` lists an
        :class:`~lookalike.images.decode.ImageFailure` (with its ``sample_ids`` entry) for
        each file that could not be read. Files go through the manifest's
        preprocessing (:mod:`lookalike.encoders.preprocessing`), decoded in threads
        while the model works on the previous batch.
        """
        for idx, images, failed in iter_batches(paths, self.manifest, batch_size,
                                                sample_ids=sample_ids, num_workers=num_workers):
            emb = self.embed(images, normalize=normalize) if len(idx) else None
            yield idx, emb, failed

    def embed_paths(self, paths, batch_size=64, normalize=True, progress=None, num_workers=None):
        """Embeds image files; returns ``(embeddings, ok_indices, failures)``.

        ``failures`` lists an :class:`~lookalike.images.decode.ImageFailure` for each file
        that could not be read. ``progress(fraction, label)``.
        """
        chunks, ok, failures = [], [], []
        for idx, emb, failed in self.iter_embed_paths(paths, batch_size, normalize,
                                                      num_workers=num_workers):
            if emb is not None:
                chunks.append(emb)
                ok.extend(idx)
            failures.extend(failed)
            done = len(ok) + len(failures)
            report(progress, done, len(paths), f"embedded {done}/{len(paths)}")
        emb = np.concatenate(chunks) if chunks else np.zeros((0, self.embedding_size), np.float32)
        return emb, ok, failures

    def __repr__(self):
        return (f"<{type(self).__name__} {self.name!r} kind={self.kind} "
                f"size={self.image_size} dim={self.embedding_size}>")
