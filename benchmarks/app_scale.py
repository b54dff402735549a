"""The App's sort by similarity on our index at 1M samples (issue #29): the server's time
per query, and a fresh App server's or worker's first query.

    .venv/bin/python benchmarks/app_scale.py                 # 1,000,000 samples, d = 256
    .venv/bin/python benchmarks/app_scale.py --n 100000      # a quicker look

Its own isolated MongoDB; N clustered unit vectors written straight into a dataset's
field (as ``benchmarks/index.py --read`` does), then ``lookalike.build_index`` with its
``auto`` engine. What the App does when a sample is selected and "sort by similarity"
is clicked (the builtin similarity search operator, see docs/internals.md): the current
view's ``sort_by_similarity(<sample id>, brain_key, k=25)``, the result ids read, then the
grid's ``select(ids, ordered=True)``; timed here in one process as the App server runs
them, median of 20 queries after a first one, beside the k-NN alone. Then, in a fresh
Python that has imported FiftyOne (as a server has before its first request): loading
the dataset and the run and answering the first query, and the memory that took.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

FIRST = """
import cProfile, io, json, os, pstats, resource, sys, time
import fiftyone as fo
profile = cProfile.Profile() if os.environ.get("APP_SCALE_PROFILE") else None
def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS:"))
before = rss_mb()
t0 = time.perf_counter()
ds = fo.load_dataset(sys.argv[1])
sid = sys.argv[3]
t1 = time.perf_counter()
if profile:
    profile.enable()
index = ds.load_brain_results(sys.argv[2])
t2 = time.perf_counter()
ids = ds.view().sort_by_similarity(sid, brain_key=sys.argv[2], k=25).values("id")
ds.select(ids, ordered=True).values("id")
t3 = time.perf_counter()
if profile:
    profile.disable()
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(35)
    print(out.getvalue(), file=sys.stderr)
print(json.dumps(dict(dataset_s=t1 - t0, run_s=t2 - t1, query_s=t3 - t2, total_s=t3 - t0,
                      rss_mb=rss_mb() - before, engine=type(index.engine).__name__)))
"""


def median_ms(fn, items):
    times = []
    for item in items:
        t = time.perf_counter()
        fn(item)
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, default=256)
    args = parser.parse_args()

    import conftest  # the tests' isolated mongod

    conftest._start_isolated_database()
    import tempfile

    os.environ["LOOKALIKE_DATA_DIR"] = tempfile.mkdtemp(prefix="lookalike-bench-app-data-")
    from lookalike.core.database import quiet_mongodb_version_warning

    quiet_mongodb_version_warning()
    import fiftyone as fo
    import fiftyone.core.utils as fou
    from bson import Binary, ObjectId

    import index as bench_index
    import lookalike as lk
    from lookalike.core import fo_adapter

    name, key = f"bench-app-{args.n}", "emb_sim"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name, persistent=True)
    ds.add_sample(fo.Sample(filepath="/bench/0.jpg", emb=np.ones(args.dims, np.float32)))
    coll = fo_adapter.sample_collection(ds)
    template = coll.find_one()
    template.pop("_id")
    t = time.perf_counter()
    for start in range(1, args.n, 20_000):
        x = bench_index.clustered(min(20_000, args.n - start), args.dims, seed=start,
                                  centers=100)
        coll.insert_many([dict(template, _id=ObjectId(), filepath=f"/bench/{start + k}.jpg",
                               emb=Binary(fou.serialize_numpy_array(v)))
                          for k, v in enumerate(x)], ordered=False)
    print(f"{args.n:,} samples x {args.dims} written in {time.perf_counter() - t:.0f} s",
          flush=True)
    ds.reload()
    t = time.perf_counter()
    index = lk.build_index(ds, "emb", key)
    print(f"index built in {time.perf_counter() - t:.0f} s ({type(index.engine).__name__})",
          flush=True)
    ids = ds.take(21, seed=5).values("id")

    def app_sort(sid):
        found = ds.view().sort_by_similarity(sid, brain_key=key, k=25).values("id")
        return ds.select(found, ordered=True).values("id")

    run = ds.load_brain_results(key)
    app_sort(ids[0])  # the first query after the run is loaded
    knn = median_ms(lambda sid: run._kneighbors(sid, k=25), ids[1:])
    sort = median_ms(app_sort, ids[1:])
    print(f"k-NN alone {knn:.2f} ms; the App's sort by similarity {sort:.1f} ms (median of 20)",
          flush=True)
    firsts = []
    for n in range(3):
        out = subprocess.run([sys.executable, "-c", FIRST, name, key, ids[n]],
                             capture_output=True, text=True, timeout=1800, env=os.environ)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if not line:
            print(out.stderr[-2000:])
            break
        if os.environ.get("APP_SCALE_PROFILE"):
            print(out.stderr[-12000:])
        firsts.append(json.loads(line[-1]))
        print(f"fresh process {n + 1}: {firsts[-1]}", flush=True)
    print("\n| samples | d | engine | k-NN ms | App sort (server) ms | fresh process: dataset "
          "s | run s | first query s | total s | memory MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    if firsts:
        f = sorted(firsts, key=lambda r: r["total_s"])[len(firsts) // 2]
        print(f"| {args.n:,} | {args.dims} | {f['engine']} | {knn:.2f} | {sort:.1f} | "
              f"{f['dataset_s']:.2f} | {f['run_s']:.2f} | {f['query_s']:.2f} | "
              f"{f['total_s']:.2f} | {f['rss_mb']:.0f} |")
    fo.delete_dataset(name)


if __name__ == "__main__":
    main()
