//! Name + tag -> [`BuildTarget`]: which flake, at which git ref, which
//! attribute. Request text only ever leaves here as validated data.

use super::error::{NixError, Result};
use std::path::Path;

/// The flake the operator configured, and what kind of source it is.
#[derive(Debug, Clone)]
pub struct FlakeSource {
    /// As given (after turning a local path into a URL).
    pub url: String,
    kind: SourceKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SourceKind {
    /// `github:`, `gitlab:`, `sourcehut:`: the ref is a path segment.
    Forge {
        scheme: String,
        owner_repo: String,
        query: String,
    },
    /// `git+https:`, `git+file:`, `git+ssh:`...: the ref is a query parameter.
    Git,
    /// Anything else (`path:`, tarballs): only `latest` exists.
    Other,
}

/// What to build for one pull.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BuildTarget {
    /// Flake URL with the git ref applied.
    pub flake_ref: String,
    /// Attribute path below `packages.<system>` / `legacyPackages.<system>`.
    pub attr_path: Vec<String>,
    pub system: String,
    /// A 40-hex commit: the result never changes, cache it for good.
    pub pinned: bool,
    /// The tag as requested (for messages).
    pub tag: String,
    /// What Nix evaluates: `flake_ref` locked to the commit the ref gate
    /// resolved, so the evaluation is pure (no `--impure`, nothing read
    /// from the environment); `None` for `latest` and non-git sources.
    pub locked_ref: Option<String>,
}

impl BuildTarget {
    /// The commit the tag was resolved to: the tag itself when it is one,
    /// else the `rev` the evaluation was locked to (none for `latest`).
    pub fn revision(&self) -> Option<String> {
        let is_commit = crate::vocab::is_commit;
        if is_commit(&self.tag) {
            return Some(self.tag.clone());
        }
        let locked = self.locked_ref.as_deref()?;
        let query = locked.split_once('?').map(|(_, q)| q).unwrap_or("");
        query
            .split('&')
            .find_map(|p| p.strip_prefix("rev="))
            .or_else(|| locked.split(['?', '/']).rev().find(|s| is_commit(s)))
            .map(str::to_string)
    }

    /// The flake URL handed to Nix.
    pub fn eval_ref(&self) -> &str {
        self.locked_ref.as_deref().unwrap_or(&self.flake_ref)
    }
}

impl std::fmt::Display for BuildTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.flake_ref, self.attr_path.join("."))
    }
}

impl FlakeSource {
    /// Accepts flake URLs and local paths; a local path inside a git work
    /// tree becomes `git+file://` so that tags can select its refs.
    pub fn parse(given: &str) -> std::result::Result<FlakeSource, String> {
        let url = if given.starts_with('/')
            || given.starts_with('.')
            || (!given.contains(':') && Path::new(given).exists())
        {
            let abs = std::fs::canonicalize(given).map_err(|e| format!("{given}: {e}"))?;
            if abs.join(".git").exists() {
                format!("git+file://{}", abs.display())
            } else {
                format!("path:{}", abs.display())
            }
        } else {
            given.to_string()
        };
        let kind = if let Some((scheme, rest)) = url
            .split_once(':')
            .filter(|(s, _)| matches!(*s, "github" | "gitlab" | "sourcehut"))
        {
            let (path, query) = match rest.split_once('?') {
                Some((p, q)) => (p, format!("?{q}")),
                None => (rest, String::new()),
            };
            let mut segs = path.split('/');
            let owner_repo = match (segs.next(), segs.next()) {
                (Some(o), Some(r)) if !o.is_empty() && !r.is_empty() => format!("{o}/{r}"),
                _ => return Err(format!("{url}: expected {scheme}:OWNER/REPO")),
            };
            SourceKind::Forge {
                scheme: scheme.to_string(),
                owner_repo,
                query,
            }
        } else if url.starts_with("git+") || url.starts_with("git://") {
            SourceKind::Git
        } else {
            SourceKind::Other
        };
        Ok(FlakeSource { url, kind })
    }

    /// A URL `git ls-remote` understands, to list the refs for `tags/list`.
    pub fn git_remote(&self) -> Option<String> {
        match &self.kind {
            SourceKind::Forge {
                scheme, owner_repo, ..
            } => {
                let host = match scheme.as_str() {
                    "github" => "github.com",
                    "gitlab" => "gitlab.com",
                    _ => "git.sr.ht",
                };
                Some(format!("https://{host}/{owner_repo}"))
            }
            SourceKind::Git => {
                let u = self.url.strip_prefix("git+").unwrap_or(&self.url);
                Some(u.split('?').next().unwrap_or(u).to_string())
            }
            SourceKind::Other => None,
        }
    }

    /// The flake URL for a tag: `latest` is the URL as given, a 40-hex tag is
    /// that commit, any other tag is that branch or git tag.
    pub fn at_tag(&self, tag: &str) -> Result<(String, bool)> {
        if tag == "latest" {
            return Ok((self.url.clone(), false));
        }
        let pinned = crate::vocab::is_commit(tag);
        match &self.kind {
            SourceKind::Forge {
                scheme,
                owner_repo,
                query,
            } => Ok((format!("{scheme}:{owner_repo}/{tag}{query}"), pinned)),
            SourceKind::Git => {
                let (base, query) = match self.url.split_once('?') {
                    Some((b, q)) => (b, q),
                    None => (self.url.as_str(), ""),
                };
                let mut params: Vec<&str> = query
                    .split('&')
                    .filter(|p| !p.is_empty() && !p.starts_with("ref=") && !p.starts_with("rev="))
                    .collect();
                let new = if pinned {
                    format!("rev={}", tag.to_ascii_lowercase())
                } else {
                    format!("ref={tag}")
                };
                params.push(&new);
                Ok((format!("{base}?{}", params.join("&")), pinned))
            }
            SourceKind::Other => Err(NixError::TagNotGit {
                tag: tag.to_string(),
                flake: self.url.clone(),
            }),
        }
    }

