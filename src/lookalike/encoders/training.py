"""What every training job shares: checkpoints, resume, stop, progress, publishing.

A job writes into ``<store>/.<name>.partial/``: ``state.json`` (the settings and
the per-epoch history) and ``checkpoint.npz`` (every array needed to continue:
weights and optimiser state, saved with NumPy so loading never unpickles).
After each epoch both are replaced atomically. Running the same job again with
the same settings resumes after the last finished epoch; different settings
are refused rather than mixed. When the last epoch is done the job writes the
encoder files and the manifest, then renames the directory to ``<store>/<name>``.

Stopping: the ``should_stop`` callable, or a file named ``STOP`` in the partial
directory (``lookalike stop NAME``), ends the job after the current epoch's
checkpoint; it raises :class:`TrainingStopped` and can be resumed later.
"""

import json
import os
import shutil
import time

import numpy as np

from lookalike.encoders import store

STOP_FILE = "STOP"
STATE_FILE = "state.json"
CHECKPOINT_FILE = "checkpoint.npz"


from lookalike.errors import TrainingConfigError, TrainingStopped  # noqa: F401 (re-exported)


class TrainingJob:
    def __init__(self, name, kind, settings, store_dir=None, overwrite=False, resume=True):
        self.name = store.validate_name(name)
        self.kind = kind
        self.settings = json.loads(json.dumps(settings))  # plain JSON, comparable
        self.store_dir = store_dir or store.default_store_dir()
        self.final_dir = store.encoder_dir(name, self.store_dir)
        self.dir = store.partial_dir(name, self.store_dir)
        self.overwrite = overwrite
        self.resume = resume
        self.history = []  # one dict per finished epoch
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
        path = os.path.join(self.dir, CHECKPOINT_FILE)
        if not self.history or not os.path.isfile(path):
            return None
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def end_epoch(self, arrays, metrics):
        """Saves the checkpoint for the epoch just finished, then the history."""
        tmp = os.path.join(self.dir, "checkpoint.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, os.path.join(self.dir, CHECKPOINT_FILE))
        metrics = {k: (float(v) if isinstance(v, (int, float, np.number)) else v)
                   for k, v in metrics.items()}
        self.history.append(dict(epoch=len(self.history) + 1, **metrics))
        self._write_state()

    def stop_requested(self, should_stop=None):
        return os.path.exists(os.path.join(self.dir, STOP_FILE)) or bool(
            should_stop and should_stop()
        )

    def _clear_stop(self):
        try:
            os.remove(os.path.join(self.dir, STOP_FILE))
        except FileNotFoundError:
            pass

    def _write_state(self):
        tmp = os.path.join(self.dir, STATE_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"kind": self.kind, "settings": self.settings, "history": self.history},
                      f, indent=2)
        os.replace(tmp, os.path.join(self.dir, STATE_FILE))

    # -- finishing ------------------------------------------------------------
    def finish(self, manifest, files):
        """Writes the manifest over ``files`` and publishes the directory under its name."""
        for stale in (CHECKPOINT_FILE, STATE_FILE, STOP_FILE):
            path = os.path.join(self.dir, stale)
            if os.path.exists(path) and stale not in files:
                os.remove(path)
        manifest = dict(manifest, name=self.name, kind=self.kind, history=self.history,
                        epochs=len(self.history), training_seconds=round(time.time() - self.started, 1))
        if self.history:
            manifest["final_metrics"] = {k: v for k, v in self.history[-1].items() if k != "epoch"}
        store.write_manifest(self.dir, manifest, files)
        store.publish(self.dir, self.final_dir, overwrite=self.overwrite)
        return self.final_dir


def request_stop(name, store_dir=None):
    """Asks a running job to stop after its current epoch (it checks between batches)."""
    directory = store.partial_dir(name, store_dir)
    if not os.path.isdir(directory):
        raise store.EncoderStoreError(f"no unfinished training run named '{name}'")
    open(os.path.join(directory, STOP_FILE), "w").close()
    return directory
