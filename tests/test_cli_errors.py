"""The CLI: one line on stderr per error, results only on stdout.

Each bad-input case must exit 2 with exactly one visible line on stderr,
``lookalike <cmd>: error: <reason>``, no traceback, and nothing on stdout. The wording
is checked in this process (``cli_runner``); a race, FiftyOne's logging set up in a new
process and stdout/stderr through a real pipe are checked in real child processes.
"""

import re
import subprocess
import sys

import fiftyone as fo
import numpy as np
import pytest

import processes

import imagefiles
from cli_runner import run_cli
import lookalike.similarity as ls
from lookalike.core.errors import DatabaseSetupError, one_line


def _run(argv, env):
    # Bytes, decoded here: text mode would turn the bars' "\r" into line breaks.
    out = subprocess.run(argv, capture_output=True, env=env, timeout=300)
    out.stdout, out.stderr = out.stdout.decode(), out.stderr.decode()
    return out


def _cli(env, *args):
    return _run([sys.executable, "-m", "lookalike.cli", *args], env)


def _visible_lines(text):
    # Progress bars redraw with "\r" and clear themselves (leave=False): a terminal shows
    # what follows the last "\r" of each line.
    ends = (line.rsplit("\r", 1)[-1] for line in text.split("\n"))
    return [end for end in ends if end.strip()]


def assert_one_line_error(out, command, *reason_parts):
    lines = _visible_lines(out.stderr)
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith(f"lookalike {command}: error: "), lines
    for part in reason_parts:
        assert part in lines[0], lines
    assert "Traceback" not in out.stderr + out.stdout
    assert out.stdout == ""
    return lines[0]


@pytest.fixture
def indexed(dataset_name, tmp_path):
    """A persistent dataset of real JPEGs, random embeddings that record no encoder, an index."""
    paths = [imagefiles.write_jpeg(str(tmp_path / f"{name}.jpg"), name)
             for name in ("chelsea", "astronaut", "coffee", "camera", "rocket", "coins")]
    ds = fo.Dataset(dataset_name, persistent=True)
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    ds.set_values("emb", list(np.random.default_rng(0).normal(size=(len(ds), 8))
                              .astype(np.float32)))
    ls.build_index(ds, "emb", "emb_sim")
    return ds


def test_bad_arguments_are_one_line():
    out = run_cli("index", "--dataset", "x", "--field", "emb", "--nprobe", "-5")
    assert_one_line_error(out, "index", "--nprobe", "must be at least 1, got -5")
    out = run_cli("search", "--dataset", "x", "--brain-key", "k", "-k", "0")
    assert_one_line_error(out, "search", "-k", "must be at least 1")
    out = run_cli("index", "--dataset", "x")
    assert_one_line_error(out, "index", "required", "--field")
    out = run_cli("nosuchcommand")
    lines = _visible_lines(out.stderr)
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("lookalike: error:")


def test_missing_dataset_field_and_image_are_one_line(indexed, tmp_path):
    out = run_cli("index", "--dataset", "no-such-dataset", "--field", "emb")
    assert_one_line_error(out, "index", "no-such-dataset")
    out = run_cli("index", "--dataset", indexed.name, "--field", "nofield")
    assert_one_line_error(out, "index", "nofield")
    missing = str(tmp_path / "missing.jpg")
    out = run_cli("search", "--dataset", indexed.name, "--brain-key", "emb_sim",
               "--image", missing)
    assert_one_line_error(out, "search", missing, "not found")
    # The faiss engine refuses a negative nprobe with an OverflowError (a traceback
    # before); argparse refuses it first now, whatever the engine.
    out = run_cli("index", "--dataset", indexed.name, "--field", "emb",
                  "--engine", "approximate", "--nprobe", "-5")
    assert_one_line_error(out, "index", "--nprobe")


def test_search_by_image_on_an_index_without_encoder_is_one_line(indexed):
    query = indexed.first().filepath
    out = run_cli("search", "--dataset", indexed.name, "--brain-key", "emb_sim",
                  "--image", query)
    assert_one_line_error(out, "search", "does not record which encoder")
    # Queried by sample id, the same index answers: results only on stdout.
    out = run_cli("search", "--dataset", indexed.name, "--brain-key", "emb_sim",
                  "--sample-id", indexed.first().id, "-k", "3")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 3 and lines[0] == f"0.0000  {query}"


