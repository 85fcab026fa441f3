//! The pages themselves (maud templates: every `(value)` is escaped).

use super::Web;
use crate::error::Result;
use crate::events::pulls::bytes;
use crate::events::{Build, ImageSummary, Outcome};
use maud::{html, Markup, DOCTYPE};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · flakeport" }
                link rel="stylesheet" href="/static/flakeport.css";
                script src="/static/flakeport.js" defer {}
            }
            body {
                header { a href="/" { "flakeport" } " " span.muted { (env!("CARGO_PKG_VERSION")) } }
                main { (body) }
            }
        }
    }
}

pub fn error(code: &str, message: &str) -> Markup {
    page(
        code,
        html! {
            h1 { (code) }
            pre.error { (message) }
        },
    )
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{} ms", d.as_millis())
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else {
        format!("{} min {} s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

fn ago(t: SystemTime) -> String {
    let d = SystemTime::now().duration_since(t).unwrap_or_default();
    if d < Duration::from_secs(1) {
        return "just now".to_string();
    }
    format!("{} ago", duration(Duration::from_secs(d.as_secs())))
}

/// The commands that pull `image` (`name:tag` or `name@digest`) from `host`.
fn pull_lines(web: &Web, host: &str, image: &str) -> Markup {
    let tls = web.settings.tls;
    let ctr_flags = if tls { "" } else { "--plain-http " };
    let skopeo_flags = if tls { "" } else { "--src-tls-verify=false " };
    let oci_dir = image
        .split(['@', ':'])
        .next()
        .unwrap_or(image)
        .replace('/', "-");
    html! {
        pre.pull {
            "docker pull " (host) "/" (image) "\n"
            "podman pull " @if !tls { "--tls-verify=false " } (host) "/" (image) "\n"
            "ctr image pull " (ctr_flags) (host) "/" (image) "\n"
            "skopeo copy " (skopeo_flags) "docker://" (host) "/" (image) " oci:" (oci_dir) "\n"
            "nix run nixpkgs#skopeo -- copy " (skopeo_flags) "docker://" (host) "/" (image) " docker-archive:" (oci_dir) ".tar"
        }
    }
}

fn log_pre(b: &Build) -> Markup {
    let (lines, next) = b.lines_from(0);
    let live = b.outcome().is_none();
    html! {
        @if lines.is_empty() && !live { p.muted { "Nix printed nothing: everything was in the store already." } }
        pre.log data-log=[live.then_some(b.id)] data-next=(next) {
            @for l in &lines { (l) "\n" }
        }
    }
}

fn status(b: &Build) -> Markup {
    match b.outcome() {
        None => html! { span.running id={ "status-" (b.id) } { "running" } },
        Some((Outcome::Built { .. }, _)) => html! { span.ok id={ "status-" (b.id) } { "built" } },
        Some((Outcome::Failed { .. }, _)) => {
            html! { span.failed id={ "status-" (b.id) } { "failed" } }
        }
    }
}

fn build_title(b: &Build) -> Markup {
    let s = &b.subject;
    html! {
        a href={ "/images/" (s.name) } { (s.name) ":" (s.tag) } " "
        span.muted { (s.system) }
    }
}

fn running(b: &Build) -> Markup {
    html! {
        article.build id={ "build-" (b.id) } {
            h3 { (build_title(b)) " " (status(b)) }
            p.muted { "started " (ago(b.started_at)) " · " a href={ "/builds/" (b.id) } { "full log" } }
            (log_pre(b))
        }
    }
}

pub async fn home(web: &Web, host: &str) -> Markup {
    let images = &web.images;
    let outputs = images.outputs().await;
    let pulled = images.pulled_package_paths();
    let example = match &outputs {
        Ok(o) if !o.is_empty() => o.keys().next().cloned(),
        _ => None,
    }
    .or_else(|| pulled.first().cloned())
    .unwrap_or_else(|| "shell/hello".to_string());
    let running_builds = web.events.builds.running();
    let finished = web.events.builds.finished();
    let failures: Vec<&Arc<Build>> = finished
        .iter()
        .filter(|b| matches!(b.outcome(), Some((Outcome::Failed { .. }, _))))
        .collect();
    let body = html! {
        h1 { "flakeport" }
        p {
            @if let Some(flake) = images.flake_url() { "Serving the images of " code { (flake) } }
            @if let (Some(_), Some(_)) = (images.flake_url(), images.packages_source()) { "; " }
            @if let Some(set) = images.packages_source() { "packages of " code { (set) } }
            " for " (images.systems().join(", ")) "."
        }
        p.muted #nix {
            "Builds run " (images.nix.version()) " (" code { (images.nix.version().line) } ")."
        }
        section #pull {
            h2 { "Pull from this host" }
            (pull_lines(web, host, &format!("{example}:latest")))
            p.muted {
                "A tag is a git branch, tag or commit of the source; "
                code { "latest" } " is the source as given."
                @if !web.settings.tls {
                    " This server speaks plain HTTP: Docker needs " code { (host) }
                    " in its " code { "insecure-registries" } " unless it is localhost."
                }
            }
        }
        section #running {
            h2 { "Building now" }
            p.muted.empty { @if running_builds.is_empty() { "Nothing is building." } }
            @for b in &running_builds { (running(b)) }
        }
        section #recent {
            h2 { "Recent builds" }
            @if finished.is_empty() { p.muted { "None since start." } } @else {
                table {
                    thead { tr { th { "image" } th { "tag" } th { "revision" } th { "system" } th { "status" } th { "took" } th { "size" } th { "layers" } th { "digest" } } }
                    tbody {
                        @for b in &finished {
                            @let s = &b.subject;
                            tr {
                                td { a href={ "/images/" (s.name) } { (s.name) } }
                                td { (s.tag) }
                                td { code { (s.revision.as_deref().map(|r| &r[..r.len().min(12)]).unwrap_or("")) } }
                                td { (s.system) }
                                td { a.build href={ "/builds/" (b.id) } { (status(b)) } }
                                td { (duration(b.elapsed())) }
                                @match b.outcome() {
                                    Some((Outcome::Built { image }, _)) => {
                                        td { (bytes(image.size())) }
                                        td { (image.layers.len()) }
                                        td { code { (short(&image.manifest_digest)) } }
                                    }
                                    _ => { td {} td {} td {} }
                                }
                            }
                        }
                    }
                }
            }
        }
        section #failures {
            h2 { "Recent failures" }
            @if failures.is_empty() { p.muted { "None since start." } }
            @for b in &failures {
                @if let Some((Outcome::Failed { error, log_tail }, _)) = b.outcome() {
                    article.failure {
                        h3 { (build_title(b)) " " span.muted { (ago(b.started_at)) } }
                        pre.error { (error) }
                        @if !log_tail.is_empty() {
                            details { summary { "last lines of the log" } pre.log { @for l in log_tail { (l) "\n" } } }
                        }
                    }
                }
            }
        }
        section #images {
            h2 { "Images" }
            @match &outputs {
                Err(e) => pre.error { "cannot list the flake's outputs: " (e) },
                Ok(o) if o.is_empty() && images.flake_url().is_some() => p { "The flake has no image outputs for these systems." },
                Ok(o) if !o.is_empty() => {
                    table {
                        thead { tr { th { "name" } th { "description" } } }
                        tbody {
                            @for (name, description) in o.iter() {
                                tr {
                                    td { a.image href={ "/images/" (name) } { (name) } }
                                    td { (description.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
                Ok(_) => {}
            }
            @if let Some(set) = images.packages_source() {
                p {
                    "Any other name is a list of packages of " code { (set) } ", "
                    "Nixery-style: " code { (host) "/shell/hello" } " is an image with bash, coreutils and "
                    code { "hello" } "; " code { "arm64/" } " in front builds for aarch64-linux."
                }
                @if !pulled.is_empty() {
                    p { "Package paths pulled: "
                        @for (i, p) in pulled.iter().enumerate() {
                            @if i > 0 { ", " }
                            a href={ "/images/" (p) } { (p) }
                        }
                    }
                }
            }
        }
        p.muted {
            a href="/v2/_catalog" { "catalog" } " · " a href="/metrics" { "metrics" }
        }
    };
    page("flakeport", body)
}

pub fn build(b: &Build) -> Markup {
    let s = &b.subject;
    let body = html! {
        h1 { (build_title(b)) " " (status(b)) }
        p.muted {
            "started " (ago(b.started_at)) ", " (duration(b.elapsed()))
            @if let Some(r) = &s.revision { " · revision " code { (r) } }
        }
        @if let Some((Outcome::Failed { error, .. }, _)) = b.outcome() { pre.error { (error) } }
        (log_pre(b))
    };
    page(&format!("{}:{}", s.name, s.tag), body)
}

fn config_rows(config: &serde_json::Value) -> Markup {
    let c = &config["config"];
    let list = |v: &serde_json::Value| -> String {
        match v.as_array() {
            Some(a) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect::<Vec<_>>()
                .join(" "),
            None => String::new(),
        }
    };
    let ports: Vec<String> = c["ExposedPorts"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    html! {
        table.config {
            tr { th { "Entrypoint" } td { code { (list(&c["Entrypoint"])) } } }
            tr { th { "Cmd" } td { code { (list(&c["Cmd"])) } } }
            tr { th { "Env" } td { @for e in c["Env"].as_array().into_iter().flatten() { code { (e.as_str().unwrap_or("")) } br; } } }
            tr { th { "User" } td { code { (c["User"].as_str().unwrap_or("")) } } }
            tr { th { "WorkingDir" } td { code { (c["WorkingDir"].as_str().unwrap_or("")) } } }
            tr { th { "ExposedPorts" } td { (ports.join(", ")) } }
        }
    }
}

fn built_image(web: &Web, host: &str, name: &str, img: &ImageSummary, open: bool) -> Markup {
    html! {
        details.image open[open] {
            summary {
                (img.platform) " · " code { (short(&img.manifest_digest)) } " · " (bytes(img.size()))
                " · " (img.layers.len()) " layers · built " (ago(img.built_at))
            }
            p { "Manifest " code.digest { (img.manifest_digest) } }
            p.muted { "Docker flavour " code { (img.docker_digest) } }
            @if let Some(r) = &img.subject.revision { p { "Revision " code { (r) } } }
            (pull_lines(web, host, &format!("{name}@{}", img.manifest_digest)))
            (provenance(web, host, name, &img.manifest_digest))
            h4 { "Layers" }
            table.layers {
                thead { tr { th { "#" } th { "digest" } th { "size" } th { "contents" } } }
                tbody {
                    @for (i, l) in img.layers.iter().enumerate() {
                        tr {
                            td { (i + 1) }
                            td { code { (short(&l.digest)) } }
                            td { (bytes(l.size)) }
                            td.paths {
                                @if l.paths.is_empty() { span.muted { "symlinks" } }
                                @for p in &l.paths { code { (p) } br; }
                            }
                        }
                    }
                }
            }
            h4 { "Config" }
            (config_rows(&img.config))
        }
    }
}

/// Links to the image's SBOMs, build provenance and signature, and to its
/// referrers list (what `oras discover` and `cosign` read).
fn provenance(web: &Web, host: &str, name: &str, digest: &str) -> Markup {
    let documents: Vec<(&str, String)> = web
        .images
        .artifacts_of(digest, &format!("{host}/{name}"))
        .ok()
        .flatten()
        .unwrap_or_default()
        .iter()
        .filter_map(|a| Some((a.artifact_type, a.blobs.last()?.digest.clone())))
        .collect();
    let label = |t: &str| match t {
        crate::provenance::sbom::CYCLONEDX => "SBOM (CycloneDX)",
        crate::provenance::sbom::SPDX => "SBOM (SPDX)",
        crate::provenance::slsa::IN_TOTO => "Build provenance (SLSA)",
        _ => "Signature payload (cosign)",
    };
    html! {
        p.provenance {
            @for (t, blob) in &documents {
                a href=(format!("/v2/{name}/blobs/{blob}")) { (label(t)) } " · "
            }
            a href=(format!("/v2/{name}/referrers/{digest}")) { "referrers" }
        }
    }
}

pub async fn image(web: &Web, host: &str, name: &str) -> Result<Markup> {
    crate::http::request::valid_name(name)?;
    // `arm64/x` is `x` built for aarch64-linux.
    let shown = name.trim_start_matches("arm64/");
    let built = web.events.builds.images_of(shown);
    let tags = match web.images.tags(name).await {
        Ok(tags) => tags,
        // Built once (a package path), but the source cannot list tags now.
        Err(_) if !built.is_empty() => vec![],
        Err(e) => return Err(e),
    };
    let mut by_tag: BTreeMap<String, Vec<Arc<ImageSummary>>> = BTreeMap::new();
    for img in built {
        by_tag.entry(img.subject.tag.clone()).or_default().push(img);
    }
    let description = web
        .images
        .outputs()
        .await
        .ok()
        .and_then(|o| o.get(name).cloned().flatten());
    let unbuilt: Vec<&String> = tags.iter().filter(|t| !by_tag.contains_key(*t)).collect();
    let body = html! {
        h1 { (name) }
        @if let Some(d) = &description { p.description { (d) } }
        @if by_tag.is_empty() {
            (pull_lines(web, host, &format!("{name}:latest")))
            p { "Not built since this server started: the first pull builds it." }
        }
        @for (i, (tag, images)) in by_tag.iter().enumerate() {
            section.tag {
                h2 { "Tag " code { (tag) } }
                @if let Some(index) = web.events.builds.index_of(name, tag) {
                    p { "Index over " (images.len()) " platforms: " code.digest { (index) } }
                }
                (pull_lines(web, host, &format!("{name}:{tag}")))
                @for (j, img) in images.iter().enumerate() {
                    (built_image(web, host, name, img, i == 0 && j == 0))
                }
            }
        }
        @if !unbuilt.is_empty() {
            section {
                h2 { "Other tags" }
                p.muted { "Not built yet; a pull of one builds it." }
                ul.tags { @for t in &unbuilt { li { code { (name) ":" (t) } } } }
            }
        }
    };
    Ok(page(name, body))
}
