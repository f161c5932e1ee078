//! Listening, connections, expiry, drain and signals.

use crate::api;
use crate::config::{Listen, ServeConfig, valid_node_name};
use crate::node::{Node, load_tenants};
use crate::tenants::TenantsError;
use crate::write_deadline::WriteDeadline;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Why the server would not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// TCP without any key would serve anyone: refused.
    #[error("refusing to listen on TCP without keys: set CELL_API_KEY or give a tenants file")]
    NoKey,
    /// The node name is not 1 to 40 letters, digits, `-` or `.`.
    #[error("invalid node name `{0}`: 1 to 40 letters, digits, `-` or `.`")]
    NodeName(String),
    /// The tenants file could not be loaded.
    #[error(transparent)]
    Tenants(#[from] TenantsError),
    /// The listening socket could not be opened.
    #[error("cannot listen on {what}: {source}")]
    Listen {
        /// The address or socket path.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Where a started server listens.
#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    /// A TCP address (the port resolved when 0 was asked for).
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

/// A running node. Dropping it stops nothing; call [`Server::drain`] or [`Server::kill`].
pub struct Server {
    /// The node the server serves.
    pub node: Arc<Node>,
    /// Where it listens.
    pub bound: Bound,
    /// `true` asks connections to finish their current request and close.
    stop: watch::Sender<bool>,
    accept: Option<tokio::task::JoinHandle<()>>,
    reaper: Option<tokio::task::JoinHandle<()>>,
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Server {
    /// Binds and starts serving on the current tokio runtime.
    pub async fn start(config: ServeConfig) -> Result<Server, ServeError> {
        Server::start_with(config, Router::new()).await
    }

    /// As [`Server::start`], with extra routes (tests) behind the same layers.
    pub async fn start_with(
        config: ServeConfig,
        extra: Router<api::AppState>,
    ) -> Result<Server, ServeError> {
        if !valid_node_name(&config.node) {
            return Err(ServeError::NodeName(config.node.clone()));
        }
        if matches!(config.listen, Listen::Tcp(_))
            && config.tenants_file.is_none()
            && config.api_key.as_deref().is_none_or(str::is_empty)
        {
            return Err(ServeError::NoKey);
        }
        let tenants = load_tenants(&config)?;
        crate::metrics_export::handle();
        let listen_err = |what: String| move |source| ServeError::Listen { what, source };
        let (listener, bound) = match &config.listen {
            Listen::Tcp(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(listen_err(addr.to_string()))?;
                let local = l.local_addr().map_err(listen_err(addr.to_string()))?;
                (Listener::Tcp(l), Bound::Tcp(local))
            }
            Listen::Unix(path) => {
                // A socket file left by a node that died is replaced; one a live node serves on
                // (it answers a connect) is refused, not taken from it; anything else is kept.
                if std::fs::symlink_metadata(path)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                {
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        return Err(listen_err(path.display().to_string())(std::io::Error::new(
                            std::io::ErrorKind::AddrInUse,
                            "another node is serving on this socket",
                        )));
                    }
                    let _ = std::fs::remove_file(path);
                }
                let l = UnixListener::bind(path).map_err(listen_err(path.display().to_string()))?;
                (Listener::Unix(l), Bound::Unix(path.clone()))
            }
        };
        let node = Arc::new(Node::new(config, tenants));
        let app = api::app(node.clone(), extra);
        let (stop, _) = watch::channel(false);
        let accept = tokio::spawn(accept(listener, app, node.clone(), stop.clone()));
        let reaper = tokio::spawn(reaper(node.clone()));
        tracing::info!(node = %node.config.node, listen = ?bound, "serving");
        Ok(Server {
            node,
            bound,
            stop,
            accept: Some(accept),
            reaper: Some(reaper),
        })
    }

    /// The base URL of a TCP server.
    pub fn url(&self) -> Option<String> {
        match &self.bound {
            Bound::Tcp(a) => Some(format!("http://{a}")),
            Bound::Unix(_) => None,
        }
    }

    /// SIGTERM's drain: not ready and no new cells at once, live cells given the grace
    /// period to be deleted or expire, then killed; then connections are closed.
    pub async fn drain(mut self) {
        let node = self.node.clone();
        node.start_drain();
        tracing::info!(cells = node.len(), "draining");
        let mut count = node.count.subscribe();
        let grace = node.config.limits.drain_grace;
        let _ = tokio::time::timeout(grace, count.wait_for(|n| *n == 0)).await;
        let n = node.clone();
        let _ = tokio::task::spawn_blocking(move || n.kill_all("the node drained")).await;
        self.stop.send_replace(true);
        // Connections finish the request in flight (streams end: their cells are gone).
        if let Some(accept) = self.accept.take() {
            let abort = accept.abort_handle();
            if tokio::time::timeout(grace, accept).await.is_err() {
                abort.abort();
            }
        }
        self.finish().await;
    }

    /// Stops at once: connections dropped, cells killed (a crashed node, in tests).
    pub async fn kill(mut self) {
        self.finish().await;
        let n = self.node.clone();
        let _ = tokio::task::spawn_blocking(move || n.kill_all("the node stopped")).await;
    }

    async fn finish(&mut self) {
        for task in [self.reaper.take(), self.accept.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
            let _ = task.await;
        }
        if let Bound::Unix(path) = &self.bound {
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn accept(listener: Listener, app: Router, node: Arc<Node>, stop: watch::Sender<bool>) {
    let mut conns = JoinSet::new();
    let mut stopping = stop.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = stopping.wait_for(|s| *s) => break,
            // Reap finished connection tasks as they end.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            a = accept_one(&listener) => a,
        };
        match accepted {
            Ok(io) => {
                conns.spawn(connection(io, app.clone(), node.clone(), stop.subscribe()));
            }
            Err(e) => {
                metrics::counter!("cell_service_accept_errors_total").increment(1);
                if !out_of_resources(&e) {
                    // One connection's trouble (reset before it was taken): the next may be fine.
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
                // Out of descriptors or memory: accepting again at once fails again at once, a
                // loop at full speed (and a log line each turn). Wait until a connection ends,
                // which frees one, or, as the descriptors may be held by cells, a while.
                tracing::warn!(
                    "accept failed, waiting for a connection to end or {} ms: {e}",
                    ACCEPT_BACKOFF.as_millis()
                );
                tokio::select! {
                    _ = stopping.wait_for(|s| *s) => break,
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// How long the accept loop waits after running out of descriptors with no connection ending.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether an accept failed for want of descriptors or memory (not for the one connection).
fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

async fn accept_one(l: &Listener) -> std::io::Result<Box<dyn Io>> {
    Ok(match l {
        Listener::Tcp(l) => {
            let (s, _) = l.accept().await?;
            let _ = s.set_nodelay(true);
            Box::new(s)
        }
        Listener::Unix(l) => Box::new(l.accept().await?.0),
    })
}

async fn connection(
    io: Box<dyn Io>,
    app: Router,
    node: Arc<Node>,
    mut stop: watch::Receiver<bool>,
) {
    // Declared before the connection, so dropped after it and the handlers it runs.
    let _counted = Connection::open(node.clone());
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(node.config.limits.header_timeout)
        .serve_connection(
            TokioIo::new(WriteDeadline::new(
                io,
                node.config.limits.write_timeout,
                node.config.limits.min_write_rate,
            )),
            TowerToHyperService::new(app),
        );
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

/// A connection counted in [`Node::connections`] and `cell_service_connections` while it lives.
struct Connection(Arc<Node>);

impl Connection {
    fn open(node: Arc<Node>) -> Connection {
        node.connections.send_modify(|n| *n += 1);
        metrics::gauge!("cell_service_connections").increment(1.0);
        Connection(node)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.connections.send_modify(|n| *n = n.saturating_sub(1));
        metrics::gauge!("cell_service_connections").decrement(1.0);
    }
}

/// Kills cells as they expire; sleeps until the earliest expiry or until one moves earlier.
async fn reaper(node: Arc<Node>) {
    loop {
        let n = node.clone();
        let next = tokio::task::spawn_blocking(move || n.reap())
            .await
            .ok()
            .flatten();
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = node.reaper.notified() => {}
                }
            }
            None => node.reaper.notified().await,
        }
    }
}

/// Serves until SIGTERM or SIGINT (then drains); SIGHUP reloads tenants and policy.
pub async fn serve(config: ServeConfig) -> Result<(), ServeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let sig = |k| {
        signal(k).map_err(|source| ServeError::Listen {
            what: "signals".into(),
            source,
        })
    };
    let (mut term, mut int, mut hup) = (
        sig(SignalKind::terminate())?,
        sig(SignalKind::interrupt())?,
        sig(SignalKind::hangup())?,
    );
    let server = Server::start(config).await?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let n = server.node.clone();
                let _ = tokio::task::spawn_blocking(move || n.reload()).await;
            }
        }
    }
    server.drain().await;
    Ok(())
}
