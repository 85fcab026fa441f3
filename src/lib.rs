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
pub mod auth;
pub mod build;
pub mod client;
pub mod compressed;
pub mod error;
pub mod events;
pub mod images;
pub mod index;
pub mod layer;
pub mod manifest;
pub mod plan;
pub mod provenance;
pub mod redact;
pub mod refs;
pub mod registry;
pub mod resolve;
pub mod retention;
pub mod scheduler;
pub mod server;
pub mod tls;
pub mod watched;
pub mod web;
