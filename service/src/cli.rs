//! Command-line arguments of `serve` and `tenant add`, as clap argument groups the `cell`
//! program can flatten into its own subcommands.

use crate::config::{Limits, Listen, Peers, ServeConfig};
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `serve`: where to listen, this node's name, its peers, tenants and policy.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// `HOST:PORT` or `unix:PATH`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: Listen,
    /// This node's name, the prefix of its cell ids (default: $CELL_NODE, else the host name).
    #[arg(long, env = "CELL_NODE")]
    pub node: Option<String>,
    /// Peer URL template with `{node}`, for redirects to the node holding a cell.
    #[arg(long, env = "CELL_PEER_URL")]
    pub peer_url: Option<String>,
    /// A peer by name: `NAME=URL` (repeatable; wins over the template).
    #[arg(long = "peer", value_name = "NAME=URL")]
    pub peers: Vec<String>,
    /// Tenants file (TOML); without it one tenant whose key is $CELL_API_KEY.
    #[arg(long, env = "CELL_TENANTS")]
    pub tenants: Option<PathBuf>,
    /// Base policy (TOML) every tenant policy extends.
    #[arg(long, env = "CELL_POLICY")]
    pub policy: Option<PathBuf>,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Seconds live cells are given on SIGTERM before they are killed.
    #[arg(long, default_value_t = 30)]
    pub drain_grace_s: u64,
    /// Most live cells on this node.
    #[arg(long, default_value_t = 100_000)]
    pub max_cells: usize,
    /// Most dead cells kept for their reason and events (all tenants); past it the oldest of the
    /// tenant holding the most are reaped early.
    #[arg(long, default_value_t = 10_000)]
    pub max_dead_cells: usize,
    /// Most bytes of events buffered by dead cells (all tenants); past it the oldest dead
    /// cells of the tenant holding the most bytes are reaped early.
    #[arg(long, default_value_t = 256 << 20)]
    pub max_dead_event_bytes: usize,
    /// Execs and calls running at once per tenant, over all its cells (each holds a thread
    /// until it ends); past it `429`.
    #[arg(long, default_value_t = Limits::default().execs_per_tenant)]
    pub execs_per_tenant: usize,
    /// Open event streams per tenant; past it `429`.
    #[arg(long, default_value_t = Limits::default().streams_per_tenant)]
    pub streams_per_tenant: usize,
    /// Creates per tenant waiting at once on another create with the same idempotency key;
    /// past it `429`.
    #[arg(long, default_value_t = Limits::default().idempotent_waits_per_tenant)]
    pub idempotent_waits_per_tenant: usize,
    /// Bytes per second a client must take of an answer that waits on it, else its connection
    /// is closed (0: any progress will do, within the write timeout).
    #[arg(long, default_value_t = Limits::default().min_write_rate)]
    pub min_write_rate: u64,
    /// Run every microVM cell in a confined VM host process (no privileges, Landlock, a
    /// syscall allowlist), so that a guest reaching the VMM is still outside the node's
    /// process; by default only the cells past the node's first 128 are. Costs one socket
    /// round trip per exec (about 1.16x a warm exec).
    #[arg(long)]
    pub microvm_hosted: bool,
}

