"""fiftyone-brain sees lookalike as a backend: by name, in its own methods, through renames."""

import json
import os
import subprocess
import sys

import fiftyone as fo
import fiftyone.brain as fob
import numpy as np
import pytest

import lookalike.similarity as ls
from lookalike.core import fo_adapter
from lookalike.embeddings.compute import INFO_KEY
from lookalike.curation.duplicates import find_duplicates
from lookalike.similarity import artefacts


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _copies_and_chain(n_groups=12, copies=3, d=32, seed=3):
    """Vectors with planted near-copies (distance ~0.005) and one chain a~b~c, a !~ c."""
    rng = np.random.default_rng(seed)
    base = _unit(rng.normal(size=(n_groups, d)))
    rows = []
    for b in base:
        rows.append(b)
        rows.extend(b + 0.07 * _unit(rng.normal(size=(copies, d))))
    e1, e2 = np.eye(d, dtype=np.float32)[:2]
    # cos(a, b) = cos(b, c) = cos(0.14) -> distance 0.0098; cos(a, c) = cos(0.28) -> 0.039
    rows.extend([e1, np.cos(0.14) * e1 + np.sin(0.14) * e2, np.cos(0.28) * e1 + np.sin(0.28) * e2])
    rows.extend(_unit(rng.normal(size=(20, d))))  # loners
    return _unit(np.array(rows))


@pytest.fixture
def copies_dataset(dataset_name, demo_records):
    vectors = _copies_and_chain()
    paths = [r["filepath"] for r in demo_records][:len(vectors)]
    ds = fo.Dataset(dataset_name, persistent=True)
    ds.add_samples([fo.Sample(filepath=p, split="train" if n % 2 else "test")
                    for n, p in enumerate(paths)])
    ds.set_values("emb", list(vectors))
    return ds


def _run(code, env, *args):
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         env=env, timeout=300)
    return out


