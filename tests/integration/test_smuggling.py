"""Request smuggling and malformed requests (RFC 9112 / RFC 9110).

One table of raw requests, each sent on its own TCP connection through ONE
farmgated to ONE recording backend. Every row asserts:

  * the exact status the client gets (farmgated's own answer for a rejected
    request, the backend's 200 for an accepted one);
  * exactly what the backend received: for a rejected request nothing at all
    (not one byte on any backend connection); for an accepted one the exact
    request line, the exact multiset of header fields (normalised: Host,
    client end-to-end fields, X-Forwarded-For/-Proto and the framing
    farmgated regenerates) and the exact body bytes (chunked bodies clean:
    no extensions, no trailers, correct payload), and not one byte more;
  * the connection: closed after a rejected request (a request pipelined
    behind it, in the same write and after the answer, is never answered and
    never reaches the backend); still in sync after an accepted keep-alive
    request (a follow-up request is answered and forwarded exactly).

All rows run (one does not stop the others); the test fails at the end with
the name and the reasons of every failing row. Rows that rely on timeouts
(408) use timeouts.requestHeader / requestBody = 2 s.
"""

import re
import time

from harness import (arr_lb_rule, ConnectionClosed, farm, IncompleteResponse, make_config, RawClient,
                     RecordingBackend, server, wait_for)

HOST = "web.local"
H = b"Host: web.local\r\n"
LIMITS = {"maxRequestLineLength": 1024, "maxRequestHeadersSize": 4096, "maxRequestHeaders": 20}
TIMEOUTS = {"requestHeader": 2, "requestBody": 2}

# A request pipelined behind every rejected one (same write): it must never be
# answered nor reach the backend.
PROBE = b"GET /smuggled-probe HTTP/1.1\r\nHost: web.local\r\n\r\n"


# --------------------------------------------------------------------------
# a RecordingBackend that also counts every byte read on every connection
# --------------------------------------------------------------------------

class _ConnTap:
    """Raw bytes farmgated wrote on one backend connection."""

    def __init__(self, conn_id):
        self.conn_id = conn_id
        self.data = bytearray()
        self.eof = False  # farmgated closed (or reset) the connection

    def __repr__(self):
        return "<conn %d %d bytes%s: %r>" % (self.conn_id, len(self.data), " closed" if self.eof else "",
                                             bytes(self.data[:300]))


class _TapSocket:
    """Wraps the backend's accepted socket: every recv is copied to a tap."""

    def __init__(self, sock, tap):
        self._sock = sock
        self._tap = tap

    def recv_into(self, buf, nbytes=0, flags=0):
        try:
            n = self._sock.recv_into(buf, nbytes, flags)
        except OSError:
            self._tap.eof = True
            raise
        if n == 0:
            self._tap.eof = True
        else:
            self._tap.data += bytes(memoryview(buf)[:n])
        return n

    def __getattr__(self, name):
        return getattr(self._sock, name)


