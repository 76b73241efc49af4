"""The HTTP listener's socket: accepted connections must get TCP_NODELAY from asyncio."""

from __future__ import annotations

import socket

from agent.http.server import HttpServer, parse_address


def test_the_listening_socket_says_tcp_so_asyncio_turns_nagle_off_on_each_connection():
    # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP; accepted sockets inherit the
    # listener's proto. With proto 0, every response (headers, then body) waited ~40 ms for a delayed ACK.
    sock = HttpServer(None, parse_address("127.0.0.1:0"))._bind()
    try:
        assert sock.proto == socket.IPPROTO_TCP
        client = socket.create_connection(sock.getsockname()[:2])
        sock.setblocking(True)
        conn, _ = sock.accept()
        assert conn.proto == socket.IPPROTO_TCP
        conn.close()
        client.close()
    finally:
        sock.close()
