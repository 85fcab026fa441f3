//! POST `/hooks/push`: a forge's push webhook warms the `--warm` images at
//! the pushed branch or tag, so the first pull after a push finds them
//! built. GitHub (`X-Hub-Signature-256`), Gitea and Forgejo
//! (`X-Gitea-Signature`, `X-Forgejo-Signature`: HMAC-SHA256 of the body
//! with the secret) and GitLab (`X-Gitlab-Token`: the secret itself) are
//! understood. Nothing is read from a delivery before it proves the secret:
//! a forged or unsigned one gets 403 and changes nothing.

use crate::error::{RegistryError, Result};
use crate::http::registry::route::valid_tag;
use crate::service::ImageService;
use crate::watched::Reloading;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{KeyInit, Mac};
use std::sync::Arc;

/// GitHub's own cap on a delivery.
pub const MAX_BODY: usize = 25 * 1024 * 1024;

/// What a push webhook needs: the secret, and which images to warm.
pub struct Hooks {
    secret: Arc<Reloading<Vec<u8>>>,
    /// `--warm` names (their tags are replaced by the pushed one).
    names: Vec<String>,
}

impl Hooks {
    /// `--webhook-secret FILE`: the secret is the file's content without
    /// surrounding whitespace; reloaded when the file changes.
    pub fn new(secret_file: std::path::PathBuf, names: Vec<String>) -> anyhow::Result<Hooks> {
        let secret = Reloading::new("webhook secret", vec![secret_file], |paths| {
            let text =
                std::fs::read(&paths[0]).map_err(|e| format!("{}: {e}", paths[0].display()))?;
            let secret = text.trim_ascii().to_vec();
            if secret.len() < 16 {
                return Err(format!(
                    "{}: a webhook secret of fewer than 16 bytes is too easy to guess",
                    paths[0].display()
                ));
            }
            Ok(secret)
        })
        .map_err(|e| anyhow::anyhow!(e))?;
        Ok(Hooks { secret, names })
    }
}

/// The forge a delivery claims to come from, by its event header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forge {
    GitHub,
    Gitea,
    GitLab,
}

/// What a verified delivery asks for.
#[derive(Debug, PartialEq, Eq)]
enum Delivery {
    /// A branch or tag moved to a commit; `default` when it is the
    /// repository's default branch (which `latest` follows).
    Push { tag: String, default: bool },
    /// A branch or tag was deleted, or an event that is not a push.
    Ignored(String),
}

pub async fn post(
    images: &Arc<ImageService>,
    hooks: &Hooks,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response> {
    let forge = verify(headers, body, &hooks.secret.get())?;
    let (tag, default) = match read(forge, headers, body)? {
        Delivery::Push { tag, default } => (tag, default),
        Delivery::Ignored(why) => {
            tracing::info!(?forge, why, "webhook ignored");
            return Ok(axum::Json(serde_json::json!({ "ignored": why })).into_response());
        }
    };
    // The refs, and what was cached of the moved tag, are stale now.
    images.pushed(&tag, default).await;
    let mut wanted = Vec::new();
    for name in &hooks.names {
        wanted.push((name.clone(), tag.clone()));
        if default {
            wanted.push((name.clone(), "latest".to_string()));
        }
    }
    super::warm::start(images, &wanted);
    let warming: Vec<String> = wanted.iter().map(|(n, t)| format!("{n}:{t}")).collect();
    tracing::info!(?forge, tag, ?warming, "webhook: push");
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ "tag": tag, "warming": warming })),
    )
        .into_response())
}

fn denied(reason: &str) -> RegistryError {
    RegistryError::WebhookDenied {
        reason: reason.to_string(),
    }
}

/// Checks the delivery against the secret, by the scheme its forge uses.
fn verify(headers: &HeaderMap, body: &[u8], secret: &[u8]) -> Result<Forge> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let forge = if header("x-gitlab-event").is_some() {
        Forge::GitLab
    } else if header("x-gitea-event")
        .or(header("x-forgejo-event"))
        .is_some()
    {
        Forge::Gitea
    } else if header("x-github-event").is_some() {
        Forge::GitHub
    } else {
        return Err(denied(
            "not a GitHub, Gitea, Forgejo or GitLab delivery (no event header)",
        ));
    };
    if forge == Forge::GitLab {
        let token = header("x-gitlab-token").ok_or_else(|| denied("no X-Gitlab-Token"))?;
        return if constant_time_eq(token.as_bytes(), secret) {
            Ok(forge)
        } else {
            Err(denied("X-Gitlab-Token is not the secret"))
        };
    }
    // Gitea sends its own header and GitHub's; either proves the secret.
    let signature = header("x-hub-signature-256")
        .and_then(|s| s.strip_prefix("sha256="))
        .or(header("x-gitea-signature"))
        .or(header("x-forgejo-signature"))
        .ok_or_else(|| denied("unsigned: no X-Hub-Signature-256 or X-Gitea-Signature"))?;
    let given = hex::decode(signature.trim()).map_err(|_| denied("the signature is not hex"))?;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| denied("the signature does not match the body and the secret"))?;
    Ok(forge)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(serde::Deserialize)]
struct Payload {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    after: Option<String>,
    #[serde(default)]
    deleted: bool,
    repository: Option<Repository>,
    /// GitLab's name for the repository.
    project: Option<Repository>,
}

#[derive(serde::Deserialize)]
struct Repository {
    default_branch: Option<String>,
}

