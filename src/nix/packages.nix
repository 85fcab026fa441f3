# Loads a package set and looks up every requested attribute path
# (case-insensitively per level, since registry names are lowercase, and
# with `_` before names starting with a digit, as nixpkgs spells them).
# Evaluated with `nix eval --json`: `result` is { ok = true; drvs = [ {
# drvPath; outputName; } ... ]; } or { ok = false; unknown = [ { name; at;
# names; } ... ]; } naming every unknown package at once, with the names
# at the level where its lookup failed, for "did you mean".
{ kind, location, ref, rev, system, packages, optional }:
let
  fetched = builtins.fetchGit ({ url = location; }
    // (if ref != "" then { inherit ref; } else { })
    // (if rev != "" then { inherit rev; allRefs = true; } else { }));
  set =
    if kind == "flake" then
      let f = builtins.getFlake location; in ((f.packages or { }).${system} or { }) // ((f.legacyPackages or { }).${system} or { })
    else import (if kind == "git" || ref != "" || rev != "" then fetched else /. + location) { inherit system; };
  upper = [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ];
  lower = map (c: builtins.replaceStrings upper [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ] c) upper;
  toLower = builtins.replaceStrings upper lower;
  isDrv = v: builtins.isAttrs v && (v.type or null) == "derivation";
  attempt = v: let r = builtins.tryEval v; in if r.success then r.value else null;
  findIn = set: seg:
    if builtins.hasAttr seg set then seg
    else if builtins.hasAttr "_${seg}" set then "_${seg}"
    else let m = builtins.filter (n: toLower n == seg) (builtins.attrNames set); in
      if m != [ ] then builtins.head m else null;
  lookup = dotted: builtins.foldl'
    (acc: seg:
      if !acc.ok then acc
      else if !(builtins.isAttrs acc.value) || isDrv acc.value then acc // { ok = false; names = [ ]; }
      else let n = findIn acc.value seg; in
        if n == null then acc // { ok = false; names = builtins.attrNames acc.value; }
        else { ok = true; value = attempt (builtins.getAttr n acc.value); at = acc.at ++ [ n ]; })
    { ok = true; value = set; at = [ ]; }
    (builtins.filter builtins.isString (builtins.split "\\." dotted));
  found = p: let r = lookup p; in r.ok && isDrv r.value;
  wanted = builtins.fromJSON packages;
  unknown = builtins.filter (p: !(found p)) wanted;
  report = map (p: let r = lookup p; in { name = p; at = map toLower r.at; names = if r.ok then [ ] else map toLower r.names; }) unknown;
  chosen = wanted ++ builtins.filter found (builtins.fromJSON optional);
in
{
  result =
    if unknown != [ ] then { ok = false; unknown = report; }
    else {
      ok = true;
      drvs = map (p: let d = (lookup p).value; in { drvPath = d.drvPath; outputName = d.outputName or "out"; }) chosen;
    };
}
