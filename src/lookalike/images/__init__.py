"""Images: decoding (``decode``), the edits that make copies (``edits``), importing a
folder into a dataset (``folder_import``), local features and geometric verification
(``local_features``)."""
from lookalike._moved import forward_to

# The names of lookalike.images.decode stay reachable here, as before the package existed.
__getattr__ = forward_to(__name__, "lookalike.images.decode")
