//! flakeport: a pull-only OCI registry that builds images on demand with Nix
//! and streams their layers straight out of /nix/store.
//!
//! Floors, from the top; each uses only the floors below it
//! (ARCHITECTURE.md, checked by `tests/architecture.rs`):
//! - [`app`] builds the server from the `serve` options;
//! - [`http`]: connections, auth, the distribution API, the pages;
//! - [`service`]: the image service (builds, manifests, catalog) and the
//!   layer store (ledger, scans, digest passes, trust), and retention;
//! - [`error`]: the one place failures become OCI error JSON;
//! - [`provenance`]: SBOMs, build provenance and signatures;
//! - [`image`]: build outputs -> layer plans -> tar bytes -> documents;
//! - [`nix`]: refs, names and tags -> targets, the `nix` commands, and
//!   the scheduler, where every process starts;
//! - [`events`]: what happens, for pages, metrics and the terminal;
//! - [`vocab`], [`redact`], [`watched`], [`client`]: leaves.

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
pub mod snapshotter;
pub mod vocab;
pub mod watched;
