"""Hostile and odd files: decompression bombs, truncated and vanished images, model folders
with links, pickles and files their manifest does not list.

Real files throughout: a PNG whose header claims 30000 x 30000 (Pillow itself raises
DecompressionBombError on it), a JPEG cut off half-way, a photo deleted after import, a
real encoder folder; the CLI's wording is checked in this process (``cli_runner``).
"""

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

import imagefiles as files
from cli_runner import run_cli
import lookalike
from lookalike.curation.duplicates import find_duplicates
from lookalike.curation.keep import choose_kept, image_size_key, sharpness
from lookalike.encoders import EncoderStoreError, import_encoder, list_encoders, read_manifest
from lookalike.encoders.data import load_images
from lookalike.encoders.preprocessing import input_manifest, load_input
from lookalike.images.decode import (
    UnreadableImageError,
    image_header_size,
    load_image,
    open_image,
)

AT_32 = input_manifest("contrastive", 32)  # the input of a 32 px encoder
BOMB_REASON = "30000 x 30000 pixels exceeds the limit of 250000000 (LOOKALIKE_MAX_PIXELS)"


def write_bomb_png(path, width=30000, height=30000):
    """A valid 1x1 PNG whose IHDR (CRC fixed) claims ``width`` x ``height``: 69 bytes."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 30, 30)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    with open(path, "wb") as f:
        f.write(bytes(data))
    return path


@pytest.fixture
def folder(tmp_path, demo_records):
    """4 photos, a bomb, a truncated JPEG; ``gone.jpg`` is a photo the test may delete."""
    root = tmp_path / "images"
    root.mkdir()
    photos = [r["filepath"] for r in demo_records if r["source"] == "photo"
              and r["gt_edit"] == "original"][:5]
    for n, src in enumerate(photos[:4]):
        shutil.copy(src, root / f"photo{n}{os.path.splitext(src)[1]}")
    with Image.open(photos[4]) as img:
        img.convert("RGB").save(root / "gone.jpg", quality=90)
    write_bomb_png(str(root / "bomb.png"))
    files.write_truncated_jpeg(str(root / "cut.jpg"))
    return root


def _by_name(paths):
    return {os.path.basename(p).split(".")[0]: p for p in paths}


def test_the_bomb_is_one_for_pillow(tmp_path):
    path = write_bomb_png(str(tmp_path / "bomb.png"))
    assert os.path.getsize(path) < 100
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)


def test_every_decoder_refuses_the_bomb_with_its_size(tmp_path):
    path = write_bomb_png(str(tmp_path / "bomb.png"))
    before = Image.MAX_IMAGE_PIXELS
    for decode in (open_image, load_image, image_header_size, lambda p: load_input(p, AT_32)):
        with pytest.raises(UnreadableImageError) as e:
            decode(path)
        assert str(e.value) == f"{path}: {BOMB_REASON}"
        assert isinstance(e.value, lookalike.core.errors.LookalikeError)
    assert Image.MAX_IMAGE_PIXELS == before  # Pillow's own limit is back for everyone else


def test_missing_truncated_and_odd_files_give_their_reason(tmp_path):
    cut = files.write_truncated_jpeg(str(tmp_path / "cut.jpg"))
    with pytest.raises(UnreadableImageError, match="truncated"):
        load_input(cut, AT_32)
    gone = files.write_jpeg(str(tmp_path / "gone.jpg"))
    os.remove(gone)
    for decode in (load_image, image_header_size, lambda p: load_input(p, AT_32)):
        with pytest.raises(UnreadableImageError) as e:
            decode(gone)
        assert e.value.reason == "file not found"
    with pytest.raises(UnreadableImageError, match="not a regular file"):
        load_image(str(tmp_path))
    (tmp_path / "text.png").write_text("not a picture")
    with pytest.raises(UnreadableImageError, match="not a recognised image format"):
        load_image(str(tmp_path / "text.png"))


def test_pillow_limit_does_not_fire_before_ours(tmp_path, monkeypatch):
    # Pillow's limit far below the photo: ours (250 M) decides, Pillow's is untouched after.
    path = files.write_jpeg(str(tmp_path / "a.jpg"))
    size = files.photo("chelsea").size
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)  # Pillow alone refuses it
    img = load_image(path)
    assert img.size == size and img.width * img.height > 2000
    assert image_header_size(path) == img.size
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_concurrent_decodes_restore_pillow_limit(tmp_path, demo_records):
    photos = [r["filepath"] for r in demo_records if r["source"] == "photo"][:40]
    bomb = write_bomb_png(str(tmp_path / "bomb.png"))
    before = Image.MAX_IMAGE_PIXELS
    loaded = load_images(photos + [bomb] * 8, AT_32, num_workers=8)
    assert len(loaded.sample_ids) == 40 and len(loaded.failures) == 8
    assert {f.reason for f in loaded.failures} == {BOMB_REASON}
    assert Image.MAX_IMAGE_PIXELS == before


def test_max_pixels_env_in_a_child_process(tmp_path, subprocess_env):
    path = files.write_jpeg(str(tmp_path / "a.jpg"))
    w, h = files.photo("chelsea").size
    code = ("from lookalike.images.decode import load_image\n"
            "try:\n    load_image(%r)\nexcept ValueError as e:\n    print(e)\n"
            "else:\n    print('decoded')\n" % path)

    def run(value):
        env = dict(subprocess_env, LOOKALIKE_MAX_PIXELS=value)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip()

    assert run("100000") == f"{path}: {w} x {h} pixels exceeds the limit of 100000 (LOOKALIKE_MAX_PIXELS)"
    assert run(str(w * h)) == "decoded"  # the limit itself is allowed
    assert run("lots") == "LOOKALIKE_MAX_PIXELS='lots': not a positive whole number of pixels"


def test_import_skips_the_bomb_and_imports_the_rest(folder, dataset_name):
    report = lookalike.import_images(str(folder), dataset_name)
    assert report.imported == 5
    reasons = {os.path.basename(s.path): s.reason for s in report.failures}
    assert reasons["bomb.png"] == BOMB_REASON
    assert "truncated" in reasons["cut.jpg"]
    assert "bomb.png: " + BOMB_REASON in report.summary()


def test_cli_import_lists_the_bomb(folder, dataset_name):
    out = run_cli("import", "--images", folder, "--dataset", dataset_name)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "imported 5 images" in out.stdout and BOMB_REASON in out.stdout
    assert "Traceback" not in out.stderr


@pytest.fixture
def imported(folder, dataset_name):
    """The folder imported (bomb and truncated file skipped by the import itself), plus both
    added as samples the way another tool would, and one photo deleted after import."""
    lookalike.import_images(str(folder), dataset_name)
    ds = fo.load_dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=str(folder / "bomb.png")),
                    fo.Sample(filepath=str(folder / "cut.jpg"))])
    gone = ds.match(fo.ViewField("filepath").ends_with("gone.jpg")).first().filepath
    os.remove(gone)
    return ds


def test_embedding_writes_the_reason_and_a_rerun_succeeds(imported, copies_encoder):
    from lookalike.embeddings.compute import compute_embeddings

    report = compute_embeddings(imported, copies_encoder, "emb")
    assert report.embedded == 4
    reasons = {os.path.basename(f.path): f.reason for f in report.failures}
    assert reasons["bomb.png"] == BOMB_REASON and reasons["gone.jpg"] == "file not found"
    assert "truncated" in reasons["cut.jpg"]
    errors = dict(zip(*imported.values(["filepath", "emb_error"])))
    assert errors[str(imported.match(fo.ViewField("filepath").ends_with("bomb.png"))
                      .first().filepath)] == BOMB_REASON
    again = compute_embeddings(imported, copies_encoder, "emb")  # failed ones are retried
    assert again.embedded == 0 and len(again.failures) == 3
    assert len(imported.exists("emb")) == 4


def test_training_skips_and_lists_them(imported, store_dir):
    from lookalike.encoders import train_encoder

    result = train_encoder(imported, "contrastive", "hostile", image_size=32, epochs=1,
                           batch_size=4, width=0.25, store_dir=store_dir)
    reasons = {os.path.basename(f.path): f.reason for f in result.failures}
    assert reasons == {"bomb.png": BOMB_REASON, "gone.jpg": "file not found",
                       "cut.jpg": reasons["cut.jpg"]} and "truncated" in reasons["cut.jpg"]
    assert result.manifest["training_data"]["num_samples"] == len(imported)


def test_query_by_a_hostile_image_is_one_line(imported, copies_encoder, folder):
    import lookalike.similarity as ls
    from lookalike.embeddings.compute import compute_embeddings

    compute_embeddings(imported, copies_encoder, "emb")
    ls.build_index(imported, "emb", brain_key="emb_sim")
    imported.persistent = True
    cut = str(folder / "cut.jpg")
    for query, reason in ((str(folder / "bomb.png"), BOMB_REASON),
                          (str(folder / "gone.jpg"), "file not found"),
                          (cut, "truncated")):
        out = run_cli("search", "--dataset", imported.name, "--brain-key", "emb_sim",
                      "--image", query)
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        assert out.returncode == 2, out.stderr[-2000:]
        assert "Traceback" not in out.stderr
        assert lines[-1].startswith(f"lookalike search: error: {query}: ") and reason in lines[-1]
    # and from Python: the same error, a LookalikeError
    with pytest.raises(UnreadableImageError, match="exceeds the limit"):
        ls.embed_query_image(ls.load_index(imported, "emb_sim"), str(folder / "bomb.png"))


def test_keep_policies_with_a_bomb_and_a_deleted_file(tmp_path, demo_records):
    photo = next(r["filepath"] for r in demo_records if r["source"] == "photo")
    big = str(tmp_path / "big.png")
    small = str(tmp_path / "small.png")
    with Image.open(photo) as img:
        img.convert("RGB").save(big)
        img.convert("RGB").resize((img.width // 2, img.height // 2)).save(small)
    bomb = write_bomb_png(str(tmp_path / "bomb.png"))
    gone = files.write_jpeg(str(tmp_path / "gone.jpg"))
    os.remove(gone)
    assert image_size_key(bomb) == (-1, -1) and image_size_key(gone) == (-1, -1)
    assert sharpness(bomb) == 0.0 and sharpness(gone) == 0.0
    paths = [bomb, small, big, gone]
    assert choose_kept([0, 1, 2, 3], "largest", paths) == 2
    assert choose_kept([0, 1, 2, 3], "sharpest", paths) in (1, 2)
    # a group with nothing readable still has its kept sample (it used to crash)
    for keep in ("largest", "sharpest"):
        assert choose_kept([0, 3], keep, paths) == 0


def test_find_duplicates_over_byte_identical_bombs(tmp_path, dataset_name):
    bombs = [write_bomb_png(str(tmp_path / f"bomb{n}.png")) for n in range(3)]
    ds = fo.Dataset(dataset_name)
    ds.add_samples([fo.Sample(filepath=p) for p in bombs])
    for keep in ("largest", "sharpest"):
        report = find_duplicates(ds, keep=keep)
        assert report.num_groups == 1 and len(ds.match_tags("duplicate")) == 2


def test_copies_skip_a_file_deleted_after_indexing(imported, copies_encoder, folder):
    import lookalike.similarity as ls
    from lookalike.curation.synthetic_copies import copy_distances
    from lookalike.images.edits import EDITS
    from lookalike.embeddings.compute import compute_embeddings

    compute_embeddings(imported, copies_encoder, "emb")
    index = ls.build_index(imported, "emb", brain_key="emb_sim")
    first = imported.exists("emb").first().filepath
    # 4 indexed images, one copy each per edit (not counted: a copy its edit left unchanged
    # for the encoder, as grayscale leaves a gray image)
    before = {e: len(v) for e, v in copy_distances(index, num_images=10).items()}
    assert max(before.values()) == 4 and min(before.values()) >= 1, before
    os.remove(first)
    out = copy_distances(index, num_images=10)
    assert set(out) == set(EDITS)
    assert all(before[e] - 1 <= len(out[e]) <= 3 for e in EDITS), (before, out)
    # the originals are preprocessed exactly as embedded files are (the same draft decode):
    # the vector the copies are measured from is the field's
    sample = imported.exists("emb").last()
    encoder = ls.encoder_of(index)
    again = encoder.embed(load_input(sample.filepath, encoder.manifest)[np.newaxis])[0]
    assert float(again @ np.asarray(sample["emb"])) > 0.99999


# -- model folders ------------------------------------------------------------------
@pytest.fixture
def shared_folder(tmp_path, copies_encoder):
    """A real encoder folder as a colleague might send it, with things that must stay behind."""
    src = os.path.join(os.environ["LOOKALIKE_MODELS_DIR"], copies_encoder)
    shared = tmp_path / "from-a-colleague"
    shutil.copytree(src, shared)
    private = tmp_path / "private"
    private.mkdir()
    (private / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n")
    os.symlink(private, shared / "private")
    os.symlink(private / "id_rsa", shared / "key")
    (shared / "x.pkl").write_bytes(b"\x80\x04\x95cos\nsystem\n.")  # never loaded
    (shared / "extra").mkdir()
    (shared / "extra" / "notes.txt").write_text("unlisted")
    return shared


def _tree(root):
    out = set()
    for d, dirs, names in os.walk(root):
        for n in dirs + names:
            p = os.path.join(d, n)
            assert not os.path.islink(p), p
            if os.path.isfile(p):
                out.add(os.path.relpath(p, root))
    return out


def test_load_copies_only_the_listed_files(shared_folder, store_dir):
    out = run_cli("load", "--path", shared_folder, "--name", "shared")  # into store_dir
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-1] == (
        "  left behind 4 entries the manifest does not list: extra/notes.txt, "
        "key (symbolic link), private (symbolic link), x.pkl")
    copy = os.path.join(store_dir, "shared")
    manifest = read_manifest(copy)
    assert _tree(copy) == {"manifest.json", *manifest["files"]}
    assert manifest["imported_from"] == str(shared_folder)
    assert not any("id_rsa" in n or n.endswith(".pkl") for n in _tree(store_dir))
    assert [e["name"] for e in list_encoders(store_dir)] == ["shared"]


def test_a_listed_file_that_is_a_link_is_refused(shared_folder, store_dir, tmp_path):
    manifest = json.loads((shared_folder / "manifest.json").read_text())
    weights = next(iter(manifest["files"]))
    outside = tmp_path / "outside.bin"
    shutil.move(shared_folder / weights, outside)
    os.symlink(outside, shared_folder / weights)  # same bytes, checksum would pass
    out = run_cli("load", "--path", shared_folder, "--name", "linked")  # into store_dir
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"lookalike load: error: {shared_folder}: manifest entry {weights} is (or lies under) a "
        "symbolic link or not a folder: refused, links are not followed")
    assert not os.path.exists(os.path.join(store_dir, "linked"))
    assert [e for e in os.listdir(store_dir) if "linked" in e] == []  # no staging left


@pytest.mark.parametrize("entry", ["../outside.bin", "/etc/passwd", "sub/../../x"])
def test_a_listed_path_outside_is_refused(shared_folder, store_dir, entry):
    path = shared_folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"][entry] = "0" * 64
    path.write_text(json.dumps(manifest))
    with pytest.raises(EncoderStoreError, match="only plain relative paths inside"):
        import_encoder(str(shared_folder), name="outside", store_dir=store_dir)
    assert not os.path.exists(os.path.join(store_dir, "outside"))


def test_a_file_swapped_during_the_copy_is_caught(shared_folder, store_dir, monkeypatch):
    """The original changes while it is being copied and changes back: only a check of
    the copy (not of the original) sees it."""
    from lookalike.encoders import store

    manifest = json.loads((shared_folder / "manifest.json").read_text())
    weights = next(iter(manifest["files"]))
    original = (shared_folder / weights).read_bytes()
    real_copy = store._copy_fd

    def copy_while_swapped(fd, dest):
        if dest.endswith(weights):
            with open(shared_folder / weights, "r+b") as f:
                f.write(b"\0" * 64)  # in place: the same inode our open fd reads
            try:
                return real_copy(fd, dest)
            finally:
                (shared_folder / weights).write_bytes(original)
        return real_copy(fd, dest)

    monkeypatch.setattr(store, "_copy_fd", copy_while_swapped)
    with pytest.raises(EncoderStoreError, match=f"weights file {weights} is corrupt"):
        import_encoder(str(shared_folder), name="swapped", store_dir=store_dir)
    assert read_manifest(str(shared_folder))  # the original is fine again
    assert os.listdir(store_dir) == []


def test_an_import_killed_after_copying_leaves_no_encoder(shared_folder, store_dir,
                                                          subprocess_env, tmp_path):
    marker = tmp_path / "reached"
    env = dict(subprocess_env, LOOKALIKE_MODELS_DIR=store_dir,
               LOOKALIKE_FAULT="import.copied:kill", LOOKALIKE_FAULT_FILE=str(marker))
    cmd = [sys.executable, "-m", "lookalike.cli", "load", "--path", str(shared_folder),
           "--name", "killed"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == -9 and marker.exists()
    assert not os.path.exists(os.path.join(store_dir, "killed"))
    assert list_encoders(store_dir) == []
    env.pop("LOOKALIKE_FAULT")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert [e["name"] for e in list_encoders(store_dir)] == ["killed"]
    assert read_manifest(os.path.join(store_dir, "killed"))["name"] == "killed"


def test_replacing_an_encoder_killed_between_the_renames_keeps_the_old_one(
        shared_folder, store_dir, subprocess_env, tmp_path):
    """publish(overwrite=True) renames the old encoder away, then the new one in."""
    cmd = [sys.executable, "-m", "lookalike.cli", "load", "--path", str(shared_folder),
           "--name", "kept"]
    env = dict(subprocess_env, LOOKALIKE_MODELS_DIR=store_dir)
    assert subprocess.run(cmd, capture_output=True, text=True, env=env,
                          timeout=300).returncode == 0
    before = read_manifest(os.path.join(store_dir, "kept"))
    marker = tmp_path / "reached"
    killed = dict(env, LOOKALIKE_FAULT="store.publish.between_renames:kill",
                  LOOKALIKE_FAULT_FILE=str(marker))
    out = subprocess.run(cmd + ["--overwrite"], capture_output=True, text=True, env=killed,
                         timeout=300)
    assert out.returncode == -9 and marker.exists()
    assert not os.path.exists(os.path.join(store_dir, "kept"))  # the window itself
    # The next look at the store puts the previous encoder back, whole.
    assert [e["name"] for e in list_encoders(store_dir)] == ["kept"]
    assert read_manifest(os.path.join(store_dir, "kept")) == before
    assert subprocess.run(cmd + ["--overwrite"], capture_output=True, text=True, env=env,
                          timeout=300).returncode == 0
    assert [e["name"] for e in list_encoders(store_dir)] == ["kept"]
    assert not [n for n in os.listdir(store_dir) if n.endswith(".old")]
