"""Importing greenserve has no side effects: no gevent, no threads, until an entry point runs.

gevent must be imported (and patch) before the app's modules, and only by the entry point
that decides to; a thread started at import would be created before monkey-patching. So a
fresh interpreter that imports the package must not have ``gevent`` or ``threading`` loaded.
"""

import json
import pkgutil
import sys

import pytest

import greenserve.protocol
import procs

# Prints the modules the imports added. Run with -S (no site: its .pth hooks load threading
# in some installs, and gevent is then not importable at all, so an import of it fails
# loudly) and without (gevent importable, so an import of it shows in the list).
PROBE = """
import json, sys
before = set(sys.modules)
{imports}
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def imported_by(*modules, site=False):
    """The modules a fresh interpreter loads while importing ``modules``."""
    code = PROBE.format(imports="\n".join(f"import {name}" for name in modules))
    argv = [sys.executable, *([] if site else ["-S"]), "-c", code]
    result = procs.run(argv)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def unwanted(loaded, *names):
    return sorted(module for module in loaded if module.split(".")[0] in names)


@pytest.mark.parametrize("site", [False, True], ids=["no-site", "site"])
def test_importing_the_package_and_cli_loads_neither_gevent_nor_threading(site):
    loaded = imported_by("greenserve", "greenserve.cli", site=site)
    assert "greenserve.cli" in loaded  # the probe did import it
    assert unwanted(loaded, "gevent", "threading") == []


# The layers DESIGN.md keeps free of gevent: the sans-IO protocol core and the WSGI bridge.
SANS_IO = ["greenserve.wsgi"] + [f"greenserve.protocol.{info.name}"
                                 for info in pkgutil.iter_modules(greenserve.protocol.__path__)]


@pytest.mark.parametrize("module", SANS_IO)
def test_sans_io_layers_do_not_import_gevent(module):
    loaded = imported_by(module)
    assert module in loaded
    assert unwanted(loaded, "gevent", "greenlet") == []
