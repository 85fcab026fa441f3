//! The one place where failures become OCI error JSON.
//!
//! Every variant maps to a status and an OCI code in one exhaustive `match`,
//! so adding a variant forces a decision about what clients see.

use crate::events::BuildFailure;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid repository name {name:?}: {rule}")]
    NameInvalid { name: String, rule: &'static str },
    #[error("invalid tag {tag:?}: a tag is 1 to 128 characters of [a-zA-Z0-9_.-] and does not start with '.' or '-'")]
    TagInvalid { tag: String },
    #[error("invalid digest {digest:?}: expected sha256:<64 lowercase hex digits>")]
    DigestInvalid { digest: String },
    #[error("{name:?} is not an image of {flake}{}", suggest(.available))]
    NameUnknown {
        name: String,
        flake: String,
        available: Vec<String>,
    },
    #[error("tag {tag:?} is not a branch, tag or commit of {flake}")]
    TagUnknown { tag: String, flake: String },
    #[error(
        "tag {tag:?} cannot be served: {flake} is not a git source, so only \"latest\" exists"
    )]
    TagNotGit { tag: String, flake: String },
    #[error("{}", unknown_packages(.unknown, .source_name))]
    PackagesUnknown {
        unknown: Vec<(String, Vec<String>)>,
        source_name: String,
    },
    #[error("manifest {reference} is not known to this registry")]
    ManifestUnknown { reference: String },
    #[error("blob {digest} is not served by this registry")]
    BlobUnknown { digest: String },
    /// A layer whose source can no longer give its bytes (an image archive
    /// in the store found truncated or damaged): the digest is dropped.
    #[error("blob {digest} is no longer served: {reason}")]
    BlobGone { digest: String, reason: String },
    #[error("nix build of {target} failed; last lines of the log:\n{log_tail}")]
    BuildFailed { target: String, log_tail: String },
    #[error("nix build of {target} timed out after {secs} s; raise it with --nix-timeout or FLAKEPORT_NIX_TIMEOUT")]
    BuildTimeout { target: String, secs: u64 },
    #[error("{target} built, but its output cannot be served as an image: {reason}")]
    NotAnImage { target: String, reason: String },
    #[error("this registry is read-only: {method} is not supported")]
    ReadOnly { method: String },
    #[error("no such endpoint: {path}")]
    NoSuchEndpoint { path: String },
    #[error("this registry signs nothing: start it with --signing-key to sign manifests")]
    NotSigning,
    #[error("invalid pagination: {reason}")]
    PaginationInvalid { reason: String },
    #[error("invalid warm request: {reason}")]
    WarmInvalid { reason: String },
    #[error("webhook refused: {reason}")]
    WebhookDenied { reason: String },
    #[error("invalid webhook delivery: {reason}")]
    WebhookInvalid { reason: String },
    #[error("requested range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("authentication required")]
    Unauthorized { challenge: String },
    #[error("too many requests: {what}; retry in {retry_after_secs} s")]
    TooManyRequests { what: String, retry_after_secs: u64 },
    #[error("temporarily unavailable: {reason}; retry in {retry_after_secs} s")]
    Unavailable {
        reason: String,
        retry_after_secs: u64,
    },
    /// One system of an index failed: the index is not served, and the
    /// client learns which system and why.
    #[error("for {system}: {source}")]
    ForSystem {
        system: String,
        source: Box<RegistryError>,
    },
    /// A Nix command other than the build failed (a store query): its
    /// message, with the command and the version.
    #[error("`{command}` failed ({nix}); last lines of its output:\n{log_tail}")]
    NixFailed {
        command: String,
        nix: String,
        log_tail: String,
    },
    /// A tool's answer flakeport cannot read (a Nix whose output changed):
    /// the command and the version are named, so the operator knows what
    /// to report or which Nix to run.
    #[error("cannot read the output of `{command}` from {nix}: {reason}")]
    NixOutput {
        command: String,
        nix: String,
        reason: String,
    },
    /// Details go to the log, never to the client: they may hold paths.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The OCI code of an error reply, left on the response for whoever counts.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

fn unknown_packages(unknown: &[(String, Vec<String>)], source: &str) -> String {
    if unknown.is_empty() {
        return "the image name names no packages: use NAME/PACKAGE[/PACKAGE...] or shell/PACKAGE...".into();
    }
    let each: Vec<String> = unknown
        .iter()
        .map(|(name, close)| {
            if close.is_empty() {
                name.clone()
            } else {
                format!("{name} (did you mean {}?)", close.join(", "))
            }
        })
        .collect();
    format!("unknown packages in {source}: {}", each.join("; "))
}

fn suggest(available: &[String]) -> String {
    if available.is_empty() {
        return String::new();
    }
    format!("; images it has include: {}", available.join(", "))
}

impl RegistryError {
    pub fn internal(e: impl std::fmt::Display) -> Self {
        RegistryError::Internal(e.to_string())
    }

    /// A layer that cannot be read for want of descriptors or memory (see
    /// `layer::is_transient`): the client is asked to retry.
    pub fn layer_unreadable_for_now() -> Self {
        RegistryError::Unavailable {
            reason: "the server is short of resources to read this layer".into(),
            retry_after_secs: 1,
        }
    }

