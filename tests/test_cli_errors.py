"""The CLI: one line on stderr per error, results only on stdout.

Each bad-input case must exit 2 with exactly one visible line on stderr,
``lookalike <cmd>: error: <reason>``, no traceback, and nothing on stdout. The wording
is checked in this process (``cli_runner``); a race, FiftyOne's logging set up in a new
process and stdout/stderr through a real pipe are checked in real child processes.
"""

import os
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


def assert_only_the_error_line(out, command, *reason_parts):
    """Exactly one line on stderr, as a log or a pipe records it: no bar drawn and erased
    before it (no "\\r"), no framework's line."""
    line = assert_one_line_error(out, command, *reason_parts)
    assert out.stderr == line + "\n", out.stderr[-3000:]
    assert "could not convert" not in line and "staging" not in line, line
    return line


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


def _cli_with_stderr_on_a_terminal(env, *args):
    """``(returncode, stdout, what the terminal got)`` of ``lookalike ARGS`` with stderr on a
    pseudo-terminal, as in an interactive shell (stdout still a pipe)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    # 24 rows of 80 columns: tqdm draws nothing on a terminal 0 columns wide.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        proc = subprocess.Popen([sys.executable, "-m", "lookalike.cli", *args], env=env,
                                stdout=subprocess.PIPE, stderr=slave)
    finally:
        os.close(slave)
    received = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the process closed the terminal (it exited)
            break
        if not chunk:
            break
        received += chunk
    os.close(master)
    stdout = proc.stdout.read().decode()
    proc.stdout.close()
    proc.wait(timeout=300)
    # The terminal turns "\n" into "\r\n".
    return proc.returncode, stdout, received.decode(errors="replace").replace("\r\n", "\n")


def test_results_only_on_stdout_with_progress_on_stderr(subprocess_env, indexed, tmp_path):
    """Real runs: stdout holds exactly the result lines; the bars went to stderr, drawn on a
    terminal and erased when done, not written at all into a log for a short job."""
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
    assert "indexing" not in out.stderr and "\r" not in out.stderr  # a log: no bar
    code, stdout, terminal = _cli_with_stderr_on_a_terminal(
        subprocess_env, "index", "--dataset", indexed.name, "--field", "emb")
    assert code == 0, terminal[-3000:]
    assert stdout == f"index 'emb_sim' over 'emb': {len(indexed)} samples\n"
    assert "indexing ..." in terminal and _visible_lines(terminal) == [], terminal
    code, stdout, terminal = _cli_with_stderr_on_a_terminal(
        subprocess_env, "outliers", "--dataset", indexed.name, "--brain-key", "emb_sim",
        "--threshold", "0.5")
    assert code == 0, terminal[-3000:]
    assert re.match(rf"\d+ of {len(indexed)} samples match nothing within the no-match "
                    r"threshold 0.5000 \(index 'emb_sim'\)", stdout)
    assert "finding outliers" in terminal and "finding outliers" not in stdout
    # A failure on a terminal: the spinner drawn, then erased before the one error line.
    code, stdout, terminal = _cli_with_stderr_on_a_terminal(
        subprocess_env, "index", "--dataset", indexed.name, "--field", "filepath")
    assert code == 2 and stdout == "", terminal[-3000:]
    assert _visible_lines(terminal) == [
        "lookalike index: error: field 'filepath' holds strings, not embeddings: give a field "
        "of vectors (lookalike embed writes one)"], terminal


def _keras_file(path, config):
    """A ``.keras`` archive holding only ``config``: enough for what is refused before Keras
    reads a file (its weights are never reached)."""
    import json
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "2.21.0"}))
        archive.writestr("config.json", json.dumps(config))
    return str(path)


def _dense(activation):
    return {"module": "keras.layers", "class_name": "Dense", "registered_name": None,
            "config": {"units": 4, "activation": activation}}


def _bad_invocations(ds, tmp_path):
    """(argv, command, parts of the one error line) of issue #26's bad invocations."""
    name, folder = ds.name, tmp_path / "new"
    folder.mkdir()
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    system = _keras_file(tmp_path / "system.keras", _dense(
        {"module": "os", "class_name": "function", "config": "system",
         "registered_name": "system"}))
    exec_ = _keras_file(tmp_path / "exec.keras", _dense(
        {"module": "builtins", "class_name": "function", "config": "exec",
         "registered_name": None}))
    zen = _keras_file(tmp_path / "zen.keras", {"module": "this", "class_name": "Zen",
                                               "config": {}})
    junk = tmp_path / "junk.keras"
    junk.write_text("not a zip archive")
    return [
        (["index", "--dataset", name, "--field", "filepath"], "index",
         ["field 'filepath' holds strings, not embeddings"]),
        (["index", "--dataset", name, "--field", "metadata"], "index",
         ["field 'metadata' holds ImageMetadata documents, not embeddings"]),
        (["index", "--dataset", name, "--field", "tags"], "index",
         ["field 'tags' holds lists of strings, not embeddings"]),
        (["index", "--dataset", name, "--field", "id"], "index",
         ["field 'id' holds ids, not embeddings"]),
        (["visualize", "--dataset", name, "--field", "filepath"], "visualize",
         ["field 'filepath' holds strings, not embeddings"]),
        (["visualize", "--dataset", name, "--field", "metadata"], "visualize",
         ["field 'metadata' holds ImageMetadata documents"]),
        (["curate", "--dataset", name, "--field", "filepath"], "curate",
         ["field 'filepath' holds strings, not embeddings"]),
        (["figures", "--dataset", name, "--brain-key", "emb_sim", "--out", "/proc/nope"],
         "figures", ["/proc/nope: cannot create the folder for the pictures"]),
        (["figures", "--dataset", name, "--brain-key", "emb_sim", "--out", a_file], "figures",
         [f"{a_file}: is a file, not a folder"]),
        (["curate", "--dataset", name, "--field", "emb", "--pngs", "/proc/nope"], "curate",
         ["/proc/nope: cannot create the folder for the pictures"]),
        (["match", "--dataset", name, "--brain-key", "emb_sim", "--images", folder, "--out",
          "/nonexistent/dir/t.csv"], "match", ["/nonexistent/dir/t.csv", "no such folder"]),
        (["leaks", "--dataset", name, "--brain-key", "emb_sim", "--split-field", "metadata"],
         "leaks", ["field 'metadata' holds ImageMetadata documents, not split names"]),
        (["evaluate", "--dataset", name, "--brain-key", "emb_sim", "--label-field",
          "filepath"], "evaluate", ["'filepath' holds the media's path, not a label"]),
        (["load", "--path", system, "--name", "system"], "load",
         [f"{system}: refused: its config names os.system, which is not part of Keras"]),
        (["load", "--path", exec_, "--name", "exec"], "load",
         [f"{exec_}: refused: its config names builtins.exec"]),
        (["load", "--path", zen, "--name", "zen"], "load",
         [f"{zen}: refused: its config names this.Zen"]),
        (["load", "--path", junk, "--name", "junk"], "load",
         [f"{junk}: not a Keras model file"]),
    ]


