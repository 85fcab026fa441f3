//! The Nix floor: which tags may be built ([`refs`]), what a name and tag
//! mean ([`resolve`]), the `nix` commands that evaluate and build them
//! (`runner`, reading [`version`] and [`path_info`]), and the one place
//! external processes start ([`scheduler`]). No HTTP here, and nothing
//! about layers.

mod error;
pub mod path_info;
pub mod refs;
pub mod resolve;
mod runner;
pub mod scheduler;
pub mod version;

pub use error::{NixError, Result};
pub use path_info::{PathInfo, PathInfoError};
pub use runner::*;
pub use version::{Flavour, NixVersion, VersionError};
