//! `/metrics`: what a Prometheus user writes alerts on, in the OpenMetrics
//! text format (crate `prometheus-client`). Counters and histograms are
//! kept here as things happen; the gauges of the moment (processes, streams,
//! the state dir) come in a [`Snapshot`] taken at scrape time.

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Label values are fixed words (kinds, codes, media types), never request
/// text, so a client cannot grow the number of series.
type Labels = Vec<(&'static str, &'static str)>;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn build_buckets() -> Histogram {
    Histogram::new([
        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    ])
}

fn short_buckets() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

/// Why producing an image failed: the `reason` label of
/// `flakeport_builds_failed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildFailure {
    Build,
    Timeout,
    NotAnImage,
    /// A Nix command's output could not be read, or a store query failed.
    NixOutput,
    /// The name, tag or package is not there: no build was attempted.
    NotFound,
    /// A full queue or a short resource: no build was attempted.
    Busy,
    Internal,
}

impl BuildFailure {
    pub fn label(self) -> &'static str {
        match self {
            BuildFailure::Build => "build",
            BuildFailure::Timeout => "timeout",
            BuildFailure::NotAnImage => "not_an_image",
            BuildFailure::NixOutput => "nix_output",
            BuildFailure::NotFound => "not_found",
            BuildFailure::Busy => "busy",
            BuildFailure::Internal => "internal",
        }
    }

    /// Whether a build was attempted, so that the pages list it.
    pub fn was_a_build(self) -> bool {
        !matches!(self, BuildFailure::NotFound | BuildFailure::Busy)
    }
}

pub struct Metrics {
    registry: Registry,
    builds_started: Family<Labels, Counter>,
    builds_succeeded: Family<Labels, Counter>,
    builds_failed: Family<Labels, Counter>,
    build_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    digest_pass_seconds: Histogram,
    blob_bytes: Family<Labels, Counter>,
    cache_lookups: Family<Labels, Counter>,
    manifests_served: Family<Labels, Counter>,
    manifest_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    errors: Family<Labels, Counter>,
    pulls: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("flakeport");
        let m = Metrics {
            builds_started: Family::default(),
            builds_succeeded: Family::default(),
            builds_failed: Family::default(),
            build_seconds: Family::new_with_constructor(build_buckets),
            digest_pass_seconds: short_buckets(),
            blob_bytes: Family::default(),
            cache_lookups: Family::default(),
            manifests_served: Family::default(),
            manifest_seconds: Family::new_with_constructor(short_buckets),
            errors: Family::default(),
            pulls: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "builds_started",
            "Images whose production (nix build, plan, digests) started, by kind (flake output or package path)",
            m.builds_started.clone(),
        );
        registry.register(
            "builds_succeeded",
            "Images produced, by kind",
            m.builds_succeeded.clone(),
        );
        registry.register(
            "builds_failed",
            "Image productions that failed, by kind and reason (build, timeout, not_an_image, nix_output, not_found, busy, internal)",
            m.builds_failed.clone(),
        );
        registry.register(
            "build_duration_seconds",
            "Time from the start of an image's production to its manifest (or failure), by kind",
            m.build_seconds.clone(),
        );
        registry.register(
            "digest_pass_duration_seconds",
            "One layer's digest pass (tar generated from the store and hashed, compressed if configured)",
            m.digest_pass_seconds.clone(),
        );
        registry.register(
            "blob_bytes_served",
            "Blob bytes sent to clients, by compression (none, gzip, zstd, archive as packed in an image archive, json for configs)",
            m.blob_bytes.clone(),
        );
        registry.register(
            "cache_lookups",
            "Cache lookups by cache (manifest, layer_digest, layer_scan, compressed; archive_member: a member of a gzip or zstd archive kept decompressed; verified_layer: a full GET of a layer whose files are as when it was hashed; hot_layer: its bytes in memory) and result (hit, miss)",
            m.cache_lookups.clone(),
        );
        registry.register(
            "manifests_served",
            "Manifests and indexes served (GET and HEAD), by media type",
            m.manifests_served.clone(),
        );
        registry.register(
            "manifest_response_seconds",
            "Time to answer a manifest request by tag, by whether the image was ready (cached) or produced (built)",
            m.manifest_seconds.clone(),
        );
        registry.register(
            "errors",
            "Error replies by OCI error code",
            m.errors.clone(),
        );
        registry.register(
            "pulls",
            "Pulls seen (a client's manifest and blob requests for one image)",
            m.pulls.clone(),
        );
        // Series a dashboard or alert expects exist from the start, at 0.
        for kind in ["flake", "packages"] {
            let _ = m.builds_started.get_or_create(&vec![("kind", kind)]);
            let _ = m.builds_succeeded.get_or_create(&vec![("kind", kind)]);
        }
        for compression in ["none", "gzip", "zstd", "archive", "json"] {
            let _ = m
                .blob_bytes
                .get_or_create(&vec![("compression", compression)]);
        }
        for cache in CACHES {
            for result in ["hit", "miss"] {
                let _ = m
                    .cache_lookups
                    .get_or_create(&vec![("cache", cache), ("result", result)]);
            }
        }
        Metrics { registry, ..m }
    }
}

