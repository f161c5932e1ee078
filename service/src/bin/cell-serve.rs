//! `cell-serve`: the service's own entry point until the `cell` program carries `serve` and
//! `tenant add` (same arguments). Logs are JSON lines on stderr (`CELL_LOG` filters them).
#![forbid(unsafe_code)]

use cell_service::cli::{ServeArgs, TenantAddArgs};
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "cell-serve", version, about = "Serve cells over HTTP")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGTERM (drain) or SIGINT; SIGHUP reloads tenants and policy.
    Serve(ServeArgs),
    /// Tenants and their keys.
    #[command(subcommand)]
    Tenant(Tenant),
}

#[derive(Subcommand)]
enum Tenant {
    /// Add a tenant or a key to one; prints the key once (only its hash is stored).
    Add(TenantAddArgs),
}

/// Makes `memory_mib` bind on subinterp cells.
#[global_allocator]
static ALLOCATOR: supervisor::AccountingAllocator = supervisor::AccountingAllocator;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CELL_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let result = match Cli::parse().command {
        Command::Serve(args) => args.run(),
        Command::Tenant(Tenant::Add(args)) => args.run().map(|key| println!("{key}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cell-serve: {e}");
            ExitCode::from(2)
        }
    }
}
