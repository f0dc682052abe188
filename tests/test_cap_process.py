"""The connection cap in a real, monkey-patched greenserve process (the in-thread tests run
without monkey-patching, which once hid an acceptor that died at the cap)."""

import socket
import time

import procs
from conftest import read_response
from procs import WAIT


def test_newcomers_at_the_cap_are_served_again_and_again():
    with procs.Processes() as started:
        server = started.greenserve("webapp:app", "-b", "127.0.0.1:0",
                                    "--max-connections", "3", "--keep-alive", "60",
                                    "--header-timeout", "60")
        address = server.address()
        held = []
        try:
            # Three silent connections take every slot and never send a byte.
            held = [socket.create_connection(address, timeout=WAIT) for _ in range(3)]
            for round_ in range(5):
                started_at = time.monotonic()
                with socket.create_connection(address, timeout=WAIT) as sock:
                    sock.sendall(b"GET /n HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    assert read_response(sock, WAIT)[0] == 200
                assert time.monotonic() - started_at < 15
                # The next silent connection takes the freed slot again.
                held.append(socket.create_connection(address, timeout=WAIT))
        finally:
            for sock in held:
                sock.close()
        assert server.running()
        assert "Traceback" not in server.text()
