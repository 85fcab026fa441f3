#!/usr/bin/env python3
"""split_proxy.py PORT MANIFESTS_URL BLOBS_URL: a registry front that sends
every manifest request to one server and every other request (blobs, /v2/)
to another, as a Service spreading one pull's requests over two nodes
would. Logs one line per request: which server answered, and the status."""
import http.client
import http.server
import sys
import urllib.parse

PORT, MANIFESTS, BLOBS = int(sys.argv[1]), sys.argv[2], sys.argv[3]
FORWARDED = ("Accept", "Range", "Authorization")
HOP = {"connection", "keep-alive", "transfer-encoding"}


class Split(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def forward(self):
        upstream = MANIFESTS if "/manifests/" in self.path else BLOBS
        u = urllib.parse.urlsplit(upstream)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        headers = {h: self.headers[h] for h in FORWARDED if self.headers[h]}
        conn.request(self.command, self.path, headers=headers)
        r = conn.getresponse()
        body = r.read()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if self.command != "HEAD" else r.getheader("Content-Length") or 0))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        print(f"{'manifests' if upstream == MANIFESTS else 'blobs'} {r.status} {self.command} {self.path}", flush=True)
        conn.close()

    do_GET = forward
    do_HEAD = forward

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Split).serve_forever()
