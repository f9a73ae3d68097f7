"""Everything about the package is in pyproject.toml; this only adds a build step: the
repository's configs/ and deploy/ directories are copied into the wheel as package data
(drainer/_share/), so `drainer print` finds them after `pip install`. They stay where
they are in the repository; whatever they hold ships, without a list to keep."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHARED = ("configs", "deploy")


class BuildWithShare(build_py):
    def run(self) -> None:
        super().run()
        here = Path(__file__).parent
        share = Path(self.build_lib, "drainer", "_share")
        shutil.rmtree(share, ignore_errors=True)  # a file deleted since the last build
        for top in SHARED:
            for path in sorted((here / top).rglob("*")):
                relative = path.relative_to(here)
                if not path.is_file() or any(
                    part.startswith(".") or part == "__pycache__" for part in relative.parts
                ):
                    continue
                target = share / relative
                self.mkpath(str(target.parent))
                self.copy_file(str(path), str(target))


setup(cmdclass={"build_py": BuildWithShare})
