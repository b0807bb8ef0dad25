#!/usr/bin/env python3
"""Local origin for the proxy client tests: HTTP and HTTPS on loopback.

Generates a fresh self-signed certificate (openssl CLI) for 127.0.0.1/localhost in
--dir, starts
  * HTTP  on 127.0.0.1:0  (the origin the sidecar is told to allow),
  * HTTP  on 127.0.0.2:0  (same content, an address the sidecar refuses: loopback it
    was not told to allow; used for 403 and NO_PROXY cases),
  * HTTPS on 127.0.0.1:0  (reached through CONNECT tunnels),
and prints ONE JSON line on stdout once every listener accepts, e.g.
  {"http": "127.0.0.1:4001", "http_alt": "127.0.0.2:4002", "https": "127.0.0.1:4003",
   "cert": "/tmp/x/cert.pem"}
That line is the readiness signal. It exits when stdin closes, so it never outlives the
test that started it.

Routes (every body carries the marker so a test knows it came from this origin):
  GET  /hello      -> text/plain  "hello from origin <marker>"
  GET  /page.html  -> text/html   page with <h1 id="marker"><marker></h1>
  POST /echo       -> echoes the request body (content-length or chunked)
  GET  /redirect?to=URL -> 302 to URL (redirect-based SSRF tests: the client follows,
                     the proxy must judge the new destination on its own)
  GET  /hits       -> {"127.0.0.2": n, ...}: requests each listener address has served
                     (proves a refused destination was never reached)
  any other        -> 404
"""
import argparse
import collections
import json
import os
import ssl
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Requests served, per listening address (host), across all listeners.
HITS = collections.Counter()
HITS_LOCK = threading.Lock()


def make_cert(directory):
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", key, "-out", cert,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return cert, key


def handler_for(marker):
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.1 so clients (and the proxy) keep connections alive.
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: the test reads only stdout's first line
            pass

        def reply(self, status, ctype, body):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def count(self):
            with HITS_LOCK:
                HITS[self.server.server_address[0]] += 1

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/hits":
                with HITS_LOCK:
                    body = json.dumps(dict(HITS)).encode()
                self.reply(200, "application/json", body)
                return
            self.count()
            if url.path == "/redirect":
                to = urllib.parse.parse_qs(url.query).get("to", [""])[0]
                self.send_response(302)
                self.send_header("Location", to)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/hello":
                self.reply(200, "text/plain", f"hello from origin {marker}".encode())
            elif self.path == "/page.html":
                page = (
                    "<!doctype html><html><head><title>origin</title></head>"
                    f'<body><h1 id="marker">{marker}</h1></body></html>'
                )
                self.reply(200, "text/html; charset=utf-8", page.encode())
            else:
                self.reply(404, "text/plain", b"not found")

        do_HEAD = do_GET

        def do_POST(self):
            self.count()
            if self.path != "/echo":
                self.reply(404, "text/plain", b"not found")
                return
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        # trailers end with an empty line
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    body += self.rfile.read(size)
                    self.rfile.readline()
                body = bytes(body)
            else:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.reply(200, "application/octet-stream", body)

    return Handler


def serve(server):
    threading.Thread(target=server.serve_forever, daemon=True).start()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True, help="where cert.pem/key.pem are written")
    ap.add_argument("--marker", required=True, help="string every body carries")
    args = ap.parse_args()

    cert, key = make_cert(args.dir)
    handler = handler_for(args.marker)
    ThreadingHTTPServer.daemon_threads = True
    http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    http_alt = ThreadingHTTPServer(("127.0.0.2", 0), handler)
    https = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    # Handshake in the handler thread, not in accept(): a client that opens a connection
    # and stalls (browsers pre-connect) must not block the accept loop.
    https.socket = ctx.wrap_socket(https.socket, server_side=True, do_handshake_on_connect=False)
    for s in (http, http_alt, https):
        serve(s)

    def addr(s):
        host, port = s.server_address[:2]
        return f"{host}:{port}"

    print(json.dumps({"http": addr(http), "http_alt": addr(http_alt), "https": addr(https), "cert": cert}), flush=True)
    # Live until the parent closes our stdin (or dies).
    sys.stdin.read()


if __name__ == "__main__":
    main()
