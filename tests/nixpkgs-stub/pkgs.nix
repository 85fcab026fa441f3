{ lib, system }:
let
  drv = name: attrs: derivation ({ inherit name system; builder = "/bin/sh"; args = [ "-c" "exit 1" ]; } // attrs);
  self = {
    inherit system lib;
    runCommand = name: env: script: drv name (env // { buildCommand = script; });
    rustPlatform.buildRustPackage = a:
      assert a ? cargoLock.lockFile && builtins.pathExists a.cargoLock.lockFile;
      drv "${a.pname}-${a.version}" { postInstall = a.postInstall or ""; } // { inherit (a) meta; };
    makeWrapper = drv "make-wrapper" { };
    closureInfo = { rootPaths }: drv "closure-info" { inherit rootPaths; };
    mkShell = { packages ? [ ] }: drv "shell" { inherit packages; };
  } // lib.genAttrs [ "nix" "fakeroot" "proot" "git" "cacert" "bashInteractive" "coreutils" "cargo" "rustc" "rustfmt" "clippy" "skopeo" "umoci" ] (n: drv n { });
in
self
