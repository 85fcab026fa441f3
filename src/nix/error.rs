//! What can go wrong on the Nix floor, in its own words. `crate::error`
//! turns each variant into the registry's reply; nothing here knows HTTP.

/// A failure of resolving, selecting a ref, evaluating or building.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NixError {
    /// The name is no image of the flake; `available` are the closest
    /// names it has.
    #[error("{name:?} is not an image of {flake}")]
    NameUnknown {
        name: String,
        flake: String,
        available: Vec<String>,
    },
    #[error("tag {tag:?} is not a branch, tag or commit of {flake}")]
    TagUnknown { tag: String, flake: String },
    /// A tag other than `latest` of a source that has no refs.
    #[error("{flake} is not a git source, so only \"latest\" exists")]
    TagNotGit { tag: String, flake: String },
    /// Every unknown package of a package path, each with close names;
    /// empty when the path names no package at all.
    #[error("unknown packages in {source_name}")]
    PackagesUnknown {
        unknown: Vec<(String, Vec<String>)>,
        source_name: String,
    },
    #[error("nix build of {target} failed")]
    BuildFailed { target: String, log_tail: String },
    #[error("nix build of {target} timed out after {secs} s")]
    BuildTimeout { target: String, secs: u64 },
    /// A Nix command other than a build failed (a store query).
    #[error("`{command}` failed ({nix})")]
    CommandFailed {
        command: String,
        nix: String,
        log_tail: String,
    },
    /// A Nix command's answer that cannot be read (a Nix whose output
    /// changed).
    #[error("cannot read the output of `{command}` from {nix}: {reason}")]
    Unreadable {
        command: String,
        nix: String,
        reason: String,
    },
    /// Too many processes already wait for a slot.
    #[error("too many nix and git processes are waiting to run")]
    Busy,
    /// git (ls-remote, a mirror fetch) failed, or the state dir could not
    /// hold its mirror.
    #[error("{0}")]
    Git(String),
}

pub type Result<T, E = NixError> = std::result::Result<T, E>;
