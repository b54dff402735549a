"""Registers lookalike as a fiftyone-brain similarity backend named "lookalike".

fiftyone-brain finds backends by name in its brain config
(``fiftyone.brain.brain_config.similarity_backends``), which it reads once, when
``fiftyone.brain`` is imported, from ``~/.fiftyone/brain_config.json``
(``FIFTYONE_BRAIN_CONFIG_PATH``) and ``FIFTYONE_BRAIN_SIMILARITY_*`` variables.
Two ways in, both idempotent:

* :func:`write_brain_config` (``lookalike register-backend``, once per machine):
  adds the backend to that file, so every process knows it --
  ``fob.compute_similarity(ds, embeddings="emb", backend="lookalike")`` in a
  script that never imports lookalike, and the brain plugin's forms in any App.
* :func:`register` adds it to the running process's brain config. Loading our
  brain backend module or our FiftyOne plugin calls it, so an App or worker
  that loads the plugin offers the backend with no configuration.

``import lookalike`` alone does not register: it must not import fiftyone.
"""

import json
import os

from lookalike.core.errors import BrainConfigError  # noqa: F401 (re-exported)
# The config class FiftyOne's brain records in every run of ours.
BACKEND_CLS = CONFIG_CLS = "lookalike.similarity.backend.LookalikeSimilarityConfig"

BACKEND_NAME = "lookalike"


def register():
    """Adds the backend to this process's fiftyone-brain config (imports fiftyone.brain)."""
    import fiftyone.brain as fob

    entry = fob.brain_config.similarity_backends.setdefault(BACKEND_NAME, {})
    entry.setdefault("config_cls", CONFIG_CLS)


def brain_config_path():
    """The brain config file fiftyone-brain reads (it may not exist).

    As ``fiftyone.brain.config.locate_brain_config``, which cannot be imported
    here: importing ``fiftyone.brain`` parses that file, and fails if it is broken.
    """
    return os.environ.get("FIFTYONE_BRAIN_CONFIG_PATH") or os.path.join(
        os.path.expanduser("~"), ".fiftyone", "brain_config.json")


def _read(path):
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise BrainConfigError(f"{path}: not a readable brain config (JSON): {e}") from None
    if not isinstance(data, dict):
        raise BrainConfigError(f"{path}: a brain config must be a JSON object")
    backends = data.get("similarity_backends", {})
    if not isinstance(backends, dict):
        raise BrainConfigError(f"{path}: 'similarity_backends' must be a JSON object")
    return data


def write_brain_config(path=None):
    """Adds the backend to the brain config file, keeping everything else in it.

    Returns ``(path, changed)``. The file is written whole to a temporary file
    and renamed over the old one, so a killed write leaves the old file.
    """
    path = os.path.abspath(os.path.expanduser(path or brain_config_path()))
    data = _read(path)
    backends = data.setdefault("similarity_backends", {})
    entry = backends.setdefault(BACKEND_NAME, {})
    if not isinstance(entry, dict):
        raise BrainConfigError(f"{path}: similarity_backends.{BACKEND_NAME} must be a JSON object")
    if entry.get("config_cls") == CONFIG_CLS:
        return path, False
    entry["config_cls"] = CONFIG_CLS
    from lookalike.core import paths

    try:  # whole to a temporary, renamed over the old file; a failed write leaves nothing
        paths.make_folder(os.path.dirname(path), "the brain config")
        paths.write_json(path, data, "the brain config", indent=4)
    except OSError as e:
        raise BrainConfigError(f"{path}: cannot write the brain config: "
                               f"{getattr(e, 'strerror', None) or e}") from None
    return path, True


def env_hides_backend():
    """The reason FIFTYONE_BRAIN_SIMILARITY_BACKENDS hides the backend, or None.

    That variable lists the backends fiftyone-brain exposes; the config file's
    entries outside it are ignored.
    """
    listed = os.environ.get("FIFTYONE_BRAIN_SIMILARITY_BACKENDS")
    if listed is None or BACKEND_NAME in listed.split(","):
        return None
    return (f"FIFTYONE_BRAIN_SIMILARITY_BACKENDS={listed} does not list '{BACKEND_NAME}': "
            f"add it (e.g. '*,{BACKEND_NAME}')")
