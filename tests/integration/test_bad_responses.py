"""Malformed and truncated backend responses (RFC 9112 / RFC 9110).

One table of raw backend answers, each served by ONE raw-socket backend to
ONE farmgated for a request on its own client connection. Every row asserts:

  * the status the client sees: the backend's for a valid response,
    farmgated's 502 for an invalid head;
  * the central rule: a truncated response is never shown as complete. The
    client's bytes are parsed exactly (framing by framing): with
    Content-Length the connection ends before all bytes arrive, with chunked
    the last chunk never arrives, and the connection never stays open as if
    the message had ended;
  * no desync: a second request on the same client connection (when it is
    still open) and one on a new connection get the right answer, and the
    backend connection that carried a bad or leftover-carrying response is
    never used again (farmgated closes it).

All rows run; the test fails at the end listing every failing row.
"""

import re
import select
import socket
import struct
import threading
import time

from harness import one_farm_config, wait_for

CRLF = b"\r\n"


# --------------------------------------------------------------------------
# a backend that answers /row/<name> with the row's raw bytes
# --------------------------------------------------------------------------

class _Conn:
    def __init__(self, conn_id):
        self.conn_id = conn_id
        self.tainted = None  # name of the row whose answer left it unusable
        self.eof = False


class RawBackend:
    """Serves GET/HEAD /row/<name> with rows[name].raw, then closes (FIN),
    resets (RST) or keeps reading (after="keep"); any other target gets a
    clean 200 "next <target>". A request arriving on a connection that
    carried a non-clean row answer is a desync: it is recorded in
    .violations and answered with 200 "REUSED"."""

    def __init__(self, rows):
        self.rows = {r.name: r for r in rows}
        self.violations = []
        self.conns = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind(("127.0.0.1", 0))
        self._lsock.listen(64)
        self.port = self._lsock.getsockname()[1]
        self._socks = []

    def start(self):
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def stop(self):
        self._stop.set()
        for s in [self._lsock] + self._socks:
            try:
                s.close()
            except OSError:
                pass

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                c, _ = self._lsock.accept()
            except OSError:
                return
            with self._lock:
                conn = _Conn(len(self.conns))
                self.conns.append(conn)
                self._socks.append(c)
            threading.Thread(target=self._serve, args=(c, conn), daemon=True).start()

    def _serve(self, c, conn):
        buf = b""
        try:
            while not self._stop.is_set():
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        conn.eof = True
                        return
                    buf += d
                head, buf = buf.split(b"\r\n\r\n", 1)
                target = head.lstrip(CRLF).split(b" ")[1].decode("latin-1")
                if conn.tainted:
                    self.violations.append("%s reached a backend connection left unusable by row %s"
                                           % (target, conn.tainted))
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nREUSED")
                    continue
                row = self.rows.get(target[5:]) if target.startswith("/row/") else None
                if row is None:
                    body = ("next " + target).encode("latin-1")
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    continue
                c.sendall(row.raw)
                if not row.clean:
                    conn.tainted = row.name
                if row.after == "keep":
                    continue
                if row.after == "reset":
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    time.sleep(0.05)  # lets farmgated read the bytes before the FIN
                    c.shutdown(socket.SHUT_RDWR)
                return
        except OSError:
            pass
        finally:
            conn.eof = True
            try:
                c.close()
            except OSError:
                pass


# --------------------------------------------------------------------------
# exact parse of what the client got
# --------------------------------------------------------------------------

class Seen:
    """One response as the client received it: status (None without a
    complete head), headers, decoded body, complete (the framing says the
    message ended), end (offset after it)."""

    def __init__(self):
        self.status = None
        self.headers = []
        self.body = b""
        self.complete = False
        self.end = 0
        self.framing = None

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def __repr__(self):
        return "<%s %s body=%r%s>" % (self.status, self.framing, self.body[:80],
                                      " complete" if self.complete else " TRUNCATED")


_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) [^\r\n]*$")
_CHUNK = re.compile(rb"([0-9a-fA-F]{1,16})\r\n")


