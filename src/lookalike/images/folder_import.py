"""Importing a folder of images into a FiftyOne dataset, all or nothing.

Every file is decoded before anything is written, so a truncated JPEG or a
stray PDF is reported with its path and reason instead of surfacing later as a
failed embedding. Valid images of unusual modes (16-bit, RGBA, palette, CMYK)
are imported as they are; :mod:`lookalike.images.decode` converts them to RGB on use.
The dataset is only written once the whole folder has been checked, and a
failure while writing removes what was written. One import of a dataset name runs
at a time (a lease on the name). Appending adds whole samples in batches: a kill
leaves some of the new files as samples, and a rerun adds exactly the others.
"""

import mimetypes
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from lookalike.core import faults
from lookalike.images.decode import (
    ImageFailure,
    UnreadableImageError,
    displayed_size,
    failure_lines,
    has_image_extension,
    open_image,
)
from lookalike.core.progress import report


from lookalike.core.errors import ImageImportError  # noqa: F401 (re-exported)


@dataclass
class ImportReport:
    dataset_name: str
    imported: int
    failures: list = field(default_factory=list)  # ImageFailure: files skipped

    def summary(self, max_listed=20):
        lines = [f"imported {self.imported} images into dataset '{self.dataset_name}'"]
        if self.failures:
            lines.append(f"skipped {len(self.failures)} files:")
            lines += failure_lines(self.failures, max_listed)
        return "\n".join(lines)


@dataclass
class _Probe:
    path: str
    width: int = 0
    height: int = 0
    mode: str = ""
    channels: int = 0
    size_bytes: int = 0
    error: str = ""


def list_files(directory, recursive=True):
    """Sorted absolute paths of the non-hidden files under ``directory``."""
    directory = os.path.abspath(os.path.expanduser(directory))
    if not os.path.exists(directory):
        raise ImageImportError(f"{directory}: no such folder")
    if not os.path.isdir(directory):
        raise ImageImportError(f"{directory}: is a file, not a folder of images")
    paths = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        paths.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith("."))
    return paths


def resolved_paths(paths):
    """Each path with its symlinks resolved, like ``os.path.realpath`` (folders resolved once)."""
    folders, out = {}, []
    for path in paths:
        folder, name = os.path.split(path)
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        full = os.path.join(folders[folder], name)
        out.append(os.path.realpath(full) if os.path.islink(full) else full)
    return out


def samples_by_file(samples):
    """``{resolved file path: sample id}``: the files that are samples already.

    Resolved on both sides, so a file reached through a symlinked folder is
    known as the sample it is (compare ``resolved_paths`` of the candidates).
    """
    paths, ids = samples.values(["filepath", "id"])
    return dict(zip(resolved_paths(paths), ids))


def _probe(path):
    probe = _Probe(path=path)
    if not has_image_extension(path):
        ext = os.path.splitext(path)[1] or "no extension"
        probe.error = f"not an image file ({ext})"
        return probe
    try:
        # Every byte of the data is decoded (a truncated or corrupt file is refused), but
        # a JPEG at its smallest DCT scale: the import keeps no pixels (8x faster).
        with open_image(path, min_side=1) as img:
            probe.width, probe.height = displayed_size(img)
            probe.mode = img.mode
            probe.channels = len(img.getbands())
        probe.size_bytes = os.path.getsize(path)
    except UnreadableImageError as e:
        probe.error = e.reason
    return probe


def probe_images(paths, num_workers=None, progress=None):
    """Decodes every path (in threads: Pillow releases the GIL while decoding).

    ``progress(fraction, label)``.
    """
    num_workers = num_workers or min(8, (os.cpu_count() or 1) + 1)
    probes = []
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        for i, probe in enumerate(pool.map(_probe, paths), 1):
            probes.append(probe)
            report(progress, i, len(paths), f"checked {i}/{len(paths)} files")
    return probes


