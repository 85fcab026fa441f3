#!/usr/bin/env bash
# End-to-end tests: the real flakeport binary, real Nix and store, the test
# flake in a git repo with a tag, and real clients (skopeo, umoci + chroot,
# containerd + ctr, the Docker engine). Run by scripts/test, as root.
#
# How a check is written. `check NAME FN` runs FN in a subshell under
# `set -euo pipefail` and `inherit_errexit`, as a plain statement (never in
# an `if` or `&&`, where bash ignores set -e), so the first failing step
# fails the check. One step per line: bash exempts every command but the
# last of an `a && b` list from set -e, and `local x=$(...)`, `for x in
# $(...)` and `[ "$(...)" = ... ]` drop the status of what they run. The
# lint below refuses those forms in this file; capture into a variable,
# then compare with `eq`.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd) # lint-ok
. "$ROOT/tests/lib.sh"
BIN=${FLAKEPORT_BIN:-$ROOT/target/release/flakeport}
# The snapshotter runs here, beside containerd, whatever Nix serves.
SNAP_BIN=$BIN

lint=$(grep -nE '&&|\blocal [A-Za-z_][A-Za-z_0-9]*=\$\(|\bfor [A-Za-z_]+ in [^;]*\$\([^s(]|(\[|\beq|\bne) [^#]*"\$\([^(]' "$0" "$ROOT/tests/e2e-snapshotter.sh" | grep -vE 'lint-ok|:[0-9]+:[[:space:]]*#') # lint-ok
if [ -n "$lint" ]; then # lint-ok
  echo "tests/e2e.sh: these lines can hide a failing step (see the comment at the top):"
  echo "$lint"
  exit 1
fi

# E2E_NIX=debian13 runs every check with Debian 13's Nix (2.26) instead of
# the host's: the server and every nix command of the checks run in a
# debootstrapped Debian 13 root (tests/in-root), the clients stay here and
# pull over loopback. The script runs again in a mount namespace whose /nix
# is that root's own store, so that a check reading /nix/store reads the
# server's store, and a second node's empty /nix reaches the root too.
if [ "${E2E_NIX:-host}" = debian13 ] && [ -z "${E2E_NIX_ROOT:-}" ]; then # lint-ok: outside any check
  E2E_NIX_ROOT=$(nix_root) || exit 1
  mkdir -p "$E2E_NIX_ROOT/nix" /nix
  export E2E_NIX_ROOT
  exec unshare -m --propagation private sh -ec 'mount --rbind "$1/nix" /nix; exec "$2"' sh "$E2E_NIX_ROOT" "$0"
fi

W=$(mktemp -d /tmp/flakeport-e2e.XXXXXX)
nix_offline_env "$W"
if [ -n "${E2E_NIX_ROOT:-}" ]; then
  # nix, its legacy commands and flakeport itself, run in the root on the
  # store at /nix (bound from whatever /nix is where they are started).
  mkdir -p "$W/in-root-bin"
  for tool in nix nix-store nix-collect-garbage nix-build nix-instantiate nix-env flakeport; do
    target=$tool
    if [ "$tool" = flakeport ]; then target=$BIN; fi
    # (The root's own PATH: a server in the root runs the root's nix.)
    printf '#!/bin/sh\nPATH=/usr/sbin:/usr/bin:/sbin:/bin IN_ROOT_NIX=/nix IN_ROOT_BIND=%s exec %s %s %s "$@"\n' \
      "'${ROOT#/}'" "'$ROOT/tests/in-root'" "'$E2E_NIX_ROOT'" "'$target'" > "$W/in-root-bin/$tool"
    chmod +x "$W/in-root-bin/$tool"
  done
  BIN=$W/in-root-bin/flakeport
  export PATH="$W/in-root-bin:$PATH"
fi
echo "== e2e with $(nix --version) ($(command -v nix))"
FAILED=()
PASSED=0

cleanup() {
  # Stop only what this script started, by PID, newest first. Servers
  # started inside a check's subshell are in the same file.
  local pids
  pids=$(tac "$W/pids" 2>/dev/null)
  for p in $pids; do kill "$p" 2>/dev/null; done
  sleep 1
  for p in $pids; do kill -9 "$p" 2>/dev/null; done
  umount -R "$W"/ctd/root 2>/dev/null
  umount -R "$W"/sn/mnt "$W"/sn/ctd/root 2>/dev/null
  umount "$W"/state-full 2>/dev/null
  if [ -e "$W/made-dirs" ]; then xargs rm -rf < "$W/made-dirs"; fi
  if [ -n "${KEEP:-}" ]; then echo "kept $W"; else rm -rf "$W" 2>/dev/null; fi
}
trap cleanup EXIT

check() { # check NAME FUNCTION [ARGS...]; E2E_ONLY=REGEX runs only matching FUNCTIONs (a dev aid)
  local name=$1 rc
  shift
  if ! [[ $1 =~ ${E2E_ONLY:-.} ]]; then return; fi
  ( set -euo pipefail; shopt -s inherit_errexit; "$@" ) > "$W/check.out" 2>&1
  rc=$?
  if [ "$rc" = 0 ]; then
    PASSED=$((PASSED + 1)); echo "ok   $name"
  else
    FAILED+=("$name"); echo "FAIL $name"; tail -20 "$W/check.out" | sed 's/^/     /'
  fi
}

