"""Similarity indexes that honour views, swap in atomically, refuse a second builder
and fail in one line: against the real database, with real killed processes."""

import ast
import json
import os
import subprocess
import sys

import fiftyone as fo
import fiftyone.brain as fob
import numpy as np
import pytest

import processes
from cli_runner import run_cli
from fiftyone import ViewField as F

import lookalike.similarity as ls
from lookalike.core.errors import (
    EmptyViewError,
    IncompleteIndexError,
    IndexSettingsError,
    LeaseHeldError,
    LookalikeError,
    SimilarityIndexError,
    UsageError,
)
from lookalike.core import fo_adapter
from lookalike.similarity import artefacts
from lookalike.similarity.backend import LookalikeSimilarityConfig

N, D = 40, 16


def _unit(n, seed):
    x = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def ds(dataset_name, demo_records):
    """Real image files; 'emb' holds random unit vectors (no training needed)."""
    paths = [r["filepath"] for r in demo_records][:N]
    dataset = fo.Dataset(dataset_name, persistent=True)
    dataset.add_samples([fo.Sample(filepath=p) for p in paths])
    dataset.set_values("emb", list(_unit(N, 0)))
    return dataset


def _expected(dataset, query_id, k, ids=None):
    """The k nearest ids to ``query_id`` by numpy over the field (among ``ids``)."""
    all_ids, vectors = dataset.values(["id", "emb"])
    rows = {i: v for i, v in zip(all_ids, vectors) if v is not None}
    ids = [i for i in all_ids if i in rows] if ids is None else list(ids)
    m = np.stack([rows[i] for i in ids])
    m = m / np.linalg.norm(m, axis=1, keepdims=True)
    q = np.asarray(rows[query_id]) / np.linalg.norm(rows[query_id])
    return [ids[j] for j in np.argsort(1 - m @ q, kind="stable")[:k]]


def _one_line(err):
    text = str(err)
    assert "\n" not in text and "Traceback" not in text, text
    return text


def _child(code, env, fault=None, marker=None):
    env = dict(env)
    if fault:
        env["LOOKALIKE_FAULT"] = fault
    if marker:
        env["LOOKALIKE_FAULT_FILE"] = str(marker)
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _build_code(name, key="k", view=""):
    return ("import fiftyone as fo, lookalike.similarity as ls\n"
            f"ds = fo.load_dataset({name!r})\n"
            f"ls.build_index(ds{view}, 'emb', {key!r})\n"
            "print('BUILT')\n")


def _build_dirs(dataset):
    root = artefacts.dataset_directory(dataset)
    return sorted(n for n in os.listdir(root) if n.startswith(artefacts.BUILD_PREFIX)) \
        if os.path.isdir(root) else []


def _assert_one_complete_index(dataset, key="k"):
    fresh = fo.load_dataset(dataset.name)
    fresh.reload()
    assert fresh.list_brain_runs() == [key]
    build_id = fresh.get_brain_info(key).config.build_id
    # Runs a rebuild replaced stay a while for readers in other processes, then go.
    kept = {c.get("build_id") for _, _, c in fo_adapter.detached_brain_runs(fresh)}
    assert set(_build_dirs(fresh)) - kept == {build_id}
    ls.delete_superseded(fresh, grace_s=0)
    assert _build_dirs(fresh) == [build_id] and not fo_adapter.detached_brain_runs(fresh)
    assert ls.load_index(fresh, key).total_index_size == len(fresh.exists("emb"))


