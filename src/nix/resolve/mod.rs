//! Name + tag -> what to build: a flake output ([`flake`]) or a list of
//! packages of a set ([`packages`]). Request text only ever leaves here as
//! validated data.

pub mod flake;
pub mod packages;

pub use flake::{BuildTarget, FlakeSource};
pub use packages::{PackageSource, PackageTarget, ALWAYS_PACKAGES, SHELL_PACKAGES};
