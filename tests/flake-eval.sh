#!/usr/bin/env bash
# Evaluates flake.nix and the NixOS module against tests/nixpkgs-stub (real
# nixpkgs cannot be fetched here), so their structure cannot rot unseen.
# Uses the committed tree (git+file), as CI sees it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/tests/lib.sh"
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
nix_offline_env "$W"
F="git+file://$ROOT"
STUB=(--override-input nixpkgs "path:$ROOT/tests/nixpkgs-stub" --no-write-lock-file)
ev() { nix eval "${STUB[@]}" "$@" 2>"$W/stderr"; }
fails=0
expect() { # expect NAME WANT ARGS...
  local name=$1 want=$2; shift 2
  local got; got=$(ev "$@") || true
  if [[ "$got" == $want ]]; then echo "ok   $name"; else echo "FAIL $name: got $got"; tail -5 "$W/stderr"; fails=$((fails + 1)); fi
}
for s in x86_64-linux aarch64-linux; do
  expect "packages.$s.default instantiates" '/nix/store/*-flakeport-*.drv' --raw "$F#packages.$s.default.drvPath"
  expect "packages.$s.image instantiates (nixlib conf)" '/nix/store/*-flakeport-conf.json.drv' --raw "$F#packages.$s.image.drvPath"
  expect "apps.$s.default.program is the path of the flakeport binary (not run: the stub cannot build it)" '/nix/store/*-flakeport-*/bin/flakeport' --raw "$F#apps.$s.default.program"
  expect "devShells.$s.default instantiates" '/nix/store/*-shell.drv' --raw "$F#devShells.$s.default.drvPath"
  expect "checks.$s.flakeport instantiates" '/nix/store/*.drv' --raw "$F#checks.$s.flakeport.drvPath"
  expect "lib.$s.streamLayeredImageConf is a function" 'true' --apply builtins.isFunction "$F#lib.$s.streamLayeredImageConf"
done
expect "lib.x86_64-linux: an image with fakeRootCommands and includeNixDB instantiates (tools from nixpkgs)" '/nix/store/*-x-conf.json.drv' --raw --apply 'l: (l.streamLayeredImageConf { name = "x"; fakeRootCommands = "chown 1:1 x"; includeNixDB = true; }).drvPath' "$F#lib.x86_64-linux"
expect "nixlib: fakeRootCommands without a fakeroot fails and names it" '' --raw --apply 'n: ((n { runCommand = name: env: s: builtins.derivation (env // { inherit name; system = "x86_64-linux"; builder = "/bin/sh"; args = [ s ]; }); system = "x86_64-linux"; }).streamLayeredImageConf { name = "x"; fakeRootCommands = "true"; }).drvPath' "$F#lib.nixlib"
grep -q '`fakeRootCommands` needs fakeroot' "$W/stderr" && echo "ok   the error names fakeRootCommands and fakeroot" || { echo "FAIL no error naming fakeRootCommands"; cat "$W/stderr"; fails=$((fails + 1)); }
expect "lib.nixlib takes runCommand and system" 'true' --apply 'f: builtins.isFunction (f { runCommand = x: x; system = "x86_64-linux"; }).streamLayeredImageConf' "$F#lib.nixlib"
expect "meta.mainProgram" '"flakeport"' "$F#packages.x86_64-linux.default.meta.mainProgram"
expect "overlays.default adds flakeport" '"flakeport-0.1.0"' --impure --apply \
  'o: (o (import '"$ROOT"'/tests/nixpkgs-stub/pkgs.nix { lib = import '"$ROOT"'/tests/nixpkgs-stub/lib.nix; system = "x86_64-linux"; } // { rustPlatform = (import '"$ROOT"'/tests/nixpkgs-stub/pkgs.nix { lib = import '"$ROOT"'/tests/nixpkgs-stub/lib.nix; system = "x86_64-linux"; }).rustPlatform; }) { }).flakeport.name' \
  "$F#overlays.default"
expect "nixosModules.default imports the module and the overlay" '"1 imports, 1 overlays"' --apply 'm: "${toString (builtins.length m.imports)} imports, ${toString (builtins.length m.nixpkgs.overlays)} overlays"' "$F#nixosModules.default"

