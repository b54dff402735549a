"""compute_embeddings end to end vs the encoder's raw forward pass, on real images.

    .venv/bin/python benchmarks/embeddings.py [--encoder NAME] [--n 2000] [--camera 240]

Raw forward: the encoder on images already decoded and resized in memory.
End to end: ``compute_embeddings`` on a FiftyOne view of the same files --
decode and resize in threads, forward, write the vectors to MongoDB. The
target is end to end >= 70% of raw forward. Uses the demo photos (repeated to
``--n`` samples) and an isolated MongoDB; without ``--encoder`` it trains a
one-epoch autoencoder and a one-epoch contrastive encoder at 32 px.

Camera JPEGs (``--camera N``, 0 to skip): N 1600x1200 JPEGs made from the same
photos (a seeded crop of each, resized up, quality 90), through one-epoch
contrastive encoders at 32 and 64 px. Measured alone in the same run: decoding
(threads, as compute_embeddings decodes) with the full decode (the old path,
``preprocessing["decode"] = "full"``) and the JPEG draft decode (the new
default), and the forward pass; the pipeline bound 1 / (1/decode + 1/forward),
since decoding and the model share the cores; then compute_embeddings end to
end through each path. Targets: new end to end >= 80% of its bound at 32 and
64 px, and >= 2x the old path's end to end at 32 px.
"""

import argparse
import copy
import os
import random
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))
sys.path.insert(0, os.path.join(REPO, "tests"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--encoder", action="append", default=None)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--camera", type=int, default=240)
    parser.add_argument("--repeat", type=int, default=3, help="best of, for the camera case")
    args = parser.parse_args()
    import conftest

    from lookalike.encoders import default_store_dir

    users_store = default_store_dir()  # named encoders (make demo's), before the tests' set-up
    conftest._start_isolated_database()
    if args.encoder:
        os.environ["LOOKALIKE_MODELS_DIR"] = users_store
    import fiftyone as fo

    from lookalike.core.database import quiet_mongodb_version_warning
    from lookalike.demo.dataset import write_demo_images
    from lookalike.embeddings.compute import compute_embeddings
    from lookalike.encoders import load_encoder, train_encoder
    from lookalike.encoders.data import load_images

    quiet_mongodb_version_warning()
    tmp = tempfile.mkdtemp()
    records = write_demo_images(os.path.join(tmp, "demo"), max_digits=0)
    photos = [r["filepath"] for r in records]
    paths = (photos * (args.n // len(photos) + 1))[: args.n]
    ds = fo.Dataset("bench-embeddings")
    ds.add_samples([fo.Sample(filepath=p) for p in paths], progress=False)
    names = args.encoder
    if not names:
        store = os.path.join(tmp, "models")
        os.environ["LOOKALIKE_MODELS_DIR"] = store
        small = ds.limit(64)
        train_encoder(small, "autoencoder", "bench-ae", image_size=32, epochs=1, batch_size=16)
        train_encoder(small, "contrastive", "bench-con", image_size=32, epochs=1, batch_size=32)
        names = ["bench-ae", "bench-con"]
    print(f"{len(ds)} real images ({len(photos)} distinct photos), 2 cores", flush=True)
    print("\n| encoder | size | raw forward img/s | compute_embeddings img/s | ratio |")
    print("|---|---|---|---|---|")
    for name in names:
        encoder = load_encoder(name)
        images = load_images(paths, encoder.manifest).images
        encoder.embed(images[:64])  # warm-up
        t = time.perf_counter()
        for start in range(0, len(images), 64):
            encoder.embed(images[start:start + 64])
        raw = len(images) / (time.perf_counter() - t)
        field = "emb_" + name.replace("-", "_")
        t = time.perf_counter()
        compute_embeddings(ds, encoder, field, batch_size=64)
        e2e = len(ds) / (time.perf_counter() - t)
        print(f"| {name} ({encoder.kind}) | {encoder.image_size} | {raw:.0f} | {e2e:.0f} | "
              f"{e2e / raw:.2f} |", flush=True)
    ds.delete()
    if args.camera:
        camera_jpegs(photos, args.camera, os.path.join(tmp, "camera"), args.repeat)


def write_camera_jpegs(photos, n, directory, size=(1600, 1200), seed=51):
    """``n`` distinct camera-sized JPEGs: a seeded crop of each photo in turn, resized up."""
    from PIL import Image

    from lookalike.images.decode import load_image

    os.makedirs(directory, exist_ok=True)
    rng = random.Random(seed)
    sources = [load_image(p) for p in sorted(set(photos))]
    paths = []
    for i in range(n):
        img = sources[i % len(sources)]
        w, h = img.size
        left, top = int(w * rng.uniform(0, 0.1)), int(h * rng.uniform(0, 0.1))
        box = (left, top, left + int(w * 0.9), top + int(h * 0.9))
        path = os.path.join(directory, f"camera_{i:04d}.jpg")
        img.crop(box).resize(size, Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def _best_rate(n, repeat, run):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return n / best


def _full_decode(encoder):
    """The same encoder on the old path: every file decoded in full."""
    old = copy.copy(encoder)
    old.manifest = dict(encoder.manifest,
                        preprocessing=dict(encoder.manifest["preprocessing"], decode="full"))
    return old


def camera_jpegs(photos, n, directory, repeat):
    import fiftyone as fo

    from lookalike.embeddings.compute import compute_embeddings
    from lookalike.encoders import load_encoder, train_encoder
    from lookalike.encoders.data import load_images

    paths = write_camera_jpegs(photos, n, directory)
    ds = fo.Dataset("bench-embeddings-camera")
    ds.add_samples([fo.Sample(filepath=p) for p in paths], progress=False)
    print(f"\n{n} camera JPEGs (1600x1200, quality 90), best of {repeat}; img/s\n")
    print("| size | decode full | decode draft | forward | bound full | bound draft | "
          "e2e full | e2e draft | draft/bound | draft/full |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in (32, 64):
        name = f"bench-cam-{size}"
        train_encoder(ds.limit(64), "contrastive", name, image_size=size, epochs=1,
                      batch_size=32)
        new = load_encoder(name)
        old = _full_decode(new)
        decode = {}
        for label, enc in (("full", old), ("draft", new)):
            decode[label] = _best_rate(n, repeat, lambda e=enc: load_images(paths, e.manifest))
        images = load_images(paths, new.manifest).images
        new.embed(images[:64])  # warm-up

        def forward():
            for start in range(0, len(images), 64):
                new.embed(images[start:start + 64])

        fwd = _best_rate(n, repeat, forward)
        bound = {k: 1 / (1 / d + 1 / fwd) for k, d in decode.items()}
        e2e = {}
        for label, enc in (("full", old), ("draft", new)):
            field = f"emb_{size}_{label}"
            e2e[label] = _best_rate(n, repeat, lambda e=enc, f=field: compute_embeddings(
                ds, e, f, batch_size=64, overwrite=True))
        print(f"| {size} | {decode['full']:.0f} | {decode['draft']:.0f} | {fwd:.0f} | "
              f"{bound['full']:.0f} | {bound['draft']:.0f} | {e2e['full']:.0f} | "
              f"{e2e['draft']:.0f} | {e2e['draft'] / bound['draft']:.2f} | "
              f"{e2e['draft'] / e2e['full']:.2f} |", flush=True)
    ds.delete()


if __name__ == "__main__":
    main()
