"""Similarity index speed and recall: ours (exact, approximate) vs numpy vs fiftyone-brain's sklearn.

Run on demand (not part of the tests); it uses its own isolated MongoDB:

    .venv/bin/python benchmarks/index.py                  # N = 10k, 100k; d = 128, 256
    .venv/bin/python benchmarks/index.py --sizes 1000000 --no-dataset   # engines only at 1M
    .venv/bin/python benchmarks/index.py --read 1000000 --dims 256      # reading the field only

On clustered synthetic L2-normalised vectors, per (N, d):

* build time; single-query latency (median of 200 queries, k = 25); batched
  queries/s (1,000 queries); recall@25 against exact; memory of the index;
* the machine's single-thread memory read bandwidth and the bound N*d*4 bytes /
  bandwidth for one exact query;
* the engines beside the previous approximate build (4 * sqrt(N) lists,
  k-means on 256 points per list: 177 s at 1M) and the compressed engine
  (8-bit codes in memory, re-ranked from the vectors mapped from disk);
* ``--read N``: loading an N x d embeddings field from MongoDB into the index's
  matrix, FiftyOne's ``values()`` + stacking (the previous path) against the
  streamed read, and the streamed read into a file mapped to memory (as the
  compressed engine's build does), each in a fresh process: seconds and peak
  memory above the process's size before the read (resident, and of it the
  anonymous memory that only swap could free: a file map's pages can be written
  back and dropped), beside the matrix's own size;
* with a FiftyOne dataset (unless --no-dataset): ``dataset.sort_by_similarity``
  end to end on our run and on a sklearn-backend run over the same field, the
  raw k-NN query of each backend, and the time a fresh process needs to load
  each run and answer one query.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))
sys.path.insert(0, os.path.join(REPO, "tests"))


def clustered(n, d, seed=0, centers=None):
    rng = np.random.default_rng(seed)
    centers = centers or max(10, int(np.sqrt(n)))
    c = rng.normal(size=(centers, d)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.35 * rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def median_ms(fn, queries):
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def read_bandwidth_gbs():
    from threadpoolctl import threadpool_limits

    a = np.ones(256 * 1024 * 1024 // 4, np.float32)  # 256 MB
    with threadpool_limits(1):
        a.sum()
        t = time.perf_counter()
        for _ in range(5):
            a.sum()
        dt = (time.perf_counter() - t) / 5
    return a.nbytes / dt / 1e9


def engines(n, d, rows, skip_previous=False):
    from threadpoolctl import threadpool_limits

    from lookalike.similarity.engine import CompressedEngine, ExactEngine, IVFEngine

    x = clustered(n + 1200, d, seed=n + d)
    data, queries = x[:n], x[n:]
    single = queries[:200]
    batch = queries[200:1200]

    def numpy_knn(q):
        with threadpool_limits(1):
            dist = 1 - data @ q
        idx = np.argpartition(dist, 25)[:25]
        return idx[np.argsort(dist[idx])]

    exact = ExactEngine(data)
    truth, _ = exact.knn(single, 25)
    numpy_ms = median_ms(numpy_knn, single)
    exact_ms = median_ms(lambda q: exact.knn(q[np.newaxis], 25), single)
    t = time.perf_counter()
    exact.knn(batch, 25)
    exact_qps = len(batch) / (time.perf_counter() - t)
    rows.append(dict(N=n, d=d, impl="numpy brute force (1 thread)", build_s=0.0,
                     query_ms=numpy_ms, batch_qps=None, recall=1.0, mem_mb=data.nbytes / 1e6))
    rows.append(dict(N=n, d=d, impl="lookalike exact", build_s=0.0, query_ms=exact_ms,
                     batch_qps=exact_qps, recall=1.0, mem_mb=data.nbytes / 1e6))
    rows.append(_timed_engine(IVFEngine, data, single, batch, truth, n, d,
                              "lookalike approximate (IVF nlist={nlist}, nprobe={nprobe})"))
    if not skip_previous:
        rows.append(_timed_engine(PreviousIVF, data, single, batch, truth, n, d,
                                  "previous approximate (IVF nlist={nlist}, nprobe={nprobe}; "
                                  "k-means on 256 points a list)", nlist=round(4 * np.sqrt(n))))
    path = os.path.join(tempfile.mkdtemp(prefix="lookalike-bench-"), "vectors.npy")
    np.save(path, data)
    mapped = np.load(path, mmap_mode="r")
    row = _timed_engine(CompressedEngine, mapped, single, batch, truth, n, d,
                        "lookalike compressed (IVF-SQ8 nlist={nlist}, nprobe={nprobe}, "
                        "re-ranked from disk)")
    row["disk_mb"] = data.nbytes / 1e6
    rows.append(row)
    os.remove(path)
    return data


class PreviousIVF:
    """The approximate engine as it was built before: every list trained on 256 points."""

    def __new__(cls, matrix, **params):
        from lookalike.similarity.engine import IVFEngine

        class Previous(IVFEngine):
            TRAIN_PER_LIST = 256
            TRAIN_ITERATIONS = 25  # faiss's default, which it used

        return Previous(matrix, recall_target=0.98, **params)


def _timed_engine(cls, data, single, batch, truth, n, d, label, **params):
    import faiss

    t = time.perf_counter()
    engine = cls(data, **params)
    build = time.perf_counter() - t
    ms = median_ms(lambda q: engine.knn(q[np.newaxis], 25), single)
    found, _ = engine.knn(single, 25)
    recall = float(np.mean([len(set(a) & set(b)) / 25 for a, b in zip(found, truth)]))
    t = time.perf_counter()
    engine.knn(batch, 25)
    qps = len(batch) / (time.perf_counter() - t)
    in_memory = faiss.serialize_index(engine.index).nbytes
    if not isinstance(data, np.memmap):
        in_memory += data.nbytes
    return dict(N=n, d=d, impl=label.format(nlist=engine.index.nlist, nprobe=engine.nprobe),
                build_s=build, query_ms=ms, batch_qps=qps, recall=recall, mem_mb=in_memory / 1e6)


FRESH = """
import json, sys, time
t0 = time.perf_counter()
import fiftyone as fo
ds = fo.load_dataset(sys.argv[1])
t1 = time.perf_counter()
index = ds.load_brain_results(sys.argv[2])
sid = ds.first().id
index._kneighbors(sid, k=25)
t2 = time.perf_counter()
print(json.dumps({"load_and_first_query_s": t2 - t1}))
"""


def with_dataset(n, dims, data_by_d, rows, env):
    import fiftyone as fo
    import fiftyone.brain as fob

    import lookalike.similarity as ls

    name = f"bench-index-{n}"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name, persistent=True)
    t = time.perf_counter()
    ds.add_samples([fo.Sample(filepath=f"/bench/{i}.jpg") for i in range(n)], progress=False)
    for d in dims:
        ds.set_values(f"emb{d}", list(data_by_d[d]))
    print(f"  dataset of {n} samples with vectors written in {time.perf_counter() - t:.0f} s",
          flush=True)
    ids = ds.values("id")
    rng = np.random.default_rng(1)
    query_ids = [ids[i] for i in rng.choice(n, 20, replace=False)]
    for d in dims:
        field = f"emb{d}"
        t = time.perf_counter()
        ours = ls.build_index(ds, field, f"ours{d}", engine="exact")
        ours_build = time.perf_counter() - t
        t = time.perf_counter()
        sk = fob.compute_similarity(ds, embeddings=field, brain_key=f"sk{d}", backend="sklearn",
                                    metric="cosine", progress=False)
        sk_build = time.perf_counter() - t
        vecs = data_by_d[d][:50]
        ours_knn = median_ms(lambda q: ours._kneighbors(q, k=25), vecs)
        sk_knn = median_ms(lambda q: sk._kneighbors(q, k=25), vecs)
        for key in (f"ours{d}", f"sk{d}"):
            ds.sort_by_similarity(query_ids[0], brain_key=key, k=25).values("id")  # warm
        ours_sort = median_ms(lambda i: ds.sort_by_similarity(i, brain_key=f"ours{d}", k=25)
                              .values("id"), query_ids)
        sk_sort = median_ms(lambda i: ds.sort_by_similarity(i, brain_key=f"sk{d}", k=25)
                            .values("id"), query_ids)
        fresh = {}
        for key in (f"ours{d}", f"sk{d}"):
            out = subprocess.run([sys.executable, "-c", FRESH, name, key], capture_output=True,
                                 text=True, env=env, timeout=600)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            fresh[key] = json.loads(line[-1])["load_and_first_query_s"] if line else float("nan")
        rows.append(dict(N=n, d=d, impl="fiftyone-brain sklearn backend", build_s=sk_build,
                         knn_ms=sk_knn, sort_ms=sk_sort, fresh_s=fresh[f"sk{d}"]))
        rows.append(dict(N=n, d=d, impl="lookalike exact backend", build_s=ours_build,
                         knn_ms=ours_knn, sort_ms=ours_sort, fresh_s=fresh[f"ours{d}"]))
        print(f"  d={d}: sort_by_similarity ours {ours_sort:.1f} ms vs sklearn {sk_sort:.1f} ms; "
              f"k-NN {ours_knn:.2f} vs {sk_knn:.2f} ms; fresh load {fresh[f'ours{d}']:.2f} vs "
              f"{fresh[f'sk{d}']:.2f} s", flush=True)
    ds.delete()


READ = """
import json, resource, sys, tempfile, threading, time
import numpy as np
import psutil
import fiftyone as fo
from lookalike.similarity.engine import as_unit_matrix
from lookalike.similarity.field_vectors import read_unit_vectors

