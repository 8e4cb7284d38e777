"""One connection to ``umgdb serve``: addresses, framing, pipelining.

Framing (docs/protocol.md): a 4-byte big-endian length N, then N bytes holding
one msgpack object. The socket is non-blocking and every wait goes through
``poll`` with a deadline, so no call can hang past its timeout. While sending
it also reads: a server that stops reading a connection until its answers are
taken (backpressure, docs/server.md) can never deadlock a pipelining client.
"""

import errno
import select
import socket
import struct
import time
from collections import deque

import msgpack

from .errors import TooLargeError, UmgdbConnectionError, UmgdbTimeout, server_error

DEFAULT_ADDRESS = "127.0.0.1:7431"
# The server's default --max-frame (protocol/proto_check.h PROTO_DEFAULT_MAX_FRAME):
# the largest frame body, request or answer.
DEFAULT_MAX_FRAME = 64 << 20
_READ_CHUNK = 256 << 10
_LEN = struct.Struct(">I")
# No SIGPIPE when the server has closed (Linux; Python ignores SIGPIPE anyway
# unless an embedding program restored it).
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)
_POLL_IN = getattr(select, "POLLIN", 0) | getattr(select, "POLLPRI", 0)


def parse_address(addr):
    """``"HOST:PORT"``, ``"[v6]:PORT"``, ``"PORT"`` or ``"unix:PATH"`` ->
    ("unix", path) or ("tcp", (host, port)), as the C client and the CLI accept them."""
    if not isinstance(addr, str) or not addr:
        raise ValueError("address must be a non-empty string like '127.0.0.1:7431' or 'unix:/path'")
    if addr.startswith("unix:"):
        path = addr[5:]
        if not path:
            raise ValueError("address %r: no socket path after 'unix:'" % addr)
        return "unix", path
    if addr.isdigit():
        host, port = "127.0.0.1", addr
    elif addr.startswith("["):
        end = addr.find("]:")
        if end < 0:
            raise ValueError("address %r: expected '[IPv6]:PORT'" % addr)
        host, port = addr[1:end], addr[end + 2:]
    else:
        host, sep, port = addr.rpartition(":")
        if not sep or not host:
            raise ValueError("address %r: expected HOST:PORT, PORT or unix:PATH" % addr)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("address %r: port must be 1..65535" % addr)
    return "tcp", (host, int(port))


