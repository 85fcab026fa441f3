# flakeport's Nix library: `streamLayeredImageConf` takes nixpkgs'
# `dockerTools.streamLayeredImage` arguments and writes a flakeport conf v1
# (see README.md in this directory) instead of a streaming script. The
# registry reads the conf and streams the layers straight out of /nix/store.
#
# Depends only on builtins and a runCommand-style function
# (`runCommand name env script`): nixpkgs' in real use, a busybox one in tests.
{ runCommand, system ? builtins.currentSystem }:
let
  archOf = s: {
    "x86_64-linux" = "amd64";
    "aarch64-linux" = "arm64";
    "i686-linux" = "386";
    "armv7l-linux" = "arm";
    "riscv64-linux" = "riscv64";
    "powerpc64le-linux" = "ppc64le";
    "s390x-linux" = "s390x";
  }.${s} or (builtins.head (builtins.split "-" s));
  toList = x: if builtins.isList x then x else [ x ];
in
{
  streamLayeredImageConf =
    { name
    , tag ? null
    , contents ? [ ]
    , config ? { }
    , created ? "1970-01-01T00:00:01Z"
    , mtime ? "1970-01-01T00:00:01Z"
    , architecture ? archOf system
    , maxLayers ? 100
    , extraCommands ? ""
    , uid ? 0
    , gid ? 0
    , uname ? "root"
    , gname ? "root"
      # [{ path = "/home/app"; uid = 1000; gid = 1000; mode = "0755"; recursive = true; }]
    , perms ? [ ]
      # [[ pkgA ] [ pkgB pkgC ]]: each group's closure (minus earlier groups) is one layer
    , layers ? [ ]
    , passthru ? { }
    , ...
    }:
    assert maxLayers > 1;
    let
      contentsList = toList contents;
      # The root (customisation) layer: every package's top-level directories
      # linked into /, like nixpkgs' symlinkJoin, plus /tmp.
      root = runCommand "${name}-root" { } ''
        link() {
          for f in "$1"/* "$1"/.[!.]*; do
            [ -e "$f" ] || [ -L "$f" ] || continue
            n=''${f##*/}
            if [ -d "$f" ] && [ ! -L "$f" ]; then
              if [ -L "$2/$n" ]; then
                # Two packages share a directory: turn the link into a real one.
                prev=$(readlink "$2/$n"); rm "$2/$n"; mkdir -p "$2/$n"; link "$prev" "$2/$n"
              fi
              mkdir -p "$2/$n"
              link "$f" "$2/$n"
            else
              ln -sfn "$f" "$2/$n"
            fi
          done
        }
        mkdir -p "$out/tmp"
        for p in ${builtins.concatStringsSep " " (map (p: "${p}") contentsList)}; do
          link "$p" "$out"
        done
        cd "$out"
        ${extraCommands}
      '';
      conf = runCommand "${name}-conf.json"
        {
          # The conf is this derivation's own structured attributes: the
          # references graph lands in it with narSize and references, so the
          # server needs no `nix path-info`.
          __structuredAttrs = true;
          flakeport = 1;
          imageName = name;
          imageTag = tag;
          os = "linux";
          inherit architecture config created mtime uid gid uname gname maxLayers;
          perms = [{ path = "/tmp"; mode = "1777"; }] ++ perms;
          rootLayer = root;
          roots = contentsList;
          layers = map toList layers;
          exportReferencesGraph.graph = contentsList ++ [ root ];
        }
        ''cp "$NIX_ATTRS_JSON_FILE" "$out"'';
    in
    conf // { passthru = passthru // { flakeportConf = true; imageName = name; inherit root; }; };
}
