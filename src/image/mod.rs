//! The image floor: build outputs become layer plans ([`plan`]), plans
//! become tar bytes ([`layer`], no HTTP and no Nix), bytes become
//! documents ([`manifest`]); [`ledger`] remembers every digest served,
//! and [`kept`] holds files of layer bytes under one budget: compressed
//! layers ([`compressed`]) and decompressed archive members ([`members`]).

pub mod compressed;
pub mod kept;
pub mod layer;
pub mod ledger;
pub mod manifest;
pub mod members;
pub mod plan;
pub mod vouched;