def _connect(addr, timeout):
    kind, where = parse_address(addr)
    try:
        if kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(where)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection(where, timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except socket.timeout:
        raise UmgdbTimeout("connecting to %s: no answer within %.1f s" % (addr, timeout)) from None
    except OSError as e:
        raise UmgdbConnectionError("cannot connect to %s: %s" % (addr, e.strerror or e)) from None
    sock.setblocking(False)
    return sock


class Connection:
    """Requests out, answers in, by id. Not thread-safe: one thread at a time."""

    def __init__(self, addr, connect_timeout, max_frame):
        self.addr = addr
        self.max_frame = max_frame
        self._sock = _connect(addr, connect_timeout)
        self._poller = None
        if hasattr(select, "poll"):
            self._poller = select.poll()
            self._poller.register(self._sock, _POLL_IN)
        self._out = bytearray()     # requests queued; bytes before _out_pos are sent
        self._out_pos = 0
        self._in = bytearray()
        self._next_id = 1
        self._answers = {}          # id -> answer map, received and not yet taken
        self._arrival = deque()     # ids of _answers in arrival order (recv_any)
        self._waiting = set()       # ids sent and not yet taken
        self._abandoned = set()     # ids whose caller timed out: their answers are dropped
        self._orphans = deque()     # id-0 error answers (the server could not read the request's id)
        self._broken = None         # the UmgdbConnectionError that ended this connection
        self._last_orphan = None    # the last id-0 error, named if the server then closes

    # ---- state ---------------------------------------------------------

    @property
    def in_flight(self):
        """Requests sent (or queued) whose answer has not been taken yet."""
        return len(self._waiting)

    @property
    def closed(self):
        return self._broken is not None

    def close(self, why="the client was closed"):
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
        if self._broken is None:
            self._broken = UmgdbConnectionError(why)

    def _break(self, why):
        if self._broken is None:
            if self._last_orphan is not None:
                # The server closes after some errors (too_large, busy): name it.
                why += " after the error %s: %s" % (self._last_orphan.get("code"), self._last_orphan.get("message"))
            self._broken = UmgdbConnectionError("connection to %s: %s" % (self.addr, why))
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        return self._broken

    def _check_usable(self):
        if self._broken is not None:
            raise UmgdbConnectionError(self._broken.message)

    # ---- requests ------------------------------------------------------

    def queue(self, op, args):
        """Append request {id, op, **args} to the send buffer; returns its id.
        Raises TooLargeError (nothing queued) when it would not fit a frame."""
        self._check_usable()
        rid = self._next_id
        req = {"id": rid, "op": op}
        req.update(args)
        body = msgpack.packb(req, use_bin_type=True)
        if len(body) > self.max_frame:
            raise TooLargeError("%s: the request is %d bytes, over the frame limit of %d bytes (max_frame)"
                                % (op, len(body), self.max_frame), code="too_large")
        self._next_id += 1
        if self._out_pos and self._out_pos >= len(self._out) // 2:
            # Drop the sent head now and then (amortised), so that a pipeline that
            # never drains the buffer completely does not keep every sent request.
            del self._out[:self._out_pos]
            self._out_pos = 0
        self._out += _LEN.pack(len(body))
        self._out += body
        self._waiting.add(rid)
        return rid

    def wait(self, rid, timeout):
        """The answer map of request rid (sending what is queued first)."""
        deadline = time.monotonic() + timeout if timeout is not None else None
        try:
            self._pump(deadline, lambda: rid in self._answers or self._orphans)
        except UmgdbTimeout:
            self.abandon(rid)
            raise
        except UmgdbConnectionError:
            self._waiting.discard(rid)
            raise
        if rid not in self._answers:
            # An error the server could not tie to a request: it may be this one's.
            return self._take_orphan(rid)
        return self._take(rid)

    def recv_any(self, timeout):
        """(id, answer map) of the next answer in arrival order."""
        deadline = time.monotonic() + timeout if timeout is not None else None
        try:
            self._pump(deadline, lambda: self._arrival or self._orphans)
        except UmgdbConnectionError:
            self._waiting.clear()
            raise
        if self._arrival:
            rid = self._arrival[0]
            return rid, self._take(rid)
        return 0, self._take_orphan(0)

    def _take(self, rid):
        ans = self._answers.pop(rid)
        self._arrival.remove(rid)
        self._waiting.discard(rid)
        return ans

    def _take_orphan(self, rid):
        self._waiting.discard(rid)
        return self._orphans.popleft()

    def abandon(self, rid):
        """Forget request rid: its answer, now or when it comes, is dropped."""
        self._waiting.discard(rid)
        if rid in self._answers:
            self._take(rid)
        else:
            self._abandoned.add(rid)

    # ---- the I/O loop ----------------------------------------------------

    def _pump(self, deadline, done):
        """Send what is queued and read answers until done() or the deadline.
        A broken connection raises UmgdbConnectionError, except that answers
        already received are still handed out (done() is checked first)."""
        while True:
            if done():
                return
            if self._broken is not None:
                raise UmgdbConnectionError(self._broken.message)
            wait = None
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    raise UmgdbTimeout("no answer from %s within the timeout" % self.addr)
            readable, writable = self._poll(bool(self._out), wait)
            if writable:
                self._send_some()
            if readable and self._sock is not None:
                self._recv_some()

    def _poll(self, want_write, wait):
        """(readable, writable) within wait seconds (None = no limit). poll, not
        select: select fails on descriptors above 1023 in programs with many files."""
        if self._poller is None:
            want = [self._sock] if want_write else []
            r, w, _ = select.select([self._sock], want, [], wait)
            return bool(r), bool(w)
        self._poller.modify(self._sock, _POLL_IN | (select.POLLOUT if want_write else 0))
        events = self._poller.poll(None if wait is None else max(0, int(wait * 1000) + 1))
        mask = events[0][1] if events else 0
        # Errors and hang-ups count as readable: the recv that follows says which.
        return bool(mask & (_POLL_IN | select.POLLERR | select.POLLHUP)), bool(mask & select.POLLOUT)

    def _send_some(self):
        try:
            # From an offset, not by deleting the sent head each time: a 64 MiB
            # request would otherwise be moved in memory once per send.
            with memoryview(self._out) as view:
                n = self._sock.send(view[self._out_pos:], _SEND_FLAGS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            # The server may have closed after an error frame (too_large, busy):
            # keep what it said, so that the caller gets that error.
            while self._recv_some():
                pass
            if e.errno in (errno.ECONNRESET, errno.EPIPE):
                self._break("the server closed the connection (%s)" % e.strerror)
            else:
                self._break("sending failed: %s" % (e.strerror or e))
            return
        self._out_pos += n
        if self._out_pos == len(self._out):
            self._out.clear()
            self._out_pos = 0

    def _recv_some(self):
        """Read once; True if bytes came (and the connection is still up)."""
        try:
            data = self._sock.recv(_READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:
            if e.errno in (errno.ECONNRESET, errno.EPIPE):
                data = b""
            else:
                self._break("receiving failed: %s" % (e.strerror or e))
                return False
        if not data:
            self._break("the server closed the connection")
            return False
        self._in += data
        self._parse_frames()
        return self._sock is not None

    def _parse_frames(self):
        buf = self._in
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = _LEN.unpack_from(buf, pos)
            if n == 0 or n > self.max_frame:
                self._break("the server sent a frame of %d bytes (limit %d)" % (n, self.max_frame))
                return
            if len(buf) - pos - 4 < n:
                break
            body = bytes(buf[pos + 4:pos + 4 + n])
            pos += 4 + n
            if not self._accept(body):
                return
        del buf[:pos]

    def _accept(self, body):
        """Keep one answer; False (connection broken) if it is malformed."""
        try:
            ans = msgpack.unpackb(body, raw=False)
        except (ValueError, msgpack.UnpackException) as e:
            self._break("malformed answer from the server: %s" % e)
            return False
        if not isinstance(ans, dict) or type(ans.get("id")) is not int or not isinstance(ans.get("ok"), bool):
            self._break("malformed answer from the server (not a map with 'id' and 'ok')")
            return False
        rid = ans["id"]
        if rid == 0:
            if ans["ok"] or not isinstance(ans.get("error"), dict):
                self._break("malformed answer from the server (id 0 without an error)")
                return False
            self._orphans.append(ans)
            self._last_orphan = ans["error"]
        elif rid in self._abandoned:
            self._abandoned.discard(rid)
        elif rid in self._waiting and rid not in self._answers:
            self._answers[rid] = ans
            self._arrival.append(rid)
        else:
            self._break("the server answered request %d, which is not waiting for an answer" % rid)
            return False
        return True


def result_or_raise(ans, rid):
    """The result of an answer map, or its error as the matching ServerError."""
    if ans.get("ok"):
        return ans.get("result")
    err = ans.get("error") if isinstance(ans.get("error"), dict) else {}
    raise server_error(str(err.get("code", "internal")), str(err.get("message", "")), ans.get("id", rid))
