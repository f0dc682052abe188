"""TLS settings -> one server ``ssl.SSLContext``. The handshake itself is the connection's.

``server_context(config)`` reads --certfile, --keyfile, --ca-certs, --cert-reqs, --ciphers
and --tls-min-version and returns a context ready to wrap accepted sockets, or None when
--certfile is not set. Whatever is wrong with the files or settings is a ``ConfigError``
with one line naming the file, so the command stops at start-up with exit status 2.

``ssl`` is imported inside the functions, never at import: a master process imports this
module but must not load ``ssl`` before its workers monkey-patch it (``check_in_child``
does the master's checking in a short-lived child for that reason).
"""

import os

from .errors import ConfigError

# What the connection offers in ALPN (RFC 7301): greenserve speaks HTTP/1.1 only, so a
# client offering h2 and http/1.1 settles on http/1.1 during the handshake.
ALPN_PROTOCOLS = ("http/1.1",)


def server_context(config, cooperative=False):
    """An ``ssl.SSLContext`` for serving HTTPS as ``config`` says, or None without TLS.

    Build it once per process, before dropping privileges (the key may be root's only).
    ``cooperative``: made of gevent's SSLContext, whose sockets cooperate with the hub.
    """
    _check_combination(config)
    if not config.certfile:
        return None
    import ssl

    context_class = ssl.SSLContext
    if cooperative:
        # gevent's context wraps sockets into gevent SSL sockets even in a process that is
        # not monkey-patched (a Server inside a library user's program, the tests).
        from gevent.ssl import SSLContext as context_class
    context = context_class(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = {"1.2": ssl.TLSVersion.TLSv1_2,
                               "1.3": ssl.TLSVersion.TLSv1_3}[config.tls_min_version]
    # Client-initiated renegotiation lets one client make the server do handshake work
    # over and over on one connection; HTTP/1.1 never needs it (RFC 7540 §9.2.1 bans it
    # for HTTP/2 for the same reason).
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    if config.ciphers:
        try:
            context.set_ciphers(config.ciphers)
        except ssl.SSLError:
            raise ConfigError(f"--ciphers {config.ciphers!r}: OpenSSL knows no cipher by "
                              f"that list (try 'openssl ciphers {config.ciphers}')") from None
    _load_certificate(context, config.certfile, config.keyfile)
    if config.ca_certs:
        _load_authorities(context, config.ca_certs)
    context.verify_mode = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
                           "required": ssl.CERT_REQUIRED}[config.cert_reqs]
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    return context


