#!/usr/bin/env bash
# The README's first command on fresh machines: `scripts/quickstart --check`
# in freshly debootstrapped Debian 12 and Debian 13 roots (minbase: no Nix,
# no git, no compiler, no CA certificates), as a new user would run it. The
# root reaches only the package registries, as this machine does; the Rust
# toolchain and the cargo registry cache are bound in from here (rustup
# cannot be fetched). quickstart installs the rest, builds flakeport,
# serves the example, pulls `app` with skopeo, runs it, and stops.
#
# A pristine root per suite is debootstrapped once and kept (tests/lib.sh
# debian_root); each run copies it, so every run starts fresh.
# FRESH_SUITES="bookworm" picks the suites.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/tests/lib.sh"

for dir in "$HOME/.cargo" "$HOME/.rustup"; do
  if [ ! -d "$dir" ]; then echo "tests/fresh-machine.sh: no $dir to bind in" >&2; exit 1; fi
done
failed=()
for suite in ${FRESH_SUITES:-bookworm trixie}; do
  pristine=$(debian_root "pristine-$suite" "$suite")
  fresh=$(mktemp -d "/var/tmp/flakeport-fresh-$suite.XXXXXX")
  cp -a "$pristine/." "$fresh/"
  rm -f "$fresh/.flakeport-recipe"
  # The repository as a clone has it: tracked files and changes to them.
  mkdir -p "$fresh/root/flakeport"
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
    tar --null --ignore-failed-read -T - -cf -) | tar -xf - -C "$fresh/root/flakeport"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  log=$ROOT/target/fresh-$suite.log
  mkdir -p "$ROOT/target"
  echo "== scripts/quickstart --check on a fresh Debian $suite (log: $log)"
  started=$(date +%s)
  # (HOME as here: the toolchain is bound at the same place.)
  if env -i HOME="$HOME" PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 PORT="$port" \
    IN_ROOT_BIND="${HOME#/}/.cargo ${HOME#/}/.rustup" "$ROOT/tests/in-root" "$fresh" \
    /root/flakeport/scripts/quickstart --check >"$log" 2>&1; then
    echo "ok   quickstart --check on Debian $suite ($(($(date +%s) - started)) s)"
  else
    echo "FAIL quickstart --check on Debian $suite"
    tail -30 "$log" | sed 's/^/     /'
    failed+=("$suite")
  fi
  rm -rf --one-file-system "$fresh"
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fresh machine: failed on ${failed[*]}"
  exit 1
fi
