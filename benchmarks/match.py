"""``match_images`` on a folder vs ``compute_embeddings`` on the same images.

    .venv/bin/python benchmarks/match.py [--encoder NAME] [--n 1000]

A library (the demo photos) is embedded, indexed and calibrated; then a folder
of ``--n`` image files (the demo photos copied, repeated) is matched against it
(decode in threads, embed, nearest neighbour, decision, the CSV table), and the
same files are embedded by ``compute_embeddings`` as samples of a second
dataset. Uses an isolated MongoDB; without ``--encoder`` it trains a one-epoch
contrastive encoder at 32 px.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))
sys.path.insert(0, os.path.join(REPO, "tests"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--encoder", default=None)
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    import conftest

    conftest._start_isolated_database()
    import fiftyone as fo

    import lookalike.curation as lc
    import lookalike.similarity as ls
    from lookalike.core.database import quiet_mongodb_version_warning
    from lookalike.demo.dataset import write_demo_images
    from lookalike.embeddings.compute import compute_embeddings
    from lookalike.encoders import load_encoder, train_encoder

    quiet_mongodb_version_warning()
    tmp = tempfile.mkdtemp()
    records = write_demo_images(os.path.join(tmp, "demo"), max_digits=0)
    photos = [r["filepath"] for r in records]
    library = fo.Dataset("bench-match-library")
    library.add_samples([fo.Sample(filepath=p) for p in photos], progress=False)
    name = args.encoder
    if not name:
        os.environ["LOOKALIKE_MODELS_DIR"] = os.path.join(tmp, "models")
        train_encoder(library.limit(64), "contrastive", "bench-con", image_size=32, epochs=1,
                      batch_size=32)
        name = "bench-con"
    encoder = load_encoder(name)
    compute_embeddings(library, encoder, "emb")
    ls.build_index(library, "emb", "emb_sim")
    lc.calibrate_threshold(library, "emb_sim")

    folder = os.path.join(tmp, "folder")
    os.makedirs(folder)
    paths = []
    for i in range(args.n):
        src = photos[i % len(photos)]
        dst = os.path.join(folder, f"{i:05d}{os.path.splitext(src)[1]}")
        shutil.copyfile(src, dst)
        paths.append(dst)
    t = time.perf_counter()
    report = lc.match_images(library, "emb_sim", folder, out=os.path.join(tmp, "table.csv"))
    match_rate = args.n / (time.perf_counter() - t)
    other = fo.Dataset("bench-match-embed")
    other.add_samples([fo.Sample(filepath=p) for p in paths], progress=False)
    t = time.perf_counter()
    compute_embeddings(other, encoder, "emb")
    embed_rate = args.n / (time.perf_counter() - t)
    print(f"{args.n} image files ({len(photos)} distinct demo photos, 100-1,400 px), library of "
          f"{len(library)}, encoder {name} ({encoder.kind}, {encoder.image_size} px), 2 cores")
    print(f"decisions: {report.counts}")
    print("\n| step | images/s |\n|---|---|")
    print(f"| `match_images` (embed + match + table) | {match_rate:.0f} |")
    print(f"| `compute_embeddings` (embed + write) | {embed_rate:.0f} |")
    library.delete()
    other.delete()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
