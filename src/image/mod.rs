//! The image floor: build outputs become layer plans ([`plan`]), plans
//! become tar bytes ([`layer`], no HTTP and no Nix), bytes become
//! documents ([`manifest`]); [`ledger`] remembers every digest served and
//! [`compressed`] keeps compressed layers.

pub mod compressed;
pub mod layer;
pub mod ledger;
pub mod manifest;
pub mod plan;
pub mod vouched;
