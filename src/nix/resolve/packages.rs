//! A Nixery-style image: a package path + tag -> [`PackageTarget`] (which
//! package set, at which git ref, which packages).

use super::flake::FlakeSource;
use crate::nix::error::{NixError, Result};

/// The package set of Nixery-style images (`--packages`).
#[derive(Debug, Clone)]
pub enum PackageSource {
    /// A flake: `legacyPackages.<system>`, then `packages.<system>`.
    Flake(FlakeSource),
    /// A local nixpkgs-style tree: `import path { system }`. When it is a git
    /// work tree, tags select its refs.
    Path { path: String, git: bool },
    /// A git URL, fetched with `builtins.fetchGit` and imported.
    Git { url: String },
}

/// Meta-packages of `shell`: those the set has are added, in this order.
pub const SHELL_PACKAGES: &[&str] = &["bashInteractive", "coreutils", "moreutils", "nano"];
/// Added to every package image when the set has them (Nixery does the
/// same): CA certificates and /etc/services, /etc/protocols.
pub const ALWAYS_PACKAGES: &[&str] = &["cacert", "iana-etc"];

/// What to build for a package-path image. Packages are sorted and
/// deduplicated: the same set in any order is the same image.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PackageTarget {
    /// `flake`, `path` or `git`: how the Nix side loads the set.
    pub kind: &'static str,
    /// Flake URL (with the ref applied), path or git URL.
    pub location: String,
    /// Full git ref name (`refs/heads/x`, `refs/tags/x`) or empty.
    pub git_ref: String,
    /// 40-hex commit or empty.
    pub rev: String,
    pub system: String,
    /// Attribute paths, dotted (`python3packages.requests`), as requested.
    pub packages: Vec<String>,
    /// Optional packages: added when the set has them.
    pub optional: Vec<String>,
    /// `shell` was requested: `Cmd` is bash when the image has it.
    pub shell: bool,
    pub pinned: bool,
    pub tag: String,
}

impl PackageTarget {
    /// The name a pull of this image uses (`shell/curl/jq`), normalised,
    /// without `arm64/`: the system says that, and `arm64/jq` is the same
    /// image as `jq` built for aarch64-linux.
    pub fn name(&self) -> String {
        let mut segments = Vec::new();
        if self.shell {
            segments.push("shell".to_string());
        }
        segments.extend(self.packages.iter().cloned());
        segments.join("/")
    }
}

impl std::fmt::Display for PackageTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = [&self.git_ref, &self.rev]
            .into_iter()
            .find(|s| !s.is_empty())
            .cloned()
            .unwrap_or_default();
        write!(
            f,
            "packages {} of {}",
            self.packages.join(" "),
            self.location
        )?;
        if !at.is_empty() {
            write!(f, " at {at}")?;
        }
        Ok(())
    }
}

impl PackageSource {
    /// `--packages`: a local path, a git URL, or else a flake reference.
    pub fn parse(given: &str) -> std::result::Result<PackageSource, String> {
        let is_git_url = ["https://", "http://", "ssh://", "git://", "file://"]
            .iter()
            .any(|p| given.starts_with(p))
            || given.starts_with("git@");
        if is_git_url {
            return Ok(PackageSource::Git {
                url: given.to_string(),
            });
        }
        if given.starts_with('/') || given.starts_with('.') {
            let abs = std::fs::canonicalize(given).map_err(|e| format!("{given}: {e}"))?;
            let git = abs.join(".git").exists();
            return Ok(PackageSource::Path {
                path: abs.to_string_lossy().into_owned(),
                git,
            });
        }
        FlakeSource::parse(given).map(PackageSource::Flake)
    }

    pub fn describe(&self) -> String {
        match self {
            PackageSource::Flake(f) => f.url.clone(),
            PackageSource::Path { path, .. } => path.clone(),
            PackageSource::Git { url } => url.clone(),
        }
    }

    /// A URL `git ls-remote` understands, when tags select git refs.
    pub fn git_remote(&self) -> Option<String> {
        match self {
            PackageSource::Flake(f) => f.git_remote(),
            PackageSource::Path { path, git: true } => Some(path.clone()),
            PackageSource::Path { git: false, .. } => None,
            PackageSource::Git { url } => Some(url.clone()),
        }
    }

