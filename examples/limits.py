"""Limits and input checks shared by the Flask, Django and Bottle examples.

Anyone who can reach a server can send it a body of any size and any query string, and a
server accepts whatever the app agrees to read. So every body an example reads has a ceiling
(a larger one gets 413 before it is read), and every number taken from a query is parsed
strictly and kept within a range (anything else gets 400 with the reason). Copy the limits
along with an example.
"""

import json
import math
import re

# Request body ceilings in bytes, per route that reads a body.
MAX_FORM_BODY = 64 << 10
MAX_JSON_BODY = 1 << 20
MAX_UPLOAD_BODY = 10 << 20
BODY_LIMITS = {"/form": MAX_FORM_BODY, "/json": MAX_JSON_BODY, "/upload": MAX_UPLOAD_BODY}

# GET /stream: at most MAX_LINES lines, at most MAX_DELAY seconds apart (so a stream ends
# within about 100 s), each echoing a tag of at most MAX_TAG characters.
MAX_LINES = 100
MAX_DELAY = 1.0
MAX_TAG = 64

# ASCII digits only, no sign, exponent or underscore: float() would also take "nan", "inf",
# "1e9" and "1_0", and a NaN compares false with every bound (and sleeping NaN seconds
# stops gevent's timers), so the grammar is checked before the number is made.
_WHOLE = re.compile(r"[0-9]{1,6}")
_DECIMAL = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,6})?")


class BadInput(ValueError):
    """A client's mistake; ``str()`` is the reason to send back with 400."""


def stream_params(get):
    """(count, delay, tag) of a /stream request; ``get(name, default)`` reads the query."""
    count = _bounded(get("n", "5"), _WHOLE, int, MAX_LINES,
                     f"n must be a whole number from 0 to {MAX_LINES}")
    delay = _bounded(get("delay", "0.2"), _DECIMAL, float, MAX_DELAY,
                     f"delay must be a number of seconds from 0 to {MAX_DELAY:g}")
    tag = get("tag", "-")
    if len(tag) > MAX_TAG:
        raise BadInput(f"tag must be at most {MAX_TAG} characters")
    return count, delay, tag


def _bounded(raw, grammar, convert, highest, reason):
    if not grammar.fullmatch(raw):
        raise BadInput(reason)
    value = convert(raw)
    if not 0 <= value <= highest:
        raise BadInput(reason)
    return value


def json_numbers(raw):
    """(document, sum of its "numbers") from a JSON request body; BadInput otherwise."""
    try:
        # RFC 8259 §6: NaN and Infinity are not JSON; Python's parser would accept them, and
        # turns an out-of-range number such as 1e400 into infinity.
        document = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise BadInput("invalid JSON: nested too deeply") from None
    except ValueError as exc:  # also bad UTF-8, and integers of more than 4300 digits
        raise BadInput(f"invalid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BadInput("the JSON document must be an object")
    numbers = document.get("numbers", [])
    if not isinstance(numbers, list) or not all(
            isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers):
        raise BadInput('"numbers" must be a list of numbers')
    try:
        total = sum(numbers)
    except OverflowError:  # a huge integer met a float
        total = math.inf
    if isinstance(total, float) and not math.isfinite(total):
        raise BadInput('the sum of "numbers" is too large')
    return document, total


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:40]}")
    return value
