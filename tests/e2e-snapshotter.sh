# Sourced by tests/e2e.sh, last (its nix-collect-garbage must not take
# paths from other checks): `flakeport snapshotter` beside a containerd of
# its own, whose proxy plugin "flakeport" is also CRI's snapshotter. It
# reads the state dir of the server at $R. Its root and GC roots are under
# /nix: a hard link needs the store's mount. The same rules as e2e.sh: one
# failing step fails its check (see the comment at the top of e2e.sh).

SN=$W/sn
SN_ROOT=/nix/var/flakeport-e2e-$$
SN_GCROOTS=/nix/var/nix/gcroots/flakeport-e2e-$$
mkdir -p "$SN/ctd" "$SN/mnt"
echo "$SN_ROOT" >> "$W/made-dirs"
echo "$SN_GCROOTS" >> "$W/made-dirs"
CRI_PULL=$ROOT/target/release/examples/cri-pull

# As NixOS mounts it: /nix/store read-only over itself, which a hard link
# cannot cross (the snapshotter takes it off in a mount namespace of its
# own).
start_snapshotter() {
  unshare -m --propagation private sh -ec 'mount --bind /nix/store /nix/store; mount -o remount,ro,bind /nix/store; exec "$@"' sh \
    "$SNAP_BIN" snapshotter --socket "$SN/snap.sock" --root "$SN_ROOT" --registry-state "$W/state" \
    --gc-roots "$SN_GCROOTS" >> "$SN/snap.log" 2>&1 &
  SN_PID=$!
  echo "$SN_PID" >> "$W/pids"
  for _ in $(seq 100); do if [ -S "$SN/snap.sock" ]; then return 0; fi; sleep 0.1; done
  echo "the snapshotter did not start"; cat "$SN/snap.log"; return 1
}
cat > "$SN/ctd/config.toml" <<TOML
version = 2
root = "$SN/ctd/root"
state = "$SN/ctd/state"
[grpc]
  address = "$SN/ctd/containerd.sock"
