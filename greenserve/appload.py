"""Find the WSGI application named by an app spec such as ``pkg.mod:app``.

Accepted forms:

* ``module:name`` (``name`` may be dotted: ``module:holder.app``);
* ``module``, meaning ``module:application`` and, failing that, ``module:app``;
* ``module:factory()`` and ``module:factory(args)``, where the arguments are Python
  literals (read with ``ast.literal_eval``, never evaluated as code).

Every failure is an ``AppLoadError`` with a one-line message. When the failure is the
application's own exception (an error while importing its module, or a factory that
raises) that exception is chained as ``__cause__``, so the entry point can show its
traceback; otherwise the error is raised ``from None``.

This module edits neither ``sys.path`` nor anything else: the caller sets up the path.
"""

import ast
import difflib
import importlib
import inspect
import pkgutil
import sys
import traceback

from .errors import AppLoadError

DEFAULT_NAMES = ("application", "app")
_FORMS = "expected MODULE, MODULE:NAME or MODULE:FACTORY(ARGS)"


def load_app(spec):
    """Import and return the WSGI callable named by ``spec``; ``AppLoadError`` otherwise."""
    module_name, target = parse_spec(spec)
    module = _import(module_name)
    if target is None:
        return _default_app(module, module_name)
    path, call = target
    obj = _lookup(module, module_name, path)
    label = f"{module_name}:{'.'.join(path)}"
    if call is not None:
        obj = _call_factory(obj, label, *call)
        label += "()"
        what = f"factory {label} returned {_describe(obj)}"
    else:
        what = f"{label} is {_describe(obj)}"
    if not callable(obj):
        raise AppLoadError(f"{what}, which is not callable; a WSGI application is a callable "
                           f"taking (environ, start_response)")
    _refuse_wrong_signature(obj, label, call is None)
    return obj


def load_object(spec, what):
    """The object named ``MODULE:NAME`` (``NAME`` may be dotted), e.g. a hook function.

    ``what`` names it in the one-line ``AppLoadError`` (e.g. "hook post_fork").
    """
    module_name, sep, path = spec.partition(":")
    if not sep or not path:
        raise AppLoadError(f"{what}: {spec!r} is not MODULE:NAME")
    try:
        module = _import(module_name)
        return _lookup(module, module_name, path.split("."))
    except AppLoadError as exc:
        raise AppLoadError(f"{what}: {exc}") from exc.__cause__


def takes_arguments(function, count):
    """False only when ``function`` certainly cannot be called with ``count`` positional
    arguments (an unreadable signature, as of some C functions, gets the benefit of the
    doubt)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return True
    try:
        signature.bind(*range(count))
    except TypeError:
        return False
    return True


def _refuse_wrong_signature(obj, label, plain):
    """Refuse a callable that cannot take (environ, start_response) at start-up, instead
    of answering every request with 500."""
    if takes_arguments(obj, 2):
        return
    if plain and takes_arguments(obj, 0):
        raise AppLoadError(f"{label} looks like an app factory: use {label}()")
    raise AppLoadError(f"{label} cannot be called with (environ, start_response), so it is "
                       f"not a WSGI application")


def parse_spec(spec):
    """Split ``spec`` into ``(module_name, target)``.

    ``target`` is None for a bare module, else ``(attribute_path, call)`` where ``call``
    is None for a plain attribute or ``(args, kwargs)`` for a factory call.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise AppLoadError(f"malformed app spec {spec!r} ({_FORMS})")
    module_name, sep, expr = spec.strip().partition(":")
    module_name, expr = module_name.strip(), expr.strip()
    if module_name.endswith(".py"):
        hint = module_name[:-3].replace("/", ".").lstrip(".")
        raise AppLoadError(f"malformed app spec {spec!r}: give the module name, not the file "
                           f"name (e.g. '{hint}{sep}{expr}')")
    if not all(part.isidentifier() for part in module_name.split(".")):
        raise AppLoadError(f"malformed app spec {spec!r}: {module_name!r} is not a module "
                           f"name ({_FORMS})")
    if not sep:
        return module_name, None
    try:
        node = ast.parse(expr, mode="eval").body
    except SyntaxError:
        raise AppLoadError(f"malformed app spec {spec!r} ({_FORMS})") from None
    call = None
    if isinstance(node, ast.Call):
        call = _literal_arguments(node, spec)
        node = node.func
    path = _attribute_path(node)
    if path is None:
        raise AppLoadError(f"malformed app spec {spec!r} ({_FORMS})")
    return module_name, (path, call)


