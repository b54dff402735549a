"""Lookalike: visual similarity search and dataset curation for FiftyOne.

Importing this package is cheap: it never imports Paddle or TensorFlow (the
FiftyOne App re-executes plugin modules on every request). Those frameworks are
loaded on demand through :mod:`lookalike.frameworks`.

Public API (loaded lazily on first attribute access)::

    import lookalike as lk
    report = lk.import_images("/path/to/images", "my-dataset")
    dataset = lk.build_demo_dataset()
"""

__version__ = "0.1.0"

# name -> (module, attribute); resolved on first access so that `import lookalike`
# stays free of FiftyOne, Paddle and TensorFlow.
_LAZY = {
    "import_images": ("lookalike.importer", "import_images"),
    "ImportReport": ("lookalike.importer", "ImportReport"),
    "ImageImportError": ("lookalike.importer", "ImageImportError"),
    "build_demo_dataset": ("lookalike.demo", "build_demo_dataset"),
    "load_image": ("lookalike.images", "load_image"),
    "UnreadableImageError": ("lookalike.images", "UnreadableImageError"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'lookalike' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value
