//! Which Nix runs our builds: read once from `nix --version` at start, and
//! the one place that knows what each version can do, so that the rest of
//! The runner asks for a capability instead of comparing version numbers.

use std::fmt;

/// The Nix implementation. They share the CLI but not its drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// CppNix (NixOS/nix).
    Nix,
    /// Lix, forked from CppNix 2.18; numbered 2.90 and up.
    Lix,
    /// Determinate Nix: CppNix with patches, its own version in the name
    /// and the CppNix version it follows at the end of the line.
    Determinate,
}

impl Flavour {
    pub fn as_str(self) -> &'static str {
        match self {
            Flavour::Nix => "nix",
            Flavour::Lix => "lix",
            Flavour::Determinate => "determinate",
        }
    }
}

/// A version as `major.minor.patch`; anything after the numbers (`pre…`,
/// `-rc1`, `+1`) is kept only in [`NixVersion::line`].
pub type Release = (u32, u32, u32);

/// The oldest CppNix flakeport works with: the oldest it is tested on
/// (Debian 12's), and the first with every command it runs.
pub const MINIMUM: Release = (2, 8, 0);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NixVersion {
    pub flavour: Flavour,
    /// The version the implementation gives itself (Lix 2.91.1,
    /// Determinate 3.6.2, CppNix 2.26.3).
    pub release: Release,
    /// The CppNix version whose CLI this one follows: the same as
    /// `release` for CppNix, the number after the name for Determinate,
    /// and 2.18 for Lix (its fork point; Lix keeps 2.18's JSON).
    pub cpp_equivalent: Release,
    /// The version as the implementation prints it (`2.34.0pre20251201_abc`).
    pub text: String,
    /// `nix --version`'s first line, as printed.
    pub line: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("cannot read the Nix version from `nix --version`: {line:?}")]
    Unreadable { line: String },
    #[error("{found} is too old: flakeport needs Nix {}.{}.{} or later (or Lix, or Determinate Nix)", MINIMUM.0, MINIMUM.1, MINIMUM.2)]
    TooOld { found: String },
}

impl NixVersion {
    /// Parses the first line of `nix --version`, e.g. `nix (Nix) 2.26.3`,
    /// `nix (Lix, like Nix) 2.91.1`, `nix (Determinate Nix 3.6.2) 2.29.0`.
    pub fn parse(output: &str) -> Result<NixVersion, VersionError> {
        let line = output.lines().next().unwrap_or("").trim().to_string();
        let unreadable = || VersionError::Unreadable { line: line.clone() };
        let (name, number) = match (line.find('('), line.rfind(')')) {
            (Some(open), Some(close)) if open < close => {
                (&line[open + 1..close], line[close + 1..].trim())
            }
            _ => return Err(unreadable()),
        };
        let last = release(number).ok_or_else(unreadable)?;
        let (flavour, release_, cpp, text) = if name.starts_with("Lix") {
            (Flavour::Lix, last, (2, 18, 0), number)
        } else if let Some(rest) = name.strip_prefix("Determinate Nix") {
            let own = release(rest.trim()).unwrap_or(last);
            (Flavour::Determinate, own, last, rest.trim())
        } else if name == "Nix" {
            (Flavour::Nix, last, last, number)
        } else {
            return Err(unreadable());
        };
        Ok(NixVersion {
            flavour,
            release: release_,
            cpp_equivalent: cpp,
            text: text.to_string(),
            line: line.clone(),
        })
    }

    /// Refuses a Nix flakeport cannot work with.
    pub fn check_supported(&self) -> Result<(), VersionError> {
        if self.flavour == Flavour::Nix && self.release < MINIMUM {
            return Err(VersionError::TooOld {
                found: self.to_string(),
            });
        }
        Ok(())
    }

    /// The version as the implementation prints it: `2.26.3`,
    /// `2.34.0pre20251201_abcdef0`, Determinate's own `3.6.2`.
    pub fn number(&self) -> &str {
        &self.text
    }

    /// Whether `DRV^OUTPUT` names one output of a store derivation
    /// (CppNix 2.13; Lix has it from 2.18). Before, a `.drv` path builds
    /// every output of the derivation.
    pub fn selects_drv_outputs(&self) -> bool {
        self.cpp_equivalent >= (2, 13, 0)
    }