def _chunked(data, pos, s):
    """Decodes a strict chunked body at data[pos:]; sets s.body/complete/end."""
    out = []
    while True:
        m = _CHUNK.match(data, pos)
        if not m:
            break
        size, pos = int(m.group(1), 16), m.end()
        if size == 0:
            end = data.find(b"\r\n\r\n", pos - 2)
            if end >= 0:
                s.complete, s.end = True, end + 4
            break
        if len(data) < pos + size + 2 or data[pos + size:pos + size + 2] != CRLF:
            break
        out.append(data[pos:pos + size])
        pos += size + 2
    s.body = b"".join(out)


def judge(data, start, head_request, fin):
    """Parses the response at data[start:] exactly as a client would.
    fin: the server closed cleanly (FIN, not RST) right after data."""
    s = Seen()
    he = data.find(b"\r\n\r\n", start)
    if he < 0:
        return s
    lines = data[start:he].split(CRLF)
    m = _STATUS.match(lines[0])
    if not m:
        s.status = -1
        return s
    s.status = int(m.group(1))
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        s.headers.append((k.decode("latin-1").lower(), v.strip().decode("latin-1")))
    pos = he + 4
    te, cl = s.header("transfer-encoding"), s.header("content-length")
    if head_request or s.status < 200 or s.status in (204, 304):
        s.framing, s.complete, s.end = "none", True, pos
    elif te is not None:
        s.framing = "chunked"
        if te.lower() == "chunked":
            _chunked(data, pos, s)
    elif cl is not None:
        s.framing = "length"
        if cl.isdigit() and len(data) - pos >= int(cl):
            s.body, s.complete, s.end = data[pos:pos + int(cl)], True, pos + int(cl)
        else:
            s.body = data[pos:]
    else:
        s.framing = "close"
        s.body, s.complete, s.end = data[pos:], fin, len(data)
    return s


def final_response(data, head_request, fin):
    """Skips complete 1xx interim responses (not 101); returns the next."""
    pos = 0
    while True:
        s = judge(data, pos, head_request, fin)
        if s.complete and s.status is not None and 100 <= s.status < 200 and s.status != 101:
            pos = s.end
            continue
        return s


class Client:
    """A raw client connection that keeps every byte and how it ended."""

    def __init__(self, port, timeout):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.data = b""
        self.fin = self.reset = False

    @property
    def closed(self):
        return self.fin or self.reset

    def recv_until(self, done, timeout):
        """Reads until done(self) is true, the peer closes, or timeout."""
        deadline = time.monotonic() + timeout
        while not self.closed and not done(self):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                return False
            try:
                d = self.sock.recv(1 << 18)
            except (ConnectionResetError, ConnectionAbortedError):
                self.reset = True
                break
            if not d:
                self.fin = True
            self.data += d
        return done(self)

    def close(self):
        self.sock.close()


# --------------------------------------------------------------------------
# rows
# --------------------------------------------------------------------------

class Row:
    """kind: "ok" (the backend's status, the exact body, complete), "bad"
    (farmgated's 502) or "cut" (the backend's status at most, never a
    complete message, the client connection ends). after: what the
    backend does after sending raw ("close", "reset", "keep"). clean: the
    backend connection may carry another request afterwards."""

    def __init__(self, name, kind, raw, status=None, body=b"", method="GET", after="close", clean=False):
        self.name, self.kind, self.raw, self.status = name, kind, raw, status
        self.body, self.method, self.after, self.clean = body, method, after, clean


def resp(status_line, fields=(), body=b""):
    return status_line + b"".join(f + CRLF for f in fields) + CRLF + body


def ok_cl(fields=(), body=b"hello"):
    return resp(b"HTTP/1.1 200 OK\r\n", [b"Content-Length: %d" % len(body)] + list(fields), body)


def chunked(body_wire, fields=()):
    return resp(b"HTTP/1.1 200 OK\r\n", [b"Transfer-Encoding: chunked"] + list(fields), body_wire)


def status(line, body=b"ok"):
    return resp(line + CRLF, [b"Content-Length: %d" % len(body)], body)


GOOD = b"5\r\nhello\r\n0\r\n\r\n"
FINAL = ok_cl(body=b"final")