/// The caches `cache_lookups` counts.
pub const CACHES: [&str; 7] = [
    "manifest",
    "layer_digest",
    "layer_scan",
    "compressed",
    "archive_member",
    "verified_layer",
    "hot_layer",
];

/// The gauges and counters owned by other parts, read at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// The Nix builds run with, read once at start: its flavour (nix, lix,
    /// determinate) and version.
    pub nix_flavour: &'static str,
    pub nix_version: String,
    pub nix_builds_started: u64,
    /// (kind, processes started)
    pub processes_started: Vec<(&'static str, u64)>,
    pub processes_running: u64,
    pub processes_queued: u64,
    pub processes_refused: u64,
    pub processes_max: u64,
    pub builds_running: u64,
    pub builds_queued: u64,
    pub images_in_progress: u64,
    pub pushes_ok: u64,
    pub pushes_failed: u64,
    pub layer_streams: u64,
    pub layer_streams_max: u64,
    pub state_dir_bytes: u64,
    pub hot_layer_bytes: u64,
}

impl Metrics {
    pub fn build_started(&self, kind: &'static str) {
        self.builds_started
            .get_or_create(&vec![("kind", kind)])
            .inc();
    }

    pub fn build_finished(
        &self,
        kind: &'static str,
        failure: Option<BuildFailure>,
        took: Duration,
    ) {
        match failure {
            None => self
                .builds_succeeded
                .get_or_create(&vec![("kind", kind)])
                .inc(),
            Some(reason) => self
                .builds_failed
                .get_or_create(&vec![("kind", kind), ("reason", reason.label())])
                .inc(),
        };
        self.build_seconds
            .get_or_create(&vec![("kind", kind)])
            .observe(took.as_secs_f64());
    }

    pub fn digest_pass(&self, took: Duration) {
        self.digest_pass_seconds.observe(took.as_secs_f64());
    }

    pub fn blob_bytes(&self, compression: &'static str, bytes: u64) {
        self.blob_bytes
            .get_or_create(&vec![("compression", compression)])
            .inc_by(bytes);
    }

    pub fn cache(&self, cache: &'static str, hit: bool) {
        debug_assert!(CACHES.contains(&cache), "{cache}");
        let result = if hit { "hit" } else { "miss" };
        self.cache_lookups
            .get_or_create(&vec![("cache", cache), ("result", result)])
            .inc();
    }

    pub fn manifest_served(&self, media_type: &str, took: Option<(Duration, bool)>) {
        let media_type = crate::vocab::media_type::known(media_type);
        self.manifests_served
            .get_or_create(&vec![("media_type", media_type)])
            .inc();
        if let Some((took, built)) = took {
            let ready = if built { "built" } else { "cached" };
            self.manifest_seconds
                .get_or_create(&vec![("image", ready)])
                .observe(took.as_secs_f64());
        }
    }

    pub fn error(&self, code: &'static str) {
        self.errors.get_or_create(&vec![("code", code)]).inc();
    }

    pub fn pull(&self) {
        self.pulls.inc();
    }