def test_bad_invocations_are_one_line_naming_the_field_or_file(indexed, tmp_path, store_dir):
    """Issue #26: each exits 2 with only its one line on stderr (no traceback, no internal
    text, no spinner drawn and erased before it), naming the field or the user's file."""
    out = run_cli("calibrate", "--dataset", indexed.name, "--brain-key", "emb_sim")
    assert out.returncode == 0, out.stderr[-3000:]
    tags, runs = indexed.count_sample_tags(), indexed.list_brain_runs()
    for argv, command, parts in _bad_invocations(indexed, tmp_path):
        out = run_cli(*argv)
        assert_only_the_error_line(out, command, *parts)
    # Refused before any work: no new run, no tag; nothing imported into the store; the
    # modules a hostile model file names were never imported (`this` prints on import).
    indexed.reload()
    assert indexed.count_sample_tags() == tags and indexed.list_brain_runs() == runs
    assert not os.path.exists(store_dir) or os.listdir(store_dir) == []
    assert "this" not in sys.modules


def test_an_unwritable_demo_folder_is_one_line(dataset_name):
    out = run_cli("demo", "--dataset", dataset_name, "--data-dir", "/proc/nope",
                  "--skip-training")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr == ("lookalike demo: error: /proc/nope: cannot create the folder for the "
                          "demo's images (No such file or directory)\n")
    assert not fo.dataset_exists(dataset_name)


