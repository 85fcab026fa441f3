# The package set as a nixpkgs-style tree: `import ./. { system = ...; }`,
# which is how `flakeport --packages PATH` (and Nixery) load a set.
{ system ? builtins.currentSystem }:
import ./pkgs.nix {
  inherit system;
  bbdir = builtins.path { path = ./bb; name = "busybox"; };
  version = if builtins.pathExists ./version then builtins.readFile ./version else "dev";
}
