"""Streaming file transfer: downloads through ``wsgi.file_wrapper`` (sendfile), uploads to disk.

Run it:  greenserve examples.files:app   (then open http://127.0.0.1:8000)

Anyone who can reach the port can upload, so everything has a limit. Settings (environment,
read when the server loads the app):
  EXAMPLE_FILES_DIR         the directory served and written to; default: ``greenserve-files-UID``
                            in the system temp dir (``tempfile.gettempdir()``). It is created
                            with mode 0700; the server refuses to start on an existing one that
                            belongs to another user or that others can write to
  EXAMPLE_FILES_MAX_UPLOAD  the largest upload in bytes (default 256 MiB); larger gets 413
  EXAMPLE_FILES_MAX_TOTAL   the most bytes the directory may hold (default 1 GiB); an upload
                            that would pass it gets 507
  EXAMPLE_FILES_OVERWRITE   1 lets an upload replace an existing file; by default that is 409

Routes:
  GET  /                  a small page: the files, and a form that uploads one
  GET  /download/NAME     the file, sent with ``wsgi.file_wrapper`` (os.sendfile on greenserve)
  POST /upload/NAME       the raw request body (Content-Length or chunked) streamed to NAME;
                          answers 201 with JSON ``{"name", "size", "sha256"}``
       (also: curl -T big.iso http://127.0.0.1:8000/upload/big.iso)

The upload never holds more than one 64 KiB piece in memory: it reads ``wsgi.input`` in pieces,
hashes and writes each, into a hidden temporary file that takes its name only once the whole
body arrived, so a broken upload never leaves half a file. Names are one path component of
letters, digits and ``._-`` (no leading dot), and files are opened without following symlinks,
so no request reaches outside the directory. How: examples/file_store.py.
"""

import html
import json
import mimetypes
import os
import tempfile

from examples.file_store import PIECE, FileStore, HTTPError

DEFAULT_MAX_UPLOAD = 256 << 20
DEFAULT_MAX_TOTAL = 1 << 30


def make_app(directory=None, max_upload=None, max_total=None, overwrite=None):
    """The files app; each argument left out is read from the environment (see above)."""
    if directory is None:
        directory = os.environ.get("EXAMPLE_FILES_DIR") or \
            os.path.join(tempfile.gettempdir(), f"greenserve-files-{os.geteuid()}")
    if max_upload is None:
        max_upload = _env_bytes("EXAMPLE_FILES_MAX_UPLOAD", DEFAULT_MAX_UPLOAD)
    if max_total is None:
        max_total = _env_bytes("EXAMPLE_FILES_MAX_TOTAL", DEFAULT_MAX_TOTAL)
    if overwrite is None:
        overwrite = os.environ.get("EXAMPLE_FILES_OVERWRITE") == "1"
    store = FileStore(directory, max_upload, max_total, overwrite)

    def files_app(environ, start_response):
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        try:
            if path.startswith("/download/"):
                if method not in ("GET", "HEAD"):
                    raise HTTPError("405 Method Not Allowed", "use GET")
                return _download(environ, start_response, store, path[len("/download/"):])
            if path.startswith("/upload/"):
                if method not in ("POST", "PUT"):
                    raise HTTPError("405 Method Not Allowed", "use POST")
                return _upload(environ, start_response, store, path[len("/upload/"):])
            if path == "/" and method in ("GET", "HEAD"):
                page = _page(store.names())
                start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                          ("Content-Length", str(len(page)))])
                return [page]
            raise HTTPError("404 Not Found", "not found")
        except HTTPError as exc:
            body = json.dumps({"error": str(exc)}).encode()
            start_response(exc.status, [("Content-Type", "application/json"),
                                        ("Content-Length", str(len(body)))])
            return [body]

    files_app.store = store
    return files_app


def _env_bytes(name, default):
    raw = os.environ.get(name)
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise ValueError(f"{name} must be a whole number of bytes, not {raw!r}")
    return int(raw)


def _download(environ, start_response, store, name):
    f, size = store.open(name)
    try:
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        start_response("200 OK", [
            ("Content-Type", content_type),
            ("Content-Length", str(size)),
            ("Content-Disposition", f'attachment; filename="{name}"'),
        ])
    except BaseException:
        f.close()
        raise
    wrapper = environ.get("wsgi.file_wrapper")
    if wrapper is not None:
        # The server closes the wrapper (and so the file) when the response is done.
        return wrapper(f, PIECE)
    return _iter_file(f)


def _iter_file(f):
    with f:
        while True:
            piece = f.read(PIECE)
            if not piece:
                return
            yield piece


def _upload(environ, start_response, store, name):
    raw_length = environ.get("CONTENT_LENGTH") or ""
    if raw_length:
        if not (raw_length.isascii() and raw_length.isdigit()):
            raise HTTPError("400 Bad Request", "bad Content-Length")
        length = int(raw_length)
    elif environ.get("wsgi.input_terminated"):
        length = None   # chunked: the server tells us where the body ends
    else:
        raise HTTPError("411 Length Required", "send a Content-Length")
    result = store.save(name, environ["wsgi.input"], length)
    body = json.dumps(result).encode()
    start_response("201 Created", [("Content-Type", "application/json"),
                                   ("Content-Length", str(len(body)))])
    return [body]


def _page(names):
    items = "".join(
        f'<li><a href="/download/{html.escape(n)}">{html.escape(n)}</a></li>' for n in names)
    return f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>greenserve files</title></head>
<body style="font: 16px/1.4 system-ui, sans-serif; max-width: 40em; margin: 2em auto">
<h1>Files</h1>
<ul>{items or "<li>(none yet)</li>"}</ul>
<form id="upload">
  <input type="file" id="file" required>
  <button type="submit">Upload</button>
</form>
<pre id="result"></pre>
<script>
"use strict";
// The body is the file itself (not multipart), so the server can stream it straight to disk.
document.getElementById("upload").addEventListener("submit", async event => {{
  event.preventDefault();
  const file = document.getElementById("file").files[0];
  const name = file.name.replace(/[^A-Za-z0-9._-]/g, "_").replace(/^[.]+/, "");
  const response = await fetch("/upload/" + encodeURIComponent(name), {{method: "POST", body: file}});
  document.getElementById("result").textContent = await response.text();
  if (response.ok) location.reload();
}});
</script>
</body>
</html>
""".encode()


# Built when the server imports this module, so a directory that must be refused stops the
# server at start, and partial uploads of an earlier run are cleared before the first request.
app = make_app()
