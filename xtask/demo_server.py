"""The demo's primary and shadow: files from DIR on PORT, over HTTP/1.1 (Python's
http.server, as the rest of the demo) or HTTP/2 with prior knowledge (the h2 library), told
apart by the client's first bytes.

demo_server.py DIR PORT
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


def serve_h2(sock, directory):
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    while True:
        data = sock.recv(65536)
        if not data:
            return
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                path = dict(event.headers).get(b":path", b"/").decode()
                body = file_for(directory, path)
                status = b"200" if body is not None else b"404"
                body = body if body is not None else b"not found\n"
                kind = mimetypes.guess_type(path.split("?", 1)[0])[0] or "text/html"
                headers = [
                    (b":status", status),
                    (b"content-type", kind.encode()),
                    (b"content-length", str(len(body)).encode()),
                ]
                conn.send_headers(event.stream_id, headers)
                conn.send_data(event.stream_id, body, end_stream=True)
            elif isinstance(event, h2.events.ConnectionTerminated):
                return
        sock.sendall(conn.data_to_send())


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        directory = self.server.directory
        first = self.request.recv(len(PREFACE), socket.MSG_PEEK)
        while first and len(first) < len(PREFACE) and PREFACE.startswith(first):
            time.sleep(0.01)  # a preface cut short: wait for the rest of it
            first = self.request.recv(len(PREFACE), socket.MSG_PEEK)
        if first == PREFACE:
            serve_h2(self.request, directory)
        else:
            Http1(self.request, self.client_address, self.server, directory=directory)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    server = Server(("0.0.0.0", int(sys.argv[2])), Handler)
    server.directory = os.path.abspath(sys.argv[1])
    server.serve_forever()