def anonymous_bytes():  # memory that only swap could free (a file map's pages are not counted)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("RssAnon:"))

peak_anon = [anonymous_bytes()]
def watch():
    while True:
        peak_anon[0] = max(peak_anon[0], anonymous_bytes())
        time.sleep(0.02)

ds = fo.load_dataset(sys.argv[1])
before, before_anon = psutil.Process().memory_info().rss, anonymous_bytes()
threading.Thread(target=watch, daemon=True).start()
t = time.perf_counter()
if sys.argv[3] == "values":  # the previous path
    ids, vectors = ds.values(["id", sys.argv[2]])
    matrix = as_unit_matrix([v for v in vectors if v is not None])
elif sys.argv[3] == "staged":  # as the compressed engine's build: into a file mapped to memory
    staged = tempfile.NamedTemporaryFile(suffix=".npy", dir=sys.argv[4])
    matrix, ids = read_unit_vectors(ds, sys.argv[2], allocate=lambda r, d: np.lib.format.open_memmap(
        staged.name, mode="w+", dtype=np.float32, shape=(r, d)))
    matrix.flush()
else:
    matrix, ids = read_unit_vectors(ds, sys.argv[2])
seconds = time.perf_counter() - t
peak_anon[0] = max(peak_anon[0], anonymous_bytes())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(dict(s=seconds, peak_mb=(peak - before) / 1e6, matrix_mb=matrix.nbytes / 1e6,
                      anon_mb=(peak_anon[0] - before_anon) / 1e6, rows=len(matrix))))