# ---------------------------------------------------------------- helpers
# Each fails (returns non-zero) with a message saying what it saw.
eq() { # eq GOT WANT WHAT
  if [ "$1" != "$2" ]; then echo "$3: got '$1', want '$2'"; return 1; fi
}
atleast() { # atleast GOT MIN WHAT
  if ! [[ "$1" =~ ^[0-9]+$ ]] || (( $1 < $2 )); then echo "$3: got '$1', want at least $2"; return 1; fi
}
ne() { # ne GOT UNWANTED WHAT
  if [ "$1" = "$2" ]; then echo "$3: got '$1' both times"; return 1; fi
}
has_header() { # has_header FILE 'name: exact value' (case-insensitive, whole line)
  local headers
  headers=$(tr -d '\r' < "$1")
  if ! grep -qixF -- "$2" <<<"$headers"; then echo "no header '$2' in:"; echo "$headers"; return 1; fi
}
lacks_header() { # lacks_header FILE NAME
  local headers
  headers=$(tr -d '\r' < "$1")
  if grep -qi "^$2:" <<<"$headers"; then echo "unexpected header $2 in:"; echo "$headers"; return 1; fi
}
has_line() { # has_line TEXT REGEX WHAT: TEXT has a line matching REGEX
  if ! grep -qE -- "$2" <<<"$1"; then echo "$3: no line matching '$2' in:"; echo "$1"; return 1; fi
}
status() { # status URL [CURL ARGS...]: the HTTP status code; fails if nothing answered
  curl -s -o /dev/null -w '%{http_code}' "${@:2}" "$1"
}
sha_file() { # sha_file FILE: sha256:<hex>
  local sum
  sum=$(sha256sum < "$1") || return 1
  echo "sha256:${sum%% *}"
}
blob_sha() { # blob_sha URL: download (failing on any HTTP error) and hash
  curl -fsS -o "$W/dl.$BASHPID" "$1"
  sha_file "$W/dl.$BASHPID"
  rm -f "$W/dl.$BASHPID"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
out_path() { nix eval --raw "git+file://$W/repo#packages.x86_64-linux.$1.outPath"; } # out_path ATTR: its store path
metric() { # metric PORT NAME [CURL ARGS...]: a sample of /metrics
  local v
  v=$(curl -fsS "${@:3}" "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n {print $2}')
  if ! [[ "$v" =~ ^[0-9]+$ ]]; then echo "no metric $2 on port $1: '$v'"; return 1; fi
  echo "$v"
}
builds() { metric "$1" flakeport_nix_builds_started_total; } # builds PORT: nix builds the server has started
evals() { metric "$1" 'flakeport_processes_started_total{kind="eval"}'; } # evals PORT: nix evals the server has started
wait_for_metric() { # wait_for_metric PORT NAME WANT SECS: the metric's value once it is WANT, or its last value after SECS
  local v
  for _ in $(seq $(($4 * 10))); do
    v=$(metric "$1" "$2")
    if [ "$v" = "$3" ]; then break; fi
    sleep 0.1
  done
  echo "$v"
}
healthy() { curl -fsS -o /dev/null "http://$R/v2/"; }
unpack() { # unpack HOST/NAME:TAG DIR: skopeo copy to an OCI layout, umoci unpack; the rootfs is DIR/bundle/rootfs
  rm -rf "$2"
  mkdir -p "$2"
  skopeo copy -q --src-tls-verify=false "docker://$1" "oci:$2/oci:x"
  umoci unpack --image "$2/oci:x" "$2/bundle" >/dev/null
}

# start_server VAR STATE_DIR [ARGS...]: flakeport serving the test flake (none
# with NO_FLAKE=1) on a free port; VAR=port, VAR_PID=its pid
start_server() {
  local var=$1 state=$2 port pid
  shift 2
  port=$(free_port)
  local flake=("$W/repo")
  if [ -n "${NO_FLAKE:-}" ]; then flake=(); fi
  "$BIN" serve "${flake[@]}" --listen "127.0.0.1:$port" --state-dir "$state" "$@" >>"$W/server-$port.log" 2>&1 &
  pid=$!
  echo "$pid" >> "$W/pids"
  eval "$var=$port; ${var}_PID=$pid"
  await_server "$port"
}
await_server() { # await_server PORT: until /healthz answers (10 s)
  for _ in $(seq 100); do
    # /healthz: open with auth on; -k: a TLS server is probed before its CA is known
    if curl -fsk -o /dev/null "http://127.0.0.1:$1/healthz"; then return 0; fi
    if curl -fsk -o /dev/null "https://127.0.0.1:$1/healthz"; then return 0; fi
    sleep 0.1
  done
  echo "flakeport did not start"; cat "$W/server-$1.log"; return 1
}
# start_node VAR STATE_DIR NIX_SETTINGS [ARGS...]: start_server on a second,
# empty Nix store (a tmpfs on /nix in a mount namespace of its own): another
# node, sharing nothing with this one but the network and the git repo.
start_node() {
  local var=$1 state=$2 settings=$3 port pid
  shift 3
  port=$(free_port)
  NIX_CONFIG="$NIX_CONFIG
$settings" unshare -m sh -ec 'mount -t tmpfs none /nix; exec "$@"' sh \
    "$BIN" serve "$W/repo" --listen "127.0.0.1:$port" --state-dir "$state" "$@" >>"$W/server-$port.log" 2>&1 &
  pid=$!
  echo "$pid" >> "$W/pids"
  eval "$var=$port; ${var}_PID=$pid"
  await_server "$port"
}
stop_server() { # stop_server PID: SIGTERM, then wait for it to exit
  kill "$1"
  for _ in $(seq 100); do
    if ! kill -0 "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "server $1 did not exit"; return 1
}

# expect_error METHOD PATH STATUS CODE [REGEX]: the error contract of design.md,
# against $R; the server still answers afterwards.
expect_error() {
  local out body code
  out=$(curl -s -X "$1" -w '\n%{http_code}' "http://$R$2")
  code=$(tail -1 <<<"$out")
  body=$(sed '$d' <<<"$out")
  eq "$code" "$3" "status of $1 $2 ($body)"
  if [ "$1" != HEAD ]; then
    code=$(json 'd["errors"][0]["code"]' <<<"$body")
    eq "$code" "$4" "OCI error code of $1 $2"
    if [ -n "${5:-}" ]; then has_line "$body" "$5" "message of $1 $2"; fi
  fi
  healthy
}

echo "== fixture flake in $W/repo (tag v1 = version v1, main = v2)"
make_fixture_repo "$ROOT" "$W/repo"
start_server P "$W/state" || exit 1
R=127.0.0.1:$P

# ---------------------------------------------------------------- protocol
# The protocol checks (headers, blobs, ranges, tags, catalog, the error
# contract, validation before Nix, auth, webhooks, warm, metrics) are in
# tests/protocol/ (cargo test --test protocol). This is app's manifest,
# for the checks below that compare with it (and the restart's APP_DIGEST).
curl -fsS -o "$W/m" "http://$R/v2/app/manifests/latest" || exit 1

start_server PT "$W/state-timeout" --nix-timeout 3 || exit 1
t_timeout() {
  local out code
  out=$(curl -s -w '\n%{http_code}' "http://127.0.0.1:$PT/v2/slow/manifests/latest")
  code=$(tail -1 <<<"$out")
  eq "$code" 504 "status of a build that times out"
  has_line "$out" 'timed out after 3 s' "504 message"
  if pgrep -f 'sleep 600' >/dev/null; then echo "the builder's sleep is still running"; return 1; fi
  R=127.0.0.1:$PT healthy
}
check "build timeout: 504, whole process group killed" t_timeout

# ------------------------------------------------------ clients: skopeo, umoci
t_skopeo_chroot() {
  local mode out
  unpack "$R/app:latest" "$W/b1"
  mode=$(stat -c '%a %u' "$W/b1/bundle/rootfs/tmp")
  eq "$mode" "1777 0" "/tmp mode and owner"
  mode=$(stat -c '%u' "$W/b1/bundle/rootfs/home/app")
  eq "$mode" 1000 "owner of /home/app"
  out=$(chroot "$W/b1/bundle/rootfs" /bin/sh -c 'GREETING=x /bin/greet')
  eq "$out" 'greetings x as 0' "the image's program in a chroot"
}
check "skopeo copy + umoci unpack + chroot run (conf v1, perms, /tmp 1777)" t_skopeo_chroot

greeting() { # greeting REF: the GREETING of the image's Env
  skopeo inspect --tls-verify=false "docker://$1" | json '[e for e in d["Env"] if e.startswith("GREETING")][0]'
}
t_tag_ref() {
  local got commit by_commit by_tag
  got=$(greeting "$R/app:v1")
  eq "$got" GREETING=v1 "Env of app:v1"
  got=$(greeting "$R/app:latest")
  eq "$got" GREETING=v2 "Env of app:latest"
  commit=$(git -C "$W/repo" rev-parse v1)
  by_commit=$(skopeo inspect --tls-verify=false "docker://$R/app:$commit" | json 'd["Digest"]')
  by_tag=$(skopeo inspect --tls-verify=false "docker://$R/app:v1" | json 'd["Digest"]')
  eq "$by_commit" "$by_tag" "digest of app:<commit of v1> and app:v1"
  has_line "$by_tag" '^sha256:[0-9a-f]{64}$' "a digest"
}
check "tag -> git ref: v1 and its commit give the v1 image, latest the v2" t_tag_ref

t_allow_any() {
  local pr before after
  start_server PA "$W/state-any" --allow-commits any
  pr=$(git -C "$W/repo" rev-parse refs/pull/1/head)
  before=$(builds "$PA")
  curl -s -o /dev/null "http://127.0.0.1:$PA/v2/app/manifests/$pr"
  after=$(builds "$PA")
  eq "$after" "$((before + 1))" "nix builds started for a pull-request head with --allow-commits any"
}
check "refs: --allow-commits any hands every commit to nix" t_allow_any

t_stock() {
  local out
  unpack "$R/stock:latest" "$W/b3"
  out=$(chroot "$W/b3/bundle/rootfs" /bin/hello)
  eq "$out" 'hello from nix' "/bin/hello in a chroot"
  out=$(cat "$W/b3/bundle/rootfs/etc/stock-release")
  eq "$out" stock "/etc/stock-release from the customisation layer"
}
check "dockerTools-style output (passthru.conf, customisation layer.tar) runs" t_stock

t_plain() {
  local ep out
  ep=$(skopeo inspect --config --tls-verify=false "docker://$R/plain:latest" | json 'd["config"]["Entrypoint"][0]')
  has_line "$ep" '^/nix/store/[a-z0-9]{32}-greeter/bin/greet$' "entrypoint"
  unpack "$R/plain:latest" "$W/b4"
  out=$(chroot "$W/b4/bundle/rootfs" "$ep")
  eq "$out" 'greetings  as 0' "the entrypoint in a chroot"
  # A package of three outputs: the image is its outputName (`out`), on a
  # Nix that builds meta.outputsToInstall (bin, man) for `nix build` too.
  ep=$(skopeo inspect --config --tls-verify=false "docker://$R/multiout:latest" | json 'd["config"]["Entrypoint"][0]')
  has_line "$ep" '^/nix/store/[a-z0-9]{32}-multiout-1.0/bin/multiout$' "entrypoint of multiout"
  unpack "$R/multiout:latest" "$W/b4m"
  out=$(chroot "$W/b4m/bundle/rootfs" "$ep")
  eq "$out" 'multiout: the out output' "multiout's entrypoint in a chroot"
  # One GC root, of that output: no other output was built for it.
  out=$(find "$W/state/gcroots" -maxdepth 1 -type l -lname '/nix/store/*-multiout-1.0*' | wc -l)
  eq "$out" 1 "GC roots of multiout"
  out=$(find "$W/state/gcroots" -maxdepth 1 -type l -lname '/nix/store/*-multiout-1.0' | wc -l)
  eq "$out" 1 "GC roots of multiout's out"
}
check "plain package: closure image, meta.mainProgram entrypoint runs; a multi-output package serves its outputName" t_plain

t_nested() {
  local ep
  ep=$(skopeo inspect --config --tls-verify=false "docker://$R/tools/nested:latest" | json 'd["config"]["Entrypoint"][0]')
  has_line "$ep" '^/nix/store/[a-z0-9]{32}-hello/bin/hello$' "entrypoint"
}
check "multi-segment name -> nested legacyPackages attribute" t_nested

layer_digests() { # layer_digests MANIFEST-JSON: one digest per line
  json '"\n".join(l["digest"] for l in d["layers"])' <<<"$1"
}
blobs_match() { # blobs_match HOST NAME MANIFEST-JSON: every layer blob hashes to its digest
  local layers layer got
  layers=$(layer_digests "$3")
  for layer in $layers; do
    got=$(blob_sha "http://$1/v2/$2/blobs/$layer")
    eq "$got" "$layer" "blob $layer of $2"
  done
}
t_shared_layers() {
  local a b shared
  a=$(curl -fsS "http://$R/v2/app/manifests/latest")
  b=$(curl -fsS "http://$R/v2/other/manifests/latest")
  a=$(layer_digests "$a" | sort)
  b=$(layer_digests "$b" | sort)
  # Both images hold busybox in its own layer: one digest, one blob.
  shared=$(comm -12 <(echo "$a") <(echo "$b"))
  has_line "$shared" '^sha256:[0-9a-f]{64}$' "layers shared by app and other"
}
check "images share the layers of common store paths" t_shared_layers

# ------------------------------------------------- concurrency and robustness
t_concurrent_cold() {
  local before after codes sums pulls=()
  before=$(builds "$P")
  for i in $(seq 16); do
    curl -sS -o "$W/cold.$i" -w '%{http_code}\n' "http://$R/v2/cold/manifests/latest" > "$W/cold.code.$i" &
    pulls+=($!)
  done
  for p in "${pulls[@]}"; do wait "$p"; done
  after=$(builds "$P")
  eq "$((after - before))" 1 "nix builds for 16 concurrent pulls of one cold image"
  codes=$(cat "$W"/cold.code.* | sort -u)
  eq "$codes" 200 "statuses"
  sums=$(sha256sum "$W"/cold.[0-9]* | cut -d' ' -f1 | sort -u | wc -l)
  eq "$sums" 1 "distinct manifests"
}
check "16 concurrent cold pulls run exactly one nix build, same digest" t_concurrent_cold

t_disconnect_mid_build() {
  local before after code
  before=$(builds "$P")
  # The first client gives up while the build runs (it takes 2 s); the build
  # goes on and the next client gets its result without a second build.
  code=$(status "http://$R/v2/sleepy/manifests/latest" --max-time 0.5) || true
  eq "$code" 000 "the first client hung up before an answer"
  curl -fsS -o /dev/null "http://$R/v2/sleepy/manifests/latest"
  after=$(builds "$P")
  eq "$((after - before))" 1 "nix builds"
}
check "a client hanging up mid-build does not cancel it for the next" t_disconnect_mid_build

t_killed_client() {
  local layer size got
  layer=$(json 'd["layers"][0]["digest"]' < "$W/m")
  size=$(json 'd["layers"][0]["size"]' < "$W/m")
  # A slow client killed mid-blob, several times over.
  for i in 1 2 3; do
    timeout 0.5 "$ROOT/tests/slow_client.py" "http://$R/v2/app/blobs/$layer" "$W/killed.$i" 100 || true
    got=$(stat -c %s "$W/killed.$i")
    if [ "$got" -ge "$size" ]; then echo "client $i was not killed mid-blob"; return 1; fi
  done
  healthy
  got=$(blob_sha "http://$R/v2/app/blobs/$layer")
  eq "$got" "$layer" "sha256 of the blob afterwards"
  kill -0 "$P_PID"
}
check "a client killed mid-blob leaves the server healthy" t_killed_client

# Restart on the same state dir: blobs and manifests by digest answer
# without any build. On an empty state dir: the same manifest digest.
APP_DIGEST=$(sha_file "$W/m")
stop_server "$P_PID" || exit 1
start_server P "$W/state" || exit 1
R=127.0.0.1:$P
t_restart_same_state() {
  local layer got n
  layer=$(json 'd["layers"][0]["digest"]' < "$W/m")
  got=$(blob_sha "http://$R/v2/app/blobs/$layer")
  eq "$got" "$layer" "layer blob after the restart"
  curl -fsS -o "$W/m.restart" "http://$R/v2/app/manifests/$APP_DIGEST"
  cmp "$W/m.restart" "$W/m"
  n=$(builds "$P")
  eq "$n" 0 "nix builds after the restart"
}
check "restart, same state: blob and manifest by digest without a build" t_restart_same_state
start_server PE "$W/state-empty" || exit 1
t_restart_empty_state() {
  local got
  curl -fsS -o "$W/m.empty" "http://127.0.0.1:$PE/v2/app/manifests/latest"
  got=$(sha_file "$W/m.empty")
  eq "$got" "$APP_DIGEST" "manifest digest from an empty state dir"
}
check "restart, empty state: a fresh build gives the same manifest digest" t_restart_empty_state

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
echo $! >> "$W/pids"
for _ in $(seq 100); do if [ -S "$W/ctd/containerd.sock" ]; then break; fi; sleep 0.1; done
export CONTAINERD_ADDRESS=$W/ctd/containerd.sock

t_containerd() {
  local out
  ctr image pull --plain-http "$R/app:latest" >/dev/null
  out=$(ctr run --rm "$R/app:latest" "fp-$$")
  eq "$out" 'greetings v2 as 1000' "ctr run app"
  ctr image pull --plain-http "$R/stock:v1" >/dev/null
  out=$(ctr run --rm "$R/stock:v1" "fp2-$$")
  eq "$out" 'hello from nix' "ctr run stock:v1"
}
check "containerd: ctr image pull + ctr run (runs as uid 1000)" t_containerd

mkdir -p "$W/dockerd"
dockerd --data-root "$W/dockerd/data" --exec-root "$W/dockerd/exec" --pidfile "$W/dockerd/pid" \
  -H "unix://$W/dockerd/docker.sock" --containerd "$W/ctd/containerd.sock" --bridge=none \
  --iptables=false --ip-forward=false --ip-masq=false --default-ulimit nofile=1024:1024 \
  > "$W/dockerd/log" 2>&1 &
echo $! >> "$W/pids"
export DOCKER_HOST="unix://$W/dockerd/docker.sock"
for _ in $(seq 150); do if docker info >/dev/null 2>&1; then break; fi; sleep 0.2; done

t_docker() {
  local out
  docker pull -q "$R/app:latest" >/dev/null
  out=$(docker run --rm --network none "$R/app:latest")
  eq "$out" 'greetings v2 as 1000' "docker run app"
  docker pull -q "$R/plain:v1" >/dev/null
  out=$(docker run --rm --network none "$R/plain:v1")
  eq "$out" 'greetings  as 0' "docker run plain:v1"
}
check "Docker engine: docker pull + docker run" t_docker

# ------------------------------------- images a flake already contains (issue 9)
manifest_of() { # manifest_of NAME:TAG: the OCI manifest
  local name=${1%%:*} tag=${1#*:}
  curl -fsS "http://$R/v2/$name/manifests/$tag"
}
config_of() { # config_of NAME:TAG: the image config
  local m cfg name=${1%%:*}
  m=$(manifest_of "$1")
  cfg=$(json 'd["config"]["digest"]' <<<"$m")
  curl -fsS "http://$R/v2/$name/blobs/$cfg"
}
t_archives() {
  local n out plain gz want got
  want=$(tar -xOf "$W/repo/images/base.tar" manifest.json | json 'len(d[0]["Layers"])')
  eq "$want" 2 "layers of the umoci-made base"
  for n in pulled pulled-gz pulled-zst oci-dir oci-tar; do
    unpack "$R/$n:latest" "$W/arch-$n"
    out=$(chroot "$W/arch-$n/bundle/rootfs" /bin/cat /etc/base-release)
    eq "$out" "base image" "/etc/base-release of $n"
    got=$(manifest_of "$n:latest" | json 'len(d["layers"])')
    eq "$got" "$want" "layers of $n"
  done
  # One digest per member however the archive is wrapped.
  plain=$(manifest_of pulled:latest | json '[l["digest"] for l in d["layers"]]')
  gz=$(manifest_of pulled-gz:v1 | json '[l["digest"] for l in d["layers"]]')
  eq "$gz" "$plain" "layer digests of the gzipped docker-archive"
  got=$(manifest_of pulled-zst:latest | json '[l["digest"] for l in d["layers"]]')
  eq "$got" "$plain" "layer digests of the zstd-compressed docker-archive"
  # An OCI layout keeps its gzip blobs: the manifest names the layout's own digests.
  got=$(json 'd["manifests"][0]["digest"][7:]' < "$W/repo/images/base-oci/index.json")
  want=$(json '[l["digest"] for l in d["layers"]]' < "$W/repo/images/base-oci/blobs/sha256/$got")
  got=$(manifest_of oci-dir:latest | json '[l["digest"] for l in d["layers"]]')
  eq "$got" "$want" "layer digests of the OCI layout"
  got=$(manifest_of oci-tar:latest | json '[l["mediaType"] for l in d["layers"]][0]')
  eq "$got" application/vnd.oci.image.layer.v1.tar+gzip "media type of a gzip member"
}
check "archives (docker-archive plain/gzip/zstd, OCI dir/tar): skopeo+umoci+chroot, archive digests" t_archives

t_archive_clients() {
  local out
  docker pull -q "$R/pulled-gz:v1" >/dev/null
  out=$(docker run --rm --network none "$R/pulled-gz:v1" cat /etc/base-release)
  eq "$out" "base image" "docker run pulled-gz:v1"
  ctr image pull --plain-http "$R/oci-tar:latest" >/dev/null
  out=$(ctr run --rm "$R/oci-tar:latest" "fpa-$$" /bin/cat /etc/base-release)
  eq "$out" "base image" "ctr run oci-tar (gzip members served as they are)"
}
check "archives: Docker and containerd pull and run them" t_archive_clients

# ---------------------------- members of compressed archives, kept (issue 28)
# member_of ARCHIVE N: the bytes of the Nth layer of a docker-archive (plain,
# gzip or zstd), as gzip, zstd and Python's tarfile read it.
member_of() {
  python3 - "$1" "$2" <<'PY'
import io, json, subprocess, sys, tarfile
path, n = sys.argv[1], int(sys.argv[2])
unpack = ["zstd", "-dc", path] if path.endswith(".zst") else ["gzip", "-dcf", path]
t = tarfile.open(fileobj=io.BytesIO(subprocess.run(unpack, check=True, capture_output=True).stdout))
name = json.load(t.extractfile("manifest.json"))[0]["Layers"][n]
sys.stdout.buffer.write(t.extractfile(name).read())
PY
}
# same_members HOST IMAGE ATTR: every layer GET of IMAGE equals its member
# of ATTR's archive, byte for byte, twice (first and warm).
same_members() {
  local archive m digests d i=0
  archive=$(out_path "$3")
  m=$(curl -fsS "http://$1/v2/$2/manifests/latest")
  digests=$(layer_digests "$m")
  for d in $digests; do
    member_of "$archive" "$i" > "$W/member.want"
    for _ in 1 2; do
      curl -fsS -o "$W/member.got" "http://$1/v2/$2/blobs/$d"
      cmp "$W/member.want" "$W/member.got"
    done
    i=$((i + 1))
  done
}
kept_of() { ls "$1/members"; } # kept_of STATE: the names of the kept copies
hex_of() { # hex_of HOST IMAGE: its layer digests' hex, one a line
  local m
  m=$(curl -fsS "http://$1/v2/$2/manifests/latest")
  layer_digests "$m" | sed 's/^sha256://'
}

start_server PK "$W/state-kept" || exit 1
t_members_kept() {
  local want got misses
  same_members "127.0.0.1:$PK" pulled-gz pulled-gz
  # The first GET decompressed the archive once and kept both layers.
  want=$(hex_of "127.0.0.1:$PK" pulled-gz | sort)
  got=$(kept_of "$W/state-kept")
  eq "$got" "$want" "copies kept of pulled-gz's layers"
  misses=$(metric "$PK" 'flakeport_cache_lookups_total{cache="archive_member",result="miss"}')
  eq "$misses" 1 "passes over the archive for its two layers"
  # The zstd archive holds the same layers: served from the same copies.
  same_members "127.0.0.1:$PK" pulled-zst pulled-zst
  got=$(kept_of "$W/state-kept")
  eq "$got" "$want" "copies kept after pulled-zst too"
  misses=$(metric "$PK" 'flakeport_cache_lookups_total{cache="archive_member",result="miss"}')
  eq "$misses" 1 "passes over either archive"
  got=$(metric "$PK" 'flakeport_cache_lookups_total{cache="archive_member",result="hit"}')
  eq "$got" 7 "GETs served from a kept copy"
}
check "archive members: gzip and zstd layers equal the archive's members byte for byte; one pass keeps both, one copy serves both archives" t_members_kept

t_members_restart() {
  local big small log got
  got=$(hex_of "127.0.0.1:$PK" pulled-gz)
  read -r big small <<<"$(tr '\n' ' ' <<<"$got")"
  stop_server "$PK_PID"
  # One copy altered in place (same size), one cut short as a crash
  # could leave it: after a restart neither is served, both are made again.
  python3 -c 'import sys; f = open(sys.argv[1], "r+b"); f.seek(4096); b = f.read(1); f.seek(4096); f.write(bytes([b[0] ^ 1]))' "$W/state-kept/members/$big"
  truncate -s 100 "$W/state-kept/members/$small"
  start_server PK "$W/state-kept"
  same_members "127.0.0.1:$PK" pulled-gz pulled-gz
  log=$(cat "$W/server-$PK.log")
  has_line "$log" "no longer hashes to its digest.*$big|$big.*no longer hashes to its digest" "the altered copy found"
  has_line "$log" "wrong size" "the short copy found"
  got=$(sha_file "$W/state-kept/members/$big")
  eq "$got" "sha256:$big" "the altered copy, made again"
  got=$(sha_file "$W/state-kept/members/$small")
  eq "$got" "sha256:$small" "the short copy, made again"
  # No room: every copy goes at start, the archive serves the same bytes.
  stop_server "$PK_PID"
  start_server PK "$W/state-kept" --compressed-cache-mib 0
  got=$(kept_of "$W/state-kept")
  eq "$got" "" "copies kept with no room"
  same_members "127.0.0.1:$PK" pulled-gz pulled-gz
  got=$(kept_of "$W/state-kept")
  eq "$got" "" "copies kept with no room, after GETs"
  # Room again: made again, the same bytes.
  stop_server "$PK_PID"
  start_server PK "$W/state-kept"
  same_members "127.0.0.1:$PK" pulled-gz pulled-gz
  got=$(kept_of "$W/state-kept" | wc -l)
  eq "$got" 2 "copies made again"
}
check "archive members: after a restart a copy altered or cut short is never served, and made again; evicted, the same bytes from the archive" t_members_restart

t_members_state_cap() {
  local big small got
  start_server PC "$W/state-cap" --max-state-mib 1
  same_members "127.0.0.1:$PC" pulled-gz pulled-gz
  got=$(hex_of "127.0.0.1:$PC" pulled-gz)
  read -r big small <<<"$(tr '\n' ' ' <<<"$got")"
  # busybox's layer (1.9 MiB) does not fit in 1 MiB: read from the
  # archive; the small one is kept.
  got=$(kept_of "$W/state-cap")
  eq "$got" "$small" "copies kept within --max-state-mib 1"
  got=$(find "$W/state-cap" -type f -printf '%s\n' | awk '{n += $1} END {print n + 0}')
  if [ "$got" -gt 1048576 ]; then echo "the state dir holds $got bytes"; return 1; fi
  stop_server "$PC_PID"
}
check "archive members: --max-state-mib bounds the kept copies (what does not fit is read from the archive)" t_members_state_cap

t_members_disk_full() {
  local log
  # A state dir on a 1.5 MiB tmpfs: busybox's layer (1.9 MiB) fits the
  # budget but not the disk. Its GETs are served from the archive.
  mkdir -p "$W/state-full"
  mount -t tmpfs -o size=1536k none "$W/state-full"
  start_server PF "$W/state-full"
  same_members "127.0.0.1:$PF" pulled-gz pulled-gz
  log=$(cat "$W/server-$PF.log")
  has_line "$log" "cannot keep archive members in the state dir.*No space left" "the full disk logged"
  stop_server "$PF_PID"
  umount "$W/state-full"
}
check "archive members: a state dir too full to keep a copy: served from the archive, not dropped" t_members_disk_full

t_members_damaged() {
  local archive d got
  # A server of its own: PK keeps copies of these very layers.
  start_server PD "$W/state-damaged"
  archive=$(out_path damaged-gz)
  d=$(hex_of "127.0.0.1:$PD" damaged-gz | head -1)
  # The store path damaged after its manifest was made (planning read it
  # whole), the size unchanged: its first deflate block made one of the
  # reserved type, which no decoder takes. (Bytes zeroed at random offsets
  # sometimes still inflated, to other bytes: then the layer's hash, not
  # the decoder, caught it, and whether later members were whole varied.)
  chmod u+w "$archive"
  python3 - "$archive" <<'PY'
import sys
f = open(sys.argv[1], "r+b")
head = f.read(4096)
assert head[:3] == b"\x1f\x8b\x08", "not a gzip file"
flags, at = head[3], 10
if flags & 4:  # FEXTRA
    at += 2 + int.from_bytes(head[at:at + 2], "little")
for bit in (8, 16):  # FNAME, FCOMMENT: NUL-terminated
    if flags & bit:
        at = head.index(b"\0", at) + 1
if flags & 2:  # FHCRC
    at += 2
f.seek(at)
f.write(bytes([0b111]))  # BFINAL 1, BTYPE 11 (reserved)
PY
  chmod u-w "$archive"
  R=127.0.0.1:$PD expect_error GET "/v2/damaged-gz/blobs/sha256:$d" 404 BLOB_UNKNOWN 'is no longer served: /nix/store/[^ ]*-damaged-[^ ]*\.tar\.gz is truncated or damaged'
  got=$(kept_of "$W/state-damaged")
  eq "$got" "" "copies kept of a damaged archive"
  R=127.0.0.1:$PD expect_error GET "/v2/damaged-gz/blobs/sha256:$d" 404 BLOB_UNKNOWN
  # It serves on; a plain archive's members (the same layers) are read in
  # place, nothing kept.
  same_members "127.0.0.1:$PD" pulled pulled
  got=$(kept_of "$W/state-damaged")
  eq "$got" "" "copies kept of a plain archive"
  stop_server "$PD_PID"
}
check "archive members: a gzip archive damaged in the store: a clear 404 naming it, nothing kept; the server serves on; a plain archive keeps nothing" t_members_damaged
if ! nix-store --repair-path /nix/store/*-damaged-"$(cat "$W/repo/nonce")".tar.gz >/dev/null 2>&1; then
  echo "note: could not repair the damaged test archive"
fi

t_layered() {
  local out
  docker pull -q "$R/layered:v1" >/dev/null
  out=$(docker run --rm --network none "$R/layered:v1")
  eq "$out" 'hello from nix' "docker run layered:v1"
  unpack "$R/layered:latest" "$W/layered"
  out=$(cat "$W/layered/bundle/rootfs/etc/stock-release")
  eq "$out" stock "customisation layer of stream.conf"
}
check "buildLayeredImage (.tar.gz + passthru.stream.conf): served from the conf, runs" t_layered

t_stock_conf() {
  local conf out
  docker pull -q "$R/stock-owned:latest" >/dev/null
  out=$(docker run --rm --network none "$R/stock-owned:latest")
  eq "$out" linked "docker run stock-owned"
  conf=$(out_path stock-owned.conf)
  rm -rf "$W/stock-owned"
  skopeo copy -q --src-tls-verify=false "docker://$R/stock-owned:latest" "oci:$W/stock-owned:x"
  python3 "$ROOT/tests/nixpkgs_conf.py" "$conf" "$W/stock-owned"
}
check "nixpkgs conf: files, modes, owners, mtime, links, base Env and layers as the stream script makes them" t_stock_conf

t_based() {
  local base got out env
  base=$(manifest_of pulled:latest | json '" ".join(l["digest"] for l in d["layers"])')
  for n in based stock-based based-twice; do
    got=$(manifest_of "$n:latest" | json '" ".join(l["digest"] for l in d["layers"][:2])')
    eq "$got" "$base" "first layers of $n"
    got=$(config_of "$n:latest" | json 'len([h for h in d["history"] if not h.get("empty_layer")]) == len(d["rootfs"]["diff_ids"])')
    eq "$got" True "one non-empty history entry per layer of $n"
  done
  # nixlib: what FROM gives (base WorkingDir, Labels kept; Env merged by variable).
  env=$(config_of based:latest | json '" ".join(d["config"]["Env"]) + " " + d["config"]["WorkingDir"] + " " + d["config"]["Labels"]["org.flakeport.base"]')
  eq "$env" "PATH=/bin BASE=overridden GREETING=on-base /srv yes" "config of based"
  # nixpkgs' stream script: only Env comes from the base.
  env=$(config_of stock-based:latest | json '" ".join(d["config"]["Env"]) + " " + str("WorkingDir" in d["config"])')
  eq "$env" "PATH=/bin BASE=from-base STOCK=1 False" "config of stock-based"
  docker pull -q "$R/based:v1" >/dev/null
  out=$(docker run --rm --network none "$R/based:v1")
  eq "$out" 'greetings on-base as 0' "docker run based:v1"
  out=$(docker run --rm --network none "$R/based:v1" cat /etc/base-release)
  eq "$out" "base image" "the base's files in based"
  ctr image pull --plain-http "$R/stock-based:latest" >/dev/null
  out=$(ctr run --rm "$R/stock-based:latest" "fpb-$$")
  eq "$out" 'hello from nix' "ctr run stock-based"
  unpack "$R/based-twice:latest" "$W/based2"
  out=$(chroot "$W/based2/bundle/rootfs" /bin/hello)
  eq "$out" 'hello from nix' "based-twice (on another image of the flake)"
}
check "fromImage (nixlib, nixpkgs conf, another output): base layers shared, configs merged, runs" t_based

t_nixlib_args() {
  local out store got
  # The config's references are in the image, though contents is empty.
  store=$(out_path hello)
  ctr image pull --plain-http "$R/refs:latest" >/dev/null
  out=$(ctr run --rm "$R/refs:latest" "fpr-$$")
  eq "$out" 'hello from nix' "ctr run refs (Entrypoint ${store}/bin/hello)"
  # fakeRootCommands: the chown is in the layer.
  docker pull -q "$R/fakeroot:latest" >/dev/null
  out=$(docker run --rm --network none "$R/fakeroot:latest")
  eq "$out" '4242:4343' "owner made by fakeRootCommands"
  unpack "$R/fakeroot:latest" "$W/fakeroot"
  got=$(stat -c '%a' "$W/fakeroot/bundle/rootfs/tmp")
  eq "$got" 1777 "perms folded into the fakeroot layer"
  # enableFakechroot: the commands saw the image as / (its /bin/sh is
  # busybox from the store; the host's / has an etc, the image's has not).
  store=$(out_path busybox)
  out=$(docker run --rm --network none "$R/fakechroot:latest")
  eq "$out" "bin dev nix proc srv sys tmp / $store/bin/sh" "ls / and readlink /bin/sh in fakeRootCommands"
  # includeNixDB: the image's store is registered, valid, with its references.
  unpack "$R/nixdb:latest" "$W/nixdb"
  store=$(out_path greeter)
  out=$(nix-store --store "local?root=$W/nixdb/bundle/rootfs" -qR "$store")
  got=$(wc -l <<<"$out")
  eq "$got" 3 "closure of greeter in the image's database ($out)"
  nix-store --store "local?root=$W/nixdb/bundle/rootfs" --verify --check-contents
}
check "nixlib: config references, fakeRootCommands, enableFakechroot, includeNixDB" t_nixlib_args

t_n2c() {
  local out got
  ctr image pull --plain-http "$R/n2c:latest" >/dev/null
  out=$(ctr run --rm "$R/n2c:latest" "fpn-$$")
  eq "$out" 'greetings n2c as 0' "ctr run n2c"
  unpack "$R/n2c:latest" "$W/n2c"
  got=$(stat -c '%u:%g %a' "$W/n2c/bundle/rootfs/bin")
  eq "$got" '7:8 755' "perms of the copyToRoot tree"
  # A second rule with a regex (matched against the file's store path, as
  # nix2container does): /bin/greet alone.
  got=$(stat -c '%u:%g %a' "$W/n2c/bundle/rootfs/bin/greet")
  eq "$got" '9:10 750' "perms of /bin/greet, by regex"
}
check "nix2container buildImage JSON: store paths, copyToRoot, perms (every file, and by regex per file); containerd runs it" t_n2c

t_image_errors() {
  local before after
  before=$(builds "$P")
  expect_error GET /v2/arm-based/manifests/latest 500 UNKNOWN 'is for linux/arm64, this image for linux/amd64'
  expect_error GET /v2/truncated/manifests/latest 500 UNKNOWN 'truncated or malformed archive'
  expect_error GET /v2/outside/manifests/latest 500 UNKNOWN '/etc is not in the closure'
  expect_error GET /v2/outside/manifests/latest 500 UNKNOWN '/etc is not in the closure'
  expect_error GET /v2/climbing/manifests/latest 500 UNKNOWN '/\.\./\.\./\.\./etc is not in the closure'
  expect_error GET /v2/escaping/manifests/latest 500 UNKNOWN 'layer.tar \(it resolves to /etc/hostname\) is not in the closure'
  expect_error GET /v2/escaping-base/manifests/latest 500 UNKNOWN 'base-link.tar \(it resolves to /etc/hostname\) is not in the closure'
  after=$(builds "$P")
  eq "$after" "$((before + 7))" "nix builds for seven refused pulls (nothing cached)"
}
check "bad images: other-arch base, truncated archive, paths outside the closure (named, climbing, symlinked): clear 500, not cached" t_image_errors

# ------------------------------------------------- package paths (Nixery-style)
# PK: only a package set (the repo as a nixpkgs-style tree, `import path {}`).
# PB: the flake beside its own legacyPackages as the set (a flake reference).
NO_FLAKE=1 start_server PK "$W/state-pk" --packages "$W/repo" || exit 1
start_server PB "$W/state-pb" --packages "git+file://$W/repo" || exit 1
RK=127.0.0.1:$PK

pkg_digest() { # pkg_digest HOST NAME [TAG]: digest of the manifest
  blob_sha "http://$1/v2/$2/manifests/${3:-latest}"
}

t_pkg_chroot() {
  local out env
  unpack "$RK/hello/greeter:latest" "$W/pkb1"
  out=$(chroot "$W/pkb1/bundle/rootfs" /bin/hello)
  eq "$out" 'hello from nix' "/bin/hello"
  out=$(chroot "$W/pkb1/bundle/rootfs" /bin/greet)
  eq "$out" 'greetings  as 0' "/bin/greet"
  out=$(stat -c %a "$W/pkb1/bundle/rootfs/tmp")
  eq "$out" 1777 "/tmp mode"
  test -e "$W/pkb1/bundle/rootfs/etc/ssl/certs/ca-bundle.crt"
  env=$(skopeo inspect --config --tls-verify=false "docker://$RK/hello/greeter:latest" | json '" ".join(d["config"]["Env"])')
  has_line "$env" 'PATH=/bin.*SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt' "Env"
}
check "packages: two-package image, tools run from /bin in a chroot, /tmp, CA bundle" t_pkg_chroot

t_pkg_order() {
  local a b c
  a=$(pkg_digest "$RK" hello/greeter)
  b=$(pkg_digest "$RK" greeter/hello)
  c=$(pkg_digest "$RK" hello/greeter/hello)
  eq "$b" "$a" "greeter/hello vs hello/greeter"
  eq "$c" "$a" "hello/greeter/hello vs hello/greeter"
}
check "packages: order and duplicates do not change the digest" t_pkg_order

t_pkg_nested() {
  local out
  unpack "$RK/python3packages.requests:latest" "$W/pkb2"
  out=$(chroot "$W/pkb2/bundle/rootfs" /bin/requests-demo)
  eq "$out" requests "/bin/requests-demo"
}
check "packages: nested attribute (python3packages.requests, matched case-insensitively)" t_pkg_nested

t_pkg_tags() {
  local commit out tags
  commit=$(git -C "$W/repo" rev-parse v1)
  for tag_want in v1:v1 latest:v2 main:v2 "$commit:v1"; do
      unpack "$RK/versioned:${tag_want%%:*}" "$W/pkb3"
    out=$(chroot "$W/pkb3/bundle/rootfs" /bin/version)
    eq "$out" "${tag_want#*:}" "version in versioned:${tag_want%%:*}"
  done
  R=$RK expect_error GET /v2/versioned/manifests/v9 404 MANIFEST_UNKNOWN 'tag .*v9.* is not a branch, tag or commit'
  commit=$(git -C "$W/repo" rev-parse refs/pull/1/head)
  R=$RK expect_error GET "/v2/versioned/manifests/$commit" 404 MANIFEST_UNKNOWN 'is not a branch, tag or commit'
  tags=$(curl -fsS "http://$RK/v2/versioned/tags/list" | json '",".join(d["tags"])')
  eq "$tags" latest,main,v1 "tags of the set"
}
check "packages: tag -> git tag, branch or commit of the set; tags/list" t_pkg_tags

# An output whose evaluation fails (here a throw; a flake input that cannot
# be fetched or a syntax error fail the same way) is a 500 with Nix's
# message on every Nix, never a 404 (since Nix 2.13 its traces quote the
# expression's source: no answer may be read from them); beside a package
# set holding a `libgreet`, the set's package is not served instead.
t_eval_failure() {
  local before after
  expect_error GET /v2/libgreet/manifests/latest 500 UNKNOWN 'libgreet: this output fails to evaluate on purpose'
  before=$(builds "$PB")
  R=127.0.0.1:$PB expect_error GET /v2/libgreet/manifests/latest 500 UNKNOWN 'libgreet: this output fails to evaluate on purpose'
  R=127.0.0.1:$PB expect_error GET /v2/libgreet/manifests/latest 500 UNKNOWN 'libgreet: this output fails to evaluate on purpose'
  after=$(builds "$PB")
  eq "$after" "$before" "nix builds for an output that fails to evaluate"
}
check "an output that fails to evaluate: 500 with Nix's message, not 404, and no package of that name served instead" t_eval_failure

t_pkg_shared() {
  local a b shared n
  a=$(curl -fsS "http://$RK/v2/shell/hello/manifests/latest")
  b=$(curl -fsS "http://$RK/v2/shell/greeter/manifests/latest")
  a=$(layer_digests "$a" | sort)
  b=$(layer_digests "$b" | sort)
  # busybox, bash, coreutils, cacert: the same store paths, the same layers.
  shared=$(comm -12 <(echo "$a") <(echo "$b") | wc -l)
  if [ "$shared" -lt 4 ]; then echo "shared layers: $shared, want >= 4"; return 1; fi
  n=$(wc -l <<<"$a")
  if [ "$n" -gt 100 ]; then echo "$n layers"; return 1; fi
}
check "packages: images share the layers of common packages" t_pkg_shared

t_pkg_shell() {
  local cmd out
  cmd=$(skopeo inspect --config --tls-verify=false "docker://$RK/shell:latest" | json 'd["config"]["Cmd"]')
  eq "$cmd" "['bash']" "Cmd of shell"
  unpack "$RK/shell/hello:latest" "$W/pkb4"
  out=$(chroot "$W/pkb4/bundle/rootfs" /bin/bash -c 'ls /bin/hello; /usr/bin/env echo ok')
  eq "$out" $'/bin/hello\nok' "bash, /bin/hello and /usr/bin/env in shell/hello"
}
check "packages: the shell meta-package (bash as Cmd, coreutils, /usr/bin/env)" t_pkg_shell

t_pkg_arm64() {
  # This server's Nix has no aarch64 builder (no extra-platforms): the
  # build is attempted for aarch64-linux and fails saying so. (`broken`:
  # never in the store, so never substituted by an earlier run's build;
  # t_index serves arm64/hello from a server that can build it.)
  R=$RK expect_error GET /v2/arm64/broken/manifests/latest 500 UNKNOWN "a 'aarch64-linux' with features .* is required to build"
}
check "packages: arm64 prefix builds for aarch64-linux (none here: the error says so)" t_pkg_arm64

t_pkg_failure() {
  R=$RK expect_error GET /v2/broken/manifests/latest 500 UNKNOWN 'broken on purpose'
}
check "packages: a package that fails to build: 500 with the log tail" t_pkg_failure

t_pkg_beside_flake() {
  local got want out
  # Flake outputs keep their names; any other name is a package path.
  got=$(pkg_digest "127.0.0.1:$PB" app)
  eq "$got" "$APP_DIGEST" "app beside a package set"
  got=$(pkg_digest "127.0.0.1:$PB" hello/greeter)
  want=$(pkg_digest "$RK" hello/greeter)
  eq "$got" "$want" "hello/greeter from the flake's legacyPackages and from the path"
  ctr image pull --plain-http "127.0.0.1:$PB/shell/hello:latest" >/dev/null
  out=$(ctr run --rm "127.0.0.1:$PB/shell/hello:latest" "fp3-$$" /bin/hello)
  eq "$out" 'hello from nix' "ctr run shell/hello"
}
check "packages beside a flake: outputs by name, package paths otherwise; containerd runs one" t_pkg_beside_flake

# ------------------------------------------------- gzip layers
# A bound of 0: only the blob just compressed stays, so blobs are
# evicted and compressed again all the time.
start_server PZ "$W/state-gz" --compression gzip --compressed-cache-mib 0 || exit 1
RZ=127.0.0.1:$PZ
t_gzip() {
  local m cfg layers n i diff got plain_cfg
  m=$(curl -fsS "http://$RZ/v2/app/manifests/latest")
  has_line "$m" 'tar\+gzip' "gzip media type in the manifest"
  cfg=$(json 'd["config"]["digest"]' <<<"$m")
  cfg=$(curl -fsS "http://$RZ/v2/app/blobs/$cfg")
  layers=$(layer_digests "$m")
  n=$(wc -l <<<"$layers")
  if [ "$n" -lt 2 ]; then echo "$n layers"; return 1; fi
  i=0
  for layer in $layers; do
    diff=$(json "d['rootfs']['diff_ids'][$i]" <<<"$cfg")
    curl -fsS -o "$W/gz.blob" "http://$RZ/v2/app/blobs/$layer"
    got=$(sha_file "$W/gz.blob")
    eq "$got" "$layer" "blob digest"
    gzip -dc < "$W/gz.blob" > "$W/gz.tar"
    got=$(sha_file "$W/gz.tar")
    eq "$got" "$diff" "gunzipped layer vs its diff_id"
    i=$((i + 1))
  done
  # Uncompressed tars are the same whatever the compression: same diff_ids.
  plain_cfg=$(json 'd["config"]["digest"]' < "$W/m")
  plain_cfg=$(curl -fsS "http://$R/v2/app/blobs/$plain_cfg" | json 'd["rootfs"]["diff_ids"]')
  got=$(json 'd["rootfs"]["diff_ids"]' <<<"$cfg")
  eq "$got" "$plain_cfg" "diff_ids with and without gzip"
}
check "gzip: layers compressed, blob digests and diff_ids verified" t_gzip

t_gzip_clients() {
  local out
  # Pull other images first so app's blobs are evicted and recompressed.
  for img in other stock plain; do curl -fsS -o /dev/null "http://$RZ/v2/$img/manifests/latest"; done
  unpack "$RZ/app:latest" "$W/gzb1"
  out=$(chroot "$W/gzb1/bundle/rootfs" /bin/sh -c 'GREETING=z /bin/greet')
  eq "$out" 'greetings z as 0' "app from gzip layers in a chroot"
  ctr image pull --plain-http "$RZ/other:latest" >/dev/null
  out=$(ctr run --rm "$RZ/other:latest" "fpz-$$")
  eq "$out" 'hello from nix' "ctr run other"
  grep -qE 'evicted a kept layer file.*kind="?gzip' "$W/server-$PZ.log"
}
check "gzip: skopeo+umoci+chroot and containerd runs, after evictions" t_gzip_clients

start_server PZS "$W/state-zstd" --compression zstd || exit 1
t_zstd() {
  local m layers got out
  m=$(curl -fsS "http://127.0.0.1:$PZS/v2/app/manifests/latest")
  has_line "$m" 'tar\+zstd' "zstd media type in the manifest"
  blobs_match "127.0.0.1:$PZS" app "$m"
  # containerd checks every decompressed layer against the config's diff_ids.
  ctr image pull --plain-http "127.0.0.1:$PZS/app:latest" >/dev/null
  out=$(ctr run --rm "127.0.0.1:$PZS/app:latest" "fpzs-$$")
  eq "$out" 'greetings v2 as 1000' "ctr run app from zstd layers"
}
check "zstd: layers compressed, containerd unpacks (diff_ids verified) and runs" t_zstd

# ------------------------------------------------- graceful shutdown
exits_soon() { # exits_soon PID WHEN: the process ends within 5 s, else fail saying WHEN
  for _ in $(seq 50); do
    if ! kill -0 "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "server still running $2"
  return 1
}
# finishes_in_flight SERVER_PID DOWNLOAD_PID FILE DIGEST WHAT: after
# SIGTERM, the download still running into FILE completes intact (hashes
# to DIGEST) while the server waits for it, then the server exits.
finishes_in_flight() {
  local got
  kill -0 "$2"
  if ! kill -0 "$1"; then echo "the server exited with $5 in flight"; return 1; fi
  wait "$2"
  got=$(sha_file "$3")
  eq "$got" "$4" "$5 in flight at SIGTERM"
  exits_soon "$1" "after $5 finished"
}
t_sigterm() {
  local m layer size dl have got
  start_server PS "$W/state-sigterm" --shutdown-grace 20
  m=$(curl -fsS "http://127.0.0.1:$PS/v2/large/manifests/latest")
  layer=$(json 'max(d["layers"], key=lambda l: l["size"])["digest"]' <<<"$m")
  size=$(json 'max(d["layers"], key=lambda l: l["size"])["size"]' <<<"$m")
  # A slow download of 12 MiB (3 times the largest socket send buffer here)
  # at 4 MiB/s, then SIGTERM while it runs.
  "$ROOT/tests/slow_client.py" "http://127.0.0.1:$PS/v2/large/blobs/$layer" "$W/sigterm.blob" 4096 &
  dl=$!
  sleep 1
  kill -TERM "$PS_PID"
  have=$(stat -c %s "$W/sigterm.blob")
  kill -0 "$dl"
  if [ "$have" -ge "$size" ]; then echo "download finished ($have of $size bytes) before SIGTERM"; return 1; fi
  echo "SIGTERM with $have of $size bytes downloaded"
  sleep 0.5
  # No new connections...
  got=$(status "http://127.0.0.1:$PS/v2/" -m 2) || true
  eq "$got" 000 "a new connection after SIGTERM"
  # ...the stream in flight completes intact, then the server exits.
  finishes_in_flight "$PS_PID" "$dl" "$W/sigterm.blob" "$layer" "the download"
}
check "SIGTERM: stops accepting, finishes the stream in flight, exits" t_sigterm

# ------------------------------------------------- after the client tests: these change the repo and the store
t_digest_mismatch() {
  local m m2 layers bad="" f err got hits port
  # $R keeps small verified layers in memory; PV (--hot-layers-mib 0)
  # streams them from the store without hashing once verified.
  start_server PV "$W/state-verified" --hot-layers-mib 0
  m=$(curl -fsS "http://$R/v2/corrupt/manifests/latest")
  curl -fsS -o /dev/null "http://127.0.0.1:$PV/v2/corrupt/manifests/latest"
  layers=$(layer_digests "$m")
  for layer in $layers; do
    curl -fsS -o "$W/corrupt.blob" "http://$R/v2/corrupt/blobs/$layer"
    if grep -aq original-content "$W/corrupt.blob"; then bad=$layer; fi
  done
  if [ -z "$bad" ]; then echo "no layer holds the data file"; return 1; fi
  # Verified by each server's digest pass, then served by the shortcuts:
  # from memory on $R (once its first GET collected it), unhashed on PV.
  curl -fsS -o /dev/null "http://127.0.0.1:$PV/v2/corrupt/blobs/$bad"
  hits=$(metric "$P" 'flakeport_cache_lookups_total{cache="hot_layer",result="hit"}')
  got=$(blob_sha "http://$R/v2/corrupt/blobs/$bad")
  eq "$got" "$bad" "the layer from memory"
  got=$(metric "$P" 'flakeport_cache_lookups_total{cache="hot_layer",result="hit"}')
  eq "$got" "$((hits + 1))" "layers served from memory"
  got=$(metric "$P" flakeport_hot_layer_bytes)
  atleast "$got" 1 "bytes of layers in memory"
  got=$(metric "$PV" flakeport_hot_layer_bytes)
  eq "$got" 0 "bytes of layers in memory with --hot-layers-mib 0"
  got=$(blob_sha "http://127.0.0.1:$PV/v2/corrupt/blobs/$bad")
  eq "$got" "$bad" "the trusted layer, unhashed"
  got=$(metric "$PV" 'flakeport_cache_lookups_total{cache="verified_layer",result="hit"}')
  eq "$got" 2 "layers streamed on trust"
  f=$(ls -d /nix/store/*-corruptible-"$(cat "$W/repo/nonce")")/share/data
  chmod u+w "$(dirname "$f")" "$f"
  printf 'altered-content!\n' > "$f"   # same size, other bytes: only the hash can tell
  touch -h -d @1 "$f"                   # and the store's mtime back: only the ctime moved
  # On both servers the stream is cut short (curl sees a truncated body),
  # the digest dropped...
  for port in "$P" "$PV"; do
    if curl -fsS -o /dev/null "http://127.0.0.1:$port/v2/corrupt/blobs/$bad" 2>"$W/curl.err"; then echo "served altered bytes on port $port"; return 1; fi
    cat "$W/curl.err"
  done
  expect_error GET "/v2/corrupt/blobs/$bad" 404 BLOB_UNKNOWN
  got=$(status "http://127.0.0.1:$PV/v2/corrupt/blobs/$bad")
  eq "$got" 404 "the altered layer on PV"
  # ...and the next pull digests the new bytes: a new, correct manifest.
  m2=$(curl -fsS "http://$R/v2/corrupt/manifests/latest")
  ne "$m2" "$m" "manifest after the store changed"
  blobs_match "$R" corrupt "$m2"
}
check "altered store bytes: stream aborted, digest dropped, re-digested" t_digest_mismatch
# Put the altered path back as Nix built it.
if ! nix-store --repair-path /nix/store/*-corruptible-"$(cat "$W/repo/nonce")" >/dev/null 2>&1; then
  echo "note: could not repair the altered test path"
fi

start_server PTTL "$W/state-ttl" --manifest-ttl 3 || exit 1
t_ttl() {
  local before again after env
  before=$(pkg_digest "127.0.0.1:$PTTL" app main)
  (cd "$W/repo"; printf v3 > version; git -c user.email=t@t -c user.name=t commit -qam v3)
  again=$(pkg_digest "127.0.0.1:$PTTL" app main)
  eq "$again" "$before" "app:main within the TTL"
  sleep 4
  after=$(pkg_digest "127.0.0.1:$PTTL" app main)
  ne "$after" "$before" "app:main after the TTL"
  env=$(greeting "127.0.0.1:$PTTL/app:main")
  eq "$env" GREETING=v3 "Env of app:main after the TTL"
}
check "a branch tag is re-resolved after --manifest-ttl" t_ttl

# ------------------------------------------------- credentials never shown
# Sources with credentials in their URLs (nothing listens on port 9: every
# fetch fails, and Nix and git print the URL they tried).
NO_FLAKE=1 start_server PC "$W/state-creds" "git+http://flakeuser:s3cretTOKEN@127.0.0.1:9/repo.git" \
  --packages "git+http://pkguser:pkgTOKEN@127.0.0.1:9/set.git?access_token=qTOKEN" || exit 1
t_no_secrets() {
  local replies log all leaked
  replies=$(curl -s "http://127.0.0.1:$PC/v2/app/manifests/latest"; curl -s "http://127.0.0.1:$PC/v2/app/tags/list"; curl -s "http://127.0.0.1:$PC/v2/curl/manifests/v1")
  has_line "$replies" '"errors"' "error replies"
  log=$(cat "$W/server-$PC.log")
  all="$replies
$log"
  has_line "$all" 'http://\*\*\*@127\.0\.0\.1:9/' "a redacted URL in a reply or the log"
  leaked=$(grep -E 'TOKEN|flakeuser|pkguser' <<<"$all" || true)
  eq "$leaked" "" "credentials in replies or the log"
}
check "credentials in source URLs never appear in replies or the log" t_no_secrets

# ------------------------------------------------- safe on a network (issue 10)
wait_for_line() { # wait_for_line FILE REGEX SECS
  for _ in $(seq $(($3 * 10))); do
    if grep -qE -- "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "no line matching '$2' in $1 after $3 s:"; cat "$1"; return 1
}
largest_layer() { # largest_layer PORT NAME: the digest of the image's largest layer
  curl -fsS "http://127.0.0.1:$1/v2/$2/manifests/latest" | json 'max(d["layers"], key=lambda l: l["size"])["digest"]'
}

t_stalled() {
  local layer threads streams out
  start_server PS "$W/state-stall"
  layer=$(largest_layer "$PS" large)
  "$ROOT/tests/stall.py" body "http://127.0.0.1:$PS/v2/large/blobs/$layer" 600 "$W/stall.release" > "$W/stall.out" 2>&1 &
  echo $! >> "$W/pids"
  wait_for_line "$W/stall.out" '^ready$' 120
  streams=$(metric "$PS" flakeport_layer_streams)
  eq "$streams" 600 "layer streams in flight"
  # A stalled stream holds no thread (it used to hold a blocking one).
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$PS_PID/status")
  echo "threads with 600 stalled streams: $threads; RSS: $(awk '/^VmRSS:/ {print $2, $3}' "/proc/$PS_PID/status")"
  if [ "$threads" -gt 200 ]; then echo "$threads threads"; return 1; fi
  # Another image pulls, and its blobs verify, while the 600 stall.
  unpack "127.0.0.1:$PS/app:latest" "$W/stall-app"
  out=$(chroot "$W/stall-app/bundle/rootfs" /bin/sh -c 'GREETING=x /bin/greet')
  eq "$out" 'greetings x as 0' "app pulled beside 600 stalled clients"
  touch "$W/stall.release"
  wait_for_line "$W/stall.out" '^released$' 60
  for _ in $(seq 100); do
    streams=$(metric "$PS" flakeport_layer_streams)
    if [ "$streams" = 0 ]; then break; fi
    sleep 0.1
  done
  eq "$streams" 0 "layer streams after the clients closed"
}
check "600 stalled clients hold no thread; another image pulls meanwhile" t_stalled

t_timeouts() {
  local layer out code
  start_server PI "$W/state-idle" --idle-timeout 2 --header-timeout 2 --max-streams 1
  layer=$(largest_layer "$PI" large)
  # Half a request's headers: closed by the header timeout.
  "$ROOT/tests/stall.py" headers 127.0.0.1 "$PI"
  # A client that takes no bytes: its stream holds the only slot...
  rm -f "$W/idle.release"
  "$ROOT/tests/stall.py" body "http://127.0.0.1:$PI/v2/large/blobs/$layer" 1 "$W/idle.release" count > "$W/idle.out" 2>&1 &
  echo $! >> "$W/pids"
  wait_for_line "$W/idle.out" '^ready$' 60
  code=$(status "http://127.0.0.1:$PI/v2/large/blobs/$layer" -D "$W/idle.h")
  eq "$code" 429 "a blob GET past --max-streams"
  has_header "$W/idle.h" 'retry-after: 1'
  # ...until the idle write timeout closes it; then the slot is free.
  sleep 4
  touch "$W/idle.release"
  wait_for_line "$W/idle.out" '^open=' 30
  out=$(cat "$W/idle.out")
  has_line "$out" '^open=0 closed=1$' "the stalled stream after the idle timeout"
  out=$(blob_sha "http://127.0.0.1:$PI/v2/large/blobs/$layer")
  eq "$out" "$layer" "the layer once the slot is free"
}
check "timeouts: half-sent headers and a client that reads nothing are cut; 429 past --max-streams" t_timeouts


# Trust: the digest pass hashed a layer's bytes with its files' identity
# the same before and after, so its first GET streams without hashing; a
# server that knows the digest from its state dir (after a restart) hashes
# the first GET and trusts the next. A layer streamed on trust whose file
# is altered while it goes out: its last bytes never go, so the client's
# download fails, and the next GET finds the change. 32 MiB at 8 MiB/s:
# after a second at most 8 MiB plus the socket buffers (under 4 MiB here)
# have left, so the server is still reading.
t_trusted_altered() {
  local layer got dl f code url
  start_server PM "$W/state-midstream" --hot-layers-mib 0
  layer=$(largest_layer "$PM" midstream)
  url="http://127.0.0.1:$PM/v2/midstream/blobs/$layer"
  got=$(blob_sha "$url")
  eq "$got" "$layer" "the first GET"
  got=$(metric "$PM" 'flakeport_cache_lookups_total{cache="verified_layer",result="hit"}')
  eq "$got" 1 "first GETs streamed on the digest pass's trust"
  stop_server "$PM_PID"
  start_server PM "$W/state-midstream" --hot-layers-mib 0
  url="http://127.0.0.1:$PM/v2/midstream/blobs/$layer"
  got=$(blob_sha "$url")
  eq "$got" "$layer" "the first GET after a restart"
  got=$(metric "$PM" 'flakeport_cache_lookups_total{cache="verified_layer",result="miss"}')
  eq "$got" 1 "first GETs hashed after a restart"
  got=$(blob_sha "$url")
  eq "$got" "$layer" "the second GET after a restart"
  got=$(metric "$PM" 'flakeport_cache_lookups_total{cache="verified_layer",result="hit"}')
  eq "$got" 1 "GETs streamed on trust after a restart"
  "$ROOT/tests/slow_client.py" "$url" "$W/midstream.blob" 8192 2> "$W/midstream.err" &
  dl=$!
  sleep 1
  kill -0 "$dl" # still downloading
  f=$(ls -d /nix/store/*-midstream-data-"$(cat "$W/repo/nonce")")/share/zeros
  chmod u+w "$(dirname "$f")" "$f"
  printf 'Y' | dd of="$f" bs=1 seek=33000000 conv=notrunc status=none
  touch -h -d @1 "$f"
  if wait "$dl"; then echo "a layer altered while it streamed on trust was served whole"; return 1; fi
  cat "$W/midstream.err"
  # The next GET hashes it, is cut short, and drops the digest.
  if curl -fsS -o /dev/null "$url" 2> "$W/curl.err"; then echo "served altered bytes after the change"; return 1; fi
  cat "$W/curl.err"
  code=$(status "$url")
  eq "$code" 404 "the altered layer"
}
check "trust: first GETs after the digest pass or a hashed GET stream unhashed; a layer altered while it streams on trust is cut short" t_trusted_altered
if ! nix-store --repair-path /nix/store/*-midstream-data-"$(cat "$W/repo/nonce")" >/dev/null 2>&1; then
  echo "note: could not repair the altered test path"
fi

t_flood() {
  local before codes n429 others peak refused code
  start_server PF "$W/state-flood" --max-processes 2 --max-builds 1 --max-queued 4
  before=$(metric "$PF" flakeport_processes_refused_total)
  eq "$before" 0 "refusals at start"
  # Count the server's child processes (nix, git) while 80 requests for
  # distinct names arrive at once.
  ( peak=0
    while [ ! -e "$W/flood.done" ]; do
      n=$(pgrep -c -P "$PF_PID" || true)
      if [ "$n" -gt "$peak" ]; then peak=$n; echo "$peak" > "$W/flood.peak"; fi
      sleep 0.02
    done ) &
  local curls=()
  for i in $(seq 40); do
    curl -s -o /dev/null -w '%{http_code}\n' "http://127.0.0.1:$PF/v2/flood$i/manifests/latest" >> "$W/flood.codes" &
    curls+=($!)
    curl -s -o /dev/null -w '%{http_code}\n' "http://127.0.0.1:$PF/v2/flood$i/tags/list" >> "$W/flood.codes" &
    curls+=($!)
  done
  wait "${curls[@]}"
  touch "$W/flood.done"
  codes=$(sort "$W/flood.codes" | uniq -c)
  echo "replies: $codes"
  n429=$(grep -c '^429$' "$W/flood.codes")
  others=$(grep -cvE '^(404|429)$' "$W/flood.codes" || true)
  eq "$others" 0 "replies other than 404 NAME_UNKNOWN and 429"
  if [ "$n429" -lt 1 ]; then echo "no request was refused"; return 1; fi
  peak=$(cat "$W/flood.peak")
  echo "most child processes seen at once: $peak (bound 2)"
  if [ "$peak" -gt 2 ]; then echo "$peak processes ran at once"; return 1; fi
  refused=$(metric "$PF" flakeport_processes_refused_total)
  eq "$refused" "$n429" "refusals counted"
  code=$(status "http://127.0.0.1:$PF/v2/app/manifests/latest")
  eq "$code" 200 "a pull once the flood is over"
}
check "a flood of distinct names: never more nix/git processes than --max-processes, 429 past the queue" t_flood

t_transient() {
  local layer n top code soft got
  start_server PX "$W/state-fd"
  layer=$(largest_layer "$PX" app)
  got=$(blob_sha "http://127.0.0.1:$PX/v2/app/blobs/$layer")
  eq "$got" "$layer" "the layer before"
  sleep 0.5
  soft=$(prlimit --pid "$PX_PID" --nofile --noheadings --output SOFT)
  # One descriptor left: the next connection takes it, and reading the
  # layer finds none (EMFILE), as a server out of descriptors would. The
  # limit bounds descriptor numbers, so idle connections first fill the
  # holes below the highest one.
  top=$(ls "/proc/$PX_PID/fd" | sort -n | tail -1)
  n=$(ls "/proc/$PX_PID/fd" | wc -l)
  prlimit --pid "$PX_PID" --nofile=$((top + 1)):
  python3 -c 'import socket,sys,time; s=[socket.create_connection(("127.0.0.1",int(sys.argv[1]))) for _ in range(int(sys.argv[2]))]; time.sleep(60)' "$PX" $((top + 1 - n)) &
  echo $! > "$W/fd.holders"
  for _ in $(seq 100); do
    n=$(ls "/proc/$PX_PID/fd" | wc -l)
    if [ "$n" -ge $((top + 1)) ]; then break; fi
    sleep 0.05
  done
  eq "$n" $((top + 1)) "descriptors in use before the GET"
  prlimit --pid "$PX_PID" --nofile=$((top + 2)):
  code=$(curl -s -D "$W/fd.h" -o "$W/fd.body" -w '%{http_code}' "http://127.0.0.1:$PX/v2/app/blobs/$layer")
  prlimit --pid "$PX_PID" --nofile="$soft":
  kill "$(cat "$W/fd.holders")"
  eq "$code" 503 "a blob GET with no descriptor left"
  has_header "$W/fd.h" 'retry-after: 1'
  got=$(json 'd["errors"][0]["code"]' < "$W/fd.body")
  eq "$got" UNAVAILABLE "the error code"
  # Transient: the digest is kept and serves the same bytes afterwards.
  got=$(blob_sha "http://127.0.0.1:$PX/v2/app/blobs/$layer")
  eq "$got" "$layer" "the layer once descriptors are back"
  got=$(grep -c 'keeping the digest' "$W/server-$PX.log")
  ne "$got" 0 "a log line saying the digest was kept"
}
check "out of file descriptors: 503 UNAVAILABLE with Retry-After, the digest kept" t_transient

make_certs() { # make_certs DIR SERIAL: DIR/ca.{crt,key} (kept if present) and DIR/server.{crt,key} for 127.0.0.1
  mkdir -p "$1"
  if [ ! -e "$1/ca.crt" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj /CN=flakeport-test-ca -keyout "$1/ca.key" -out "$1/ca.crt" 2>/dev/null
  fi
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout "$1/new.key" -out "$1/new.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$1/ext"
  openssl x509 -req -in "$1/new.csr" -CA "$1/ca.crt" -CAkey "$1/ca.key" -set_serial "$2" -days 2 \
    -extfile "$1/ext" -out "$1/new.crt" 2>/dev/null
  # Key first, then certificate: the server reloads on change, and a pair
  # it cannot load yet is retried on the next change.
  mv "$1/new.key" "$1/server.key"
  mv "$1/new.crt" "$1/server.crt"
}
served_serial() { # served_serial PORT CA: the serial of the certificate the server presents
  local cert
  cert=$(openssl s_client -connect "127.0.0.1:$1" -CAfile "$2" -verify_return_error </dev/null 2>/dev/null)
  openssl x509 -noout -serial <<<"$cert"
}

AUTH_USER=alice
AUTH_PASS='wonder land 42'
htpasswd -Bbc "$W/htpasswd" "$AUTH_USER" "$AUTH_PASS" 2>/dev/null
echo "token-$RANDOM$RANDOM$RANDOM" > "$W/tokens"
AUTH_TOKEN=$(cat "$W/tokens")

t_auth() {
  local out
  start_server PA "$W/state-auth" --htpasswd "$W/htpasswd" --token-file "$W/tokens" --protect-metrics
  # The replies without valid credentials: tests/protocol/auth.rs.
  # flakeport warm, refused without credentials, with a token and as a user.
  if "$BIN" warm --server "http://127.0.0.1:$PA" stock:v1 > "$W/warm-cli.out" 2>&1; then echo "flakeport warm without credentials succeeded"; return 1; fi
  out=$(cat "$W/warm-cli.out")
  has_line "$out" 'answered 401' "flakeport warm without credentials"
  out=$(FLAKEPORT_TOKEN=$AUTH_TOKEN "$BIN" warm --server "http://127.0.0.1:$PA" --wait stock:v1)
  has_line "$out" '^stock:v1 sha256:[0-9a-f]{64}$' "flakeport warm --token"
  out=$(FLAKEPORT_PASSWORD=$AUTH_PASS "$BIN" warm --server "http://127.0.0.1:$PA" --user "$AUTH_USER" plain:v1)
  eq "$out" 'warming plain:v1' "flakeport warm --user"
  # skopeo --creds (a user, then the token as a password), containerd, Docker.
  skopeo copy -q --src-tls-verify=false --src-creds "$AUTH_USER:$AUTH_PASS" "docker://127.0.0.1:$PA/app:latest" "oci:$W/auth-oci:a"
  skopeo copy -q --src-tls-verify=false --src-creds "robot:$AUTH_TOKEN" "docker://127.0.0.1:$PA/stock:v1" "oci:$W/auth-oci:s"
  # (v1: an earlier check moves the branch on)
  ctr image pull --plain-http --user "$AUTH_USER:$AUTH_PASS" "127.0.0.1:$PA/app:v1" >/dev/null
  out=$(ctr run --rm "127.0.0.1:$PA/app:v1" "fp-auth-$$")
  eq "$out" 'greetings v1 as 1000' "ctr run with Basic auth"
  export DOCKER_CONFIG="$W/docker-auth"
  if docker login -u "$AUTH_USER" --password-stdin "127.0.0.1:$PA" <<<"wrong" >/dev/null 2>&1; then echo "docker login took a wrong password"; return 1; fi
  docker login -u "$AUTH_USER" --password-stdin "127.0.0.1:$PA" <<<"$AUTH_PASS" >/dev/null 2>&1
  docker pull -q "127.0.0.1:$PA/plain:v1" >/dev/null
  out=$(docker run --rm --network none "127.0.0.1:$PA/plain:v1")
  eq "$out" 'greetings  as 0' "docker run after docker login"
  docker logout "127.0.0.1:$PA" >/dev/null
}
check "auth: flakeport warm with a token or a user, docker login, skopeo --creds, ctr --user" t_auth

t_tls() {
  local code out serial
  make_certs "$W/tls" 1001
  start_server PT "$W/state-tls" --tls-cert "$W/tls/server.crt" --tls-key "$W/tls/server.key" --htpasswd "$W/htpasswd"
  code=$(status "https://127.0.0.1:$PT/v2/" --cacert "$W/tls/ca.crt")
  eq "$code" 401 "https /v2/ without credentials"
  code=$(status "https://127.0.0.1:$PT/v2/app/manifests/latest" --cacert "$W/tls/ca.crt" -u "$AUTH_USER:$AUTH_PASS")
  eq "$code" 200 "https manifest with credentials"
  # skopeo with the CA (and verification on), containerd, Docker.
  mkdir -p "$W/tls-certs.d"
  cp "$W/tls/ca.crt" "$W/tls-certs.d/ca.crt"
  skopeo copy -q --src-cert-dir "$W/tls-certs.d" --src-creds "$AUTH_USER:$AUTH_PASS" "docker://127.0.0.1:$PT/app:latest" "oci:$W/tls-oci:a"
  # containerd: a hosts.toml with the CA (ctr's --tlscacert alone is not
  # used for a loopback registry, which it reaches over plain http).
  mkdir -p "$W/tls-hosts/127.0.0.1:$PT"
  printf '[host."https://127.0.0.1:%s"]\n  capabilities = ["pull", "resolve"]\n  ca = "%s"\n' "$PT" "$W/tls/ca.crt" > "$W/tls-hosts/127.0.0.1:$PT/hosts.toml"
  ctr image pull --hosts-dir "$W/tls-hosts" --user "$AUTH_USER:$AUTH_PASS" "127.0.0.1:$PT/stock:v1" >/dev/null
  out=$(ctr run --rm "127.0.0.1:$PT/stock:v1" "fp-tls-$$")
  eq "$out" 'hello from nix' "ctr run over TLS"
  mkdir -p "/etc/docker/certs.d/127.0.0.1:$PT"
  echo "/etc/docker/certs.d/127.0.0.1:$PT" >> "$W/made-dirs"
  cp "$W/tls/ca.crt" "/etc/docker/certs.d/127.0.0.1:$PT/ca.crt"
  export DOCKER_CONFIG="$W/docker-tls"
  docker login -u "$AUTH_USER" --password-stdin "127.0.0.1:$PT" <<<"$AUTH_PASS" >/dev/null 2>&1
  docker pull -q "127.0.0.1:$PT/app:v1" >/dev/null
  out=$(docker run --rm --network none "127.0.0.1:$PT/app:v1")
  eq "$out" 'greetings v1 as 1000' "docker run over TLS"
  # A renewed certificate is served without a restart.
  serial=$(served_serial "$PT" "$W/tls/ca.crt")
  eq "$serial" "serial=03E9" "the first certificate"
  make_certs "$W/tls" 1002
  for _ in $(seq 100); do
    serial=$(served_serial "$PT" "$W/tls/ca.crt")
    if [ "$serial" = "serial=03EA" ]; then break; fi
    sleep 0.1
  done
  eq "$serial" "serial=03EA" "the renewed certificate"
  code=$(status "https://127.0.0.1:$PT/v2/app/manifests/latest" --cacert "$W/tls/ca.crt" -u "$AUTH_USER:$AUTH_PASS")
  eq "$code" 200 "https after the renewal"
}
check "TLS: curl, skopeo, ctr and docker over https with the CA (and Basic auth); renewed cert reloaded" t_tls

t_retention() {
  local st=$W/state-ret lines live fake roots code recent
  start_server PR "$st"
  code=$(status "http://127.0.0.1:$PR/v2/app/manifests/latest")
  eq "$code" 200 "app"
  code=$(status "http://127.0.0.1:$PR/v2/stock/manifests/v1")
  eq "$code" 200 "stock:v1"
  stop_server "$PR_PID"
  roots=$(ls "$st/gcroots" | wc -l)
  eq "$roots" 2 "GC roots after two pulls"
  # 40 days without a pull; the index with history: every line twice, and a
  # layer whose store path a GC took.
  touch -h -d '40 days ago' "$st"/gcroots/* "$st"/json/*
  live=$(wc -l < "$st/layers.jsonl")
  cp "$st/layers.jsonl" "$W/ret.lines"
  cat "$W/ret.lines" >> "$st/layers.jsonl"
  fake=$(python3 -c 'import json,sys; d=[json.loads(l) for l in open(sys.argv[1]) if "\"store_paths\"" in l][0]; d["digest"]="sha256:"+"e"*64; d["key"]="f"*64; d["source"]["paths"]=["/nix/store/00000000000000000000000000000000-gone"]; print(json.dumps(d))' "$W/ret.lines")
  echo "$fake" >> "$st/layers.jsonl"
  start_server PR "$st" --keep-roots 30
  wait_for_line "$W/server-$PR.log" 'state dir swept' 30
  roots=$(ls "$st/gcroots" | wc -l)
  eq "$roots" 0 "GC roots after 40 days unpulled"
  lines=$(ls "$st/json" | wc -l)
  eq "$lines" 0 "documents after 40 days unpulled"
  lines=$(wc -l < "$st/layers.jsonl")
  eq "$lines" "$live" "index lines after compaction (one per live digest)"
  lines=$(sort -u "$st/layers.jsonl" | wc -l)
  eq "$lines" "$live" "distinct index lines"
  R=127.0.0.1:$PR
  expect_error GET "/v2/app/blobs/sha256:$(printf 'e%.0s' {1..64})" 404 BLOB_UNKNOWN
  # A pull brings the root back, marked served now.
  code=$(status "http://127.0.0.1:$PR/v2/app/manifests/latest")
  eq "$code" 200 "app after the sweep"
  recent=$(find "$st/gcroots" -mindepth 1 -mmin -1 | wc -l)
  eq "$recent" 1 "GC roots served within the last minute"
}
check "retention: roots and documents unpulled for --keep-roots go; layers.jsonl compacted" t_retention

t_pure_eval() {
  local env
  FLAKEPORT_PURITY_PROBE=leaked start_server PU "$W/state-pure"
  # A branch, a git tag and a commit are locked to their commit by the ref
  # gate and evaluated in pure mode: the server's environment is not seen.
  env=$(skopeo inspect --tls-verify=false "docker://127.0.0.1:$PU/purity:main" | json '[e for e in d["Env"] if e.startswith("PROBE")][0]')
  eq "$env" "PROBE=" "Env of purity:main (pure)"
  env=$(skopeo inspect --tls-verify=false "docker://127.0.0.1:$PU/purity:v1" | json '[e for e in d["Env"] if e.startswith("PROBE")][0]')
  eq "$env" "PROBE=" "Env of purity:v1 (pure)"
  # `latest` (the flake as given, revision unknown before Nix fetches it)
  # is evaluated impurely: that is what the probe shows.
  env=$(skopeo inspect --tls-verify=false "docker://127.0.0.1:$PU/purity:latest" | json '[e for e in d["Env"] if e.startswith("PROBE")][0]')
  eq "$env" "PROBE=leaked" "Env of purity:latest (impure)"
}
check "pure evaluation of branches and tags locked by the ref gate" t_pure_eval

# ------------------------------------------------ many nodes (issue 11)
# PM: two systems. aarch64-linux is built here with extra-platforms: the
# fixture's aarch64 derivations have the host's busybox as their builder.
NIX_CONFIG="$NIX_CONFIG
extra-platforms = aarch64-linux" start_server PM "$W/state-multi" --system x86_64-linux,aarch64-linux --packages "$W/repo" || exit 1
RM=127.0.0.1:$PM
DOCKER_TYPES='application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json'

t_index() {
  local out want amd arm code n
  # An OCI index and a Docker manifest list, each entry checked against
  # the manifest and config it names (tests/index_check.py).
  out=$(python3 "$ROOT/tests/index_check.py" "http://$RM" app v1)
  has_line "$out" '^linux/amd64 sha256:' "OCI index of app:v1"
  has_line "$out" '^linux/arm64/v8 sha256:' "OCI index of app:v1"
  n=$(wc -l <<<"$out")
  eq "$n" 2 "entries of app:v1"
  amd=$(awk '$1 == "linux/amd64" {print $2}' <<<"$out")
  arm=$(awk '$1 == "linux/arm64/v8" {print $2}' <<<"$out")
  ne "$amd" "$arm" "amd64 and arm64 manifests"
  out=$(python3 "$ROOT/tests/index_check.py" "http://$RM" app v1 "$DOCKER_TYPES")
  n=$(wc -l <<<"$out")
  eq "$n" 2 "entries of the Docker list"
  for name in stock plain; do
    out=$(python3 "$ROOT/tests/index_check.py" "http://$RM" "$name" v1)
    has_line "$out" '^linux/arm64/v8 sha256:' "index of $name:v1"
  done
  # A client naming manifest types but no list type gets the first system's image.
  out=$(curl -fsS -D "$W/mt.h" -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$RM/v2/app/manifests/v1")
  has_header "$W/mt.h" "docker-content-digest: $amd"
  # The amd64 entry is the image a one-system server serves.
  want=$(curl -fsS -o /dev/null -D - "http://$R/v2/app/manifests/v1" | tr -d '\r' | awk -F': ' 'tolower($1) == "docker-content-digest" {print $2}')
  eq "$amd" "$want" "amd64 entry vs the one-system server's app:v1"
  # An output only x86_64-linux has: an index of one.
  out=$(python3 "$ROOT/tests/index_check.py" "http://$RM" large latest)
  has_line "$out" '^linux/amd64 sha256:' "index of large"
  n=$(wc -l <<<"$out")
  eq "$n" 1 "entries of large"
  # Package paths: the same rule; arm64/ keeps its meaning (one image).
  out=$(python3 "$ROOT/tests/index_check.py" "http://$RM" shell/hello latest)
  n=$(wc -l <<<"$out")
  eq "$n" 2 "entries of shell/hello"
  out=$(curl -fsS -D "$W/pa.h" "http://$RM/v2/arm64/hello/manifests/latest")
  has_header "$W/pa.h" 'content-type: application/vnd.oci.image.manifest.v1+json'
  out=$(skopeo inspect --tls-verify=false --config "docker://$RM/arm64/hello:latest" | json 'd["architecture"] + "/" + d["variant"]')
  eq "$out" arm64/v8 "platform of arm64/hello"
  code=$(status "http://$RM/v2/nosuch/manifests/latest")
  eq "$code" 404 "a name no system has"
}
check "--system x86_64-linux,aarch64-linux: OCI index and Docker list, entries match their configs; package paths too" t_index

t_index_clients() {
  local out arm
  # skopeo picks a platform from the index.
  out=$(skopeo inspect --tls-verify=false --override-arch arm64 --config "docker://$RM/app:v1" | json 'd["architecture"]')
  eq "$out" arm64 "skopeo --override-arch arm64"
  out=$(skopeo inspect --tls-verify=false --config "docker://$RM/app:v1" | json 'd["architecture"]')
  eq "$out" amd64 "skopeo on this host"
  unpack "$RM/app:v1" "$W/idx-sk"
  out=$(chroot --userspec=1000:1000 "$W/idx-sk/bundle/rootfs" /bin/greet)
  eq "$out" 'greetings  as 1000' "the amd64 image of the index runs (no Env in a chroot)"
  # containerd: the arm64 image's config lands in its content store; the
  # host's platform runs.
  ctr image pull --plain-http --platform linux/arm64 "$RM/stock:v1" >/dev/null
  arm=$(python3 "$ROOT/tests/index_check.py" "http://$RM" stock v1 | awk '$1 == "linux/arm64/v8" {print $2}')
  out=$(curl -fsS "http://$RM/v2/stock/manifests/$arm" | json 'd["config"]["digest"]')
  out=$(ctr content get "$out" | json 'd["architecture"]')
  eq "$out" arm64 "config containerd fetched for linux/arm64"
  ctr image pull --plain-http --platform linux/amd64 "$RM/stock:v1" >/dev/null
  out=$(ctr run --rm "$RM/stock:v1" "fpidx-$$")
  eq "$out" 'hello from nix' "ctr run of the index's amd64 image"
  # Docker engine, with and without --platform.
  docker pull -q --platform linux/arm64 "$RM/plain:v1" >/dev/null
  out=$(docker image inspect --format '{{.Architecture}}/{{.Variant}}' "$RM/plain:v1")
  eq "$out" arm64/v8 "docker pull --platform linux/arm64"
  docker rmi -f "$RM/plain:v1" >/dev/null
  docker pull -q "$RM/plain:v1" >/dev/null
  out=$(docker run --rm --network none "$RM/plain:v1")
  eq "$out" 'greetings  as 0' "docker run of the index's amd64 image"
  # podman --arch.
  podman --root "$W/podman/root" --runroot "$W/podman/run" --storage-driver vfs pull -q --arch arm64 --tls-verify=false "$RM/app:v1" >/dev/null
  out=$(podman --root "$W/podman/root" --runroot "$W/podman/run" --storage-driver vfs image inspect --format '{{.Architecture}}' "$RM/app:v1")
  eq "$out" arm64 "podman pull --arch arm64"
}
check "index clients: skopeo --override-arch, ctr --platform, docker --platform, podman --arch; the host's platform runs" t_index_clients

t_hosts_toml() {
  local out
  # examples/kubernetes/cluster-ip/hosts.toml, its ClusterIP replaced by this
  # server: containerd pulls `flakeport.internal/NAME` through it.
  mkdir -p "$W/hosts/flakeport.internal"
  sed "s|10.96.0.50:5000|$RM|g" "$ROOT/examples/kubernetes/cluster-ip/hosts.toml" > "$W/hosts/flakeport.internal/hosts.toml"
  ctr image pull --hosts-dir "$W/hosts" flakeport.internal/stock:v1 >/dev/null
  out=$(ctr run --rm flakeport.internal/stock:v1 "fphosts-$$")
  eq "$out" 'hello from nix' "ctr run flakeport.internal/stock:v1"
}
check "the cluster-ip example's hosts.toml: containerd pulls by the registry name it maps" t_hosts_toml

t_index_failures() {
  local before after
  # A system whose build fails fails the tag, naming the system: never an
  # index without it. Not cached: the next pull tries again.
  R=$RM expect_error GET /v2/halfbroken/manifests/v1 500 UNKNOWN 'for aarch64-linux: .*halfbroken does not build for aarch64-linux'
  before=$(builds "$PM")
  R=$RM expect_error GET /v2/halfbroken/manifests/v1 500 UNKNOWN 'for aarch64-linux'
  after=$(builds "$PM")
  ne "$after" "$before" "builds after a second pull of a failed system"
  # An aarch64-linux output whose image says amd64 is not listed as arm64.
  R=$RM expect_error GET /v2/mislabelled/manifests/v1 500 UNKNOWN 'for aarch64-linux: .*config is for linux/amd64, not linux/arm64/v8'
}
check "index failures: a failed or mislabelled system fails the tag with its name; nothing cached" t_index_failures
t_catalog() {
  local out
  # Two systems: names of either (mislabelled is aarch64-linux's only); a
  # package path once it was pulled. (One system: tests/protocol/catalog.rs.)
  out=$(curl -fsS "http://$RM/v2/_catalog" | json '"\n".join(d["repositories"])')
  has_line "$out" '^mislabelled$' "the two-system catalog"
  has_line "$out" '^shell/hello$' "the two-system catalog, after shell/hello was pulled"
}
check "/v2/_catalog with two systems: the names of either, and package paths once pulled" t_catalog

t_push_to() {
  local root out here there pushed code
  start_server PP "$W/state-push" --push-to "file://$W/cache"
  code=$(status "http://127.0.0.1:$PP/v2/stock/manifests/v1")
  eq "$code" 200 "stock:v1"
  root=$(ls "$W/state-push/gcroots")
  out=$(readlink "$W/state-push/gcroots/$root")
  pushed=$(wait_for_metric "$PP" 'flakeport_pushes_total{result="ok"}' 1 30)
  eq "$pushed" 1 "pushes to the cache"
  # The cache holds the output's whole closure...
  here=$(nix path-info -r "$out" | sort)
  there=$(nix path-info --store "file://$W/cache" -r "$out" | sort)
  eq "$there" "$here" "closure in the binary cache"
  # ...which a second node (an empty /nix in a mount namespace) copies
  # from it without building anything.
  there=$(unshare -m sh -ec "mount -t tmpfs none /nix; nix copy --no-check-sigs --from file://$W/cache $out; nix path-info -r $out" | sort)
  eq "$there" "$here" "closure on a second, empty store"
  # A second pull of the same output copies nothing again.
  code=$(status "http://127.0.0.1:$PP/v2/stock/manifests/v1")
  eq "$code" 200 "stock:v1 again"
  pushed=$(metric "$PP" 'flakeport_pushes_total{result="ok"}')
  eq "$pushed" 1 "pushes after a second pull"
}
check "--push-to: built closures are copied to a file:// binary cache; an empty store copies them from it" t_push_to

# The images the node checks compare: every input kind of the fixture.
NODE_IMAGES="app:v1 stock:v1 plain:v1 based:v1 layered:v1 n2c:v1"
same_images() { # same_images PORT_A PORT_B: byte-identical manifests (both flavours), configs and layers
  local name tag m a b accept
  for image in $NODE_IMAGES; do
    name=${image%%:*}
    tag=${image#*:}
    for accept in application/vnd.oci.image.manifest.v1+json application/vnd.docker.distribution.manifest.v2+json; do
      curl -fsS -H "Accept: $accept" -o "$W/node-a.m" "http://127.0.0.1:$1/v2/$name/manifests/$tag"
      curl -fsS -H "Accept: $accept" -o "$W/node-b.m" "http://127.0.0.1:$2/v2/$name/manifests/$tag"
      a=$(sha_file "$W/node-a.m")
      b=$(sha_file "$W/node-b.m")
      eq "$b" "$a" "$image ($accept) on the second node"
    done
    for m in $(json '"\n".join([d["config"]["digest"]] + [l["digest"] for l in d["layers"]])' < "$W/node-a.m"); do # lint-ok: json fails the check through the manifest read above
      a=$(blob_sha "http://127.0.0.1:$2/v2/$name/blobs/$m")
      eq "$a" "$m" "blob of $image from the second node"
    done
  done
}

t_second_node() {
  local out pushed n
  start_server PA "$W/state-node-a" --push-to "file://$W/node-cache"
  for image in $NODE_IMAGES; do
    curl -fsS -o /dev/null "http://127.0.0.1:$PA/v2/${image%%:*}/manifests/${image#*:}"
  done
  n=$(wc -w <<<"$NODE_IMAGES")
  pushed=$(wait_for_metric "$PA" 'flakeport_pushes_total{result="ok"}' "$n" 60)
  eq "$pushed" "$n" "pushes to the binary cache"
  # B: an empty store that builds everything itself.
  start_node PB "$W/state-node-b" ""
  same_images "$PA" "$PB"
  out=$(metric "$PB" flakeport_nix_builds_started_total)
  ne "$out" 0 "builds on the node that builds"
  # C: an empty store that may not build (max-jobs = 0), only substitute
  # from the cache A filled.
  start_node PC "$W/state-node-c" "substituters = file://$W/node-cache
require-sigs = false
max-jobs = 0"
  same_images "$PA" "$PC"
  # One pull, its manifests from A and its blobs from B, as a Service
  # spreading requests over nodes sends them.
  port=$(free_port)
  python3 "$ROOT/tests/split_proxy.py" "$port" "http://127.0.0.1:$PA" "http://127.0.0.1:$PB" > "$W/split.log" 2>&1 &
  echo "$!" >> "$W/pids"
  await_split "$port"
  unpack "127.0.0.1:$port/app:v1" "$W/split"
  out=$(chroot --userspec=1000:1000 "$W/split/bundle/rootfs" /bin/greet)
  eq "$out" 'greetings  as 1000' "app:v1 pulled from two nodes"
  out=$(cat "$W/split.log")
  has_line "$out" '^manifests 200 GET /v2/app/manifests/v1$' "the split proxy's log"
  has_line "$out" '^blobs 200 GET /v2/app/blobs/sha256:' "the split proxy's log"
}
await_split() { # await_split PORT: until the split proxy answers
  for _ in $(seq 50); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$1/v2/"; then return 0; fi
    sleep 0.1
  done
  echo "split proxy did not start"; return 1
}
check "a second node (empty /nix, own state): the same bytes when it builds, and when it only substitutes from the cache the first filled; one pull across both" t_second_node

# A server on a fresh store (an empty /nix: a new node, or the cluster-ip
# Deployment's emptyDir) whose first pulls arrive together. Nix creates
# /nix/var/nix at its first opening of a store without a lock, so two first
# processes at once can fail ("creating symlink ... File exists"): the
# server opens the store once at start, before it answers.
t_fresh_store() {
  local pids p name got round names="app plain stock other hello greeter busybox multiout shell/hello hello/greeter"
  # Three fresh stores, ten first pulls at once each, with room for them
  # all to run nix together (the race is a matter of timing: without the
  # opening at start, about one fresh store in six lost a pull here).
  for round in 1 2 3; do
    start_node PF "$W/state-fresh-store-$round" "" --packages "$W/repo" --max-builds 10 --max-processes 20
    pids=()
    for name in $names; do
      curl -fsS -o "$W/fresh-$round-${name//\//-}" "http://127.0.0.1:$PF/v2/$name/manifests/latest" &
      pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    for name in $names; do
      got=$(json 'd["schemaVersion"]' < "$W/fresh-$round-${name//\//-}")
      eq "$got" 2 "manifest of $name, pulled first on fresh store $round"
    done
    stop_server "$PF_PID"
  done
}
check "a fresh store (empty /nix): the server's first pulls, arriving together, all succeed" t_fresh_store

hmac_hex() { # hmac_hex SECRET_FILE BODY_FILE: HMAC-SHA256 of the body, as forges sign it
  python3 -c 'import hmac, hashlib, sys; print(hmac.new(open(sys.argv[1], "rb").read().strip(), open(sys.argv[2], "rb").read(), hashlib.sha256).hexdigest())' "$1" "$2"
}
push_branch() { # push_branch BRANCH VERSION: a new commit on BRANCH of the fixture repo, made in a clone and pushed
  rm -rf "$W/clone-$1"
  git clone -q "$W/repo" "$W/clone-$1"
  printf '%s' "$2" > "$W/clone-$1/version"
  git -C "$W/clone-$1" -c user.email=t@t -c user.name=t commit -qam "$2"
  git -C "$W/clone-$1" push -q origin "HEAD:refs/heads/$1"
}

t_webhook() {
  local code out before after
  head -c 32 /dev/urandom | base64 > "$W/hook-secret"
  start_server PH "$W/state-hook" --warm app,plain:v1 --webhook-secret "$W/hook-secret"
  wait_for_line "$W/server-$PH.log" 'warmed image=app:latest' 60
  # A branch pulled before it exists: the refs listed then say no...
  code=$(status "http://127.0.0.1:$PH/v2/app/manifests/hooked")
  eq "$code" 404 "app:hooked before the push"
  push_branch hooked hooked-v1
  # ...and are remembered (for --manifest-ttl), so a pull right after the push says no too.
  code=$(status "http://127.0.0.1:$PH/v2/app/manifests/hooked")
  eq "$code" 404 "app:hooked just after the push, before the webhook"
  printf '{"ref":"refs/heads/hooked","after":"%s","repository":{"default_branch":"main"}}' "$(git -C "$W/repo" rev-parse hooked)" > "$W/hook.json" # lint-ok: the branch was just pushed
  before=$(builds "$PH")
  # Forged (another secret): 403, nothing warmed or forgotten. (Unsigned,
  # wrong GitLab token, no forge, Gitea non-push, no secret: tests/protocol/hooks.rs.)
  head -c 32 /dev/urandom | base64 > "$W/other-secret"
  code=$(curl -s -o "$W/hook.out" -w '%{http_code}' -X POST --data-binary "@$W/hook.json" -H 'X-GitHub-Event: push' \
    -H "X-Hub-Signature-256: sha256=$(hmac_hex "$W/other-secret" "$W/hook.json")" "http://127.0.0.1:$PH/hooks/push") # lint-ok: hmac_hex of files just written
  eq "$code" 403 "a forged GitHub delivery"
  out=$(json 'd["errors"][0]["code"]' < "$W/hook.out")
  eq "$out" DENIED "the forged delivery's error"
  sleep 1
  after=$(builds "$PH")
  eq "$after" "$before" "builds after a forged delivery"
  code=$(status "http://127.0.0.1:$PH/v2/app/manifests/hooked")
  eq "$code" 404 "app:hooked after a forged delivery (refs not forgotten)"
  # Signed: the refs are asked again and app:hooked is built (plain too,
  # its tag replaced by the pushed one), with no pull.
  sig=$(hmac_hex "$W/hook-secret" "$W/hook.json")
  code=$(curl -s -o "$W/hook.out" -w '%{http_code}' -X POST --data-binary "@$W/hook.json" -H 'X-GitHub-Event: push' \
    -H "X-Hub-Signature-256: sha256=$sig" "http://127.0.0.1:$PH/hooks/push")
  eq "$code" 202 "a signed GitHub delivery"
  out=$(json 'sorted(d["warming"])' < "$W/hook.out")
  eq "$out" "['app:hooked', 'plain:hooked']" "what the push warms"
  wait_for_line "$W/server-$PH.log" 'warmed image=app:hooked' 60
  wait_for_line "$W/server-$PH.log" 'warmed image=plain:hooked' 60
  before=$(builds "$PH")
  out=$(greeting "127.0.0.1:$PH/app:hooked")
  eq "$out" "GREETING=hooked-v1" "app:hooked after the webhook"
  after=$(builds "$PH")
  eq "$after" "$before" "builds of the first pull after the webhook"
  # GitLab: a tag push, with the secret as its token.
  git -C "$W/repo" tag hooktag hooked
  printf '{"ref":"refs/tags/hooktag","after":"%s","project":{"default_branch":"main"}}' "$(git -C "$W/repo" rev-parse hooktag)" > "$W/hook-tag.json" # lint-ok: the tag was just made
  code=$(curl -s -o "$W/hook.out" -w '%{http_code}' -X POST --data-binary "@$W/hook-tag.json" -H 'X-Gitlab-Event: Tag Push Hook' \
    -H "X-Gitlab-Token: $(cat "$W/hook-secret")" "http://127.0.0.1:$PH/hooks/push") # lint-ok: the secret file was written above
  eq "$code" 202 "a GitLab tag push"
  wait_for_line "$W/server-$PH.log" 'warmed image=app:hooktag' 60
}
check "push webhooks (GitHub, GitLab): a push warms the --warm images at its ref; a forged one changes nothing" t_webhook

# ------------------------------------------------ what the registry is doing
# Screenshots of every page are kept here for review.
ARTIFACTS=${FLAKEPORT_ARTIFACTS:-$ROOT/target/e2e-artifacts}
web_check() { /usr/bin/python3 "$ROOT/tests/web_check.py" "$@"; } # Debian's python3 has python3-selenium
wait_for_page() { # wait_for_page URL TEXT SECS: until the page shows TEXT
  local page
  for _ in $(seq $(($3 * 10))); do
    page=$(curl -fsS "$1")
    if grep -qF -- "$2" <<<"$page"; then return 0; fi
    sleep 0.1
  done
  echo "$1 did not show '$2' within $3 s"; return 1
}

t_web() {
  local base go chatty digest out code shots=$ARTIFACTS/web
  start_server PW "$W/state-web" --packages "$W/repo"
  base=http://127.0.0.1:$PW
  rm -rf "$shots"
  unpack "127.0.0.1:$PW/app:latest" "$W/web-app"
  digest=$(curl -fsS -o /dev/null -D - -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$base/v2/app/manifests/latest" | tr -d '\r' | awk 'tolower($1) == "docker-content-digest:" {print $2}')
  has_line "$digest" '^sha256:[0-9a-f]{64}$' "app's manifest digest"
  # chatty prints a line, then waits for $go before its second.
  go=/tmp/flakeport-chatty-$(cat "$W/repo/nonce")
  rm -f "$go"
  echo "$go" >> "$W/made-dirs"
  skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$PW/chatty:latest" "oci:$W/web-chatty:x" > "$W/web-chatty.log" 2>&1 &
  chatty=$!
  echo "$chatty" >> "$W/pids"
  wait_for_page "$base/" "chatty: first line" 60
  # In Chromium: the log so far without JavaScript; with it, the second
  # line arrives in the open page while the build still runs.
  web_check live "$base" "$go" "$shots"
  wait "$chatty"
  code=$(status "$base/v2/failing/manifests/latest")
  eq "$code" 500 "a pull of failing"
  # The home page: images, builds, the failure and its log, markup as text.
  web_check home "$base" "$shots"
  web_check image "$base" app "$digest" "$shots"
  web_check build "$base" chatty "$shots"
  # A package path has its page too.
  unpack "127.0.0.1:$PW/shell/hello:latest" "$W/web-pkg"
  out=$(curl -fsS "$base/images/shell/hello")
  has_line "$out" 'Tag <code>latest</code>' "the page of shell/hello"
  # Only our script runs, and a hostile Host header is never echoed.
  curl -fsS -D "$W/web.h" -o /dev/null "$base/"
  has_header "$W/web.h" "content-security-policy: default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
  out=$(curl -fsS -H 'Host: <script>alert(1)</script>' "$base/")
  has_line "$out" 'docker pull HOST:5000/' "pull lines under a hostile Host header"
  if grep -qF '<script>alert' <<<"$out"; then echo "the Host header was echoed as markup"; return 1; fi
  # A name that is no name: the error page shows it escaped, with its status.
  out=$(curl -s -w '\n%{http_code}' "$base/images/%3Cscript%3E")
  code=$(tail -1 <<<"$out")
  eq "$code" 400 "the page of an invalid name"
  has_line "$out" '&lt;script&gt;' "the invalid name, escaped"
  # (Here any other name may be a package path; the flake-only server knows.)
  code=$(status "http://$R/images/nosuchimage")
  eq "$code" 404 "the page of an unknown name"
  code=$(status "$base/builds/999999")
  eq "$code" 404 "the page of an unknown build"
  ls "$shots"/home.png "$shots"/home-live-build.png "$shots"/home-no-javascript.png "$shots"/image-app.png "$shots"/build.png
}
check "web page: builds' logs live in Chromium (and without JavaScript), recent builds and failures, image and build pages; markup in names, logs and descriptions shown as text" t_web


t_metrics() {
  local m got prom_port prom_pid log line code
  start_server PX "$W/state-metrics" --packages "$W/repo"
  m=$PX
  # Real pulls for Prometheus to read (what each counts: tests/protocol/metrics.rs).
  unpack "127.0.0.1:$m/stock:latest" "$W/metrics-stock"
  unpack "127.0.0.1:$m/stock:latest" "$W/metrics-stock"
  code=$(status "http://127.0.0.1:$m/v2/failing/manifests/latest")
  eq "$code" 500 "a pull of failing"
  code=$(status "http://127.0.0.1:$m/v2/no/such/image/manifests/latest")
  eq "$code" 404 "a pull of an unknown package path"
  code=$(status "http://127.0.0.1:$m/v2/shell/hello/manifests/latest")
  eq "$code" 200 "a pull of shell/hello"
  # The terminal: one line per pull, with its time to manifest and bytes.
  log=$(cat "$W/server-$m.log")
  has_line "$log" "^[^ ]+ +pulled stock:latest by 127\.0\.0\.1: manifest in [0-9.]+ m?s, [0-9]+ of [0-9]+ blobs, [0-9.]+ [KM]iB in " "a pull line"
  line=$(grep -cE "pulled stock:latest by 127\\.0\\.0\\.1: manifest in [^,]+, ([1-9][0-9]*) of \\1 blobs" <<<"$log")
  eq "$line" 2 "pull lines for two pulls of stock"
  # A real Prometheus scrapes it; the Grafana dashboard's queries and the
  # alert rules run there.
  prom_port=$(free_port)
  mkdir -p "$W/prom"
  cp "$ROOT/examples/prometheus/alerts.yaml" "$W/prom/alerts.yaml"
  printf 'global: {scrape_interval: 1s, evaluation_interval: 1s}\nrule_files: [alerts.yaml]\nscrape_configs:\n  - job_name: flakeport\n    static_configs: [{targets: ["127.0.0.1:%s"]}]\n' "$m" > "$W/prom/prometheus.yml"
  promtool check config "$W/prom/prometheus.yml"
  prometheus --config.file="$W/prom/prometheus.yml" --storage.tsdb.path="$W/prom/data" --web.listen-address="127.0.0.1:$prom_port" > "$W/prom/log" 2>&1 &
  prom_pid=$!
  echo "$prom_pid" >> "$W/pids"
  for _ in $(seq 100); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$prom_port/-/ready"; then break; fi
    sleep 0.1
  done
  python3 "$ROOT/tests/prometheus_check.py" "http://127.0.0.1:$prom_port" "http://127.0.0.1:$m/metrics" "$ROOT/examples/grafana/flakeport.json" "$W/prom/alerts.yaml"
  kill "$prom_pid"
}
check "metrics after real pulls, read by a real Prometheus with the Grafana dashboard's queries and the alert rules; one terminal line per pull" t_metrics

t_log_json() {
  local log
  start_server PJ "$W/state-json" --log-format json
  unpack "127.0.0.1:$PJ/app:latest" "$W/json-app"
  sleep 0.5
  log="$W/server-$PJ.log"
  # Every line is one JSON object; the pull's has its fields.
  python3 - "$log" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
assert lines, "no log"
events = [json.loads(l) for l in lines]
pulls = [e for e in events if e.get("target") == "flakeport::pull"]
assert len(pulls) == 1, pulls
p = pulls[0]
assert p["message"].startswith("pulled app:latest by 127.0.0.1: manifest in "), p
assert p["name"] == "app" and p["reference"] == "latest" and p["client"] == "127.0.0.1", p
assert p["bytes"] > 0 and p["blobs_sent"] == p["blobs"] > 0, p
PY
}
check "--log-format json: every log line is a JSON object; a pull's has its name, client, blobs and bytes" t_log_json

# ---------------------------------------------------------------- provenance
TOOLS_PY=$ROOT/target/tools-venv/bin/python
t_provenance() {
  local oci docker roots d out
  local OCI_M=application/vnd.oci.image.manifest.v1+json DOCKER_M=application/vnd.docker.distribution.manifest.v2+json
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$W/signing.pem" 2>/dev/null
  start_server PS "$W/state-signed" --signing-key "$W/signing.pem"
  curl -fsS -o "$W/cosign.pub" "http://127.0.0.1:$PS/.well-known/flakeport/cosign.pub"
  openssl pkey -pubin -in "$W/cosign.pub" -noout
  # The image's store paths, read from what a client unpacked, and their
  # closure as Nix gives it: what the SBOMs must list, one for one.
  unpack "127.0.0.1:$PS/app:latest" "$W/prov-app"
  roots=$(find "$W/prov-app/bundle/rootfs/nix/store" -mindepth 1 -maxdepth 1 -printf '/nix/store/%f\n' | sort)
  atleast "$(wc -l <<<"$roots")" 3 "store paths in app"
  # shellcheck disable=SC2086
  nix path-info -r $roots > "$W/prov-closure"
  oci=$(curl -fsS -o /dev/null -w '%header{docker-content-digest}' -H "Accept: $OCI_M" "http://127.0.0.1:$PS/v2/app/manifests/latest")
  docker=$(curl -fsS -o /dev/null -w '%header{docker-content-digest}' -H "Accept: $DOCKER_M" "http://127.0.0.1:$PS/v2/app/manifests/latest")
  ne "$oci" "$docker" "OCI and Docker manifest digests"
  for d in "$oci" "$docker"; do
    LICENSES=greeter=MIT "$TOOLS_PY" "$ROOT/tests/provenance_check.py" "http://127.0.0.1:$PS" app "$d" "$W/prov-closure" "$W/cosign.pub"
  done
  # The image page links each document.
  curl -fsS -o "$W/prov-page.html" "http://127.0.0.1:$PS/images/app"
  python3 - "$W/prov-page.html" "http://127.0.0.1:$PS" <<'PY'
import json, re, sys, urllib.request
page, base = open(sys.argv[1]).read(), sys.argv[2]
links = dict((label, href) for href, label in re.findall(r'<a href="(/v2/app/[^"]+)">([^<]+)</a>', page))
want = {"SBOM (CycloneDX)": "bomFormat", "SBOM (SPDX)": "spdxVersion", "Build provenance (SLSA)": "predicateType", "Signature payload (cosign)": "critical"}
for label, key in want.items():
    assert label in links, (label, links)
    doc = json.load(urllib.request.urlopen(base + links[label]))
    assert key in doc, (label, doc)
assert "referrers" in links and json.load(urllib.request.urlopen(base + links["referrers"]))["manifests"], links
PY
  # Clients pull the image as before: the same manifest as a server that
  # signs nothing, and containerd runs it.
  start_server PN "$W/state-unsigned"
  d=$(curl -fsS -o /dev/null -w '%header{docker-content-digest}' -H "Accept: $OCI_M" "http://127.0.0.1:$PN/v2/app/manifests/latest")
  eq "$d" "$oci" "app's digest on a server without a key"
  ctr image pull --plain-http "127.0.0.1:$PS/app:latest" >/dev/null
  out=$(ctr run --rm "127.0.0.1:$PS/app:latest" "fpp-$$")
  eq "$out" "greetings $(cat "$W/repo/version") as 1000" "ctr run app from the signing server"
  ctr image rm "127.0.0.1:$PS/app:latest" >/dev/null
  # A restart builds nothing and answers the same: the record was kept,
  # the documents and signatures are deterministic (the signed reference
  # is the Host a client used, so both ask by the same one).
  curl -fsS -H 'Host: registry.test:5000' -o "$W/prov-before" "http://127.0.0.1:$PS/v2/app/referrers/$oci"
  stop_server "$PS_PID"
  start_server PS2 "$W/state-signed" --signing-key "$W/signing.pem"
  curl -fsS -H 'Host: registry.test:5000' -o "$W/prov-after" "http://127.0.0.1:$PS2/v2/app/referrers/$oci"
  cmp "$W/prov-before" "$W/prov-after"
  grep -q 'cosign.artifact.sig' "$W/prov-after"
  # Without a key: SBOMs and provenance, no signature, nothing pretends.
  LICENSES=greeter=MIT "$TOOLS_PY" "$ROOT/tests/provenance_check.py" "http://127.0.0.1:$PN" app "$oci" "$W/prov-closure"
  local R=127.0.0.1:$PN
  expect_error GET "/v2/app/manifests/sha256-${oci#sha256:}.sig" 404 MANIFEST_UNKNOWN
  expect_error GET /.well-known/flakeport/cosign.pub 404 UNSUPPORTED "--signing-key"
  # cosign's own key file (scrypt N=32768 as cosign writes it) opens with
  # COSIGN_PASSWORD: the same public key.
  "$TOOLS_PY" "$ROOT/tests/cosign_key.py" "$W/signing.pem" 'pass word' 32768 > "$W/cosign.key"
  COSIGN_PASSWORD='pass word' start_server PS3 "$W/state-cosign-key" --signing-key "$W/cosign.key"
  curl -fsS -o "$W/cosign3.pub" "http://127.0.0.1:$PS3/.well-known/flakeport/cosign.pub"
  cmp "$W/cosign.pub" "$W/cosign3.pub"
  if COSIGN_PASSWORD=wrong "$BIN" serve "$W/repo" --listen 127.0.0.1:1 --state-dir "$W/state-ck" --signing-key "$W/cosign.key" > "$W/ck.log" 2>&1; then echo "started with a wrong password"; return 1; fi
  grep -q 'wrong COSIGN_PASSWORD' "$W/ck.log"
  # A key that is no P-256 private key stops the server at start, named.
  openssl genpkey -algorithm ed25519 -out "$W/ed.pem" 2>/dev/null
  if "$BIN" serve "$W/repo" --listen 127.0.0.1:1 --state-dir "$W/state-ed" --signing-key "$W/ed.pem" > "$W/ed.log" 2>&1; then echo "started with an ed25519 key"; return 1; fi
  grep -q -- '--signing-key' "$W/ed.log"
}
check "provenance: referrers API and tag schema; the image page links each document; CycloneDX and SPDX valid per their schemas and equal to nix path-info -r of the image's store paths; SLSA statement; cosign signature verified by openssl, cosign key files opened; deterministic across a restart; pulls unchanged" t_provenance

# The protocol checks that run the real binary over real Nix (the `built::`
# tests of tests/protocol/) on this run's Nix too: scripts/test runs them
# all with the host's. The in-process ones run the host's Nix, so not here.
t_http_tests() {
  (cd "$ROOT"; FLAKEPORT_BIN=$BIN cargo test --release --locked --test protocol -- --include-ignored built:: 2>&1) > "$W/http-tests.log" || { tail -40 "$W/http-tests.log"; return 1; }
  has_line "$(cat "$W/http-tests.log")" '^test result: ok\. [1-9][0-9]* passed; 0 failed' "tests/protocol built::" # lint-ok: cat of a file
}
if [ -n "${E2E_NIX_ROOT:-}" ]; then
  check "tests/protocol built:: on this Nix: manifests, blobs (ranges, HEAD, compressed, restarts, store changed after the digest pass), tags, catalog, warm, metrics, SIGTERM, manifest TTL" t_http_tests
fi

# ---------------------------------------------------------------- Nix versions
# The same flake revision built by Debian 13's Nix (2.26, in its own root
# and store) gives the same bytes as the host's: every manifest, config and
# layer. Checked from the host's run only; E2E_NIX=debian13 runs every other
# check on 2.26 too.
t_nix_versions() {
  local root port here there log image digest digests got
  root=$(nix_root)
  mkdir -p "$root/nix"
  start_server PV "$W/state-versions-host" --packages "$W/repo"
  port=$(free_port)
  IN_ROOT_BIND=${ROOT#/} "$ROOT/tests/in-root" "$root" "$BIN" serve "$W/repo" --packages "$W/repo" \
    --listen "127.0.0.1:$port" --state-dir "$W/state-versions-226" >>"$W/server-$port.log" 2>&1 &
  echo "$!" >> "$W/pids"
  await_server "$port"
  log=$(cat "$W/server-$port.log")
  has_line "$log" 'using Nix nix=Nix 2\.26' "the second server's Nix"
  for image in app:latest app:v1 plain:latest multiout:latest stock:latest stock-owned:v1 layered:latest \
    based:latest stock-based:latest n2c:latest pulled:latest pulled-gz:latest pulled-zst:latest oci-tar:latest fakeroot:latest \
    shell/hello:latest greeter/hello:v1; do
    here=$(curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://127.0.0.1:$PV/v2/${image%%:*}/manifests/${image##*:}")
    there=$(curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://127.0.0.1:$port/v2/${image%%:*}/manifests/${image##*:}")
    eq "$there" "$here" "$image's manifest on Nix 2.26 and on the host's"
    # Every blob 2.26's server sends hashes to its digest: config and layers.
    digests=$(json '"\n".join([d["config"]["digest"]] + [l["digest"] for l in d["layers"]])' <<<"$there")
    atleast "$(wc -l <<<"$digests")" 2 "$image's config and layers" # lint-ok: wc of a variable
    for digest in $digests; do
      got=$(blob_sha "http://127.0.0.1:$port/v2/${image%%:*}/blobs/$digest")
      eq "$got" "$digest" "$image blob from Nix 2.26"
    done
  done
}
if [ -z "${E2E_NIX_ROOT:-}" ]; then
  check "Nix 2.26 (a Debian 13 root) and the host's Nix serve byte-identical manifests, configs and layers for one revision: conf v1, tags, plain and multi-output packages, nixpkgs confs, fromImage, archives (plain, gzip, zstd, OCI), nix2container, fakeroot, package paths" t_nix_versions
fi

. "$ROOT/tests/e2e-snapshotter.sh"

echo
echo "e2e: $PASSED passed, ${#FAILED[@]} failed"
if [ "${#FAILED[@]}" -gt 0 ]; then
  printf '  failed: %s\n' "${FAILED[@]}"
  for f in "$W"/server-*.log; do echo "== $f"; tail -30 "$f"; done
  exit 1
fi
