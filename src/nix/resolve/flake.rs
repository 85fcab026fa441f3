//! A flake image: name + tag -> [`BuildTarget`] (which flake, at which
//! git ref, which attribute).

use crate::nix::error::{NixError, Result};
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
