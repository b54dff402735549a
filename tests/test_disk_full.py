"""A full disk (and a read-only one): one line naming the folder, nothing half-written,
read-only commands never fail for it, an undelete that a rerun finishes.

lookalike's data directory (index artefacts, deletion journals, the features cache)
lies on a small tmpfs mounted for the test (mount(2) through libc, in this process:
root only, else the test is skipped) and filled to the last page; real CLI processes
then build, search, delete and undelete on it.
"""

import ctypes
import ctypes.util
import errno
import os
import subprocess
import sys

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

import processes
import lookalike.curation as lc
import lookalike.similarity as ls
from lookalike.core import fo_adapter, paths
from lookalike.core.errors import FileWriteError, LookalikeError
from lookalike.curation import journal
from lookalike.curation.deletion import delete_planned
from lookalike.similarity import artefacts

GROUPS, SIZE, SINGLES, DIM = 4, 3, 4, 16
N = GROUPS * SIZE + SINGLES
MS_RDONLY, MS_REMOUNT = 1, 32
FILLER = "filler"


# -- a small disk of our own ------------------------------------------------------------
def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _mount(target, size="1m", flags=0):
    libc = _libc()
    src, fstype = b"tmpfs", b"tmpfs"
    if libc.mount(src, os.fsencode(target), fstype, flags, f"size={size}".encode()) != 0:
        return os.strerror(ctypes.get_errno())
    return None


def _remount_read_only(target):
    libc = _libc()
    assert libc.mount(None, os.fsencode(target), None, MS_REMOUNT | MS_RDONLY, None) == 0, \
        os.strerror(ctypes.get_errno())


def _unmount(target):
    _libc().umount2(os.fsencode(target), 2)  # MNT_DETACH: also while a file is still open


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A 1 MiB tmpfs, lookalike's data directory on it (here and in child processes)."""
    target = tmp_path / "disk"
    target.mkdir()
    why = _mount(target)
    if why is not None:
        pytest.skip(f"cannot mount a tmpfs here ({why}): the disk-full tests need root")
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(target))
    try:
        yield target
    finally:
        _unmount(target)


def _fill(disk):
    """Writes a file that takes every page left on ``disk``."""
    with open(disk / FILLER, "wb", buffering=0) as f:
        for chunk in (1 << 16, 4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e


def _free(disk):
    os.remove(disk / FILLER)


def _files(disk):
    """{path relative to the disk: size} of every file on it but the filler."""
    out = {}
    for root, _, names in os.walk(disk):
        for name in names:
            full = os.path.join(root, name)
            if os.path.relpath(full, disk) != FILLER:
                out[os.path.relpath(full, disk)] = os.path.getsize(full)
    return out


def _temporaries(disk):
    return sorted(p for p in _files(disk) if p.endswith(".tmp") or ".tmp." in p
                  or "staged" in os.path.basename(p))


# -- the default tier: the one writer, in this process --------------------------------------
def test_a_write_that_finds_no_room_leaves_the_old_file_and_says_where(small_disk):
    target = small_disk / "notes" / "table.json"
    paths.make_folder(target.parent, "the notes")
    paths.write_json(target, {"v": 1}, "the notes")
    _fill(small_disk)
    with pytest.raises(FileWriteError) as caught:
        paths.write_json(target, {"v": list(range(100_000))}, "the notes")
    error = caught.value
    assert isinstance(error, LookalikeError) and isinstance(error, OSError)
    assert error.errno == errno.ENOSPC
    assert str(error) == (f"no space left on device in {target.parent} (writing the notes): "
                          "free space and run again")
    assert target.read_text() == '{"v": 1}'  # the old file, whole
    assert os.listdir(target.parent) == ["table.json"]  # no temporary left
    _free(small_disk)
    # A temporary of a dead process of this host is recognised and removed; ours is not.
    pid_max = int(open("/proc/sys/kernel/pid_max").read())
    dead = next(p for p in range(pid_max - 1, 1, -1) if not _alive(p))
    from lookalike.core.leases import process_tag

    tag = process_tag()
    stale = target.parent / f"table.json.{tag.replace(f'-{os.getpid()}-', f'-{dead}-')}ab.tmp"
    mine = target.parent / f"table.json.{tag}cd.tmp"
    stale.write_bytes(b"x")
    mine.write_bytes(b"y")
    assert paths.remove_abandoned_temporaries(target.parent) == 1
    assert sorted(os.listdir(target.parent)) == sorted(["table.json", mine.name])
    # A read-only file system is named plainly.
    mine.unlink()
    _remount_read_only(small_disk)
    with pytest.raises(FileWriteError, match=f"read-only file system in {target.parent} "
                                             r"\(writing the notes\)"):
        paths.write_file(target, "{}", "the notes")
    # A folder that cannot be made is named as closely as it exists.
    with pytest.raises(FileWriteError, match=f"read-only file system in {small_disk} "):
        paths.make_folder(small_disk / "a" / "b", "the notes")
    assert target.read_text() == '{"v": 1}'


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


# -- the system tier: real CLI processes on a full disk -----------------------------------
def _vectors():
    """4 groups of 3 near-identical unit vectors and 4 loners (as in test_deletion)."""
    rng = np.random.default_rng(7)
    basis = np.eye(DIM)
    bases = [basis[0], 0.9 * basis[0] + 0.436 * basis[1], basis[2], basis[3]]
    rows = [b + 0.002 * rng.normal(size=DIM) for b in bases for _ in range(SIZE)]
    rows += [basis[4 + k] for k in range(SINGLES)]
    return [np.asarray(r / np.linalg.norm(r), np.float32) for r in rows]


@pytest.fixture
def ds(dataset_name, tmp_path, small_disk):
    """16 samples with real image files (off the small disk), an index 'sim' on it."""
    rng = np.random.default_rng(3)
    images = tmp_path / "images"
    images.mkdir()
    files = []
    for n in range(N):
        path = str(images / f"img{n:02d}.png")
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)
        files.append(path)
    dataset = fo.Dataset(dataset_name)
    dataset.add_samples([fo.Sample(filepath=p, position=n) for n, p in enumerate(files)])
    dataset.set_values("emb", _vectors())
    dataset.persistent = True
    ls.build_index(dataset, "emb", "sim")
    return dataset


