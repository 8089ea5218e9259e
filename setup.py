"""Ship the top-level config/ (the source of truth in the repo) inside the wheel.

pyproject.toml cannot map a directory outside the packages into one, so this build step
copies config/ to ``kakuin/_config`` in the build tree. Editable installs skip it: there
kakuin.settings finds the checkout's config/ directly.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConfig(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        source = Path(__file__).resolve().parent / "config"
        target = Path(self.build_lib) / "kakuin" / "_config"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)


setup(cmdclass={"build_py": BuildPyWithConfig})
