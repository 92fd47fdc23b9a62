"""A gRPC service and its client (grpcio, raw bytes: no generated code), for the HTTP/2 tests.

server PORT: serves /echo.Echo/{Unary,ClientStream,ServerStream,Bidi} and prints "ready".
client ADDR AUTHORITY ROUNDS: on one channel (one connection), ROUNDS times each kind of call
  with metadata; prints one JSON line per call: method, request messages (hex), metadata,
  response messages.
unary ADDR AUTHORITY COUNT: COUNT unary calls on one channel; prints "done COUNT".
held ADDR AUTHORITY COUNT: one call, prints "first", waits for a line on stdin, then COUNT
  calls on the same connection; prints "done COUNT".
"""
import json
import sys
from concurrent import futures

import grpc


def unary(request, context):
    return request


def client_stream(requests, context):
    return b"|".join(requests)


def server_stream(request, context):
    for i in range(3):
        yield request + bytes([i])


def bidi(requests, context):
    for r in requests:
        yield r[::-1]


def serve(port):
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("echo.Echo", handlers),))
    server.add_insecure_port(f"[::]:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def channel(addr, authority):
    return grpc.insecure_channel(addr, options=[("grpc.default_authority", authority)])


def client(addr, authority, rounds):
    with channel(addr, authority) as ch:
        calls = {
            "Unary": ch.unary_unary("/echo.Echo/Unary"),
            "ClientStream": ch.stream_unary("/echo.Echo/ClientStream"),
            "ServerStream": ch.unary_stream("/echo.Echo/ServerStream"),
            "Bidi": ch.stream_stream("/echo.Echo/Bidi"),
        }
        for r in range(rounds):
            for name, call in calls.items():
                messages = [f"{name}-{r}-{i}".encode() * (1 + i * 50) for i in range(3)]
                if name in ("Unary", "ServerStream"):
                    messages = messages[:1]
                metadata = (("x-call", f"{name}-{r}"), ("x-round", str(r)))
                if name == "Unary":
                    replies = [call(messages[0], metadata=metadata)]
                elif name == "ServerStream":
                    replies = list(call(messages[0], metadata=metadata))
                elif name == "ClientStream":
                    replies = [call(iter(messages), metadata=metadata)]
                else:
                    replies = list(call(iter(messages), metadata=metadata))
                print(json.dumps({
                    "method": f"/echo.Echo/{name}",
                    "messages": [m.hex() for m in messages],
                    "metadata": dict(metadata),
                    "replies": len(replies),
                }), flush=True)


def unary_calls(addr, authority, count):
    with channel(addr, authority) as ch:
        call = ch.unary_unary("/echo.Echo/Unary")
        for i in range(count):
            call(str(i).encode(), metadata=(("x-n", str(i)),))
    print(f"done {count}", flush=True)


def held(addr, authority, count):
    with channel(addr, authority) as ch:
        call = ch.unary_unary("/echo.Echo/Unary")
        call(b"first")
        print("first", flush=True)
        sys.stdin.readline()
        for i in range(count):
            call(str(i).encode(), metadata=(("x-n", str(i)),))
    print(f"done {count}", flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "server":
        serve(int(sys.argv[2]))
    elif mode == "client":
        client(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif mode == "held":
        held(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        unary_calls(sys.argv[2], sys.argv[3], int(sys.argv[4]))
