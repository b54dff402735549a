"""Images: decoding (``decode``), the edits that make copies (``edits``), importing a
folder into a dataset (``folder_import``), local features and geometric verification
(``local_features``)."""
# The names of lookalike.images.decode stay reachable here, as before the package existed.
def __getattr__(name):
    import importlib

    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module("lookalike.images.decode"), name)
    globals()[name] = value
    return value
