"""Reading HTTP/1.1 answers off a raw socket, for the server tests that write their requests
byte by byte (hostile input and connections, one-write answers): one reader instead of a copy
in each test module."""

from __future__ import annotations

import socket

HEAD_END = b"\r\n\r\n"


def read_until(sock: socket.socket, marker: bytes = HEAD_END) -> bytes:
    """Everything read until ``marker`` has arrived, or until the peer closes, resets or the
    socket's timeout passes (then what came before: the caller's assertion says what is
    missing, instead of an exception from deep in a helper)."""
    buf = b""
    while marker not in buf and (piece := recv(sock)):
        buf += piece
    return buf


def recv(sock: socket.socket) -> bytes:
    """What the next read gives, or b"" when the peer closed, reset, or went quiet too long."""
    try:
        return sock.recv(65536)
    except (ConnectionResetError, TimeoutError):
        return b""


def content_length(head: bytes) -> int:
    """The head's Content-Length, or 0 when it has none."""
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def read_answer(sock: socket.socket) -> bytes:
    """One answer, its head and its Content-Length body (which may come in later segments),
    or what came before the peer closed."""
    buf = read_until(sock)
    head, sep, body = buf.partition(HEAD_END)
    if not sep:
        return buf
    length = content_length(head)
    while len(body) < length and (piece := recv(sock)):
        body += piece
    return head + sep + body


class Answers:
    """Answers read one at a time off a connection whose reads may hold several (pipelined
    requests): what a read brings beyond one answer is kept for the next."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def next(self) -> bytes:
        """The next answer, its head and its Content-Length body, or what came before the
        peer closed."""
        while HEAD_END not in self.buf and (piece := recv(self.sock)):
            self.buf += piece
        head, sep, rest = self.buf.partition(HEAD_END)
        if not sep:
            self.buf = b""
            return head
        length = content_length(head)
        while len(rest) < length and (piece := recv(self.sock)):
            rest += piece
        self.buf = rest[length:]
        return head + sep + rest[:length]