def test_a_second_index_build_while_one_runs_is_one_line(subprocess_env, indexed, tmp_path):
    marker = tmp_path / "reached"
    env = dict(subprocess_env, LOOKALIKE_FAULT="index.built:pause",
               LOOKALIKE_FAULT_FILE=str(marker))
    first = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "index", "--dataset",
                              indexed.name, "--field", "emb"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        processes.reached(marker, first, timeout=240, what="index.built")
        out = _cli(subprocess_env, "index", "--dataset", indexed.name, "--field", "emb")
        line = assert_one_line_error(out, "index", "emb_sim", "is being written by job "
                                     "build_index", f"pid {first.pid}")
        assert "wait for it to finish" in line
    finally:
        first.kill()
        first.communicate()
    # The killed build left the old index answering; a rerun builds it.
    out = _cli(subprocess_env, "index", "--dataset", indexed.name, "--field", "emb")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout == f"index 'emb_sim' over 'emb': {len(indexed)} samples\n"


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(monkeypatch):
    import lookalike.cli.encoders as encoders_cli

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(encoders_cli, "cmd_encoders", broken)
    out = run_cli("encoders")
    assert out.returncode == 1 and out.stdout == ""
    assert _visible_lines(out.stderr) == [
        "lookalike encoders: error: KeyError: 'a bug' (run with --debug for the traceback)"]
    for argv in (["--debug", "encoders"], ["encoders", "--debug"]):
        out = run_cli(*argv)
        assert out.returncode == 1 and out.stdout == ""
        assert "Traceback (most recent call last)" in out.stderr and "in broken" in out.stderr
        assert out.stderr.splitlines()[-1] == "lookalike encoders: error: KeyError: 'a bug'"


def test_debug_prints_the_traceback_of_our_errors_too():
    out = run_cli("--debug", "index", "--dataset", "no-such-dataset", "--field", "emb")
    assert out.returncode == 2 and "Traceback" in out.stderr
    assert out.stderr.splitlines()[-1].startswith("lookalike index: error: no dataset named")


LOGS = ("import logging, sys\n"
        "if sys.argv[1] == 'imported-first':\n"
        "    import fiftyone\n"
        "from lookalike.cli.output import results_only_on_stdout\n"
        "results_only_on_stdout()\n"
        "import fiftyone as fo, fiftyone.core.utils as fou\n"
        "logging.getLogger('fiftyone.migrations.runner').info('Migrating database to v9')\n"
        "logging.getLogger('fiftyone.core.odm.database').warning('a database warning')\n"
        "with fou.ProgressBar(total=3) as bar:\n"
        "    for _ in bar(range(3)):\n"
        "        pass\n"
        "print('result')\n")


@pytest.mark.parametrize("order", ["imported-first", "cli-first"])
def test_fiftyone_logs_and_progress_bars_go_to_stderr(subprocess_env, order):
    env = dict(subprocess_env)
    env.pop("FIFTYONE_SHOW_PROGRESS_BARS", None)  # FiftyOne's default: bars shown
    out = _run([sys.executable, "-c", LOGS, order], env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout == "result\n"
    assert "Migrating database to v9" in out.stderr and "a database warning" in out.stderr


def test_results_only_on_stdout_with_progress_on_stderr(subprocess_env, indexed, tmp_path):
    """Real runs: stdout holds exactly the result lines; the bars went to stderr."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("chelsea", "coffee", "rocket"):
        imagefiles.write_jpeg(str(folder / f"{name}.jpg"), name)
    (folder / "notes.jpg").write_text("not an image")
    name = indexed.name + "-import"
    try:
        out = _cli(subprocess_env, "import", "--images", str(folder), "--dataset", name)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "Traceback" not in out.stderr
        assert "%" not in out.stdout and "\r" not in out.stdout  # no bar on stdout
        assert "3" in out.stdout and "notes.jpg" in out.stdout
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
    out = _cli(subprocess_env, "index", "--dataset", indexed.name, "--field", "emb")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout == f"index 'emb_sim' over 'emb': {len(indexed)} samples\n"
    assert "indexing" in out.stderr  # its bar (or elapsed time), on stderr
    out = _cli(subprocess_env, "outliers", "--dataset", indexed.name, "--brain-key", "emb_sim",
               "--threshold", "0.5")
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.match(rf"\d+ of {len(indexed)} samples match nothing within the no-match "
                    r"threshold 0.5000 \(index 'emb_sim'\)", out.stdout)
    assert "finding outliers" in out.stderr and "finding outliers" not in out.stdout


def test_multi_line_reasons_are_folded_to_one_line():
    error = DatabaseSetupError("pip install failed:\n  ERROR: no network\n\nUse a MongoDB of your own")
    assert one_line(error) == "pip install failed: ERROR: no network Use a MongoDB of your own"
    assert one_line(DatabaseSetupError("")) == "DatabaseSetupError"
