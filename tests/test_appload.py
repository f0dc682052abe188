"""load_app: every spec form, and every error with its one-line message."""

import importlib
import sys
import textwrap
from wsgiref.validate import validator

import pytest

from greenserve.appload import format_app_error, load_app, parse_spec
from greenserve.errors import AppLoadError
from procs import FIXTURE_APPS

# Every shape a spec can name; copied into modules of per-test names (see ``modules``).
APP_SOURCE = (FIXTURE_APPS / "appforms.py").read_text()


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """Write modules into tmp_path and make them importable; forget them afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written = []

    def write(name, source):
        path = tmp_path.joinpath(*name.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        written.append(name)
        importlib.invalidate_caches()
        return name

    yield write
    for name in list(sys.modules):
        if any(name == w or name.startswith(w.split(".")[0] + ".") or name == w.split(".")[0]
               for w in written):
            del sys.modules[name]


def call(app):
    """Run a WSGI app under wsgiref.validate and return its body."""
    captured = {}

    def start_response(status, headers, exc_info=None):
        captured["status"] = status
        return lambda data: None

    environ = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/", "QUERY_STRING": "",
               "SERVER_NAME": "localhost", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
               "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": _Input(),
               "wsgi.errors": sys.stderr, "wsgi.multithread": False,
               "wsgi.multiprocess": False, "wsgi.run_once": False}
    result = validator(app)(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        result.close()
    assert captured["status"] == "200 OK"
    return body


class _Input:
    def read(self, *args):
        return b""

    def readline(self, *args):
        return b""

    def readlines(self, *args):
        return []

    def __iter__(self):
        return iter(())


def load_error(spec):
    with pytest.raises(AppLoadError) as caught:
        load_app(spec)
    message = str(caught.value)
    assert "\n" not in message
    return caught.value


# -- the forms that work ------------------------------------------------------------------

def test_module_colon_name(modules):
    modules("gs_t_one", APP_SOURCE)
    assert call(load_app("gs_t_one:app")) == b"app"
    assert call(load_app("gs_t_one:application")) == b"application"


def test_bare_module_prefers_application_then_app(modules):
    modules("gs_t_both", APP_SOURCE)
    assert call(load_app("gs_t_both")) == b"application"
    modules("gs_t_apponly", "from gs_t_both import app\n")
    assert call(load_app("gs_t_apponly")) == b"app"


def test_dotted_module_and_attribute(modules):
    modules("gs_t_pkg.__init__", "")
    modules("gs_t_pkg.web", APP_SOURCE)
    assert call(load_app("gs_t_pkg.web:Holder.app")) == b"app"


@pytest.mark.parametrize("spec, expected", [
    ("gs_t_f:create_app()", "((), {})"),
    ("gs_t_f:create_app('prod')", "(('prod',), {})"),
    ("gs_t_f:create_app(1, [2, 3], debug=True, name=None)",
     "((1, [2, 3]), {'debug': True, 'name': None})"),
    ("gs_t_f:create_app({'a': 1}, x=-2.5)", "(({'a': 1},), {'x': -2.5})"),
    (" gs_t_f : create_app( 'spaced' ) ", "(('spaced',), {})"),
])
def test_factory_with_literal_arguments(modules, spec, expected):
    modules("gs_t_f", APP_SOURCE)
    assert call(load_app(spec)).decode() == expected


# -- user mistakes: one line, no app traceback ----------------------------------------------

def test_missing_module(modules):
    error = load_error("gs_t_no_such_module:app")
    assert str(error) == "no module named 'gs_t_no_such_module'"
    assert error.__cause__ is None and format_app_error(error) == ""


def test_missing_module_suggests_a_close_one(modules):
    modules("gs_t_myproject", APP_SOURCE)
    error = load_error("gs_t_myprojct:app")
    assert str(error) == "no module named 'gs_t_myprojct' (did you mean 'gs_t_myproject'?)"


def test_missing_submodule_and_missing_package(modules):
    modules("gs_t_pkg2.__init__", "")
    modules("gs_t_pkg2.views", APP_SOURCE)
    assert str(load_error("gs_t_pkg2.veiws:app")) == (
        "no module named 'gs_t_pkg2.veiws' (did you mean 'gs_t_pkg2.views'?)")
    assert str(load_error("gs_t_nopkg.views:app")).startswith("no module named 'gs_t_nopkg'")


def test_missing_attribute_suggests_a_public_name(modules):
    modules("gs_t_attr", APP_SOURCE)
    error = load_error("gs_t_attr:ap")
    assert str(error) == "module 'gs_t_attr' has no attribute 'ap' (did you mean 'app'?)"
    assert error.__cause__ is None


def test_missing_attribute_without_suggestion(modules):
    modules("gs_t_attr2", APP_SOURCE)
    assert str(load_error("gs_t_attr2:zzzzzz")) == "module 'gs_t_attr2' has no attribute 'zzzzzz'"


def test_private_names_are_not_suggested(modules):
    modules("gs_t_attr3", APP_SOURCE)
    assert "did you mean" not in str(load_error("gs_t_attr3:_privat"))


def test_missing_nested_attribute(modules):
    modules("gs_t_attr4", APP_SOURCE)
    assert str(load_error("gs_t_attr4:Holder.ap")) == (
        "'gs_t_attr4:Holder' has no attribute 'ap' (did you mean 'app'?)")


def test_bare_module_without_default_names(modules):
    modules("gs_t_noapp", "def make_wsgi(): pass\nimport os\n")
    assert str(load_error("gs_t_noapp")) == (
        "module 'gs_t_noapp' has no 'application' or 'app'; name the application as "
        "gs_t_noapp:NAME; callables there: make_wsgi")


def test_not_callable(modules):
    modules("gs_t_nc", APP_SOURCE)
    assert str(load_error("gs_t_nc:not_callable")).startswith(
        "gs_t_nc:not_callable is an int, which is not callable")
    assert str(load_error("gs_t_nc:not_callable()")).startswith(
        "gs_t_nc:not_callable is an int, which is not callable, so it cannot be called")


def test_factory_returning_something_not_callable(modules):
    modules("gs_t_none", APP_SOURCE)
    assert str(load_error("gs_t_none:returns_none()")).startswith(
        "factory gs_t_none:returns_none() returned None, which is not callable")


@pytest.mark.parametrize("spec", [
    "", "   ", ":app", "gs_t:", "gs-t:app", "1mod:app", "mod:1app", "mod:app.", "mod:a b",
    "mod:app()()", "mod:app[0]", "mod:(lambda: 1)()", "mod:create_app(x)",
    "mod:create_app(__import__('os'))", "mod:create_app(*a)", "mod:create_app(**{'a': 1})",
    "mod:create_app(1 if True else 2)", "mod..sub:app", "mod:app:other",
])
def test_malformed_specs(spec):
    error = load_error(spec)
    assert str(error).startswith("malformed app spec"), str(error)


def test_file_name_instead_of_module_name():
    assert str(load_error("myapp.py:app")) == (
        "malformed app spec 'myapp.py:app': give the module name, not the file name "
        "(e.g. 'myapp:app')")


def test_factory_arguments_are_never_evaluated(modules, tmp_path):
    modules("gs_t_safe", APP_SOURCE)
    marker = tmp_path / "pwned"
    load_error(f"gs_t_safe:create_app(open({str(marker)!r}, 'w'))")
    assert not marker.exists()


def test_parse_spec_shapes():
    assert parse_spec("a.b") == ("a.b", None)
    assert parse_spec("a:b.c") == ("a", (["b", "c"], None))
    assert parse_spec("a:f(1, k='v')") == ("a", (["f"], ((1,), {"k": "v"})))


# -- the application's own errors: chained, so its traceback can be shown -------------------

def test_factory_that_raises_keeps_its_traceback(modules):
    modules("gs_t_raises", APP_SOURCE)
    error = load_error("gs_t_raises:broken_factory()")
    assert str(error) == ("factory gs_t_raises:broken_factory() raised "
                          "RuntimeError: database is down")
    shown = format_app_error(error)
    assert "Traceback" in shown and 'raise RuntimeError("database is down")' in shown
    assert "appload.py" not in shown  # starts in the app's code, not greenserve's


def test_import_error_inside_the_module_is_the_apps(modules):
    modules("gs_t_dep", "import gs_t_not_installed_dependency\napp = None\n")
    error = load_error("gs_t_dep:app")
    assert str(error) == ("importing 'gs_t_dep' failed: ModuleNotFoundError: No module named "
                          "'gs_t_not_installed_dependency'")
    shown = format_app_error(error)
    assert "gs_t_dep.py" in shown and "import gs_t_not_installed_dependency" in shown
    assert "importlib" not in shown and "appload.py" not in shown


def test_exception_at_import_time_is_the_apps(modules):
    modules("gs_t_boom", "raise ValueError('bad settings')\n")
    error = load_error("gs_t_boom:app")
    assert str(error) == "importing 'gs_t_boom' failed: ValueError: bad settings"
    assert "raise ValueError('bad settings')" in format_app_error(error)


@pytest.mark.parametrize("call, shown", [("sys.exit('no DATABASE_URL')", ": no DATABASE_URL"),
                                         ("sys.exit(3)", ": 3"), ("sys.exit()", "")])
def test_sys_exit_at_import_time_is_the_apps(modules, call, shown):
    modules("gs_t_exits", f"import sys\n{call}\n")
    error = load_error("gs_t_exits:app")
    assert str(error) == f"importing 'gs_t_exits' failed: SystemExit{shown}"
    assert call in format_app_error(error)


def test_factory_calling_sys_exit_is_the_apps(modules):
    modules("gs_t_exit_factory", "import sys\ndef make():\n    sys.exit('no key')\n")
    error = load_error("gs_t_exit_factory:make()")
    assert str(error) == "factory gs_t_exit_factory:make() raised SystemExit: no key"


def test_syntax_error_in_the_module_is_the_apps(modules):
    modules("gs_t_syntax", "def app(:\n")
    error = load_error("gs_t_syntax:app")
    assert str(error).startswith("importing 'gs_t_syntax' failed: SyntaxError:")
    assert "gs_t_syntax.py" in format_app_error(error)


def test_load_app_does_not_touch_sys_path(modules):
    modules("gs_t_path", APP_SOURCE)
    before = list(sys.path)
    load_app("gs_t_path:app")
    load_error("gs_t_path_missing:app")
    assert sys.path == before
