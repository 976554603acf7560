"""Build step that ships ``headig_lmeval.pth`` at the top of site-packages.

setuptools has no declarative way to put a ``.pth`` file next to the packages, so
``pyproject.toml`` points ``[tool.setuptools.cmdclass] build_py`` at :class:`BuildPyWithPth`.
setuptools loads this file on its own (not as part of the package), so it may import only
setuptools and the standard library.

- Regular wheels: the file is written into ``build_lib``, whose content becomes the wheel's
  purelib root.
- Editable installs (PEP 660): setuptools builds an editable wheel from an unpacked folder
  that it also uses as the install target of ``install_lib``; the file is written there, so
  ``pip install -e .`` installs the hook too.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools.command.build_py import build_py as _build_py

PTH_NAME = "headig_lmeval.pth"


def _pth_source() -> Path:
    return Path(__file__).resolve().with_name(PTH_NAME)


class BuildPyWithPth(_build_py):
    """``build_py`` plus ``headig_lmeval.pth`` at the root of the built tree."""

    def run(self) -> None:
        super().run()
        src = _pth_source()
        if not src.is_file():
            raise FileNotFoundError(f"{src} is missing; cannot ship the lm-eval start-up hook")
        targets = [self.build_lib]
        if getattr(self, "editable_mode", False):
            install = self.distribution.get_command_obj("install")
            wheel_root = getattr(install, "install_lib", None)
            if wheel_root:
                targets.append(wheel_root)
        for folder in targets:
            os.makedirs(folder, exist_ok=True)
            self.copy_file(str(src), os.path.join(folder, PTH_NAME), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, PTH_NAME)]
