"""Load a ``module:attr`` WSGI app spec, and check one in a throwaway process.

The harness never imports the app under test itself (it might patch or start things); it asks a
child interpreter, so a bad spec turns into one clear line before any server is started.
"""

import importlib
import os
import subprocess
import sys


class AppSpecError(Exception):
    """The app spec cannot be loaded; the message is the one line shown to the user."""


def load_app(spec):
    """Import ``module:attr`` (``attr`` may be dotted) and return the callable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AppSpecError(f"app spec {spec!r} is not MODULE:APP (for example loadtests.apps:app)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like gunicorn: apps next to where you run from load
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppSpecError(f"app spec {spec!r}: cannot import {module_name!r}: {exc}") from None
    except Exception as exc:  # the module itself failed: say so in one line
        raise AppSpecError(f"app spec {spec!r}: importing {module_name!r} raised {exc!r}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppSpecError(
                f"app spec {spec!r}: {module_name!r} has no attribute {attr!r}"
            ) from None
    if not callable(obj):
        raise AppSpecError(f"app spec {spec!r}: {attr!r} is not callable")
    return obj


def check_app(spec, env=None, timeout=30):
    """Return None if ``spec`` loads in a child interpreter, else the one-line reason."""
    code = (
        "import sys\n"
        "from loadtests.appspec import load_app, AppSpecError\n"
        "try:\n    load_app(sys.argv[1])\n"
        "except AppSpecError as e:\n    print(e); sys.exit(2)\n"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, spec],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return f"app spec {spec!r}: importing it took over {timeout} s"
    if proc.returncode == 0:
        return None
    lines = (proc.stdout.strip() or proc.stderr.strip() or "unknown error").splitlines()
    return lines[-1]
