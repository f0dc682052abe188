"""TLS settings -> SSLContext (greenserve/tls.py): real certificates from trustme, real
handshakes with verifying clients over 127.0.0.1, and the command's one-line errors."""

import socket
import ssl
import sys
import threading

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key

import procs
from greenserve.config import load_config
from greenserve.errors import ConfigError
from greenserve.tls import check_in_child, server_context, subject_dn


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def pki(ca, tmp_path_factory):
    """Certificate files, good and bad, in one directory; names -> paths."""
    folder = tmp_path_factory.mktemp("pki")
    server = ca.issue_cert("localhost", "127.0.0.1")
    stranger = trustme.CA().issue_cert("localhost")
    files = {
        "cert": server.cert_chain_pems[0], "key": server.private_key_pem,
        "both": server.private_key_and_cert_chain_pem, "ca": ca.cert_pem,
        "other-key": stranger.private_key_pem,
    }
    paths = {}
    for name, blob in files.items():
        paths[name] = folder / f"{name}.pem"
        blob.write_to_path(paths[name])
    key = load_pem_private_key(server.private_key_pem.bytes(), None)
    paths["encrypted-key"] = folder / "encrypted-key.pem"
    paths["encrypted-key"].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    paths["garbage"] = folder / "garbage.pem"
    paths["garbage"].write_text("not a certificate\n")
    paths["missing"] = folder / "missing.pem"
    paths["dir"] = folder
    return {name: str(path) for name, path in paths.items()}


def config(pki, **settings):
    """A Config from settings whose string values may name files of ``pki``."""
    return load_config(cli={name: pki.get(value, value) for name, value in settings.items()})


# -- errors: one line naming the file -----------------------------------------------------------

@pytest.mark.parametrize("settings, message", [
    ({"certfile": "missing"}, "--certfile {missing}: no such file"),
    ({"certfile": "dir"}, "--certfile {dir}: is a directory"),
    ({"certfile": "cert", "keyfile": "missing"}, "--keyfile {missing}: no such file"),
    ({"certfile": "cert"}, "--certfile {cert} (no --keyfile): no PEM private key in it"),
    ({"certfile": "garbage", "keyfile": "key"}, "--certfile {garbage}: no PEM certificate in it"),
    ({"certfile": "key", "keyfile": "key"}, "--certfile {key}: no PEM certificate in it"),
    ({"certfile": "cert", "keyfile": "garbage"}, "--keyfile {garbage}: no PEM private key in it"),
    ({"certfile": "cert", "keyfile": "other-key"},
     "--keyfile {other-key} is not the private key of the certificate in --certfile {cert}"),
    ({"certfile": "cert", "keyfile": "encrypted-key"},
     "--keyfile {encrypted-key}: the private key is encrypted and greenserve cannot ask for "
     "its passphrase (store it decrypted, readable by root only)"),
    ({"certfile": "both", "ciphers": "NO-SUCH-CIPHER"},
     "--ciphers 'NO-SUCH-CIPHER': OpenSSL knows no cipher by that list (try 'openssl ciphers "
     "NO-SUCH-CIPHER')"),
    ({"certfile": "both", "cert_reqs": "required"},
     "--cert-reqs required needs --ca-certs: the authorities whose client certificates are "
     "accepted"),
    ({"certfile": "both", "cert_reqs": "optional", "ca_certs": "missing"},
     "--ca-certs {missing}: no such file"),
    ({"certfile": "both", "cert_reqs": "optional", "ca_certs": "garbage"},
     "--ca-certs {garbage}: not PEM certificates (NO_CERTIFICATE_OR_CRL_FOUND)"),
    ({"keyfile": "key"}, "--keyfile needs --certfile (the server's certificate) to serve HTTPS"),
    ({"ca_certs": "ca"}, "--ca-certs needs --certfile (the server's certificate) to serve HTTPS"),
    ({"ciphers": "ECDHE+AESGCM"},
     "--ciphers needs --certfile (the server's certificate) to serve HTTPS"),
    ({"cert_reqs": "optional"},
     "--cert-reqs needs --certfile (the server's certificate) to serve HTTPS"),
])
def test_bad_tls_settings(pki, settings, message):
    with pytest.raises(ConfigError) as caught:
        server_context(config(pki, **settings))
    assert str(caught.value) == message.format(**pki)
    # The same check from a master process, run in a child, says the same.
    with pytest.raises(ConfigError) as caught:
        check_in_child(config(pki, **settings))
    assert str(caught.value) == message.format(**pki)


