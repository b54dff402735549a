"""The offline demo: its dataset (``dataset``) and the main job on it, step by step
(``steps``)."""
from lookalike._moved import forward_to

# The names of lookalike.demo.dataset stay reachable here, as before the package existed.
__getattr__ = forward_to(__name__, "lookalike.demo.dataset")
