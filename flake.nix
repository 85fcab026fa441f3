{
  description = "flakeport: a pull-only OCI registry that builds images on demand with Nix and streams layers straight out of /nix/store";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      flakeportFor = pkgs: pkgs.rustPlatform.buildRustPackage {
        pname = "flakeport";
        version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).package.version;
        src = pkgs.lib.cleanSource ./.;
        cargoLock.lockFile = ./Cargo.lock;
        nativeBuildInputs = [ pkgs.makeWrapper ];
        # Unit and property tests run here; the end-to-end tests need a Nix
        # store, containerd and Docker, and run in scripts/test.
        # nix and git from the host come first (the host's nix must match its
        # daemon); these are the fallback.
        postInstall = ''
          wrapProgram $out/bin/flakeport --suffix PATH : ${pkgs.lib.makeBinPath [ pkgs.nix pkgs.git ]}
        '';
        meta = {
          description = "Pull-only OCI registry that builds images on demand with Nix";
          license = pkgs.lib.licenses.mit;
          mainProgram = "flakeport";
          platforms = pkgs.lib.platforms.linux;
        };
      };
    in
    {
      packages = forAllSystems (pkgs: rec {
        flakeport = flakeportFor pkgs;
        default = flakeport;
      });

      # `nix run .# -- github:org/repo` serves that flake's images.
      apps = forAllSystems (pkgs: {
        default = { type = "app"; program = "${self.packages.${pkgs.system}.default}/bin/flakeport"; };
      });

      # `flakeport.lib.streamLayeredImageConf` per system, with nixpkgs'
      # runCommand; `import "${flakeport}/nixlib"` to bring your own.
      lib = forAllSystems (pkgs: import ./nixlib { inherit (pkgs) runCommand; inherit (pkgs) system; });

      overlays.default = final: prev: { flakeport = flakeportFor final; };
    };
}