fn read(forge: Forge, headers: &HeaderMap, body: &[u8]) -> Result<Delivery> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let event = match forge {
        Forge::GitHub => header("x-github-event"),
        Forge::Gitea => header("x-gitea-event").or(header("x-forgejo-event")),
        Forge::GitLab => header("x-gitlab-event"),
    }
    .unwrap_or("");
    let is_push = match forge {
        Forge::GitLab => matches!(event, "Push Hook" | "Tag Push Hook"),
        _ => event == "push",
    };
    if !is_push {
        return Ok(Delivery::Ignored(format!("event {event:?} is not a push")));
    }
    let p: Payload = serde_json::from_slice(body).map_err(|e| RegistryError::WebhookInvalid {
        reason: format!("push payload: {e}"),
    })?;
    let git_ref = p.git_ref.ok_or_else(|| RegistryError::WebhookInvalid {
        reason: "push payload without \"ref\"".into(),
    })?;
    if p.deleted
        || p.after
            .as_deref()
            .is_some_and(|a| a.bytes().all(|b| b == b'0'))
    {
        return Ok(Delivery::Ignored(format!("{git_ref} was deleted")));
    }
    let (short, branch) = if let Some(b) = git_ref.strip_prefix("refs/heads/") {
        (b, true)
    } else if let Some(t) = git_ref.strip_prefix("refs/tags/") {
        (t, false)
    } else {
        return Ok(Delivery::Ignored(format!(
            "{git_ref} is not a branch or tag"
        )));
    };
    if valid_tag(short).is_err() {
        return Ok(Delivery::Ignored(format!(
            "{short:?} cannot be an image tag"
        )));
    }
    let default_branch = p.repository.or(p.project).and_then(|r| r.default_branch);
    Ok(Delivery::Push {
        tag: short.to_string(),
        default: branch && default_branch.as_deref() == Some(short),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const SECRET: &[u8] = b"0123456789abcdef-secret";

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn sign(body: &[u8]) -> String {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    const PUSH: &[u8] = br#"{"ref":"refs/heads/main","after":"1111111111111111111111111111111111111111","repository":{"default_branch":"main"}}"#;

    #[test]
    fn github_signature() {
        let h = headers(&[
            ("x-github-event", "push".into()),
            ("x-hub-signature-256", format!("sha256={}", sign(PUSH))),
        ]);
        assert_eq!(verify(&h, PUSH, SECRET).unwrap(), Forge::GitHub);
        assert_eq!(
            read(Forge::GitHub, &h, PUSH).unwrap(),
            Delivery::Push {
                tag: "main".into(),
                default: true
            }
        );
        // One byte changed, another secret, no signature: refused.
        let mut forged = PUSH.to_vec();
        forged[10] ^= 1;
        assert!(verify(&h, &forged, SECRET).is_err());
        assert!(verify(&h, PUSH, b"another-secret-of-some-length").is_err());
        let unsigned = headers(&[("x-github-event", "push".into())]);
        assert!(verify(&unsigned, PUSH, SECRET).is_err());
        assert!(verify(&HeaderMap::new(), PUSH, SECRET).is_err());
    }

    #[test]
    fn gitea_forgejo_and_gitlab() {
        let gitea = headers(&[
            ("x-gitea-event", "push".into()),
            ("x-gitea-signature", sign(PUSH)),
        ]);
        assert_eq!(verify(&gitea, PUSH, SECRET).unwrap(), Forge::Gitea);
        let forgejo = headers(&[
            ("x-forgejo-event", "push".into()),
            ("x-forgejo-signature", sign(PUSH)),
        ]);
        assert_eq!(verify(&forgejo, PUSH, SECRET).unwrap(), Forge::Gitea);
        let tag = br#"{"ref":"refs/tags/v2","after":"2222222222222222222222222222222222222222","project":{"default_branch":"main"}}"#;
        let gitlab = headers(&[
            ("x-gitlab-event", "Tag Push Hook".into()),
            (
                "x-gitlab-token",
                String::from_utf8(SECRET.to_vec()).unwrap(),
            ),
        ]);
        assert_eq!(verify(&gitlab, tag, SECRET).unwrap(), Forge::GitLab);
        assert_eq!(
            read(Forge::GitLab, &gitlab, tag).unwrap(),
            Delivery::Push {
                tag: "v2".into(),
                default: false
            }
        );
        let wrong = headers(&[
            ("x-gitlab-event", "Push Hook".into()),
            ("x-gitlab-token", "0123456789abcdef-secreT".into()),
        ]);
        assert!(verify(&wrong, tag, SECRET).is_err());
    }

    #[test]
    fn what_is_not_a_push_warms_nothing() {
        let h = headers(&[("x-github-event", "ping".into())]);
        assert!(matches!(
            read(Forge::GitHub, &h, b"{}").unwrap(),
            Delivery::Ignored(_)
        ));
        let h = headers(&[("x-github-event", "push".into())]);
        let deleted =
            br#"{"ref":"refs/heads/x","after":"0000000000000000000000000000000000000000"}"#;
        assert!(matches!(
            read(Forge::GitHub, &h, deleted).unwrap(),
            Delivery::Ignored(_)
        ));
        let slash =
            br#"{"ref":"refs/heads/feature/x","after":"1111111111111111111111111111111111111111"}"#;
        assert!(matches!(
            read(Forge::GitHub, &h, slash).unwrap(),
            Delivery::Ignored(_)
        ));
        assert!(read(Forge::GitHub, &h, b"not json").is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_body_and_signature(body in proptest::collection::vec(proptest::num::u8::ANY, 0..200), sig in "\\PC{0,80}") {
            let h = headers(&[("x-github-event", "push".into()), ("x-hub-signature-256", sig.chars().filter(|c| c.is_ascii_graphic()).collect())]);
            let _ = verify(&h, &body, SECRET);
            let _ = read(Forge::GitHub, &h, &body);
        }
    }
}
