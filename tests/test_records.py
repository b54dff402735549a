"""Curation records saved by two jobs that each loaded the run: neither record is lost."""

import subprocess
import sys

import fiftyone as fo
import numpy as np

import lookalike.similarity as ls
from lookalike.core import fo_adapter
from lookalike.similarity import records

SAVE = """
import sys, fiftyone as fo, lookalike.similarity as ls
from lookalike.similarity import records
ds = fo.load_dataset(sys.argv[1])
records.save(ls.load_index(ds, "emb_sim"), "from_child", {"value": 2})
"""


def test_two_holders_of_a_run_each_save_a_record_and_both_stand(dataset_name, demo_records,
                                                                 subprocess_env):
    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=r["filepath"]) for r in demo_records[:40]])
    rng = np.random.default_rng(0)
    ds.set_values("emb", list(rng.normal(size=(40, 16)).astype(np.float32)))
    ds.persistent = True
    ls.build_index(ds, "emb", "emb_sim")
    mine = ls.load_index(ds, "emb_sim")  # loaded before the other job saves
    out = subprocess.run([sys.executable, "-c", SAVE, ds.name], env=subprocess_env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "from_child" not in (mine.curation or {})  # this copy is stale
    records.save(mine, "from_parent", {"value": 1})
    saved = fo_adapter.saved_brain_results(ds, "emb_sim")["curation"]
    assert saved["from_child"]["value"] == 2 and saved["from_parent"]["value"] == 1
    fo_adapter.forget_brain_results(ds, "emb_sim")
    fresh = ls.load_index(ds, "emb_sim")
    assert {"from_child", "from_parent"} <= set(fresh.curation)
