# What a flake image name means: evaluated with `nix eval --json`, its
# answers are data, never text to find in Nix's messages.
#
# `result` is { ok = true; drvPath; outputName; } for a derivation of
# `packages.<system>` (then `legacyPackages.<system>`): the `conf` of a
# dockerTools image (`streamLayeredImage`'s `conf`, `buildLayeredImage`'s
# `stream.conf`), else the value itself. It is { ok = false; images; } when
# the name is no derivation, `images` naming the ones that are. Any other
# failure (a flake that cannot be fetched or parsed, a throwing attribute)
# fails the evaluation itself.
{ flakeRef, system, attrPath }:
let
  flake = builtins.getFlake flakeRef;
  path = builtins.fromJSON attrPath;
  isDrv = v: builtins.isAttrs v && (v.type or null) == "derivation";
  lookup = set: builtins.foldl'
    (acc: n: if acc != null && builtins.isAttrs acc && builtins.hasAttr n acc then builtins.getAttr n acc else null)
    set path;
  packages = (flake.packages or { }).${system} or { };
  legacy = (flake.legacyPackages or { }).${system} or { };
  fromPackages = lookup packages;
  value = if fromPackages != null then fromPackages else lookup legacy;
  images = builtins.filter (n: builtins.tryEval (isDrv packages.${n}) == { success = true; value = true; })
    (builtins.attrNames packages);
  target =
    if value ? conf && isDrv value.conf then value.conf
    else if value ? stream && isDrv value.stream && value.stream ? conf && isDrv value.stream.conf then value.stream.conf
    else value;
in
{
  result =
    if !(isDrv value) then { ok = false; inherit images; }
    else { ok = true; drvPath = target.drvPath; outputName = target.outputName or "out"; };
  mainProgram = value.meta.mainProgram or null;
  source = {
    narHash = flake.sourceInfo.narHash or null;
    rev = flake.sourceInfo.rev or null;
  };
  names = map (n:
    let d = builtins.tryEval (packages.${n}.meta.description or null); in
    { name = n; description = if d.success && builtins.isString d.value then d.value else null; })
    images;
}