def test_backend_by_name_with_the_one_time_config_and_after_the_plugin_loads(
        copies_dataset, subprocess_env, tmp_path):
    # As compute_embeddings records it: which encoder wrote the field.
    fo_adapter.set_info_key(copies_dataset, f"{INFO_KEY}.emb", {"encoder": "enc-a",
                                                                "version": "enc-a-v1"})
    config = tmp_path / "brain_config.json"
    config.write_text(json.dumps({"default_similarity_backend": "sklearn",
                                  "similarity_backends": {"qdrant": {"url": "http://x:6333"}}}))
    env = dict(subprocess_env, FIFTYONE_BRAIN_CONFIG_PATH=str(config))
    # A script written for fiftyone-brain alone: it never imports lookalike.
    code = f"""
import sys
import fiftyone as fo, fiftyone.brain as fob
ds = fo.load_dataset({copies_dataset.name!r})
try:
    index = fob.compute_similarity(ds, embeddings="emb", brain_key=sys.argv[1], backend="lookalike")
except ValueError as e:
    print("REFUSED", e); sys.exit(0)
config = ds.get_brain_info(sys.argv[1]).config
print("CLS", config.cls, "ENCODER", config.encoder, config.encoder_version)
ids = ds.values("id")
view = ds.sort_by_similarity(ids[0], brain_key=sys.argv[1], k=4, dist_field="d")
print("FIRST", view.first().id == ids[0], round(view.first().d, 6))
"""
    before = _run(code, env, "by_name_0")
    assert before.returncode == 0, before.stderr[-2000:]
    assert "REFUSED Unsupported backend 'lookalike'" in before.stdout  # today's failure

    cli = [os.path.join(os.path.dirname(sys.executable), "lookalike"), "register-backend"]
    done = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"registered: fiftyone-brain similarity backend 'lookalike' in {config}" in done.stdout
    again = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=120)
    assert "already registered" in again.stdout
    saved = json.loads(config.read_text())
    assert saved["default_similarity_backend"] == "sklearn"  # the rest of the file is kept
    assert saved["similarity_backends"]["qdrant"] == {"url": "http://x:6333"}
    assert saved["similarity_backends"]["lookalike"] == {"config_cls": ls.BACKEND_CLS}

    after = _run(code, env, "by_name_1")
    assert after.returncode == 0, after.stderr[-2000:]
    assert f"CLS {ls.BACKEND_CLS} ENCODER enc-a enc-a-v1" in after.stdout
    assert "FIRST True 0.0" in after.stdout

    # No config at all: an App or worker that loads our plugin knows the backend.
    plugin_code = """
import fiftyone.brain as fob, fiftyone.operators as foo
print("BEFORE", "lookalike" in fob.brain_config.similarity_backends)
foo.list_operators()
print("AFTER", "lookalike" in fob.brain_config.similarity_backends)
"""
    env = dict(subprocess_env, FIFTYONE_BRAIN_CONFIG_PATH=str(tmp_path / "none.json"))
    out = _run(plugin_code, env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "BEFORE False" in out.stdout and "AFTER True" in out.stdout


def test_register_backend_refuses_a_broken_config_in_one_line(subprocess_env, tmp_path):
    config = tmp_path / "brain_config.json"
    config.write_text("{not json")
    env = dict(subprocess_env, FIFTYONE_BRAIN_CONFIG_PATH=str(config))
    cli = [os.path.join(os.path.dirname(sys.executable), "lookalike"), "register-backend"]
    out = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2
    assert out.stderr.startswith(f"lookalike register-backend: error: {config}: not a readable")
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert config.read_text() == "{not json"  # untouched


def test_brain_methods_run_on_a_lookalike_index(copies_dataset):
    ds = copies_dataset
    ls.build_index(ds, "emb", "emb_sim")
    n = len(ds)

    dup = fob.compute_near_duplicates(ds, threshold=0.02, similarity_index="emb_sim")
    assert dup.config.cls == ls.BACKEND_CLS  # our index did the search
    assert len(dup.duplicate_ids) == 12 * 3 + 2  # the copies, and b and c of the chain

    fob.compute_uniqueness(ds, uniqueness_field="uniq", similarity_index="emb_sim")
    uniq = np.array(ds.values("uniq"))
    assert uniq.shape == (n,) and np.all((uniq >= 0) & (uniq <= 1))
    loners = np.arange(n - 20, n)
    assert uniq[loners].mean() > uniq[:48].mean()  # isolated samples are more unique

    fob.compute_representativeness(ds, representativeness_field="rep",
                                   similarity_index="emb_sim")
    rep = np.array(ds.values("rep"))
    assert rep.shape == (n,) and np.all((rep >= 0) & (rep <= 1))

    leaks = fob.compute_leaky_splits(ds, splits="split", threshold=0.02,
                                     similarity_index="emb_sim")
    leaked = set(leaks.leaks_view().values("id"))
    assert leaked and leaked <= set(ds.values("id")[:51])  # only planted copies and the chain

    vis = fob.compute_visualization(ds, similarity_index="emb_sim", method="pca",
                                    brain_key="emb_pca")
    assert vis.points.shape == (n, 2)
    # The points are the PCA of our unit vectors (up to each axis' sign).
    from sklearn.decomposition import PCA

    ref = PCA(n_components=2, svd_solver="full").fit_transform(_copies_and_chain())
    assert np.allclose(np.abs(vis.points), np.abs(ref), atol=1e-3)


def _groups_of(report):
    return {frozenset(g) for g in report.groups}


def test_index_find_duplicates_gives_lookalikes_groups(copies_dataset):
    ds = copies_dataset
    index = ls.build_index(ds, "emb", "emb_sim")
    ids = ds.values("id")
    chain = ids[48:51]
    report = find_duplicates(ds, "emb_sim", threshold=0.02, exact_files=False)
    index.find_duplicates(thresh=0.02)
    brain_groups = {frozenset([k] + [d for d, _ in v]) for k, v in index.neighbors_map.items()}
    assert brain_groups == _groups_of(report)
    assert frozenset(chain) in brain_groups  # connected, not greedy: {a, b} and {c}
    assert set(index.duplicate_ids) == {i for g in report.groups for i in g[1:]}
    assert set(index.unique_ids) == set(ids) - set(index.duplicate_ids)
    # Same kept sample and same distance to it as the dup_distance curation wrote.
    dup_distance = dict(zip(ids, ds.values("dup_distance")))
    assert set(index.neighbors_map) == {g[0] for g in report.groups}
    for kept, dups in index.neighbors_map.items():
        for dup_id, dist in dups:
            assert dist == pytest.approx(dup_distance[dup_id], abs=1e-6)
    view = index.duplicates_view(type_field="dup_type", id_field="dup_of")
    assert len(view) == sum(len(g) for g in report.groups)
    assert set(view.match(fo.ViewField("dup_type") == "nearest").values("id")) == {
        g[0] for g in report.groups}
    # fob.compute_near_duplicates on our run: the same groups.
    again = fob.compute_near_duplicates(ds, threshold=0.02, similarity_index="emb_sim")
    assert set(again.duplicate_ids) == set(index.duplicate_ids)
    # fraction: the threshold is bisected on the same grouping.
    index.find_duplicates(fraction=len(index.duplicate_ids) / len(ids))
    assert len(index.duplicate_ids) == 38 and index.thresh >= 0.0098
    # Without a threshold: the run's calibrated one, or a clear reason.
    with pytest.raises(ValueError, match="has no calibration yet"):
        index.find_duplicates()
    with pytest.raises(ValueError, match=r"must be in \[0, 2\]"):
        index.find_duplicates(thresh=3)


def test_renamed_run_keeps_its_artefacts_and_deleting_removes_them(
        copies_dataset, subprocess_env):
    ds = copies_dataset
    index = ls.build_index(ds, "emb", "emb_old")
    old_dir = artefacts.directory(ds, "emb_old")
    assert os.path.isfile(os.path.join(old_dir, "vectors.npy"))
    ds.rename_brain_run("emb_old", "emb_new")
    new_dir = artefacts.directory(ds, "emb_new")
    assert os.path.isfile(os.path.join(new_dir, "vectors.npy"))
    # The loaded index follows the rename: its next save goes to the renamed run.
    assert index.key == "emb_new"
    extra = ds.add_sample(fo.Sample(filepath=ds.first().filepath))
    index.add_to_index(np.ones((1, 32), np.float32), [extra])
    with open(os.path.join(new_dir, "meta.json")) as f:
        assert json.load(f)["size"] == len(ds)
    # A new process loads the renamed run from its artefacts, not from MongoDB.
    code = f"""
import fiftyone as fo
import lookalike.similarity.backend as b
def boom(*a, **k):
    raise AssertionError("read every embedding from MongoDB")
b.read_field = boom
ds = fo.load_dataset({ds.name!r})
index = ds.load_brain_results("emb_new")
print("SIZE", index.total_index_size)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=subprocess_env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"SIZE {len(ds)}" in out.stdout
    ds.delete_brain_run("emb_new")
    assert not os.path.exists(new_dir) and not os.path.exists(old_dir)
    assert ds.list_brain_runs() == []
