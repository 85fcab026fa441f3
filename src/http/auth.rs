//! Who may pull: HTTP Basic against an htpasswd file of bcrypt entries
//! (`htpasswd -B`, as distribution reads it), and bearer tokens from a file
//! for machines. Unauthenticated requests get distribution's challenge
//! (401, `WWW-Authenticate: Basic realm=...`), which is what makes `docker
//! login`, skopeo `--creds`, containerd and kubelet `imagePullSecrets` send
//! their credentials.
//!
//! A token works as a bearer (`Authorization: Bearer TOKEN`) and as the
//! password of a Basic login with any user name, so every client that can
//! only do Basic (kubelet, docker) can use one too.
//!
//! Both files are read again when they change ([`crate::watched`]). bcrypt is slow on purpose
//! (tens of ms), and clients send credentials on every request, so a hash
//! of each header that verified is remembered for [`VERIFIED_FOR`].

use crate::watched::Reloading;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const VERIFIED_FOR: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct AuthFileError {
    path: String,
    reason: String,
}

#[derive(Default)]
struct Credentials {
    /// user -> bcrypt hash
    users: HashMap<String, String>,
    /// sha256 of each token: tokens are not kept in memory as they are.
    tokens: Vec<[u8; 32]>,
}

pub struct Auth {
    realm: String,
    credentials: Arc<Reloading<Credentials>>,
    /// Hash of a header that verified -> the credentials it verified
    /// against: after a reload those are not the current ones any more,
    /// so a removed user or token stops working at once.
    verified: moka::sync::Cache<[u8; 32], Arc<Credentials>>,
}

impl Auth {
    /// None when neither file is given: every request is let through.
    pub fn new(
        htpasswd: Option<PathBuf>,
        tokens: Option<PathBuf>,
        realm: String,
    ) -> Result<Option<Arc<Auth>>, AuthFileError> {
        let paths: Vec<PathBuf> = htpasswd.iter().chain(tokens.iter()).cloned().collect();
        if paths.is_empty() {
            return Ok(None);
        }
        let credentials = Reloading::new("credentials", paths, move |_| {
            load(htpasswd.as_deref(), tokens.as_deref())
        })?;
        Ok(Some(Arc::new(Auth {
            realm,
            credentials,
            verified: moka::sync::Cache::builder()
                .max_capacity(4096)
                .time_to_live(VERIFIED_FOR)
                .build(),
        })))
    }

    /// The challenge a 401 carries.
    pub fn challenge(&self) -> String {
        format!("Basic realm=\"{}\"", self.realm.replace('"', ""))
    }

    /// Does this `Authorization` header value let the request through?
    pub async fn allows(&self, header: Option<&[u8]>) -> bool {
        let Some(header) = header else { return false };
        let key: [u8; 32] = Sha256::digest(header).into();
        let creds = self.credentials.get();
        if self
            .verified
            .get(&key)
            .is_some_and(|against| Arc::ptr_eq(&against, &creds))
        {
            return true;
        }
        let header = header.to_vec();
        let checked = creds.clone();
        let ok = tokio::task::spawn_blocking(move || check(&checked, &header))
            .await
            .unwrap_or(false);
        if ok {
            self.verified.insert(key, creds);
        }
        ok
    }
}

fn check(creds: &Credentials, header: &[u8]) -> bool {
    let Ok(header) = std::str::from_utf8(header) else {
        return false;
    };
    let (scheme, value) = header.trim().split_once(' ').unwrap_or((header, ""));
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return token_matches(creds, value);
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Some(decoded) = base64::engine::general_purpose::STANDARD
        .decode(value)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
    else {
        return false;
    };
    let Some((user, password)) = decoded.split_once(':') else {
        return false;
    };
    if token_matches(creds, password) {
        return true;
    }
    match creds.users.get(user) {
        Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
        None => {
            // An unknown user costs a verify of the same cost as a known
            // one: user names cannot be told apart by timing.
            if let Some(any) = creds.users.values().next() {
                let _ = bcrypt::verify(password, any);
            }
            false
        }
    }
}

fn token_matches(creds: &Credentials, token: &str) -> bool {
    if token.is_empty() {
        return false;
    }
    let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    // Compare every byte of every entry: no early exit to time.
    creds.tokens.iter().fold(false, |found, t| {
        found
            | (t.iter()
                .zip(h.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0)
    })
}

fn load(htpasswd: Option<&Path>, tokens: Option<&Path>) -> Result<Credentials, AuthFileError> {
    let mut creds = Credentials::default();
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| AuthFileError {
            path: p.display().to_string(),
            reason: e.to_string(),
        })
    };
    if let Some(p) = htpasswd {
        for (n, line) in read(p)?.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| AuthFileError {
                path: p.display().to_string(),
                reason: format!("line {}: {reason}", n + 1),
            };
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| bad("expected USER:HASH"))?;
            if !hash.starts_with("$2") {
                return Err(bad(
                    "only bcrypt entries are accepted (write them with `htpasswd -B`)",
                ));
            }
            creds.users.insert(user.to_string(), hash.to_string());
        }
    }
    if let Some(p) = tokens {
        for line in read(p)?.lines() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            creds.tokens.push(Sha256::digest(t.as_bytes()).into());
        }
    }
    Ok(creds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        let mut c = Credentials::default();
        c.users
            .insert("alice".into(), bcrypt::hash("wonderland", 4).unwrap());
        c.tokens.push(Sha256::digest(b"machine-token").into());
        c
    }

    fn basic(user_pass: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
        .into_bytes()
    }

    #[test]
    fn basic_and_bearer() {
        let c = creds();
        assert!(check(&c, &basic("alice:wonderland")));
        assert!(!check(&c, &basic("alice:wonderlanD")));
        assert!(!check(&c, &basic("bob:wonderland")));
        assert!(!check(&c, &basic("alice")));
        assert!(check(&c, b"Bearer machine-token"));
        assert!(check(&c, b"bearer   machine-token "));
        assert!(!check(&c, b"Bearer machine-toke"));
        assert!(!check(&c, b"Bearer "));
        assert!(check(&c, &basic("anyone:machine-token")));
        assert!(!check(&c, b"Digest machine-token"));
        assert!(!check(&c, b"Basic !!!"));
        assert!(!check(&c, &[0xff, 0xfe]));
    }

    #[test]
    fn only_bcrypt_entries_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("htpasswd");
        std::fs::write(&p, "# users\nalice:$apr1$abc$def\n").unwrap();
        let e = load(Some(&p), None).err().unwrap();
        assert!(e.to_string().contains("line 2"), "{e}");
        std::fs::write(&p, format!("alice:{}\n\n", bcrypt::hash("pw", 4).unwrap())).unwrap();
        assert_eq!(load(Some(&p), None).unwrap().users.len(), 1);
    }

    proptest::proptest! {
        #[test]
        fn any_header_is_refused_without_panic(h in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            proptest::prop_assert!(!check(&creds(), &h) || h.starts_with(b"Bearer machine-token"));
        }
    }
}
