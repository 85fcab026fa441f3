//! Secrets out of replies and logs. A flake or package-set URL may carry
//! credentials (`git+https://user:token@host/...`, `?access_token=...`),
//! and Nix and git print the URLs they fetch, so error messages, log tails
//! and log lines all pass through [`redact`] before anyone sees them.

use std::borrow::Cow;
use std::io::Write;

/// Query parameters whose values are credentials.
const SECRET_PARAMS: &[&str] = &["access_token", "private_token", "token", "password"];

/// `text` with the userinfo of every URL (`scheme://user:pass@host`) and
/// the values of credential query parameters replaced by `***`.
pub fn redact(text: &str) -> Cow<'_, str> {
    if !text.contains("://") && !SECRET_PARAMS.iter().any(|p| text.contains(p)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        // The authority ends at the path, query, fragment or the end of
        // the URL in running text.
        let end = after
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '\'' | '"' | '`' | '<' | '>') || c.is_whitespace()
            })
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    for param in SECRET_PARAMS {
        out = redact_param(&out, param);
    }
    Cow::Owned(out)
}

fn redact_param(text: &str, param: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let key = format!("{param}=");
    while let Some(i) = rest.find(&key) {
        let starts_param = i == 0 || matches!(rest.as_bytes()[i - 1], b'?' | b'&' | b';');
        out.push_str(&rest[..i + key.len()]);
        rest = &rest[i + key.len()..];
        if starts_param {
            let end = rest
                .find(|c: char| {
                    matches!(c, '&' | '#' | '\'' | '"' | '`' | ';') || c.is_whitespace()
                })
                .unwrap_or(rest.len());
            out.push_str("***");
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

/// A log writer that redacts each event (tracing's fmt layer writes one
/// formatted event per `write`).
pub struct RedactingStderr;

impl Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn userinfo_and_token_parameters_are_hidden() {
        for (given, want) in [
            (
                "git+https://alice:s3cret@example.org/r.git?ref=main#x",
                "git+https://***@example.org/r.git?ref=main#x",
            ),
            (
                "fetching 'https://tok@github.com/o/r' failed",
                "fetching 'https://***@github.com/o/r' failed",
            ),
            ("git+ssh://git@host:22/r", "git+ssh://***@host:22/r"),
            (
                "https://h/x?ref=v1&access_token=abc123&dir=sub",
                "https://h/x?ref=v1&access_token=***&dir=sub",
            ),
            ("github:o/r?token=xyz", "github:o/r?token=***"),
            (
                "two: http://a:b@h1/ and http://c@h2",
                "two: http://***@h1/ and http://***@h2",
            ),
            (
                "user:pass@ outside a URL; tokens=3",
                "user:pass@ outside a URL; tokens=3",
            ),
            ("github:org/repo/v1.2#img", "github:org/repo/v1.2#img"),
            ("http://host/p@th", "http://host/p@th"),
        ] {
            assert_eq!(redact(given), want, "{given}");
        }
    }
}