@pytest.fixture
def env(subprocess_env, small_disk):
    return dict(subprocess_env, **{paths.DATA_DIR_ENV: str(small_disk)})


def _cli(env, *args):
    out = subprocess.run([sys.executable, "-m", "lookalike.cli", *args], env=env,
                         capture_output=True, text=True, timeout=300)
    return out.returncode, out.stdout.strip().splitlines(), out.stderr.strip().splitlines()


def _no_space_line(rc, err, folder):
    """The one error line (a progress bar may have drawn on stderr before it)."""
    assert rc == 2, err
    errors = [line for line in err if line.startswith("lookalike ")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    assert not [line for line in err if "Traceback" in line or "Errno" in line], err
    assert f"no space left on device in {folder}" in errors[0], err
    assert "free space and run again" in errors[0], err
    return errors[0]


def _raw_docs(dataset):
    return sorted(fo_adapter.sample_collection(dataset).find({}), key=lambda d: d["_id"])


def _indexes(disk, dataset):
    return os.path.join(disk, "indexes", fo_adapter.dataset_id(dataset))


@pytest.mark.system
def test_an_index_build_on_a_full_disk_fails_in_one_line_and_the_old_index_answers(
        ds, env, small_disk):
    before = _files(small_disk)
    _fill(small_disk)
    rc, out, err = _cli(env, "index", "--dataset", ds.name, "--field", "emb",
                        "--brain-key", "sim")
    line = _no_space_line(rc, err, os.path.join(_indexes(small_disk, ds),
                                                artefacts.BUILD_PREFIX))
    assert "(writing index artefacts)" in line
    # Nothing half-written: the old index's files as they were, and no other file.
    assert _files(small_disk) == before
    rc, out, err = _cli(env, "search", "--dataset", ds.name, "--brain-key", "sim",
                        "--sample-id", ds.first().id, "-k", "3")
    assert rc == 0 and len(out) == 3, err
    # Once there is room, the same command builds it.
    _free(small_disk)
    rc, out, err = _cli(env, "index", "--dataset", ds.name, "--field", "emb",
                        "--brain-key", "sim")
    assert rc == 0 and out == [f"index 'sim' over 'emb': {N} samples"], err
    assert _temporaries(small_disk) == []


@pytest.mark.system
def test_a_search_on_a_full_disk_answers_and_writes_nothing(ds, env, small_disk):
    # Artefacts that must be read again from the field: a reader would cache them.
    name = artefacts.run_directory_name(ds, "sim")
    os.remove(os.path.join(artefacts.build_path(ds, name), "meta.json"))
    _fill(small_disk)
    before = _files(small_disk)
    query = ds.first().id
    rc, out, err = _cli(env, "search", "--dataset", ds.name, "--brain-key", "sim",
                        "--sample-id", query, "-k", "3")
    assert rc == 0 and len(out) == 3 and out[0].startswith("0.0000  "), err
    assert not [line for line in err if "error" in line.lower()], err
    # Re-ranking by local features reads (and would cache) each image's features.
    rc, out, err = _cli(env, "search", "--dataset", ds.name, "--brain-key", "sim",
                        "--sample-id", query, "-k", "3", "--verify")
    assert rc == 0 and len(out) == 3 and "inliers" in out[0], err
    assert _files(small_disk) == before


@pytest.mark.system
def test_a_delete_on_a_full_disk_deletes_nothing_and_names_the_journal_folder(
        ds, env, small_disk):
    lc.find_duplicates(ds, "sim", threshold=0.01, verify=False)
    before = _raw_docs(ds)
    files = _files(small_disk)
    _fill(small_disk)
    rc, out, err = _cli(env, "duplicates", "--dataset", ds.name, "--delete", "--yes")
    line = _no_space_line(rc, err, journal.journal_dir(ds))
    assert "(writing the deletion journal)" in line
    assert _raw_docs(ds) == before
    assert _files(small_disk) == files and journal.list_journals(ds) == []


@pytest.mark.system
def test_an_undelete_on_a_full_disk_restores_nothing_and_a_rerun_restores_all(
        ds, env, small_disk):
    lc.find_duplicates(ds, "sim", threshold=0.01, verify=False)
    before = _raw_docs(ds)
    deleted = delete_planned(ds)
    assert deleted.count == GROUPS * (SIZE - 1) and len(ds) == N - deleted.count
    files = _files(small_disk)
    _fill(small_disk)
    rc, out, err = _cli(env, "undelete", "--dataset", ds.name, "--last")
    _no_space_line(rc, err, journal.journal_dir(ds))
    # All or nothing: no sample back, the journal still to restore, no temporary.
    assert fo_adapter.sample_collection(ds).count_documents({}) == N - deleted.count
    assert [e.restored_at for e in journal.list_journals(ds)] == [None]
    assert _files(small_disk) == files
    _free(small_disk)
    rc, out, err = _cli(env, "undelete", "--dataset", ds.name, "--last")
    assert rc == 0 and out[0].startswith(f"restored {deleted.count} samples from {deleted.journal}") and \
        len(out) == 1, err
    assert _raw_docs(ds) == before  # every sample once, byte for byte
    assert journal.load(deleted.journal)["restored_at"]
    assert _temporaries(small_disk) == []
    rc, out, err = _cli(env, "undelete", "--dataset", ds.name, "--last")
    assert rc == 2 and "no deletion journal left to restore" in err[0], err


RELOAD = """
import sys, fiftyone as fo, lookalike.similarity as ls
ds = fo.load_dataset(sys.argv[1])
print("NEAREST", ls.nearest(ds, "sim", query_ids=[ds.first().id], k=3)[0])
"""


@pytest.mark.system
def test_two_processes_reloading_a_stale_index_never_write_into_each_others_files(
        ds, env, small_disk, tmp_path):
    name = artefacts.run_directory_name(ds, "sim")
    folder = artefacts.build_path(ds, name)
    os.remove(os.path.join(folder, "meta.json"))  # stale: both read the field again
    marker = tmp_path / "written"
    first = subprocess.Popen([sys.executable, "-c", RELOAD, ds.name], text=True,
                             env=dict(env, LOOKALIKE_FAULT="artefacts.written:hold",
                                      LOOKALIKE_FAULT_FILE=str(marker)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # The first has written its new vectors and ids (under names of its own) and
        # holds the artefacts: the second answers without writing them.
        processes.reached(marker, first, what="artefacts.written")
        mine = _files(small_disk)
        rc, out, err = _cli(env, "search", "--dataset", ds.name, "--brain-key", "sim",
                            "--sample-id", ds.first().id, "-k", "3")
        assert rc == 0 and len(out) == 3, err
        assert _files(small_disk) == mine
        os.remove(marker)  # the first goes on
        out, err = first.communicate(timeout=300)
    finally:
        processes.stop(first)
    assert first.returncode == 0 and "NEAREST" in out, err[-2000:]
    assert _temporaries(small_disk) == []
    saved = artefacts.load(ds, name, "emb")
    assert saved is not None, os.listdir(folder)
    matrix, ids = saved
    assert sorted(ids) == sorted(ds.values("id")) and matrix.shape == (N, DIM)


UNDELETE = """
import sys, fiftyone as fo
from lookalike.curation import journal
print("RESTORED", journal.restore(fo.load_dataset(sys.argv[1]), last=True).restored)
"""


@pytest.mark.system
def test_an_undelete_killed_before_marking_its_journal_is_finished_by_a_rerun(
        ds, env, small_disk, tmp_path):
    lc.find_duplicates(ds, "sim", threshold=0.01, verify=False)
    before = _raw_docs(ds)
    deleted = delete_planned(ds)
    killed = subprocess.run([sys.executable, "-c", UNDELETE, ds.name], text=True,
                            capture_output=True, timeout=300,
                            env=dict(env, LOOKALIKE_FAULT="undelete.inserted:kill",
                                     LOOKALIKE_FAULT_FILE=str(tmp_path / "inserted")))
    assert killed.returncode == -9, killed.stderr[-2000:]
    # Every sample is back, the journal not marked yet; its marked copy was left behind.
    assert _raw_docs(ds) == before
    assert [e.restored_at for e in journal.list_journals(ds)] == [None]
    assert len(_temporaries(small_disk)) == 1
    rc, out, err = _cli(env, "undelete", "--dataset", ds.name, "--last")
    assert rc == 0 and out == [f"restored 0 samples from {deleted.journal} "
                               f"({deleted.count} were still there)"], err
    assert _raw_docs(ds) == before and journal.load(deleted.journal)["restored_at"]
    assert _temporaries(small_disk) == []  # the dead process's temporary, removed