# -- the view it is given -------------------------------------------------------------
def test_index_holds_exactly_its_view(ds, subprocess_env):
    view = ds.limit(10)
    view_ids = view.values("id")
    index = ls.build_index(view, "emb", "k")
    assert index.total_index_size == 10 and sorted(index.sample_ids) == sorted(view_ids)
    assert sorted(ds.load_brain_view("k").values("id")) == sorted(view_ids)
    # Queries on the whole dataset with this key return only the view's samples.
    ids, _ = ls.nearest(ds, "k", query_ids=[view_ids[3]], k=25)
    assert len(ids) == 10 and set(ids) == set(view_ids)
    assert ids[:5] == _expected(ds, view_ids[3], 5, view_ids)
    app_view = ds.sort_by_similarity(view_ids[3], brain_key="k", k=25)
    assert set(app_view.values("id")) == set(view_ids)
    assert ls.sort_by_similarity(ds, "k", [view_ids[0]], k=25).values("id")[0] == view_ids[0]
    outside = ds.skip(10).first().id
    with pytest.raises(SimilarityIndexError, match="outside the view") as e:
        ls.nearest(ds, "k", query_ids=[outside])
    _one_line(e.value)

    # A new process loads the view's artefacts: a change outside the view is not
    # staleness, one inside it is (the index is rebuilt from the view, not the dataset).
    code = (
        "import sys, fiftyone as fo\n"
        "import lookalike.similarity.backend as b\n"
        "if sys.argv[1] == 'fresh':\n"
        "    def boom(*a, **k):\n"
        "        raise AssertionError('read every embedding from MongoDB')\n"
        "    b.read_field = boom\n"
        f"ds = fo.load_dataset({ds.name!r})\n"
        "print('SIZE', ds.load_brain_results('k').total_index_size)\n")

    def load(mode):
        return subprocess.run([sys.executable, "-c", code, mode], capture_output=True,
                              text=True, env=subprocess_env, timeout=300)

    outside_sample = ds[outside]
    outside_sample["emb"] = None
    outside_sample.save()
    out = load("fresh")
    assert out.returncode == 0 and "SIZE 10" in out.stdout, out.stderr[-2000:]
    inside = ds[view_ids[9]]
    inside["emb"] = None
    inside.save()
    assert "read every embedding" in load("fresh").stderr
    out = load("any")
    assert "SIZE 9" in out.stdout, out.stderr[-2000:]


def test_an_empty_view_is_one_line_and_writes_nothing(ds):
    with pytest.raises(EmptyViewError, match="has no samples: nothing to index") as e:
        ls.build_index(ds.match(F("filepath") == "nowhere"), "emb", "k")
    _one_line(e.value)
    ds.set_values("half", [None] * 20 + list(_unit(20, 1)))
    with pytest.raises(EmptyViewError, match="no sample of a view of .* has an embedding in 'half'"):
        ls.build_index(ds.limit(20), "half", "k")
    assert ds.list_brain_runs() == [] and _build_dirs(ds) == []
    assert ls.build_index(ds.skip(20), "half", "k").total_index_size == 20


# -- kills during a rebuild --------------------------------------------------------
SWAP_POINTS = ["index.registered", "index.initialize", "index.artefacts_written",
               "index.built", "index.swap.before", "index.swap.done"]
# Points after which the key names the new run: the new index answers instead.
NEW_ANSWERS = {"index.swap.done"}
# One old and one new state also checked from a fresh process (each costs a FiftyOne start).
FRESH_PROCESS_CHECK = {"index.artefacts_written", "index.swap.done"}


@pytest.mark.parametrize("point", SWAP_POINTS)
def test_a_kill_during_a_rebuild_leaves_an_index_answering(ds, subprocess_env, point):
    ls.build_index(ds, "emb", "k")
    old_build = ds.get_brain_info("k").config.build_id
    query = ds.values("id")[7]
    old_answer = _expected(ds, query, 5)
    ds.set_values("emb", list(_unit(N, 2)))  # the rebuild indexes other vectors
    new_answer = _expected(ds, query, 5)
    assert old_answer != new_answer

    child = _child(_build_code(ds.name), subprocess_env, fault=f"{point}:kill")
    child.communicate(timeout=300)
    assert child.returncode == -9, point

    ids, _ = ls.nearest(ds, "k", query_ids=[query], k=5)  # this process's view of the db
    expected = new_answer if point in NEW_ANSWERS else old_answer
    assert ids == expected, point
    if point not in NEW_ANSWERS:
        assert ds.get_brain_info("k").config.build_id == old_build
    if point in FRESH_PROCESS_CHECK:
        _assert_fresh_process_answers(ds, subprocess_env, query, expected)

    index = ls.build_index(ds, "emb", "k")  # the rerun clears what the kill left
    assert index.key == "k"
    assert ls.nearest(ds, "k", query_ids=[query], k=5)[0] == new_answer
    _assert_one_complete_index(ds)