def _make_sample(probe, directory, labels_from_folders):
    import fiftyone as fo

    mime = mimetypes.guess_type(probe.path)[0] or "image/unknown"
    sample = fo.Sample(
        filepath=probe.path,
        metadata=fo.ImageMetadata(
            width=probe.width,
            height=probe.height,
            num_channels=probe.channels,
            size_bytes=probe.size_bytes,
            mime_type=mime,
        ),
        image_mode=probe.mode,
    )
    if labels_from_folders:
        folder = os.path.relpath(os.path.dirname(probe.path), directory)
        if folder != ".":
            sample["ground_truth"] = fo.Classification(label=folder.replace(os.sep, "/"))
    return sample


def import_images(
    directory,
    dataset_name,
    recursive=True,
    overwrite=False,
    append=False,
    labels_from_folders=False,
    persistent=True,
    progress=None,
):
    """Imports the images under ``directory`` into the dataset ``dataset_name``.

    Args:
        directory: a folder; searched recursively unless ``recursive=False``
        dataset_name: the FiftyOne dataset to create
        overwrite: replace an existing dataset of that name (only once the new
            one has been written completely)
        append: add to an existing dataset, skipping files it already holds
        labels_from_folders: store each image's sub-folder (relative to
            ``directory``) as a ``ground_truth`` classification
        persistent: keep the dataset after this process exits
        progress: optional ``progress(fraction, label)`` while files are checked

    Returns:
        an :class:`ImportReport`; files that are not images or cannot be decoded
        are listed in ``report.failures`` (:class:`~lookalike.images.decode.ImageFailure`).

    Raises:
        ImageImportError: the folder is missing or holds no readable image, or
        the dataset exists and neither ``overwrite`` nor ``append`` was given.
        Nothing is written in that case.
        LeaseHeldError: another import of ``dataset_name`` is running, or (append) a
        job is adding files to the dataset (``match --add``).
    """
    from lookalike.core import leases

    if overwrite and append:
        raise ImageImportError("choose either overwrite or append, not both")
    if not dataset_name or not str(dataset_name).strip():
        raise ImageImportError("a dataset name is required")
    directory = os.path.abspath(os.path.expanduser(directory))
    # One import of a name at a time (keyed by the name: the dataset may not exist yet):
    # a second one is refused in one line, before it reads or writes anything.
    with leases.hold(dataset_name, "import", job="import",
                     label=f"dataset '{dataset_name}'"):
        return _import_locked(directory, dataset_name, recursive, overwrite, append,
                              labels_from_folders, persistent, progress)


def _import_locked(directory, dataset_name, recursive, overwrite, append, labels_from_folders,
                   persistent, progress):
    import fiftyone as fo

    from lookalike.core import leases

    _recover(dataset_name)
    exists = fo.dataset_exists(dataset_name)
    if exists and not (overwrite or append):
        raise ImageImportError(
            f"dataset '{dataset_name}' already exists: pass overwrite=True to replace it "
            "or append=True to add to it (--overwrite / --append on the CLI)"
        )

    paths = list_files(directory, recursive=recursive)
    if not paths:
        raise ImageImportError(f"{directory}: the folder contains no files")
    if not (append and exists):
        probes = probe_images(paths, progress=progress)
        good = [p for p in probes if not p.error]
        failures = [ImageFailure(p.path, p.error) for p in probes if p.error]
        if not good:
            listed = "\n".join(failure_lines(failures, 10))
            raise ImageImportError(
                f"{directory}: no readable images among {len(paths)} files:\n{listed}")
        samples = [_make_sample(p, directory, labels_from_folders) for p in good]
        _write_then_rename(samples, dataset_name, exists, persistent)
        if exists:  # the replaced dataset's records and folders go with it
            from lookalike.core import orphans

            orphans.sweep()
        return ImportReport(dataset_name=dataset_name, imported=len(samples), failures=failures)

    dataset = fo.load_dataset(dataset_name)
    # Adding files to a dataset: `match --add` does it too, under the same lease.
    with leases.hold(dataset, ADD_LEASE, job="import", label=f"importing into '{dataset_name}'"):
        # Under the lease: which files are samples already is read after taking it.
        known = samples_by_file(dataset)
        paths = [p for p, real in zip(paths, resolved_paths(paths)) if real not in known]
        probes = probe_images(paths, progress=progress)
        good = [p for p in probes if not p.error]
        failures = [ImageFailure(p.path, p.error) for p in probes if p.error]
        samples = [_make_sample(p, directory, labels_from_folders) for p in good]
        _append(dataset, samples)
    return ImportReport(dataset_name=dataset_name, imported=len(samples), failures=failures)


