//! A bound on how long a client may keep an answer waiting by not reading it.
//!
//! hyper has a timeout for reading a request's headers but none for writing an answer, so a
//! client that pipelines requests and never reads (no key needed: `/healthz`, a 401) pinned its
//! connection for ever, and enough such connections used up the node's descriptors. A plain
//! timeout restarted by every write is not enough either: a client that takes a few bytes now
//! and then restarts it each time, and holds its connection, the answer's buffers and (for an
//! event stream under backpressure) its cell's exec for ever.
//!
//! So a write that has to wait gets a deadline `limit` ahead, and the bytes the client then takes
//! buy time at `min_rate`: each byte moves the deadline `1 / min_rate` s later, never more than
//! `limit` past now. A reader keeping up with `min_rate` never meets it; a slower one does, after
//! about `limit / (1 - its rate / min_rate)`, however it spaces its reads. The deadline is dropped
//! only when a write goes through at once after it has passed: the connection was idle (the
//! socket took everything, nothing was left to send) rather than kept waiting.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A connection whose writes must keep moving (see the module's text).
pub struct WriteDeadline<T> {
    io: T,
    limit: Duration,
    /// Bytes per second the client must take once an answer waits on it; 0: any progress
    /// restarts the wait.
    min_rate: u64,
    /// Armed from the first write that waits; moved by the bytes taken since.
    timer: Option<Pin<Box<Sleep>>>,
    /// The last write poll waited: the next one that goes through is that write's progress.
    waiting: bool,
}

impl<T> WriteDeadline<T> {
    /// `io` with writes bounded by `limit` and `min_rate` bytes per second.
    pub fn new(io: T, limit: Duration, min_rate: u64) -> WriteDeadline<T> {
        WriteDeadline {
            io,
            limit,
            min_rate,
            timer: None,
            waiting: false,
        }
    }

    fn timed_out(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client took the answer slower than {} bytes/s for over {} ms",
                self.min_rate,
                self.limit.as_millis()
            ),
        )
    }

    /// The time `n` bytes taken buy.
    fn credit(&self, n: usize) -> Duration {
        match self.min_rate {
            0 => self.limit,
            rate => Duration::from_secs_f64(n as f64 / rate as f64),
        }
    }

    /// A write poll: its progress moves the deadline; a wait arms it, and fails past it.
    fn write_polled(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        let waited = std::mem::replace(&mut self.waiting, polled.is_pending());
        match polled {
            Poll::Ready(Ok(n)) => {
                let now = Instant::now();
                let credit = self.credit(n);
                if let Some(timer) = self.timer.as_mut() {
                    let deadline = timer.deadline();
                    if deadline > now {
                        let cap = now + self.limit;
                        let moved = deadline.checked_add(credit).map_or(cap, |d| d.min(cap));
                        timer.as_mut().reset(moved);
                    } else if waited {
                        // It waited past the deadline: the bytes it got now come too late.
                        self.timer = None;
                        return Poll::Ready(Err(self.timed_out()));
                    } else {
                        // Idle past the deadline, not kept waiting: the client caught up.
                        self.timer = None;
                    }
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.wait(cx),
        }
    }

    /// A flush or shutdown poll: it carries no bytes, but waits under the same deadline.
    fn other_polled(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<()>>,
    ) -> Poll<io::Result<()>> {
        match polled {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => self.wait(cx).map_ok(|_| ()),
        }
    }

    /// Pending until the deadline (armed `limit` ahead if it was not), then an error.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_ready() {
            self.timer = None;
            return Poll::Ready(Err(self.timed_out()));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.write_polled(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.write_polled(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.other_polled(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.other_polled(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Writes `total` bytes through a pipe of 64 bytes (or `step`) to a reader taking `step` bytes every 100 ms
    /// (virtual time); returns the write's outcome and the bytes the reader got.
    async fn slow_read(total: usize, step: usize) -> (io::Result<()>, usize) {
        let (near, mut far) = tokio::io::duplex(step.max(64));
        let reader = tokio::spawn(async move {
            let (mut got, mut buf) = (0, vec![0; step]);
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                match far.read(&mut buf).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got += n,
                }
            }
        });
        let mut w = WriteDeadline::new(near, Duration::from_secs(1), 1000);
        let wrote = w.write_all(&vec![7; total]).await;
        drop(w);
        (wrote, reader.await.unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_taking_a_few_bytes_now_and_then_is_cut_off() {
        // 10 bytes/s against 1000 required: each read would have restarted a plain timeout.
        let (wrote, got) = slow_read(1 << 20, 1).await;
        let e = wrote.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(
            got < 1000,
            "the slow reader took {got} bytes before the end"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_keeping_up_with_the_rate_gets_everything() {
        // 2000 bytes/s against 1000 required.
        let (wrote, got) = slow_read(20_000, 200).await;
        wrote.unwrap();
        assert_eq!(got, 20_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_past_its_deadline_starts_afresh() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut w = WriteDeadline::new(near, Duration::from_secs(1), 1000);
        // A write that waits (the pipe is full), then the reader takes everything.
        let write = tokio::spawn(async move {
            w.write_all(&[1; 128]).await.unwrap();
            w
        });
        let mut buf = [0; 128];
        far.read_exact(&mut buf).await.unwrap();
        let mut w = write.await.unwrap();
        // Nothing to send for a minute, then an answer that the reader takes at once.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let reader = tokio::spawn(async move { far.read_exact(&mut [0; 128]).await.map(|_| ()) });
        w.write_all(&[2; 128]).await.unwrap();
        reader.await.unwrap().unwrap();
    }
}
