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
  (
    cd "$dest"
    git init -q -b main .
    git add -A
    git -c user.email=t@t -c user.name=t commit -qm v1
    git tag v1
    printf v2 > version
    git -c user.email=t@t -c user.name=t commit -qam v2
  )
}