    /// `nix path-info --json` warns from 2.33 that `--json` without
    /// `--json-format` is deprecated; this names the format we read.
    pub fn path_info_format_args(&self) -> &'static [&'static str] {
        if self.flavour != Flavour::Lix && self.cpp_equivalent >= (2, 33, 0) {
            &["--json-format", "2"]
        } else {
            &[]
        }
    }

    /// A command that opens the local store (creating `/nix/var` on a
    /// fresh one): `nix store info`, called `nix store ping` before 2.19.
    pub fn store_info_args(&self) -> [&'static str; 2] {
        if self.flavour != Flavour::Lix && self.cpp_equivalent >= (2, 19, 0) {
            ["store", "info"]
        } else {
            ["store", "ping"]
        }
    }
}

impl fmt::Display for NixVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.flavour {
            Flavour::Nix => "Nix",
            Flavour::Lix => "Lix",
            Flavour::Determinate => "Determinate Nix",
        };
        write!(f, "{name} {}", self.text)?;
        if self.flavour == Flavour::Determinate {
            let (a, b, c) = self.cpp_equivalent;
            write!(f, " (Nix {a}.{b}.{c})")?;
        }
        Ok(())
    }
}

/// `2.26.3`, `2.34.0pre20251201_abc`, `2.33.0-rc1`, `2.91`: the leading
/// numbers, at least major and minor.
fn release(s: &str) -> Option<Release> {
    let mut parts = s.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_flavour() {
        // Recorded first lines (see tests/nix-outputs/README.md for where each comes from).
        let cases = [
            ("nix (Nix) 2.8.0\n", Flavour::Nix, (2, 8, 0), (2, 8, 0)),
            ("nix (Nix) 2.26.3", Flavour::Nix, (2, 26, 3), (2, 26, 3)),
            (
                "nix (Nix) 2.34.0pre20251201_abcdef0",
                Flavour::Nix,
                (2, 34, 0),
                (2, 34, 0),
            ),
            ("nix (Nix) 2.33.0-rc1", Flavour::Nix, (2, 33, 0), (2, 33, 0)),
            (
                "nix (Lix, like Nix) 2.91.1\nSystem type: x86_64-linux",
                Flavour::Lix,
                (2, 91, 1),
                (2, 18, 0),
            ),
            (
                "nix (Determinate Nix 3.6.2) 2.29.0",
                Flavour::Determinate,
                (3, 6, 2),
                (2, 29, 0),
            ),
        ];
        for (line, flavour, release, cpp) in cases {
            let v = NixVersion::parse(line).unwrap();
            assert!(line.lines().next().unwrap().contains(v.number()), "{line}");
            assert_eq!(
                (v.flavour, v.release, v.cpp_equivalent),
                (flavour, release, cpp),
                "{line}"
            );
            assert!(v.check_supported().is_ok(), "{line}");
        }
        assert_eq!(
            NixVersion::parse("nix (Determinate Nix 3.6.2) 2.29.0")
                .unwrap()
                .to_string(),
            "Determinate Nix 3.6.2 (Nix 2.29.0)"
        );
    }

    #[test]
    fn refuses_old_and_unreadable() {
        let old = NixVersion::parse("nix (Nix) 2.3.16").unwrap();
        let e = old.check_supported().unwrap_err().to_string();
        assert!(
            e.contains("Nix 2.3.16") && e.contains("2.8.0 or later"),
            "{e}"
        );
        for bad in ["", "nix", "bash: nix: command not found", "nix (Nix) x.y"] {
            assert!(NixVersion::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn capabilities_follow_the_cli() {
        let v = |l: &str| NixVersion::parse(l).unwrap();
        assert!(!v("nix (Nix) 2.8.0").selects_drv_outputs());
        assert!(v("nix (Nix) 2.26.3").selects_drv_outputs());
        assert!(v("nix (Lix, like Nix) 2.93.0").selects_drv_outputs());
        assert!(v("nix (Nix) 2.32.4").path_info_format_args().is_empty());
        assert!(!v("nix (Nix) 2.33.0").path_info_format_args().is_empty());
        assert!(v("nix (Lix, like Nix) 2.93.0")
            .path_info_format_args()
            .is_empty());
        assert_eq!(v("nix (Nix) 2.8.0").store_info_args()[1], "ping");
        assert_eq!(v("nix (Nix) 2.26.3").store_info_args()[1], "info");
    }
}
