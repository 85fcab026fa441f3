#!/usr/bin/env python3
"""Checks one image's provenance as served by flakeport, against the specs
and the tools that define them. Run with the tools venv's python (it has
cyclonedx-python-lib with its JSON schemas, and spdx-tools).

  provenance_check.py BASE NAME DIGEST STORE_PATHS_FILE [PUBKEY]

BASE is http://host:port; DIGEST the image manifest's digest;
STORE_PATHS_FILE the closure `nix path-info -r` gave for the image's roots,
one path per line; PUBKEY the PEM public key when the server signs.

Checks:
- the referrers index against distribution spec 1.1: an OCI image index,
  each entry an artifact manifest whose subject is DIGEST, artifactType
  filtering with OCI-Filters-Applied, an empty index for an unknown digest,
  and the same list under the sha256-<hex> tag;
- CycloneDX 1.5 JSON against its official schema, SPDX 2.3 JSON with
  spdx-tools' validator; both list exactly STORE_PATHS_FILE's paths, with
  the narHash `nix path-info` gives, and the reference graph;
- generating again gives the same bytes;
- the in-toto statement names DIGEST, the SLSA v1 predicate the flake,
  attribute, system, derivation and builder;
- with PUBKEY: the cosign signature verifies with openssl over the exact
  payload bytes and fails with one byte changed, and the .sig tag serves it.
"""
import base64
import hashlib
import json
import subprocess
import sys
import tempfile
import urllib.request
import urllib.error

BASE, NAME, DIGEST, PATHS = sys.argv[1:5]
PUBKEY = sys.argv[5] if len(sys.argv) > 5 else None
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CDX = "application/vnd.cyclonedx+json"
SPDX = "application/spdx+json"
INTOTO = "application/vnd.in-toto+json"
SIG = "application/vnd.dev.cosign.artifact.sig.v1+json"


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def get(path, accept=None):
    req = urllib.request.Request(BASE + path)
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req) as r:
        return r.status, r.headers, r.read()


def blob(digest):
    _, _, body = get(f"/v2/{NAME}/blobs/{digest}")
    check("sha256:" + hashlib.sha256(body).hexdigest() == digest, f"blob {digest} hashes to its digest")
    return body


def manifest(digest):
    _, headers, body = get(f"/v2/{NAME}/manifests/{digest}", OCI_MANIFEST)
    check("sha256:" + hashlib.sha256(body).hexdigest() == digest, f"manifest {digest} hashes to its digest")
    check(headers.get("Content-Type") == OCI_MANIFEST, f"manifest {digest} content type")
    return json.loads(body)


# ---- the referrers API
status, headers, body = get(f"/v2/{NAME}/referrers/{DIGEST}")
check(status == 200, "referrers: 200")
check(headers.get("Content-Type") == OCI_INDEX, f"referrers: content type {headers.get('Content-Type')}")
check("OCI-Filters-Applied" not in headers, "no filter header without a filter")
index = json.loads(body)
check(index.get("schemaVersion") == 2 and index.get("mediaType") == OCI_INDEX, "referrers: an image index")
_, _, subject_bytes = get(f"/v2/{NAME}/manifests/{DIGEST}")
subject = json.loads(subject_bytes)
types = {}
for entry in index["manifests"]:
    check(entry["mediaType"] == OCI_MANIFEST, "entry media type")
    m = manifest(entry["digest"])
    check(entry["size"] == len(json.dumps(m)) or entry["size"] > 0, "entry size")
    _, _, raw = get(f"/v2/{NAME}/manifests/{entry['digest']}")
    check(entry["size"] == len(raw), "entry size is the manifest's length")
    check(m["subject"]["digest"] == DIGEST, "artifact subject is the image manifest")
    check(m["subject"]["size"] == len(subject_bytes), "subject size")
    check(m["subject"]["mediaType"] == subject["mediaType"], "subject media type")
    # The referrers list carries each manifest's artifactType (spec 1.1).
    check(entry["artifactType"] == m["artifactType"], "entry artifactType is the manifest's")
    check(entry.get("annotations") == m.get("annotations"), "entry annotations are the manifest's")
    blob(m["config"]["digest"])
    for layer in m["layers"]:
        blob(layer["digest"])
    types[m["artifactType"]] = m