    /// The URL locked to `commit`, reached through `git_ref` (a full ref
    /// such as `refs/heads/main`, which a git remote needs to find the
    /// commit; forges find any commit).
    pub fn locked(&self, git_ref: Option<&str>, commit: &str) -> Option<String> {
        match &self.kind {
            SourceKind::Forge {
                scheme,
                owner_repo,
                query,
            } => Some(format!("{scheme}:{owner_repo}/{commit}{query}")),
            SourceKind::Git => {
                let (base, query) = self.url.split_once('?').unwrap_or((&self.url, ""));
                let mut params: Vec<String> = query
                    .split('&')
                    .filter(|p| !p.is_empty() && !p.starts_with("ref=") && !p.starts_with("rev="))
                    .map(str::to_string)
                    .collect();
                if let Some(r) = git_ref {
                    params.push(format!("ref={r}"));
                }
                params.push(format!("rev={commit}"));
                Some(format!("{base}?{}", params.join("&")))
            }
            SourceKind::Other => None,
        }
    }

    /// The target of `name` at `tag`; `selected` is what the ref gate
    /// resolved the tag to (a branch or tag with its commit, or a commit),
    /// which locks the evaluation.
    pub fn target(
        &self,
        name: &str,
        tag: &str,
        system: &str,
        selected: &crate::nix::refs::Selected,
    ) -> Result<BuildTarget> {
        use crate::nix::refs::Selected;
        let (flake_ref, pinned) = self.at_tag(tag)?;
        let locked_ref = match selected {
            Selected::Latest => None,
            Selected::Ref(r) => self.locked(Some(&r.full), &r.commit),
            Selected::Commit(c) => self.locked(None, c),
        };
        Ok(BuildTarget {
            locked_ref,
            flake_ref,
            // Names are validated by the route parser: '/' separates attribute
            // names, and no segment can hold a quote or a dot-less surprise.
            attr_path: name.split('/').map(str::to_string).collect(),
            system: system.to_string(),
            pinned,
            tag: tag.to_string(),
        })
    }
}

pub use crate::vocab::oci_arch;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_refs() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let gh = FlakeSource::parse("github:org/repo?dir=sub").unwrap();
        assert_eq!(
            gh.locked(Some("refs/heads/main"), sha).unwrap(),
            format!("github:org/repo/{sha}?dir=sub")
        );
        let git = FlakeSource::parse("git+https://h/r?ref=main&dir=x").unwrap();
        assert_eq!(
            git.locked(Some("refs/tags/v1"), sha).unwrap(),
            format!("git+https://h/r?dir=x&ref=refs/tags/v1&rev={sha}")
        );
        assert_eq!(
            git.locked(None, sha).unwrap(),
            format!("git+https://h/r?dir=x&rev={sha}")
        );
        assert_eq!(
            FlakeSource::parse("path:/x").unwrap().locked(None, sha),
            None
        );
    }

    #[test]
    fn tags_select_refs() {
        let gh = FlakeSource::parse("github:org/repo").unwrap();
        assert_eq!(gh.at_tag("latest").unwrap().0, "github:org/repo");
        assert_eq!(
            gh.at_tag("v1.2").unwrap(),
            ("github:org/repo/v1.2".into(), false)
        );
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            gh.at_tag(sha).unwrap(),
            (format!("github:org/repo/{sha}"), true)
        );
        let gh_ref = FlakeSource::parse("github:org/repo/main?dir=sub").unwrap();
        assert_eq!(gh_ref.at_tag("v2").unwrap().0, "github:org/repo/v2?dir=sub");
        assert_eq!(gh_ref.git_remote().unwrap(), "https://github.com/org/repo");

        let git = FlakeSource::parse("git+https://example.com/r.git?ref=main&dir=x").unwrap();
        assert_eq!(
            git.at_tag("v1").unwrap().0,
            "git+https://example.com/r.git?dir=x&ref=v1"
        );
        assert_eq!(
            git.at_tag(sha).unwrap(),
            (
                format!("git+https://example.com/r.git?dir=x&rev={sha}"),
                true
            )
        );
        assert_eq!(git.git_remote().unwrap(), "https://example.com/r.git");

        let tarball = FlakeSource::parse("https://example.com/x.tar.gz").unwrap();
        assert!(tarball.at_tag("latest").is_ok());
        assert!(matches!(
            tarball.at_tag("v1").unwrap_err(),
            NixError::TagNotGit { .. }
        ));
    }

    #[test]
    fn local_git_paths_become_git_file_urls() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join(".git")).unwrap();
        let s = FlakeSource::parse(d.path().to_str().unwrap()).unwrap();
        assert!(s.url.starts_with("git+file:///"), "{}", s.url);
        assert!(s.git_remote().is_some());
    }
}

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
