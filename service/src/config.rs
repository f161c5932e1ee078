//! What a node is started with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where the node listens.
#[derive(Debug, Clone, PartialEq)]
pub enum Listen {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl std::str::FromStr for Listen {
    type Err = String;
    /// `HOST:PORT` or `unix:PATH`.
    fn from_str(s: &str) -> Result<Listen, String> {
        match s.strip_prefix("unix:") {
            Some(path) if !path.is_empty() => Ok(Listen::Unix(path.into())),
            Some(_) => Err("`unix:` needs a path".into()),
            None => s
                .parse()
                .map(Listen::Tcp)
                .map_err(|e| format!("`{s}` is not HOST:PORT or unix:PATH: {e}")),
        }
    }
}

/// How a node finds its peers' base URLs from the node name in a cell id: an explicit map
/// first, else a template with `{node}` (under Kubernetes, e.g.
/// `http://{node}.cell.default.svc.cluster.local:8080` with a StatefulSet's pod names).
#[derive(Debug, Clone, Default)]
pub struct Peers {
    /// Node name → base URL, for named peers.
    pub map: BTreeMap<String, String>,
    /// Base URL with `{node}` for every other node.
    pub template: Option<String>,
}

impl Peers {
    /// The base URL of `node` (no trailing `/`), if it is known.
    pub fn url(&self, node: &str) -> Option<String> {
        self.map
            .get(node)
            .cloned()
            .or_else(|| self.template.as_ref().map(|t| t.replace("{node}", node)))
            .map(|u| u.trim_end_matches('/').to_string())
    }
}

/// Bounds on requests, streams and cells.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body; larger ones get 413 before they are buffered.
    pub body_bytes: usize,
    /// Time to receive a request's headers.
    pub header_timeout: Duration,
    /// Time to receive a request's body.
    pub body_timeout: Duration,
    /// Longest a response write may wait for the client to take bytes (it reads nothing, its
    /// window stays shut) before the connection is closed: else a client that sends requests
    /// and never reads the answers holds its connection, and a descriptor, for ever.
    pub write_timeout: Duration,
    /// Bytes per second a client must take of an answer that waits on it: each byte taken
    /// extends the `write_timeout` wait by `1 / min_write_rate` s (never past `write_timeout`
    /// from now), so a client reading a few bytes now and then cannot hold its connection for
    /// ever by restarting the wait; 0 lets any progress restart it.
    pub min_write_rate: u64,
    /// Events kept per cell for reconnecting readers.
    pub event_buffer: usize,
    /// Bytes of event lines kept per cell (the oldest lines go first; the newest stays).
    pub event_buffer_bytes: usize,
    /// A stream with nothing to say sends a heartbeat line this often.
    pub heartbeat: Duration,
    /// Open event streams per tenant.
    pub streams_per_tenant: usize,
    /// Execs and calls running at once per tenant, over all its cells: each holds a thread
    /// until it ends, so one tenant's long scripts cannot take every thread the node has.
    pub execs_per_tenant: usize,
    /// Creates per tenant waiting at once on another create with the same idempotency key
    /// (each waits without a thread, but holds a connection and its request).
    pub idempotent_waits_per_tenant: usize,
    /// Lifetime of a cell created without `ttl_ms`.
    pub default_ttl: Duration,
    /// Longest lifetime a cell may ask for (or be extended to).
    pub max_ttl: Duration,
    /// Live cells on this node (all tenants).
    pub max_cells: usize,
    /// Dead cells kept for their reason and events (all tenants): past it the oldest of the
    /// tenant holding the most are reaped early, as if their ttl had run out.
    pub max_dead_cells: usize,
    /// Bytes of events buffered by dead cells (all tenants), as measured when each is seen
    /// dead: past it the oldest dead cells of the tenant holding the most bytes are reaped
    /// early (the newest is kept whatever its size). Each cell may buffer `event_buffer_bytes`, so without it dead cells of a tenant
    /// with no `live_cells` quota could hold `max_cells` times that.
    pub max_dead_event_bytes: usize,
    /// On SIGTERM: how long live cells are given before they are killed.
    pub drain_grace: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            body_bytes: 1 << 20,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            min_write_rate: 4096,
            event_buffer: 1024,
            event_buffer_bytes: 4 << 20,
            heartbeat: Duration::from_secs(15),
            streams_per_tenant: 64,
            execs_per_tenant: 64,
            idempotent_waits_per_tenant: 1024,
            default_ttl: Duration::from_secs(600),
            max_ttl: Duration::from_secs(24 * 3600),
            max_cells: 100_000,
            max_dead_cells: 10_000,
            max_dead_event_bytes: 256 << 20,
            drain_grace: Duration::from_secs(30),
        }
    }
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address or socket the node listens on.
    pub listen: Listen,
    /// This node's name, the prefix of every cell id it makes: letters, digits, `-` and `.`.
    pub node: String,
    /// How to reach other nodes for redirects.
    pub peers: Peers,
    /// Tenants file (TOML); without it one tenant whose key is `api_key`.
    pub tenants_file: Option<PathBuf>,
    /// Base policy file (TOML) every tenant policy extends.
    pub policy_file: Option<PathBuf>,
    /// The single tenant's key (from `CELL_API_KEY`) when there is no tenants file.
    pub api_key: Option<String>,
    /// Bounds on requests, streams and cells.
    pub limits: Limits,
    /// Every microVM cell in a confined VM host process, not only those past the node's first
    /// 128 (see [`backend_microvm::MicroVm::hosted`]).
    pub microvm_hosted: bool,
}

impl ServeConfig {
    /// A config listening on `listen` as node `node`, with no peers, no tenants file and default
    /// limits.
    pub fn new(listen: Listen, node: &str) -> ServeConfig {
        ServeConfig {
            listen,
            node: node.into(),
            peers: Peers::default(),
            tenants_file: None,
            policy_file: None,
            api_key: None,
            limits: Limits::default(),
            microvm_hosted: false,
        }
    }
}

/// A node name fits in a cell id: 1 to 40 of letters, digits, `-` and `.`.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_and_peers_parse() {
        assert_eq!(
            "127.0.0.1:80".parse::<Listen>(),
            Ok(Listen::Tcp("127.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            "unix:/run/cell.sock".parse::<Listen>(),
            Ok(Listen::Unix("/run/cell.sock".into()))
        );
        assert!("unix:".parse::<Listen>().is_err());
        assert!("localhost".parse::<Listen>().is_err());
        let peers = Peers {
            map: [("a".to_string(), "http://x:1/".to_string())].into(),
            template: Some("http://{node}.svc:8080".into()),
        };
        assert_eq!(peers.url("a").unwrap(), "http://x:1");
        assert_eq!(peers.url("b").unwrap(), "http://b.svc:8080");
        assert!(Peers::default().url("a").is_none());
        assert!(valid_node_name("cell-0.x") && !valid_node_name("a_b") && !valid_node_name(""));
    }
}
