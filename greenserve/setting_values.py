"""The value parsers of the settings: raw text (or a typed value from TOML or Python) in,
the setting's value out, or ValueError with a short reason that ``config.parse_value`` turns
into one line naming the setting and where its value came from."""

import re
from urllib.parse import unquote_to_bytes

from .accessformat import compile_format
from .errors import ConfigError


def _whole(text):
    # int(4.5) is 4: a float (TOML workers = 4.5) must not be rounded down in silence.
    if isinstance(text, float):
        raise ValueError("must be a whole number")
    return int(text)


def positive_int(text):
    value = _whole(text)
    if value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


# Beyond any head a server could hold in memory; also what the compiled parser's sizes hold.
_MAX_HEAD_LIMIT = 1 << 40


def head_limit(text):
    value = positive_int(text)
    if value > _MAX_HEAD_LIMIT:
        raise ValueError(f"must be at most {_MAX_HEAD_LIMIT}")
    return value


def non_negative_int(text):
    value = _whole(text)
    if value < 0:
        raise ValueError("must be a whole number of at least 0")
    return value


def seconds(text):
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a number of seconds, 0 or more")
    return value


def boolean(text):
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def log_level(text):
    lowered = str(text).strip().lower()
    if lowered not in ("debug", "info", "warning", "error", "critical"):
        raise ValueError("must be one of debug, info, warning, error, critical")
    return lowered


def root_path(text):
    text = str(text)
    if text and (not text.startswith("/") or text.endswith("/")):
        raise ValueError("must start with '/' and not end with '/' (e.g. /app)")
    # RFC 3986 §2.1: a "%" starts a percent-encoding.
    if re.search(r"%(?![0-9A-Fa-f]{2})", text):
        raise ValueError("has a '%' that is not followed by two hex digits")
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in text):
        raise ValueError("must not contain control characters")
    # PEP 3333: SCRIPT_NAME holds the path's octets, percent-decoded, as latin-1 text, the
    # form PATH_INFO has: "/a%20b" and "/caf\u00e9" (UTF-8 in a URL) become what the request
    # path becomes, so the prefix is found in it and both halves of the URL agree.
    return unquote_to_bytes(text.encode("utf-8")).decode("latin-1")


def url_scheme(text):
    lowered = str(text).strip().lower()
    # PEP 3333: wsgi.url_scheme is "http" or "https"; apps build their URLs from it.
    if lowered not in ("http", "https"):
        raise ValueError("must be http or https")
    return lowered


def text_value(text):
    return str(text)


def field_value(text):
    text = str(text)
    # RFC 9110 §5.5: visible characters, spaces and tabs; never CR, LF or other controls.
    if text != text.strip() or any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7f or
                                   ord(c) > 0xff for c in text):
        raise ValueError("must be printable latin-1 text without leading or trailing spaces")
    return text


def trusted_peers(text):
    from .protocol.forwarded import TrustedProxies
    text = ",".join(str(text).replace(",", " ").split())
    TrustedProxies.parse(text)  # ValueError names the bad entry
    return text


def access_log_format(text):
    text = str(text)
    compile_format(text)  # a ConfigError names an unknown atom or a broken field
    return text


def log_config_file(text):
    if text in (None, ""):
        return None
    text = str(text)
    if not text.lower().endswith((".toml", ".json")):
        raise ValueError("must be a .toml or .json file")
    return text


def optional_str(text):
    return None if text in (None, "") else str(text)


def octal_mode(text):
    # Written as chmod and umask take it: octal digits, with or without a leading 0 or 0o.
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        digits = str(text).strip().lower()
        digits = digits[2:] if digits.startswith("0o") else digits
        if not digits or any(c not in "01234567" for c in digits):
            raise ValueError("must be an octal mode such as 660 or 0o007")
        value = int(digits, 8)
    if not 0 <= value <= 0o777:
        raise ValueError("must be an octal mode between 0 and 777")
    return value


def optional_mode(text):
    return None if text in (None, "") else octal_mode(text)


def account(text):
    # A user or group name, or a numeric id; looked up when the server starts.
    if text in (None, ""):
        return None
    text = str(text).strip()
    if not text or any(c.isspace() or c in ":/" for c in text):
        raise ValueError("must be a user or group name, or a numeric id")
    return text


def cert_reqs(text):
    lowered = str(text).strip().lower()
    # gunicorn takes ssl.CERT_* numbers; accept those too.
    lowered = {"0": "none", "1": "optional", "2": "required"}.get(lowered, lowered)
    if lowered not in ("none", "optional", "required"):
        raise ValueError("must be none, optional or required")
    return lowered


def tls_version(text):
    value = str(text).strip()
    value = {"1.2": "1.2", "1.3": "1.3", "tlsv1.2": "1.2", "tlsv1.3": "1.3"}.get(value.lower())
    if value is None:
        raise ValueError("must be 1.2 or 1.3")
    return value


def admin_address(text):
    if text in (None, ""):
        return None
    from .listeners import parse_bind
    text = str(text).strip()
    try:
        kind = parse_bind(text)[0]
    except ConfigError:
        kind = None
    # A port of its own, never the app's default one; fd:// sockets are the app's.
    if kind == "unix" or (kind == "tcp" and text.rsplit(":", 1)[-1].isdigit()):
        return text
    raise ValueError("must be HOST:PORT, [IPv6]:PORT or unix:/path")


def milliseconds(text):
    value = int(text)
    if value < 0:
        raise ValueError("must be a whole number of milliseconds, 0 or more")
    return value


def env_pair(text):
    key, sep, _ = str(text).partition("=")
    if not sep or not _ENV_KEY.fullmatch(key):
        raise ValueError("must be KEY=VALUE, KEY a letter or '_' then letters, digits or '_'")
    return str(text)


def hook_name(text):
    text = None if text in (None, "") else str(text).strip()
    if text is not None and not _HOOK_NAME.fullmatch(text):
        raise ValueError("must name a function as MODULE:FUNCTION (e.g. myhooks:post_fork)")
    return text


_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOOK_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
