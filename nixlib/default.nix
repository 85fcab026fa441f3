# flakeport's Nix library: `streamLayeredImageConf` takes nixpkgs'
# `dockerTools.streamLayeredImage` arguments and writes a flakeport conf v1
# (see README.md in this directory) instead of a streaming script. The
# registry reads the conf and streams the layers straight out of /nix/store.
#
# Depends only on builtins and a runCommand-style function
# (`runCommand name env script`): nixpkgs' in real use, a busybox one in tests.
{ runCommand
, system ? builtins.currentSystem
  # Tools for the arguments that need them (nixpkgs' fakeroot, proot, nix);
  # an argument whose tool is missing fails evaluation and names it.
, fakeroot ? null
, proot ? null
, nix ? null
}:
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
  tool = name: arg: value:
    if value != null then value
    else throw "nixlib.streamLayeredImageConf: `${arg}` needs ${name}: import nixlib { ${name} = pkgs.${name}; ... } (flakeport.lib.<system> passes it)";
in
{
  streamLayeredImageConf =
    { name
    , tag ? null
    , fromImage ? null
    , contents ? [ ]
    , config ? { }
    , created ? "1970-01-01T00:00:01Z"
    , mtime ? "1970-01-01T00:00:01Z"
    , architecture ? archOf system
    , maxLayers ? 100
    , extraCommands ? ""
    , fakeRootCommands ? ""
    , enableFakechroot ? false
    , includeStorePaths ? true
    , includeNixDB ? false
    , uid ? 0
    , gid ? 0
    , uname ? "root"
    , gname ? "root"
      # [{ path = "/home/app"; uid = 1000; gid = 1000; mode = "0755"; recursive = true; }]
    , perms ? [ ]
      # [[ pkgA ] [ pkgB pkgC ]]: each group's closure (minus earlier groups) is one layer
    , layers ? [ ]
    , layeringPipeline ? null
    , debug ? false
    , passthru ? { }
    , meta ? { }
    }:
    assert maxLayers > 1;
    let
      unsupported = arg: why: throw "nixlib.streamLayeredImageConf (${name}): `${arg}` ${why}";
      contentsList = toList contents;
      # The config as a file: what it names (a Cmd of "${hello}/bin/hello")
      # is then in the image's closure, as nixpkgs does with its baseJson.
      configFile = runCommand "${name}-config.json" { configJson = builtins.toJSON config; }
        ''printf '%s' "$configJson" > "$out"'';
      closureRoots = if includeStorePaths then contentsList ++ [ configFile ] else [ ];
      useFakeroot = fakeRootCommands != "" || enableFakechroot;
      allPerms = [{ path = "/tmp"; mode = "1777"; }] ++ perms
        ++ (if includeNixDB then [{ path = "/nix/var"; mode = "0755"; recursive = true; }] else [ ]);
      # nixpkgs' includeNixDB: the closure registered in a Nix database at
      # /nix/var/nix/db of the root layer, so `nix-store --verify` and
      # `nix path-info -r` work inside the container.
      nixDbCommands = let n = tool "nix" "includeNixDB" nix; in ''
        paths=$(cat "$NIX_BUILD_TOP"/db-closure-* | awk 'BEGIN { want = "path" } want == "path" { print; want = "deriver"; next } want == "deriver" { want = "count"; next } want == "count" { left = $1; want = left > 0 ? "ref" : "path"; next } want == "ref" { left--; if (left == 0) want = "path" }' | sort -u)
        ${n}/bin/nix-store --dump-db $paths > "$NIX_BUILD_TOP/registration"
        NIX_REMOTE="local?root=$PWD" ${n}/bin/nix-store --option gc-reserved-space 0 --load-db < "$NIX_BUILD_TOP/registration"
        mkdir -p nix/var/nix/gcroots/docker
        for p in $paths; do ln -sfn "$p" "nix/var/nix/gcroots/docker/''${p##*/}"; done
      '';
      # The root (customisation) layer: every package's top-level directories
      # linked into /, like nixpkgs' symlinkJoin, plus /tmp.
      root = runCommand "${name}-root"
        (if includeNixDB then {
          exportReferencesGraph = builtins.concatLists (builtins.genList
            (i: [ "db-closure-${toString i}" (builtins.elemAt contentsList i) ])
            (builtins.length contentsList));
        } else { }) ''
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
        ${if includeNixDB then nixDbCommands else ""}
        ${extraCommands}
      '';
      # With fakeRootCommands, as in nixpkgs: the root tree is copied, the
      # commands run under fakeroot (and proot with enableFakechroot, so
      # they see the image's / ), and the layer is recorded as a tar. The
      # perms rules become chown/chmod there: a tar is served verbatim.
      permCommands = builtins.concatStringsSep "\n" (map
        (p:
          let r = if p.recursive or false then "-R " else ""; at = ".${p.path}"; in
          builtins.concatStringsSep "\n" (
            (if p ? uid || p ? gid then [ "[ ! -e ${at} ] || chown -h ${r}${toString (p.uid or uid)}:${toString (p.gid or gid)} ${at}" ] else [ ])
            ++ (if p ? mode then [ "[ ! -e ${at} ] || chmod ${r}${p.mode} ${at}" ] else [ ])))
        (builtins.filter (p: builtins.substring 0 11 p.path != "/nix/store/") allPerms));
      customisation = runCommand "${name}-customisation-layer"
        {
          # An environment variable, not a file: with enableFakechroot the
          # commands run where the build directory is not visible.
          inherit fakeRootCommands;
          setup = ''
            chown -R ${toString uid}:${toString gid} .
            ${permCommands}
          '';
          passAsFile = [ "setup" ];
        } ''
        mkdir -p "$out" "$NIX_BUILD_TOP/tree"
        cp -a ${root}/. "$NIX_BUILD_TOP/tree/"
        chmod -R u+w "$NIX_BUILD_TOP/tree"
        cd "$NIX_BUILD_TOP/tree"
        # The build's shell and PATH, before a tool's wrapper changes them.
        build_sh=$(command -v sh)
        export build_sh build_path="$PATH"
        ${tool "fakeroot" "fakeRootCommands" fakeroot}/bin/fakeroot -- sh -e -c '
          . "$setupPath"
          ${if enableFakechroot
            # As nixpkgs: / is the image, with the store, /dev, /proc and
            # /sys bound in; so is every directory of the build PATH (store
            # paths in nixpkgs), so the shell and tools are found there.
            then ''binds="-b /nix:/nix -b /dev:/dev -b /proc:/proc -b /sys:/sys"
                   for d in $(echo "$build_path" | tr ":" " "); do [ ! -d "$d" ] || binds="$binds -b $d:$d"; done
                   ${tool "proot" "enableFakechroot" proot}/bin/proot -r "$PWD" $binds -w / "$build_sh" -e -c "PATH=\$build_path; eval \"\$fakeRootCommands\""''
            else ''eval "$fakeRootCommands"''}
          if tar --version 2>/dev/null | grep -q GNU; then
            tar --sort=name --mtime=@1 --numeric-owner --hard-dereference -cf "$out/layer.tar" .
          else
            tar --numeric-owner -cf "$out/layer.tar" .
          fi
        '
      '';
      conf = runCommand "${name}-conf.json"
        ({
          # The conf is this derivation's own structured attributes: the
          # references graph lands in it with narSize and references, so the
          # server needs no `nix path-info`.
          __structuredAttrs = true;
          flakeport = 1;
          imageName = name;
          imageTag = tag;
          os = "linux";
          inherit architecture config created mtime uid gid uname gname maxLayers;
          perms = allPerms;
          rootLayer = root;
          roots = closureRoots;
          # For SBOMs: each content's meta.license as SPDX identifiers
          # (a license without one by its short name).
          licenses = map (p: {
            path = "${p}";
            licenses = map (l: if builtins.isString l then l else l.spdxId or l.shortName or "NOASSERTION")
              (toList (p.meta.license or [ ]));
          }) (if includeStorePaths then contentsList else [ ]);
          layers = if includeStorePaths then map toList layers else [ ];
        }
        // (if includeStorePaths then { exportReferencesGraph.graph = closureRoots ++ [ root ]; } else { })
        // (if fromImage != null then { inherit fromImage; } else { })
        // (if useFakeroot then { rootLayerTar = "${customisation}/layer.tar"; } else { }))
        ''cp "$NIX_ATTRS_JSON_FILE" "$out"'';
    in
    if layeringPipeline != null then unsupported "layeringPipeline" "is not supported: group paths with `layers = [ [ ... ] ]`"
    else conf // {
      inherit meta;
      passthru = passthru // { flakeportConf = true; imageName = name; inherit root; };
    };
}
