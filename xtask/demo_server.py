"""The demo's primary and shadow: files from DIR on PORT, over HTTP/1.1 (Python's
http.server), HTTP/2 with prior knowledge, or HTTP/2 after an h2c upgrade (the h2 library;
nghttpd takes no upgrades), told apart by the client's first bytes. The HTTP/2 tests serve
with it too.

demo_server.py DIR PORT: prints "ready" once listening.
"""
import http.server
import mimetypes
import os
import socket
import socketserver
import sys
import time

import h2.config
import h2.connection
import h2.events

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Http1(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass


def file_for(directory, path):
    path = path.split("?", 1)[0]
    name = os.path.normpath(os.path.join(directory, path.lstrip("/") or "index.html"))
    if not name.startswith(os.path.abspath(directory)) or not os.path.isfile(name):
        return None
    with open(name, "rb") as f:
        return f.read()


def respond(conn, stream_id, directory, path):
    body = file_for(directory, path)
    status = b"200" if body is not None else b"404"
    body = body if body is not None else b"not found\n"
    kind = mimetypes.guess_type(path.split("?", 1)[0])[0] or "text/html"
    headers = [
        (b":status", status),
        (b"content-type", kind.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    conn.send_headers(stream_id, headers)
    conn.send_data(stream_id, body, end_stream=True)


def new_connection():
    return h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))


def serve_h2(sock, directory, conn):
    """Answers every stream of `conn` until the client goes."""
    while True:
        sock.sendall(conn.data_to_send())
        data = sock.recv(65536)
        if not data:
            return
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                path = dict(event.headers).get(b":path", b"/").decode()
                respond(conn, event.stream_id, directory, path)
            elif isinstance(event, h2.events.ConnectionTerminated):
                return


def upgrade(sock, directory, head_len):
    """An h2c upgrade: 101, then the upgrading request answered as stream 1."""
    head = sock.recv(head_len, socket.MSG_WAITALL)
    lines = head.split(b"\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (l.partition(b":") for l in lines[1:])}
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    conn = new_connection()
    conn.initiate_upgrade_connection(fields.get(b"http2-settings", b""))
    respond(conn, 1, directory, lines[0].split(b" ")[1].decode())
    serve_h2(sock, directory, conn)


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        directory = self.server.directory
        first = self.request.recv(len(PREFACE), socket.MSG_PEEK)
        while first and len(first) < len(PREFACE) and PREFACE.startswith(first):
            time.sleep(0.01)  # a preface cut short: wait for the rest of it
            first = self.request.recv(len(PREFACE), socket.MSG_PEEK)
        if first == PREFACE:
            conn = new_connection()
            conn.initiate_connection()
            serve_h2(self.request, directory, conn)
            return
        head = self.request.recv(8192, socket.MSG_PEEK)
        end = head.find(b"\r\n\r\n")
        if end >= 0 and b"\r\nupgrade: h2c" in head[:end].lower():
            upgrade(self.request, directory, end + 4)
        else:
            Http1(self.request, self.client_address, self.server, directory=directory)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    server = Server(("0.0.0.0", int(sys.argv[2])), Handler)
    server.directory = os.path.abspath(sys.argv[1])
    print("ready", flush=True)
    server.serve_forever()