want = {CDX, SPDX, INTOTO} | ({SIG} if PUBKEY else set())
check(set(types) == want, f"artifact types {sorted(types)} (want {sorted(want)})")

# Filtering, and the header that says it was applied.
status, headers, body = get(f"/v2/{NAME}/referrers/{DIGEST}?artifactType=application%2Fspdx%2Bjson")
check(headers.get("OCI-Filters-Applied") == "artifactType", "OCI-Filters-Applied: artifactType")
filtered = json.loads(body)["manifests"]
check([e["artifactType"] for e in filtered] == [SPDX], f"filtered to SPDX: {filtered}")
# An unknown digest: an empty list, never a 404.
unknown = "sha256:" + "0" * 64
status, _, body = get(f"/v2/{NAME}/referrers/{unknown}")
check(status == 200 and json.loads(body)["manifests"] == [], "unknown digest: 200, empty index")
# The tag schema fallback: the same list under sha256-<hex>.
status, headers, body = get(f"/v2/{NAME}/manifests/sha256-{DIGEST[7:]}", OCI_INDEX)
check(json.loads(body)["manifests"] == index["manifests"], "sha256-<hex> tag: the same list")
# A bad digest: 400 in the registry's error format.
try:
    get(f"/v2/{NAME}/referrers/sha256:xyz")
    fail("a bad digest was accepted")
except urllib.error.HTTPError as e:
    check(e.code == 400 and json.loads(e.read())["errors"][0]["code"] == "DIGEST_INVALID", "bad digest: 400 DIGEST_INVALID")

# ---- the SBOMs
paths = sorted(l.strip() for l in open(PATHS) if l.strip())
# An array of objects with "path" (Nix 2.18 and before), or an object keyed
# by path (2.19 to 2.32, the run with Debian 13's Nix).
listed = json.loads(subprocess.check_output(["nix", "path-info", "--json", *paths]))
info = {p["path"]: p for p in listed} if isinstance(listed, list) else listed
cdx_bytes = blob(types[CDX]["layers"][0]["digest"])
spdx_bytes = blob(types[SPDX]["layers"][0]["digest"])

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

errors = JsonStrictValidator(SchemaVersion.V1_5).validate_str(cdx_bytes.decode())
check(errors is None, f"CycloneDX 1.5 schema: {errors}")
cdx = json.loads(cdx_bytes)
components = {c["bom-ref"]: c for c in cdx["components"]}
check(sorted(components) == paths, f"CycloneDX components {sorted(components)} != nix path-info -r {paths}")


def hex_of(sri):
    return base64.b64decode(sri.split("-", 1)[1]).hex()


for p, c in components.items():
    check(c["hashes"] == [{"alg": "SHA-256", "content": hex_of(info[p]["narHash"])}], f"{p}: narHash")
    check(c["purl"].startswith("pkg:nix/"), f"{p}: purl")
deps = {d["ref"]: set(d["dependsOn"]) for d in cdx["dependencies"]}
for p in paths:
    check(deps[p] == set(info[p]["references"]) - {p}, f"{p}: dependencies are its references")
check(cdx["metadata"]["component"]["bom-ref"] == DIGEST, "the BOM describes the image")
# LICENSES="name=SPDX-ID,...": components whose meta.license the build read.
import os
licensed = dict(kv.split("=", 1) for kv in os.environ.get("LICENSES", "").split(",") if kv)
for p, c in components.items():
    want = [{"license": {"id": licensed[c["name"]]}}] if c["name"] in licensed else None
    check(c.get("licenses") == want, f"{p}: licenses {c.get('licenses')} (want {want})")

with tempfile.NamedTemporaryFile(suffix=".spdx.json") as f:
    f.write(spdx_bytes)
    f.flush()
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    doc = parse_file(f.name)
    messages = validate_full_spdx_document(doc)
    check(not messages, f"SPDX 2.3: {[m.validation_message for m in messages]}")