[proxy_plugins]
  [proxy_plugins.flakeport]
    type = "snapshot"
    address = "$SN/snap.sock"
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "flakeport"
TOML
start_sn_containerd() {
  rm -f "$SN/ctd/containerd.sock"
  containerd --config "$SN/ctd/config.toml" >> "$SN/ctd/log" 2>&1 &
  SN_CTD_PID=$!
  echo "$SN_CTD_PID" >> "$W/pids"
  for _ in $(seq 100); do if [ -S "$SN/ctd/containerd.sock" ]; then return 0; fi; sleep 0.1; done
  echo "containerd did not start"; tail "$SN/ctd/log"; return 1
}
sctr() { ctr --address "$SN/ctd/containerd.sock" "$@"; }
log_count() { awk -v what="$1" 'index($0, what) {n++} END {print n+0}' "$SN/snap.log"; } # log_count TEXT: lines of the snapshotter's log with TEXT
made_count() { log_count 'layer made from the store'; }
layers_of() { # layers_of NAME:TAG: the layer digests of its manifest, one a line
  curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$R/v2/${1%%:*}/manifests/${1##*:}" |
    json '"\n".join(l["digest"] for l in d["layers"])'
}
cri_pull() { "$CRI_PULL" --socket "$SN/ctd/containerd.sock" pull "$1" >/dev/null; }
top_config() { # top_config NAME:TAG: the digest of the image's config
  curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$R/v2/${1%%:*}/manifests/${1##*:}" | json 'd["config"]["digest"]'
}
# tree_of SNAPSHOTTER NAME:TAG OUT: the image's tree as that snapshotter
# presents it (a container's snapshot, mounted as ctr says), listed.
# flakeport's is pulled as kubelet pulls (CRI, namespace k8s.io): `ctr
# images pull` of containerd 1.6 and 1.7 fetches every layer first and
# unpacks without the label that names a layer's chain ID. overlayfs's is
# pulled by ctr, in a namespace of its own.
tree_of() {
  local ns=k8s.io chain mount
  if [ "$1" = flakeport ]; then
    cri_pull "$R/$2"
  else
    ns=plain
    sctr -n "$ns" images pull --plain-http --snapshotter "$1" "$R/$2" >/dev/null
  fi
  # A container's snapshot: a bare `snapshots view` is no GC root, and
  # containerd's collector, run after a pull's mutations, removed one
  # while it was listed. The container is one, and takes its snapshot
  # with it when removed.
  sctr -n "$ns" containers create --snapshotter "$1" "$R/$2" "tree-$$" >/dev/null
  mount=$(sctr -n "$ns" snapshots --snapshotter "$1" mounts "$SN/mnt" "tree-$$")
  eval "$mount"
  python3 "$ROOT/tests/tree_listing.py" "$SN/mnt" > "$3"
  umount "$SN/mnt"
  sctr -n "$ns" containers rm "tree-$$" >/dev/null
}
# same_tree A B WHAT: the listings are equal, but for the mtime of a
# directory a layer does not name (unpacking gives it the time it made
# it; a layer's own mtimes all predate this run).
SN_START=$(date +%s)
same_tree() {
  local a=$SN/tree.a b=$SN/tree.b
  awk -v t="$SN_START" 'BEGIN {FS = OFS = "\t"} $2 == "d" && $6 >= t {$6 = "unpacked"} {print}' "$1" > "$a" # lint-ok: awk
  awk -v t="$SN_START" 'BEGIN {FS = OFS = "\t"} $2 == "d" && $6 >= t {$6 = "unpacked"} {print}' "$2" > "$b" # lint-ok: awk
  if ! diff -u "$a" "$b" > "$SN/tree.diff"; then echo "$3: the trees differ"; head -40 "$SN/tree.diff"; return 1; fi
}

start_snapshotter || exit 1
start_sn_containerd || exit 1
# What app:latest prints: the checks before these pushed commits to main.
APP_SAYS="greetings $(git -C "$W/repo" show main:version) as 1000"

t_snap_run() {
  local before layers n d out have made linked log
  layers=$(layers_of app:latest)
  n=$(wc -l <<<"$layers")
  before=$(wc -l < "$SN/snap.log")
  cri_pull "$R/app:latest"
  made=$(tail -n +"$((before + 1))" "$SN/snap.log" | grep 'layer made from the store')
  eq "$(wc -l <<<"$made")" "$n" "layers of app made from the store" # lint-ok: wc of a variable
  # Every file linked, none copied, through NixOS's read-only store mount.
  linked=$(grep -c ' copied=0 ' <<<"$made")
  eq "$linked" "$n" "layers of app made of links alone"
  log=$(cat "$SN/snap.log")
  has_line "$log" 'took it off in the snapshotter' "the snapshotter's log at start"
  # Not a byte of them fetched: containerd's content store has none (but
  # has the config, fetched for this very pull).
  have=$(sctr -n k8s.io content ls -q)
  has_line "$have" "^$(top_config app:latest)\$" "the config in containerd's content store"
  for d in $layers; do
    if grep -qxF "$d" <<<"$have"; then echo "layer $d was fetched"; return 1; fi
  done
  out=$(sctr -n k8s.io run --rm --snapshotter flakeport "$R/app:latest" "sn-$$")
  eq "$out" "$APP_SAYS" "ctr run app on the flakeport snapshotter"
}
check "snapshotter: a CRI pull makes every layer of a nixlib image from the store (none fetched), ctr run runs it" t_snap_run

t_snap_trees() {
  local img
  for img in app:latest stock:v1 stock-owned:latest fakeroot:latest plain:latest based:latest stock-based:latest n2c:latest refs:latest; do
    tree_of overlayfs "$img" "$SN/tree-o-${img%%:*}"
    tree_of flakeport "$img" "$SN/tree-f-${img%%:*}"
    same_tree "$SN/tree-o-${img%%:*}" "$SN/tree-f-${img%%:*}" "$img under overlayfs and under flakeport"
  done
}
check "snapshotter: every file, directory, mode, owner, mtime and link of 9 images (nixlib, nixpkgs confs with owners, fakeroot, plain, fromImage, nix2container) as overlayfs unpacks them" t_snap_trees

t_snap_usage() {
  local chain usage size
  # app's bottom layer (busybox, made from the store): what Usage reports
  # is the tree's own directories and links, not the files it links.
  chain=$(layers_of app:latest)
  chain=$(head -1 <<<"$chain")
  size=$(curl -fsSI "http://$R/v2/app/blobs/$chain" | tr -d '\r' | awk 'tolower($1) == "content-length:" {print $2}')
  usage=$(sctr -n k8s.io snapshots --snapshotter flakeport usage "$chain" | awk 'NR == 2 {print $2 $3}')
  python3 - "$usage" "$size" <<'PY'
import re, sys
n, unit = re.fullmatch(r"([0-9.]+)\s*([KMG]?i?B)", sys.argv[1]).groups()
used = float(n) * {"B": 1, "KiB": 1024, "MiB": 1 << 20, "GiB": 1 << 30}[unit]
size = int(sys.argv[2])
if not 0 < used < size / 10:
    sys.exit(f"usage {used:.0f} bytes of a {size}-byte layer made from the store")
PY
}
check "snapshotter: Usage of a layer made from the store counts its own inodes, not the store's files" t_snap_usage

t_snap_store_untouched() {
  local f out mode held p
  f=$(out_path hello)/bin/hello
  cri_pull "$R/stock:v1"
  out=$(sctr -n k8s.io run --rm --snapshotter flakeport "$R/stock:v1" "snw-$$" /bin/sh -c "echo tampered >> $f; chmod 777 $f; tail -1 $f")
  eq "$out" tampered "the write inside the container"
  if grep -q tampered "$f"; then echo "the write reached $f"; return 1; fi
  mode=$(stat -c %a "$f")
  eq "$mode" 555 "mode of $f"
  # Nix finds every path the snapshots hold as it registered it.
  held=$(find "$SN_GCROOTS" -type l -printf '%f\n' | sort -u)
  atleast "$(wc -l <<<"$held")" 3 "store paths held by the snapshots" # lint-ok: wc of a variable
  for p in $held; do nix-store --verify-path "/nix/store/$p"; done
}
check "snapshotter: a write inside the container goes to its upper dir; the store paths verify" t_snap_store_untouched

# remove_image NAME:TAG: every record CRI made of it, and containerd's GC
# run at once (which removes the snapshots no image needs).
remove_image() {
  local refs config
  refs=$(sctr -n k8s.io images ls -q | grep -F "$R/${1%%:*}")
  config=$(top_config "$1")
  # shellcheck disable=SC2086
  sctr -n k8s.io images rm --sync $refs "$config" >/dev/null
}

t_snap_altered() {
  local ep d before after layers fetched have made
  ep=$(skopeo inspect --config --tls-verify=false "docker://$R/multiout:latest" | json 'd["config"]["Entrypoint"][0]')
  # The file written again, same bytes and mode, another mtime (a layer's
  # bytes do not carry it): the fingerprint flakeport vouched for no longer
  # holds, so the layer is fetched, and flakeport hashes it again.
  d=$(dirname "$ep")
  cp "$ep" "$SN/multiout.bin"
  chmod u+w "$d"
  rm "$ep"
  cp "$SN/multiout.bin" "$ep"
  chmod 555 "$ep"
  chmod u-w "$d"
  touch -h -d @1 "$d"
  before=$(log_count 'its files changed since flakeport hashed them')
  tree_of flakeport multiout:latest "$SN/tree-f-multiout"
  after=$(log_count 'its files changed since flakeport hashed them')
  eq "$((after - before))" 1 "layers of multiout left to containerd"
  # (After: containerd shares blobs between namespaces, so this pull
  # fetches nothing from flakeport.)
  tree_of overlayfs multiout:latest "$SN/tree-o-multiout"
  same_tree "$SN/tree-o-multiout" "$SN/tree-f-multiout" "multiout fetched and unpacked"
  layers=$(layers_of multiout:latest)
  have=$(sctr -n k8s.io content ls -q)
  fetched=()
  for d in $layers; do
    if grep -qxF "$d" <<<"$have"; then fetched+=("$d"); fi
  done
  eq "${#fetched[@]}" 1 "layers of multiout fetched"
  # That GET hashed the layer again and vouched for it: pulled again, every
  # layer is made from the store.
  remove_image multiout:latest
  before=$(wc -l < "$SN/snap.log")
  tree_of flakeport multiout:latest "$SN/tree-f-multiout"
  made=$(tail -n +"$((before + 1))" "$SN/snap.log" | grep 'layer made from the store')
  has_line "$made" "diff_id=\"${fetched[0]}\"" "the fetched layer, made from the store once flakeport hashed it again"
  same_tree "$SN/tree-o-multiout" "$SN/tree-f-multiout" "multiout made from the store"
  touch -d @1 "$ep"
}
check "snapshotter: a store path changed before Prepare is fetched instead (right bytes), and made from the store again once flakeport rehashed it" t_snap_altered

t_snap_gc() {
  local hello out held p roots
  hello=$(out_path hello)/bin/hello
  sctr -n k8s.io run -d --snapshotter flakeport "$R/stock:v1" "sngc-$$" /bin/sh -c 'sleep 60' >/dev/null
  nix-collect-garbage > "$SN/gc.log" 2>&1
  out=$(sctr -n k8s.io tasks exec --exec-id "x$$" "sngc-$$" "$hello")
  eq "$out" 'hello from nix' "hello in a container that ran through nix-collect-garbage"
  sctr -n k8s.io tasks kill -s KILL "sngc-$$"
  sctr -n k8s.io tasks rm -f "sngc-$$" >/dev/null
  sctr -n k8s.io containers rm "sngc-$$"
  # The snapshotter's GC roots are among what keeps each held path alive.
  held=$(find "$SN_GCROOTS" -type l -printf '%f\n' | sort -u)
  for p in $held; do
    nix-store --verify-path "/nix/store/$p"
    roots=$(nix-store --query --roots "/nix/store/$p")
    has_line "$roots" "^$SN_GCROOTS/" "GC roots of $p"
  done
  # Removing an image's snapshots releases their roots.
  remove_image multiout:latest
  held=$(find "$SN_GCROOTS" -type l -printf '%f\n')
  if grep -q multiout <<<"$held"; then echo "multiout still held after its image was removed"; return 1; fi
}
check "snapshotter: nix-collect-garbage while a container runs; GC roots per snapshot, released with it" t_snap_gc

t_snap_restart() {
  local out before after
  stop_server "$SN_PID"
  start_snapshotter
  # containerd dials again by itself (backoff up to 3 s).
  for _ in $(seq 20); do
    if out=$(sctr -n k8s.io run --rm --snapshotter flakeport "$R/app:latest" "snr-$$" 2>&1); then break; fi
    sleep 0.5
  done
  eq "$out" "$APP_SAYS" "ctr run app after the snapshotter restarted"
  stop_server "$SN_CTD_PID"
  start_sn_containerd
  out=$(sctr -n k8s.io run --rm --snapshotter flakeport "$R/app:latest" "snr2-$$")
  eq "$out" "$APP_SAYS" "ctr run app after containerd restarted"
  before=$(made_count)
  cri_pull "$R/app:v1"
  after=$(made_count)
  atleast "$((after - before))" 1 "layers of app:v1 made from the store after both restarts"
  out=$(sctr -n k8s.io run --rm --snapshotter flakeport "$R/app:v1" "snr3-$$")
  eq "$out" 'greetings v1 as 1000' "ctr run app:v1"
}
check "snapshotter: restarts of the snapshotter and of containerd keep every snapshot; pulls go on" t_snap_restart
