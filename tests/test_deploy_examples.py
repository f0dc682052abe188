"""The deployment kit in examples/deploy is consistent and valid: every greenserve command
line in it is one greenserve accepts, its timeouts fit the proxy's, the systemd units pass
``systemd-analyze verify``, the container runs as a non-root user and stops with SIGTERM.

The proxy configs themselves run for real in test_deploy_nginx.py and test_deploy_apache.py.
"""

import json
import re
import shlex
import shutil
import subprocess
import sys

import pytest

import procs
from greenserve.cli import build_parser
from greenserve.config import SETTINGS, load_config, settings_from_env

DEPLOY = procs.REPO / "examples" / "deploy"
NGINX_UPSTREAM_IDLE = 60   # keepalive_timeout in nginx.conf's upstream
APACHE_POOL_TTL = 60       # ttl= in apache.conf's ProxyPass


def greenserve_config(argv, environ=None):
    """The Config greenserve would run with for this command line (and environment)."""
    args = vars(build_parser().parse_args(argv))
    args.pop("app")
    return load_config(cli=args, environ=environ or {})


def commented_command(path):
    """The `greenserve ...` command quoted in a config file's comments."""
    match = re.search(r"^#\s+greenserve (myproject\S* .+)$", path.read_text(), re.MULTILINE)
    return shlex.split(match.group(1))


@pytest.mark.parametrize("name", ["nginx.conf", "apache.conf"])
def test_proxy_configs_name_a_valid_greenserve_command(name):
    config = greenserve_config(commented_command(DEPLOY / name))
    assert config.bind == ("127.0.0.1:8000",)  # the address the config proxies to
    assert config.keep_alive > max(NGINX_UPSTREAM_IDLE, APACHE_POOL_TTL)
    text = (DEPLOY / name).read_text()
    assert "127.0.0.1:8000" in text


def test_proxy_idle_timeouts_are_the_ones_checked_here():
    assert re.search(rf"^\s+keepalive_timeout {NGINX_UPSTREAM_IDLE}s;",
                     (DEPLOY / "nginx.conf").read_text(), re.MULTILINE)
    assert re.search(rf"^\s+ProxyPass / \S+ ttl={APACHE_POOL_TTL}( \S+)*$",
                     (DEPLOY / "apache.conf").read_text(), re.MULTILINE)


# -- systemd --------------------------------------------------------------------------------------

def exec_start():
    text = (DEPLOY / "greenserve.service").read_text().replace("\\\n", " ")
    return shlex.split(re.search(r"^ExecStart=(.+)$", text, re.MULTILINE).group(1))


def unit_value(name, key):
    return re.search(rf"^{key}=(.+)$", (DEPLOY / name).read_text(), re.MULTILINE).group(1)


def test_systemd_service_runs_a_valid_command_that_stops_in_time():
    binary, *argv = exec_start()
    assert binary.endswith("/greenserve")
    config = greenserve_config(argv)
    assert config.keep_alive > NGINX_UPSTREAM_IDLE
    assert int(unit_value("greenserve.service", "TimeoutStopSec")) > config.graceful_timeout
    assert unit_value("greenserve.service", "KillMode") == "mixed"
    assert unit_value("greenserve.service", "RestartPreventExitStatus") == "2"
    assert unit_value("greenserve.service", "User") != "root"
    assert unit_value("greenserve.socket", "ListenStream") == "127.0.0.1:8000"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_units_verify(tmp_path):
    # verify checks that ExecStart's program exists: point it at one that does.
    service = (DEPLOY / "greenserve.service").read_text().replace(
        "/srv/app/venv/bin/greenserve", sys.executable)
    (tmp_path / "greenserve.service").write_text(service)
    shutil.copy(DEPLOY / "greenserve.socket", tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", "./greenserve.socket",
                             "./greenserve.service"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=procs.WAIT)
    assert result.returncode == 0 and "greenserve." not in result.stderr, result.stderr


# -- Docker ---------------------------------------------------------------------------------------

def dockerfile():
    """Instructions of the Dockerfile: (keyword, arguments) with continuations joined."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    return [tuple(line.split(None, 1)) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_runs_greenserve_unprivileged_and_stops_with_sigterm():
    instructions = dockerfile()
    keywords = [keyword for keyword, _ in instructions]
    assert dict(instructions)["STOPSIGNAL"] == "SIGTERM"
    user = dict(instructions)["USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    # USER comes after everything that needs root and before the command.
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")
    command = json.loads(dict(instructions)["CMD"])  # exec form: greenserve gets the signal
    assert command[0] == "greenserve"
    environ = dict(shlex.split(item)[0].split("=", 1)
                   for keyword, args in instructions if keyword == "ENV"
                   for item in shlex.split(args, posix=False))
    assert int(environ["WEB_CONCURRENCY"]) >= 1
    # greenserve's own environment variables, read as greenserve reads them.
    settings = settings_from_env(environ)
    config = load_config(cli={}, environ=environ)
    assert settings and config.bind == ("0.0.0.0:8000",)
    assert config.keep_alive > NGINX_UPSTREAM_IDLE
    # The Kubernetes manifest runs the image as the same user.
    manifest = kubernetes()[0]["spec"]["template"]["spec"]
    assert manifest["securityContext"]["runAsUser"] == int(uid)


# -- Kubernetes -----------------------------------------------------------------------------------

def kubernetes():
    yaml = pytest.importorskip("yaml")
    return list(yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()))


def container_args(container):
    return dict(arg[2:].split("=", 1) for arg in container["args"] if arg.startswith("--"))


def test_kubernetes_probes_timeouts_and_user():
    deployment, service, _ = kubernetes()
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container_args(container)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert args["bind"].endswith(f":{ports['http']}")
    assert args["metrics-bind"] == f"0.0.0.0:{ports['admin']}" and ports["admin"] == 9100
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    # preStop, then the drain, must end before the kubelet's SIGKILL.
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + float(args["graceful-timeout"])
    assert float(args["keep-alive"]) > NGINX_UPSTREAM_IDLE
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # The Service exposes the app, not the admin port.
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_kubernetes_admin_port_is_open_to_the_scraper_only():
    deployment, _, policy = kubernetes()
    assert policy["kind"] == "NetworkPolicy"
    assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    named = {port["name"] for port in container["ports"]}
    rules = {rule["ports"][0]["port"]: rule.get("from") for rule in policy["spec"]["ingress"]}
    assert set(rules) == named == {"http", "admin"}
    assert all(len(rule["ports"]) == 1 for rule in policy["spec"]["ingress"])
    assert rules["http"] is None  # the app: from anywhere (the Ingress controller)
    (scraper,) = rules["admin"]  # the admin port: from the selected pods only
    assert scraper["namespaceSelector"]["matchLabels"] and scraper["podSelector"]["matchLabels"]
    # The probes use the admin port: the kubelet (on the pod's node) is always let through.
    assert {container[probe]["httpGet"]["port"] for probe in
            ("readinessProbe", "livenessProbe", "startupProbe")} == {"admin"}


def test_kubernetes_command_line_is_valid():
    (container,) = kubernetes()[0]["spec"]["template"]["spec"]["containers"]
    if "metrics_bind" not in SETTINGS:
        pytest.skip("--metrics-bind (the admin listener) is not in this greenserve yet")
    assert container["command"] == ["greenserve"]
    greenserve_config(container["args"])
