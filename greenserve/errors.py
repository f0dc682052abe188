"""Typed errors. A client's mistake carries the HTTP status it is answered with."""


class ProtocolError(Exception):
    """The client broke HTTP/1.1; answer with ``status`` and close the connection."""

    status = 400
    reason = "Bad Request"

    def __init__(self, detail=""):
        super().__init__(detail)
        self.detail = detail


class BadRequest(ProtocolError):
    status, reason = 400, "Bad Request"


class RequestTimeout(ProtocolError):
    status, reason = 408, "Request Timeout"


class ContentTooLarge(ProtocolError):
    status, reason = 413, "Content Too Large"


class URITooLong(ProtocolError):
    status, reason = 414, "URI Too Long"


class ExpectationFailed(ProtocolError):
    status, reason = 417, "Expectation Failed"


class HeaderTooLarge(ProtocolError):
    status, reason = 431, "Request Header Fields Too Large"


class NotImplementedByServer(ProtocolError):
    status, reason = 501, "Not Implemented"


class VersionNotSupported(ProtocolError):
    status, reason = 505, "HTTP Version Not Supported"


class ClientDisconnected(IOError):
    """The peer went away while the request body was being read or the response sent."""


class BodyReadTimeout(IOError):
    """The request body stalled longer than the body timeout (the client gets 408)."""

    status, reason = 408, "Request Timeout"

    @property
    def detail(self):
        return str(self)


class RequestDeadlineExceeded(BaseException):
    """Thrown into an app that outlived --request-timeout (the client gets 503).

    A BaseException, like gevent.Timeout, so an app's ``except Exception`` cannot swallow it.
    """

    status, reason = 503, "Service Unavailable"
    detail = "The request took too long."


class AppFailed(Exception):
    """The app raised before its response began (the client gets 500; the cause is logged)."""

    status, reason = 500, "Internal Server Error"
    detail = "The server could not complete the request."


class ConfigError(Exception):
    """A setting has a bad value or name; the CLI prints it on one line and exits 2."""


class AppLoadError(Exception):
    """The WSGI application could not be found or loaded; the CLI exits 2."""


class ProxyProtocolError(ProtocolError):
    """A missing or bad PROXY protocol header; the connection is closed without an answer."""

    status, reason = 400, "Bad Request"
