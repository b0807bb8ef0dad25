#!/usr/bin/env python3
"""One request with Python `requests`, result as one JSON line on stdout.

    requests_client.py URL [--proxy URL] [--cacert PEM] [--method GET|POST] [--data S]

Without --proxy, `requests` takes HTTP_PROXY/HTTPS_PROXY/NO_PROXY from the environment
(trust_env), exactly as a runtime would. Output:
    {"status": 200, "body": "...", "headers": {...}}   on any HTTP response
    {"error": "ProxyError", "message": "..."}          when the request failed
Exit code 0 in both cases: the test judges the outcome.
"""
import argparse
import json

import requests


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--proxy")
    ap.add_argument("--cacert")
    ap.add_argument("--method", default="GET")
    ap.add_argument("--data")
    args = ap.parse_args()

    session = requests.Session()
    kwargs = {"timeout": 20, "verify": args.cacert or True}
    if args.proxy:
        session.trust_env = False
        kwargs["proxies"] = {"http": args.proxy, "https": args.proxy}
    if args.data is not None:
        kwargs["data"] = args.data.encode()
    try:
        r = session.request(args.method, args.url, **kwargs)
        out = {"status": r.status_code, "body": r.text, "headers": {k.lower(): v for k, v in r.headers.items()}}
    except requests.RequestException as e:
        out = {"error": type(e).__name__, "message": str(e)}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
