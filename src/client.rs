//! `flakeport warm NAME[:TAG]...`: asks a running flakeport to build images
//! now (`POST /warm`), e.g. from CI after a push, so that the first pull
//! finds them ready. With `--wait` it returns once they are, printing each
//! image's digest or error, and fails if any failed.

use std::path::PathBuf;
use std::time::Duration;

pub struct WarmRequest {
    pub server: String,
    pub images: Vec<String>,
    pub wait: bool,
    /// Sent as a bearer token (a `--token-file` token).
    pub token: Option<String>,
    /// Basic credentials (an `--htpasswd` user).
    pub user: Option<(String, String)>,
    /// The CA that signed the server's certificate (else the system's
    /// webpki roots).
    pub ca_cert: Option<PathBuf>,
}

/// Runs the request and prints what the server said; the exit status is
/// whether every image is warming (or, with `--wait`, ready).
pub fn warm(req: &WarmRequest) -> anyhow::Result<bool> {
    use anyhow::Context;
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        // Waiting is for builds, which take what they take.
        .timeout_global((!req.wait).then_some(Duration::from_secs(60)));
    if let Some(ca) = &req.ca_cert {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        anyhow::ensure!(!certs.is_empty(), "{}: no certificate in it", ca.display());
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .build(),
        );
    }
    let agent: ureq::Agent = config.build().into();
    let mut query: Vec<String> = req
        .images
        .iter()
        .map(|i| format!("image={}", encode(i)))
        .collect();
    if req.wait {
        query.push("wait=1".into());
    }
    let url = format!(
        "{}/warm?{}",
        req.server.trim_end_matches('/'),
        query.join("&")
    );
    let mut post = agent.post(&url);
    if let Some(token) = &req.token {
        post = post.header("Authorization", &format!("Bearer {token}"));
    } else if let Some((user, password)) = &req.user {
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        post = post.header("Authorization", &format!("Basic {basic}"));
    }
    let mut resp = post
        .send_empty()
        .with_context(|| format!("POST {}/warm", req.server))?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string()?;
    let body: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("the server answered {status} with: {text}"))?;
    if !(200..300).contains(&status) {
        let message = body["errors"][0]["message"].as_str().unwrap_or(&text);
        anyhow::bail!("the server answered {status}: {message}");
    }
    let mut all_ok = true;
    if let Some(warming) = body["warming"].as_array() {
        for image in warming {
            println!("warming {}", image.as_str().unwrap_or_default());
        }
    }
    for image in body["images"].as_array().into_iter().flatten() {
        let name = image["image"].as_str().unwrap_or_default();
        match image["digest"].as_str() {
            Some(digest) => println!("{name} {digest}"),
            None => {
                all_ok = false;
                println!(
                    "{name} failed: {} {}",
                    image["error"]["code"].as_str().unwrap_or("UNKNOWN"),
                    image["error"]["message"].as_str().unwrap_or_default()
                );
            }
        }
    }
    Ok(all_ok)
}

/// Percent-encodes what a query value may not hold as it is.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
