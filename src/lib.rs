//! flakeport: a pull-only OCI registry that builds images on demand with Nix
//! and streams their layers straight out of /nix/store.
//!
//! Modules follow the path of a pull: [`server`] (connections, plain or
//! [`tls`]) -> [`auth`] (who may pull) -> [`registry`] (HTTP) -> [`refs`]
//! (which tags may be built) -> [`resolve`] (name + tag -> target) ->
//! [`build`] (which nix commands) -> [`scheduler`] (runs every nix and git
//! process, bounded) -> [`plan`] (layers) -> [`layer`] (tar bytes) ->
//! [`manifest`] (JSON); [`provenance`] (SBOMs, build provenance and
//! signatures attached to manifests); [`images`] ties them together, [`index`] remembers
//! digests, [`retention`] bounds the state dir, [`watched`] reloads files
//! that change (TLS pair, credentials), [`error`] maps failures to
//! OCI JSON, [`redact`] keeps credentials out of replies and logs.

pub mod app;
pub mod client;
pub mod error;
pub mod events;
pub mod http;
pub mod image;
pub mod nix;
pub mod provenance;
pub mod redact;
pub mod service;
pub mod vocab;
pub mod watched;
