# The few nixpkgs lib functions flakeport's Nix code uses, same semantics.
rec {
  genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
  cleanSource = src: src;
  licenses.mit = { spdxId = "MIT"; };
  platforms.linux = [ "x86_64-linux" "aarch64-linux" ];
  makeBinPath = ps: builtins.concatStringsSep ":" (map (p: "${p}/bin") ps);
  optional = c: x: if c then [ x ] else [ ];
  optionalAttrs = c: a: if c then a else { };
  last = l: builtins.elemAt l (builtins.length l - 1);
  splitString = sep: s: builtins.filter builtins.isString (builtins.split (builtins.replaceStrings [ "." ] [ "\\." ] sep) s);
  toInt = s: builtins.fromJSON s;
  escapeShellArg = a: "'${builtins.replaceStrings [ "'" ] [ "'\\''" ] a}'";
  escapeShellArgs = as: builtins.concatStringsSep " " (map escapeShellArg as);
  # Module system: options are recorded, mkIf is resolved by the test.
  mkOption = o: o // { _type = "option"; };
  mkEnableOption = d: mkOption { default = false; description = "Whether to enable ${d}."; };
  mkIf = condition: content: { _type = "if"; inherit condition content; };
  # As nixpkgs' mkOverride 1500: the priority of option defaults.
  mkOptionDefault = content: { _type = "override"; priority = 1500; inherit content; };
  types = {
    package = "package";
    str = "str";
    bool = "bool";
    nullOr = t: "nullOr ${t}";
    listOf = t: "listOf ${t}";
  };
}
