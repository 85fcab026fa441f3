#!/usr/bin/env python3
"""index_check.py BASE NAME TAG [ACCEPT]: fetch the tag as an image index
(OCI, or a Docker manifest list when ACCEPT asks for Docker types) and check
it against the image spec: its media type, and for every entry that the
manifest it names has exactly the descriptor's digest, size and media type,
and that the config that manifest names says the entry's platform. Prints
one line per entry: os/architecture[/variant] manifest-digest. Exits 1 with
what it saw on any mismatch."""
import hashlib
import json
import sys
import urllib.request

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def get(url, accept=None):
    req = urllib.request.Request(url)
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req) as r:
        return r.read(), r.headers


def fail(what):
    print(f"index_check: {what}", file=sys.stderr)
    sys.exit(1)


def main():
    base, name, tag = sys.argv[1:4]
    accept = sys.argv[4] if len(sys.argv) > 4 else None
    docker = accept is not None and "docker" in accept and "oci" not in accept
    list_type, entry_type = (DOCKER_LIST, DOCKER_MANIFEST) if docker else (OCI_INDEX, OCI_MANIFEST)
    body, headers = get(f"{base}/v2/{name}/manifests/{tag}", accept)
    if headers["Content-Type"] != list_type:
        fail(f"Content-Type {headers['Content-Type']}, want {list_type}")
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if headers["Docker-Content-Digest"] != digest:
        fail(f"Docker-Content-Digest {headers['Docker-Content-Digest']}, body hashes to {digest}")
    index = json.loads(body)
    if index.get("schemaVersion") != 2 or index.get("mediaType") != list_type:
        fail(f"not a {list_type}: {index}")
    if not index["manifests"]:
        fail("no entries")
    for entry in index["manifests"]:
        if entry["mediaType"] != entry_type:
            fail(f"entry of type {entry['mediaType']}, want {entry_type}")
        mbody, mheaders = get(f"{base}/v2/{name}/manifests/{entry['digest']}")
        got = "sha256:" + hashlib.sha256(mbody).hexdigest()
        if got != entry["digest"] or len(mbody) != entry["size"]:
            fail(f"entry {entry} names a manifest of {got}, {len(mbody)} bytes")
        if mheaders["Content-Type"] != entry_type:
            fail(f"manifest {got} served as {mheaders['Content-Type']}")
        manifest = json.loads(mbody)
        cbody, _ = get(f"{base}/v2/{name}/blobs/{manifest['config']['digest']}")
        config = json.loads(cbody)
        platform = entry["platform"]
        for key in ("os", "architecture", "variant"):
            if platform.get(key) != config.get(key):
                fail(f"entry says {key}={platform.get(key)!r}, its config {config.get(key)!r}")
        shown = "/".join(platform[k] for k in ("os", "architecture", "variant") if k in platform)
        print(shown, entry["digest"])


main()