class TapBackend(RecordingBackend):
    """RecordingBackend (default replies: 200 "backend=B <METHOD> <target>")
    whose .taps hold the raw bytes of every connection, so that a test can
    assert that not a single byte reached it."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.taps = []

    def _serve(self, c, addr, conn_id):
        tap = _ConnTap(conn_id)
        with self._lock:
            self.taps.append(tap)
        try:
            super()._serve(_TapSocket(c, tap), addr, conn_id)
        finally:
            with self._lock:
                self._socks.discard(c)

    def snapshot(self):
        with self._lock:
            return len(self.requests), {t.conn_id: len(t.data) for t in self.taps}

    def delta(self, snap):
        """(new requests, {conn_id: new bytes}) since snapshot()."""
        n, sizes = snap
        with self._lock:
            reqs = list(self.requests[n:])
            grown = {t.conn_id: bytes(t.data[sizes.get(t.conn_id, 0):]) for t in self.taps
                     if len(t.data) > sizes.get(t.conn_id, 0)}
        return reqs, grown

    def tap(self, conn_id):
        for t in list(self.taps):
            if t.conn_id == conn_id:
                return t
        return None


# --------------------------------------------------------------------------
# the table's row types
# --------------------------------------------------------------------------

class Fwd:
    """One request as the backend must receive it. fields: the client's
    end-to-end fields that must pass, in order (Host, X-Forwarded-For,
    X-Forwarded-Proto and the framing are added by the checker). body None:
    no body and no framing field; chunked: Transfer-Encoding: chunked with
    `body` as the decoded payload; else Content-Length: len(body)."""

    def __init__(self, method, target, fields=(), body=None, chunked=False, host=HOST):
        self.method = method
        self.target = target
        self.fields = list(fields)
        self.body = body
        self.chunked = chunked
        self.host = host

    def expected_fields(self, client_port):
        out = [("host", self.host)] + [(k.lower(), v) for k, v in self.fields]
        out += [("x-forwarded-for", "127.0.0.1:%d" % client_port), ("x-forwarded-proto", "http")]
        if self.chunked:
            out.append(("transfer-encoding", "chunked"))
        elif self.body is not None:
            out.append(("content-length", str(len(self.body))))
        return out

    def response_body(self):
        return ("backend=B %s %s" % (self.method, self.target)).encode("latin-1")


class Reject:
    """A request farmgated must refuse with `status`, Connection: close and a
    closed connection, without sending a byte to the backend."""

    def __init__(self, name, data, status, probe=True):
        self.name = name
        self.data = data
        self.status = status
        self.probe = probe


class Accept:
    """A request (or pipelined requests) farmgated must forward as `fwd`
    (a list of Fwd); the client gets the backend's 200s in order. keep: the
    connection stays usable afterwards (else it must be closed)."""

    def __init__(self, name, data, fwd, keep=True):
        self.name = name
        self.data = data
        self.fwd = fwd
        self.keep = keep


class Stall:
    """An incomplete request: farmgated must answer `status` (408) after its
    timeout with Connection: close and close; the backend must not get a
    complete request, and any backend connection that got part of it must be
    closed by farmgated (never reused for another request)."""

    def __init__(self, name, data, status=408):
        self.name = name
        self.data = data
        self.status = status


class Custom:
    """A row driven by its own function fn(ctx) -> list of problems."""

    def __init__(self, name, fn):
        self.name = name
        self.fn = fn


def chunk(data, ext=b""):
    return b"%x%s\r\n%s\r\n" % (len(data), ext, data)


def post_chunked(target, body_wire, extra=b""):
    return (b"POST " + target + b" HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n" + extra +
            b"\r\n" + body_wire)


def post_cl(target, cl_value, body, extra=b""):
    return (b"POST " + target + b" HTTP/1.1\r\n" + H + b"Content-Length: " + cl_value + b"\r\n" +
            extra + b"\r\n" + body)


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: web.local\r\n\r\n"
GOOD_CHUNKS = chunk(b"hello") + b"0\r\n\r\n"


def rows():
    t = []
    R = lambda *a, **k: t.append(Reject(*a, **k))  # noqa: E731
    A = lambda *a, **k: t.append(Accept(*a, **k))  # noqa: E731

    # ---- CL.TE / TE.CL: both framings present -> 400 -----------------------
    R("cl_te_classic", b"POST /clte HTTP/1.1\r\n" + H + b"Content-Length: 6\r\n"
      b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", 400)
    R("te_cl_classic", b"POST /tecl HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
      b"Content-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n", 400)
    R("te_chunked_with_cl_0", b"POST /te0 HTTP/1.1\r\n" + H + b"Content-Length: 0\r\n"
      b"Transfer-Encoding: chunked\r\n\r\n" + GOOD_CHUNKS, 400)
    R("te_xchunked_with_cl", b"POST /x HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n"
      b"Content-Length: 5\r\n\r\nhello", 400)

    # ---- TE.TE: obfuscated Transfer-Encoding --------------------------------
    R("te_xchunked", post_chunked(b"/x", GOOD_CHUNKS).replace(b": chunked", b": xchunked"), 501)
    A("te_chunked_trailing_space", post_chunked(b"/tsp", GOOD_CHUNKS).replace(b": chunked", b": chunked "),
      [Fwd("POST", "/tsp", body=b"hello", chunked=True)])
    A("te_chunked_leading_space", post_chunked(b"/lsp", GOOD_CHUNKS).replace(b": chunked", b":   chunked"),
      [Fwd("POST", "/lsp", body=b"hello", chunked=True)])
    A("te_Chunked_mixed_case", post_chunked(b"/cc", GOOD_CHUNKS).replace(b": chunked", b": Chunked"),
      [Fwd("POST", "/cc", body=b"hello", chunked=True)])
    A("te_tab_chunked", post_chunked(b"/tab", GOOD_CHUNKS).replace(b": chunked", b":\tchunked"),
      [Fwd("POST", "/tab", body=b"hello", chunked=True)])
    A("te_name_upper_case", post_chunked(b"/up", GOOD_CHUNKS).replace(b"Transfer-Encoding: chunked",
                                                                       b"TRANSFER-ENCODING: CHUNKED"),
      [Fwd("POST", "/up", body=b"hello", chunked=True)])
    R("te_chunked_identity", post_chunked(b"/ci", GOOD_CHUNKS).replace(b": chunked", b": chunked, identity"),
      400)
    R("te_identity_chunked", post_chunked(b"/ic", GOOD_CHUNKS).replace(b": chunked", b": identity, chunked"),
      501)
    R("te_chunked_chunked_list", post_chunked(b"/cc2", GOOD_CHUNKS).replace(b": chunked", b": chunked, chunked"),
      400)
    R("te_two_headers_chunked", post_chunked(b"/two", GOOD_CHUNKS, b"Transfer-Encoding: chunked\r\n"), 400)
    R("te_two_headers_chunked_then_other", post_chunked(b"/two2", GOOD_CHUNKS, b"Transfer-Encoding: x\r\n"),
      400)
    R("te_empty_list_element", post_chunked(b"/e", GOOD_CHUNKS).replace(b": chunked", b": , chunked"), 400)
    R("te_vertical_tab", post_chunked(b"/vt", GOOD_CHUNKS).replace(b": chunked", b":\x0bchunked"), 400)
    R("te_space_before_colon", post_chunked(b"/sbc", GOOD_CHUNKS).replace(b"Encoding: chunked",
                                                                           b"Encoding : chunked"), 400)
    R("te_leading_space_name_obs_fold", b"POST /lf HTTP/1.1\r\n" + H + b" Transfer-Encoding: chunked\r\n"
      b"\r\n" + GOOD_CHUNKS, 400)
    R("te_obs_fold_value", b"POST /of HTTP/1.1\r\n" + H + b"Transfer-Encoding: x\r\n chunked\r\n\r\n" +
      GOOD_CHUNKS, 400)
    A("te_request_header_is_not_framing", post_cl(b"/tehdr", b"5", b"hello", b"TE: \tchunked\r\n"),
      [Fwd("POST", "/tehdr", body=b"hello")])
    R("te_on_http10", b"POST /te10 HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + GOOD_CHUNKS, 400)

    # ---- Content-Length -------------------------------------------------------
    A("cl_duplicate_identical", post_cl(b"/dup", b"5", b"hello", b"Content-Length: 5\r\n"),
      [Fwd("POST", "/dup", body=b"hello")])
    A("cl_list_identical", post_cl(b"/list", b"5, 5", b"hello"), [Fwd("POST", "/list", body=b"hello")])
    A("cl_leading_zeros", post_cl(b"/lz", b"005", b"hello"), [Fwd("POST", "/lz", body=b"hello")])
    R("cl_duplicate_differing", post_cl(b"/d", b"5", b"hello", b"Content-Length: 6\r\n"), 400)
    R("cl_list_differing", post_cl(b"/l", b"1,2", b"ab"), 400)
    R("cl_list_trailing_comma", post_cl(b"/l", b"5,", b"hello"), 400)
    R("cl_plus", post_cl(b"/p", b"+5", b"hello"), 400)
    R("cl_minus", post_cl(b"/m", b"-1", b"hello"), 400)
    R("cl_hex", post_cl(b"/h", b"0x10", b"0123456789abcdef"), 400)
    R("cl_inner_space", post_cl(b"/s", b" 5 5", b"hello"), 400)
    R("cl_huge_wraps_to_1", post_cl(b"/huge", b"18446744073709551617", b"A"), 400)
    R("cl_huge_digits", post_cl(b"/huge", b"99999999999999999999999", b"A"), 400)
    R("cl_empty", post_cl(b"/empty", b"", b""), 400)
    R("cl_space_before_colon", b"POST /sbc HTTP/1.1\r\n" + H + b"Content-Length : 5\r\n\r\nhello", 400)

    # ---- chunked body framing --------------------------------------------------
    R("chunk_size_non_hex", post_chunked(b"/c", b"g\r\nhello\r\n0\r\n\r\n"), 400)
    R("chunk_size_negative", post_chunked(b"/c", b"-5\r\nhello\r\n0\r\n\r\n"), 400)
    R("chunk_size_overflow", post_chunked(b"/c", b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"), 400)
    R("chunk_size_0x_prefix", post_chunked(b"/c", b"0x5\r\nhello\r\n0\r\n\r\n"), 400)
    R("chunk_size_empty", post_chunked(b"/c", b"\r\nhello\r\n0\r\n\r\n"), 400)
    R("chunk_size_leading_space", post_chunked(b"/c", b" 5\r\nhello\r\n0\r\n\r\n"), 400)
    R("chunk_size_inner_space", post_chunked(b"/c", b"5 5\r\nhello\r\n0\r\n\r\n"), 400)
    R("chunk_size_trailing_space_no_ext", post_chunked(b"/c", b"5 \r\nhello\r\n0\r\n\r\n"), 400)
    R("chunk_missing_crlf_after_data", post_chunked(b"/c", b"5\r\nhello0\r\n\r\n"), 400)
    R("chunk_data_longer_than_size", post_chunked(b"/c", b"3\r\nhello\r\n0\r\n\r\n"), 400)
    R("chunk_bare_lf_after_size", post_chunked(b"/c", b"5\nhello\r\n0\r\n\r\n"), 400)
    R("chunk_bare_lf_after_data", post_chunked(b"/c", b"5\r\nhello\n0\r\n\r\n"), 400)
    R("chunk_bare_cr_after_size", post_chunked(b"/c", b"5\rhello\r\n0\r\n\r\n"), 400)
    R("chunk_bad_last_chunk_end", post_chunked(b"/c", b"5\r\nhello\r\n0\r\nX\r\n"), 400)
    R("chunk_ext_empty_name", post_chunked(b"/c", b"5;\r\nhello\r\n0\r\n\r\n"), 400)
    R("chunk_ext_no_name", post_chunked(b"/c", b"5;=v\r\nhello\r\n0\r\n\r\n"), 400)
    R("chunk_ext_empty_value", post_chunked(b"/c", b"5;a=\r\nhello\r\n0\r\n\r\n"), 400)
    R("chunk_ext_space_in_name", post_chunked(b"/c", b"5;a b\r\nhello\r\n0\r\n\r\n"), 400)
    R("chunk_ext_unterminated_quote", post_chunked(b"/c", b"5;a=\"x\r\nhello\r\n0\r\n\r\n"), 400)
    R("chunk_ext_nul", post_chunked(b"/c", b"5;a=b\x00\r\nhello\r\n0\r\n\r\n"), 400)
    R("chunk_trailer_bad_name", post_chunked(b"/c", b"5\r\nhello\r\n0\r\nX T: 1\r\n\r\n"), 400)
    R("chunk_trailer_obs_fold", post_chunked(b"/c", b"5\r\nhello\r\n0\r\nX-T: 1\r\n 2\r\n\r\n"), 400)
    A("chunk_ext_valid_stripped", post_chunked(b"/ext", chunk(b"hello", b";name=value") +
                                               chunk(b" world", b";flag") + b"0;last=1\r\n\r\n"),
      [Fwd("POST", "/ext", body=b"hello world", chunked=True)])
    A("chunk_ext_quoted_bws_stripped", post_chunked(b"/extq", chunk(b"abc", b' ; a = "q;\\"x" ; b') +
                                                    b"0\r\n\r\n"),
      [Fwd("POST", "/extq", body=b"abc", chunked=True)])
    A("chunk_trailers_dropped", post_chunked(b"/trl", chunk(b"data") + b"0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n",
                                             b"Trailer: X-Checksum\r\n"),
      [Fwd("POST", "/trl", body=b"data", chunked=True)])
    A("chunk_upper_hex_and_leading_zeros", post_chunked(b"/hex", b"A\r\n0123456789\r\n0005\r\nhello\r\n"
                                                        b"0\r\n\r\n"),
      [Fwd("POST", "/hex", body=b"0123456789hello", chunked=True)])

    # ---- a request hidden in a body arrives as body bytes only -----------------
    A("smuggled_in_cl_body", post_cl(b"/carrier", b"%d" % len(SMUGGLED), SMUGGLED),
      [Fwd("POST", "/carrier", body=SMUGGLED)])
    A("smuggled_in_chunked_body", post_chunked(b"/carrier-c", chunk(SMUGGLED) + b"0\r\n\r\n"),
      [Fwd("POST", "/carrier-c", body=SMUGGLED, chunked=True)])
    A("get_with_cl_body", b"GET /getbody HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello",
      [Fwd("GET", "/getbody", body=b"hello")])
    A("get_with_chunked_body", b"GET /getc HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" +
      GOOD_CHUNKS, [Fwd("GET", "/getc", body=b"hello", chunked=True)])
    A("post_cl_0", post_cl(b"/zero", b"0", b""), [Fwd("POST", "/zero", body=b"")])

    # ---- line endings, control bytes, field syntax -------------------------------
    R("bare_lf_request_line", b"GET /lf HTTP/1.1\n" + H + b"\r\n", 400)
    R("bare_lf_header_line", b"GET /lf HTTP/1.1\r\nHost: web.local\nX-A: 1\r\n\r\n", 400)
    R("bare_lf_end_of_head", b"GET /lf HTTP/1.1\r\n" + H + b"\n", 400)
    R("bare_lf_only_head", b"GET /lf HTTP/1.1\nHost: web.local\n\n", 400)
    R("bare_cr_request_line", b"GET /cr HTTP/1.1\r" + H + b"\r\n", 400)
    R("bare_cr_in_header_value", b"GET /cr HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n", 400)
    R("obs_fold_header", b"GET /fold HTTP/1.1\r\n" + H + b"X-Folded: a\r\n b\r\n\r\n", 400)
    R("obs_fold_tab", b"GET /fold HTTP/1.1\r\n" + H + b"X-Folded: a\r\n\tb\r\n\r\n", 400)
    R("nul_in_header_value", b"GET /n HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400)
    R("ctl_0x01_in_header_value", b"GET /n HTTP/1.1\r\n" + H + b"X-A: a\x01b\r\n\r\n", 400)
    R("del_in_header_value", b"GET /n HTTP/1.1\r\n" + H + b"X-A: a\x7fb\r\n\r\n", 400)
    R("nul_in_header_name", b"GET /n HTTP/1.1\r\n" + H + b"X\x00A: 1\r\n\r\n", 400)
    R("nul_in_target", b"GET /a\x00b HTTP/1.1\r\n" + H + b"\r\n", 400)
    R("ctl_in_target", b"GET /a\x01b HTTP/1.1\r\n" + H + b"\r\n", 400)
    R("tab_in_target", b"GET /a\tb HTTP/1.1\r\n" + H + b"\r\n", 400)
    R("del_in_target", b"GET /a\x7fb HTTP/1.1\r\n" + H + b"\r\n", 400)
    R("high_byte_in_target", b"GET /caf\xe9 HTTP/1.1\r\n" + H + b"\r\n", 400)
    R("fragment_in_target", b"GET /a#frag HTTP/1.1\r\n" + H + b"\r\n", 400)
    R("space_before_colon", b"GET /s HTTP/1.1\r\n" + H + b"X-Foo : bar\r\n\r\n", 400)
    R("empty_header_name", b"GET /e HTTP/1.1\r\n" + H + b": value\r\n\r\n", 400)
    R("header_name_with_space", b"GET /e HTTP/1.1\r\n" + H + b"X Y: 1\r\n\r\n", 400)
    R("header_name_with_at", b"GET /e HTTP/1.1\r\n" + H + b"X@Y: 1\r\n\r\n", 400)
    R("header_name_non_ascii", b"GET /e HTTP/1.1\r\n" + H + b"X\xe9: 1\r\n\r\n", 400)
    R("header_without_colon", b"GET /e HTTP/1.1\r\n" + H + b"X-No-Colon\r\n\r\n", 400)
    A("obs_text_in_value_passes", b"GET /obs HTTP/1.1\r\n" + H + b"X-Latin: caf\xe9\r\n\r\n",
      [Fwd("GET", "/obs", [("X-Latin", "caf\xe9")])])
    A("ows_trimmed_from_values", b"GET /ows HTTP/1.1\r\n" + H + b"X-Ows: \t value  \t\r\n\r\n",
      [Fwd("GET", "/ows", [("X-Ows", "value")])])
    A("leading_empty_line_ignored", b"\r\nGET /lead HTTP/1.1\r\n" + H + b"\r\n", [Fwd("GET", "/lead")])

    # ---- request line and target -------------------------------------------------
    A("absolute_form", b"GET http://web.local/abs?q=1 HTTP/1.1\r\n" + H + b"\r\n",
      [Fwd("GET", "/abs?q=1")])
    A("absolute_form_conflicting_host", b"GET http://abs.example/p HTTP/1.1\r\nHost: other.example\r\n\r\n",
      [Fwd("GET", "/p", host="abs.example")])
    A("absolute_form_empty_path", b"GET http://web.local HTTP/1.1\r\n" + H + b"\r\n", [Fwd("GET", "/")])
    A("absolute_form_port_no_host_header", b"GET http://web.local:8080/x HTTP/1.0\r\n\r\n",
      [Fwd("GET", "/x", host="web.local:8080")], keep=False)
    R("absolute_form_userinfo", b"GET http://user@web.local/ HTTP/1.1\r\n" + H + b"\r\n", 400)
    R("absolute_form_bad_scheme", b"GET ftp://web.local/ HTTP/1.1\r\n" + H + b"\r\n", 400)
    R("asterisk_form_with_get", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400)
    R("missing_host_http11", b"GET /nohost HTTP/1.1\r\nX-A: 1\r\n\r\n", 400)
    R("two_host_headers", b"GET /h2 HTTP/1.1\r\n" + H + b"Host: other.example\r\n\r\n", 400)
    R("two_identical_host_headers", b"GET /h2 HTTP/1.1\r\n" + H + H + b"\r\n", 400)
    R("host_with_space", b"GET /h HTTP/1.1\r\nHost: web local\r\n\r\n", 400)
    R("host_with_slash", b"GET /h HTTP/1.1\r\nHost: web.local/evil\r\n\r\n", 400)
    R("host_with_userinfo", b"GET /h HTTP/1.1\r\nHost: user@web.local\r\n\r\n", 400)
    R("host_port_out_of_range", b"GET /h HTTP/1.1\r\nHost: web.local:99999\r\n\r\n", 400)
    R("host_bad_ipv6_literal", b"GET /h HTTP/1.1\r\nHost: [::1\r\n\r\n", 400)
    A("host_with_port", b"GET /hp HTTP/1.1\r\nHost: web.local:8080\r\n\r\n",
      [Fwd("GET", "/hp", host="web.local:8080")])
    A("http10_without_host", b"GET /h10 HTTP/1.0\r\n\r\n",
      [Fwd("GET", "/h10", host="@BACKEND@")], keep=False)
    R("double_space_after_method", b"GET  / HTTP/1.1\r\n" + H + b"\r\n", 400)
    R("double_space_before_version", b"GET /  HTTP/1.1\r\n" + H + b"\r\n", 400)
    R("trailing_space_after_version", b"GET / HTTP/1.1 \r\n" + H + b"\r\n", 400)
    R("tab_as_separator", b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n", 400)
    R("invalid_method_char", b"G(T / HTTP/1.1\r\n" + H + b"\r\n", 400)
    R("http09_request_line", b"GET /\r\n" + H + b"\r\n", 400)
    A("lowercase_method", b"get /lower HTTP/1.1\r\n" + H + b"\r\n", [Fwd("get", "/lower")])
    A("extension_method", b"PURGE /ext HTTP/1.1\r\n" + H + b"\r\n", [Fwd("PURGE", "/ext")])
    R("version_http12", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505)
    R("version_http20", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505)
    R("version_http09", b"GET / HTTP/0.9\r\n" + H + b"\r\n", 505)
    R("version_lowercase", b"GET / http/1.1\r\n" + H + b"\r\n", 400)
    R("version_garbage", b"GET / FOO/1.1\r\n" + H + b"\r\n", 400)
    R("version_two_digit_minor", b"GET / HTTP/1.10\r\n" + H + b"\r\n", 400)
    R("version_missing_minor", b"GET / HTTP/1\r\n" + H + b"\r\n", 400)
    R("connect_method", b"CONNECT web.local:443 HTTP/1.1\r\nHost: web.local:443\r\n\r\n", 405)
    R("connect_with_tunnel_bytes", b"CONNECT web.local:443 HTTP/1.1\r\nHost: web.local:443\r\n\r\n" +
      b"GET /tunnel-data HTTP/1.1\r\n" + H + b"\r\n", 405)
    R("trace_method", b"TRACE / HTTP/1.1\r\n" + H + b"\r\n", 405)
    R("trace_with_body", b"TRACE / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello", 405)

    # ---- limits --------------------------------------------------------------------
    R("request_line_too_long", b"GET /" + b"a" * 1100 + b" HTTP/1.1\r\n" + H + b"\r\n", 414)
    A("request_line_under_limit", b"GET /" + b"b" * 900 + b" HTTP/1.1\r\n" + H + b"\r\n",
      [Fwd("GET", "/" + "b" * 900)])
    many = [("X-H%02d" % i, "v%d" % i) for i in range(19)]  # + Host = 20 = the limit
    A("headers_at_limit", b"GET /many HTTP/1.1\r\n" + H + b"".join(b"%s: %s\r\n" % (k.encode(), v.encode())
                                                                   for k, v in many) + b"\r\n",
      [Fwd("GET", "/many", many)])
    R("too_many_headers", b"GET /many HTTP/1.1\r\n" + H + b"".join(b"X-H%02d: 1\r\n" % i for i in range(25)) +
      b"\r\n", 431)
    R("head_too_large", b"GET /big HTTP/1.1\r\n" + H + b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 500)
                                                               for i in range(10)) + b"\r\n", 431)

    # ---- Expect ------------------------------------------------------------------------
    R("expect_unknown", b"POST /exp HTTP/1.1\r\n" + H + b"Expect: foo\r\nContent-Length: 5\r\n\r\nhello", 417)
    A("expect_100_body_sent_at_once", post_cl(b"/exp-now", b"5", b"hello", b"Expect: 100-Continue\r\n"),
      [Fwd("POST", "/exp-now", body=b"hello")])
    A("expect_on_http10_ignored", b"POST /exp10 HTTP/1.0\r\n" + H + b"Expect: 100-continue\r\n"
      b"Content-Length: 5\r\n\r\nhello", [Fwd("POST", "/exp10", body=b"hello")], keep=False)

    # ---- Connection and hop-by-hop / identity fields ------------------------------------
    A("connection_close", b"GET /cc HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n", [Fwd("GET", "/cc")],
      keep=False)
    A("connection_close_and_keep_alive", b"GET /ck HTTP/1.1\r\n" + H + b"Connection: keep-alive, close\r\n\r\n",
      [Fwd("GET", "/ck")], keep=False)
    A("http10_keep_alive", b"GET /k10 HTTP/1.0\r\n" + H + b"Connection: keep-alive\r\n\r\n",
      [Fwd("GET", "/k10")], keep=True)
    A("connection_names_x_secret", b"GET /sec HTTP/1.1\r\n" + H + b"Connection: X-Secret\r\n"
      b"X-Secret: 1\r\nX-Public: 2\r\n\r\n", [Fwd("GET", "/sec", [("X-Public", "2")])])
    A("connection_names_content_length", post_cl(b"/ccl", b"5", b"hello", b"Connection: Content-Length\r\n"),
      [Fwd("POST", "/ccl", body=b"hello")])
    A("connection_names_transfer_encoding", post_chunked(b"/cte", GOOD_CHUNKS,
                                                         b"Connection: Transfer-Encoding\r\n"),
      [Fwd("POST", "/cte", body=b"hello", chunked=True)])
    A("hop_by_hop_fields_removed", b"GET /hop HTTP/1.1\r\n" + H + b"Keep-Alive: timeout=5\r\n"
      b"Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\n"
      b"Connection: Upgrade, keep-alive\r\nX-End: 1\r\n\r\n", [Fwd("GET", "/hop", [("X-End", "1")])])
    A("client_cert_fields_removed", b"GET /cert HTTP/1.1\r\n" + H + b"X-ARR-ClientCert: Zm9yZ2Vk\r\n"
      b"Client-Cert: :Zm9yZ2Vk:\r\nClient-Cert-Chain: :YQ==:\r\nX-ARR-SSL: 2048|256|forged\r\n"
      b"x-arr-clientcert: lower\r\nX-Kept: yes\r\n\r\n", [Fwd("GET", "/cert", [("X-Kept", "yes")])])

    # ---- pipelining -----------------------------------------------------------------------
    A("pipelined_get_get", b"GET /p1 HTTP/1.1\r\n" + H + b"\r\nGET /p2 HTTP/1.1\r\n" + H + b"\r\n",
      [Fwd("GET", "/p1"), Fwd("GET", "/p2")])
    A("pipelined_post_get", post_cl(b"/pp1", b"5", b"hello") + b"GET /pp2 HTTP/1.1\r\n" + H + b"\r\n",
      [Fwd("POST", "/pp1", body=b"hello"), Fwd("GET", "/pp2")])
    A("pipelined_chunked_get_get", post_chunked(b"/pc1", chunk(b"abc", b";x=1") + b"0\r\n\r\n") +
      b"GET /pc2 HTTP/1.1\r\n" + H + b"\r\nGET /pc3 HTTP/1.1\r\n" + H + b"\r\n",
      [Fwd("POST", "/pc1", body=b"abc", chunked=True), Fwd("GET", "/pc2"), Fwd("GET", "/pc3")])

    # ---- more CL.TE / TE.CL / TE.TE --------------------------------------------------
    R("te_identity_with_cl", post_cl(b"/ti", b"5", b"hello", b"Transfer-Encoding: identity\r\n"), 400)
    R("te_empty_value_with_cl", post_cl(b"/tev", b"5", b"hello", b"Transfer-Encoding: \r\n"), 400)
    R("te_empty_value", post_chunked(b"/te", GOOD_CHUNKS).replace(b": chunked", b": "), 400)
    R("te_cl_smuggled_prefix", b"POST /tecl2 HTTP/1.1\r\n" + H + b"Content-Length: 4\r\n"
      b"Transfer-Encoding: chunked\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n", 400)
    R("te_chunked_trailing_comma", post_chunked(b"/tc", GOOD_CHUNKS).replace(b": chunked", b": chunked,"), 400)
    R("te_chunked_with_param", post_chunked(b"/tp", GOOD_CHUNKS).replace(b": chunked", b": chunked;q=1"), 501)
    R("te_quoted_chunked", post_chunked(b"/tq", GOOD_CHUNKS).replace(b": chunked", b': "chunked"'), 501)
    R("te_gzip_chunked", post_chunked(b"/tg", GOOD_CHUNKS).replace(b": chunked", b": gzip, chunked"), 501)
    R("te_chunked_nul", post_chunked(b"/tn", GOOD_CHUNKS).replace(b": chunked", b": chunked\x00"), 400)
    R("te_bare_cr_in_value", post_chunked(b"/tcr", GOOD_CHUNKS).replace(b": chunked", b": chun\rked"), 400)

    # ---- more Content-Length ---------------------------------------------------------
    A("cl_tab_ows", post_cl(b"/ctab", b"\t5\t", b"hello"), [Fwd("POST", "/ctab", body=b"hello")])
    A("cl_list_three_equal", post_cl(b"/c3", b"5,5,5", b"hello"), [Fwd("POST", "/c3", body=b"hello")])
    A("cl_list_ows_around_commas", post_cl(b"/cows", b"5 ,  5", b"hello"), [Fwd("POST", "/cows", body=b"hello")])
    A("cl_duplicate_single_and_list", post_cl(b"/cdl", b"5", b"hello", b"Content-Length: 5, 5\r\n"),
      [Fwd("POST", "/cdl", body=b"hello")])
    A("cl_zero_on_get", b"GET /g0 HTTP/1.1\r\n" + H + b"Content-Length: 0\r\n\r\n", [Fwd("GET", "/g0", body=b"")])
    R("cl_list_leading_comma", post_cl(b"/c", b",5", b"hello"), 400)
    R("cl_list_zero_and_five", post_cl(b"/c", b"0, 5", b"hello"), 400)
    R("cl_decimal_point", post_cl(b"/c", b"5.0", b"hello"), 400)
    R("cl_exponent", post_cl(b"/c", b"5e0", b"hello"), 400)
    R("cl_fullwidth_digit", post_cl(b"/c", b"\xef\xbc\x95", b"hello"), 400)
    R("cl_nul_after_digits", post_cl(b"/c", b"5\x00", b"hello"), 400)
    R("cl_vertical_tab", post_cl(b"/c", b"\x0b5", b"hello"), 400)
    R("cl_duplicate_one_empty", post_cl(b"/c", b"5", b"hello", b"Content-Length: \r\n"), 400)
    R("cl_nineteen_digits", post_cl(b"/c", b"0" * 18 + b"5", b"hello"), 400)
    R("cl_obs_fold_value", b"POST /cf HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n 0\r\n\r\nhello", 400)

    # ---- more chunk sizes, extensions and trailers ----------------------------------
    A("chunk_size_mixed_case_hex", post_chunked(b"/mc", b"aB\r\n" + b"m" * 0xab + b"\r\n0\r\n\r\n"),
      [Fwd("POST", "/mc", body=b"m" * 0xab, chunked=True)])
    A("chunk_size_16_digits_leading_zeros", post_chunked(b"/z16", b"0" * 15 + b"5\r\nhello\r\n0\r\n\r\n"),
      [Fwd("POST", "/z16", body=b"hello", chunked=True)])
    A("chunk_ext_tab_bws", post_chunked(b"/etab", b"5\t;a=b\r\nhello\r\n0\r\n\r\n"),
      [Fwd("POST", "/etab", body=b"hello", chunked=True)])
    A("chunk_ext_many", post_chunked(b"/emany", b"5;a;b=1;c=\"2\";d\r\nhello\r\n0\r\n\r\n"),
      [Fwd("POST", "/emany", body=b"hello", chunked=True)])
    A("chunk_trailer_framing_fields_dropped",
      post_chunked(b"/tfd", chunk(b"data") + b"0\r\nContent-Length: 50\r\nTransfer-Encoding: x\r\n\r\n"),
      [Fwd("POST", "/tfd", body=b"data", chunked=True)])
    R("chunk_size_17_digits", post_chunked(b"/c", b"0" * 16 + b"5\r\nhello\r\n0\r\n\r\n"), 400)
    R("chunk_size_2_pow_64", post_chunked(b"/c", b"10000000000000000\r\nhello\r\n0\r\n\r\n"), 400)
    R("chunk_size_plus", post_chunked(b"/c", b"+5\r\nhello\r\n0\r\n\r\n"), 400)
    R("chunk_size_cr_cr_lf", post_chunked(b"/c", b"5\r\r\nhello\r\n0\r\n\r\n"), 400)
    R("chunk_ext_huge", post_chunked(b"/c", b"5;a=" + b"x" * 5000 + b"\r\nhello\r\n0\r\n\r\n"), 400)
    R("chunk_ext_quoted_crlf", post_chunked(b"/c", b'5;a="x\r\ny"\r\nhello\r\n0\r\n\r\n'), 400)
    R("chunk_ext_bare_lf", post_chunked(b"/c", b"5;a=b\nhello\r\n0\r\n\r\n"), 400)
    R("chunk_last_chunk_bare_lf", post_chunked(b"/c", b"5\r\nhello\r\n0\n\r\n"), 400)
    R("chunk_final_line_bare_lf", post_chunked(b"/c", b"5\r\nhello\r\n0\r\n\n"), 400)
    R("chunk_trailer_bare_lf", post_chunked(b"/c", b"5\r\nhello\r\n0\r\nX-T: 1\n\r\n"), 400)
    R("chunk_trailer_nul", post_chunked(b"/c", b"5\r\nhello\r\n0\r\nX-T: a\x00b\r\n\r\n"), 400)
    R("chunk_zero_with_data", post_chunked(b"/c", b"0\r\nhello\r\n\r\n"), 400)
    R("chunk_trailer_space_before_colon", post_chunked(b"/c", b"5\r\nhello\r\n0\r\nX-T : 1\r\n\r\n"), 400)

    # ---- more line endings and control bytes ------------------------------------------
    R("bare_cr_in_header_name", b"GET /cr HTTP/1.1\r\n" + H + b"X\rA: 1\r\n\r\n", 400)
    R("bare_lf_in_header_value", b"GET /lf HTTP/1.1\r\n" + H + b"X-A: a\nb\r\n\r\n", 400)
    R("cr_at_start_of_field_line", b"GET /cr HTTP/1.1\r\n" + H + b"\rX-A: 1\r\n\r\n", 400)
    R("lf_cr_line_end", b"GET /lfcr HTTP/1.1\n\r" + H + b"\r\n", 400)
    R("nul_in_method", b"G\x00T / HTTP/1.1\r\n" + H + b"\r\n", 400)
    R("nul_in_version", b"GET / HTTP/1.1\x00\r\n" + H + b"\r\n", 400)
    R("nul_in_host", b"GET / HTTP/1.1\r\nHost: web.local\x00.evil\r\n\r\n", 400)
    R("esc_in_header_value", b"GET /n HTTP/1.1\r\n" + H + b"X-A: a\x1b[0mb\r\n\r\n", 400)
    R("ctl_in_header_name", b"GET /n HTTP/1.1\r\n" + H + b"X\x01A: 1\r\n\r\n", 400)
    R("space_in_target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400)

    # ---- more absolute-form and Host -----------------------------------------------
    A("absolute_form_https", b"GET https://web.local/s HTTP/1.1\r\n" + H + b"\r\n", [Fwd("GET", "/s")])
    A("absolute_form_uppercase_scheme", b"GET HTTP://web.local/u HTTP/1.1\r\n" + H + b"\r\n", [Fwd("GET", "/u")])
    A("absolute_form_port_conflicting_host", b"GET http://web.local:8080/p HTTP/1.1\r\nHost: other.example\r\n\r\n",
      [Fwd("GET", "/p", host="web.local:8080")])
    A("absolute_form_ipv6", b"GET http://[::1]:8080/v6 HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
      [Fwd("GET", "/v6", host="[::1]:8080")])
    R("absolute_form_userinfo_password", b"GET http://user:pw@web.local/ HTTP/1.1\r\n" + H + b"\r\n", 400)
    R("absolute_form_missing_host_http11", b"GET http://web.local/x HTTP/1.1\r\n\r\n", 400)
    R("absolute_form_empty_authority", b"GET http:///x HTTP/1.1\r\n" + H + b"\r\n", 400)
    R("absolute_form_two_host_headers", b"GET http://web.local/x HTTP/1.1\r\n" + H + b"Host: b.example\r\n\r\n", 400)
    R("absolute_form_bad_authority_char", b"GET http://we<b.local/ HTTP/1.1\r\n" + H + b"\r\n", 400)
    # "//web.local/x" is an origin-form path with an empty first segment, not an authority
    A("origin_form_double_slash", b"GET //web.local/x HTTP/1.1\r\n" + H + b"\r\n", [Fwd("GET", "//web.local/x")])
    R("empty_host_http11", b"GET /eh HTTP/1.1\r\nHost: \r\n\r\n", 400)
    R("empty_host_and_real_host", b"GET /eh HTTP/1.1\r\nHost: \r\n" + H + b"\r\n", 400)
    A("host_ipv4_with_port", b"GET /h4 HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n",
      [Fwd("GET", "/h4", host="127.0.0.1:80")])
    A("host_ipv6_literal", b"GET /h6 HTTP/1.1\r\nHost: [::1]\r\n\r\n", [Fwd("GET", "/h6", host="[::1]")])
    R("host_with_angle_bracket", b"GET /h HTTP/1.1\r\nHost: web<local\r\n\r\n", 400)
    R("host_with_backslash", b"GET /h HTTP/1.1\r\nHost: web.local\\evil\r\n\r\n", 400)
    R("host_with_question_mark", b"GET /h HTTP/1.1\r\nHost: web.local?x\r\n\r\n", 400)
    R("host_port_not_digits", b"GET /h HTTP/1.1\r\nHost: web.local:8a\r\n\r\n", 400)
    R("host_non_ascii", b"GET /h HTTP/1.1\r\nHost: w\xe9b.local\r\n\r\n", 400)
    R("host_with_tab_inside", b"GET /h HTTP/1.1\r\nHost: web\tlocal\r\n\r\n", 400)

    # ---- more limits -------------------------------------------------------------------
    # a request line counts its CRLF: 5 + 1008 + 11 = 1024 bytes is the largest allowed
    A("request_line_at_limit", b"GET /" + b"c" * 1008 + b" HTTP/1.1\r\n" + H + b"\r\n",
      [Fwd("GET", "/" + "c" * 1008)])
    R("request_line_one_over_limit", b"GET /" + b"c" * 1009 + b" HTTP/1.1\r\n" + H + b"\r\n", 414)
    R("method_longer_than_line_limit", b"M" * 1100 + b" / HTTP/1.1\r\n" + H + b"\r\n", 414)
    R("headers_one_over_limit", b"GET /many HTTP/1.1\r\n" + H + b"".join(b"X-H%02d: 1\r\n" % i for i in range(20)) +
      b"\r\n", 431)
    R("one_header_value_too_large", b"GET /big HTTP/1.1\r\n" + H + b"X-Big: " + b"v" * 5000 + b"\r\n\r\n", 431)
    R("empty_fields_over_count", b"GET /e HTTP/1.1\r\n" + H + b"X-E:\r\n" * 20 + b"\r\n", 431)

    # ---- more methods and versions ------------------------------------------------------
    A("method_with_dash", b"M-SEARCH /ms HTTP/1.1\r\n" + H + b"\r\n", [Fwd("M-SEARCH", "/ms")])
    A("put_with_body", b"PUT /put HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n\r\nabc",
      [Fwd("PUT", "/put", body=b"abc")])
    A("delete_no_body", b"DELETE /del HTTP/1.1\r\n" + H + b"\r\n", [Fwd("DELETE", "/del")])
    R("method_empty", b" / HTTP/1.1\r\n" + H + b"\r\n", 400)
    R("method_non_ascii", b"G\xc9T / HTTP/1.1\r\n" + H + b"\r\n", 400)
    R("method_lowercase_connect_authority", b"connect web.local:443 HTTP/1.1\r\nHost: web.local:443\r\n\r\n", 400)
    R("version_leading_zero_minor", b"GET / HTTP/1.01\r\n" + H + b"\r\n", 400)
    R("version_http3_no_minor", b"GET / HTTP/3\r\n" + H + b"\r\n", 400)
    R("version_two_digit_major", b"GET / HTTP/10.0\r\n" + H + b"\r\n", 400)
    R("version_missing_after_space", b"GET / \r\n" + H + b"\r\n", 400)
    R("version_mixed_case", b"GET / Http/1.1\r\n" + H + b"\r\n", 400)
    R("h2_prior_knowledge_preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, probe=False)
    A("expect_100_chunked_body_sent_at_once", post_chunked(b"/exc", GOOD_CHUNKS, b"Expect: 100-continue\r\n"),
      [Fwd("POST", "/exc", body=b"hello", chunked=True)])

    # ---- incomplete requests: 408 ---------------------------------------------------------
    t.append(Stall("cl_body_shorter_than_declared", post_cl(b"/short", b"10", b"hello")))
    t.append(Stall("chunk_data_shorter_than_declared", post_chunked(b"/shortc", b"10\r\nhello")))
    t.append(Stall("head_never_completes", b"GET /slow HTTP/1.1\r\n" + H))
    t.append(Custom("expect_100_continue", _expect_100_continue))
    return t


# --------------------------------------------------------------------------
# checkers
# --------------------------------------------------------------------------

_FIELD_LINE = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+: (?:[^\x00-\x1f\x7f]|\t)*$")


def _norm(fields):
    # stable sort on the name only: values of one name keep their order
    return sorted(((k.lower(), v) for k, v in fields), key=lambda kv: kv[0])


def _clean_chunked(raw):
    """Problems with a re-chunked body as the backend got it (no
    extensions, no trailers, lowercase/any hex sizes, exact CRLFs)."""
    pos, out = 0, []
    while True:
        m = re.compile(rb"([0-9a-fA-F]+)\r\n").match(raw, pos)
        if not m:
            return ["chunked body not clean at offset %d: %r" % (pos, raw[pos:pos + 40])]
        size = int(m.group(1), 16)
        pos = m.end()
        if size == 0:
            if raw[pos:] != b"\r\n":
                out.append("last chunk not followed by exactly CRLF (trailers?): %r" % raw[pos:pos + 80])
            return out
        if raw[pos + size:pos + size + 2] != b"\r\n":
            return ["chunk data not followed by CRLF at offset %d" % (pos + size)]
        pos += size + 2


def _check_forwarded(got, want, client_port):
    """Problems of one backend Request against one Fwd."""
    p = []
    line = got.head.split(b"\r\n", 1)[0]
    want_line = ("%s %s HTTP/1.1" % (want.method, want.target)).encode("latin-1")
    if line != want_line:
        p.append("backend request line %r, expected %r" % (line, want_line))
    for fl in got.head[:-4].split(b"\r\n")[1:]:
        if not _FIELD_LINE.match(fl):
            p.append("backend got a malformed field line %r" % fl)
    exp = want.expected_fields(client_port)
    if _norm(got.headers) != _norm(exp):
        p.append("backend fields %r, expected %r" % (_norm(got.headers), _norm(exp)))
    if want.chunked:
        if not got.chunked:
            p.append("backend body not chunked")
        if got.chunk_exts:
            p.append("chunk extensions forwarded: %r" % got.chunk_exts)
        if got.trailers:
            p.append("trailers forwarded: %r" % got.trailers)
        if got.decoded != want.body:
            p.append("backend decoded body %r, expected %r" % (got.decoded[:200], want.body[:200]))
        p += _clean_chunked(got.body)
    else:
        want_body = want.body or b""
        if got.body != want_body:
            p.append("backend body %r, expected %r" % (got.body[:200], want_body[:200]))
    return p


class Ctx:
    def __init__(self, env, fg, be):
        self.env = env
        self.fg = fg
        self.be = be
        self.timeout = 10.0 * env.slow

    def settle(self):
        time.sleep(0.15 * self.env.slow)


def _client_gone(c, ctx):
    """Problems unless the server closes c without sending another byte,
    even if the client goes on sending (a request after the answer)."""
    p = []
    try:
        c.send(b"GET /after-reject HTTP/1.1\r\nHost: web.local\r\n\r\n")
    except OSError:
        pass
    if not c.wait_closed(3.0 * ctx.env.slow):
        p.append("connection still open %.0f s after the rejection" % (3.0 * ctx.env.slow))
    if c.buf:
        p.append("extra bytes after the rejection (a second response?): %r" % bytes(c.buf[:300]))
    return p


def _no_backend_traffic(ctx, snap):
    reqs, grown = ctx.be.delta(snap)
    p = []
    if reqs:
        p.append("backend received %d request(s): %r" % (len(reqs), reqs))
    if grown:
        p.append("backend received bytes: %s" % "; ".join("conn %d: %r" % (k, v[:300]) for k, v in grown.items()))
    return p


def run_reject(ctx, case):
    p = []
    snap = ctx.be.snapshot()
    with RawClient(ctx.fg.port, timeout=ctx.timeout) as c:
        c.send(case.data + (PROBE if case.probe else b""))
        try:
            r = c.read_response()
        except (ConnectionClosed, IncompleteResponse, TimeoutError) as e:
            r = None
            p.append("no response (expected %d): %s" % (case.status, e))
        if r is not None:
            if r.status != case.status:
                p.append("status %d, expected %d: %s" % (r.status, case.status, r.summary(150)))
            if "close" not in (r.header("Connection") or "").lower():
                p.append("%d without Connection: close: %s" % (r.status, r.summary(150)))
            p += _client_gone(c, ctx)
    ctx.settle()
    return p + _no_backend_traffic(ctx, snap)


def run_accept(ctx, case):
    p = []
    snap = ctx.be.snapshot()
    fwd = list(case.fwd)
    with RawClient(ctx.fg.port, timeout=ctx.timeout) as c:
        c.send(case.data)
        for i, f in enumerate(fwd):
            try:
                r = c.read_response()
            except (ConnectionClosed, IncompleteResponse, TimeoutError) as e:
                p.append("response %d of %d missing: %s" % (i + 1, len(fwd), e))
                break
            if r.status != 200 or r.body != f.response_body():
                p.append("response %d: %s, expected 200 %r" % (i + 1, r.summary(150), f.response_body()))
        if not p:
            if case.keep:
                probe = Fwd("GET", "/after-%s" % case.name)
                c.send(b"GET /after-%s HTTP/1.1\r\nHost: web.local\r\n\r\n" % case.name.encode())
                fwd.append(probe)
                try:
                    r = c.read_response()
                    if r.status != 200 or r.body != probe.response_body():
                        p.append("follow-up request on the same connection got %s" % r.summary(150))
                except (ConnectionClosed, IncompleteResponse, TimeoutError) as e:
                    p.append("follow-up request on the same connection failed: %s" % e)
            else:
                if not c.wait_closed(5.0 * ctx.env.slow):
                    p.append("connection not closed after the response")
                if c.buf:
                    p.append("extra bytes after the response: %r" % bytes(c.buf[:300]))
        port = c.local_port
    reqs, grown = ctx.be.delta(snap)
    if len(reqs) != len(fwd):
        p.append("backend got %d request(s), expected %d: %r" % (len(reqs), len(fwd), reqs))
    for i, (got, want) in enumerate(zip(reqs, fwd)):
        for x in _check_forwarded(got, want, port):
            p.append("request %d: %s" % (i + 1, x))
    total = sum(len(v) for v in grown.values())
    recorded = sum(len(q.head) + len(q.body) for q in reqs)
    if total != recorded:
        p.append("backend got %d bytes but the requests account for %d: %r" % (total, recorded, grown))
    return p


def run_stall(ctx, case):
    p = []
    snap = ctx.be.snapshot()
    t0 = time.monotonic()
    with RawClient(ctx.fg.port, timeout=ctx.timeout) as c:
        c.send(case.data)
        try:
            r = c.read_response(timeout=(2 + 10) * ctx.env.slow)
        except (ConnectionClosed, IncompleteResponse, TimeoutError) as e:
            r = None
            p.append("no %d after the timeout: %s" % (case.status, e))
        if r is not None:
            dt = time.monotonic() - t0
            if r.status != case.status:
                p.append("status %d, expected %d: %s" % (r.status, case.status, r.summary(150)))
            if dt < 1.5:
                p.append("answered after %.2fs, before the 2 s timeout" % dt)
            if "close" not in (r.header("Connection") or "").lower():
                p.append("%d without Connection: close: %s" % (r.status, r.summary(150)))
            p += _client_gone(c, ctx)
    ctx.settle()
    reqs, grown = ctx.be.delta(snap)
    if reqs:
        p.append("backend received a complete request from an incomplete one: %r" % reqs)
    for cid, data in grown.items():
        tap = ctx.be.tap(cid)
        try:
            wait_for(lambda: tap.eof, 3.0 * ctx.env.slow, msg="close")
        except AssertionError:
            p.append("backend connection %d that got the partial request %r was not closed "
                     "(could be completed by another request)" % (cid, data[:200]))
    return p


def _expect_100_continue(ctx):
    """Expect: 100-continue: the client gets 100 before sending the body,
    then the final response; the backend gets no Expect and the body."""
    p = []
    snap = ctx.be.snapshot()
    with RawClient(ctx.fg.port, timeout=ctx.timeout) as c:
        c.send(b"POST /exp100 HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        try:
            i = c.read_interim()
            if i.status != 100:
                p.append("expected 100 Continue first, got %s" % i.summary(150))
        except (ConnectionClosed, IncompleteResponse, TimeoutError) as e:
            p.append("no 100 Continue: %s" % e)
        if not p:
            c.send(b"hello")
            try:
                r = c.read_response()
                if r.status != 200 or r.body != b"backend=B POST /exp100":
                    p.append("final response %s" % r.summary(150))
            except (ConnectionClosed, IncompleteResponse, TimeoutError) as e:
                p.append("no final response: %s" % e)
        port = c.local_port
    reqs, _ = ctx.be.delta(snap)
    if len(reqs) != 1:
        p.append("backend got %d requests: %r" % (len(reqs), reqs))
    else:
        p += _check_forwarded(reqs[0], Fwd("POST", "/exp100", body=b"hello"), port)
    return p


RUNNERS = {Reject: run_reject, Accept: run_accept, Stall: run_stall}


def test_smuggling_table(env):
    table = rows()
    names = [c.name for c in table]
    assert len(set(names)) == len(names), "duplicate row names"
    be = TapBackend(None, name="B")
    be.start()
    env.on_cleanup(be.stop)
    cfg = make_config(farms=[farm("web", [server(be.port)])], rules=[arr_lb_rule("web", "*")],
                      limits=LIMITS, timeouts=TIMEOUTS)
    fg = env.farmgated(cfg)
    for case in table:
        if isinstance(case, Accept):
            for f in case.fwd:
                if f.host == "@BACKEND@":  # no Host from the client: the server's address
                    f.host = "127.0.0.1:%d" % be.port
    ctx = Ctx(env, fg, be)
    failures = []
    passed = []
    for case in table:
        try:
            if isinstance(case, Custom):
                problems = case.fn(ctx)
            else:
                problems = RUNNERS[type(case)](ctx, case)
        except Exception as e:  # a harness-level surprise: the row fails, the table goes on
            problems = ["%s: %s" % (type(e).__name__, e)]
        if problems:
            failures.append((case.name, problems))
            print("FAIL %s:\n    %s" % (case.name, "\n    ".join(problems)), flush=True)
        else:
            passed.append(case.name)
        if not fg.alive():
            failures.append(("farmgated", ["exited during row %s" % case.name]))
            break
    print("smuggling table: %d rows, %d passed, %d failed" % (len(table), len(passed), len(failures)),
          flush=True)
    if be.errors:
        failures.append(("backend", be.errors))
    assert not failures, "%d of %d smuggling rows failed: %s\n%s" % (
        len(failures), len(table), ", ".join(n for n, _ in failures),
        "\n".join("%s: %s" % (n, " | ".join(ps)) for n, ps in failures))
