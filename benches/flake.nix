# Images for scripts/bench, built on the offline example's package set
# (scripts/bench copies this over the example's flake.nix).
{
  outputs = { self }:
    let
      system = "x86_64-linux";
      pkgs = import ./. { inherit system; };
      lib = import ./nixlib { inherit (pkgs) runCommand; inherit system; };
      nonce = builtins.readFile ./nonce;
      random = name: mib: pkgs.runCommand name { } "mkdir -p $out; head -c ${toString (mib * 1048576)} /dev/urandom > $out/blob";
      manySmall = pkgs.runCommand "many-small" { } ''
        mkdir -p $out
        i=0
        while [ $i -lt 3000 ]; do
          d=$out/d$((i / 100)); mkdir -p $d
          head -c $((i % 4096 + 1)) /dev/urandom > $d/f$i
          i=$((i + 1))
        done
      '';
    in
    {
      # img192 for aarch64-linux too (built here with extra-platforms, its
      # builder the host's busybox): an index over two platforms.
      packages.aarch64-linux.img192 =
        let
          apkgs = import ./. { system = "aarch64-linux"; };
          alib = import ./nixlib { inherit (apkgs) runCommand; system = "aarch64-linux"; };
          arandom = name: mib: apkgs.runCommand name { } "mkdir -p $out; head -c ${toString (mib * 1048576)} /dev/urandom > $out/blob";
        in
        alib.streamLayeredImageConf {
          name = "img192";
          contents = map (i: arandom "part${toString i}-32m" 32) [ 1 2 3 4 5 6 ] ++ [ apkgs.busybox ];
          config.Cmd = [ "/bin/sh" ];
        };
      packages.${system} = {
        big128 = lib.streamLayeredImageConf { name = "big128"; contents = [ (random "random-128m" 128) ]; };
        small3000 = lib.streamLayeredImageConf { name = "small3000"; contents = [ manySmall ]; };
        # 64 layers of 128 MiB: 64 clients each stream a different one.
        wide64 = lib.streamLayeredImageConf {
          name = "wide64";
          contents = builtins.genList (i: random "w${toString i}-128m" 128) 64;
        };
        # 1 GiB in 100 store paths of 10 MiB: about 100 layers.
        img1g = lib.streamLayeredImageConf {
          name = "img1g";
          contents = builtins.genList (i: random "p${toString i}-10m" 10) 100;
        };
        # 100,000 files of 1 to 64 bytes in 1,000 directories: what making a
        # layer's tree costs per file (the snapshotter).
        files100k = lib.streamLayeredImageConf {
          name = "files100k";
          contents = [
            (pkgs.runCommand "files-100k" { } ''
              i=0
              while [ $i -lt 1000 ]; do mkdir -p $out/d$i; i=$((i + 1)); done
              i=0
              while [ $i -lt 100000 ]; do
                echo "file $i of a hundred thousand, $(( i % 37 ))" > $out/d$((i / 100))/f$i
                i=$((i + 1))
              done
            '')
          ];
        };
        # img192 and 1 MiB more: a second image sharing most of its layers.
        img192plus = lib.streamLayeredImageConf {
          name = "img192plus";
          contents = map (i: random "part${toString i}-32m" 32) [ 1 2 3 4 5 6 ] ++ [ pkgs.busybox (random "extra-1m" 1) ];
          config.Cmd = [ "/bin/sh" ];
        };
        # 192 MiB in six layers, so the digest pass can use both cores.
        img192 = lib.streamLayeredImageConf {
          name = "img192";
          contents = map (i: random "part${toString i}-32m" 32) [ 1 2 3 4 5 6 ] ++ [ pkgs.busybox ];
          config.Cmd = [ "/bin/sh" ];
        };
        # A small image on a 128 MiB base that scripts/bench wrote as a
        # docker-archive (two 64 MiB layers and busybox), plain and gzipped:
        # the base's layers are served from the archive's members.
        onbase = lib.streamLayeredImageConf {
          name = "onbase";
          fromImage = pkgs.archive "big-base.tar" ./images/big-base.tar;
          contents = [ (random "top-1m" 1) ];
        };
        onbase-gz = lib.streamLayeredImageConf {
          name = "onbase-gz";
          fromImage = pkgs.archive "big-base.tar.gz" ./images/big-base.tar.gz;
          contents = [ (random "top-1m" 1) ];
        };
        # A second node's first pull (issue 11): 64 MiB it builds itself, or
        # substitutes from the cache the first node pushed to.
        node64 = lib.streamLayeredImageConf { name = "node64"; contents = [ (random "node-64m" 64) pkgs.busybox ]; };
        # What a push webhook warms: a release of ./version (8 MiB built
        # for each new version) on busybox.
        release = lib.streamLayeredImageConf {
          name = "release";
          contents = [ pkgs.busybox (pkgs.runCommand "release-${builtins.readFile ./version}" { } "mkdir -p $out/share; head -c 8388608 /dev/urandom > $out/share/release") ];
        };
        # New for every run: cold pulls build it.
        cold = lib.streamLayeredImageConf {
          name = "cold";
          contents = [ (pkgs.runCommand "cold-${nonce}" { } "sleep 1; mkdir -p $out; echo ${nonce} > $out/x") ];
        };
      };
    };
}
