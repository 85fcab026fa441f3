#!/usr/bin/env python3
"""Clients that stall, for the e2e tests of the server's bounds.

stall.py body URL N RELEASE [count]
    Open N connections (16 KiB receive buffers), send a GET for URL on each
    and read nothing. Print "ready" once every request is sent and its
    response has begun (the status line arrived: the server is streaming).
    Wait until the file RELEASE exists, then close them all. With "count",
    first read what each connection has and print "open=A closed=B": B
    connections were closed by the server, A still stream (reading a live
    stream to its end takes long: use it with a few connections).

stall.py headers HOST PORT
    Send half a request's headers and wait: exit 0 once the server closes
    the connection, 1 if it is still open after 60 s.
"""
import os
import socket
import sys
import time
import urllib.parse


def body(url, n, release, count):
    u = urllib.parse.urlsplit(url)
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        s.connect((u.hostname, u.port))
        s.sendall(f"GET {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\n\r\n".encode())
        socks.append(s)
    # Each response has begun: its status line is here (peeked, not read).
    for s in socks:
        s.settimeout(120)
        head = s.recv(12, socket.MSG_PEEK)
        if not head.startswith(b"HTTP/1.1 200"):
            sys.exit(f"status: {head!r}")
    print("ready", flush=True)
    while not os.path.exists(release):
        time.sleep(0.1)
    if not count:
        for s in socks:
            s.close()
        print("released", flush=True)
        return
    open_, closed = 0, 0
    for s in socks:
        s.setblocking(False)
        ended = False
        try:
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    ended = True
                    break
        except BlockingIOError:
            pass
        except ConnectionError:
            ended = True
        if ended:
            closed += 1
        else:
            open_ += 1
        s.close()
    print(f"open={open_} closed={closed}", flush=True)


def headers(host, port):
    s = socket.create_connection((host, int(port)))
    s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: stalled\r\n")
    s.settimeout(60)
    try:
        while s.recv(4096):
            pass
    except socket.timeout:
        sys.exit("the connection is still open after 60 s")
    except ConnectionError:
        pass


if __name__ == "__main__":
    if sys.argv[1] == "body":
        body(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:] == ["count"])
    elif sys.argv[1] == "headers":
        headers(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
