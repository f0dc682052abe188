"""The PROXY protocol (HAProxy spec, version 1 text and version 2 binary). Sans-IO, stdlib
only.

``ProxyProtocolParser`` reads the header a load balancer sends before the first request and
raises ``ProxyProtocolError`` when it is missing or bad; the connection then closes.
(Forwarded headers, the other way a proxy names the client, are ``forwarded.py``.)
"""

import ipaddress
import os
import re

from ..errors import ProxyProtocolError

__all__ = ["ProxyHeader", "ProxyProtocolParser", "V1_MAX_LINE", "V2_MAX_HEADER"]


# =============================================================================================
# PROXY protocol
# =============================================================================================

# Section 2.1: "PROXY" and exactly one space start a version 1 line.
_V1_SIGNATURE = b"PROXY "
# Section 2.2: the 12-byte signature of version 2.
_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# Section 2.1: "If the CRLF sequence is not found in the first 107 characters, the receiver
# should declare the line invalid."
V1_MAX_LINE = 107
# Section 2 designs both formats to fit 536 bytes, but TLVs (an SNI authority of up to 255
# bytes, unique IDs of up to 128, TLS details) can take a valid version 2 header past it.
# 2048 holds all of them together and still bounds what is buffered before validation.
V2_MAX_HEADER = 2048

_V1_PORT = rb"(0|[1-9][0-9]{0,4})"
# Section 2.1: IPv4 is four decimal integers 0-255 without leading zeroes, "exactly one
# dot" between them.
_V1_IPV4 = re.compile(rb"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                      rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")
# Section 2.1: "PROXY" SP ("TCP4" | "TCP6") SP src SP dst SP srcport SP dstport, each field
# separated by exactly one space.
_V1_LINE = re.compile(rb"PROXY (TCP4|TCP6) ([0-9A-Fa-f:.]+) ([0-9A-Fa-f:.]+) " + _V1_PORT
                      + rb" " + _V1_PORT)

_V2_COMMANDS = {0x0: "LOCAL", 0x1: "PROXY"}
_V2_FAMILIES = {0x0: "AF_UNSPEC", 0x1: "AF_INET", 0x2: "AF_INET6", 0x3: "AF_UNIX"}
_V2_TRANSPORTS = {0x0: "UNSPEC", 0x1: "STREAM", 0x2: "DGRAM"}
# Section 2.2: address block sizes: 2*4 + 2*2, 2*16 + 2*2, 2*108.
_V2_ADDRESS_LENGTH = {0x1: 12, 0x2: 36, 0x3: 216}


class ProxyHeader:
    """One parsed PROXY protocol header.

    ``client`` is what the connection should use: ``(REMOTE_ADDR, REMOTE_PORT)`` strings,
    or None to keep the real peer (v1 UNKNOWN, v2 LOCAL, unspecified or datagram
    families). A client on a unix socket is ``("", "")``, as greenserve shows its own
    unix-socket peers. The other fields describe the header as sent: ``version`` 1 or 2;
    ``command`` "PROXY" or "LOCAL"; ``family`` "TCP4"/"TCP6"/"UNKNOWN" (v1) or
    "AF_INET"/"AF_INET6"/"AF_UNIX"/"AF_UNSPEC" (v2); ``transport`` "STREAM"/"DGRAM"/
    "UNSPEC"; source and destination addresses (str) and ports (int) or None; ``tlvs``
    a tuple of (type, value bytes) from a v2 header.
    """

    __slots__ = ("version", "command", "family", "transport", "src_addr", "src_port",
                 "dst_addr", "dst_port", "tlvs", "client")

    def __init__(self, version, command, family, transport, src_addr=None, src_port=None,
                 dst_addr=None, dst_port=None, tlvs=(), client=None):
        self.version = version
        self.command = command
        self.family = family
        self.transport = transport
        self.src_addr = src_addr
        self.src_port = src_port
        self.dst_addr = dst_addr
        self.dst_port = dst_port
        self.tlvs = tlvs
        self.client = client

    def __repr__(self):
        return (f"<ProxyHeader v{self.version} {self.command} {self.family}/{self.transport} "
                f"{self.src_addr}:{self.src_port} -> {self.dst_addr}:{self.dst_port}>")


