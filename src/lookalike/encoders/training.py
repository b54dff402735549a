"""What every training job shares: its options, checkpoints, resume, stop, progress, publishing.

Every kind's ``train(images, name, <its settings>, **job_options)`` hands
``job_options`` to :class:`TrainingJob` (see its docstring): where the encoder
goes, whether to resume, who hears of each epoch, who may stop it.

A job writes into ``<store>/.<name>.partial/``: ``state.json`` (the settings and
the per-epoch history) and ``checkpoint-<epoch>.npz`` (every array needed to
continue: weights and optimiser state, saved with NumPy so loading never
unpickles). After each epoch the new checkpoint is written, then the state that
names it replaces the old one atomically (the commit), so a kill at any moment
leaves a matching pair. Running the same job again with the same settings
resumes after the last finished epoch; different settings are refused rather
than mixed. When the last epoch is done the encoder files and the manifest go
into ``.<name>.partial.ready/``, which is renamed to ``<store>/<name>``; the
partial directory is removed only after that, so a job killed while publishing
resumes with nothing left to train and publishes again.

Stopping: the ``should_stop`` callable, or a file named ``STOP`` in the partial
directory (``lookalike stop NAME``), ends the job after the current epoch's
checkpoint; it raises :class:`TrainingStopped` and can be resumed later.
"""

import json
import os
import shutil
import time

import numpy as np

from lookalike.core import faults, paths
from lookalike.encoders import store
from lookalike.core.progress import report

STOP_FILE = "STOP"
STATE_FILE = "state.json"
CHECKPOINT_FILE = "checkpoint.npz"


from lookalike.core.errors import TrainingConfigError, TrainingStopped  # noqa: F401 (re-exported)


