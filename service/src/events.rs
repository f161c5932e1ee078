//! A cell's events as numbered JSON lines in a bounded buffer, so a client that reconnects with
//! `after=SEQ` loses nothing still buffered. Events are moved from the cell into the buffer as
//! the cell queues them while a stream is open (woken by the cell's listener), and after each
//! exec/call and when the cell dies in any case.

use serde_json::{Value as J, json};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use supervisor::{Cell, RecvError, json as cj};
use tokio::sync::watch;

struct Buf {
    /// Sequence number of the next line.
    next: u64,
    lines: VecDeque<(u64, String)>,
    /// Bytes of `lines`' text.
    bytes: usize,
    closed: bool,
}

pub struct EventBuffer {
    buf: Mutex<Buf>,
    cap: usize,
    /// Most bytes of text kept (the newest line is kept whatever its size).
    cap_bytes: usize,
    /// The last sequence number written (and whether the buffer is closed), to wake streams.
    tx: watch::Sender<(u64, bool)>,
}

/// What a reader gets: lines after its cursor, a gap if some were dropped, or the end.
pub struct Batch {
    pub lines: Vec<String>,
    pub cursor: u64,
    pub done: bool,
}

impl EventBuffer {
    /// A buffer keeping at most `cap` lines and `cap_bytes` bytes of them (the oldest go first;
    /// the newest line stays whatever its size).
    pub fn new(cap: usize, cap_bytes: usize) -> EventBuffer {
        EventBuffer {
            buf: Mutex::new(Buf {
                next: 1,
                lines: VecDeque::new(),
                bytes: 0,
                closed: false,
            }),
            cap: cap.max(1),
            cap_bytes,
            tx: watch::Sender::new((0, false)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buf> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `line` with the next sequence number; returns its length.
    fn push_locked(&self, b: &mut Buf, mut line: J) -> usize {
        let seq = b.next;
        b.next += 1;
        line["seq"] = seq.into();
        let line = line.to_string();
        // Bounded in lines and in bytes: a cell posting large values cannot make the node hold
        // `cap` of them.
        while !b.lines.is_empty()
            && (b.lines.len() >= self.cap || b.bytes + line.len() > self.cap_bytes)
        {
            if let Some((_, old)) = b.lines.pop_front() {
                b.bytes -= old.len();
            }
            metrics::counter!("cell_service_events_dropped_total").increment(1);
        }
        let len = line.len();
        b.bytes += len;
        b.lines.push_back((seq, line));
        len
    }

    /// Moves the events `cell` has queued into the buffer, at most `max_events` of them and
    /// `max_bytes` of lines (at least one); if the cell is gone and nothing is left, closes the
    /// buffer with a last `closed` line naming why. Returns whether it wrote a line. Bounded
    /// because a cell posts while it is drained: a cell posting as fast as the drain moved (in
    /// step with it under backpressure) kept one drain going for its whole exec, on an async
    /// worker, holding the buffer's lock, while the stream sent nothing. What is left waits in
    /// the cell for the next drain. `max_events` at the cell's queue bound moves every event
    /// queued when the drain began.
    pub fn drain(&self, cell: &Cell, max_events: usize, max_bytes: usize) -> bool {
        let mut b = self.lock();
        if b.closed {
            return false;
        }
        let first = b.next;
        let (mut events, mut bytes) = (0, 0);
        while events < max_events.max(1) && bytes < max_bytes.max(1) {
            match cell.recv(Some(Duration::ZERO)) {
                Ok(event) => {
                    events += 1;
                    bytes += self.push_locked(&mut b, cj::event(&event));
                }
                Err(RecvError::Closed(reason)) => {
                    self.close_locked(&mut b, reason.code.name(), &reason.message);
                    break;
                }
                Err(_) => break,
            }
        }
        // Readers are woken only by a line: a wake for nothing would send a stream that drains
        // before it waits round its loop again at once.
        let wrote = b.next > first;
        if wrote {
            self.tx.send_replace((b.next - 1, b.closed));
        }
        wrote
    }

    /// Closes the buffer (the cell was deleted or reaped) with a last line saying why.
    pub fn close(&self, code: &str, message: &str) {
        let mut b = self.lock();
        if !b.closed {
            self.close_locked(&mut b, code, message);
            self.tx.send_replace((b.next - 1, true));
        }
    }

    fn close_locked(&self, b: &mut Buf, code: &str, message: &str) {
        self.push_locked(
            b,
            json!({ "event": "closed", "code": code, "message": message }),
        );
        b.closed = true;
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Bytes of the lines kept.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    pub fn last_seq(&self) -> u64 {
        self.lock().next - 1
    }

    pub fn subscribe(&self) -> watch::Receiver<(u64, bool)> {
        self.tx.subscribe()
    }

    /// Lines after `cursor`, as many as fit in `max_bytes` (at least one), so a reader that
    /// does not keep up holds one bounded batch, not a copy of the whole buffer. When lines past
    /// the cursor were already dropped, a `gap` line says how many were lost.
    pub fn read(&self, cursor: u64, max_bytes: usize) -> Batch {
        let b = self.lock();
        let mut lines = Vec::new();
        let first = b.lines.front().map_or(b.next, |(s, _)| *s);
        // `saturating_add`: a cursor of `u64::MAX` must not wrap to "everything was lost".
        if cursor.saturating_add(1) < first {
            lines.push(
                json!({ "event": "gap", "lost": first - cursor - 1, "after": cursor }).to_string(),
            );
        }
        let mut bytes = 0;
        let mut last = cursor.max(first.saturating_sub(1));
        for (seq, line) in b.lines.iter().filter(|(s, _)| *s > cursor) {
            if !lines.is_empty() && bytes + line.len() > max_bytes {
                break;
            }
            bytes += line.len();
            lines.push(line.clone());
            last = *seq;
        }
        let all = last >= b.next - 1;
        Batch {
            lines,
            cursor: if all { cursor.max(b.next - 1) } else { last },
            done: all && b.closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_with_gaps_and_a_last_line() {
        let b = EventBuffer::new(3, usize::MAX);
        {
            let mut l = b.lock();
            for i in 0..5 {
                b.push_locked(&mut l, json!({ "event": "post", "value": i }));
            }
        }
        let r = b.read(0, usize::MAX);
        assert_eq!(r.lines.len(), 4, "{:?}", r.lines);
        assert!(r.lines[0].contains("\"gap\"") && r.lines[0].contains("\"lost\":2"));
        assert!(r.lines[1].contains("\"seq\":3"));
        assert_eq!((r.cursor, r.done), (5, false));
        assert!(b.read(5, usize::MAX).lines.is_empty());
        assert_eq!(b.read(4, usize::MAX).lines.len(), 1);
        b.close("cancelled", "deleted");
        b.close("cancelled", "twice");
        let r = b.read(5, usize::MAX);
        assert_eq!(r.lines.len(), 1);
        assert!(r.lines[0].contains("\"closed\"") && r.done);
    }

    #[test]
    fn bounded_in_bytes_and_a_cursor_at_the_end_of_u64() {
        let b = EventBuffer::new(100, 1000);
        {
            let mut l = b.lock();
            for _ in 0..10 {
                b.push_locked(&mut l, json!({ "event": "post", "value": "x".repeat(300) }));
            }
            assert!(l.bytes <= 1000 && l.lines.len() == 2, "{} bytes", l.bytes);
            // One line over the whole cap stays: the newest is always kept.
            b.push_locked(
                &mut l,
                json!({ "event": "post", "value": "y".repeat(5000) }),
            );
            assert_eq!(l.lines.len(), 1);
        }
        let r = b.read(0, usize::MAX);
        assert!(r.lines[0].contains("\"lost\":10"), "{:?}", r.lines[0]);
        let r = b.read(u64::MAX, usize::MAX);
        assert!(r.lines.is_empty(), "{:?}", r.lines);
    }

    #[test]
    fn reads_come_in_bounded_batches() {
        let b = EventBuffer::new(100, usize::MAX);
        {
            let mut l = b.lock();
            for i in 0..10 {
                b.push_locked(&mut l, json!({ "event": "post", "value": i }));
            }
        }
        b.close("cancelled", "deleted");
        let (mut cursor, mut seen) = (0, Vec::new());
        loop {
            let r = b.read(cursor, 70);
            assert!(!r.lines.is_empty() && r.lines.len() <= 2, "{:?}", r.lines);
            seen.extend(r.lines);
            cursor = r.cursor;
            if r.done {
                break;
            }
        }
        assert_eq!(seen.len(), 11, "{seen:?}");
        assert!(seen[10].contains("closed"));
    }
}