def _literal_arguments(node, spec):
    """The factory call's arguments as values; anything but literals is refused."""
    if any(isinstance(arg, ast.Starred) for arg in node.args) or \
            any(kw.arg is None for kw in node.keywords):
        raise AppLoadError(f"malformed app spec {spec!r}: factory arguments must be "
                           f"Python literals (no *args or **kwargs)")
    try:
        args = tuple(ast.literal_eval(arg) for arg in node.args)
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise AppLoadError(f"malformed app spec {spec!r}: factory arguments must be Python "
                           f"literals (strings, numbers, True/False/None, lists, dicts...)"
                           ) from None
    return args, kwargs


def _attribute_path(node):
    """``a.b.c`` as ``['a', 'b', 'c']``; None for any other expression."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _import(module_name):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        # The spec's own module (or a parent package of it) is missing: the user's mistake.
        # Any other missing module was imported by the app's code: the app's bug.
        if missing == module_name or module_name.startswith(missing + "."):
            raise AppLoadError(f"no module named '{missing}'{_suggest_module(missing)}"
                               ) from None
        _trim_traceback(exc)
        raise AppLoadError(f"importing '{module_name}' failed: {_one_line(exc)}") from exc
    # SyntaxError, ImportError, anything raised at import time, and sys.exit("reason") from
    # an app that refuses to start: its reason becomes our one-line error. (Ctrl-C, a
    # KeyboardInterrupt, still stops greenserve.)
    except (Exception, SystemExit) as exc:
        _trim_traceback(exc)
        raise AppLoadError(f"importing '{module_name}' failed: {_one_line(exc)}") from exc


def _default_app(module, module_name):
    for name in DEFAULT_NAMES:
        if hasattr(module, name):
            return load_app(f"{module_name}:{name}")
    callables = [n for n in _public_names(module) if callable(getattr(module, n, None))
                 and not isinstance(getattr(module, n), type(sys))]
    hint = f"; callables there: {', '.join(sorted(callables)[:5])}" if callables else ""
    raise AppLoadError(f"module '{module_name}' has no 'application' or 'app'; name the "
                       f"application as {module_name}:NAME{hint}")


def _lookup(module, module_name, path):
    obj, where = module, f"module '{module_name}'"
    for depth, name in enumerate(path, 1):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            close = difflib.get_close_matches(name, _public_names(obj), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise AppLoadError(f"{where} has no attribute '{name}'{hint}") from None
        where = f"'{module_name}:{'.'.join(path[:depth])}'"
    return obj


def _call_factory(factory, label, args, kwargs):
    if not callable(factory):
        raise AppLoadError(f"{label} is {_describe(factory)}, which is not callable, so it "
                           f"cannot be called as a factory")
    try:
        return factory(*args, **kwargs)
    except (Exception, SystemExit) as exc:  # sys.exit("reason") too, as at import
        _trim_traceback(exc)
        raise AppLoadError(f"factory {label}() raised {_one_line(exc)}") from exc


def _public_names(obj):
    return [name for name in dir(obj) if not name.startswith("_")]


def _suggest_module(name):
    """A did-you-mean for a module that does not exist, from what is importable."""
    parent, _, leaf = name.rpartition(".")
    try:
        if parent:
            search = getattr(importlib.import_module(parent), "__path__", None)
            if search is None:
                return ""
            names = [info.name for info in pkgutil.iter_modules(search)]
        else:
            names = [info.name for info in pkgutil.iter_modules()]
    except Exception:  # the hint is a courtesy; never let it mask the real error
        return ""
    close = difflib.get_close_matches(leaf, names, n=1)
    if not close:
        return ""
    return f" (did you mean '{parent + '.' if parent else ''}{close[0]}'?)"


def _describe(obj):
    if obj is None:
        return "None"
    name = type(obj).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _one_line(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _trim_traceback(exc):
    """Drop the leading frames of this module and of importlib from ``exc``'s traceback.

    The traceback then starts in the application's own code, which is all its author needs.
    """
    tb = exc.__traceback__
    while tb is not None and _is_machinery(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    if tb is not None:
        exc.__traceback__ = tb


def _is_machinery(filename):
    return filename in (__file__, importlib.__file__) or filename.startswith("<frozen importlib")


def format_app_error(exc):
    """The traceback of an ``AppLoadError``'s cause (the app's own exception), or ''."""
    cause = exc.__cause__
    if cause is None:
        return ""
    return "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