class TrainingJob:
    """One training run of encoder ``name``.

    Options (every kind's ``train`` takes them as keywords):

    * ``store_dir``: the model store (default :func:`store.default_store_dir`);
    * ``overwrite``: replace an encoder of that name;
    * ``resume``: continue an unfinished run with the same settings (else start over);
    * ``progress(fraction, label)``: after every epoch (fraction of ``settings["epochs"]``);
    * ``on_epoch(epoch, epochs, metrics)``: after every epoch, with its metrics
      (``loss``, ``images_per_s``, ``val_loss`` where there is validation);
    * ``should_stop()``: polled between batches, True stops after the last checkpoint;
    * ``source``: what the images were (recorded as the manifest's ``training_data``).
    """

    def __init__(self, name, kind, settings, store_dir=None, overwrite=False, resume=True,
                 progress=None, on_epoch=None, should_stop=None, source=None):
        self.name = store.validate_name(name)
        self.kind = kind
        self.settings = json.loads(json.dumps(settings))  # plain JSON, comparable
        self.store_dir = store_dir or store.default_store_dir()
        self.final_dir = store.encoder_dir(name, self.store_dir)
        self.dir = store.partial_dir(name, self.store_dir)
        self.overwrite = overwrite
        self.resume = resume
        self.progress = progress
        self.on_epoch = on_epoch
        self.should_stop = should_stop
        self.source = source or {}
        self.epochs = int(self.settings["epochs"])
        self.history = []  # one dict per finished epoch
        self.checkpoint = None  # the file in self.dir holding the last epoch's arrays
        self.started = time.time()

    # -- set-up ---------------------------------------------------------------
    def open(self):
        """Prepares the partial directory; returns the number of epochs already done."""
        if os.path.exists(self.final_dir) and not self.overwrite:
            raise store.EncoderStoreError(
                f"an encoder named '{self.name}' already exists in {self.store_dir}: "
                "choose another name or pass overwrite=True"
            )
        state_path = os.path.join(self.dir, STATE_FILE)
        if os.path.isdir(self.dir) and self.resume and os.path.isfile(state_path):
            with open(state_path) as f:
                state = json.load(f)
            if state.get("kind") != self.kind or state.get("settings") != self.settings:
                raise TrainingConfigError(
                    f"an unfinished training run named '{self.name}' exists with other "
                    f"settings ({self.dir}): train with the same settings to resume it, "
                    "pass resume=False to start over, or choose another name"
                )
            self.history = state.get("history", [])
            self.checkpoint = state.get("checkpoint", CHECKPOINT_FILE)
            self._clear_stop()
            return len(self.history)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self._write_state()
        return 0

    @property
    def epochs_done(self):
        return len(self.history)

    # -- checkpoints ----------------------------------------------------------
    def load_checkpoint(self):
        path = os.path.join(self.dir, self.checkpoint or CHECKPOINT_FILE)
        if not self.history or not os.path.isfile(path):
            return None
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def end_epoch(self, arrays, metrics):
        """Saves the checkpoint for the epoch just finished, then the history naming it;
        then tells ``on_epoch`` and ``progress``."""
        epoch = len(self.history) + 1
        name = f"checkpoint-{epoch}.npz"
        with paths.written_file(os.path.join(self.dir, name), "the training checkpoint") as f:
            np.savez(f, **arrays)
        faults.point("train.after_checkpoint")
        metrics = {k: (float(v) if isinstance(v, (int, float, np.number)) else v)
                   for k, v in metrics.items()}
        self.history.append(dict(epoch=epoch, **metrics))
        self.checkpoint = name
        self._write_state()
        faults.point("train.after_epoch")
        for entry in os.listdir(self.dir):
            if entry.startswith("checkpoint") and entry.endswith(".npz") and entry != name:
                os.remove(os.path.join(self.dir, entry))
        if self.on_epoch is not None:
            self.on_epoch(epoch, self.epochs, metrics)
        speed = f", {metrics['images_per_s']:.0f} images/s" if "images_per_s" in metrics else ""
        report(self.progress, epoch, self.epochs,
               f"epoch {epoch}/{self.epochs}: loss {metrics['loss']:.4f}{speed}")

    def check_stop(self, epoch):
        """Raises :class:`TrainingStopped` when a stop was asked for (``epoch`` counts from 0).

        Every trainer calls it between two batches: also the place where tests kill a
        job mid-epoch.
        """
        faults.point("train.batch")
        if os.path.exists(os.path.join(self.dir, STOP_FILE)) or (
                self.should_stop is not None and self.should_stop()):
            raise TrainingStopped(
                f"training '{self.name}' stopped during epoch {epoch + 1}; "
                f"{self.epochs_done} epochs are saved and a rerun resumes from there")

    def _clear_stop(self):
        try:
            os.remove(os.path.join(self.dir, STOP_FILE))
        except FileNotFoundError:
            pass

    def _write_state(self):
        paths.write_json(os.path.join(self.dir, STATE_FILE),
                         {"kind": self.kind, "settings": self.settings, "history": self.history,
                          "checkpoint": self.checkpoint}, "the training state", indent=2)

    # -- finishing ------------------------------------------------------------
    def finish(self, manifest, files):
        """Publishes ``files`` (relative to the partial directory) with their manifest
        under the encoder's name; the partial directory goes last."""
        ready = self.dir + ".ready"  # hidden like the partial directory: no store lists it
        shutil.rmtree(ready, ignore_errors=True)
        for rel in files:
            os.makedirs(os.path.dirname(os.path.join(ready, rel)), exist_ok=True)
            os.replace(os.path.join(self.dir, rel), os.path.join(ready, rel))
        manifest = dict(manifest, name=self.name, kind=self.kind, history=self.history,
                        training_data=self.source,
                        epochs=len(self.history), training_seconds=round(time.time() - self.started, 1))
        if self.history:
            manifest["final_metrics"] = {k: v for k, v in self.history[-1].items() if k != "epoch"}
        store.write_manifest(ready, manifest, files)
        faults.point("train.before_publish")
        store.publish(ready, self.final_dir, overwrite=self.overwrite)
        faults.point("train.published")
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.final_dir


def request_stop(name, store_dir=None):
    """Asks a running job to stop after its current epoch (it checks between batches)."""
    directory = store.partial_dir(name, store_dir)
    if not os.path.isdir(directory):
        raise store.EncoderStoreError(f"no unfinished training run named '{name}'")
    open(os.path.join(directory, STOP_FILE), "w").close()
    return directory
