#!/usr/bin/env python3
"""catalog_walk.py BASE N: walk /v2/_catalog?n=N by its Link headers, as the
distribution spec describes, and check each page: `repositories` at most N
long, names in lexical order across pages with no repeats, a Link header
exactly when a page is full and more follow, naming `n` and `last` (the
page's last name). Prints every name, one per line; exits 1 on a mismatch."""
import json
import re
import sys
import urllib.request

base, n = sys.argv[1], int(sys.argv[2])
url = f"/v2/_catalog?n={n}"
seen = []
pages = 0
while url:
    with urllib.request.urlopen(base + url) as r:
        body = json.load(r)
        link = r.headers.get("Link")
    page = body["repositories"]
    pages += 1
    if len(page) > n:
        sys.exit(f"page of {len(page)} names for n={n}")
    if seen and page and page[0] <= seen[-1]:
        sys.exit(f"page starts at {page[0]!r}, after {seen[-1]!r}")
    if page != sorted(page):
        sys.exit(f"page not sorted: {page}")
    seen += page
    if link is None:
        url = None
        continue
    m = re.fullmatch(r'<(/v2/_catalog\?n=(\d+)&last=([^>]+))>; rel="next"', link)
    if not m or int(m.group(2)) != n or m.group(3) != page[-1] or len(page) != n:
        sys.exit(f"Link {link!r} after a page of {len(page)} ending {page[-1:]!r}")
    url = m.group(1)
    if pages > 1000:
        sys.exit("more than 1000 pages")
print("\n".join(seen))
