#!/usr/bin/env bash
# End-to-end tests: the real flakeport binary, real Nix and store, the test
# flake in a git repo with a tag, and real clients (skopeo, umoci + chroot,
# containerd + ctr, the Docker engine). Run by scripts/test, as root.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/tests/lib.sh"
BIN=${FLAKEPORT_BIN:-$ROOT/target/release/flakeport}
W=$(mktemp -d /tmp/flakeport-e2e.XXXXXX)
nix_offline_env "$W"
PIDS=()
FAILED=()
PASSED=0

cleanup() {
  # Stop only what this script started, by PID, newest first.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  umount -R "$W"/ctd/root 2>/dev/null
  [ -n "${KEEP:-}" ] && echo "kept $W" || rm -rf "$W" 2>/dev/null
}
trap cleanup EXIT

check() { # check NAME COMMAND...: run in this shell (tests may restart servers), record pass or fail
  local name=$1; shift
  if "$@" > "$W/check.out" 2>&1; then
    PASSED=$((PASSED + 1)); echo "ok   $name"
  else
    FAILED+=("$name"); echo "FAIL $name"; tail -20 "$W/check.out" | sed 's/^/     /'
  fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_server VAR STATE_DIR [ARGS...]: flakeport serving the test flake (none
# with NO_FLAKE=1) on a free port; VAR=port, VAR_PID=its pid
start_server() {
  local var=$1 state=$2; shift 2
  local port; port=$(free_port)
  local flake=("$W/repo"); [ -n "${NO_FLAKE:-}" ] && flake=()
  "$BIN" serve "${flake[@]}" --listen "127.0.0.1:$port" --state-dir "$state" "$@" >>"$W/server-$port.log" 2>&1 &
  PIDS+=($!)
  eval "$var=$port; ${var}_PID=$!"
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && return 0; sleep 0.1; done
  echo "flakeport did not start"; cat "$W/server-$port.log"; return 1
}

builds() { curl -fs "http://127.0.0.1:$1/metrics" | awk '/^flakeport_nix_builds_started_total/ {print $2}'; }
healthy() { curl -fs "http://127.0.0.1:$1/v2/" >/dev/null; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

echo "== fixture flake in $W/repo (tag v1 = version v1, main = v2)"
make_fixture_repo "$ROOT" "$W/repo"
start_server P "$W/state" || exit 1
R=127.0.0.1:$P

# ---------------------------------------------------------------- protocol
t_base() {
  curl -fsi "http://$R/v2/" | tee "$W/base" | grep -qi '^docker-distribution-api-version: registry/2.0' &&
    [ "$(curl -s -o /dev/null -w '%{http_code}' -I "http://$R/v2/")" = 200 ]
}
check "GET/HEAD /v2/ with the API version header" t_base

t_manifest_headers() {
  curl -fsS -D "$W/h" -o "$W/m" "http://$R/v2/app/manifests/latest" || return 1
  local digest; digest=$(sha256sum "$W/m" | cut -d' ' -f1)
  grep -qi "^docker-content-digest: sha256:$digest" "$W/h" &&
    grep -qi '^content-type: application/vnd.oci.image.manifest.v1+json' "$W/h" &&
    grep -qi '^vary: accept' "$W/h" &&
    grep -qi "^content-length: $(stat -c %s "$W/m")" "$W/h" &&
    curl -fsSI "http://$R/v2/app/manifests/latest" > "$W/hh" &&
    grep -qi "^docker-content-digest: sha256:$digest" "$W/hh" &&
    grep -qi "^content-length: $(stat -c %s "$W/m")" "$W/hh" &&
    curl -fsS "http://$R/v2/app/manifests/sha256:$digest" | cmp - "$W/m"
}
check "manifest: digest, length, type, Vary; HEAD agrees; by digest same bytes" t_manifest_headers

t_docker_flavour() {
  local m; m=$(curl -fsS -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' "http://$R/v2/app/manifests/latest")
  [ "$(echo "$m" | json 'd["mediaType"]')" = application/vnd.docker.distribution.manifest.v2+json ] &&
    [ "$(echo "$m" | json 'd["layers"][0]["mediaType"]')" = application/vnd.docker.image.rootfs.diff.tar ] &&
    [ "$(echo "$m" | json 'd["config"]["digest"]')" = "$(json 'd["config"]["digest"]' < "$W/m")" ]
}
check "Docker schema2 when Accept asks only for Docker types, same config" t_docker_flavour

t_blobs() {
  local layer size
  layer=$(json 'd["layers"][0]["digest"]' < "$W/m"); size=$(json 'd["layers"][0]["size"]' < "$W/m")
  curl -fsS -D "$W/bh" "http://$R/v2/app/blobs/$layer" -o "$W/blob" || return 1
  [ "sha256:$(sha256sum < "$W/blob" | cut -d' ' -f1)" = "$layer" ] && [ "$(stat -c %s "$W/blob")" = "$size" ] &&
    grep -qi "^docker-content-digest: $layer" "$W/bh" &&
    # Ranges: pieces concatenate to the whole; a range past the end is 416.
    curl -fsS -r 0-99999 "http://$R/v2/app/blobs/$layer" -o "$W/r1" &&
    curl -fsS -r 100000- "http://$R/v2/app/blobs/$layer" -o "$W/r2" &&
    cat "$W/r1" "$W/r2" | cmp - "$W/blob" &&
    [ "$(curl -s -o /dev/null -w '%{http_code}' -r 100-199 "http://$R/v2/app/blobs/$layer")" = 206 ] &&
    curl -s -D - -o /dev/null -r 100-199 "http://$R/v2/app/blobs/$layer" | grep -qi "^content-range: bytes 100-199/$size" &&
    [ "$(curl -s -o /dev/null -w '%{http_code}' -r "$size-" "http://$R/v2/app/blobs/$layer")" = 416 ] &&
    [ "$(curl -s -o /dev/null -w '%{http_code}' -I "http://$R/v2/app/blobs/$layer")" = 200 ] &&
    local cfg; cfg=$(json 'd["config"]["digest"]' < "$W/m") &&
    [ "sha256:$(curl -fsS "http://$R/v2/app/blobs/$cfg" | sha256sum | cut -d' ' -f1)" = "$cfg" ]
}
check "blobs: digest verified, exact length, Range 206 pieces = whole, 416" t_blobs

t_tags() {
  local tags; tags=$(curl -fsS "http://$R/v2/app/tags/list" | json '",".join(d["tags"])')
  [ "$tags" = "latest,main,v1" ] || { echo "tags: $tags"; return 1; }
  curl -fsS -D "$W/th" "http://$R/v2/app/tags/list?n=1" | json 'd["tags"]' | grep -q latest &&
    grep -qi '^link: </v2/app/tags/list?n=1&last=latest>; rel="next"' "$W/th" &&
    [ "$(curl -fsS "http://$R/v2/app/tags/list?n=5&last=main" | json '",".join(d["tags"])')" = v1 ]
}
check "tags/list: latest + branches + tags, n/last pagination with Link" t_tags

# ---------------------------------------------------------------- errors
# expect_error METHOD PATH STATUS CODE [GREP]: the error contract of design.md
expect_error() {
  local body status
  body=$(curl -s -X "$1" -w '\n%{http_code}' "http://$R$2")
  status=$(echo "$body" | tail -1); body=$(echo "$body" | sed '$d')
  [ "$status" = "$3" ] || { echo "status $status, want $3: $body"; return 1; }
  [ "$1" = HEAD ] && return 0
  [ "$(echo "$body" | json 'd["errors"][0]["code"]')" = "$4" ] || { echo "$body"; return 1; }
  [ -z "${5:-}" ] || echo "$body" | grep -q -- "$5" || { echo "message lacks '$5': $body"; return 1; }
  healthy "$P"
}
check "NAME_INVALID 400" expect_error GET /v2/Bad_Name/manifests/latest 400 NAME_INVALID "lowercase"
check "TAG_INVALID 400" expect_error GET '/v2/app/manifests/-bad' 400 TAG_INVALID
check "DIGEST_INVALID 400" expect_error GET /v2/app/blobs/sha256:1234 400 DIGEST_INVALID "sha256:<64"
check "NAME_UNKNOWN 404 lists outputs" expect_error GET /v2/appp/manifests/latest 404 NAME_UNKNOWN '"app'
check "tags/list of an unknown name: NAME_UNKNOWN 404" expect_error GET /v2/appp/tags/list 404 NAME_UNKNOWN
check "tag not a ref: MANIFEST_UNKNOWN 404" expect_error GET /v2/app/manifests/v9 404 MANIFEST_UNKNOWN '\\"v9\\"'
check "manifest digest never served: MANIFEST_UNKNOWN 404" expect_error GET "/v2/app/manifests/sha256:$(printf %064d 0)" 404 MANIFEST_UNKNOWN
check "BLOB_UNKNOWN 404" expect_error GET "/v2/app/blobs/sha256:$(printf %064d 0)" 404 BLOB_UNKNOWN
check "build failure: 500 UNKNOWN with the log tail" expect_error GET /v2/broken/manifests/latest 500 UNKNOWN "broken on purpose"
check "build failure is not cached (fails again, server healthy)" expect_error GET /v2/broken/manifests/latest 500 UNKNOWN "broken on purpose"
check "push: 405 UNSUPPORTED" expect_error POST /v2/app/blobs/uploads/ 405 UNSUPPORTED "read-only"
check "PUT manifest: 405 UNSUPPORTED" expect_error PUT /v2/app/manifests/latest 405 UNSUPPORTED
check "DELETE: 405 UNSUPPORTED" expect_error DELETE "/v2/app/manifests/sha256:$(printf %064d 0)" 405 UNSUPPORTED

t_injection() {
  # Nothing a client sends is Nix code: quotes, interpolation and attribute
  # tricks are rejected by validation or are just names that do not exist.
  local before; before=$(builds "$P")
  expect_error GET '/v2/a%22%24%7Bthrow%7D/manifests/latest' 400 NAME_INVALID &&
    expect_error GET '/v2/app/manifests/$%7Bbuiltins.abort%20%22x%22%7D' 400 TAG_INVALID &&
    expect_error GET '/v2/app/manifests/v1%20--impure' 400 TAG_INVALID &&
    expect_error GET '/v2/or/manifests/latest' 404 NAME_UNKNOWN &&
    expect_error GET '/v2/outpath/manifests/latest' 404 NAME_UNKNOWN
}
check "injection attempts are rejected as data" t_injection

start_server PT "$W/state-timeout" --nix-timeout 3 || exit 1
t_timeout() {
  local out; out=$(curl -s -w '\n%{http_code}' "http://127.0.0.1:$PT/v2/slow/manifests/latest")
  [ "$(echo "$out" | tail -1)" = 504 ] && echo "$out" | grep -q 'timed out after 3 s' &&
    ! pgrep -f 'sleep 600' >/dev/null && healthy "$PT"
}
check "build timeout: 504, whole process group killed" t_timeout

# ------------------------------------------------------ clients: skopeo, umoci
t_skopeo_chroot() {
  rm -rf "$W/oci" "$W/b1"
  skopeo copy -q --src-tls-verify=false "docker://$R/app:latest" "oci:$W/oci:app" &&
    umoci unpack --image "$W/oci:app" "$W/b1" >/dev/null &&
    [ "$(stat -c '%a %u' "$W/b1/rootfs/tmp")" = "1777 0" ] &&
    [ "$(stat -c '%u' "$W/b1/rootfs/home/app")" = 1000 ] &&
    chroot "$W/b1/rootfs" /bin/sh -c 'GREETING=x /bin/greet' | grep -qx 'greetings x as 0'
}
check "skopeo copy + umoci unpack + chroot run (conf v1, perms, /tmp 1777)" t_skopeo_chroot

t_tag_ref() {
  rm -rf "$W/b2" "$W/oci2"
  [ "$(skopeo inspect --tls-verify=false "docker://$R/app:v1" | json '[e for e in d["Env"] if e.startswith("GREETING")][0]')" = GREETING=v1 ] &&
    [ "$(skopeo inspect --tls-verify=false "docker://$R/app:latest" | json '[e for e in d["Env"] if e.startswith("GREETING")][0]')" = GREETING=v2 ] &&
    local commit; commit=$(git -C "$W/repo" rev-parse v1) &&
    [ "$(skopeo inspect --tls-verify=false "docker://$R/app:$commit" | json 'd["Digest"]')" = \
      "$(skopeo inspect --tls-verify=false "docker://$R/app:v1" | json 'd["Digest"]')" ]
}
check "tag -> git ref: v1 and its commit give the v1 image, latest the v2" t_tag_ref

t_stock() {
  rm -rf "$W/b3" "$W/oci3"
  skopeo copy -q --src-tls-verify=false "docker://$R/stock:latest" "oci:$W/oci3:s" &&
    umoci unpack --image "$W/oci3:s" "$W/b3" >/dev/null &&
    chroot "$W/b3/rootfs" /bin/hello | grep -qx 'hello from nix' && grep -qx stock "$W/b3/rootfs/etc/stock-release"
}
check "dockerTools-style output (passthru.conf, customisation layer.tar) runs" t_stock

t_plain() {
  rm -rf "$W/b4" "$W/oci4"
  local ep; ep=$(skopeo inspect --config --tls-verify=false "docker://$R/plain:latest" | json 'd["config"]["Entrypoint"][0]')
  case "$ep" in /nix/store/*-greeter/bin/greet) ;; *) echo "entrypoint $ep"; return 1 ;; esac
  skopeo copy -q --src-tls-verify=false "docker://$R/plain:latest" "oci:$W/oci4:p" &&
    umoci unpack --image "$W/oci4:p" "$W/b4" >/dev/null && chroot "$W/b4/rootfs" "$ep" | grep -q '^greetings'
}
check "plain package: closure image, meta.mainProgram entrypoint runs" t_plain

t_nested() {
  skopeo inspect --config --tls-verify=false "docker://$R/tools/nested:latest" | json 'd["config"]["Entrypoint"][0]' | grep -q -- '-hello/bin/hello$'
}
check "multi-segment name -> nested legacyPackages attribute" t_nested

t_shared_layers() {
  local a b
  a=$(curl -fsS "http://$R/v2/app/manifests/latest" | json '" ".join(l["digest"] for l in d["layers"])')
  b=$(curl -fsS "http://$R/v2/other/manifests/latest" | json '" ".join(l["digest"] for l in d["layers"])')
  # Both images hold busybox in its own layer: one digest, one blob.
  [ -n "$(comm -12 <(tr ' ' '\n' <<<"$a" | sort) <(tr ' ' '\n' <<<"$b" | sort))" ]
}
check "images share the layers of common store paths" t_shared_layers

# ------------------------------------------------- concurrency and robustness
t_concurrent_cold() {
  local before after
  before=$(builds "$P")
  local pulls=()
  for i in $(seq 16); do
    curl -fsS -o "$W/cold.$i" -w '%{http_code}\n' "http://$R/v2/cold/manifests/latest" > "$W/cold.code.$i" &
    pulls+=($!)
  done
  wait "${pulls[@]}"
  after=$(builds "$P")
  [ "$((after - before))" = 1 ] || { echo "nix builds: $((after - before))"; return 1; }
  [ "$(cat "$W"/cold.code.* | sort -u)" = 200 ] && [ "$(sha256sum "$W"/cold.[0-9]* | cut -d' ' -f1 | sort -u | wc -l)" = 1 ]
}
check "16 concurrent cold pulls run exactly one nix build, same digest" t_concurrent_cold

t_disconnect_mid_build() {
  local before; before=$(builds "$P")
  # The first client gives up while the build runs; the build goes on and
  # the next client gets its result without a second build.
  curl -s --max-time 0.5 "http://$R/v2/sleepy/manifests/latest" -o /dev/null
  curl -fsS "http://$R/v2/sleepy/manifests/latest" -o /dev/null &&
    [ "$(($(builds "$P") - before))" = 1 ] || { echo "builds: $(($(builds "$P") - before))"; return 1; }
}
check "a client hanging up mid-build does not cancel it for the next" t_disconnect_mid_build

t_killed_client() {
  local layer; layer=$(json 'd["layers"][0]["digest"]' < "$W/m")
  # A slow client killed mid-blob, several times over.
  for _ in 1 2 3; do timeout 0.5 curl -s --limit-rate 100k "http://$R/v2/app/blobs/$layer" -o /dev/null; done
  healthy "$P" &&
    [ "sha256:$(curl -fsS "http://$R/v2/app/blobs/$layer" | sha256sum | cut -d' ' -f1)" = "$layer" ] &&
    kill -0 "$P_PID"
}
check "a client killed mid-blob leaves the server healthy" t_killed_client

t_restart() {
  local digest layer
  digest=$(sha256sum < "$W/m" | cut -d' ' -f1)
  layer=$(json 'd["layers"][0]["digest"]' < "$W/m")
  kill "$P_PID"; wait "$P_PID" 2>/dev/null
  # Same state dir: blobs and manifests by digest answer without any build.
  start_server P "$W/state" || return 1
  R=127.0.0.1:$P
  [ "sha256:$(curl -fsS "http://$R/v2/app/blobs/$layer" | sha256sum | cut -d' ' -f1)" = "$layer" ] &&
    curl -fsS "http://$R/v2/app/manifests/sha256:$digest" | cmp - "$W/m" &&
    [ "$(builds "$P")" = 0 ] || { echo "after restart with state: builds=$(builds "$P")"; return 1; }
  # Empty state dir: a fresh build gives the same manifest digest.
  start_server PE "$W/state-empty" || return 1
  [ "$(curl -fsS "http://127.0.0.1:$PE/v2/app/manifests/latest" | sha256sum | cut -d' ' -f1)" = "$digest" ]
}
check "restart: same state answers without rebuilding; empty state, same digest" t_restart

# ------------------------------------------------- containerd and Docker engine
mkdir -p "$W/ctd"
cat > "$W/ctd/config.toml" <<TOML
version = 2
root = "$W/ctd/root"
state = "$W/ctd/state"
[grpc]
  address = "$W/ctd/containerd.sock"
TOML
containerd --config "$W/ctd/config.toml" > "$W/ctd/log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$W/ctd/containerd.sock" ] && break; sleep 0.1; done
export CONTAINERD_ADDRESS=$W/ctd/containerd.sock

t_containerd() {
  ctr image pull --plain-http "$R/app:latest" >/dev/null &&
    ctr run --rm "$R/app:latest" "fp-$$" | grep -qx 'greetings v2 as 1000' &&
    ctr image pull --plain-http "$R/stock:v1" >/dev/null &&
    ctr run --rm "$R/stock:v1" "fp2-$$" | grep -qx 'hello from nix'
}
check "containerd: ctr image pull + ctr run (runs as uid 1000)" t_containerd

mkdir -p "$W/dockerd"
dockerd --data-root "$W/dockerd/data" --exec-root "$W/dockerd/exec" --pidfile "$W/dockerd/pid" \
  -H "unix://$W/dockerd/docker.sock" --containerd "$W/ctd/containerd.sock" --bridge=none \
  --iptables=false --ip-forward=false --ip-masq=false --default-ulimit nofile=1024:1024 \
  > "$W/dockerd/log" 2>&1 &
PIDS+=($!)
for _ in $(seq 150); do [ -S "$W/dockerd/docker.sock" ] && DOCKER_HOST="unix://$W/dockerd/docker.sock" docker info >/dev/null 2>&1 && break; sleep 0.2; done
export DOCKER_HOST="unix://$W/dockerd/docker.sock"

t_docker() {
  docker pull -q "$R/app:latest" >/dev/null &&
    docker run --rm --network none "$R/app:latest" | grep -qx 'greetings v2 as 1000' &&
    docker pull -q "$R/plain:v1" >/dev/null &&
    docker run --rm --network none "$R/plain:v1" | grep -q '^greetings'
}
check "Docker engine: docker pull + docker run" t_docker

# ------------------------------------------------- package paths (Nixery-style)
# PK: only a package set (the repo as a nixpkgs-style tree, `import path {}`).
# PB: the flake beside its own legacyPackages as the set (a flake reference).
NO_FLAKE=1 start_server PK "$W/state-pk" --packages "$W/repo" || exit 1
start_server PB "$W/state-pb" --packages "git+file://$W/repo" || exit 1
RK=127.0.0.1:$PK

pkg_digest() { curl -fsS "http://$1/v2/$2/manifests/${3:-latest}" | sha256sum | cut -d' ' -f1; }

t_pkg_chroot() {
  rm -rf "$W/pk1" "$W/pkb1"
  skopeo copy -q --src-tls-verify=false "docker://$RK/hello/greeter:latest" "oci:$W/pk1:x" &&
    umoci unpack --image "$W/pk1:x" "$W/pkb1" >/dev/null &&
    chroot "$W/pkb1/rootfs" /bin/hello | grep -qx 'hello from nix' &&
    chroot "$W/pkb1/rootfs" /bin/greet | grep -q '^greetings' &&
    [ "$(stat -c %a "$W/pkb1/rootfs/tmp")" = 1777 ] &&
    [ -e "$W/pkb1/rootfs/etc/ssl/certs/ca-bundle.crt" ] &&
    skopeo inspect --config --tls-verify=false "docker://$RK/hello/greeter:latest" |
    json '" ".join(d["config"]["Env"])' | grep -q 'PATH=/bin.*SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt'
}
check "packages: two-package image, tools run from /bin in a chroot, /tmp, CA bundle" t_pkg_chroot

t_pkg_order() {
  local a; a=$(pkg_digest "$RK" hello/greeter) &&
    [ "$(pkg_digest "$RK" greeter/hello)" = "$a" ] && [ "$(pkg_digest "$RK" hello/greeter/hello)" = "$a" ]
}
check "packages: order and duplicates do not change the digest" t_pkg_order

t_pkg_nested() {
  rm -rf "$W/pk2" "$W/pkb2"
  skopeo copy -q --src-tls-verify=false "docker://$RK/python3packages.requests:latest" "oci:$W/pk2:x" &&
    umoci unpack --image "$W/pk2:x" "$W/pkb2" >/dev/null &&
    chroot "$W/pkb2/rootfs" /bin/requests-demo | grep -qx requests
}
check "packages: nested attribute (python3packages.requests, matched case-insensitively)" t_pkg_nested

t_pkg_tags() {
  local commit; commit=$(git -C "$W/repo" rev-parse v1)
  for tag_want in v1:v1 latest:v2 main:v2 "$commit:v1"; do
    rm -rf "$W/pk3" "$W/pkb3"
    skopeo copy -q --src-tls-verify=false "docker://$RK/versioned:${tag_want%%:*}" "oci:$W/pk3:x" &&
      umoci unpack --image "$W/pk3:x" "$W/pkb3" >/dev/null &&
      [ "$(chroot "$W/pkb3/rootfs" /bin/version)" = "${tag_want#*:}" ] || { echo "tag ${tag_want%%:*}"; return 1; }
  done
  R=$RK expect_error GET /v2/versioned/manifests/v9 404 MANIFEST_UNKNOWN 'tag .*v9.* is not a branch, tag or commit' &&
    [ "$(curl -fsS "http://$RK/v2/versioned/tags/list" | json '",".join(d["tags"])')" = "latest,main,v1" ]
}
check "packages: tag -> git tag, branch or commit of the set; tags/list" t_pkg_tags

t_pkg_unknown() {
  R=$RK expect_error GET /v2/hello/helo/gretter/python3packages.reqests/manifests/latest 404 MANIFEST_UNKNOWN \
    'gretter (did you mean greeter?); helo (did you mean hello?); python3packages.reqests (did you mean python3packages.requests?)'
}
check "packages: every unknown package named in one 404, with close matches" t_pkg_unknown

t_pkg_injection() {
  local b; b=$(builds "$PK")
  R=$RK expect_error GET '/v2/hello/builtins.abort/import/or/manifests/latest' 404 MANIFEST_UNKNOWN 'builtins.abort; import; or' &&
    R=$RK expect_error GET '/v2/hello/%24%7Bbuiltins.abort%20%22x%22%7D/manifests/latest' 400 NAME_INVALID &&
    R=$RK expect_error GET '/v2/hello/a%22%3B/manifests/latest' 400 NAME_INVALID &&
    R=$RK expect_error GET '/v2/hello/manifests/latest%22%20--impure' 400 TAG_INVALID &&
    healthy "$PK"
}
check "packages: injection attempts are data (unknown names) or rejected" t_pkg_injection

t_pkg_shared() {
  local a b
  a=$(curl -fsS "http://$RK/v2/shell/hello/manifests/latest" | json '"\n".join(l["digest"] for l in d["layers"])')
  b=$(curl -fsS "http://$RK/v2/shell/greeter/manifests/latest" | json '"\n".join(l["digest"] for l in d["layers"])')
  # busybox, bash, coreutils, cacert: the same store paths, the same layers.
  [ "$(comm -12 <(sort <<<"$a") <(sort <<<"$b") | wc -l)" -ge 4 ] &&
    [ "$(wc -l <<<"$a")" -le 100 ]
}
check "packages: images share the layers of common packages" t_pkg_shared

t_pkg_shell() {
  rm -rf "$W/pk4" "$W/pkb4"
  [ "$(skopeo inspect --config --tls-verify=false "docker://$RK/shell:latest" | json 'd["config"]["Cmd"]')" = "['bash']" ] &&
    skopeo copy -q --src-tls-verify=false "docker://$RK/shell/hello:latest" "oci:$W/pk4:x" &&
    umoci unpack --image "$W/pk4:x" "$W/pkb4" >/dev/null &&
    chroot "$W/pkb4/rootfs" /bin/bash -c 'ls /bin/hello && /usr/bin/env echo ok' | grep -qx ok
}
check "packages: the shell meta-package (bash as Cmd, coreutils, /usr/bin/env)" t_pkg_shell

t_pkg_arm64() {
  # No aarch64 builder here: the build is attempted for aarch64-linux and fails saying so.
  R=$RK expect_error GET /v2/arm64/hello/manifests/latest 500 UNKNOWN 'aarch64-linux'
}
check "packages: arm64 prefix builds for aarch64-linux" t_pkg_arm64

t_pkg_failure() {
  R=$RK expect_error GET /v2/broken/manifests/latest 500 UNKNOWN 'broken on purpose'
}
check "packages: a package that fails to build: 500 with the log tail" t_pkg_failure

t_pkg_beside_flake() {
  # Flake outputs keep their names; any other name is a package path.
  [ "$(curl -fsS "http://127.0.0.1:$PB/v2/app/manifests/latest" | sha256sum | cut -d' ' -f1)" = "$(sha256sum < "$W/m" | cut -d' ' -f1)" ] &&
    [ "$(pkg_digest "127.0.0.1:$PB" hello/greeter)" = "$(pkg_digest "$RK" hello/greeter)" ] &&
    ctr image pull --plain-http "127.0.0.1:$PB/shell/hello:latest" >/dev/null &&
    ctr run --rm "127.0.0.1:$PB/shell/hello:latest" "fp3-$$" /bin/hello | grep -qx 'hello from nix'
}
check "packages beside a flake: outputs by name, package paths otherwise; containerd runs one" t_pkg_beside_flake

# ------------------------------------------------- gzip layers
# A bound of 0: only the blob just compressed stays, so blobs are
# evicted and compressed again all the time.
start_server PZ "$W/state-gz" --compression gzip --compressed-cache-mib 0 || exit 1
RZ=127.0.0.1:$PZ
t_gzip() {
  local m cfg
  m=$(curl -fsS "http://$RZ/v2/app/manifests/latest") || return 1
  cfg=$(curl -fsS "http://$RZ/v2/app/blobs/$(echo "$m" | json 'd["config"]["digest"]')")
  echo "$m" | json 'd["layers"]' | grep -q 'tar+gzip' || { echo "not gzip: $m"; return 1; }
  local i=0
  for layer in $(echo "$m" | json '" ".join(l["digest"] for l in d["layers"])'); do
    local diff; diff=$(echo "$cfg" | json "d['rootfs']['diff_ids'][$i]")
    curl -fsS "http://$RZ/v2/app/blobs/$layer" -o "$W/gz.blob" || return 1
    [ "sha256:$(sha256sum < "$W/gz.blob" | cut -d' ' -f1)" = "$layer" ] || { echo "blob digest"; return 1; }
    [ "sha256:$(gzip -dc < "$W/gz.blob" | sha256sum | cut -d' ' -f1)" = "$diff" ] || { echo "diff_id"; return 1; }
    i=$((i + 1))
  done
  # Uncompressed tars are the same whatever the compression: same diff_ids.
  [ "$(echo "$cfg" | json 'd["rootfs"]["diff_ids"]')" = \
    "$(curl -fsS "http://$R/v2/app/blobs/$(json 'd["config"]["digest"]' < "$W/m")" | json 'd["rootfs"]["diff_ids"]')" ]
}
check "gzip: layers compressed, blob digests and diff_ids verified" t_gzip

t_gzip_clients() {
  rm -rf "$W/gz1" "$W/gzb1"
  # Pull other images first so app's blobs are evicted and recompressed.
  for img in other stock plain; do curl -fsS -o /dev/null "http://$RZ/v2/$img/manifests/latest" || return 1; done
  skopeo copy -q --src-tls-verify=false "docker://$RZ/app:latest" "oci:$W/gz1:x" &&
    umoci unpack --image "$W/gz1:x" "$W/gzb1" >/dev/null &&
    chroot "$W/gzb1/rootfs" /bin/sh -c 'GREETING=z /bin/greet' | grep -qx 'greetings z as 0' &&
    ctr image pull --plain-http "$RZ/other:latest" >/dev/null &&
    ctr run --rm "$RZ/other:latest" "fpz-$$" | grep -qx 'hello from nix' &&
    grep -q 'evicted a compressed layer' "$W/server-$PZ.log"
}
check "gzip: skopeo+umoci+chroot and containerd runs, after evictions" t_gzip_clients

start_server PZS "$W/state-zstd" --compression zstd || exit 1
t_zstd() {
  local m; m=$(curl -fsS "http://127.0.0.1:$PZS/v2/app/manifests/latest") || return 1
  echo "$m" | json 'd["layers"]' | grep -q 'tar+zstd' || { echo "not zstd: $m"; return 1; }
  for layer in $(echo "$m" | json '" ".join(l["digest"] for l in d["layers"])'); do
    [ "sha256:$(curl -fsS "http://127.0.0.1:$PZS/v2/app/blobs/$layer" | sha256sum | cut -d' ' -f1)" = "$layer" ] || return 1
  done
  # containerd checks every decompressed layer against the config's diff_ids.
  ctr image pull --plain-http "127.0.0.1:$PZS/app:latest" >/dev/null &&
    ctr run --rm "127.0.0.1:$PZS/app:latest" "fpzs-$$" | grep -qx 'greetings v2 as 1000'
}
check "zstd: layers compressed, containerd unpacks (diff_ids verified) and runs" t_zstd

# ------------------------------------------------- graceful shutdown
t_sigterm() {
  start_server PS "$W/state-sigterm" --shutdown-grace 20 || return 1
  local layer; layer=$(curl -fsS "http://127.0.0.1:$PS/v2/app/manifests/latest" | json 'max(d["layers"], key=lambda l: l["size"])["digest"]')
  # A slow download in flight (about 4 s), then SIGTERM.
  curl -fsS --limit-rate 500k "http://127.0.0.1:$PS/v2/app/blobs/$layer" -o "$W/sigterm.blob" &
  local dl=$!
  sleep 1
  kill -TERM "$PS_PID"
  sleep 0.5
  # No new connections...
  if curl -fsS -m 2 "http://127.0.0.1:$PS/v2/" >/dev/null 2>&1; then echo "still accepting"; return 1; fi
  # ...the stream in flight completes intact, then the server exits.
  wait "$dl" && [ "sha256:$(sha256sum < "$W/sigterm.blob" | cut -d' ' -f1)" = "$layer" ] || { echo "download cut"; return 1; }
  for _ in $(seq 50); do kill -0 "$PS_PID" 2>/dev/null || return 0; sleep 0.1; done
  echo "server still running after its streams finished"; return 1
}
check "SIGTERM: stops accepting, finishes the stream in flight, exits" t_sigterm

# ------------------------------------------------- after the client tests: these change the repo and the store
t_digest_mismatch() {
  local m layer bad=""
  m=$(curl -fsS "http://$R/v2/corrupt/manifests/latest") || return 1
  for layer in $(echo "$m" | json '" ".join(l["digest"] for l in d["layers"])'); do
    curl -fsS "http://$R/v2/corrupt/blobs/$layer" -o "$W/corrupt.blob" && grep -aq original-content "$W/corrupt.blob" && bad=$layer
  done
  [ -n "$bad" ] || { echo "no layer holds the data file"; return 1; }
  local f; f=$(ls -d /nix/store/*-corruptible-"$(cat "$W/repo/nonce")")/share/data
  chmod u+w "$(dirname "$f")" "$f" && printf 'altered-content!\n' > "$f"   # same size, other bytes: only the hash can tell
  # The stream is cut short (curl sees a truncated body), the digest dropped...
  if curl -fsS "http://$R/v2/corrupt/blobs/$bad" -o /dev/null 2>"$W/curl.err"; then echo "served altered bytes"; return 1; fi
  cat "$W/curl.err"
  expect_error GET "/v2/corrupt/blobs/$bad" 404 BLOB_UNKNOWN &&
    # ...and the next pull digests the new bytes: a new, correct manifest.
    local m2; m2=$(curl -fsS "http://$R/v2/corrupt/manifests/latest") && [ "$m2" != "$m" ] &&
    for layer in $(echo "$m2" | json '" ".join(l["digest"] for l in d["layers"])'); do
      [ "sha256:$(curl -fsS "http://$R/v2/corrupt/blobs/$layer" | sha256sum | cut -d' ' -f1)" = "$layer" ] || return 1
    done
}
check "altered store bytes: stream aborted, digest dropped, re-digested" t_digest_mismatch
# Put the altered path back as Nix built it.
nix-store --repair-path /nix/store/*-corruptible-"$(cat "$W/repo/nonce")" >/dev/null 2>&1 ||
  echo "note: could not repair the altered test path"

start_server PTTL "$W/state-ttl" --manifest-ttl 3 || exit 1
t_ttl() {
  local before after
  before=$(curl -fsS "http://127.0.0.1:$PTTL/v2/app/manifests/main" | sha256sum) &&
    (cd "$W/repo" && printf v3 > version && git -c user.email=t@t -c user.name=t commit -qam v3) &&
    [ "$(curl -fsS "http://127.0.0.1:$PTTL/v2/app/manifests/main" | sha256sum)" = "$before" ] &&
    sleep 4 &&
    after=$(curl -fsS "http://127.0.0.1:$PTTL/v2/app/manifests/main" | sha256sum) &&
    [ "$after" != "$before" ] &&
    skopeo inspect --tls-verify=false "docker://127.0.0.1:$PTTL/app:main" | grep -q GREETING=v3
}
check "a branch tag is re-resolved after --manifest-ttl" t_ttl

echo
echo "e2e: $PASSED passed, ${#FAILED[@]} failed"
if [ "${#FAILED[@]}" -gt 0 ]; then
  printf '  failed: %s\n' "${FAILED[@]}"
  for f in "$W"/server-*.log; do echo "== $f"; tail -30 "$f"; done
  exit 1
fi
