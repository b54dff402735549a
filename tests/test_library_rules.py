"""Rules that a library now computes equal what lookalike computed by hand before (the
hand-written versions are kept here as the reference)."""

import numpy as np
import pytest
from PIL import Image


def _otsu_by_hand(values, bins=256):
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.max() - v.min() < 1e-9:
        return float(v.max())
    counts, edges = np.histogram(v, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)
    w1 = w0[-1] - w0
    m0 = np.cumsum(counts * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def _laplacian_variance_by_hand(a):
    lap = (a[:-2, 1:-1] + a[2:, 1:-1] + a[1:-1, :-2] + a[1:-1, 2:] - 4 * a[1:-1, 1:-1])
    return float(lap.var())


@pytest.mark.parametrize("seed", range(6))
def test_otsu_from_scikit_image_equals_the_hand_written_one(seed):
    from lookalike.curation.calibrate import otsu_threshold

    rng = np.random.default_rng(seed)
    near = rng.gamma(2.0, 0.01, rng.integers(20, 400))  # copies, near 0
    far = rng.normal(0.4 + 0.1 * seed, 0.08, rng.integers(50, 2000))
    values = np.concatenate([near, far, [np.inf, np.nan]])
    assert otsu_threshold(values) == pytest.approx(_otsu_by_hand(values), abs=1e-12)
    assert otsu_threshold([0.3, 0.3, 0.3]) == 0.3


def test_sharpness_from_opencv_equals_the_hand_written_one(tmp_path):
    import skimage.data

    from lookalike.curation.keep import sharpness

    for name, pixels in (("camera", skimage.data.camera()), ("coffee", skimage.data.coffee())):
        path = str(tmp_path / f"{name}.png")
        Image.fromarray(pixels).save(path)
        img = Image.open(path).convert("L").resize((256, 256), Image.Resampling.BILINEAR)
        expected = _laplacian_variance_by_hand(np.asarray(img, dtype=np.float32))
        assert sharpness(path) == pytest.approx(expected, rel=1e-5)
