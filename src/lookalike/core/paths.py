"""Where lookalike keeps files: outside the plugin directory, which the App serves over HTTP."""

import os

DATA_DIR_ENV = "LOOKALIKE_DATA_DIR"


def default_data_dir():
    """``$LOOKALIKE_DATA_DIR``, else ``<FiftyOne's default dataset dir>/lookalike``."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return os.path.abspath(os.path.expanduser(env))
    import fiftyone as fo

    return os.path.join(fo.config.default_dataset_dir, "lookalike")
