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

start_snapshotter() {
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
made_count() { awk '/layer made from the store/ {n++} END {print n+0}' "$SN/snap.log"; }
layers_of() { # layers_of NAME:TAG: the layer digests of its manifest, one a line
  curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$R/v2/${1%%:*}/manifests/${1##*:}" |
    json '"\n".join(l["digest"] for l in d["layers"])'
}
cri_pull() { "$CRI_PULL" --socket "$SN/ctd/containerd.sock" pull "$1" >/dev/null; }
top_chain() { # top_chain NAME:TAG: the chain ID of the image's top layer, from its config's diff_ids
  local config
  config=$(curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$R/v2/${1%%:*}/manifests/${1##*:}" | json 'd["config"]["digest"]')
  curl -fsS "http://$R/v2/${1%%:*}/blobs/$config" | python3 -c '
import hashlib, json, sys
chain = None
for d in json.load(sys.stdin)["rootfs"]["diff_ids"]:
    chain = d if chain is None else "sha256:" + hashlib.sha256(f"{chain} {d}".encode()).hexdigest()
print(chain)'
}
# tree_of SNAPSHOTTER NAME:TAG OUT: the image's tree as that snapshotter
# presents it (a view of its top layer, mounted as ctr says), listed.
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
  chain=$(top_chain "$2")
  sctr -n "$ns" snapshots --snapshotter "$1" view "view-$$" "$chain" >/dev/null
  mount=$(sctr -n "$ns" snapshots --snapshotter "$1" mounts "$SN/mnt" "view-$$")
  eval "$mount"
  python3 "$ROOT/tests/tree_listing.py" "$SN/mnt" > "$3"
  umount "$SN/mnt"
  sctr -n "$ns" snapshots --snapshotter "$1" rm "view-$$"
}
same_tree() { # same_tree A B WHAT
  if ! diff -u "$1" "$2" > "$SN/tree.diff"; then echo "$3: the trees differ"; head -40 "$SN/tree.diff"; return 1; fi
}

start_snapshotter || exit 1
start_sn_containerd || exit 1

t_snap_run() {
  local before after layers n d out
  layers=$(layers_of app:latest)
  n=$(wc -l <<<"$layers")
  before=$(made_count)
  cri_pull "$R/app:latest"
  after=$(made_count)
  eq "$((after - before))" "$n" "layers of app made from the store"
  # Not a byte of them fetched: containerd's content store has none.
  for d in $layers; do
    if sctr -n k8s.io content info "$d" >/dev/null 2>&1; then echo "layer $d was fetched"; return 1; fi
  done
  out=$(sctr -n k8s.io run --rm --snapshotter flakeport "$R/app:latest" "sn-$$")
  eq "$out" 'greetings v2 as 1000' "ctr run app on the flakeport snapshotter"
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