class ProxyProtocolParser:
    """Incremental reader of the PROXY protocol header that starts a connection.

    ``feed(data)`` returns None while more bytes are needed, then the ``ProxyHeader``;
    ``rest`` then holds the bytes received after the header (the start of the first HTTP
    request). Any bad header raises ``ProxyProtocolError``, as soon as the bytes so far
    prove it bad, with the same message however the input was split; the error is final.
    """

    __slots__ = ("max_v2_header", "_buf", "_error", "header", "rest")

    def __init__(self, max_v2_header=V2_MAX_HEADER):
        self.max_v2_header = max_v2_header
        self._buf = b""
        self._error = None
        self.header = None
        self.rest = b""

    def feed(self, data):
        """Add received bytes; the header once complete, else None."""
        if self._error is not None:
            raise self._error
        if self.header is not None:
            raise RuntimeError("the PROXY protocol header has already been read")
        buf = self._buf + data if self._buf else bytes(data)
        try:
            header, end = self._parse(buf)
        except ProxyProtocolError as exc:
            self._error = exc
            self._buf = b""
            raise
        if header is None:
            self._buf = buf
            return None
        self._buf = b""
        self.header = header
        self.rest = buf[end:]
        return header

    def _parse(self, buf):
        """(header, its length) or (None, 0) when incomplete; raises when bad."""
        if _V2_SIGNATURE.startswith(buf[:12]):
            return self._parse_v2(buf) if buf else (None, 0)
        if _V1_SIGNATURE.startswith(buf[:6]):
            return _parse_v1(buf)
        # Section 2.2: "otherwise the protocol is not covered by this specification and the
        # connection must be dropped" (section 5: never guess that no header was sent).
        # Quoted up to the first byte that fits neither signature: the same however split.
        seen = max(_common_prefix(buf, _V1_SIGNATURE), _common_prefix(buf, _V2_SIGNATURE))
        raise ProxyProtocolError(f"no PROXY protocol header: {_quote(buf[:seen + 1])}")

    def _parse_v2(self, buf):
        size = len(buf)
        if size > 12:
            version, command = buf[12] >> 4, buf[12] & 0xF
            # Section 2.2: the version "must always be sent as \x2 and the receiver must
            # only accept this value".
            if version != 2:
                raise ProxyProtocolError(f"PROXY v2: version {version}, not 2")
            # Section 2.2: other commands "Receivers must drop connections presenting".
            if command not in _V2_COMMANDS:
                raise ProxyProtocolError(f"PROXY v2: unknown command {command:#x}")
        if size > 13:
            family, transport = buf[13] >> 4, buf[13] & 0xF
            # Section 2.2: other families and transports "must be rejected as invalid".
            if family not in _V2_FAMILIES:
                raise ProxyProtocolError(f"PROXY v2: unknown address family {family:#x}")
            if transport not in _V2_TRANSPORTS:
                raise ProxyProtocolError(f"PROXY v2: unknown transport {transport:#x}")
        if size < 16:
            return None, 0
        # Section 2.2: "the length of the protocol header in bytes is always exactly 16 +
        # this value"; we bound it (see V2_MAX_HEADER).
        total = 16 + int.from_bytes(buf[14:16], "big")
        if total > self.max_v2_header:
            raise ProxyProtocolError(f"PROXY v2: a {total}-byte header is over the "
                                     f"{self.max_v2_header}-byte limit")
        if size < total:
            return None, 0
        return _parse_v2_block(buf, total), total


def _parse_v1(buf):
    if len(buf) < len(_V1_SIGNATURE):
        return None, 0
    end = buf.find(b"\r\n", 0, V1_MAX_LINE)
    if end < 0:
        # Section 2.1: no CRLF in the first 107 characters: the line is invalid. A lone CR
        # or LF never ends it ("must not tolerate a single CR or LF").
        if len(buf) >= V1_MAX_LINE:
            raise ProxyProtocolError(f"PROXY v1: no CRLF in the first {V1_MAX_LINE} bytes")
        return None, 0
    line = buf[:end]
    # Section 2.1: for "UNKNOWN" "the receiver must ignore anything presented before the
    # CRLF" and "use the real connection's parameters".
    if line == b"PROXY UNKNOWN" or line.startswith(b"PROXY UNKNOWN "):
        return ProxyHeader(1, "PROXY", "UNKNOWN", "UNSPEC"), end + 2
    match = _V1_LINE.fullmatch(line)
    if match is None:
        raise ProxyProtocolError(f"PROXY v1: malformed line {_quote(line)}")
    family, src, dst, src_port, dst_port = match.groups()
    src_addr = _v1_address(family, src, "source")
    dst_addr = _v1_address(family, dst, "destination")
    src_port, dst_port = int(src_port), int(dst_port)
    # Section 2.1: ports are "in the range [0..65535] inclusive".
    if src_port > 65535 or dst_port > 65535:
        raise ProxyProtocolError(f"PROXY v1: port out of range in {_quote(line)}")
    return ProxyHeader(1, "PROXY", family.decode(), "STREAM", src_addr, src_port, dst_addr,
                       dst_port, client=(src_addr, str(src_port))), end + 2


