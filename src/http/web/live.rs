//! Server-sent events for the pages' script:
//!
//! - `/builds/<id>/log?from=N`: the build's log lines from line N (`line`
//!   events, each with its number as id, so a reconnecting EventSource
//!   resumes), then one `end` event with the outcome;
//! - `/builds/events`: `started` and `finished` events (JSON) as builds
//!   come and go, so the home page shows a build that started after it
//!   was loaded.
//!
//! Both streams end when the server shuts down.

use super::Web;
use crate::events::builds::Change;
use crate::events::Outcome;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::Stream;
use std::convert::Infallible;

type Events = std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>;

#[derive(serde::Deserialize)]
pub struct From {
    from: Option<u64>,
}

fn sse(stream: Events) -> Response {
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

pub async fn log(
    State(web): State<Web>,
    Path(id): Path<String>,
    Query(q): Query<From>,
    headers: HeaderMap,
) -> Response {
    let Some(build) = id.parse().ok().and_then(|id| web.events.builds.get(id)) else {
        return (StatusCode::NOT_FOUND, "no such build\n").into_response();
    };
    // A reconnect says the last line it had.
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|n| n + 1);
    let mut next = resumed.or(q.from).unwrap_or(0);
    let mut watch = build.watch();
    let mut closing = web.events.closing();
    let stream = async_stream(move |tx| async move {
        loop {
            let (lines, total) = build.lines_from(next);
            let first = total - lines.len() as u64;
            for (i, line) in lines.into_iter().enumerate() {
                let event = Event::default()
                    .event("line")
                    .id((first + i as u64).to_string())
                    .data(line);
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            next = total;
            if let Some((outcome, took)) = build.outcome() {
                let said = match outcome {
                    Outcome::Built { image } => {
                        format!(
                            "built in {:.1} s: {}",
                            took.as_secs_f64(),
                            image.manifest_digest
                        )
                    }
                    Outcome::Failed { .. } => format!("failed after {:.1} s", took.as_secs_f64()),
                };
                let _ = tx.send(Ok(Event::default().event("end").data(said))).await;
                return;
            }
            tokio::select! {
                changed = watch.changed() => if changed.is_err() { return },
                _ = closing.wait_for(|c| *c) => return,
            }
        }
    });
    sse(stream)
}

pub async fn builds(State(web): State<Web>) -> Response {
    let mut changes = web.events.builds.subscribe();
    let mut closing = web.events.closing();
    let stream = async_stream(move |tx| async move {
        loop {
            let change = tokio::select! {
                c = changes.recv() => c,
                _ = closing.wait_for(|c| *c) => return,
            };
            let event = match change {
                Ok(Change::Started(b)) => Event::default().event("started").data(
                    serde_json::json!({
                        "id": b.id,
                        "name": b.subject.name,
                        "tag": b.subject.tag,
                        "system": b.subject.system,
                    })
                    .to_string(),
                ),
                Ok(Change::Finished(b)) => {
                    let status = match b.outcome() {
                        Some((Outcome::Built { .. }, _)) => "built",
                        _ => "failed",
                    };
                    Event::default()
                        .event("finished")
                        .data(serde_json::json!({ "id": b.id, "status": status }).to_string())
                }
                // Missed some: the page reloads to catch up.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    Event::default().event("lagged").data("")
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    sse(stream)
}

/// A stream fed by a task (the task ends when the client goes away).
fn async_stream<F, Fut>(f: F) -> Events
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Event, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
