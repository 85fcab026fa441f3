//! What happens, for whoever watches: the service and the registry report here
//! (a build started, a log line, a manifest or blob sent, an error), and
//! the web pages, `/metrics` and the terminal read it. Nothing here does
//! work of its own, and nothing here knows HTTP or Nix.
//!
//! - `builds`: running builds with their logs, finished builds, built images;
//! - `metrics`: counters and histograms for `/metrics`;
//! - `pulls`: one line per pull for the terminal.

pub mod builds;
pub mod metrics;
pub mod pulls;

pub use builds::{Build, BuildKind, BuildSubject, Builds, ImageSummary, LayerSummary, Outcome};
pub use metrics::{BuildFailure, Metrics, Snapshot};

use std::sync::Arc;

pub struct Events {
    pub builds: Builds,
    pub metrics: Metrics,
    pub pulls: pulls::Pulls,
    /// Set at shutdown: whoever follows events (a page) stops.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            builds: Builds::default(),
            metrics: Metrics::default(),
            pulls: pulls::Pulls::default(),
            closing: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Events {
    pub fn new() -> Arc<Events> {
        Arc::new(Events::default())
    }

    /// The server is shutting down: live streams end.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Report pulls that went quiet, once a second, for as long as `self` lives.
    pub fn start_pull_reports(self: &Arc<Self>) {
        let events = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                every.tick().await;
                let Some(events) = events.upgrade() else {
                    return;
                };
                for pull in events.pulls.quiet() {
                    events.pulled(&pull);
                }
            }
        });
    }

    pub fn pulled(&self, pull: &pulls::Pull) {
        self.metrics.pull();
        tracing::info!(
            target: "flakeport::pull",
            name = %pull.name,
            reference = %pull.reference,
            client = pull.client.map(|c| c.to_string()),
            to_manifest_ms = pull.to_manifest.as_millis() as u64,
            blobs = pull.blobs,
            blobs_sent = pull.blobs_sent,
            bytes = pull.bytes,
            secs = pull.took.as_secs_f64(),
            "{pull}"
        );
    }
}