def _v1_address(family, text, which):
    # Section 2.1: "The advertised protocol family dictates what format to use."
    if family == b"TCP4":
        if _V1_IPV4.fullmatch(text) is None:
            raise ProxyProtocolError(f"PROXY v1: bad IPv4 {which} address {_quote(text)}")
        return text.decode()
    try:
        # Section 2.1: IPv6 as hexadecimal groups, one "::" at most, exactly 128 bits. (A
        # dotted IPv4 tail is accepted: inet_ntop writes mapped addresses that way.)
        return str(ipaddress.IPv6Address(text.decode()))
    except ValueError:
        raise ProxyProtocolError(f"PROXY v1: bad IPv6 {which} address {_quote(text)}") \
            from None


def _parse_v2_block(buf, total):
    command = _V2_COMMANDS[buf[12] & 0xF]
    family_code, transport_code = buf[13] >> 4, buf[13] & 0xF
    family, transport = _V2_FAMILIES[family_code], _V2_TRANSPORTS[transport_code]
    # Section 2.2: LOCAL: "use the real connection endpoints and discard the protocol block
    # including the family"; UNSPEC: "The receiver should ignore address information."
    if command == "LOCAL" or family_code == 0 or transport_code == 0:
        return ProxyHeader(2, command, family, transport)
    needed = _V2_ADDRESS_LENGTH[family_code]
    # Section 2.2: the addresses are "exactly" 4, 16 or 108 bytes each, plus the ports.
    if total - 16 < needed:
        raise ProxyProtocolError(f"PROXY v2: {total - 16} address bytes, {family} over "
                                 f"{transport} needs {needed}")
    block = buf[16:16 + needed]
    if family_code == 0x3:
        src_addr, dst_addr = _unix_path(block[:108]), _unix_path(block[108:])
        src_port = dst_port = None
        client = ("", "")
    else:
        size = 4 if family_code == 0x1 else 16
        src_addr = str(ipaddress.ip_address(block[:size]))
        dst_addr = str(ipaddress.ip_address(block[size:2 * size]))
        src_port = int.from_bytes(block[2 * size:2 * size + 2], "big")
        dst_port = int.from_bytes(block[2 * size + 2:2 * size + 4], "big")
        client = (src_addr, str(src_port))
    if transport == "DGRAM":
        # Section 2.2: a receiver that does not support a combination "falls back to the
        # UNSPEC mode": HTTP over a datagram source makes no sense, keep the real peer.
        client = None
    return ProxyHeader(2, command, family, transport, src_addr, src_port, dst_addr, dst_port,
                       _parse_tlvs(buf, 16 + needed, total), client)


def _unix_path(raw):
    """A 108-byte sun_path: up to the first NUL, or an abstract name (leading NUL) kept whole."""
    if raw[:1] == b"\0":
        return os.fsdecode(raw.rstrip(b"\0"))
    return os.fsdecode(raw.split(b"\0", 1)[0])


def _parse_tlvs(buf, pos, total):
    tlvs = []
    while pos < total:
        # Section 2.2: each TLV is a type byte, a two-byte length and that many bytes.
        if total - pos < 3:
            raise ProxyProtocolError(f"PROXY v2: {total - pos} stray bytes after the TLVs")
        length = int.from_bytes(buf[pos + 1:pos + 3], "big")
        if pos + 3 + length > total:
            raise ProxyProtocolError(f"PROXY v2: TLV {buf[pos]:#04x} of {length} bytes runs "
                                     f"past the header")
        tlvs.append((buf[pos], buf[pos + 3:pos + 3 + length]))
        pos += 3 + length
    return tuple(tlvs)


def _common_prefix(data, signature):
    """How many leading octets ``data`` shares with ``signature`` (the caller knows they
    differ somewhere in their common length)."""
    return next(i for i, (got, wanted) in enumerate(zip(data, signature)) if got != wanted)


def _quote(data, limit=60):
    """Show the offending bytes in an error message, shortened."""
    text = repr(bytes(data[:limit]))[1:]
    return text + ("..." if len(data) > limit else "")