@pytest.mark.parametrize("setting, raw, reason", [
    ("cert_reqs", "sometimes", "must be none, optional or required"),
    ("tls_min_version", "1.1", "must be 1.2 or 1.3"),
])
def test_bad_values(setting, raw, reason):
    with pytest.raises(ConfigError, match=rf"from Server\(\) options {reason}$"):
        load_config(cli={setting: raw})


def test_no_certfile_no_tls(pki):
    assert server_context(load_config()) is None
    assert check_in_child(load_config()) is None


def test_check_in_child_passes_and_never_imports_ssl_here(pki):
    code = ("import sys; from greenserve.config import load_config; "
            "from greenserve.tls import check_in_child; "
            f"check_in_child(load_config(cli={{'certfile': {pki['both']!r}}})); "
            "print('ssl' in sys.modules, '_ssl' in sys.modules)")
    result = procs.run([sys.executable, "-c", code])
    assert (result.returncode, result.stdout, result.stderr) == (0, "False False\n", "")


# -- real handshakes ----------------------------------------------------------------------------

def handshake(server_ctx, client_ctx):
    """One TLS connection over 127.0.0.1: what each side saw (dicts)."""
    server_side, client_side = {}, {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve():
            conn, _ = listener.accept()
            conn.settimeout(10)
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    server_side.update(alpn=tls.selected_alpn_protocol(),
                                       version=tls.version(), peer=tls.getpeercert())
                    tls.sendall(b"hi")
                    tls.recv(1)  # until the client closes
            except (ssl.SSLError, OSError) as exc:
                server_side["error"] = exc
            finally:
                conn.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=10) as raw, \
                    client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                client_side.update(alpn=tls.selected_alpn_protocol(), version=tls.version(),
                                   data=tls.recv(2))
        except (ssl.SSLError, OSError) as exc:
            client_side["error"] = exc
        thread.join(10)
        assert not thread.is_alive()
    return server_side, client_side


def client_context(ca, **options):
    context = ssl.create_default_context(cafile=None)
    ca.configure_trust(context)
    for name, value in options.items():
        setattr(context, name, value)
    return context


def test_handshake_with_a_verifying_client_offers_http11_in_alpn(pki, ca):
    context = server_context(config(pki, certfile="cert", keyfile="key"))
    client = client_context(ca)
    client.set_alpn_protocols(["h2", "http/1.1"])
    server_side, client_side = handshake(context, client)
    assert client_side == {"alpn": "http/1.1", "version": "TLSv1.3", "data": b"hi"}
    assert server_side["alpn"] == "http/1.1" and server_side["peer"] is None


def test_client_offering_only_h2_gets_no_alpn_but_a_connection(pki, ca):
    # RFC 7301 §3.2 allows the server to answer without ALPN; HTTP/1.1 is then assumed.
    client = client_context(ca)
    client.set_alpn_protocols(["h2"])
    _, client_side = handshake(server_context(config(pki, certfile="both")), client)
    assert client_side["alpn"] is None and client_side["data"] == b"hi"


def test_an_untrusting_client_refuses_the_certificate(pki):
    stranger = trustme.CA()
    _, client_side = handshake(server_context(config(pki, certfile="both")),
                               client_context(stranger))
    assert isinstance(client_side["error"], ssl.SSLCertVerificationError)


@pytest.mark.parametrize("minimum, client_max, works", [
    ("1.2", ssl.TLSVersion.TLSv1_2, True),
    ("1.3", ssl.TLSVersion.TLSv1_2, False),
    ("1.3", ssl.TLSVersion.TLSv1_3, True),
])
def test_minimum_version(pki, ca, minimum, client_max, works):
    context = server_context(config(pki, certfile="both", tls_min_version=minimum))
    server_side, client_side = handshake(context, client_context(ca, maximum_version=client_max))
    assert ("error" not in client_side) is works
    if works:
        assert client_side["version"] == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                          ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[client_max]
    else:
        assert "error" in server_side