    /// Why producing an image failed, as a metric label.
    pub fn build_failure(&self) -> BuildFailure {
        use RegistryError::*;
        match self {
            BuildFailed { .. } => BuildFailure::Build,
            BuildTimeout { .. } => BuildFailure::Timeout,
            NotAnImage { .. } => BuildFailure::NotAnImage,
            NixOutput { .. } | NixFailed { .. } => BuildFailure::NixOutput,
            NameUnknown { .. } | TagUnknown { .. } | TagNotGit { .. } | PackagesUnknown { .. } => {
                BuildFailure::NotFound
            }
            TooManyRequests { .. } | Unavailable { .. } => BuildFailure::Busy,
            ForSystem { source, .. } => source.build_failure(),
            _ => BuildFailure::Internal,
        }
    }

    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use RegistryError::*;
        match self {
            NameInvalid { .. } => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            TagInvalid { .. } => (StatusCode::BAD_REQUEST, "TAG_INVALID"),
            DigestInvalid { .. } => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            NameUnknown { .. } => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            TagUnknown { .. }
            | TagNotGit { .. }
            | ManifestUnknown { .. }
            | PackagesUnknown { .. } => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            BlobUnknown { .. } | BlobGone { .. } => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            BuildFailed { .. } | NotAnImage { .. } | NixOutput { .. } | NixFailed { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN")
            }
            BuildTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "UNKNOWN"),
            ReadOnly { .. } => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            NoSuchEndpoint { .. } => (StatusCode::NOT_FOUND, "UNSUPPORTED"),
            NotSigning => (StatusCode::NOT_FOUND, "UNSUPPORTED"),
            PaginationInvalid { .. } => (StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID"),
            WarmInvalid { .. } | WebhookInvalid { .. } => (StatusCode::BAD_REQUEST, "UNSUPPORTED"),
            WebhookDenied { .. } => (StatusCode::FORBIDDEN, "DENIED"),
            RangeNotSatisfiable { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UNKNOWN"),
            Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            ForSystem { source, .. } => source.status_and_code(),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        }
    }

    fn client_message(&self) -> String {
        match self {
            RegistryError::Internal(_) => {
                "internal error; the server log has the details".to_string()
            }
            RegistryError::ForSystem { system, source } => {
                format!("for {system}: {}", source.client_message())
            }
            // Messages name flake URLs and quote Nix's log: no credentials.
            other => crate::redact::redact(&other.to_string()).into_owned(),
        }
    }

    /// The OCI error body: `{"errors":[{"code","message","detail"}]}`.
    pub fn body(&self) -> serde_json::Value {
        let (_, code) = self.status_and_code();
        serde_json::json!({ "errors": [ { "code": code, "message": self.client_message(), "detail": null } ] })
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(code, error = %self, "request failed");
        } else {
            tracing::debug!(code, error = %self, "request refused");
        }
        let body = serde_json::to_vec(&self.body()).expect("error JSON serialises");
        let mut resp = (status, body).into_response();
        // For the error counter of `/metrics` (the registry's middleware).
        resp.extensions_mut().insert(ErrorCode(code));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let RegistryError::RangeNotSatisfiable { size } = self {
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).unwrap(),
            );
        }
        match &self {
            RegistryError::ReadOnly { .. } => {
                h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            RegistryError::Unauthorized { challenge } => {
                if let Ok(v) = HeaderValue::from_str(challenge) {
                    h.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            RegistryError::TooManyRequests {
                retry_after_secs, ..
            }
            | RegistryError::Unavailable {
                retry_after_secs, ..
            } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        resp
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// The Nix floor's failures, as clients have always seen them.
impl From<crate::nix::NixError> for RegistryError {
    fn from(e: crate::nix::NixError) -> Self {
        use crate::nix::NixError as N;
        match e {
            N::NameUnknown {
                name,
                flake,
                available,
            } => RegistryError::NameUnknown {
                name,
                flake,
                available,
            },
            N::TagUnknown { tag, flake } => RegistryError::TagUnknown { tag, flake },
            N::TagNotGit { tag, flake } => RegistryError::TagNotGit { tag, flake },
            N::PackagesUnknown {
                unknown,
                source_name,
            } => RegistryError::PackagesUnknown {
                unknown,
                source_name,
            },
            N::BuildFailed { target, log_tail } => RegistryError::BuildFailed { target, log_tail },
            N::BuildTimeout { target, secs } => RegistryError::BuildTimeout { target, secs },
            N::CommandFailed {
                command,
                nix,
                log_tail,
            } => RegistryError::NixFailed {
                command,
                nix,
                log_tail,
            },
            N::Unreadable {
                command,
                nix,
                reason,
            } => RegistryError::NixOutput {
                command,
                nix,
                reason,
            },
            N::Busy => RegistryError::TooManyRequests {
                what: N::Busy.to_string(),
                retry_after_secs: 5,
            },
            N::Git(reason) => RegistryError::Internal(reason),
        }
    }
}
