"""How many images and epochs ``dedupe``'s encoder needs: pair F1 against sample size and
epochs (issue #29), beside the stage-by-stage path (every image, 20 epochs) in one run.

    .venv/bin/python benchmarks/training_curve.py                    # 400 scenes (about 20 min)
    .venv/bin/python benchmarks/training_curve.py --scenes 200 --samples 50 200 --epochs 5 20

Images: ``benchmarks/end_to_end.py``'s mosaic scenes with planted copies (made here from
the photos in ``skimage/data``, nothing downloaded), at ``--side`` (default 1500 x 1000:
the figures are of the encoder, not of the decode). For every (sample size, epochs)
a contrastive encoder is trained with ``dedupe``'s settings on that many random images
(seed 51, as ``dedupe`` samples), then the product's path: ``curate`` (embed, index,
label-free calibration, duplicates with verification, outliers) and pair precision /
recall / F1 of its groups. Local features and pair results are cached across the
rows (as a rerun would), so only the first row pays for them.
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
sys.path.insert(0, os.path.join(REPO, "benchmarks"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=400)
    parser.add_argument("--side", default="1500x1000", help="scene size, WxH")
    parser.add_argument("--samples", type=int, nargs="+", default=[100, 250],
                        help="training sample sizes (every image is always a row too)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[5, 10, 20])
    args = parser.parse_args()
    side = tuple(int(v) for v in args.side.lower().split("x"))

    import conftest  # the tests' isolated mongod

    conftest._start_isolated_database()
    os.environ["LOOKALIKE_DATA_DIR"] = tempfile.mkdtemp(prefix="lookalike-bench-curve-data-")
    from lookalike.core.database import quiet_mongodb_version_warning

    quiet_mongodb_version_warning()
    import fiftyone as fo

    import end_to_end as e2e
    from lookalike.curation.dedupe import TRAINING
    from lookalike.curation.pipeline import curate
    from lookalike.encoders import load_encoder, train_encoder
    from lookalike.images.folder_import import import_images

    tmp = tempfile.mkdtemp(prefix="lookalike-bench-curve-")
    root = os.path.join(tmp, "photos")
    os.makedirs(root)
    try:
        truth = e2e.write_images(root, args.scenes, side=side)
        import_images(root, "bench-curve")
        ds = fo.load_dataset("bench-curve")
        n = len(ds)
        print(f"{n} images ({args.scenes} scenes at {side[0]}x{side[1]}, "
              f"{n - args.scenes} planted copies)", flush=True)
        rows = []
        sizes = sorted({s for s in args.samples if s < n} | {n})
        for size in sizes:
            for epochs in sorted(args.epochs):
                name = f"curve-{size}-{epochs}"
                view = ds.take(size, seed=51) if size < n else ds
                t = time.perf_counter()
                train_encoder(view, "contrastive", name, **dict(TRAINING, epochs=epochs))
                trained = time.perf_counter() - t
                t = time.perf_counter()
                report = curate(ds, load_encoder(name))
                curated = time.perf_counter() - t
                groups = {}
                for path, g in zip(*ds.values(["filepath", "dup_group"])):
                    if g is not None:
                        groups.setdefault(g, []).append(path)
                s = e2e.pair_scores(list(groups.values()), truth)
                rows.append((size, epochs, trained, curated, s,
                             report.calibration.duplicate_threshold))
                print(f"sample {size}, {epochs} epochs: train {trained:.0f} s, curate "
                      f"{curated:.0f} s, F1 {s['f1']:.3f} (precision {s['precision']:.3f}, "
                      f"recall {s['recall']:.3f})", flush=True)
        print(f"\n{n} images; wall clock on {os.cpu_count()} cores; the last rows (every "
              "image) are the stage-by-stage path's encoder\n")
        print("| sample | epochs | train s | curate s | duplicate threshold | precision "
              "| recall | F1 |")
        print("|---|---|---|---|---|---|---|---|")
        for size, epochs, trained, curated, s, threshold in rows:
            print(f"| {size} | {epochs} | {trained:.0f} | {curated:.0f} | {threshold:.4f} "
                  f"| {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(os.environ["LOOKALIKE_DATA_DIR"], ignore_errors=True)


if __name__ == "__main__":
    main()
