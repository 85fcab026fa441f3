//! The invariants of ARCHITECTURE.md, checked on the source: which floor
//! may use which, that no two modules of a floor use each other in a
//! circle, that the layer engine stands alone, and where processes start
//! and bytes are hashed. Reads `src/`; needs nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Floors from the bottom: a module may use its own floor's modules and
/// those of floors below, never above.
const FLOORS: &[&[&str]] = &[
    &["vocab", "redact", "watched", "client"],
    &["events"],
    &["nix"],
    &["image"],
    &["provenance"],
    &["error"],
    &["service"],
    &["http", "snapshotter"],
    &["app"],
];

/// Where an external process may start (`Command::new`).
const PROCESSES_START_IN: &[&str] = &["src/nix/scheduler.rs"];

/// Where bytes may be hashed (sha2, or the layer engine's
/// `HashingWriter`). Content: `vocab` (a document's digest), `image/layer`
/// (the digest pass, layer keys, a compressed archive's members as they
/// are kept), an image archive's members as they are read
/// (`image/plan/archive.rs`), and the blob GET that verifies a layer while
/// it streams. The others hash no content: names of GC roots and git
/// mirrors (nix), token and webhook MACs (http).
const HASHING_IN: &[&str] = &[
    "src/vocab.rs",
    "src/image/layer/mod.rs",
    "src/image/layer/source.rs",
    "src/image/layer/tests.rs",
    "src/image/layer/compress.rs",
    "src/image/layer/members.rs",
    "src/image/layer/tree.rs",
    "src/image/plan/archive.rs",
    "src/http/registry/blobs/produced.rs",
    "src/http/registry/blobs/stream.rs",
    "src/nix/runner.rs",
    "src/nix/refs.rs",
    "src/http/auth.rs",
    "src/http/registry/hooks.rs",
];

fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                out.push((p, without_comments(&text)));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    walk(&root.join("src"), &mut out);
    out.iter_mut()
        .for_each(|(p, _)| *p = p.strip_prefix(root).unwrap().to_path_buf());
    out.sort();
    assert!(out.len() > 50, "src/ was not found: {out:?}");
    out
}

