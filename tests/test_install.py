"""Installed the FiftyOne way: only the plugin's files are served, and a built wheel installs."""

import glob
import http.client
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from lookalike.app.plugin_install import PLUGIN_FILES, PluginInstallError, install

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = "@lookalike/similarity"
OPERATORS = ("import_images", "build_index", "find_duplicates", "visualize_embeddings")


def _marker(folder, name="secret.txt"):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write("not for the App\n")
    return path


def _raw_get(base, path):
    """(status, body) of GET ``path`` sent as is (requests would resolve '..' itself)."""
    host, port = base.rsplit("/", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def test_the_app_serves_the_plugin_and_nothing_else(app_server):
    plugins = os.environ["FIFTYONE_PLUGINS_DIR"]
    # The plugin's own files are there (the App needs its icon) ...
    for path in ("lookalike/fiftyone.yml", "lookalike/assets/icon.svg",
                 "lookalike/plugin/__init__.py"):
        status, body = _raw_get(app_server, f"/plugins/{path}")
        with open(os.path.join(plugins, path), "rb") as f:
            assert (status, body) == (200, f.read()), path
    # ... and nothing of the checkout, the virtualenv, the model store or the data.
    secrets = {os.path.join(REPO_ROOT, p): [p, "lookalike/" + p, "../" + p, "%2e%2e/" + p]
               for p in (".git/config", ".venv/pyvenv.cfg", "src/lookalike/__init__.py",
                         "tests/conftest.py", "pyproject.toml")}
    for folder in (os.environ["LOOKALIKE_DATA_DIR"], os.environ["LOOKALIKE_MODELS_DIR"]):
        marker = _marker(folder)
        rel = os.path.relpath(marker, plugins)
        secrets[marker] = [rel, rel.replace("..", "%2e%2e"), "lookalike/" + rel]
    for path, probes in secrets.items():
        with open(path, "rb") as f:
            content = f.read()
        assert content
        for probe in probes:
            status, body = _raw_get(app_server, f"/plugins/{probe}")
            assert content not in body, (probe, status)
            if not probe.startswith(("..", "%2e")):
                assert status == 404, probe


@pytest.mark.system  # runs make
def test_make_app_and_worker_serve_the_generated_folder():
    plan = subprocess.run(["make", "-n", "app", "worker"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60).stdout
    generated = os.path.join(REPO_ROOT, "build", "plugins")
    assert f"lookalike plugin install --dir {generated}" in plan
    assert plan.count(f"FIFTYONE_PLUGINS_DIR={generated} ") == 2
    assert f"FIFTYONE_PLUGINS_DIR={REPO_ROOT} " not in plan


def test_install_replaces_only_our_plugin_and_refuses_served_folders(tmp_path, monkeypatch):
    target = install(str(tmp_path / "plugins"))
    assert sorted(os.listdir(target)) == sorted(PLUGIN_FILES)
    assert not glob.glob(os.path.join(target, "**", "__pycache__"), recursive=True)
    open(os.path.join(target, "plugin", "stale.py"), "w").close()
    assert install(str(tmp_path / "plugins")) == target  # a rerun replaces the whole folder
    assert not os.path.exists(os.path.join(target, "plugin", "stale.py"))
    assert sorted(os.listdir(tmp_path / "plugins")) == ["lookalike"]

    other = tmp_path / "other" / "lookalike"
    other.mkdir(parents=True)
    (other / "fiftyone.yml").write_text('name: "@someone/else"\n')
    with pytest.raises(PluginInstallError, match="is not the @lookalike/similarity plugin "
                                                 r"\(plugin @someone/else\)"):
        install(str(tmp_path / "other"))
    assert (other / "fiftyone.yml").read_text() == 'name: "@someone/else"\n'

    monkeypatch.setenv("LOOKALIKE_DATA_DIR", str(tmp_path / "served" / "data"))
    with pytest.raises(PluginInstallError, match="the App would serve the data directory"):
        install(str(tmp_path / "served"))
    with pytest.raises(PluginInstallError, match="the App would serve .*the checkout"):
        install(os.path.dirname(REPO_ROOT))


@pytest.mark.parametrize("point", ["plugin.staged", "plugin.old_moved"])
def test_a_killed_install_leaves_a_whole_plugin_and_a_rerun_finishes(point, tmp_path,
                                                                     subprocess_env):
    plugins = str(tmp_path / "plugins")
    target = install(plugins)
    with open(os.path.join(target, "fiftyone.yml"), "a") as f:
        f.write("# old copy\n")
    cli = [os.path.join(os.path.dirname(sys.executable), "lookalike"), "plugin", "install",
           "--dir", plugins]
    env = dict(subprocess_env, LOOKALIKE_FAULT=f"{point}:kill")
    killed = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    visible = [n for n in os.listdir(plugins) if not n.startswith(".")]
    if point == "plugin.staged":  # the old plugin, whole; the new one hidden
        assert visible == ["lookalike"]
        assert sorted(os.listdir(target)) == sorted(PLUGIN_FILES)
        assert open(os.path.join(target, "fiftyone.yml")).read().endswith("# old copy\n")
    else:  # between the two renames: no plugin folder FiftyOne would load half of
        assert visible == []
    done = subprocess.run(cli, env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert os.listdir(plugins) == ["lookalike"]  # leftovers gone
    assert sorted(os.listdir(target)) == sorted(PLUGIN_FILES)
    assert not open(os.path.join(target, "fiftyone.yml")).read().endswith("# old copy\n")


def test_wheel_installs_with_the_plugin_into_a_fresh_environment(tmp_path, subprocess_env):
    """The README's "your own FiftyOne" steps, in a new virtualenv and plugins directory.

    The heavy dependencies (fiftyone, Paddle, TensorFlow, ...) are not installed
    again: the new virtualenv sees this one's site-packages through a .pth file
    (its .pth files, the editable lookalike among them, are not run), and the
    wheel goes in with --no-deps. lookalike itself comes from the wheel only.
    """
    # Built from a copy of the checkout (setuptools writes build/ beside the sources),
    # with this environment's setuptools (no download).
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(dist)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = glob.glob(str(dist / "lookalike-*.whl"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "inherited.pth"), "w") as f:
        f.write(sysconfig.get_path("purelib") + "\n")
    env = {k: v for k, v in subprocess_env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    env["FIFTYONE_PLUGINS_DIR"] = str(tmp_path / "fiftyone-plugins")
    env["FIFTYONE_BRAIN_CONFIG_PATH"] = str(tmp_path / "brain_config.json")

    def run(*args, timeout=300):
        out = subprocess.run(list(args), capture_output=True, text=True, env=env,
                             cwd=str(tmp_path), timeout=timeout)
        assert out.returncode == 0, f"{args}: {out.stdout[-2000:]} {out.stderr[-3000:]}"
        return out.stdout

    run(py, "-m", "pip", "install", "--no-deps", "-q", wheel, timeout=600)
    where = run(py, "-c", "import lookalike, os; print(os.path.dirname(lookalike.__file__))")
    assert where.strip() == os.path.join(site, "lookalike")  # the wheel's, not the checkout's
    out = run(str(venv / "bin" / "lookalike"), "plugin", "install")  # FiftyOne's plugins_dir
    assert f"in {tmp_path / 'fiftyone-plugins' / 'lookalike'}" in out
    installed = tmp_path / "fiftyone-plugins" / "lookalike"
    assert sorted(os.listdir(installed)) == sorted(PLUGIN_FILES)
    with open(os.path.join(REPO_ROOT, "plugin", "__init__.py")) as a, \
            open(installed / "plugin" / "__init__.py") as b:
        assert a.read() == b.read()
    fiftyone = str(venv / "bin" / "fiftyone")
    if not os.path.exists(fiftyone):  # console scripts of inherited packages live in .venv
        fiftyone = os.path.join(os.path.dirname(sys.executable), "fiftyone")
    listed = run(py, fiftyone, "operators", "list", "-c")
    for name in OPERATORS:
        assert f"{PLUGIN}/{name}" in listed
    run(py, fiftyone, "plugins", "requirements", PLUGIN, "--ensure")
    # The backend by name, once registered (README: lookalike register-backend).
    run(str(venv / "bin" / "lookalike"), "register-backend")
    code = "import fiftyone.brain as fob; print(fob.brain_config.similarity_backends['lookalike'])"
    assert "LookalikeSimilarityConfig" in run(py, "-c", code)
