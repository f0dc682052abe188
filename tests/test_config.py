"""Settings: precedence (CLI > env > file > default), validation, unknown keys, lists."""

import dataclasses

import pytest

from greenserve.config import SETTINGS, Config, load_config, option_name
from greenserve.errors import ConfigError


def write_toml(tmp_path, text):
    path = tmp_path / "greenserve.toml"
    path.write_text(text)
    return str(path)


def test_defaults():
    config = load_config()
    assert config.bind == ("127.0.0.1:8000",)
    assert config.backlog == 2048
    assert config.monkey_patch is True
    assert config.access_log is None
    assert config.graceful_timeout == 30.0


def test_every_setting_has_a_flag_and_help():
    for name, spec in SETTINGS.items():
        assert spec.metadata["flags"], name
        assert f"--{option_name(name)}" in spec.metadata["flags"], name
        assert spec.metadata["help"].strip(), name


@pytest.mark.parametrize("source", ["file", "env", "cli"])
def test_each_source_alone_overrides_the_default(tmp_path, source):
    cli, environ = {}, {}
    if source == "file":
        cli["config"] = write_toml(tmp_path, "backlog = 11\n")
    elif source == "env":
        environ["GREENSERVE_BACKLOG"] = "11"
    else:
        cli["backlog"] = "11"
    assert load_config(cli=cli, environ=environ).backlog == 11


def test_precedence_cli_over_env_over_file_over_default(tmp_path):
    path = write_toml(tmp_path, 'backlog = 1\nmax-connections = 1\nkeep-alive = 1\n')
    environ = {"GREENSERVE_BACKLOG": "2", "GREENSERVE_MAX_CONNECTIONS": "2"}
    config = load_config(cli={"config": path, "backlog": "3"}, environ=environ)
    assert config.backlog == 3            # cli beats env and file
    assert config.max_connections == 2    # env beats file
    assert config.keep_alive == 1.0       # file beats default
    assert config.header_timeout == 10.0  # default


def test_config_file_named_by_environment(tmp_path):
    path = write_toml(tmp_path, "backlog = 7\n")
    assert load_config(environ={"GREENSERVE_CONFIG": path}).backlog == 7


def test_config_file_keys_accept_underscores_and_typed_values(tmp_path):
    path = write_toml(tmp_path, 'max_connections = 5\nmonkey-patch = false\n'
                                'bind = ["127.0.0.1:1", "unix:/tmp/x.sock"]\n')
    config = load_config(cli={"config": path})
    assert config.max_connections == 5
    assert config.monkey_patch is False
    assert config.bind == ("127.0.0.1:1", "unix:/tmp/x.sock")


def test_cli_lists_and_flags():
    config = load_config(cli={"bind": ["127.0.0.1:1", "[::1]:2"], "monkey_patch": False})
    assert config.bind == ("127.0.0.1:1", "[::1]:2")
    assert config.monkey_patch is False


@pytest.mark.parametrize("raw, expected", [
    ("127.0.0.1:1,127.0.0.1:2", ("127.0.0.1:1", "127.0.0.1:2")),
    ("127.0.0.1:1 127.0.0.1:2", ("127.0.0.1:1", "127.0.0.1:2")),
    (" unix:/a.sock , 127.0.0.1:2 ", ("unix:/a.sock", "127.0.0.1:2")),
    ("127.0.0.1:9", ("127.0.0.1:9",)),
])
def test_list_environment_variables(raw, expected):
    assert load_config(environ={"GREENSERVE_BIND": raw}).bind == expected


@pytest.mark.parametrize("raw, expected", [("0", False), ("false", False), ("no", False),
                                           ("1", True), ("TRUE", True), ("on", True)])
def test_boolean_environment_variables(raw, expected):
    assert load_config(environ={"GREENSERVE_MONKEY_PATCH": raw}).monkey_patch is expected


def test_unrelated_environment_is_ignored():
    config = load_config(environ={"GREENSERVE": "x", "GREENSERVE_": "y", "PATH": "/bin"})
    assert config == load_config()


