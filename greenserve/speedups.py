"""The optional compiled speed-ups: which modules an install compiles, which of them run
compiled now, and the switch back to the pure-Python source.

An install compiles the modules of ``HOT_MODULES`` with Cython, unchanged, when a C compiler
and the Python headers are present (``setup.py`` reads the tuple from this file). Python then
imports the compiled file that sits beside each source. With ``GREENSERVE_PURE=1`` in the
environment, ``import greenserve`` puts a finder first on ``sys.meta_path`` that loads every
greenserve module from its ``.py`` source instead.
"""

import importlib.machinery
import os
import sys

# Kept as a literal: setup.py reads it without importing the package. Each one measurably
# cuts the instructions a request costs when compiled (server under callgrind, hello
# keep-alive, new connection each, 4 KiB echo). A .pxd file beside a source declares C types
# for its hot classes: compiled as plain Python, a slotted class's attributes are reached
# more slowly than Python 3.11's specialising interpreter reaches them, which is why
# protocol.response only pays with its Response declared as a C class. Not here:
# connection, sending and bodies cost more compiled (their classes are mixins, which C
# classes cannot be); spawner
# must stay Python: a greenlet parked with no Python frame on its stack counts as running
# for greenlet, which then refuses the fresh context each reused greenlet gets.
HOT_MODULES = (
    "greenserve.protocol.parser",
    "greenserve.protocol.lines",
    "greenserve.protocol.writer",
    "greenserve.protocol.response",
    "greenserve.wsgi",
    "greenserve.timers",
    "greenserve.acceptor",
    "greenserve.disconnect",
)

PURE_VARIABLE = "GREENSERVE_PURE"
# The environment variables about the speed-ups (not settings): run pure; install without
# compiling (setup.py); fail the tests unless every module of HOT_MODULES runs compiled.
VARIABLES = (PURE_VARIABLE, "GREENSERVE_NO_COMPILE", "GREENSERVE_EXPECT_COMPILED")


def pure_requested(environ=os.environ):
    """Whether the environment asks for the pure-Python modules (any value but "" or "0")."""
    return environ.get(PURE_VARIABLE, "") not in ("", "0")


class SourceOnlyFinder:
    """Finds greenserve's modules among ``.py`` sources only, skipping compiled files."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if not name.startswith("greenserve.") or path is None:
            return None  # not ours; the top-level package itself is always pure
        for entry in path:
            finder = importlib.machinery.FileFinder(
                entry, (importlib.machinery.SourceFileLoader,
                        importlib.machinery.SOURCE_SUFFIXES))
            spec = finder.find_spec(name, target)
            if spec is not None and spec.loader is not None:
                return spec
        return None


def force_pure():
    """Load greenserve's modules imported from now on from their sources (idempotent)."""
    if SourceOnlyFinder not in sys.meta_path:
        sys.meta_path.insert(0, SourceOnlyFinder)


def _spec(name):
    """The spec module ``name`` was (or, not imported yet, would be) loaded with."""
    module = sys.modules.get(name)
    if module is not None:
        return module.__spec__
    import importlib.util  # here: importing the package stays light
    return importlib.util.find_spec(name)


def is_compiled(name):
    """Whether module ``name`` runs (or would run) from a compiled file."""
    loader = getattr(_spec(name), "loader", None)
    return isinstance(loader, importlib.machinery.ExtensionFileLoader)


def compiled():
    """The greenserve modules that run (or, not imported yet, would run) compiled: those of
    ``HOT_MODULES`` in their order, then any other (a compiled file an older build left)."""
    import pkgutil
    names = list(HOT_MODULES)
    root = os.path.dirname(os.path.abspath(__file__))
    for info in pkgutil.walk_packages([root], "greenserve."):
        if info.name not in names:
            names.append(info.name)
    return [name for name in names if is_compiled(name)]


# An install writes a module's source and compiled file within moments of each other.
STALE_AFTER = 2.0  # seconds


def stale():
    """The compiled modules whose source changed after they were compiled (an editable
    install whose sources were edited or checked out since): Python still runs the old code
    until ``pip install -e .`` compiles them again."""
    found = []
    for name in compiled():
        binary = _spec(name).origin
        stem = os.path.join(os.path.dirname(binary), name.rpartition(".")[2])
        try:
            compiled_at = os.stat(binary).st_mtime
            newest = os.stat(stem + ".py").st_mtime
        except OSError:
            continue  # no source beside it: nothing to compare with
        try:
            newest = max(newest, os.stat(stem + ".pxd").st_mtime)  # its C declarations
        except OSError:
            pass
        if newest - compiled_at > STALE_AFTER:
            found.append(name)
    return found


def describe():
    """One phrase for logs: "compiled", "pure Python" or "partly compiled: a, b", and the
    compiled modules whose source is newer, if any."""
    running = compiled()
    if not running:
        return "pure Python"
    if running == list(HOT_MODULES):
        phrase = "compiled"
    else:
        phrase = "partly compiled: " + ", ".join(_short(name) for name in running)
    old = stale()
    if old:
        phrase += ("; compiled before their source changed, rebuild with pip install: "
                   + ", ".join(_short(name) for name in old))
    return phrase


def _short(name):
    return name.rpartition(".")[2]
