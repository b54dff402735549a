"""Ships the FiftyOne plugin's files inside the wheel, as ``lookalike/plugin_files/``.

``lookalike plugin install`` copies them from there into a plugins directory
(from a checkout it reads them in place). Everything else is in pyproject.toml.
"""

import os
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))
from lookalike.app.plugin_install import PLUGIN_FILES  # noqa: E402  (no third-party imports)


class BuildPyWithPluginFiles(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's own files
        target = os.path.join(self.build_lib, "lookalike", "plugin_files")
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for name in PLUGIN_FILES:
            if os.path.isdir(name):
                shutil.copytree(name, os.path.join(target, name), ignore=ignore)
            else:
                shutil.copy2(name, os.path.join(target, name))


setup(cmdclass={"build_py": BuildPyWithPluginFiles})
