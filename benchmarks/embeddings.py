"""compute_embeddings end to end vs the encoder's raw forward pass, on real images.

    .venv/bin/python benchmarks/embeddings.py [--encoder NAME] [--n 2000]

Raw forward: the encoder on images already decoded and resized in memory.
End to end: ``compute_embeddings`` on a FiftyOne view of the same files --
decode and resize in threads, forward, write the vectors to MongoDB. The
target is end to end >= 70% of raw forward. Uses the demo photos (repeated to
``--n`` samples) and an isolated MongoDB; without ``--encoder`` it trains a
one-epoch autoencoder and a one-epoch contrastive encoder at 32 px.
"""

import argparse
import os
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
    args = parser.parse_args()
    import conftest

    conftest._start_isolated_database()
    import fiftyone as fo

    from lookalike.database import quiet_mongodb_version_warning
    from lookalike.demo import write_demo_images
    from lookalike.embeddings import compute_embeddings
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


if __name__ == "__main__":
    main()