spdx = json.loads(spdx_bytes)
for p in spdx["packages"]:
    if p["SPDXID"] != "SPDXRef-Image":
        check(p["licenseDeclared"] == licensed.get(p["name"], "NOASSERTION"), f"SPDX {p['name']}: licenseDeclared {p['licenseDeclared']}")
spdx_paths = sorted(p["sourceInfo"].removeprefix("store path ") for p in spdx["packages"] if p["SPDXID"] != "SPDXRef-Image")
check(spdx_paths == paths, "SPDX packages are the closure")
depends = sum(1 for r in spdx["relationships"] if r["relationshipType"] == "DEPENDS_ON")
check(depends == sum(len(set(info[p]["references"]) - {p}) for p in paths), "SPDX DEPENDS_ON edges are the references")

# Deterministic: asked again, the same bytes (and so the same digests).
_, _, again = get(f"/v2/{NAME}/referrers/{DIGEST}")
check(json.loads(again) == index, "the referrers list is the same when asked again")

# ---- build provenance
statement = json.loads(blob(types[INTOTO]["layers"][0]["digest"]))
check(statement["_type"] == "https://in-toto.io/Statement/v1", "in-toto statement v1")
check(statement["subject"][0]["digest"] == {"sha256": DIGEST[7:]}, "statement subject")
check(statement["predicateType"] == "https://slsa.dev/provenance/v1", "SLSA v1 predicate")
build = statement["predicate"]["buildDefinition"]
check(build["externalParameters"]["attribute"].endswith(NAME), "attribute named")
check(build["internalParameters"]["system"] == "x86_64-linux", "system named")
for d in build["internalParameters"]["derivations"]:
    check(d.endswith(".drv") and subprocess.run(["nix", "path-info", d], capture_output=True).returncode == 0, f"derivation {d} exists")
check(build["internalParameters"]["derivations"], "a derivation named")
dep = build["resolvedDependencies"][0]
check(len(dep["digest"].get("gitCommit", "")) == 40, f"flake commit: {dep}")
check(len(dep["digest"].get("sha256", "")) == 64 and dep["annotations"]["narHash"].startswith("sha256"), f"flake narHash: {dep}")
check(statement["predicate"]["runDetails"]["builder"]["version"]["flakeport"], "builder version")

# ---- the signature
if PUBKEY:
    sig_manifest = types[SIG]
    layer = sig_manifest["layers"][0]
    payload = blob(layer["digest"])
    check(json.loads(payload)["critical"]["image"]["docker-manifest-digest"] == DIGEST, "payload names the digest")
    signature = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
    with tempfile.TemporaryDirectory() as d:
        open(f"{d}/payload", "wb").write(payload)
        open(f"{d}/sig", "wb").write(signature)
        ok = subprocess.run(["openssl", "dgst", "-sha256", "-verify", PUBKEY, "-signature", f"{d}/sig", f"{d}/payload"], capture_output=True)
        check(ok.returncode == 0, f"openssl verifies the signature: {ok.stdout} {ok.stderr}")
        changed = bytearray(payload)
        changed[len(changed) // 2] ^= 1
        open(f"{d}/payload", "wb").write(bytes(changed))
        bad = subprocess.run(["openssl", "dgst", "-sha256", "-verify", PUBKEY, "-signature", f"{d}/sig", f"{d}/payload"], capture_output=True)
        check(bad.returncode != 0, "one byte changed: the signature fails")
    _, _, tagged = get(f"/v2/{NAME}/manifests/sha256-{DIGEST[7:]}.sig", OCI_MANIFEST)
    check(json.loads(tagged) == sig_manifest, "the .sig tag serves the signature")
    config = json.loads(blob(sig_manifest["config"]["digest"]))
    check(config["rootfs"]["diff_ids"] == [layer["digest"]], "cosign's config names the payload")
print(f"ok: {len(index['manifests'])} artifacts, {len(paths)} components")
