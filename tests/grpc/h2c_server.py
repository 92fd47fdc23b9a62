"""An HTTP/2 server that takes h2c upgrades (RFC 7540 section 3.2), with the h2 library
(nghttpd does not). Answers every stream, stream 1 of an upgrade included, with 200 "ok".

h2c_server.py PORT: prints "ready" once listening.
"""
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.events


def respond(conn, stream_id):
    conn.send_headers(stream_id, [(":status", "200"), ("content-length", "2")])
    conn.send_data(stream_id, b"ok", end_stream=True)


def serve(sock):
    config = h2.config.H2Configuration(client_side=False)
    conn = h2.connection.H2Connection(config=config)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        if not chunk:
            return
        head += chunk
    head, rest = head.split(b"\r\n\r\n", 1)
    fields = dict(
        line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line
    )
    fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    conn.initiate_upgrade_connection(fields.get(b"http2-settings", b""))
    respond(conn, 1)
    sock.sendall(conn.data_to_send())
    data = rest
    while True:
        for event in conn.receive_data(data) if data else []:
            if isinstance(event, h2.events.RequestReceived):
                respond(conn, event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                return
        sock.sendall(conn.data_to_send())
        data = sock.recv(65536)
        if not data:
            return


def main(port):
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind(("::", port))
    listener.listen(64)
    print("ready", flush=True)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=lambda s=sock: (serve(s), s.close()), daemon=True).start()


if __name__ == "__main__":
    main(int(sys.argv[1]))
