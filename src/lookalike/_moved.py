"""Old module paths, kept for one release: importing one warns and gives the module
that now holds it (the same module object, so patching either patches both)."""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# old -> new; the README of 0.1 documented some of these (lookalike.jobs, ...).
MOVED = {
    "lookalike.errors": "lookalike.core.errors",
    "lookalike.progress": "lookalike.core.progress",
    "lookalike.leases": "lookalike.core.leases",
    "lookalike.faults": "lookalike.core.faults",
    "lookalike.paths": "lookalike.core.paths",
    "lookalike.database": "lookalike.core.database",
    "lookalike.fo_adapter": "lookalike.core.fo_adapter",
    "lookalike.frameworks": "lookalike.core.frameworks",
    "lookalike.labels": "lookalike.core.labels",
    "lookalike.edits": "lookalike.images.edits",
    "lookalike.importer": "lookalike.images.folder_import",
    "lookalike.verification": "lookalike.images.local_features",
    "lookalike.jobs": "lookalike.embeddings.shards",
    "lookalike.brain_registration": "lookalike.similarity.registration",
    "lookalike.curation.records": "lookalike.similarity.records",
    "lookalike.similarity.field": "lookalike.similarity.field_vectors",
    "lookalike.similarity.external": "lookalike.curation.other_backends",
    "lookalike.curation.copies": "lookalike.curation.synthetic_copies",
    "lookalike.curation.runs": "lookalike.curation.published_runs",
    "lookalike.encoders.keras": "lookalike.encoders.keras_models",
    "lookalike.workflow": "lookalike.demo.steps",
    "lookalike.overview": "lookalike.app.panel_rows",
    "lookalike.plugin_install": "lookalike.app.plugin_install",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self.spec  # the import system set the old name's spec on it


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        warnings.warn(f"{fullname} moved to {new}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=3)
        return importlib.util.spec_from_loader(fullname, _Alias(new))


if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedFinder())


def forward_to(package, module_name):
    """A package's ``__getattr__`` that gives the public names of ``module_name``: the
    module the package was before it became one (``lookalike.images`` -> ``.decode``)."""
    def __getattr__(name):
        if name.startswith("_"):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_name), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
