#!/usr/bin/env python3
"""Opens N CONNECT tunnels through a proxy to an HTTP origin and holds them open.

    hold_tunnels.py PROXY_HOST:PORT ORIGIN_HOST:PORT N

Each tunnel is proven end to end (one keep-alive GET /small.txt through it must answer
200) before it counts. Prints "HOLDING N" once all are up, then keeps them until stdin
closes, so the caller can measure the proxy's memory while they are open.
"""
import resource
import socket
import sys


def read_head(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before end of headers")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head.decode("latin-1"), rest


def main():
    proxy_host, proxy_port = sys.argv[1].rsplit(":", 1)
    origin = sys.argv[2]
    n = int(sys.argv[3])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, n + 256)), hard))
    tunnels = []
    for i in range(n):
        s = socket.create_connection((proxy_host, int(proxy_port)), timeout=30)
        s.sendall(f"CONNECT {origin} HTTP/1.1\r\nHost: {origin}\r\n\r\n".encode())
        head, _ = read_head(s)
        if not head.split(" ", 2)[1] == "200":
            sys.exit(f"tunnel {i}: CONNECT answered {head.splitlines()[0]!r}")
        s.sendall(f"GET /small.txt HTTP/1.1\r\nHost: {origin}\r\n\r\n".encode())
        head, rest = read_head(s)
        if " 200 " not in head.splitlines()[0] + " ":
            sys.exit(f"tunnel {i}: GET through tunnel answered {head.splitlines()[0]!r}")
        length = int([l.split(":", 1)[1] for l in head.splitlines() if l.lower().startswith("content-length:")][0])
        while len(rest) < length:
            rest += s.recv(65536)
        tunnels.append(s)
    print(f"HOLDING {len(tunnels)}", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