def test_progress_is_whole_lines_now_and_then_where_stderr_is_no_terminal(monkeypatch):
    """A log gets whole lines (no "\\r" redraws), none in a job's first LOG_AFTER seconds."""
    import contextlib
    import io

    from lookalike.cli import output

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        bar = output.Progress("indexing")
        bar(0.5, "halfway")
        bar.close()
        with output.spinner("drawing"):
            pass
    assert err.getvalue() == ""  # a short step: nothing left behind
    monkeypatch.setattr(output, "LOG_AFTER", 0.0)
    monkeypatch.setattr(output, "LOG_EVERY", 3600.0)
    with contextlib.redirect_stderr(err):
        bar = output.Progress("indexing")
        bar(0.25, "read 5/20 vectors")
        bar(0.5, "read 10/20 vectors")  # within LOG_EVERY of the last line: not written
        bar(1.0, "done")
    assert err.getvalue() == "indexing:  25% read 5/20 vectors (00:00)\n"
    assert output._OPEN_BARS == set()


def _without_framework_settings(env):
    env = dict(env)
    for name in ("TF_CPP_MIN_LOG_LEVEL", "GLOG_minloglevel", "TF_ENABLE_ONEDNN_OPTS"):
        env.pop(name, None)  # the frameworks' defaults: their start-up lines on
    return env


def test_a_failure_after_the_frameworks_loaded_is_one_line(subprocess_env, tmp_path):
    """A real process that loads Paddle and TensorFlow (a Keras file), then refuses it: only
    our line on stderr, whatever the frameworks print when they start (absl's lines ignore
    TF_CPP_MIN_LOG_LEVEL), with the level unset or set to 3."""
    from lookalike.core import frameworks

    tf = frameworks.tensorflow()
    path = str(tmp_path / "small.keras")
    inputs = tf.keras.Input((16, 16, 3))
    pooled = tf.keras.layers.GlobalAveragePooling2D()(inputs)
    tf.keras.Model(inputs, tf.keras.layers.Dense(4)(pooled)).save(path)
    env = dict(_without_framework_settings(subprocess_env),
               LOOKALIKE_MODELS_DIR=str(tmp_path / "models"))
    for level in (None, "3"):
        run_env = env if level is None else dict(env, TF_CPP_MIN_LOG_LEVEL=level)
        out = _cli(run_env, "load", "--path", path, "--name", "small", "--image-size", "32")
        assert_only_the_error_line(out, "load", f"{path}: the model takes 16 px images; "
                                   "32 px was asked for")


def test_a_failed_command_leaves_no_bar_in_a_log(subprocess_env, indexed):
    """stderr through a real pipe: the spinner of `index` leaves nothing before the line."""
    out = _cli(subprocess_env, "index", "--dataset", indexed.name, "--field", "filepath")
    assert_only_the_error_line(out, "index", "field 'filepath' holds strings")


def test_multi_line_reasons_are_folded_to_one_line():
    error = DatabaseSetupError("pip install failed:\n  ERROR: no network\n\nUse a MongoDB of your own")
    assert one_line(error) == "pip install failed: ERROR: no network Use a MongoDB of your own"
    assert one_line(DatabaseSetupError("")) == "DatabaseSetupError"
