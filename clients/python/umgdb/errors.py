"""Exceptions of the umgdb client.

Every exception is an :class:`UmgdbError` with ``code`` (the protocol's wire
name from protocol/umg_error.h, e.g. ``"not_found"``) and ``message``.

- :class:`ServerError` and its families: the server answered the request with
  ``ok: false``. ``request_id`` is the request's id (0 when the server could not
  tie the error to a request, e.g. a frame over its size limit).
- :class:`UmgdbConnectionError`: the connection could not be made, or it broke
  (closed by the server, reset, a malformed frame). It is final: every later
  call on that client raises it again.
- :class:`UmgdbTimeout`: no answer within the timeout. The connection stays
  usable; the late answer is dropped when it arrives.
"""

import builtins


class UmgdbError(Exception):
    """Base of every exception raised by this package."""

    code = "internal"

    def __init__(self, message, code=None, request_id=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.request_id = request_id

    def __str__(self):
        return "%s: %s" % (self.code, self.message)


class UmgdbConnectionError(UmgdbError, builtins.ConnectionError):
    """Cannot connect, or the connection broke (final for this client)."""

    code = "connection_error"


class UmgdbTimeout(UmgdbError, builtins.TimeoutError):
    """No answer within the timeout; the connection stays usable."""

    code = "timeout"


class ServerError(UmgdbError):
    """An error response from the server (``ok: false``)."""


class RequestError(ServerError):
    """The request was refused as malformed: ``invalid_argument``, ``invalid_utf8``,
    ``unknown_op``, ``protocol_error``. The message names the argument."""


class TooLargeError(ServerError):
    """``too_large``: a request over a size limit. Raised by the client itself
    (``request_id`` None, nothing sent) when a request would not fit the frame
    limit; from the server, a frame over its limit also closes the connection."""


class AuthError(ServerError):
    """``unauthorized`` (missing or wrong token: the server closes the connection)
    or ``forbidden`` (e.g. a path ingest outside the server's --allow-root)."""


class NotFoundError(ServerError):
    """``not_found``: no such image, or a path ingest of a missing file."""


class ImageError(ServerError):
    """``unsupported`` or ``bad_format``: not a JPEG/PNG, or a corrupt one; also
    a feature the server does not offer (``unsupported``)."""


class UnavailableError(ServerError):
    """``busy``, ``shutting_down``, ``timeout`` (server side): worth retrying later."""


class InternalError(ServerError):
    """A failure inside the server (``internal``, ``io_error``, ``db_error``,
    ``index_error``, ``out_of_memory``, ``no_space``, ``model_mismatch``,
    ``exists``, ``connection_error``), and any code this client does not know
    (the protocol says to treat those as ``internal``)."""


# The wire names of protocol/umg_error.h, by family.
_FAMILIES = {
    RequestError: ("invalid_argument", "invalid_utf8", "unknown_op", "protocol_error"),
    TooLargeError: ("too_large",),
    AuthError: ("unauthorized", "forbidden"),
    NotFoundError: ("not_found",),
    ImageError: ("unsupported", "bad_format"),
    UnavailableError: ("busy", "shutting_down", "timeout"),
    InternalError: ("internal", "out_of_memory", "io_error", "model_mismatch", "index_error",
                    "db_error", "exists", "no_space", "connection_error"),
}
ERROR_CLASSES = {code: cls for cls, codes in _FAMILIES.items() for code in codes}


def server_error(code, message, request_id):
    """The exception for an error response: its family's class, ``code`` as sent."""
    cls = ERROR_CLASSES.get(code, InternalError)
    return cls(message, code=code, request_id=request_id)
