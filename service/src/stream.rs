//! `GET /v1/cells/{id}/events`: NDJSON from the cell's event buffer, woken by new events, with
//! heartbeat lines while there are none. While a stream is open it moves the cell's events into
//! the buffer as the cell queues them (woken by the cell's listener), so a running exec's events
//! arrive live. A client that goes away never kills the cell, unless
//! the cell was created with `kill_on_disconnect`.

use crate::api::{AppState, Auth, CellId, EventsQuery};
use crate::error::ApiError;
use crate::node::{Entry, Node, StreamSlot};
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Most bytes of lines one chunk of a stream carries (a line larger goes alone): a reader that
/// does not read holds one such chunk in the server, not a copy of the cell's whole buffer.
const CHUNK_BYTES: usize = 64 << 10;

struct Reader {
    entry: Arc<Entry>,
    rx: watch::Receiver<(u64, bool)>,
    cursor: u64,
    heartbeat: Duration,
    guard: Disconnect,
}

/// Kills a `kill_on_disconnect` cell when its stream is dropped before the cell's end.
struct Disconnect {
    node: Arc<Node>,
    entry: Arc<Entry>,
    finished: bool,
    _slot: StreamSlot,
}

impl Drop for Disconnect {
    fn drop(&mut self) {
        self.entry.stream_closed();
        if !self.finished && self.entry.kill_on_disconnect && !self.entry.events.is_closed() {
            tracing::info!(target: "cell_service::audit", cell = %self.entry.id, tenant = %self.entry.tenant, "killed: its event reader disconnected");
            let (node, entry) = (self.node.clone(), self.entry.clone());
            // Killing may wait on the boundary: off the runtime.
            tokio::task::spawn_blocking(move || {
                node.remove(&entry, "cancelled", "the event reader disconnected")
            });
        }
    }
}

pub async fn events(
    State(node): State<AppState>,
    Auth(tenant): Auth,
    CellId(id): CellId,
    uri: Uri,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string());
    let entry = node.find(&tenant, &id, &path)?;
    // What the cell queued before this reader came (a running exec's events) starts moving now;
    // the stream moves the rest at its reader's pace.
    entry.events.drain(&entry.cell, usize::MAX, CHUNK_BYTES);
    // A cursor past the last line written would hide every line to come: a client's mistake.
    let last = entry.events.last_seq();
    if let Some(after) = q.after.filter(|a| *a > last) {
        return Err(ApiError::bad_request(format!(
            "`after` is {after}, past the cell's last event ({last})"
        )));
    }
    let slot = node.open_stream(&tenant.name)?;
    entry.stream_opened();
    let reader = Reader {
        rx: entry.events.subscribe(),
        cursor: q.after.unwrap_or(0),
        heartbeat: node.config.limits.heartbeat,
        guard: Disconnect {
            node: node.clone(),
            entry: entry.clone(),
            finished: false,
            _slot: slot,
        },
        entry,
    };
    let body = futures_util::stream::unfold(reader, next_chunk);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

async fn next_chunk(mut r: Reader) -> Option<(Result<Bytes, Infallible>, Reader)> {
    if r.guard.finished {
        return None;
    }
    loop {
        // Marked seen before reading, so a line written after the read wakes `changed`.
        r.rx.borrow_and_update();
        let batch = r.entry.events.read(r.cursor, CHUNK_BYTES);
        if !batch.lines.is_empty() {
            r.cursor = batch.cursor;
            r.guard.finished = batch.done;
            let mut text = batch.lines.join("\n");
            text.push('\n');
            return Some((Ok(Bytes::from(text)), r));
        }
        if batch.done {
            r.guard.finished = true;
            return None;
        }
        // What the cell queued since, one chunk's worth: the rest waits in the cell (under
        // backpressure the cell waits with it) until this chunk is sent. A cell waiting for
        // room sends no wake, so this comes before waiting for one.
        if r.entry.events.drain(&r.entry.cell, usize::MAX, CHUNK_BYTES) {
            continue;
        }
        let live = r.entry.live.clone();
        let woken = tokio::time::timeout(r.heartbeat, async {
            tokio::select! {
                changed = r.rx.changed() => changed.is_ok(),
                // The cell queued an event or died: drained at the top of the loop, in order.
                () = live.notified() => true,
            }
        })
        .await;
        match woken {
            Ok(true) => continue,
            Ok(false) => return None,
            Err(_) => {
                let line = json!({ "event": "heartbeat", "seq": r.cursor }).to_string() + "\n";
                return Some((Ok(Bytes::from(line)), r));
            }
        }
    }
}
