//! `cell serve`: the cell runtime as a multi-tenant HTTP service.
//!
//! A node is one process holding cells made through the [`supervisor`]; cell ids name the node
//! (`NODE_SUFFIX`), and a node asked about another node's cell redirects there, so nodes behind
//! one Kubernetes Service share no state. See docs/SERVICE.md for the API, the error table,
//! tenants, quotas and deployment.
//!
//! ```no_run
//! # async fn f() -> Result<(), cell_service::ServeError> {
//! use cell_service::{Listen, ServeConfig};
//! let mut config = ServeConfig::new("127.0.0.1:8080".parse::<Listen>().unwrap(), "node-a");
//! config.api_key = std::env::var("CELL_API_KEY").ok();
//! cell_service::serve(config).await
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
mod config;
mod dead;
pub mod error;
mod events;
pub mod idempotency;
pub mod inherit;
mod metrics_export;
pub mod node;
mod quota;
mod server;
mod stream;
pub mod tenants;
mod write_deadline;

pub use config::{Limits, Listen, Peers, ServeConfig, valid_node_name};
pub use error::{ApiError, SERVICE_CODES, status_of};
pub use server::{Bound, ServeError, Server, serve};
pub use tenants::{Quotas, Tenants, TenantsError, add_tenant, hash_key};