fn without_comments(text: &str) -> String {
    text.lines()
        .map(|l| match l.trim_start().starts_with("//") {
            true => "",
            false => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `src/a/b/c.rs` -> ["a", "b"] (the first two levels of its module path).
fn module_of(path: &Path) -> Vec<String> {
    let mut parts: Vec<String> = path
        .strip_prefix("src")
        .unwrap()
        .with_extension("")
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts.truncate(2);
    parts
}

/// Every `crate::a::b` a file names, also inside `use crate::{a, b::{c, d}}`,
/// as its first two segments.
fn uses(text: &str) -> BTreeSet<Vec<String>> {
    let path = regex::Regex::new(r"\bcrate::([a-z_]+)(?:::([a-z_]+))?").unwrap();
    let mut out = BTreeSet::new();
    for c in path.captures_iter(text) {
        let mut m = vec![c[1].to_string()];
        if let Some(second) = c.get(2) {
            m.push(second.as_str().to_string());
        }
        out.insert(m);
    }
    let mut rest = text;
    while let Some(at) = rest.find("crate::{") {
        let group = &rest[at + "crate::".len()..];
        let (paths, len) = expand(group);
        out.extend(paths.into_iter().filter(|p| !p.is_empty()).map(|mut p| {
            p.truncate(2);
            p
        }));
        rest = &group[len..];
    }
    out
}

/// The paths of a `{...}` group of a `use`, nested groups expanded:
/// `{a, b::{c, d}}` -> [a], [b, c], [b, d]; and how many bytes it spans.
fn expand(group: &str) -> (Vec<Vec<String>>, usize) {
    let mut paths = Vec::new();
    let mut prefix: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut i = 1; // past '{'
    let bytes = group.as_bytes();
    let finish = |prefix: &mut Vec<String>, word: &mut String, paths: &mut Vec<Vec<String>>| {
        let mut p = std::mem::take(prefix);
        if !word.trim().is_empty() {
            p.push(word.trim().to_string());
        }
        word.clear();
        if !p.is_empty() {
            paths.push(p);
        }
    };
    while i < bytes.len() {
        match bytes[i] {
            b'{' => {
                let (inner, len) = expand(&group[i..]);
                if !word.trim().is_empty() {
                    prefix.push(word.trim().to_string());
                }
                word.clear();
                for p in inner {
                    let mut full = prefix.clone();
                    full.extend(p);
                    paths.push(full);
                }
                prefix.clear();
                i += len;
                continue;
            }
            b'}' => {
                finish(&mut prefix, &mut word, &mut paths);
                return (paths, i + 1);
            }
            b',' => finish(&mut prefix, &mut word, &mut paths),
            b':' if bytes.get(i + 1) == Some(&b':') => {
                prefix.push(word.trim().to_string());
                word.clear();
                i += 2;
                continue;
            }
            c => word.push(c as char),
        }
        i += 1;
    }
    (paths, group.len())
}

fn floor(top: &str) -> usize {
    FLOORS
        .iter()
        .position(|f| f.contains(&top))
        .unwrap_or_else(|| panic!("module {top} is on no floor: add it to FLOORS"))
}

/// (file, the module it is in, the modules it uses), for the library.
fn graph() -> Vec<(PathBuf, Vec<String>, BTreeSet<Vec<String>>)> {
    sources()
        .into_iter()
        .filter(|(p, _)| p != Path::new("src/lib.rs") && p != Path::new("src/main.rs"))
        .map(|(p, text)| {
            let m = module_of(&p);
            (p, m, uses(&text))
        })
        .collect()
}

#[test]
fn floors_use_only_floors_below() {
    let mut wrong = Vec::new();
    for (file, me, used) in graph() {
        for u in used {
            if floor(&u[0]) > floor(&me[0]) {
                wrong.push(format!("{} uses crate::{}", file.display(), u.join("::")));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "a floor uses one above it:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn modules_of_a_floor_use_each_other_one_way() {
    // Edges between second-level modules (`nix::refs` -> `nix::scheduler`),
    // and between top-level ones of a floor.
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, me, used) in graph() {
        let from = me.join("::");
        for u in used {
            let to = if u[0] == me[0] {
                u.join("::")
            } else {
                u[0].clone()
            };
            let from = if u[0] == me[0] {
                from.clone()
            } else {
                me[0].clone()
            };
            if to != from && !from.starts_with(&format!("{to}::")) {
                edges.entry(from).or_default().insert(to);
            }
        }
    }
    // A circle is a path back to where it started.
    let mut circles = Vec::new();
    for start in edges.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((at, path)) = stack.pop() {
            for next in edges.get(&at).into_iter().flatten() {
                if next == start {
                    circles.push(format!("{} -> {start}", path.join(" -> ")));
                } else if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    assert!(
        circles.is_empty(),
        "modules in a circle:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_layer_engine_uses_only_the_vocabulary() {
    let mut wrong = Vec::new();
    for (file, me, used) in graph() {
        if me != ["image", "layer"] {
            continue;
        }
        for u in used {
            if u[0] != "vocab" && u[..] != ["image".to_string(), "layer".to_string()] {
                wrong.push(format!("{} uses crate::{}", file.display(), u.join("::")));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "the layer engine must know no HTTP, Nix or service:\n{}",
        wrong.join("\n")
    );
}

/// Errors become replies in `error.rs` only: the HTTP floor never looks
/// inside a lower floor's error.
#[test]
fn http_never_handles_a_lower_floors_error() {
    let mut wrong = Vec::new();
    for (file, text) in sources() {
        if file.starts_with("src/http") && (text.contains("NixError") || text.contains("PlanError"))
        {
            wrong.push(file.display().to_string());
        }
    }
    assert!(
        wrong.is_empty(),
        "HTTP code matches a domain error:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn processes_start_in_one_place_and_bytes_are_hashed_in_few() {
    let mut wrong = Vec::new();
    for (file, text) in sources() {
        let f = file.to_string_lossy();
        let starts = text.contains("Command::new") || text.contains("process::Command");
        if starts && !PROCESSES_START_IN.contains(&f.as_ref()) {
            wrong.push(format!("{f} starts a process"));
        }
        let hashes = ["sha2::", "Sha256", "HashingWriter"]
            .iter()
            .any(|h| text.contains(h));
        if hashes && !HASHING_IN.contains(&f.as_ref()) {
            wrong.push(format!("{f} hashes"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