def _assert_fresh_process_answers(ds, subprocess_env, query, expected):
    """A new process (as the App server is) gets the same answer through FiftyOne's sort."""
    out = subprocess.run(
        [sys.executable, "-c",
         "import fiftyone as fo, lookalike.similarity as ls\n"
         f"ds = fo.load_dataset({ds.name!r})\n"
         "ls.load_index(ds, 'k')\n"  # finishes a swap the kill interrupted
         f"print('IDS', ds.sort_by_similarity({query!r}, brain_key='k', k=5).values('id'))\n"],
        capture_output=True, text=True, env=subprocess_env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(ast.literal_eval(out.stdout.split("IDS", 1)[1].strip())) == sorted(expected)


def test_a_first_build_killed_reads_as_incomplete_in_one_line(ds, subprocess_env):
    child = _child(_build_code(ds.name), subprocess_env, fault="index.artefacts_written:kill")
    child.communicate(timeout=300)
    assert child.returncode == -9
    message = (f"index 'k' is incomplete: rebuild it with lookalike index --dataset {ds.name} "
               "--field emb --brain-key k")
    for call in (lambda: ls.load_index(ds, "k"),
                 lambda: ls.nearest(ds, "k", query_ids=[ds.first().id]),
                 lambda: ls.sort_by_similarity(ds, "k", [ds.first().id])):
        with pytest.raises(IncompleteIndexError) as e:
            call()
        assert _one_line(e.value) == message
    assert "k" not in ls.our_brain_keys(ds)
    ls.build_index(ds, "emb", "k")
    _assert_one_complete_index(ds)


@pytest.mark.parametrize("point", ["index.registered", "index.initialize"])
def test_a_killed_compute_similarity_run_reads_as_incomplete(ds, subprocess_env, point):
    """fiftyone-brain's own compute_similarity with our backend (the App's operator)."""
    code = ("import fiftyone as fo, fiftyone.brain as fob\n"
            "from lookalike.similarity.backend import LookalikeSimilarityConfig\n"
            f"ds = fo.load_dataset({ds.name!r})\n"
            "fob.compute_similarity(ds, embeddings='emb', brain_key='k',"
            " backend=LookalikeSimilarityConfig)\n")
    child = _child(code, subprocess_env, fault=f"{point}:kill")
    child.communicate(timeout=300)
    assert child.returncode == -9
    ds.reload()
    assert "k" in ds.list_brain_runs()
    message = (f"index 'k' is incomplete: rebuild it with lookalike index --dataset {ds.name} "
               "--field emb --brain-key k")
    with pytest.raises(IncompleteIndexError) as e:
        ls.nearest(ds, "k", query_ids=[ds.first().id])
    assert _one_line(e.value) == message
    if point == "index.initialize":
        # The stand-in results: FiftyOne's own load and sort say it too, not AttributeError.
        with pytest.raises(IncompleteIndexError, match="is incomplete: rebuild it"):
            ds.load_brain_results("k")
        with pytest.raises(IncompleteIndexError, match="is incomplete: rebuild it"):
            ds.sort_by_similarity(ds.first().id, brain_key="k", k=3)
    ls.build_index(ds, "emb", "k")
    _assert_one_complete_index(ds)


def test_compute_similarity_with_our_backend_still_works(ds):
    results = fob.compute_similarity(ds, embeddings="emb", brain_key="k",
                                     backend=LookalikeSimilarityConfig)
    assert results.total_index_size == N
    assert ls.nearest(ds, "k", query_ids=[ds.first().id], k=1)[0] == [ds.first().id]
    _assert_one_complete_index(ds)


def test_renamed_index_keeps_its_artefacts(ds, subprocess_env):
    ls.build_index(ds, "emb", "k")
    ds.rename_brain_run("k", "renamed")
    code = ("import fiftyone as fo\n"
            "import lookalike.similarity as ls, lookalike.similarity.backend as b\n"
            "def boom(*a, **k):\n"
            "    raise AssertionError('read every embedding from MongoDB')\n"
            "b.read_field = boom\n"
            f"ds = fo.load_dataset({ds.name!r})\n"
            "print('SIZE', ls.load_index(ds, 'renamed').total_index_size)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=subprocess_env, timeout=300)
    assert out.returncode == 0 and f"SIZE {N}" in out.stdout, out.stderr[-2000:]
    ds.delete_brain_run("renamed")
    assert _build_dirs(ds) == []


# -- two builders ----------------------------------------------------------------------
def test_a_second_build_of_one_key_gets_the_lease_line(ds, subprocess_env, tmp_path):
    marker = tmp_path / "reached"
    first = _child(_build_code(ds.name), subprocess_env,
                   fault="index.artefacts_written:pause", marker=marker)
    try:
        processes.reached(marker, first)
        with pytest.raises(LeaseHeldError) as e:
            ls.build_index(ds, "emb", "k")
        line = _one_line(e.value)
        assert line.startswith(f"index 'k' of '{ds.name}' is being written by job build_index "
                               f"(pid {first.pid} on ")
        # The command line says the same, in one line.
        out = _cli(["index", "--dataset", ds.name, "--field", "emb", "--brain-key", "k"],
                   subprocess_env)
        assert out.returncode == 2
        assert _error_line(out) == f"lookalike index: error: {line}"
        # Another key is not held.
        assert ls.build_index(ds, "emb", "other").total_index_size == N
    finally:
        first.kill()
        first.wait()
    # The killed holder's lease is taken over (its pid is gone), and the rerun cleans up.
    ls.build_index(ds, "emb", "k")
    ds.delete_brain_run("other")
    _assert_one_complete_index(ds)


# -- one-line errors -------------------------------------------------------------------
def _cli(args, env):
    code = "import sys; from lookalike.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=300)


def _error_line(out):
    """The one error line the CLI ends with (progress bars may come before it)."""
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    return [line for line in out.stderr.splitlines() if line.strip()][-1]


def test_bad_settings_are_one_line_lookalike_errors(ds):
    cases = [
        (dict(nprobe=-5), IndexSettingsError, "nprobe must be a whole number of at least 1, got -5"),
        (dict(nprobe=0), IndexSettingsError, "nprobe must be"),
        (dict(nprobe=2.5), IndexSettingsError, "nprobe must be"),
        (dict(recall_target=0), IndexSettingsError, r"recall target must be in \(0, 1\], got 0"),
        (dict(recall_target=1.5), IndexSettingsError, "recall target must be"),
        (dict(engine="fast"), IndexSettingsError, "unknown engine 'fast'"),
        (dict(embeddings_field="nofield"), UsageError, "has no field 'nofield'"),
        (dict(brain_key="not a key"), UsageError, "brain key 'not a key' is not usable"),
    ]
    for kwargs, cls, pattern in cases:
        kwargs = dict(dict(samples=ds, embeddings_field="emb", brain_key="k"), **kwargs)
        with pytest.raises(cls, match=pattern) as e:
            ls.build_index(**kwargs)
        assert isinstance(e.value, LookalikeError)
        _one_line(e.value)
    assert ds.list_brain_runs() == []
    index = ls.build_index(ds, "emb", "k", engine="approximate", nprobe=2)
    assert index.engine.nprobe == 2
    for k in (0, -1):
        with pytest.raises(IndexSettingsError, match="k must be at least 1"):
            ls.nearest(ds, "k", query_ids=[ds.first().id], k=k)
    with pytest.raises(UsageError, match="select at least one sample"):
        ls.nearest(ds, "k")


def test_cli_index_and_search_fail_in_one_line(ds):
    out = run_cli("index", "--dataset", ds.name, "--field", "nofield")
    assert out.returncode == 2, out.stderr
    assert _error_line(out) == (
        f"lookalike index: error: dataset '{ds.name}' has no field 'nofield': "
        "compute embeddings first")
    # 'emb' was written by hand, not by lookalike embed: the index records no encoder.
    ls.build_index(ds, "emb", "k")
    image = ds.first().filepath
    out = run_cli("search", "--dataset", ds.name, "--brain-key", "k", "--image", image)
    assert out.returncode == 2, out.stderr
    assert _error_line(out) == (
        "lookalike search: error: index 'k' does not record which encoder made its embeddings, "
        "so it cannot embed a new image: query by sample id, or rebuild it over a field that "
        "lookalike embed wrote")
    out = run_cli("search", "--dataset", ds.name, "--brain-key", "k", "--sample-id",
                  ds.first().id)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].endswith(ds.first().filepath)


# -- readers in other processes while an index is rebuilt ------------------------------
# A reader as the App is: one dataset object kept between queries; it asks through our
# API (which re-reads the runs) and through FiftyOne's own sort (which the App calls).
READER = """
import json, os, sys, fiftyone as fo, lookalike.similarity as ls
from lookalike.core import fo_adapter
ds = fo.load_dataset(sys.argv[1]); query, stop = sys.argv[2], sys.argv[3]
answers, errors = {}, []
open(stop + ".ready-" + str(os.getpid()), "w").close()
while not os.path.exists(stop):
    for how in ("api", "sort"):
        try:
            if how == "api":
                ids = ls.nearest(ds, "k", query_ids=[query], k=5)[0]
            else:
                fo_adapter.refresh_runs(ds)
                ids = ds.sort_by_similarity(query, brain_key="k", k=5).values("id")
            key = " ".join(sorted(ids))
            answers[key] = answers.get(key, 0) + 1
        except Exception as e:
            errors.append(f"{how}: {type(e).__name__}: {e}")
print("READ", json.dumps({"answers": answers, "errors": errors[:5], "num_errors": len(errors)}))
"""


def test_readers_in_other_processes_see_the_old_or_the_new_index_during_rebuilds(
        ds, subprocess_env, tmp_path):
    ls.build_index(ds, "emb", "k")
    query = ds.values("id")[3]
    answers = [_expected(ds, query, 5)]
    stop = str(tmp_path / "stop")
    readers = [subprocess.Popen([sys.executable, "-c", READER, ds.name, query, stop],
                                env=subprocess_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    processes.wait_for(lambda: len([n for n in os.listdir(tmp_path) if ".ready-" in n]) == 2,
                       "the readers to start", procs=readers)
    for seed in range(1, 9):  # eight rebuilds over other vectors, each swapped in
        ds.set_values("emb", list(_unit(N, seed)))
        answers.append(_expected(ds, query, 5))
        ls.build_index(ds, "emb", "k")
    open(stop, "w").close()
    allowed = {" ".join(sorted(a)) for a in answers}
    for reader in readers:
        out, err = reader.communicate(timeout=300)
        assert reader.returncode == 0, err[-3000:]
        result = json.loads(out.split("READ", 1)[1])
        assert result["num_errors"] == 0, result["errors"]
        assert set(result["answers"]) <= allowed, result
        assert sum(result["answers"].values()) > 10, result  # they did read meanwhile
        assert "corrupted" not in err, err[-3000:]
    _assert_one_complete_index(ds)


def test_a_build_that_fails_leaves_no_building_run_behind(ds):
    ds.set_values("emb", [np.full(D, np.nan, np.float32)] * N)  # vectors no index can take
    with pytest.raises(Exception):
        ls.build_index(ds, "emb", "k")
    ds.reload()
    assert ds.list_brain_runs() == []