# The module, with the stub lib: options exist, and an enabled service
# becomes the systemd unit, user, firewall rule we mean.
module_eval() { # module_eval SETTINGS EXPR-ON-r [NIX-SETTINGS]: the host's nix.settings as the module sees them
  nix eval --impure --json --expr '
    let
      lib = import '"$ROOT"'/tests/nixpkgs-stub/lib.nix;
      pkgs = import '"$ROOT"'/tests/nixpkgs-stub/pkgs.nix { inherit lib; system = "x86_64-linux"; } // { flakeport = builtins.derivation { name = "flakeport"; system = "x86_64-linux"; builder = "/bin/sh"; }; };
      opts = (import '"$ROOT"'/nixlib/nixos-module.nix { config = { }; inherit lib pkgs; }).options.services.flakeport;
      defaults = builtins.mapAttrs (_: o: o.default or (builtins.mapAttrs (_: x: x.default) o)) opts;
      cfg = defaults // ('"$1"');
      m = import '"$ROOT"'/nixlib/nixos-module.nix { config = { services.flakeport = cfg; nix.package = pkgs.nix; nix.settings = '"${3:-{ \}}"'; }; inherit lib pkgs; };
      r = if m.config.condition then m.config.content else null;
    in '"$2" 2>"$W/stderr" || tail -5 "$W/stderr"
}
got=$(module_eval '{ enable = true; flake = "github:org/repo"; openFirewall = true; listen = "0.0.0.0:5001"; extraArgs = [ "--compression" "gzip" ]; }' \
  '[ r.systemd.services.flakeport.serviceConfig.ExecStart r.systemd.services.flakeport.serviceConfig.User r.networking.firewall.allowedTCPPorts r.users.users.flakeport.isSystemUser r.nix.settings.allowed-users ]')
if [[ "$got" == '["/nix/store/'*'-flakeport/bin/flakeport serve '"'"'github:org/repo'"'"' '"'"'--compression'"'"' '"'"'gzip'"'"'","flakeport",[5001],true,{"_type":"override","content":["flakeport"],"priority":1500}]' ]]; then
  echo "ok   NixOS module: unit, user, firewall, daemon access (joins the default allowed-users)"
else echo "FAIL NixOS module: $got"; fails=$((fails + 1)); fi
got=$(module_eval '{ enable = true; flake = "github:org/repo"; snapshotter = { enable = true; cri = true; socket = "/run/fp.sock"; root = "/nix/var/fp"; }; }' \
  '[ r.systemd.services.flakeport-snapshotter.condition r.systemd.services.flakeport-snapshotter.content.serviceConfig.ExecStart r.virtualisation.containerd.settings.content.proxy_plugins.flakeport r.virtualisation.containerd.settings.content.plugins ]')
if [[ "$got" == '[true,"/nix/store/'*'-flakeport/bin/flakeport snapshotter '"'"'--registry-state'"'"' '"'"'/var/lib/flakeport'"'"' '"'"'--socket'"'"' '"'"'/run/fp.sock'"'"' '"'"'--root'"'"' '"'"'/nix/var/fp'"'"'",{"address":"/run/fp.sock","exports":{"root":"/nix/var/fp"},"type":"snapshot"},{"io.containerd.grpc.v1.cri":{"containerd":{"snapshotter":"flakeport"}}}]' ]]; then
  echo "ok   NixOS module: the snapshotter's unit, containerd's proxy plugin, CRI's snapshotter"
else echo "FAIL NixOS module snapshotter: $got"; fails=$((fails + 1)); fi
got=$(module_eval '{ enable = true; flake = "github:org/repo"; }' '[ r.systemd.services.flakeport-snapshotter.condition r.virtualisation.containerd.settings.condition ]')
[ "$got" = '[false,false]' ] && echo "ok   NixOS module: no snapshotter unless enabled" || { echo "FAIL snapshotter default: $got"; fails=$((fails + 1)); }
got=$(module_eval '{ enable = false; }' 'r')
[ "$got" = null ] && echo "ok   NixOS module: disabled adds nothing" || { echo "FAIL disabled: $got"; fails=$((fails + 1)); }
got=$(module_eval '{ enable = true; packages = "github:NixOS/nixpkgs/nixos-25.05"; }' '[ r.systemd.services.flakeport.environment.FLAKEPORT_PACKAGES (builtins.head r.assertions).assertion r.networking.firewall.allowedTCPPorts ]')
[ "$got" = '["github:NixOS/nixpkgs/nixos-25.05",true,[]]' ] && echo "ok   NixOS module: package set alone, firewall closed" || { echo "FAIL packages: $got"; fails=$((fails + 1)); }
# allowed-users: the default [ "*" ] lets flakeport in; a host list without
# it fails an assertion that says what to add.
got=$(module_eval '{ enable = true; flake = "f"; }' 'map (a: a.assertion) r.assertions' '{ allowed-users = [ "*" "flakeport" ]; }')
[ "$got" = '[true,true]' ] && echo "ok   NixOS module: allowed-users default passes" || { echo "FAIL allowed-users default: $got"; fails=$((fails + 1)); }
got=$(module_eval '{ enable = true; flake = "f"; }' 'map (a: a.assertion) r.assertions' '{ allowed-users = [ "@wheel" ]; }')
[ "$got" = '[true,false]' ] && echo "ok   NixOS module: a host allowed-users without flakeport fails an assertion" || { echo "FAIL allowed-users host list: $got"; fails=$((fails + 1)); }
[ "$fails" = 0 ]
