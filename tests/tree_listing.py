#!/usr/bin/env python3
"""tree_listing.py DIR: an exact, deterministic listing of a directory tree.

Used to compare the tree a container sees under two containerd snapshotters:
list both root filesystems and diff. One line per entry below DIR (DIR itself
excluded), sorted by path bytes, with tab-separated fields:
  path, type (d/f/l/other), mode (octal, st_mode & 0o7777), uid, gid, mtime
  (whole seconds), then size and sha256 for files or the target for symlinks.
Symlinks are never followed. Tab, newline, backslash and non-UTF-8 bytes in
names and targets are backslash-escaped so that each entry stays one line.
"""
import hashlib, os, stat, sys


def esc(b):
    b = b.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n")
    return b.decode("utf-8", "backslashreplace")


def fail(err):
    raise err  # an unreadable directory must not be skipped silently

top, entries = os.fsencode(sys.argv[1]), []
for root, dirs, files in os.walk(top, onerror=fail):  # does not follow symlinks
    for p in (os.path.join(root, n) for n in dirs + files):
        st, rel = os.lstat(p), os.path.relpath(p, top)
        m = st.st_mode
        t = "d" if stat.S_ISDIR(m) else "f" if stat.S_ISREG(m) else "l" if stat.S_ISLNK(m) else "other"
        f = [esc(rel), t, "%o" % (m & 0o7777), st.st_uid, st.st_gid, st.st_mtime_ns // 10**9]
        if t == "f":
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            f += [st.st_size, h.hexdigest()]
        elif t == "l":
            f.append(esc(os.readlink(p)))
        entries.append((rel, "\t".join(map(str, f))))
sys.stdout.write("".join(line + "\n" for _, line in sorted(entries)))
