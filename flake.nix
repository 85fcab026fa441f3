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

        # flakeport's own image, built with its own nixlib: a non-root user
        # owning its state dir and store (so single-user nix builds work in
        # the container), /tmp, CA certificates, nix and git. The
        # registration file lets an init container copy the closure into a
        # node's /nix (see examples/kubernetes).
        image =
          let
            flakeportLib = import ./nixlib { inherit (pkgs) runCommand system; };
            contents = [ flakeport pkgs.nix pkgs.git pkgs.cacert pkgs.bashInteractive pkgs.coreutils ];
            closure = pkgs.closureInfo { rootPaths = contents; };
          in
          flakeportLib.streamLayeredImageConf {
            name = "flakeport";
            inherit contents;
            config = {
              Entrypoint = [ "/bin/flakeport" ];
              Cmd = [ "--help" ];
              User = "1000:1000";
              Env = [
                "PATH=/bin"
                "SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt"
                "HOME=/var/lib/flakeport"
                "FLAKEPORT_STATE_DIR=/var/lib/flakeport"
              ];
              ExposedPorts."5000/tcp" = { };
            };
            extraCommands = ''
              mkdir -p etc/nix etc/flakeport var/lib/flakeport nix/var/nix
              printf 'experimental-features = nix-command flakes\nbuild-users-group =\nsandbox = false\n' > etc/nix/nix.conf
              printf 'root:x:0:0::/root:/bin/sh\nflakeport:x:1000:1000::/var/lib/flakeport:/bin/sh\n' > etc/passwd
              printf 'root:x:0:\nflakeport:x:1000:\n' > etc/group
              cp ${closure}/registration etc/flakeport/registration
            '';
            perms = [
              { path = "/var/lib/flakeport"; uid = 1000; gid = 1000; uname = "flakeport"; gname = "flakeport"; recursive = true; }
              { path = "/nix"; uid = 1000; gid = 1000; uname = "flakeport"; gname = "flakeport"; recursive = true; }
            ];
          };
      });

      checks = forAllSystems (pkgs: { flakeport = self.packages.${pkgs.system}.flakeport; });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [ pkgs.cargo pkgs.rustc pkgs.rustfmt pkgs.clippy pkgs.nix pkgs.git pkgs.skopeo pkgs.umoci ];
        };
      });

      # services.flakeport; brings pkgs.flakeport through the overlay.
      nixosModules.default = {
        imports = [ ./nixlib/nixos-module.nix ];
        nixpkgs.overlays = [ self.overlays.default ];
      };

      # `nix run .# -- github:org/repo` serves that flake's images.
      apps = forAllSystems (pkgs: {
        default = { type = "app"; program = "${self.packages.${pkgs.system}.default}/bin/flakeport"; };
      });

      # `flakeport.lib.<system>.streamLayeredImageConf`, with nixpkgs' runCommand
      # and the tools of fakeRootCommands, enableFakechroot and includeNixDB;
      # `lib.nixlib { runCommand; system; }` with any runCommand-style function.
      lib = forAllSystems (pkgs: import ./nixlib { inherit (pkgs) runCommand system fakeroot proot nix; })
        // { nixlib = import ./nixlib; };

      overlays.default = final: prev: { flakeport = flakeportFor final; };
    };
}
