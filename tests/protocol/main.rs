//! Protocol checks over HTTP, one file per endpoint, on the offline test
//! flake in a git repo (made by tests/lib.sh) and reqwest.
//!
//! Two kinds of server (see `harness`): checks that run no Nix but
//! `nix --version` (validation, auth, error replies, static pages) use the
//! library's server in this process; checks that evaluate or build use the
//! real binary and real Nix, and live in a `built` module of their file, so
//! that `cargo test --test protocol built::` runs exactly them (tests/e2e.sh
//! does, with Debian 13's Nix through FLAKEPORT_BIN).
//!
//! Every check needs Nix and the fixture (busybox, umoci, skopeo), so each
//! is `#[ignore]`d for a bare `cargo test`; scripts/test runs them with
//! `--include-ignored`. tests/e2e.sh keeps what needs real external clients
//! (skopeo, containerd, Docker, podman, Chromium, Prometheus), signals
//! sent from outside and second nodes.

mod harness;

mod auth;
mod base;
mod blobs;
mod catalog;
mod hooks;
mod manifests;
mod metrics;
mod shutdown;
mod tags;
mod warm;
mod web;
