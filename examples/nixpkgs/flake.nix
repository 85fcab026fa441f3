# An example for real use: images of nixpkgs packages in all three forms
# flakeport serves. Serve it with
#   flakeport 'git+https://github.com/YOU/REPO?dir=examples/nixpkgs'
# or, from a checkout of this repository,
#   flakeport ./examples/nixpkgs        (then: docker pull localhost:5000/web)
{
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";
  # In your own flake: inputs.flakeport.url = "github:ORG/flakeport"; and
  # flakeportLib = flakeport.lib.${system};
  outputs = { self, nixpkgs }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};
      flakeportLib = import ../../nixlib { inherit (pkgs) runCommand; inherit system; };
    in
    {
      packages.${system} = {
        # (a) flakeport's own conf: rename streamLayeredImage -> streamLayeredImageConf.
        web = flakeportLib.streamLayeredImageConf {
          name = "web";
          contents = [ pkgs.busybox pkgs.darkhttpd pkgs.cacert ];
          config = {
            Cmd = [ "darkhttpd" "/srv" "--port" "8080" "--uid" "1000" "--gid" "1000" ];
            Env = [ "SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt" "PATH=/bin" ];
            ExposedPorts."8080/tcp" = { };
          };
          extraCommands = ''
            mkdir -p srv && echo '<h1>served by flakeport</h1>' > srv/index.html
          '';
          perms = [{ path = "/srv"; uid = 1000; gid = 1000; recursive = true; }];
        };

        # (b) a stock dockerTools image: flakeport reads its passthru.conf.
        redis = pkgs.dockerTools.streamLayeredImage {
          name = "redis";
          contents = [ pkgs.redis ];
          config.Cmd = [ "${pkgs.redis}/bin/redis-server" "--protected-mode" "no" ];
        };

        # (c) a plain package: `docker run localhost:5000/jq -n 1` runs jq.
        jq = pkgs.jq;
      };
    };
}
