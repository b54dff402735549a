"""The seed's Paddle autoencoder trained through its tf-keras twin: the same model, faster on CPU."""

import numpy as np
import pytest

from lookalike.encoders import load_encoder, read_manifest
from lookalike.encoders import autoencoder as ae
from lookalike.encoders.data import load_images
from lookalike.encoders.preprocessing import input_manifest

SMALL = dict(image_size=32, width=0.25, batch_size=8)


@pytest.fixture(scope="module")
def images(demo_records):
    paths = [r["filepath"] for r in demo_records if r["source"] == "photo"][:16]
    return load_images(paths, input_manifest("autoencoder", 32)).images


def test_the_keras_twin_computes_what_the_paddle_model_computes(images):
    from lookalike.encoders import autoencoder_keras

    paddle = ae._paddle()
    paddle.seed(3)
    model = ae.build(0.25)
    model.eval()
    arrays = ae.model_arrays(model)
    twin, convs, deconvs = autoencoder_keras.build(ae.channels(0.25), 32)
    autoencoder_keras.set_from_paddle(convs, deconvs, arrays)
    x = ae.preprocess(images[:4])
    with paddle.no_grad():
        ref = model(paddle.to_tensor(x)).numpy()
    out = twin(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), training=False).numpy()
    # float32 sums in another order: agreement to ~1e-6 of outputs of size ~1.
    assert np.abs(out.transpose(0, 3, 1, 2) - ref).max() < 1e-4
    # And back: the keys and values round-trip exactly.
    back = autoencoder_keras.to_paddle(convs, deconvs, arrays)
    assert set(back) == set(arrays)
    assert all(np.array_equal(back[k], arrays[k]) for k in arrays)


def test_tensorflow_training_learns_what_paddle_training_learns(images, store_dir):
    """Same start, same batches, same loss and optimiser: the same weights after training."""
    tf_path = ae.train(images, "ae-tf", epochs=2, store_dir=store_dir, trainer="tensorflow",
                       **SMALL)
    pd_path = ae.train(images, "ae-pd", epochs=2, store_dir=store_dir, trainer="paddle", **SMALL)
    tf_m, pd_m = read_manifest(tf_path), read_manifest(pd_path)
    assert tf_m["trained_with"]["framework"] == "tensorflow"
    assert pd_m["trained_with"]["framework"] == "paddle"
    assert tf_m["framework"] == pd_m["framework"] == "paddle"  # the saved model is Paddle's
    # Losses per epoch agree (float32 in another order over 4 Adam steps).
    for a, b in zip(tf_m["history"], pd_m["history"]):
        assert abs(a["loss"] - b["loss"]) < 1e-3 * max(1.0, b["loss"])
    a, b = load_encoder(tf_path).embed(images), load_encoder(pd_path).embed(images)
    cos = np.sum(a * b, axis=1)
    assert cos.min() > 0.999, cos.min()
    # The saved Paddle Inference model embeds what the dynamic model embeds.
    enc = load_encoder(tf_path)
    assert np.abs(enc.embed(images) - enc.embed_dynamic(images)).max() < 1e-4


def test_auto_picks_tensorflow_on_a_cpu_and_bad_trainers_are_refused(images, store_dir):
    from lookalike.encoders import TrainingConfigError

    assert ae.resolve_trainer("auto") == "tensorflow"  # no GPU here (nor in CI)
    with pytest.raises(TrainingConfigError, match="trainer must be one of"):
        ae.train(images[:4], "x", store_dir=store_dir, trainer="torch", **SMALL)


def test_denoising_trains_on_edited_inputs_with_both_trainers(images, store_dir):
    """Input: an edited copy, target: the image; the same edits in both trainers."""
    edits = ae.edited_inputs(images[:6], 32, __import__("random").Random("51/0"))
    assert edits.shape == images[:6].shape and edits.dtype == np.uint8
    assert not np.array_equal(edits, images[:6])
    paths = {t: ae.train(images, f"ae-dn-{t}", epochs=2, store_dir=store_dir, trainer=t,
                         denoise=True, **SMALL) for t in ("tensorflow", "paddle")}
    manifests = {t: read_manifest(p) for t, p in paths.items()}
    for m in manifests.values():
        assert m["denoising"]["inputs"] == "edited copies" and "hflip" in m["denoising"]["edits"]
        assert m["loss"] == "l1"
    for a, b in zip(manifests["tensorflow"]["history"], manifests["paddle"]["history"]):
        assert abs(a["loss"] - b["loss"]) < 1e-3 * max(1.0, b["loss"])
    # Not the plain autoencoder: its inputs were not the images themselves.
    plain = read_manifest(ae.train(images, "ae-plain", epochs=2, store_dir=store_dir,
                                   trainer="tensorflow", **SMALL))
    assert "denoising" not in plain
    assert plain["history"][0]["loss"] != manifests["tensorflow"]["history"][0]["loss"]
