"""Importing folders: odd modes import, bad files are reported, nothing is half-imported."""

import os
import subprocess
import sys

import fiftyone as fo
import pytest

import imagefiles as files
from lookalike.images.folder_import import ImageImportError, import_images


@pytest.fixture
def mixed_folder(tmp_path):
    """Two good photos, the odd modes, a truncated JPEG and non-image files, in sub-folders."""
    root = tmp_path / "images"
    (root / "cats").mkdir(parents=True)
    (root / "odd" / "deeper").mkdir(parents=True)
    files.write_jpeg(str(root / "cats" / "chelsea.jpg"))
    files.write_jpeg(str(root / "cats" / "astronaut.jpg"), name="astronaut")
    files.write_png16(str(root / "odd" / "camera16.png"))
    files.write_rgba_png(str(root / "odd" / "rgba.png"))
    files.write_palette_gif(str(root / "odd" / "deeper" / "palette.gif"))
    files.write_truncated_jpeg(str(root / "odd" / "truncated.jpg"))
    (root / "README.txt").write_text("not an image")
    (root / "odd" / "fake.png").write_text("text with an image extension")
    (root / ".hidden.jpg").write_text("hidden files are ignored")
    return root


def test_imports_every_readable_image_and_reports_the_rest(mixed_folder, dataset_name):
    report = import_images(str(mixed_folder), dataset_name)
    ds = fo.load_dataset(dataset_name)
    assert ds.persistent
    names = sorted(os.path.basename(p) for p in ds.values("filepath"))
    assert names == ["astronaut.jpg", "camera16.png", "chelsea.jpg", "palette.gif", "rgba.png"]
    assert report.imported == 5
    reasons = {os.path.basename(s.path): s.reason for s in report.failures}
    assert set(reasons) == {"README.txt", "fake.png", "truncated.jpg"}
    assert "truncated" in reasons["truncated.jpg"]
    assert "not an image file" in reasons["README.txt"]
    assert "not a recognised image format" in reasons["fake.png"]
    assert "truncated.jpg" in report.summary()
    # Metadata comes from the decode, and the original mode is kept.
    s16 = ds.match(fo.ViewField("filepath").ends_with("camera16.png")).first()
    assert s16.image_mode == "I;16"
    assert (s16.metadata.width, s16.metadata.height) == files.photo("camera").size
    gif = ds.match(fo.ViewField("filepath").ends_with("palette.gif")).first()
    assert gif.image_mode == "P" and gif.metadata.mime_type == "image/gif"


def test_non_recursive_and_labels_from_folders(mixed_folder, dataset_name):
    report = import_images(str(mixed_folder / "odd"), dataset_name, recursive=False)
    assert report.imported == 2  # camera16.png, rgba.png; palette.gif is deeper
    fo.delete_dataset(dataset_name)
    import_images(str(mixed_folder), dataset_name, labels_from_folders=True)
    labels = fo.load_dataset(dataset_name).count_values("ground_truth.label")
    assert labels == {"cats": 2, "odd": 2, "odd/deeper": 1}


def test_missing_path(tmp_path, dataset_name):
    with pytest.raises(ImageImportError, match="no such folder"):
        import_images(str(tmp_path / "nowhere"), dataset_name)
    assert not fo.dataset_exists(dataset_name)


def test_file_instead_of_folder(tmp_path, dataset_name):
    path = files.write_jpeg(str(tmp_path / "a.jpg"))
    with pytest.raises(ImageImportError, match="is a file, not a folder"):
        import_images(path, dataset_name)


def test_empty_folder(tmp_path, dataset_name):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageImportError, match="contains no files"):
        import_images(str(tmp_path / "empty"), dataset_name)
    assert not fo.dataset_exists(dataset_name)


def test_folder_without_images(tmp_path, dataset_name):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    (folder / "b.pdf").write_bytes(b"%PDF-1.4")
    files.write_truncated_jpeg(str(folder / "c.jpg"))
    with pytest.raises(ImageImportError, match="no readable images among 3 files") as err:
        import_images(str(folder), dataset_name)
    assert "c.jpg" in str(err.value) and "truncated" in str(err.value)
    assert not fo.dataset_exists(dataset_name)


def test_existing_dataset_is_kept_unless_asked(mixed_folder, dataset_name):
    import_images(str(mixed_folder / "cats"), dataset_name)
    with pytest.raises(ImageImportError, match="already exists"):
        import_images(str(mixed_folder), dataset_name)
    assert len(fo.load_dataset(dataset_name)) == 2
    import_images(str(mixed_folder), dataset_name, overwrite=True)
    assert len(fo.load_dataset(dataset_name)) == 5