@pytest.mark.parametrize("cli, message", [
    ({"backlog": "abc"}, "backlog: 'abc' from the command line is not a valid number"),
    ({"backlog": "0"}, "backlog: '0' from the command line must be a whole number of at least 1"),
    ({"keep_alive": "-1"}, "keep-alive: '-1' from the command line must be a number of seconds"),
    ({"keep_alive": "nan"}, "keep-alive: 'nan' from the command line must be a number"),
    ({"log_level": "loud"}, "log-level: 'loud' from the command line must be one of"),
    ({"root_path": "app/"}, "root-path: 'app/' from the command line must start with '/'"),
    ({"limit_request_head": str(1 << 70)},
     f"limit-request-head: '{1 << 70}' from the command line must be at most"),
    ({"root_path": "/a%2"}, "root-path: '/a%2' from the command line has a '%' that is not"),
    ({"root_path": "/a\nb"}, "root-path: '/a\\nb' from the command line must not contain"),
    ({"url_scheme": "ftp"}, "url-scheme: 'ftp' from the command line must be http or https"),
])
def test_bad_cli_values(cli, message):
    with pytest.raises(ConfigError) as caught:
        load_config(cli=cli, cli_source="the command line")
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_bad_env_value_names_the_source():
    with pytest.raises(ConfigError, match=r"^max-connections: 'lots' from env is not a valid"):
        load_config(environ={"GREENSERVE_MAX_CONNECTIONS": "lots"})
    with pytest.raises(ConfigError, match=r"^monkey-patch: 'maybe' from env must be true or"):
        load_config(environ={"GREENSERVE_MONKEY_PATCH": "maybe"})


def test_bad_file_values(tmp_path):
    path = write_toml(tmp_path, 'backlog = "many"\n')
    with pytest.raises(ConfigError, match=r"backlog: 'many' from config file .* not a valid"):
        load_config(cli={"config": path})
    path = write_toml(tmp_path, "backlog = true\n")
    with pytest.raises(ConfigError, match="backlog: True from config file"):
        load_config(cli={"config": path})
    path = write_toml(tmp_path, "bind = 8000\n")
    with pytest.raises(ConfigError, match="bind: 8000 from config file"):
        load_config(cli={"config": path})


@pytest.mark.parametrize("line", ["umask = 77", "socket-mode = 660", "socket-mode = 0o660"])
def test_a_mode_written_as_a_toml_number_is_refused(tmp_path, line):
    # TOML reads 77 as decimal (octal 115): "umask = 77" meant to keep other users out would
    # have let them connect. A mode is written as chmod writes it, in a string.
    path = write_toml(tmp_path, line + "\n")
    key = line.split()[0]
    with pytest.raises(ConfigError, match=rf"{key} = \d+: write a mode as a string of octal "
                                          rf"digits, e.g. {key} = \"\d+\""):
        load_config(cli={"config": path})


@pytest.mark.parametrize("line, name, value", [
    ('umask = "077"', "umask", 0o77), ('socket-mode = "660"', "socket_mode", 0o660),
    ("umask = 7", "umask", 0o7), ("umask = 0", "umask", 0),  # the same in both bases
])
def test_modes_in_a_config_file(tmp_path, line, name, value):
    path = write_toml(tmp_path, line + "\n")
    assert getattr(load_config(cli={"config": path}), name) == value


def test_unknown_file_key_suggests_the_closest(tmp_path):
    path = write_toml(tmp_path, "max-conections = 10\n")
    with pytest.raises(ConfigError) as caught:
        load_config(cli={"config": path})
    assert str(caught.value) == (f"config file {path}: unknown option 'max-conections' "
                                 f"(did you mean 'max-connections'?)")


def test_unknown_file_key_without_a_close_match(tmp_path):
    path = write_toml(tmp_path, "zzzzzz = 1\n")
    with pytest.raises(ConfigError, match=r"unknown option 'zzzzzz'$"):
        load_config(cli={"config": path})


