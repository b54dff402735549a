"""Embeddings in sample fields: computed, resumable and leased (``compute``), or sharded
over FiftyOne's delegated workers (``shards``)."""
from lookalike._moved import forward_to

# The names of lookalike.embeddings.compute stay reachable here, as before the package existed.
__getattr__ = forward_to(__name__, "lookalike.embeddings.compute")