impl ServeArgs {
    /// The [`ServeConfig`] these arguments describe (the node name defaults to the host name).
    pub fn config(&self) -> Result<ServeConfig, String> {
        let node = match &self.node {
            Some(n) => n.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .map_err(|e| format!("no --node and no host name: {e}"))?,
        };
        let mut peers = Peers {
            template: self.peer_url.clone(),
            ..Peers::default()
        };
        for p in &self.peers {
            let (name, url) = p
                .split_once('=')
                .ok_or_else(|| format!("--peer `{p}` is not NAME=URL"))?;
            peers.map.insert(name.into(), url.into());
        }
        for (flag, value) in [
            ("--execs-per-tenant", self.execs_per_tenant),
            ("--streams-per-tenant", self.streams_per_tenant),
            (
                "--idempotent-waits-per-tenant",
                self.idempotent_waits_per_tenant,
            ),
            ("--max-cells", self.max_cells),
        ] {
            if value == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        Ok(ServeConfig {
            listen: self.listen.clone(),
            node,
            peers,
            tenants_file: self.tenants.clone(),
            policy_file: self.policy.clone(),
            api_key: std::env::var("CELL_API_KEY").ok().filter(|k| !k.is_empty()),
            limits: Limits {
                body_bytes: self.max_body_bytes,
                drain_grace: Duration::from_secs(self.drain_grace_s),
                max_cells: self.max_cells,
                max_dead_cells: self.max_dead_cells,
                max_dead_event_bytes: self.max_dead_event_bytes,
                execs_per_tenant: self.execs_per_tenant,
                streams_per_tenant: self.streams_per_tenant,
                idempotent_waits_per_tenant: self.idempotent_waits_per_tenant,
                min_write_rate: self.min_write_rate,
                ..Limits::default()
            },
            microvm_hosted: self.microvm_hosted,
        })
    }

    /// Runs the node until SIGTERM/SIGINT; returns a message on failure.
    pub fn run(&self) -> Result<(), String> {
        let config = self.config()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        rt.block_on(crate::serve(config)).map_err(|e| e.to_string())
    }
}

/// Arguments of `tenant add`.
#[derive(clap::Args, Debug, Clone)]
pub struct TenantAddArgs {
    /// Tenant name (a new key is added if it exists).
    pub name: String,
    /// Tenants file (created if missing).
    #[arg(long, env = "CELL_TENANTS")]
    pub tenants: PathBuf,
    /// Allowed backend (repeatable; none: all) — for a new tenant.
    #[arg(long = "backend")]
    pub backends: Vec<String>,
}

impl TenantAddArgs {
    /// Adds the key and returns it: print it, it is never stored.
    pub fn run(&self) -> Result<String, String> {
        // A name no backend of this build answers to would make the tenant unable to create
        // the cells it was meant for, silently: refuse it here, naming the ones there are.
        let known: Vec<String> = supervisor::Supervisor::new()
            .backends()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        if let Some(unknown) = self.backends.iter().find(|b| !known.contains(b)) {
            return Err(format!(
                "unknown backend `{unknown}` (this build has: {})",
                known.join(", ")
            ));
        }
        crate::add_tenant(&self.tenants, &self.name, &self.backends).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn config(flags: &[&str]) -> Result<ServeConfig, String> {
        let argv = ["serve", "--node", "n1"].iter().chain(flags);
        Serve::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .args
            .config()
    }

    #[test]
    fn the_per_tenant_bounds_and_the_write_rate_come_from_flags_or_the_defaults() {
        let d = Limits::default();
        let l = config(&[]).unwrap().limits;
        assert_eq!(
            (l.execs_per_tenant, l.streams_per_tenant),
            (d.execs_per_tenant, d.streams_per_tenant)
        );
        assert_eq!(
            (l.idempotent_waits_per_tenant, l.min_write_rate),
            (d.idempotent_waits_per_tenant, d.min_write_rate)
        );
        let l = config(&[
            "--execs-per-tenant=3",
            "--streams-per-tenant=4",
            "--idempotent-waits-per-tenant=5",
            "--min-write-rate=0",
        ])
        .unwrap()
        .limits;
        assert_eq!((l.execs_per_tenant, l.streams_per_tenant), (3, 4));
        assert_eq!((l.idempotent_waits_per_tenant, l.min_write_rate), (5, 0));
        for zero in ["--execs-per-tenant=0", "--max-cells=0"] {
            let err = config(&[zero]).unwrap_err();
            assert!(err.contains("at least 1"), "{zero}: {err}");
        }
        assert!(config(&["--min-write-rate=-1"]).is_err());
    }

    #[test]
    fn tenant_add_refuses_a_backend_this_build_lacks_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let tenants = dir.path().join("tenants.toml");
        let args = |backend: &str| TenantAddArgs {
            name: "acme".into(),
            tenants: tenants.clone(),
            backends: vec![backend.into()],
        };
        let err = args("nope").run().unwrap_err();
        assert!(err.contains("`nope`") && err.contains("subinterp"), "{err}");
        assert!(!tenants.exists(), "a refused tenant was written");
        let key = args("subinterp").run().unwrap();
        let loaded = crate::Tenants::load(&tenants, &toml::Table::new()).unwrap();
        assert_eq!(loaded.authenticate(&key).unwrap().name, "acme");
    }
}