"""


def read_field(n, d, env):
    """Seconds and peak memory of reading an n x d field: values() vs streamed, fresh processes."""
    import fiftyone as fo
    import fiftyone.core.utils as fou
    from bson import Binary, ObjectId

    from lookalike.core import fo_adapter

    name = f"bench-read-{n}-{d}"
    if not fo.dataset_exists(name):
        ds = fo.Dataset(name, persistent=True)
        ds.add_sample(fo.Sample(filepath="/bench/0.jpg", emb=np.ones(d, np.float32)))
        coll = fo_adapter.sample_collection(ds)
        template = coll.find_one()
        template.pop("_id")
        t = time.perf_counter()
        for start in range(1, n, 20_000):
            x = clustered(min(20_000, n - start), d, seed=start, centers=100)
            coll.insert_many([dict(template, _id=ObjectId(), filepath=f"/bench/{start + k}.jpg",
                                   emb=Binary(fou.serialize_numpy_array(v)))
                              for k, v in enumerate(x)], ordered=False)
        print(f"  wrote {n:,} x {d} vectors into MongoDB in {time.perf_counter() - t:.0f} s",
              flush=True)
    out = {}
    scratch = tempfile.mkdtemp(prefix="bench-read-")
    for how in ("values", "streamed", "staged"):
        proc = subprocess.run([sys.executable, "-c", READ, name, "emb", how, scratch],
                              capture_output=True, text=True, env=env, timeout=3600)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        out[how] = json.loads(line[-1]) if line else {"error": proc.stderr[-500:]}
        print(f"  {how}: {out[how]}", flush=True)
    print(f"\n| reading {n:,} x {d} from MongoDB | seconds | peak memory above the process MB | "
          "of which anonymous MB | matrix MB | peak / matrix |")
    print("|---|---|---|---|---|---|")
    labels = {"values": "FiftyOne values() + stack (previous)", "streamed": "lookalike streamed read",
              "staged": "streamed into a file mapped to memory (compressed build)"}
    for how, r in out.items():
        if "s" in r:
            print(f"| {labels[how]} | {r['s']:.1f} | {r['peak_mb']:,.0f} | {r['anon_mb']:,.0f} | "
                  f"{r['matrix_mb']:,.0f} | {r['peak_mb'] / r['matrix_mb']:.2f} |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--no-dataset", action="store_true")
    parser.add_argument("--read", type=int, default=None, metavar="N",
                        help="only time reading an N-vector field from MongoDB")
    parser.add_argument("--skip-previous", action="store_true",
                        help="leave out the previous approximate build (177 s at 1M)")
    args = parser.parse_args()

    env = None
    if not args.no_dataset:
        import conftest  # the tests' isolated mongod, same set-up

        conftest._start_isolated_database()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(REPO, "src")]))
        from lookalike.core.database import quiet_mongodb_version_warning

        quiet_mongodb_version_warning()
    if args.read:
        for d in args.dims:
            read_field(args.read, d, env)
        return
    bw = read_bandwidth_gbs()
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}, "
          f"single-thread read bandwidth {bw:.1f} GB/s", flush=True)
    engine_rows, dataset_rows = [], []
    for n in args.sizes:
        data_by_d = {}
        for d in args.dims:
            print(f"N={n} d={d}: engines ...", flush=True)
            data_by_d[d] = engines(n, d, engine_rows, args.skip_previous)
        if not args.no_dataset:
            print(f"N={n}: FiftyOne runs ...", flush=True)
            with_dataset(n, args.dims, data_by_d, dataset_rows, env)

    print("\n| N | d | engine | build s | 1 query ms (k=25) | batch queries/s | recall@25 | memory MB | on disk MB | bandwidth bound ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in engine_rows:
        bound = r["N"] * r["d"] * 4 / (bw * 1e9) * 1000
        qps = f"{r['batch_qps']:.0f}" if r["batch_qps"] else "-"
        disk = f"{r['disk_mb']:,.0f}" if r.get("disk_mb") else "-"
        print(f"| {r['N']:,} | {r['d']} | {r['impl']} | {r['build_s']:.1f} | {r['query_ms']:.2f} | "
              f"{qps} | {r['recall']:.3f} | {r['mem_mb']:,.0f} | {disk} | {bound:.2f} |")
    if dataset_rows:
        print("\n| N | d | backend | build s | raw k-NN ms | sort_by_similarity ms | fresh process load + query s |")
        print("|---|---|---|---|---|---|---|")
        for r in dataset_rows:
            print(f"| {r['N']:,} | {r['d']} | {r['impl']} | {r['build_s']:.1f} | {r['knn_ms']:.2f} | "
                  f"{r['sort_ms']:.1f} | {r['fresh_s']:.2f} |")


if __name__ == "__main__":
    main()
