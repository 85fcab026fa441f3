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
    if !text.contains('@') && !SECRET_PARAMS.iter().any(|p| text.contains(p)) {
        return Cow::Borrowed(text);
    }
    let mut out = redact_userinfo(text);
    for param in SECRET_PARAMS {
        out = redact_param(&out, param);
    }
    Cow::Owned(out)
}

/// Every `//USERINFO@` becomes `//***@`: from each `@`, back over the
/// characters userinfo may hold in running text, to a `//`.
fn redact_userinfo(text: &str) -> String {
    let bytes = text.as_bytes();
    let userinfo = |b: u8| b.is_ascii_alphanumeric() || b"-._~%!$&*+,;=:".contains(&b);
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (at, _) in text.match_indices('@') {
        let mut start = at;
        while start > copied && userinfo(bytes[start - 1]) {
            start -= 1;
        }
        if start < at && start >= 2 && &bytes[start - 2..start] == b"//" {
            // ASCII on both sides: `start` and `at` are char boundaries.
            out.push_str(&text[copied..start]);
            out.push_str("***");
            copied = at;
        }
    }
    out.push_str(&text[copied..]);
    out
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
    use proptest::prelude::*;

    proptest! {
        /// Any text: no panic (slicing stays on char boundaries).
        #[test]
        fn never_panics(text in "\\PC{0,200}") {
            let _ = redact(&text);
        }

        /// A credential in a URL, anywhere in running text, never survives.
        #[test]
        fn credentials_never_survive(
            before in "[ a-z'\"(:/]{0,20}",
            scheme in "(https|http|git\\+https|git\\+ssh|ssh)",
            user in "[a-zA-Z0-9._-]{1,12}",
            secret in "[a-zA-Z0-9]{16}",
            host in "[a-z0-9.-]{1,20}(:[0-9]{1,5})?",
            path in "(/[a-zA-Z0-9._@-]{0,12}){0,3}",
            after in "[ a-z'\")]{0,20}",
        ) {
            let text = format!("{before}{scheme}://{user}:{secret}@{host}{path}{after}");
            let shown = redact(&text);
            prop_assert!(!shown.contains(&secret), "{shown}");
            prop_assert!(shown.contains(&format!("://***@{host}")), "{shown}");
            let text = format!("{before}{scheme}://{host}{path}?ref=x&access_token={secret}{after}");
            prop_assert!(!redact(&text).contains(&secret));
        }
    }

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