def test_ciphers_restrict_tls12(pki, ca):
    context = server_context(config(pki, certfile="both", ciphers="ECDHE+AESGCM"))
    tls12 = dict(maximum_version=ssl.TLSVersion.TLSv1_2)
    chacha = client_context(ca, **tls12)
    chacha.set_ciphers("ECDHE+CHACHA20")
    assert "error" in handshake(context, chacha)[1]
    aesgcm = client_context(ca, **tls12)
    aesgcm.set_ciphers("ECDHE+AESGCM")
    assert handshake(context, aesgcm)[1]["data"] == b"hi"


@pytest.fixture(scope="module")
def client_cert(ca, tmp_path_factory):
    """A client certificate issued by ``ca``: the PEM file with key and chain."""
    issued = ca.issue_cert("alice@example.org", common_name="alice, the \"admin\"",
                           organization_name="Example", organization_unit_name="Ops")
    path = tmp_path_factory.mktemp("client") / "alice.pem"
    issued.private_key_and_cert_chain_pem.write_to_path(path)
    return str(path)


@pytest.mark.parametrize("cert_reqs", ["optional", "required"])
def test_client_certificates(pki, ca, client_cert, cert_reqs):
    context = server_context(config(pki, certfile="both", ca_certs="ca", cert_reqs=cert_reqs))
    with_cert = client_context(ca)
    with_cert.load_cert_chain(client_cert)
    server_side, client_side = handshake(context, with_cert)
    assert client_side["data"] == b"hi"
    assert subject_dn(server_side["peer"]) == ('CN=alice\\, the \\"admin\\",OU=Ops,O=Example')

    server_side, client_side = handshake(context, client_context(ca))  # no certificate
    if cert_reqs == "optional":
        assert client_side["data"] == b"hi" and server_side["peer"] is None
        assert subject_dn(server_side["peer"]) == ""
    else:
        # TLS 1.3: the client learns of the refusal on its first read.
        assert "error" in server_side and "error" in client_side


@pytest.mark.parametrize("rdns, expected", [
    ((), ""),
    (((("commonName", "a"),),), "CN=a"),
    (((("countryName", "DE"),), (("organizationName", "Ex, Inc."),),
      (("commonName", "#1 "),)), "CN=\\#1\\ ,O=Ex\\, Inc.,C=DE"),
    (((("commonName", "a"), ("userId", "7")),), "CN=a+UID=7"),
    (((("1.2.3.4", "x=y;z<"),),), "1.2.3.4=x\\=y\\;z\\<"),
    (((("commonName", "nul\0"),),), "CN=nul\\00"),
])
def test_subject_dn(rdns, expected):
    assert subject_dn({"subject": rdns}) == expected


# -- the command stops at start-up ---------------------------------------------------------------

@pytest.mark.parametrize("mode", [[], ["--workers", "2"]], ids=["one-process", "master"])
def test_command_refuses_a_bad_certificate(pki, tmp_path, mode):
    result = procs.run([*procs.greenserve_command("webapp:app", "-b", "127.0.0.1:0", *mode),
                        "--certfile", pki["cert"], "--keyfile", pki["other-key"]],
                       cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.endswith(
        f"greenserve: error: --keyfile {pki['other-key']} is not the private key of the "
        f"certificate in --certfile {pki['cert']}\n")
    assert "Traceback" not in result.stderr and "worker" not in result.stderr


@pytest.mark.parametrize("mode", [[], ["--workers", "2"]], ids=["one-process", "master"])
def test_command_starts_with_a_good_certificate(pki, tmp_path, mode):
    with procs.Processes(cwd=tmp_path) as processes:
        server = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", *mode,
                                      "--certfile", pki["cert"], "--keyfile", pki["key"])
        host, port = server.address()
        assert f"Listening at https://{host}:{port} " in server.text()
        assert "imported before gevent monkey-patching" not in server.text()
