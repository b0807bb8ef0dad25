#!/usr/bin/env python3
"""Exec-to-ready time of the sidecar: from spawn to the first `GET /readyz` answering 200.

    exec_to_ready.py SIDECAR_BIN ITERATIONS [extra sidecar args...]

Each iteration binds a fresh free port, spawns the binary with `--listen 127.0.0.1:PORT`,
polls /readyz as fast as the kernel refuses connections (no sleeps: a refused connect
returns at once), then kills it. Prints one line per iteration and a summary line:
    EXEC_TO_READY n=30 min_ms=.. median_ms=.. p90_ms=.. max_ms=..
"""
import socket
import statistics
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readyz(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def main():
    binary, iterations, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    samples = []
    for _ in range(iterations):
        port = free_port()
        t0 = time.perf_counter()
        p = subprocess.Popen([binary, "--listen", f"127.0.0.1:{port}", *extra],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = t0 + 10
        while not readyz(port):
            if p.poll() is not None:
                sys.exit(f"sidecar exited with {p.returncode} before ready")
            if time.perf_counter() > deadline:
                p.kill()
                sys.exit("sidecar not ready within 10 s")
        samples.append((time.perf_counter() - t0) * 1000)
        p.kill()
        p.wait()
    samples.sort()
    p90 = samples[min(len(samples) - 1, int(len(samples) * 0.9))]
    print(f"EXEC_TO_READY n={len(samples)} min_ms={samples[0]:.2f} median_ms={statistics.median(samples):.2f} "
          f"p90_ms={p90:.2f} max_ms={samples[-1]:.2f}")


if __name__ == "__main__":
    main()
