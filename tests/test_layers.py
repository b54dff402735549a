"""The house rules, read from the source: layers only import downwards, no import circle,
nothing private of FiftyOne outside the adapter, one namespace, old paths still work."""

import ast
import os
import re
import sys

import pytest

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
ROOT = os.path.join(SRC, "lookalike")

# Bottom to top: a module may import its own layer and the ones before it.
LAYERS = ("core", "images", "encoders", "embeddings", "similarity", "curation",
          ("demo", "app"), "cli")
RANK = {name: n for n, layer in enumerate(LAYERS)
        for name in (layer if isinstance(layer, tuple) else (layer,))}
# FiftyOne's internals: only lookalike/core/fo_adapter.py may touch them.
PRIVATE_FIFTYONE = re.compile(r"fiftyone\.core\.odm|fiftyone\.operators\.delegated|"
                              r"fiftyone\.factory|\beta\.core|\bimport eta\b|get_db_conn|"
                              r"\._serialize\(|DelegatedOperationService|ExecutionResult")


def _modules():
    out = {}
    for d, _, names in os.walk(ROOT):
        for n in names:
            if n.endswith(".py"):
                path = os.path.join(d, n)
                mod = os.path.relpath(path, SRC)[:-3].replace(os.sep, ".")
                out[mod[:-len(".__init__")] if mod.endswith(".__init__") else mod] = path
    return out


def _imports(mod, path, modules):
    """Every lookalike module ``mod`` imports, at module level or in a function; ``from P
    import sub`` counts as importing ``P.sub`` only."""
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("lookalike"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lookalike"):
            assert node.level == 0, f"{mod}: relative import"
            subs = {f"{node.module}.{a.name}" for a in node.names
                    if f"{node.module}.{a.name}" in modules}
            out |= subs
            if len(subs) < len(node.names):
                out.add(node.module)
    return out - {mod, "lookalike", "lookalike._moved"}


def _layer(mod):
    parts = mod.split(".")
    return RANK.get(parts[1]) if len(parts) > 1 else None


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def test_every_module_belongs_to_a_layer(graph):
    loose = sorted(m for m in graph if m not in ("lookalike", "lookalike._moved")
                   and _layer(m) is None)
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"


def test_imports_only_point_down(graph):
    up = sorted((m, d) for m, deps in graph.items() for d in deps
                if _layer(m) is not None and _layer(d) is not None and _layer(d) > _layer(m))
    assert not up, f"imports that run up the layers: {up}"


def test_no_import_circle(graph):
    state, stack, circles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                circles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, f"import circles: {circles}"


def test_nothing_private_of_fiftyone_outside_the_adapter():
    found = []
    for mod, path in _modules().items():
        if mod == "lookalike.core.fo_adapter":
            continue
        for n, line in enumerate(open(path), 1):
            code = line.split("#")[0]
            if PRIVATE_FIFTYONE.search(code) and not code.strip().startswith(('"', "'", "``")):
                found.append(f"{mod}:{n}: {line.strip()}")
    assert not found, found


def test_one_namespace_gives_every_verb():
    # That `import lookalike` loads neither FiftyOne nor a framework is checked in a fresh
    # process: tests/test_frameworks.py (system tier).
    import lookalike as lk

    verbs = ("import_images", "train_encoder", "compute_embeddings", "build_index",
             "sort_by_similarity", "nearest", "calibrate_threshold", "find_duplicates",
             "delete_duplicates", "undelete", "flag_outliers", "match_images", "match_labels",
             "find_leaks")
    assert set(verbs) <= set(lk.__all__)
    for name in lk.__all__:
        assert getattr(lk, name) is not None, name
    assert lk.undelete.__module__ == "lookalike.curation.journal"


def test_an_old_module_path_warns_and_is_the_moved_module():
    import importlib

    import lookalike._moved as moved

    for old, new in moved.MOVED.items():
        sys.modules.pop(old, None)
        with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
            module = importlib.import_module(old)
        assert module is importlib.import_module(new)
        assert module.__spec__.name == new
    # The documented package paths stay as they were, without a warning.
    from lookalike.embeddings import compute_embeddings  # noqa: F401
    from lookalike.images import load_image  # noqa: F401
    from lookalike.demo import build_demo_dataset  # noqa: F401


def test_every_readme_example_speaks_lk():
    """The README's Python examples import ``lookalike as lk`` and every ``lk.<name>`` they
    use exists."""
    import lookalike as lk

    readme = open(os.path.join(os.path.dirname(SRC), "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks
    for block in blocks:
        assert "import lookalike as lk" in block or "lookalike as lk" in block, block[:80]
        assert not re.search(r"import lookalike\.\w+|from lookalike", block), block[:200]
        for name in re.findall(r"\blk\.(\w+)", block):
            assert hasattr(lk, name), f"README uses lk.{name}, which lookalike does not offer"
