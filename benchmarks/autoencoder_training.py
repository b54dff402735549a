"""Training the seed's autoencoder: Paddle's dynamic graph vs its tf-keras twin, end to end.

Run on demand (not part of the tests):

    .venv/bin/python benchmarks/autoencoder_training.py               # 32, 64 and 128 px
    .venv/bin/python benchmarks/autoencoder_training.py --sizes 64 --images 128

Both rows run lookalike's real ``autoencoder.train`` (checkpoint every epoch,
the published Paddle model at the end) on the same images with the seed's
width (1.0) and batch 32, alternating trainers so that machine load hits both
alike. The figure is images/s of the last epoch (the first includes graph
tracing). "before" = ``trainer="paddle"`` (what lookalike used on CPU),
"after" = ``trainer="tensorflow"`` (what ``auto`` picks on a CPU now). The
cosine between the two encoders' embeddings shows they learned the same thing.
"""

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--images", type=int, default=None,
                        help="images per size (default 256 / 96 / 32 for 32 / 64 / 128 px)")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    from lookalike.encoders import autoencoder as ae
    from lookalike.encoders import load_encoder, read_manifest

    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as store:
        for size in args.sizes:
            n = args.images or {32: 256, 64: 96}.get(size, 32)
            images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
            rates, paths = {}, {}
            for trainer in ("paddle", "tensorflow"):
                path = ae.train(images, f"bench-{trainer}-{size}", image_size=size,
                                epochs=args.epochs, batch_size=32, trainer=trainer,
                                store_dir=store)
                rates[trainer] = read_manifest(path)["history"][-1]["images_per_s"]
                paths[trainer] = path
                print(f"{size} px {trainer}: {rates[trainer]:.1f} images/s", flush=True)
            a = load_encoder(paths["paddle"]).embed(images[:16])
            b = load_encoder(paths["tensorflow"]).embed(images[:16])
            rows.append((size, n, rates["paddle"], rates["tensorflow"],
                         float(np.sum(a * b, axis=1).min())))
    print(f"\nload average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print("| size | images | Paddle dynamic (before) | tf-keras twin (after) | speed-up | "
          "min cosine of the two encoders |")
    print("|---|---|---|---|---|---|")
    for size, n, before, after, cos in rows:
        print(f"| {size} | {n} | {before:.1f} | **{after:.1f}** | **{after / before:.1f}x** | "
              f"{cos:.5f} |")


if __name__ == "__main__":
    main()
