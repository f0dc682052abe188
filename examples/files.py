"""Streaming file transfer: downloads through ``wsgi.file_wrapper`` (sendfile), uploads to disk.

Run it:  greenserve examples.files:app   (then open http://127.0.0.1:8000)

Settings (environment, read on the first request):
  EXAMPLE_FILES_DIR         the directory served and written to; default: a ``greenserve-files``
                            directory in the system temp dir (``tempfile.gettempdir()``)
  EXAMPLE_FILES_MAX_UPLOAD  the largest upload in bytes (default 10 GiB); larger gets 413

Routes:
  GET  /                  a small page: the files, and a form that uploads one
  GET  /download/NAME     the file, sent with ``wsgi.file_wrapper`` (os.sendfile on greenserve)
  POST /upload/NAME       the raw request body (Content-Length or chunked) streamed to NAME;
                          answers 201 with JSON ``{"name", "size", "sha256"}``
       (also: curl -T big.iso http://127.0.0.1:8000/upload/big.iso)

The upload never holds more than one 64 KiB piece in memory: it reads ``wsgi.input`` in pieces,
hashes and writes each, into a hidden temporary file that is renamed into place only once the
whole body arrived, so a broken upload never replaces a good file. Names are one path component
of letters, digits, ``._-`` (no leading dot), so no request can reach outside the directory.
"""

import functools
import hashlib
import html
import json
import mimetypes
import os
import re
import tempfile

CHUNK = 65536
DEFAULT_MAX_UPLOAD = 10 << 30
# One path component; no leading dot, so neither ".." nor hidden files (our partial uploads).
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


class HTTPError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class FileStore:
    """Files in one directory, addressed by safe names only."""

    def __init__(self, directory, max_upload=DEFAULT_MAX_UPLOAD):
        self.directory = os.path.realpath(directory)
        self.max_upload = max_upload
        os.makedirs(self.directory, exist_ok=True)

    def path(self, name):
        if not SAFE_NAME.fullmatch(name):
            raise HTTPError("404 Not Found", "no such file")
        path = os.path.join(self.directory, name)
        # A symlink placed in the directory must not lead the download elsewhere either.
        if os.path.dirname(os.path.realpath(path)) != self.directory:
            raise HTTPError("404 Not Found", "no such file")
        return path

    def names(self):
        return sorted(entry.name for entry in os.scandir(self.directory)
                      if SAFE_NAME.fullmatch(entry.name) and entry.is_file())

    def save(self, name, stream, length):
        """Copy ``length`` bytes (None: until the end) from ``stream`` to ``name``."""
        path = self.path(name)
        if length is not None and length > self.max_upload:
            raise HTTPError("413 Content Too Large", f"uploads are limited to {self.max_upload} bytes")
        digest = hashlib.sha256()
        size = 0
        fd, partial = tempfile.mkstemp(prefix=".partial-", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as out:
                while length is None or size < length:
                    want = CHUNK if length is None else min(CHUNK, length - size)
                    piece = stream.read(want)
                    if not piece:
                        break
                    size += len(piece)
                    if size > self.max_upload:
                        raise HTTPError("413 Content Too Large",
                                        f"uploads are limited to {self.max_upload} bytes")
                    digest.update(piece)
                    out.write(piece)
            if length is not None and size < length:
                raise HTTPError("400 Bad Request", f"body ended after {size} of {length} bytes")
            os.replace(partial, path)
        except BaseException:
            os.unlink(partial)
            raise
        return {"name": name, "size": size, "sha256": digest.hexdigest()}


def make_app(directory=None, max_upload=None):
    """The files app for ``directory`` (default: EXAMPLE_FILES_DIR or the temp dir)."""
    if directory is None:
        directory = os.environ.get("EXAMPLE_FILES_DIR") or \
            os.path.join(tempfile.gettempdir(), "greenserve-files")
    if max_upload is None:
        max_upload = int(os.environ.get("EXAMPLE_FILES_MAX_UPLOAD") or DEFAULT_MAX_UPLOAD)
    store = FileStore(directory, max_upload)

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


def _download(environ, start_response, store, name):
    path = store.path(name)
    try:
        f = open(path, "rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise HTTPError("404 Not Found", "no such file") from None
    try:
        size = os.fstat(f.fileno()).st_size
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
        return wrapper(f, CHUNK)
    return _iter_file(f)


def _iter_file(f):
    with f:
        while True:
            piece = f.read(CHUNK)
            if not piece:
                return
            yield piece


def _upload(environ, start_response, store, name):
    if not SAFE_NAME.fullmatch(name):
        raise HTTPError("400 Bad Request", "name: letters, digits and ._- only, no leading dot")
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


@functools.lru_cache(maxsize=None)
def _default_app():
    # Built on the first request, so importing this module reads no environment.
    return make_app()


def app(environ, start_response):
    return _default_app()(environ, start_response)
