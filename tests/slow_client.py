#!/usr/bin/env python3
"""slow_client.py URL OUT KIB_PER_S: GET URL and read the body slowly into OUT.

A real slow client for the e2e tests: a 16 KiB receive buffer set before
connecting, so the server's writes block instead of landing in the
kernel's buffers, and reads paced at KIB_PER_S. (curl 7.88's --limit-rate
does not hold back reads on loopback.) Exits non-zero on a short body or
an HTTP status other than 200.
"""
import socket
import sys
import time
import urllib.parse

url, out, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]) * 1024
u = urllib.parse.urlsplit(url)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
s.connect((u.hostname, u.port))
target = u.path + (f"?{u.query}" if u.query else "")
s.sendall(f"GET {target} HTTP/1.1\r\nHost: {u.netloc}\r\nConnection: close\r\n\r\n".encode())
buf = b""
while b"\r\n\r\n" not in buf:
    chunk = s.recv(4096)
    if not chunk:
        sys.exit("connection closed before the headers ended")
    buf += chunk
head, body = buf.split(b"\r\n\r\n", 1)
lines = head.decode().split("\r\n")
if lines[0].split()[1] != "200":
    sys.exit(f"status: {lines[0]}")
length = next(int(l.split(":", 1)[1]) for l in lines if l.lower().startswith("content-length:"))
start = time.monotonic()
with open(out, "wb") as f:
    f.write(body)
    f.flush()
    got = len(body)
    while got < length:
        chunk = s.recv(min(64 * 1024, length - got))
        if not chunk:
            sys.exit(f"short body: {got} of {length} bytes")
        f.write(chunk)
        f.flush()
        got += len(chunk)
        ahead = got / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