def check_in_child(config):
    """``server_context(config)`` in a short-lived child process: ConfigError if it fails.

    For a master process: it must stop a bad certificate at start-up, once, rather than
    let every worker it forks fail on it; yet it must not import ``ssl`` itself, because
    the workers it forks monkey-patch ``ssl`` and a module imported before that may block
    or misbehave. The child inherits this process's privileges, so it reads the files as
    the workers will before they drop theirs.
    """
    if not config.certfile:
        _check_combination(config)
        return
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: check, say what is wrong on the pipe, exit without cleanup
        status = 0
        try:
            os.close(read_end)
            try:
                server_context(config)
            except ConfigError as exc:
                os.write(write_end, str(exc).encode("utf-8", "replace")[:4096])
                status = 2
        except BaseException as exc:  # noqa: BLE001 - report anything, never unwind here
            os.write(write_end, f"TLS check failed: {exc!r}".encode()[:4096])
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as pipe:
        for chunk in iter(lambda: pipe.read(4096), b""):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    message = b"".join(chunks).decode("utf-8", "replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise ConfigError(message or "TLS check failed in a child process")


def subject_dn(certificate):
    """The subject of a peer certificate (``SSLSocket.getpeercert()``'s dict) as one RFC 4514
    string, most specific part first: ``CN=alice,O=Example,C=DE``. '' without one."""
    if not certificate:
        return ""
    names = {"commonName": "CN", "countryName": "C", "localityName": "L",
             "stateOrProvinceName": "ST", "organizationName": "O",
             "organizationalUnitName": "OU", "streetAddress": "STREET",
             "domainComponent": "DC", "userId": "UID", "emailAddress": "emailAddress"}
    parts = []
    # getpeercert() lists the RDNs from the root of the name down; RFC 4514 §2.1 writes
    # them the other way round.
    for rdn in reversed(certificate.get("subject", ())):
        parts.append("+".join(f"{names.get(key, key)}={_escape_dn_value(value)}"
                              for key, value in rdn))
    return ",".join(parts)


def _escape_dn_value(value):
    # RFC 4514 §2.4: these characters are escaped with a backslash, and so are a leading
    # space or '#', a trailing space and NUL.
    escaped = ["\\00" if ch == "\0" else "\\" + ch if ch in ',+"\\<>;=' else ch
               for ch in value]
    if escaped and escaped[0] in (" ", "#"):
        escaped[0] = "\\" + escaped[0]
    if len(escaped) > 1 and escaped[-1] == " ":
        escaped[-1] = "\\ "
    return "".join(escaped)


# -- internals ---------------------------------------------------------------------------------

def _check_combination(config):
    """Settings that only mean something with --certfile must not be given without it."""
    if config.certfile:
        if config.cert_reqs != "none" and not config.ca_certs:
            raise ConfigError(f"--cert-reqs {config.cert_reqs} needs --ca-certs: the "
                              f"authorities whose client certificates are accepted")
        return
    for name, given in (("keyfile", config.keyfile), ("ca-certs", config.ca_certs),
                        ("ciphers", config.ciphers),
                        ("cert-reqs", config.cert_reqs != "none")):
        if given:
            raise ConfigError(f"--{name} needs --certfile (the server's certificate) "
                              f"to serve HTTPS")


def _load_certificate(context, certfile, keyfile):
    import ssl

    _readable(certfile, "certfile")
    if keyfile:
        _readable(keyfile, "keyfile")

    def no_passphrase():
        # Without this, OpenSSL would prompt on the terminal and hang a service's start.
        raise ConfigError(f"--keyfile {keyfile or certfile}: the private key is encrypted "
                          f"and greenserve cannot ask for its passphrase (store it "
                          f"decrypted, readable by root only)")

    try:
        context.load_cert_chain(certfile, keyfile, password=no_passphrase)
    except ssl.SSLError as exc:
        raise ConfigError(_certificate_problem(exc, certfile, keyfile)) from None
    except OSError as exc:  # e.g. a directory given as a file
        raise ConfigError(f"--certfile {certfile}: {_reason(exc)}") from None


def _certificate_problem(exc, certfile, keyfile):
    """One line saying which of the two files is wrong, and how."""
    cert_text = _head(certfile)
    key_text = _head(keyfile) if keyfile else cert_text
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        return f"--certfile {certfile}: no PEM certificate in it"
    if "PRIVATE KEY-----" not in key_text:
        where = f"--keyfile {keyfile}" if keyfile else f"--certfile {certfile} (no --keyfile)"
        return f"{where}: no PEM private key in it"
    if getattr(exc, "reason", "") == "KEY_VALUES_MISMATCH":
        return (f"--keyfile {keyfile or certfile} is not the private key of the certificate "
                f"in --certfile {certfile}")
    return f"--certfile {certfile}: cannot load it: {exc.reason or exc}".rstrip()


def _load_authorities(context, ca_certs):
    import ssl

    try:
        if os.path.isdir(ca_certs):
            context.load_verify_locations(capath=ca_certs)
        else:
            _readable(ca_certs, "ca-certs")
            context.load_verify_locations(cafile=ca_certs)
    except ssl.SSLError as exc:
        raise ConfigError(f"--ca-certs {ca_certs}: not PEM certificates "
                          f"({exc.reason or exc})") from None
    except OSError as exc:
        raise ConfigError(f"--ca-certs {ca_certs}: {_reason(exc)}") from None


def _readable(path, option):
    """Open ``path`` now, so that a missing or unreadable file is named in the error."""
    try:
        with open(path, "rb") as stream:
            stream.read(1)
    except OSError as exc:
        raise ConfigError(f"--{option} {path}: {_reason(exc)}") from None


def _head(path, limit=1 << 20):
    try:
        with open(path, "rb") as stream:
            return stream.read(limit).decode("ascii", "replace")
    except OSError:
        return ""


def _reason(exc):
    reasons = {2: "no such file", 13: "permission denied", 21: "is a directory"}
    return reasons.get(exc.errno) or (exc.strerror or str(exc)).lower()