@pytest.mark.parametrize("line, reason", [
    ('config = "other.toml"', "'config' cannot be set in a config file (one file is read: the "
                              "one -c/--config or GREENSERVE_CONFIG names)"),
    ("check-config = true", "'check-config' is a command-line option only (give "
                            "--check-config when running greenserve)"),
])
def test_keys_a_file_cannot_set_are_refused_with_why(tmp_path, line, reason):
    path = write_toml(tmp_path, line + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(cli={"config": path})
    assert str(caught.value) == f"config file {path}: {reason}"


def test_file_key_suggestions_name_only_what_a_file_may_set(tmp_path):
    path = write_toml(tmp_path, "confg = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(cli={"config": path})
    assert "did you mean 'config'" not in str(caught.value)


def test_messages_name_where_a_library_value_came_from():
    from greenserve import Server
    with pytest.raises(ConfigError, match=r"^keep-alive: 'soon' from Server\(\) options is not "
                                          r"a valid number$"):
        Server(lambda environ, start_response: [], keep_alive="soon")
    with pytest.raises(ConfigError, match=r"^keep-alive: 'soon' from Config\.replace\(\) is "):
        Config().replace(keep_alive="soon")


@pytest.mark.parametrize("raw, message", [
    # The reason quotes the value: it is said once.
    ("300.1.1.1", "forwarded-allow-ips: '300.1.1.1' from env is not an IP address"),
    # The reason quotes one entry of a list: after a colon.
    ("10.0.0.1,300.1.1.1", "forwarded-allow-ips: '10.0.0.1,300.1.1.1' from env: '300.1.1.1' "
                           "is not an IP address"),
])
def test_a_value_is_quoted_once(raw, message):
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"GREENSERVE_FORWARDED_ALLOW_IPS": raw})
    assert str(caught.value).startswith(message)


def test_unknown_cli_key():
    with pytest.raises(ConfigError, match=r"unknown option 'backlgo' \(did you mean 'backlog'"):
        load_config(cli={"backlgo": "1"})


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="config file .*nope.toml: No such file"):
        load_config(cli={"config": str(tmp_path / "nope.toml")})
    path = write_toml(tmp_path, "backlog = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(cli={"config": path})


def test_config_is_frozen_and_replace_validates():
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.backlog = 1
    assert config.replace(backlog="12").backlog == 12
    with pytest.raises(ConfigError, match=r"^backlog: '-3' .*must be a whole number of at least 1"):
        config.replace(backlog="-3")


def test_empty_bind_is_refused():
    with pytest.raises(ConfigError, match=r"^bind: at least one address is needed$"):
        load_config(environ={"GREENSERVE_BIND": " "})


@pytest.mark.parametrize("cli, message", [
    ({"server_header": "edge\r\nX-Injected: 1"}, "server-header: "),
    ({"server_header": " padded"}, "server-header: "),
    ({"body_min_rate": "-1"}, "body-min-rate: "),
    ({"send_min_rate": "-1"}, "send-min-rate: "),
    ({"send_min_rate": "fast"}, "send-min-rate: "),
    ({"buffer_chunked_bodies": "lots"}, "buffer-chunked-bodies: "),
    ({"forwarded_allow_ips": "127.0.0.1,10.0.0.300/8"}, "forwarded-allow-ips: "),
    ({"proxy_allow_ips": "localhost"}, "proxy-allow-ips: "),
])
def test_bad_values_of_the_proxy_and_hardening_settings(cli, message):
    with pytest.raises(ConfigError) as info:
        load_config(cli=cli)
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text


def test_url_scheme_is_http_or_https():
    assert load_config(cli={"url_scheme": "HTTPS"}).url_scheme == "https"
    assert load_config(environ={"GREENSERVE_URL_SCHEME": "http"}).url_scheme == "http"


def test_proxy_and_hardening_settings_accept_good_values():
    config = load_config(cli={"server_header": "", "body_min_rate": "0", "send_min_rate": "0",
                              "forwarded_allow_ips": " 10.0.0.0/8 , unix ",
                              "proxy_allow_ips": "*"})
    assert config.server_header == "" and config.body_min_rate == config.send_min_rate == 0
    assert config.forwarded_allow_ips == "10.0.0.0/8,unix"
