"""Embeddings in sample fields: computed, resumable and leased (``compute``), or sharded
over FiftyOne's delegated workers (``shards``)."""
# The names of lookalike.embeddings.compute stay reachable here, as before the package existed.
def __getattr__(name):
    import importlib

    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module("lookalike.embeddings.compute"), name)
    globals()[name] = value
    return value