    /// Image name -> target. A leading run of `shell` and `arm64` are
    /// meta-packages; every other segment is an attribute path of the set.
    /// `git_ref` is the tag's full ref name, looked up by the caller.
    pub fn target(
        &self,
        name: &str,
        tag: &str,
        host_system: &str,
        git_ref: Option<String>,
    ) -> Result<PackageTarget> {
        let mut segments = name.split('/').peekable();
        let (mut shell, mut arm64) = (false, false);
        while let Some(&s) = segments.peek() {
            match s {
                "shell" => shell = true,
                "arm64" => arm64 = true,
                _ => break,
            }
            segments.next();
        }
        let mut packages: Vec<String> = segments.map(str::to_string).collect();
        packages.sort();
        packages.dedup();
        if packages.is_empty() && !shell {
            return Err(NixError::PackagesUnknown {
                unknown: vec![],
                source_name: self.describe(),
            });
        }
        let mut optional: Vec<String> = ALWAYS_PACKAGES.iter().map(|s| s.to_string()).collect();
        if shell {
            optional.extend(SHELL_PACKAGES.iter().map(|s| s.to_string()));
        }
        let system = if arm64 {
            "aarch64-linux".to_string()
        } else {
            host_system.to_string()
        };
        let pinned = crate::vocab::is_commit(tag);
        let (kind, location, git_ref, rev) = match self {
            PackageSource::Flake(f) => ("flake", f.at_tag(tag)?.0, String::new(), String::new()),
            PackageSource::Path { path, git } => {
                let (r, v) = git_selector(tag, *git, git_ref, path)?;
                ("path", path.clone(), r, v)
            }
            PackageSource::Git { url } => {
                let (r, v) = git_selector(tag, true, git_ref, url)?;
                ("git", url.clone(), r, v)
            }
        };
        Ok(PackageTarget {
            kind,
            location,
            git_ref,
            rev,
            system,
            packages,
            optional,
            shell,
            pinned,
            tag: tag.to_string(),
        })
    }
}

/// `latest` -> the default branch (or the work tree of a local path), a
/// 40-hex tag -> that commit, any other tag -> the branch or git tag the
/// caller found with `git ls-remote`.
fn git_selector(
    tag: &str,
    git: bool,
    git_ref: Option<String>,
    source: &str,
) -> Result<(String, String)> {
    if tag == "latest" {
        return Ok((String::new(), String::new()));
    }
    if !git {
        return Err(NixError::TagNotGit {
            tag: tag.to_string(),
            flake: source.to_string(),
        });
    }
    if crate::vocab::is_commit(tag) {
        return Ok((String::new(), tag.to_ascii_lowercase()));
    }
    match git_ref {
        Some(r) => Ok((r, String::new())),
        None => Err(NixError::TagUnknown {
            tag: tag.to_string(),
            flake: source.to_string(),
        }),
    }
}

#[cfg(test)]
mod package_tests {
    use super::*;

    #[test]
    fn names_become_sorted_package_sets() {
        let src = PackageSource::Git {
            url: "https://example.com/pkgs.git".into(),
        };
        let a = src
            .target("shell/jq/curl/jq", "latest", "x86_64-linux", None)
            .unwrap();
        let b = src
            .target("shell/curl/jq", "latest", "x86_64-linux", None)
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.packages, vec!["curl", "jq"]);
        assert!(a.shell && a.optional.contains(&"bashInteractive".to_string()));
        let arm = src
            .target("arm64/shell/git", "latest", "x86_64-linux", None)
            .unwrap();
        assert_eq!(arm.system, "aarch64-linux");
        // A meta word after a package is a package name.
        assert_eq!(
            src.target("git/shell", "latest", "x86_64-linux", None)
                .unwrap()
                .packages,
            vec!["git", "shell"]
        );
        let v1 = src
            .target("jq", "v1", "x86_64-linux", Some("refs/tags/v1".into()))
            .unwrap();
        assert_eq!((v1.git_ref.as_str(), v1.pinned), ("refs/tags/v1", false));
        assert!(matches!(
            src.target("jq", "v9", "x86_64-linux", None).unwrap_err(),
            NixError::TagUnknown { .. }
        ));
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let pinned = src.target("jq", sha, "x86_64-linux", None).unwrap();
        assert_eq!((pinned.rev.as_str(), pinned.pinned), (sha, true));
        assert!(src.target("arm64", "latest", "x86_64-linux", None).is_err());
    }

    #[test]
    fn sources() {
        assert!(matches!(
            PackageSource::parse("https://github.com/NixOS/nixpkgs").unwrap(),
            PackageSource::Git { .. }
        ));
        assert!(matches!(
            PackageSource::parse("github:NixOS/nixpkgs/nixos-25.05").unwrap(),
            PackageSource::Flake(_)
        ));
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            PackageSource::parse(d.path().to_str().unwrap()).unwrap(),
            PackageSource::Path { git: false, .. }
        ));
    }
}
