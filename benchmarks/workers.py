"""One sharded embedding run by 1, then 2 `fiftyone delegated launch` workers, in the same run.

    .venv/bin/python benchmarks/workers.py [--n 2000] [--shards 4] [--size 64]

A dataset of ``--n`` camera-sized JPEGs (the demo photos, re-encoded at 1600 px
and repeated) is embedded into a fresh field by ``--shards`` delegated jobs
(``lookalike.embeddings.shards.queue_embeddings``), once with one worker and once with two
sharing the database; the same embedding in one process (no queue) is the
baseline. Printed: wall time from queueing to the last shard, images/s, and each
shard's own rate (images it embedded / its worker's busy time). On a machine of 2
cores two workers share the cores that one already uses (decoding threads and
the model), so the speed-up is bounded there: the figures say by how much.
Uses an isolated MongoDB; trains a one-epoch contrastive encoder.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))
sys.path.insert(0, os.path.join(REPO, "tests"))


def _camera_jpegs(paths, n, folder):
    from PIL import Image

    os.makedirs(folder)
    out = []
    for i in range(n):
        with Image.open(paths[i % len(paths)]) as img:
            big = img.convert("RGB").resize((1600, 1200))
        path = os.path.join(folder, f"{i:05d}.jpg")
        big.save(path, quality=90)
        out.append(path)
    return out


def _run(dataset, encoder, field, shards, workers, env, tmp):
    from bson import ObjectId
    from fiftyone.operators.delegated import DelegatedOperationService

    import processes
    from lookalike.embeddings.shards import queue_embeddings

    service = DelegatedOperationService()
    fiftyone_cli = os.path.join(os.path.dirname(sys.executable), "fiftyone")
    procs = [subprocess.Popen([fiftyone_cli, "delegated", "launch"], env=env,
                              stdout=open(os.path.join(tmp, f"{field}-{w}.log"), "w"),
                              stderr=subprocess.STDOUT) for w in range(workers)]
    try:
        time.sleep(20)  # the workers import FiftyOne before they poll: not part of the job
        start = time.perf_counter()
        ops = [ObjectId(o) for o in queue_embeddings(dataset, encoder, field, shards=shards)]
        while any(service.get(o).run_state in ("queued", "running") for o in ops):
            time.sleep(0.2)
        wall = time.perf_counter() - start
    finally:
        for p in procs:
            processes.stop(p)
    docs = [service.get(o) for o in ops]
    assert all(d.run_state == "completed" for d in docs), [d.status for d in docs]
    # Each shard: what it embedded and how long its worker was busy with it.
    return wall, [(d.result.result["embedded"], (d.completed_at - d.started_at).total_seconds())
                  for d in docs]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    import conftest

    conftest._start_isolated_database()
    import fiftyone as fo

    from lookalike.core.database import quiet_mongodb_version_warning
    from lookalike.demo.dataset import write_demo_images
    from lookalike.embeddings.compute import compute_embeddings
    from lookalike.encoders import load_encoder, train_encoder

    quiet_mongodb_version_warning()
    tmp = tempfile.mkdtemp()
    os.environ["LOOKALIKE_MODELS_DIR"] = os.path.join(tmp, "models")
    records = write_demo_images(os.path.join(tmp, "demo"), max_digits=0)
    files = _camera_jpegs([r["filepath"] for r in records], args.n, os.path.join(tmp, "jpegs"))
    ds = fo.Dataset("bench-workers", persistent=True)
    ds.add_samples([fo.Sample(filepath=p) for p in files], progress=False)
    train_encoder(ds.limit(64), "contrastive", "bench-con", image_size=args.size, epochs=1,
                  batch_size=32)
    encoder = load_encoder("bench-con")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(REPO, "src"),
                                                       os.environ.get("PYTHONPATH", "")]))

    start = time.perf_counter()
    compute_embeddings(ds, encoder, "emb_here")
    here = time.perf_counter() - start
    print(f"{args.n} camera JPEGs (1600x1200), contrastive encoder at {args.size} px, "
          f"{os.cpu_count()} cores, {args.shards} shards")
    print(f"  one process, no queue: {here:.1f} s, {args.n / here:.0f} images/s")
    for workers in (1, 2):
        wall, busy = _run(ds, encoder, f"emb_w{workers}", args.shards, workers, env, tmp)
        rates = ", ".join(f"{n / t:.0f}" for n, t in busy if t > 0)
        print(f"  {workers} worker(s): {wall:.1f} s from queueing to the last shard, "
              f"{args.n / wall:.0f} images/s (per shard run, images/s: {rates})")
    fo.delete_dataset("bench-workers")


if __name__ == "__main__":
    main()
