"""The offline demo: its dataset (``dataset``) and the main job on it, step by step
(``steps``)."""
# The names of lookalike.demo.dataset stay reachable here, as before the package existed.
def __getattr__(name):
    import importlib

    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module("lookalike.demo.dataset"), name)
    globals()[name] = value
    return value
