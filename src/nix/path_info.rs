//! `nix path-info --json` as every Nix prints it.
//!
//! - CppNix up to 2.18, and Lix: an array of objects, each with `path`
//!   (an invalid path: `{"path": …, "valid": false}`).
//! - CppNix 2.19 to 2.32 (and `--json` alone on 2.33+, with a warning): an
//!   object keyed by store path, `null` for an invalid path.
//! - CppNix 2.33+ with `--json-format 2` or `3`: `{"version", "storeDir",
//!   "info"}`, `info` keyed by base name, references and deriver as base
//!   names (3, from 2.35, differs only in its signatures).
//!
//! All of them become the same [`PathInfo`] list, sorted by path: absolute
//! paths, the hash as the string Nix prints (`sha256-<base64>`).

use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// One store path with what the planner and provenance need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    pub path: PathBuf,
    pub nar_size: u64,
    pub references: Vec<PathBuf>,
    /// `sha256-<base64>` (SRI) or `sha256:<nix32>`, as Nix printed it.
    pub nar_hash: String,
    pub deriver: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathInfoError {
    #[error("is not JSON: {0}")]
    NotJson(String),
    #[error("has an unknown shape: {0}")]
    Shape(String),
    #[error("says {0} is not a valid store path")]
    Invalid(String),
    #[error("has version {0}, which flakeport does not know")]
    UnknownVersion(u64),
}

/// Parses any of the shapes above; `store_dir` completes base names when
/// the output does not name its own.
pub fn parse(stdout: &[u8], store_dir: &Path) -> Result<Vec<PathInfo>, PathInfoError> {
    let mut infos = parse_any(stdout, store_dir)?;
    infos.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(infos)
}

fn parse_any(stdout: &[u8], store_dir: &Path) -> Result<Vec<PathInfo>, PathInfoError> {
    let value: Value =
        serde_json::from_slice(stdout).map_err(|e| PathInfoError::NotJson(e.to_string()))?;
    match value {
        Value::Array(entries) => entries
            .into_iter()
            .map(|e| {
                let Value::Object(o) = e else {
                    return Err(PathInfoError::Shape(
                        "an array entry is not an object".into(),
                    ));
                };
                let path = o
                    .get("path")
                    .and_then(Value::as_str)
                    .ok_or_else(|| PathInfoError::Shape("an entry has no \"path\"".into()))?
                    .to_string();
                if o.get("valid") == Some(&Value::Bool(false)) {
                    return Err(PathInfoError::Invalid(path));
                }
                one(&path, &o, store_dir)
            })
            .collect(),
        Value::Object(top) if top.contains_key("info") && top.contains_key("version") => {
            let version = top.get("version").and_then(Value::as_u64).unwrap_or(0);
            if !(2..=3).contains(&version) {
                return Err(PathInfoError::UnknownVersion(version));
            }
            let dir = top
                .get("storeDir")
                .and_then(Value::as_str)
                .map(PathBuf::from)
                .unwrap_or_else(|| store_dir.to_path_buf());
            let Some(Value::Object(info)) = top.get("info") else {
                return Err(PathInfoError::Shape("\"info\" is not an object".into()));
            };
            keyed(info, &dir)
        }
        Value::Object(map) => keyed(&map, store_dir),
        other => Err(PathInfoError::Shape(format!(
            "a JSON {} at the top",
            kind(&other)
        ))),
    }
}

/// An object keyed by path or base name, `null` for an invalid path.
fn keyed(map: &Map<String, Value>, store_dir: &Path) -> Result<Vec<PathInfo>, PathInfoError> {
    map.iter()
        .map(|(key, v)| match v {
            Value::Object(o) => one(key, o, store_dir),
            Value::Null => Err(PathInfoError::Invalid(key.clone())),
            other => Err(PathInfoError::Shape(format!(
                "the entry of {key} is a JSON {}",
                kind(other)
            ))),
        })
        .collect()
}

fn one(key: &str, o: &Map<String, Value>, store_dir: &Path) -> Result<PathInfo, PathInfoError> {
    let path = in_store(key, store_dir);
    let nar_size = o
        .get("narSize")
        .and_then(Value::as_u64)
        .ok_or_else(|| PathInfoError::Shape(format!("{key} has no narSize")))?;
    let references = match o.get("references") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(refs)) => refs
            .iter()
            .map(|r| {
                r.as_str().map(|r| in_store(r, store_dir)).ok_or_else(|| {
                    PathInfoError::Shape(format!("a reference of {key} is not a string"))
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(PathInfoError::Shape(format!(
                "the references of {key} are not a list"
            )))
        }
    };
    let nar_hash = match o.get("narHash") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(PathInfoError::Shape(format!(
                "the narHash of {key} is not a hash"
            )))
        }
    };
    let deriver = o
        .get("deriver")
        .and_then(Value::as_str)
        .map(|d| in_store(d, store_dir));
    Ok(PathInfo {
        path,
        nar_size,
        references,
        nar_hash,
        deriver,
    })
}