def rows():
    t = []
    O = lambda n, raw, st=200, body=b"hello", **k: t.append(Row(n, "ok", raw, st, body, **k))  # noqa: E731
    B = lambda n, raw, **k: t.append(Row(n, "bad", raw, 502, **k))  # noqa: E731
    C = lambda n, raw, st=200, **k: t.append(Row(n, "cut", raw, st, **k))  # noqa: E731

    # ---- valid framing ----------------------------------------------------------
    O("cl_baseline", ok_cl())
    O("cl_keep_alive_clean_reuse", ok_cl(), after="keep", clean=True)
    O("chunked_baseline", chunked(GOOD))
    O("chunk_ext_stripped", chunked(b"5;a=b\r\nhello\r\n0;last\r\n\r\n"))
    O("chunk_ext_quoted", chunked(b'5 ; a="x;\\"y" ; b\r\nhello\r\n0\r\n\r\n'))
    O("chunk_trailers_dropped", chunked(b"5\r\nhello\r\n0\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\n"))
    O("chunk_upper_hex_leading_zeros", chunked(b"00A\r\n0123456789\r\n0000\r\n\r\n"), body=b"0123456789")
    O("chunk_lf_only", chunked(b"5\nhello\n0\n\n"))
    O("head_lf_only", b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello")
    O("close_delimited_conn_close", b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello world", body=b"hello world")
    O("close_delimited_no_fields", b"HTTP/1.1 200 OK\r\n\r\nabc", body=b"abc")
    O("http10_cl", b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    O("http10_close_delimited", b"HTTP/1.0 200 OK\r\n\r\nhello")
    O("http12_treated_as_11", b"HTTP/1.2 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    O("cl_list_equal", ok_cl().replace(b"Content-Length: 5", b"Content-Length: 5, 5"))
    O("cl_duplicate_equal", ok_cl([b"Content-Length: 5"]))
    O("cl_leading_zeros", ok_cl().replace(b"Content-Length: 5", b"Content-Length: 005"))
    O("status_empty_reason", b"HTTP/1.1 200 \r\nContent-Length: 5\r\n\r\nhello")
    O("status_no_reason", b"HTTP/1.1 200\r\nContent-Length: 5\r\n\r\nhello")
    O("status_599", status(b"HTTP/1.1 599 Custom"), 599, b"ok")
    O("status_obs_text_reason", status(b"HTTP/1.1 200 Caf\xe9"), 200, b"ok")
    O("cl_extra_bytes_after_body", ok_cl() + b"EXTRA", after="keep")
    O("100_then_200", b"HTTP/1.1 100 Continue\r\n\r\n" + FINAL, body=b"final")
    O("102_then_200", b"HTTP/1.1 102 Processing\r\n\r\n" + FINAL, body=b"final")
    O("103_then_200", b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + FINAL,
      body=b"final")
    O("several_1xx_then_200", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n"
      b"HTTP/1.1 103 Early Hints\r\nLink: </b>\r\n\r\n" + FINAL, body=b"final")
    O("204_no_body", b"HTTP/1.1 204 No Content\r\n\r\n", 204, b"")
    O("204_with_cl_0", b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", 204, b"")
    O("204_with_body_bytes", b"HTTP/1.1 204 No Content\r\n\r\nhello", 204, b"", after="keep")
    O("204_with_cl_and_body", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", 204, b"",
      after="keep")
    O("304_with_cl_no_body", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", 304, b"")
    O("304_with_body_bytes", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello", 304, b"",
      after="keep")
    O("head_cl_no_body", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", body=b"", method="HEAD")
    O("head_with_body_bytes", ok_cl(), body=b"", method="HEAD", after="keep")
    O("head_with_chunked_body", chunked(GOOD), body=b"", method="HEAD", after="keep")

    # ---- truncated bodies: never complete -------------------------------------------
    C("cl_short_fin", ok_cl().replace(b"Length: 5", b"Length: 10"))
    C("cl_short_rst", ok_cl().replace(b"Length: 5", b"Length: 10"), after="reset")
    C("cl_head_only_fin", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    C("cl_huge_short_fin", ok_cl().replace(b"Length: 5", b"Length: 1000000"))
    C("chunked_cut_mid_data", chunked(b"a\r\nhello"))
    C("chunked_cut_mid_size_line", chunked(b"5\r\nhello\r\n1"))
    C("chunked_cut_before_data_crlf", chunked(b"5\r\nhello"))
    C("chunked_cut_before_last_chunk", chunked(b"5\r\nhello\r\n"))
    C("chunked_cut_after_last_chunk_line", chunked(b"5\r\nhello\r\n0\r\n"))
    C("chunked_cut_in_trailer", chunked(b"5\r\nhello\r\n0\r\nX-T: 1"))
    C("chunked_cut_after_trailer_field", chunked(b"5\r\nhello\r\n0\r\nX-T: 1\r\n"))
    C("chunked_rst_mid_data", chunked(b"a\r\nhello"), after="reset")
    C("chunked_head_only_fin", chunked(b""))
    C("close_delimited_rst", b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello", after="reset")

    # ---- bad chunking: the body cannot be trusted past the error ---------------------
    C("chunk_missing_crlf_after_data", chunked(b"5\r\nhelloX\r\n0\r\n\r\n"), after="keep")
    C("chunk_data_longer_than_size", chunked(b"3\r\nhello\r\n0\r\n\r\n"), after="keep")
    C("chunk_bad_hex_second", chunked(b"5\r\nhello\r\nzz\r\nhello\r\n0\r\n\r\n"), after="keep")
    C("chunk_bad_hex_first", chunked(b"zz\r\nhello\r\n0\r\n\r\n"), after="keep")
    C("chunk_size_overflow", chunked(b"1ffffffffffffffff\r\nhello\r\n0\r\n\r\n"), after="keep")
    C("chunk_size_negative", chunked(b"-5\r\nhello\r\n0\r\n\r\n"), after="keep")
    C("chunk_size_0x_prefix", chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), after="keep")
    C("chunk_size_inner_space", chunked(b"5 5\r\nhello\r\n0\r\n\r\n"), after="keep")
    C("chunk_size_empty", chunked(b"\r\nhello\r\n0\r\n\r\n"), after="keep")
    C("chunk_ext_empty_name", chunked(b"5;\r\nhello\r\n0\r\n\r\n"), after="keep")
    C("chunk_ext_unterminated_quote", chunked(b'5;a="x\r\nhello\r\n0\r\n\r\n'), after="keep")
    C("chunk_ext_huge", chunked(b"5;a=" + b"x" * 70000 + b"\r\nhello\r\n0\r\n\r\n"), after="keep")
    C("chunk_bare_cr_after_size", chunked(b"5\rhello\r\n0\r\n\r\n"), after="keep")
    C("chunk_nul_in_size_line", chunked(b"5\x00\r\nhello\r\n0\r\n\r\n"), after="keep")
    C("chunk_trailer_obs_fold", chunked(b"5\r\nhello\r\n0\r\nX-T: 1\r\n 2\r\n\r\n"), after="keep")
    C("chunk_trailer_no_colon", chunked(b"5\r\nhello\r\n0\r\nX-T\r\n\r\n"), after="keep")

    # ---- invalid heads: 502 ---------------------------------------------------------
    B("close_before_any_byte", b"")
    B("reset_before_any_byte", b"", after="reset")
    B("close_mid_status_line", b"HTTP/1.1 20")
    B("close_mid_field", b"HTTP/1.1 200 OK\r\nContent-Le")
    B("close_before_empty_line", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n")
    B("garbage_before_status_line", b"xyz\r\n" + ok_cl(), after="keep")
    B("empty_line_before_status_line", b"\r\n" + ok_cl(), after="keep")
    B("http09_body_only", b"hello world\r\n\r\n", after="keep")
    B("status_000", status(b"HTTP/1.1 000 Zero"), after="keep")
    B("status_099", status(b"HTTP/1.1 099 Low"), after="keep")
    B("status_two_digits", status(b"HTTP/1.1 99 Low"), after="keep")
    B("status_four_digits", status(b"HTTP/1.1 1000 High"), after="keep")
    B("status_600", status(b"HTTP/1.1 600 High"), after="keep")
    B("status_999", status(b"HTTP/1.1 999 High"), after="keep")
    B("status_non_digit", status(b"HTTP/1.1 2x0 OK"), after="keep")
    B("status_missing", status(b"HTTP/1.1 \r\nX: 1"), after="keep")
    B("status_double_space", status(b"HTTP/1.1  200 OK"), after="keep")
    B("status_tab_separator", status(b"HTTP/1.1\t200 OK"), after="keep")
    B("version_http20", status(b"HTTP/2.0 200 OK"), after="keep")
    B("version_lowercase", status(b"http/1.1 200 OK"), after="keep")
    B("version_missing", status(b"200 OK"), after="keep")
    B("cl_list_differing", ok_cl().replace(b"Content-Length: 5", b"Content-Length: 5, 6"), after="keep")
    B("cl_duplicate_differing", ok_cl([b"Content-Length: 6"]), after="keep")
    B("cl_negative", ok_cl().replace(b"Length: 5", b"Length: -5"), after="keep")
    B("cl_plus", ok_cl().replace(b"Length: 5", b"Length: +5"), after="keep")
    B("cl_hex", ok_cl().replace(b"Length: 5", b"Length: 0x5"), after="keep")
    B("cl_inner_space", ok_cl().replace(b"Length: 5", b"Length: 5 5"), after="keep")
    B("cl_huge", ok_cl().replace(b"Length: 5", b"Length: 99999999999999999999999"), after="keep")
    B("cl_empty", ok_cl().replace(b"Length: 5", b"Length: "), after="keep")
    B("cl_and_te", chunked(GOOD, [b"Content-Length: 5"]), after="keep")
    B("te_chunked_not_last", chunked(GOOD).replace(b": chunked", b": chunked, gzip"), after="keep")
    B("te_chunked_twice", chunked(GOOD, [b"Transfer-Encoding: chunked"]), after="keep")
    B("te_on_http10", chunked(GOOD).replace(b"HTTP/1.1", b"HTTP/1.0"), after="keep")
    # farmgated re-chunks bodies and decodes no other coding: passing "gzip" on
    # without its Transfer-Encoding would label coded bytes as plain (nginx: 502)
    B("te_gzip_close_delimited", resp(b"HTTP/1.1 200 OK\r\n", [b"Transfer-Encoding: gzip"], b"\x1f\x8b..."))
    B("te_gzip_then_chunked", chunked(GOOD).replace(b": chunked", b": gzip, chunked"), after="keep")
    B("te_gzip_and_chunked_fields", resp(b"HTTP/1.1 200 OK\r\n", [b"Transfer-Encoding: gzip",
                                                                  b"Transfer-Encoding: chunked"], GOOD), after="keep")
    B("te_empty_element", chunked(GOOD).replace(b": chunked", b": , chunked"), after="keep")
    B("obs_fold", ok_cl([b"X-A: a", b" b"]), after="keep")
    B("obs_fold_tab", ok_cl([b"X-A: a", b"\tb"]), after="keep")
    B("bare_cr_in_value", ok_cl([b"X-A: a\rb"]), after="keep")
    B("bare_cr_after_status_line", status(b"HTTP/1.1 200 OK\r"), after="keep")
    B("nul_in_value", ok_cl([b"X-A: a\x00b"]), after="keep")
    B("nul_in_name", ok_cl([b"X\x00A: 1"]), after="keep")
    B("nul_in_reason", status(b"HTTP/1.1 200 O\x00K"), after="keep")
    B("ctl_in_value", ok_cl([b"X-A: a\x01b"]), after="keep")
    B("space_before_colon", ok_cl([b"X-A : 1"]), after="keep")
    B("field_without_colon", ok_cl([b"X-No-Colon"]), after="keep")
    B("oversized_status_line", status(b"HTTP/1.1 200 " + b"R" * 70000), after="keep")
    B("oversized_field", ok_cl([b"X-Big: " + b"a" * 70000]), after="keep")
    B("too_many_fields", ok_cl([b"X-F%d: 1" % i for i in range(300)]), after="keep")
    B("101_without_upgrade_request", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
      b"Connection: Upgrade\r\n\r\n", after="keep")
    B("1xx_with_body", b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\nhello" + FINAL, after="keep")
    B("1xx_then_close", b"HTTP/1.1 100 Continue\r\n\r\n")
    B("103_then_garbage", b"HTTP/1.1 103 Early Hints\r\n\r\nnot http\r\n\r\n", after="keep")
    return t


# --------------------------------------------------------------------------
# running one row
# --------------------------------------------------------------------------

def _request(method, target):
    return ("%s %s HTTP/1.1\r\nHost: web.local\r\n\r\n" % (method, target)).encode()


def _follow_up(port, c, name, timeout):
    """Problems unless a request on c (if open) and on a new connection get
    their own answer."""
    p = []
    conns = [("same connection", c)] if c is not None else []
    fresh = Client(port, timeout)
    conns.append(("new connection", fresh))
    try:
        for what, cc in conns:
            target = "/next/%s/%s" % (name, what.split()[0])
            mark = len(cc.data)
            try:
                cc.sock.sendall(_request("GET", target))
            except OSError:
                continue  # closed meanwhile: no desync possible
            cc.recv_until(lambda x: final_response(x.data[mark:], False, x.fin).complete, timeout)
            s = final_response(cc.data[mark:], False, cc.fin)
            want = ("next " + target).encode()
            if what == "same connection" and s.status is None and cc.closed:
                continue  # closed instead of answering: fine
            if s.status != 200 or s.body != want or not s.complete:
                p.append("%s: follow-up %s got %r (raw %r)" % (what, target, s, cc.data[mark:mark + 200]))
    finally:
        fresh.close()
    return p


def run_row(port, be, row, slow):
    p = []
    timeout = 10.0 * slow
    head = row.method == "HEAD"
    nconns = len(be.conns)
    nviol = len(be.violations)
    c = Client(port, timeout)
    try:
        c.sock.sendall(_request(row.method, "/row/" + row.name))
        c.recv_until(lambda x: final_response(x.data, head, x.fin).complete, timeout)
        s = final_response(c.data, head, c.fin)
        if row.kind == "cut":
            if s.complete:
                p.append("truncated response shown as complete: %r (raw %r)" % (s, c.data[:200]))
            elif s.status is not None and s.status != row.status:
                p.append("status %r, expected %d or nothing" % (s.status, row.status))
            if not c.closed and not c.recv_until(lambda x: False, 5.0 * slow) and not c.closed:
                p.append("client connection left open after a truncated response (%r)" % c.data[:200])
            elif c.fin and s.framing == "close":
                p.append("close-delimited truncated body ended with a clean FIN")
        else:
            if not s.complete:
                p.append("no complete response: %r (raw %r)%s" % (s, c.data[:300],
                                                                  " reset" if c.reset else ""))
            else:
                if s.status != row.status:
                    p.append("status %r, expected %d: %r" % (s.status, row.status, c.data[:200]))
                if row.kind == "ok" and s.body != row.body:
                    p.append("body %r, expected %r" % (s.body[:200], row.body))
                extra = c.data[s.end:]
                time.sleep(0.1 * slow)
                if extra or (not c.closed and select.select([c.sock], [], [], 0)[0] and c.sock.recv(4096)):
                    p.append("extra bytes after the response: %r" % (extra[:200] or b"(more)"))
        p += _follow_up(port, None if c.closed else c, row.name, timeout)
    finally:
        c.close()
    if not row.clean:
        for conn in be.conns[nconns:]:
            if conn.tainted == row.name:
                try:
                    wait_for(lambda: conn.eof, 3.0 * slow, msg="backend close")
                except AssertionError:
                    p.append("backend connection %d that carried the answer was not closed by farmgated"
                             % conn.conn_id)
    p += be.violations[nviol:]
    return p


def test_bad_responses_table(env):
    table = rows()
    names = [r.name for r in table]
    assert len(set(names)) == len(names), "duplicate row names"
    be = RawBackend(table)
    be.start()
    env.on_cleanup(be.stop)
    fg = env.farmgated(one_farm_config([be.port]))
    failures = []
    for row in table:
        try:
            problems = run_row(fg.port, be, row, env.slow)
        except Exception as e:  # a harness-level surprise: the row fails, the table goes on
            problems = ["%s: %s" % (type(e).__name__, e)]
        if problems:
            failures.append((row.name, problems))
            print("FAIL %s:\n    %s" % (row.name, "\n    ".join(problems)), flush=True)
        if not fg.alive():
            failures.append(("farmgated", ["exited during row %s" % row.name]))
            break
    print("bad responses table: %d rows, %d failed" % (len(table), len(failures)), flush=True)
    assert not failures, "%d of %d response rows failed: %s\n%s" % (
        len(failures), len(table), ", ".join(n for n, _ in failures),
        "\n".join("%s: %s" % (n, " | ".join(ps)) for n, ps in failures))
