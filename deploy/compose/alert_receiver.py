#!/usr/bin/env python3
"""A webhook receiver for Alertmanager that prints every notification it gets (stdlib only).

deploy/docker-compose.yml runs it as `alert-receiver`, the target of both receivers of
deploy/alertmanager/alertmanager.yml: `docker compose logs -f alert-receiver` shows the pages
(/page) and tickets (/ticket). With --json it prints each notification as one JSON line
({"path": ..., "notification": <Alertmanager's payload>}), which the end-to-end test reads.
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def describe(path: str, payload: dict) -> list[str]:
    lines = []
    for alert in payload.get("alerts", []):
        labels = alert.get("labels", {})
        shown = " ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "alertname")
        text = alert.get("annotations", {}).get("description", "")
        lines.append(f"[{path.strip('/') or 'root'}] {alert.get('status', '?')} {labels.get('alertname', '?')} {shown}: {text}")
    return lines


def make_handler(as_json: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                payload = json.loads(body or b"{}")
            except ValueError:
                self.send_response(400)
                self.end_headers()
                return
            if as_json:
                print(json.dumps({"path": self.path, "notification": payload}, sort_keys=True), flush=True)
            else:
                for line in describe(self.path, payload):
                    print(line, flush=True)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"alert receiver: POST Alertmanager webhooks here\n")

        def log_message(self, fmt: str, *args: object) -> None:
            pass  # one line per notification is enough

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--json", action="store_true", help="print each notification as one JSON line")
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args.json))
    print(f"alert receiver listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