/// A path or a base name, as an absolute store path.
fn in_store(s: &str, store_dir: &Path) -> PathBuf {
    if s.starts_with('/') {
        PathBuf::from(s)
    } else {
        store_dir.join(s)
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outputs of `nix path-info --json -r` for one closure, as each Nix
    /// prints it: recorded from 2.8.0 here, assembled from each version's
    /// serialiser otherwise (tests/nix-outputs/README.md says which and
    /// where from).
    const CLOSURES: &[(&str, &str)] = &[
        (
            "2.8",
            include_str!("../../tests/nix-outputs/path-info-2.8.json"),
        ),
        (
            "2.18",
            include_str!("../../tests/nix-outputs/path-info-2.18.json"),
        ),
        (
            "lix",
            include_str!("../../tests/nix-outputs/path-info-lix.json"),
        ),
        (
            "2.33 v1",
            include_str!("../../tests/nix-outputs/path-info-2.33-v1.json"),
        ),
        (
            "2.33 v2",
            include_str!("../../tests/nix-outputs/path-info-2.33-v2.json"),
        ),
        (
            "2.35 v3",
            include_str!("../../tests/nix-outputs/path-info-2.33-v3.json"),
        ),
        (
            "determinate",
            include_str!("../../tests/nix-outputs/path-info-determinate.json"),
        ),
    ];

    /// Without `-r`, with one path deleted: how each shape says "invalid".
    const WITH_INVALID: &[(&str, &str)] = &[
        (
            "2.8",
            include_str!("../../tests/nix-outputs/path-info-2.8-invalid.json"),
        ),
        (
            "2.19",
            include_str!("../../tests/nix-outputs/path-info-2.19.json"),
        ),
        (
            "2.23",
            include_str!("../../tests/nix-outputs/path-info-2.23.json"),
        ),
    ];

    fn store() -> &'static Path {
        Path::new("/nix/store")
    }

    #[test]
    fn every_shape_gives_the_same_closure() {
        let want = parse(CLOSURES[0].1.as_bytes(), store()).unwrap();
        assert_eq!(want.len(), 3);
        let multi = &want[0];
        assert_eq!(
            multi.path,
            Path::new("/nix/store/mxd4h4c95q4r1pgng841zg1jp5zwfx7f-multi-1.0")
        );
        assert_eq!(multi.nar_size, 168);
        assert_eq!(
            multi.references,
            vec![PathBuf::from(
                "/nix/store/y9v4w1kf41c10q7fdxlbz10s0adiximd-dep-1.0"
            )]
        );
        assert_eq!(
            multi.nar_hash,
            "sha256-qkH8ZxXeehOKQP056kkOIqz8vEPzXus2gt3j+NP9gfs="
        );
        assert_eq!(
            multi.deriver.as_deref(),
            Some(Path::new(
                "/nix/store/8xcjvjgml5p6nim7gnsqp0kyx1cg604v-multi-1.0.drv"
            ))
        );
        assert_eq!(
            want[1].deriver, None,
            "a content-addressed path has no deriver"
        );
        for (version, json) in &CLOSURES[1..] {
            assert_eq!(parse(json.as_bytes(), store()).unwrap(), want, "{version}");
        }
    }

    #[test]
    fn an_invalid_path_is_named() {
        for (version, json) in WITH_INVALID {
            let e = parse(json.as_bytes(), store()).unwrap_err();
            assert_eq!(
                e,
                PathInfoError::Invalid("/nix/store/hwdwg0ib34hhjgsjs7swk2g6ci6a8cid-baz".into()),
                "{version}"
            );
        }
    }

    #[test]
    fn unknown_shapes_are_errors_that_say_why() {
        let v4 = CLOSURES[4].1.replace(
            r#""storeDir":"/nix/store","version":2}"#,
            r#""storeDir":"/nix/store","version":4}"#,
        );
        assert_eq!(
            parse(v4.as_bytes(), store()),
            Err(PathInfoError::UnknownVersion(4))
        );
        for (bad, why) in [
            ("warning: something\n[]", "not JSON"),
            ("42", "a JSON number"),
            (r#"[{"narSize":1}]"#, "no \"path\""),
            (r#"{"/nix/store/a-b":{"narHash":"sha256-x"}}"#, "no narSize"),
            (
                r#"{"/nix/store/a-b":{"narSize":1,"references":"x"}}"#,
                "not a list",
            ),
        ] {
            let e = parse(bad.as_bytes(), store()).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
