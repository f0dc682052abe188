"""Build script. All metadata lives in setup.cfg; this file only decides the compiled speed-ups.

Where a C compiler and the Python headers are present (and GREENSERVE_NO_COMPILE is not set),
the modules named in greenserve/speedups.py are compiled with Cython, unchanged, as optional
extensions (a ``.pxd`` file beside a module's source declares C types for its hot classes and
locals; the source itself stays plain Python): a module that fails to compile stays pure Python, and the install goes on. Cython
is then a build requirement, which pip installs into its isolated build environment. Without
a compiler nothing is compiled and Cython is not even asked for.
"""

import ast
import os
import shlex
import shutil
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
CYTHON = "Cython>=3"
# Cython compiles the modules as the Python they are: annotations stay hints (annotation
# typing would make a float annotation a C double and refuse None), language level 3.
DIRECTIVES = {"language_level": 3, "annotation_typing": False, "binding": True}


def hot_modules():
    """HOT_MODULES from greenserve/speedups.py, read without importing the package."""
    tree = ast.parse((HERE / "greenserve" / "speedups.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                getattr(target, "id", None) == "HOT_MODULES" for target in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError("greenserve/speedups.py defines no HOT_MODULES")


def why_not_compile():
    """None if the speed-ups can be built here, else the reason they are not."""
    if os.environ.get("GREENSERVE_NO_COMPILE"):
        return "GREENSERVE_NO_COMPILE is set"
    include = sysconfig.get_paths()["include"]
    if not os.path.isfile(os.path.join(include, "Python.h")):
        return f"no Python.h in {include} (the Python headers: python3-dev on Debian)"
    # setuptools compiles with $CC when set, else with the compiler Python was built with.
    compiler = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    words = shlex.split(compiler)
    if not words or shutil.which(words[0]) is None:
        return f"no C compiler ({compiler!r} is not on PATH)"
    return None


class CythonBuildExt(build_ext):
    """build_ext that turns each module's source into C with Cython first, then compiles
    the C files in parallel (they are independent; compiling is most of an install's time).

    The C files go to the build directory, not next to the sources. A module Cython cannot
    translate is skipped with a warning, as a failed compile of an optional extension is.
    """

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1

    def build_extensions(self):
        try:
            from Cython.Build import cythonize
        except ImportError:
            self.warn(f"{CYTHON} is not installed: every module stays pure Python")
            self.extensions = []
            return
        translated = []
        for ext in self.extensions:
            try:
                (result,) = cythonize(
                    [ext], build_dir=os.path.join(self.build_temp, "cython"),
                    compiler_directives=DIRECTIVES, quiet=True, force=self.force)
            except Exception as exc:  # Cython's own CompileError and friends
                self.warn(f"Cython could not translate {ext.name} ({exc}): it stays pure Python")
                continue
            ext.sources = result.sources  # the C file; the rest stays as setuptools set it
            if self.compiler.compiler_type == "unix":
                # No debug information: with it compiling takes 1.6x as long and the
                # objects are 7x larger.
                ext.extra_compile_args = [*ext.extra_compile_args, "-g0"]
            translated.append(ext)
        self.extensions = translated
        super().build_extensions()


def extensions():
    reason = why_not_compile()
    if reason is not None:
        print(f"greenserve: not compiling the speed-ups: {reason}")
        return []
    return [Extension(name, [name.replace(".", "/") + ".py"], optional=True)
            for name in hot_modules()]


EXTENSIONS = extensions()
setup(ext_modules=EXTENSIONS,
      setup_requires=[CYTHON] if EXTENSIONS else [],
      cmdclass={"build_ext": CythonBuildExt})
