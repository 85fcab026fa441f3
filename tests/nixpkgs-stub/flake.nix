# A stand-in for nixpkgs with just what flakeport's flake.nix and NixOS
# module touch, so their structure is evaluated offline (nixpkgs cannot be
# fetched here):  nix eval --override-input nixpkgs path:tests/nixpkgs-stub ...
# Packages are real (never built) derivations, so drvPaths instantiate.
{
  outputs = { self }:
    let
      lib = import ./lib.nix;
      pkgsFor = system: import ./pkgs.nix { inherit lib system; };
    in
    {
      inherit lib;
      legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] pkgsFor;
    };
}