ADD_LEASE = "match:import"  # the lease of a job adding files to a dataset
_APPEND_BATCH = 100


def _append(dataset, samples):
    """Adds ``samples`` in batches of whole samples. A kill between (or during) batches
    leaves whole samples of some files and none of the others: a rerun adds exactly the
    missing ones (files that are samples already are skipped). Any other failure removes
    what was added."""
    from fiftyone import ViewField as F

    from lookalike.core import leases
    from lookalike.core.errors import LeaseLostError

    try:
        for start in range(0, len(samples), _APPEND_BATCH):
            leases.check_held()
            dataset.add_samples(samples[start:start + _APPEND_BATCH], progress=False)
            faults.point("importer.append_batch")
    except LeaseLostError:
        raise  # another job may have taken these files as samples already: keep them
    except BaseException:
        # add_samples writes in batches: remove whatever part of ours landed.
        dataset.delete_samples(dataset.match(F("filepath").is_in([s.filepath for s in samples])))
        raise


_IMPORTING, _REPLACED = ".importing-", ".replaced-"


def _write_then_rename(samples, dataset_name, exists, persistent):
    """Writes under a temporary name, then takes the name: an existing dataset is
    only replaced once its successor is complete, and kept (renamed aside) until
    the successor holds the name. A kill at any step leaves the old dataset or
    the new one complete; :func:`_recover` (the next import) tidies up."""
    import fiftyone as fo

    from lookalike.core import leases

    uid = uuid.uuid4().hex[:8]
    # Not persistent while written: FiftyOne drops it if this process dies first.
    dataset = fo.Dataset(f"{dataset_name}{_IMPORTING}{uid}")
    # The lease tells a later import whether this one's writer is still alive.
    lease = leases.acquire(dataset, "import", job="import")
    old = None
    try:
        dataset.add_samples(samples, progress=False)
        faults.point("importer.after_write")
        # Persistent before it takes the name, so the name never holds a dataset
        # FiftyOne would drop.
        dataset.persistent = persistent
        if exists:
            old = fo.load_dataset(dataset_name)
            old.name = f"{dataset_name}{_REPLACED}{uid}"
            faults.point("importer.old_set_aside")
        dataset.name = dataset_name
        faults.point("importer.renamed")
        if old is not None:
            old.delete()
    except BaseException:
        if dataset.name != dataset_name:
            dataset.delete()
            if old is not None and not fo.dataset_exists(dataset_name):
                old.name = dataset_name
        raise
    finally:
        lease.release()


def _recover(dataset_name):
    """Finishes what a killed import of ``dataset_name`` left: an old dataset set
    aside gets its name back (or is deleted once its successor holds the name),
    and a temporary dataset whose writer is gone is deleted."""
    import fiftyone as fo

    from lookalike.core import leases

    for name in fo.list_datasets():
        if name.startswith(dataset_name + _REPLACED):
            if fo.dataset_exists(dataset_name):
                fo.delete_dataset(name)
            else:
                fo.load_dataset(name).name = dataset_name
    for name in fo.list_datasets():
        if name.startswith(dataset_name + _IMPORTING):
            leftover = fo.load_dataset(name)
            if leases.current(leftover, "import") is None:
                leftover.delete()
