# Shared by tests/e2e.sh and scripts/quickstart: offline Nix settings and the
# fixture flake as a git repo with a tag.

# Never wait on cache.nixos.org; fail fast on indirect flake refs.
nix_offline_env() {
  local dir=$1
  echo '{"flakes":[],"version":2}' > "$dir/empty-registry.json"
  export NIX_CONFIG="experimental-features = nix-command flakes
sandbox = false
substituters =
flake-registry = $dir/empty-registry.json
build-users-group ="
}

# make_fixture_repo SRC_ROOT DEST: the test flake at tag v1 (version "v1"),
# then one more commit on the default branch (version "v2").
make_fixture_repo() {
  local src=$1 dest=$2
  rm -rf "$dest"; mkdir -p "$dest/bb/bin"
  cp "$src"/examples/offline/*.nix "$dest/"
  cp -r "$src/nixlib" "$dest/nixlib"
  cp "$(command -v busybox)" "$dest/bb/bin/busybox"
  printf v1 > "$dest/version"
  printf '%s' "$$-$RANDOM-$(date +%s%N)" > "$dest/nonce"
  make_base_images "$dest/images"
  (
    cd "$dest"
    git init -q -b main .
    git add -A
    git -c user.email=t@t -c user.name=t commit -qm v1
    git tag v1
    # A commit reachable from main that no ref points at.
    printf mid > notes
    git add notes
    git -c user.email=t@t -c user.name=t commit -qm mid
    printf v2 > version
    git -c user.email=t@t -c user.name=t commit -qam v2
    # A pull-request head, as a forge keeps it: reachable from no branch
    # or tag, so never built.
    git checkout -q -b pr
    printf pr > version
    git -c user.email=t@t -c user.name=t commit -qam pr
    git update-ref refs/pull/1/head HEAD
    git checkout -q main
    git branch -q -D pr
  )
}

# make_base_images DEST: a two-layer busybox image made with umoci, written
# by skopeo as every archive kind a flake can hold: docker-archive (plain,
# gzipped and zstd-compressed, as pullImage and buildImage leave them), OCI layout as a
# directory and as a tar; an arm64 one, and a truncated one.
make_base_images() {
  local dest=$1 t
  t=$(mktemp -d)
  mkdir -p "$dest"
  umoci init --layout "$t/oci"
  umoci new --image "$t/oci:base"
  umoci unpack --rootless --image "$t/oci:base" "$t/bundle" >/dev/null
  mkdir -p "$t/bundle/rootfs/bin" "$t/bundle/rootfs/etc" "$t/bundle/rootfs/srv"
  cp "$(command -v busybox)" "$t/bundle/rootfs/bin/busybox"
  for a in sh cat ls echo id stat env; do ln -s busybox "$t/bundle/rootfs/bin/$a"; done
  umoci repack --refresh-bundle --image "$t/oci:base" "$t/bundle" >/dev/null
  echo "base image" > "$t/bundle/rootfs/etc/base-release"
  umoci repack --image "$t/oci:base" "$t/bundle" >/dev/null
  umoci config --image "$t/oci:base" --config.env PATH=/bin --config.env BASE=from-base \
    --config.workingdir /srv --config.cmd /bin/sh --config.label org.flakeport.base=yes
  umoci config --image "$t/oci:base" --tag arm64 --architecture arm64
  skopeo copy -q "oci:$t/oci:base" "docker-archive:$dest/base.tar:base:latest"
  gzip -n -c "$dest/base.tar" > "$dest/base.tar.gz"
  # As nixpkgs' buildImage writes it with compressor = "zstd".
  zstd -q -c -T1 "$dest/base.tar" > "$dest/base.tar.zst"
  skopeo copy -q "oci:$t/oci:base" "oci:$dest/base-oci:latest"
  skopeo copy -q "oci:$t/oci:base" "oci-archive:$dest/base-oci.tar:latest"
  skopeo copy -q "oci:$t/oci:arm64" "docker-archive:$dest/arm64.tar:base:arm64"
  head -c 1500000 "$dest/base.tar" > "$dest/truncated.tar"
  rm -rf "$t"
}

# ------------------------------------------------------------ Debian roots
# A second Nix (Debian 13's 2.26) and a fresh machine (Debian 12) are
# debootstrapped roots, made once and kept under $FLAKEPORT_ROOTS. A root is
# remade when its recipe (suite and packages) changes.
FLAKEPORT_ROOTS=${FLAKEPORT_ROOTS:-/var/cache/flakeport/roots}

debian_mirror() {
  local m
  m=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null)
  if [ -z "$m" ]; then m=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null); fi
  echo "${m:-http://deb.debian.org/debian}"
}

# debian_root NAME SUITE [PACKAGES...]: prints the root's directory, made
# with debootstrap (minbase) plus PACKAGES if it is missing or its recipe
# changed. Needs debootstrap and the Debian registry.
debian_root() {
  local name=$1 suite=$2 dir recipe
  shift 2
  dir=$FLAKEPORT_ROOTS/$name
  recipe="$suite $*"
  if [ -f "$dir/.flakeport-recipe" ] && [ "$(cat "$dir/.flakeport-recipe")" = "$recipe" ]; then # lint-ok
    echo "$dir"; return 0
  fi
  command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null || return 1
  echo "== debootstrap $suite into $dir (once; kept for later runs)" >&2
  rm -rf "$dir" "$dir.tmp"; mkdir -p "$FLAKEPORT_ROOTS"
  debootstrap --variant=minbase "$suite" "$dir.tmp" "$(debian_mirror)" >"$FLAKEPORT_ROOTS/$name.log" 2>&1 ||
    { echo "debootstrap $suite failed; see $FLAKEPORT_ROOTS/$name.log" >&2; return 1; }
  if [ "$#" -gt 0 ]; then
    in_root "$dir.tmp" sh -c 'export DEBIAN_FRONTEND=noninteractive; apt-get -f install -y -qq && apt-get install -y -qq --no-install-recommends "$@"' sh "$@" \
      >>"$FLAKEPORT_ROOTS/$name.log" 2>&1 || { echo "apt-get install $* in $dir failed; see $FLAKEPORT_ROOTS/$name.log" >&2; return 1; }
  fi
  echo "$recipe" > "$dir.tmp/.flakeport-recipe"
  mv "$dir.tmp" "$dir"
  echo "$dir"
}

# nix_root: the Debian 13 root with its Nix (2.26), git, and the host tools
# the fixture's images run in their builds (fakeroot, proot).
nix_root() { debian_root trixie trixie nix-bin git ca-certificates fakeroot proot; }

# in_root DIR CMD [ARGS...]: tests/in-root (CMD inside the root DIR).
FLAKEPORT_TESTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
in_root() { "$FLAKEPORT_TESTS/in-root" "$@"; }
