//! Watch streams: the backlog from a resourceVersion (or the current state), then live
//! events, with selector transitions (an object entering the selection is ADDED, one
//! leaving it DELETED), bookmarks, timeouts, injected drops, and 410 Expired as the
//! real server sends it.
use super::{Body, ServerState};
use crate::emulator::resources::ResourceType;
use crate::emulator::selectors::{FieldSelector, LabelSelector};
use crate::emulator::status::ApiError;
use crate::emulator::store::{EventType, StoreEvent};
use crate::emulator::table::{self, Include};
use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::mpsc;

fn event_line(kind: &str, obj: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": obj}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn bookmark(rt: &ResourceType, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line("BOOKMARK", &json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta}))
}

/// What one store event means for a watch with selectors: objects entering the
/// selection are ADDED, leaving it DELETED.
fn translate(ev: &StoreEvent, labels: &LabelSelector, fields: &FieldSelector) -> Option<&'static str> {
    let now = labels.matches_object(&ev.object) && fields.matches(&ev.object);
    match ev.kind {
        EventType::Added => now.then_some("ADDED"),
        EventType::Deleted => now.then_some("DELETED"),
        EventType::Modified => {
            let before = ev.previous.as_ref().is_some_and(|p| labels.matches_object(p) && fields.matches(p));
            match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn watch_stream(
    state: &ServerState,
    rt: &ResourceType,
    ns: Option<&str>,
    labels: LabelSelector,
    fields: FieldSelector,
    query: &HashMap<String, String>,
    drop_after: Option<Duration>,
    as_table: Option<Include>,
) -> Result<Response<Body>, ApiError> {
    let send_initial = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let from = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(v) if send_initial => {
            let _ = v;
            None
        }
        Some(v) => Some(v.parse::<u64>().map_err(|_| ApiError::BadRequest(format!("invalid resource version: {v}")))?),
    };
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = query.get("timeoutSeconds").and_then(|v| v.parse::<u64>().ok()).map(Duration::from_secs);
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let start = state.store.watch_from(rt, ns, from);
    let (backlog, start_rv, mut events) = match start {
        Ok(x) => x,
        Err(e @ ApiError::Expired { .. }) => {
            // The real server answers 200 and sends one ERROR event carrying the 410.
            let _ = tx.try_send(event_line("ERROR", &e.status_body()));
            drop(tx);
            return Ok(stream_response(rx));
        }
        Err(e) => return Err(e),
    };
    let rt = rt.clone();
    let ns = ns.map(str::to_string);
    let mut generation = state.watch_generation.subscribe();
    let interval = state.bookmark_interval;
    let rt2 = rt.clone();
    // `kubectl get -w`: each event's object is a one-row Table.
    let line = move |kind: &str, obj: &Value| match as_table {
        Some(include) => event_line(
            kind,
            &table::table(&rt2, std::slice::from_ref(obj), obj["metadata"]["resourceVersion"].as_str(), include),
        ),
        None => event_line(kind, obj),
    };
    tokio::spawn(async move {
        let mut last_rv = start_rv;
        for ev in &backlog {
            if let Some(kind) = translate(ev, &labels, &fields) {
                if tx.send(line(kind, &ev.object)).await.is_err() {
                    return;
                }
            }
        }
        if send_initial && bookmarks {
            let _ = tx.send(bookmark(&rt, start_rv, true)).await;
        }
        let deadline = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let dropped = async {
            match drop_after {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline, dropped);
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = &mut dropped => return,
                _ = generation.changed() => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(bookmark(&rt, last_rv, false)).await.is_err() { return; }
                }
                ev = events.recv() => {
                    // A watcher too slow for the event rate is closed, as the real
                    // server does; the client resumes from its last resourceVersion.
                    let Ok(ev) = ev else { return };
                    if ev.rv <= start_rv {
                        continue;
                    }
                    last_rv = ev.rv;
                    let same_type = ev.key.group == rt.group && ev.key.plural == rt.plural;
                    let same_ns = ns.as_deref().is_none_or(|n| n == ev.key.namespace);
                    if !same_type || !same_ns {
                        continue;
                    }
                    if let Some(kind) = translate(&ev, &labels, &fields) {
                        if tx.send(line(kind, &ev.object)).await.is_err() { return; }
                    }
                }
            }
        }
    });
    Ok(stream_response(rx))
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("static response parts are valid")
}