def test_append_adds_only_new_files(mixed_folder, dataset_name):
    import_images(str(mixed_folder / "cats"), dataset_name)
    report = import_images(str(mixed_folder), dataset_name, append=True)
    assert report.imported == 3
    assert len(fo.load_dataset(dataset_name)) == 5
    report = import_images(str(mixed_folder), dataset_name, append=True)
    assert report.imported == 0 and len(fo.load_dataset(dataset_name)) == 5


def test_append_through_a_symlinked_folder_adds_nothing_twice(mixed_folder, dataset_name,
                                                              tmp_path):
    import_images(str(mixed_folder / "cats"), dataset_name)
    link = tmp_path / "link"
    os.symlink(mixed_folder / "cats", link)
    # The same files reached through the link are the dataset's samples already.
    report = import_images(str(link), dataset_name, append=True)
    assert report.imported == 0 and len(fo.load_dataset(dataset_name)) == 2


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_rotated_jpeg_gets_the_size_fiftyone_computes(tmp_path, dataset_name, orientation):
    from PIL import Image

    folder = tmp_path / "rotated"
    folder.mkdir()
    path = str(folder / "rotated.jpg")
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6, 8: a quarter turn to view; 3: a half turn
    Image.new("RGB", (60, 40), (200, 30, 30)).save(path, exif=exif, quality=90)
    files.write_jpeg(str(folder / "plain.jpg"))
    import_images(str(folder), dataset_name)
    ds = fo.load_dataset(dataset_name)
    for sample in ds:
        built = fo.ImageMetadata.build_for(sample.filepath)
        assert (sample.metadata.width, sample.metadata.height) == (built.width, built.height), \
            sample.filepath
    got = ds.match(fo.ViewField("filepath") == path).first().metadata
    assert (got.width, got.height) == ((40, 60) if orientation in (6, 8) else (60, 40))


def test_failure_while_writing_leaves_nothing_behind(mixed_folder, dataset_name, monkeypatch):
    import_images(str(mixed_folder / "cats"), dataset_name)
    real_add = fo.Dataset.add_samples

    def add_then_die(self, samples, *args, **kwargs):
        real_add(self, list(samples)[:1], *args, **kwargs)  # part lands in MongoDB ...
        raise KeyboardInterrupt("killed while writing")  # ... then the job dies

    monkeypatch.setattr(fo.Dataset, "add_samples", add_then_die)
    before = set(fo.list_datasets())
    with pytest.raises(KeyboardInterrupt):
        import_images(str(mixed_folder), dataset_name, overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        import_images(str(mixed_folder), dataset_name, append=True)
    monkeypatch.undo()
    assert set(fo.list_datasets()) == before  # no temporary dataset left over
    ds = fo.load_dataset(dataset_name)  # the old dataset survived, unchanged
    assert sorted(os.path.basename(p) for p in ds.values("filepath")) == [
        "astronaut.jpg",
        "chelsea.jpg",
    ]


def test_cli_import_and_its_errors(mixed_folder, dataset_name, subprocess_env):
    cmd = [sys.executable, "-m", "lookalike.cli", "import", "--images"]
    ok = subprocess.run(cmd + [str(mixed_folder), "--dataset", dataset_name],
                        capture_output=True, text=True, env=subprocess_env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert f"imported 5 images into dataset '{dataset_name}'" in ok.stdout
    assert "truncated.jpg" in ok.stdout
    assert len(fo.load_dataset(dataset_name)) == 5

    bad = subprocess.run(cmd + [str(mixed_folder / "nowhere"), "--dataset", "x"],
                         capture_output=True, text=True, env=subprocess_env, timeout=300)
    assert bad.returncode == 2
    assert "no such folder" in bad.stderr and "Traceback" not in bad.stderr


def test_a_camera_size_jpeg_is_checked_whole_at_its_smallest_scale(tmp_path, dataset_name):
    # The import decodes a JPEG at 1/8 scale (it keeps no pixels): its size must still be
    # the file's, and a file cut short or damaged anywhere must still be refused.
    folder = tmp_path / "camera"
    folder.mkdir()
    big = files.photo("astronaut").convert("RGB").resize((3000, 2000))
    big.save(folder / "big.jpg", quality=90)
    data = (folder / "big.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: int(len(data) * 0.9)])
    report = import_images(str(folder), dataset_name)
    assert report.imported == 1
    assert "truncated" in {os.path.basename(f.path): f.reason for f in report.failures}[
        "cut.jpg"]
    sample = fo.load_dataset(dataset_name).first()
    assert (sample.metadata.width, sample.metadata.height) == (3000, 2000)
