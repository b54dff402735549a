"""Results kept across runs: a pair matched once is read, not matched again; a file
edited in place is matched afresh; shards merge, damage is skipped, and two processes
adding at once lose nothing."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import imagefiles as files
from lookalike.images import local_features as V
from lookalike.images.result_cache import MAX_SHARDS, ResultCache, result_key

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


@pytest.fixture()
def photo_paths(tmp_path):
    out = []
    for name in PHOTOS:
        path = str(tmp_path / f"{name}.png")
        files.photo(name).convert("RGB").save(path)
        out.append(path)
    # A copy of the first, shrunk: a pair that verifies.
    path = str(tmp_path / "astronaut-small.png")
    img = files.photo("astronaut").convert("RGB")
    img.resize((img.width // 2, img.height // 2)).save(path)
    out.append(path)
    return out


def _counting(monkeypatch, name):
    calls = []
    real = getattr(V, name)

    def counted(a, b, *args, **kwargs):
        calls.append(1)
        return real(a, b, *args, **kwargs)

    monkeypatch.setattr(V, name, counted)
    return calls


def test_pairs_matched_before_are_read_and_an_edited_file_is_matched_again(
        photo_paths, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    features, _ = V.compute_features(photo_paths, cache)
    names = {n: V.entry_name(p) for n, p in enumerate(photo_paths)}
    i, j = [0, 0, 1, 2], [4, 1, 2, 3]
    calls = _counting(monkeypatch, "inliers_and_parallax")
    first, evidence = V.verify_pairs(features, i, j, with_parallax=True, saved=(cache, names))
    assert len(calls) == 4 and first[0] >= 40 and max(first[1:]) <= 10
    # Again, in a new reader (another process would be the same): nothing matched.
    again, again_evidence = V.verify_pairs(features, i, j, with_parallax=True,
                                           saved=(cache, names))
    assert len(calls) == 4
    assert np.array_equal(again, first) and np.array_equal(again_evidence, evidence)
    # Without a cache, or for another measure, the pairs are matched.
    V.verify_pairs(features, i, j, with_parallax=True)
    assert len(calls) == 8
    plain = _counting(monkeypatch, "inliers")
    V.verify_pairs(features, i, j, saved=(cache, names))
    assert len(plain) == 4
    # The copy is edited in place: its pair is matched afresh, the others are read.
    time.sleep(0.01)
    files.photo("coffee").convert("RGB").save(photo_paths[4])
    features, _ = V.compute_features(photo_paths, cache)
    names = {n: V.entry_name(p) for n, p in enumerate(photo_paths)}
    changed, _ = V.verify_pairs(features, i, j, with_parallax=True, saved=(cache, names))
    assert len(calls) == 9 and changed[0] <= 10
    assert np.array_equal(changed[1:], first[1:])
    # A file that cannot be read has no name: its pairs are matched, never saved.
    names[3] = V.entry_name(str(tmp_path / "missing.png"))
    assert names[3] is None
    V.verify_pairs(features, [2], [3], with_parallax=True, saved=(cache, names))
    V.verify_pairs(features, [2], [3], with_parallax=True, saved=(cache, names))
    assert len(calls) == 11


def test_shards_merge_and_a_damaged_shard_is_skipped(tmp_path):
    results = ResultCache(str(tmp_path), "m", 2)
    keys = [result_key("m", f"a{n}", f"b{n}") for n in range(3 * (MAX_SHARDS + 2))]
    for n in range(0, len(keys), 3):  # one shard per add, merged past MAX_SHARDS
        results.add(keys[n:n + 3], [[n + k, -(n + k)] for k in range(3)])
    assert len(results._shards()) <= MAX_SHARDS
    fresh = ResultCache(str(tmp_path), "m", 2).get(keys + [result_key("m", "x", "y"), None])
    assert [list(v) for v in fresh[:-2]] == [[n, -n] for n in range(len(keys))]
    assert fresh[-2:] == [None, None]
    # Another measure's width is another folder; a truncated shard is skipped, not fatal.
    assert ResultCache(str(tmp_path), "other", 3).get(keys[:1]) == [None]
    # Shards of another width or type under the same name are skipped, never misread.
    assert ResultCache(str(tmp_path), "m", 3).get(keys[:1]) == [None]
    assert ResultCache(str(tmp_path), "m", 2, np.float32).get(keys[:1]) == [None]
    vectors = ResultCache(str(tmp_path), "v", 4, np.float32)
    vectors.add(keys[:2], np.array([[0.5, -1, 2, 3], [1, 2, 3, 4]], np.float32))
    got = ResultCache(str(tmp_path), "v", 4, np.float32).get(keys[:3])
    assert got[0].tolist() == [0.5, -1, 2, 3] and got[1].tolist() == [1, 2, 3, 4]
    assert got[2] is None
    damaged = ResultCache(str(tmp_path / "damaged"), "m", 2)
    damaged.add(keys[:2], [[1, 1], [2, 2]])
    shard = os.path.join(damaged.folder, damaged._shards()[0])
    damaged.add(keys[2:4], [[3, 3], [4, 4]])
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) - 5)
    got = ResultCache(str(tmp_path / "damaged"), "m", 2).get(keys[:4])
    assert got[:2] == [None, None] and [list(v) for v in got[2:]] == [[3, 3], [4, 4]]


WRITER = """
import sys
sys.path.insert(0, {src!r})
from lookalike.images.result_cache import ResultCache, result_key
tag = sys.argv[1]
results = ResultCache({folder!r}, "race", 1)
for n in range(60):  # 60 shards each: both processes merge, again and again
    results._known = None  # read the others' shards as a new run would
    results.add([result_key("race", tag, str(n * 5 + k)) for k in range(5)],
                [[n * 5 + k] for k in range(5)])
"""


@pytest.mark.system
def test_two_processes_adding_at_once_lose_nothing(tmp_path):
    code = WRITER.format(src=SRC, folder=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", code, tag]) for tag in ("left", "right")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    reader = ResultCache(str(tmp_path), "race", 1)
    for tag in ("left", "right"):
        got = reader.get([result_key("race", tag, str(n)) for n in range(300)])
        assert [None if v is None else int(v[0]) for v in got] == list(range(300))
    assert len(reader._shards()) <= MAX_SHARDS + 1