    /// The whole exposition: what is kept here, then the snapshot.
    pub fn encode(&self, s: &Snapshot) -> String {
        let mut now = Registry::with_prefix("flakeport");
        let counter = |v: u64| {
            let c = Counter::<u64>::default();
            c.inc_by(v);
            c
        };
        let gauge = |v: u64| {
            let g = Gauge::<i64>::default();
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
            g
        };
        // An info metric, as Prometheus exporters write `*_build_info`:
        // the value is 1, the facts are labels (one series per process).
        let info = Family::<Vec<(&'static str, String)>, Gauge>::default();
        info.get_or_create(&vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("nix_flavour", s.nix_flavour.to_string()),
            ("nix_version", s.nix_version.clone()),
        ])
        .set(1);
        now.register(
            "build_info",
            "flakeport's version and the Nix it runs (flavour: nix, lix or determinate; version as that Nix gives it)",
            info,
        );
        now.register(
            "nix_builds_started",
            "nix build processes started",
            counter(s.nix_builds_started),
        );
        let started = Family::<Labels, Counter>::default();
        for (kind, n) in &s.processes_started {
            started.get_or_create(&vec![("kind", *kind)]).inc_by(*n);
        }
        now.register(
            "processes_started",
            "External processes started, by kind (build, eval, query, git, copy)",
            started,
        );
        let pushes = Family::<Labels, Counter>::default();
        pushes
            .get_or_create(&vec![("result", "ok")])
            .inc_by(s.pushes_ok);
        pushes
            .get_or_create(&vec![("result", "failed")])
            .inc_by(s.pushes_failed);
        now.register("pushes", "nix copy runs to --push-to, by result", pushes);
        now.register(
            "processes_refused",
            "Requests refused (429) because --max-queued processes already waited",
            counter(s.processes_refused),
        );
        for (name, help, v) in [
            (
                "processes_running",
                "External processes running",
                s.processes_running,
            ),
            (
                "processes_queued",
                "External processes waiting for a slot",
                s.processes_queued,
            ),
            ("processes_max", "--max-processes", s.processes_max),
            (
                "builds_running",
                "nix build processes running",
                s.builds_running,
            ),
            (
                "builds_queued",
                "nix build processes waiting for a slot (--max-builds)",
                s.builds_queued,
            ),
            (
                "images_in_progress",
                "Images being produced (built, planned, digested) now",
                s.images_in_progress,
            ),
            ("layer_streams", "Layer streams in flight", s.layer_streams),
            ("layer_streams_max", "--max-streams", s.layer_streams_max),
            (
                "state_dir_bytes",
                "Bytes in the state dir (GC roots not followed)",
                s.state_dir_bytes,
            ),
            (
                "hot_layer_bytes",
                "Bytes of small verified layers held in memory (--hot-layers-mib)",
                s.hot_layer_bytes,
            ),
        ] {
            now.register(name, help, gauge(v));
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &now);
        let _ = encode_eof(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_what_happened() {
        let m = Metrics::default();
        m.build_started("flake");
        m.build_finished(
            "flake",
            Some(BuildFailure::Build),
            Duration::from_millis(1500),
        );
        m.blob_bytes("none", 1234);
        m.cache("manifest", true);
        m.manifest_served("application/vnd.oci.image.manifest.v1+json", None);
        m.manifest_served("text/html<script>", None);
        m.error("NAME_UNKNOWN");
        let text = m.encode(&Snapshot {
            nix_flavour: "lix",
            nix_version: "2.91.1".into(),
            nix_builds_started: 3,
            processes_started: vec![("build", 3)],
            state_dir_bytes: 99,
            ..Snapshot::default()
        });
        for line in [
            "flakeport_builds_started_total{kind=\"flake\"} 1",
            "flakeport_builds_failed_total{kind=\"flake\",reason=\"build\"} 1",
            "flakeport_build_duration_seconds_bucket{le=\"2.5\",kind=\"flake\"} 1",
            "flakeport_blob_bytes_served_total{compression=\"none\"} 1234",
            "flakeport_cache_lookups_total{cache=\"manifest\",result=\"hit\"} 1",
            "flakeport_manifests_served_total{media_type=\"application/vnd.oci.image.manifest.v1+json\"} 1",
            "flakeport_manifests_served_total{media_type=\"other\"} 1",
            "flakeport_errors_total{code=\"NAME_UNKNOWN\"} 1",
            "flakeport_nix_builds_started_total 3",
            "flakeport_processes_started_total{kind=\"build\"} 3",
            "flakeport_state_dir_bytes 99",
            concat!(
                "flakeport_build_info{version=\"",
                env!("CARGO_PKG_VERSION"),
                "\",nix_flavour=\"lix\",nix_version=\"2.91.1\"} 1"
            ),
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(text.matches("# EOF").count(), 1);
    }
}
