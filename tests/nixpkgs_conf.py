#!/usr/bin/env python3
"""Checks an image served for a nixpkgs streamLayeredImage conf against what
nixpkgs' stream script (pkgs/build-support/docker/stream_layered_image.py)
makes from the same conf, as the script's rules read:

- base (`from_image`, a docker-archive) layers first, as they are;
- one layer per non-empty `store_layers` entry: `/nix/` and `/nix/store/`
  (0755), then each path in conf order followed by its descendants sorted
  component by component; every entry owned by the conf's uid/gid/uname/
  gname with the conf's mtime; modes from lstat; symlinks as they are;
  hard links as regular files with their content;
- the customisation layer's `layer.tar`, byte for byte;
- config: the conf's `config`, with `Env` = base Env + conf Env by variable
  (last value wins, first position kept) and nothing else from the base;
  `architecture` from the conf, `os` linux, one diff_id and one history
  entry per layer (the base's empty_layer entries aside).

Usage: nixpkgs_conf.py CONF OCI_LAYOUT_DIR   (skopeo copy ... oci:DIR)
Exits non-zero with every difference found.
"""
import datetime
import gzip
import hashlib
import io
import json
import os
import pathlib
import stat
import sys
import tarfile

problems = []


def expect(what, got, want):
    if got != want:
        problems.append(f"{what}: got {got!r}, want {want!r}")


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layout_blob(layout, digest):
    with open(os.path.join(layout, "blobs", *digest.split(":")), "rb") as f:
        return f.read()


def entries(data):
    """Entries of a layer blob (any compression): name -> (kind, mode, uid,
    gid, uname, gname, mtime, linkname, content digest), in order."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as t:
        for m in t:
            content = sha(t.extractfile(m).read()) if m.isreg() else None
            name = m.name.removeprefix("./").removeprefix("/").rstrip("/")
            name = "/" + name
            out.append((name, (m.type, m.mode, m.uid, m.gid, m.uname, m.gname, m.mtime, m.linkname, content)))
    return out


def store_entries(paths, uid, gid, uname, gname, mtime):
    """What the stream script puts in a store layer, in its order."""
    own = (uid, gid, uname, gname, mtime)
    want = [("/nix", (tarfile.DIRTYPE, 0o755) + own + ("", None)),
            ("/nix/store", (tarfile.DIRTYPE, 0o755) + own + ("", None))]
    for p in paths:
        p = pathlib.Path(p)
        files = [p] if p.is_symlink() else [p] + sorted(p.rglob("*"))
        for f in files:
            st = os.lstat(f)
            mode = st.st_mode & 0o7777
            if stat.S_ISLNK(st.st_mode):
                entry = (tarfile.SYMTYPE, mode) + own + (os.readlink(f), None)
            elif stat.S_ISDIR(st.st_mode):
                entry = (tarfile.DIRTYPE, mode) + own + ("", None)
            else:  # hard links too: regular files with their bytes
                entry = (tarfile.REGTYPE, mode) + own + ("", sha(f.read_bytes()))
            want.append((str(f), entry))
    return want


def docker_archive_config(path):
    with tarfile.open(path, mode="r:*") as t:
        manifest = json.load(t.extractfile("manifest.json"))
        return json.load(t.extractfile(manifest[0]["Config"]))


def merge_env(base, own):
    merged = {}
    for var in base + own:
        merged[var.split("=", 1)[0]] = var  # a dict keeps the first position
    return list(merged.values())


def main(conf_path, layout):
    conf = json.load(open(conf_path))
    index = json.load(open(os.path.join(layout, "index.json")))
    manifest = json.loads(layout_blob(layout, index["manifests"][0]["digest"]))
    config = json.loads(layout_blob(layout, manifest["config"]["digest"]))
    layers = manifest["layers"]

    base = docker_archive_config(conf["from_image"]) if conf.get("from_image") else None
    base_ids = base["rootfs"]["diff_ids"] if base else []
    store_layers = [l for l in conf["store_layers"] if l]
    custom = conf.get("customisation_layer")
    expect("layer count", len(layers), len(base_ids) + len(store_layers) + (1 if custom else 0))
    expect("diff_ids", len(config["rootfs"]["diff_ids"]), len(layers))
    layer_history = [h for h in config.get("history", []) if not h.get("empty_layer")]
    expect("history entries of layers", len(layer_history), len(layers))
    expect("base diff_ids first", config["rootfs"]["diff_ids"][: len(base_ids)], base_ids)

    mtime = int(datetime.datetime.fromisoformat(conf["mtime"]).timestamp())
    owner = (int(conf["uid"]), int(conf["gid"]), conf["uname"], conf["gname"], mtime)
    for i, paths in enumerate(store_layers):
        n = len(base_ids) + i
        got = entries(layout_blob(layout, layers[n]["digest"]))
        want = store_entries(paths, *owner)
        expect(f"layer {n}: entry names in order", [e[0] for e in got], [e[0] for e in want])
        got_by_name = dict(got)
        for name, w in want:
            if name in got_by_name:
                expect(f"layer {n}: {name} (type, mode, uid, gid, uname, gname, mtime, link, content)", got_by_name[name], w)
    if custom:
        served = layout_blob(layout, layers[-1]["digest"])
        if served[:2] == b"\x1f\x8b":  # skopeo compresses into an OCI layout
            served = gzip.decompress(served)
        with open(os.path.join(custom, "layer.tar"), "rb") as f:
            want = sha(f.read())
        expect("customisation layer bytes", sha(served), want)
        expect("customisation layer diff_id", config["rootfs"]["diff_ids"][-1], want)

    want_config = dict(conf.get("config") or {})
    if base is not None:
        want_config["Env"] = merge_env(base.get("config", {}).get("Env") or [], want_config.get("Env") or [])
    expect("config", config.get("config"), want_config)
    expect("architecture", config.get("architecture"), conf.get("architecture"))
    expect("os", config.get("os"), "linux")

    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
