//! `cell`: run scripts in cells from the command line. Events print as JSON lines on stdout;
//! diagnostics go to stderr (`CELL_LOG=debug` for more).
//!
//! Exit codes (see README): 0 ok · 1 script error · 2 usage · 3 invalid policy · 4 spawn failed ·
//! 5 limit, timeout or kill · 6 cell crashed or protocol violation · 7 cannot read the script ·
//! 141 stdout closed (`cell run … | head -1`; the cell is killed).
#![forbid(unsafe_code)]

mod escape;

use clap::{Parser, Subcommand};
use escape::{escape, shorten};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use supervisor::{Cell, CellError, ErrorCode, Map, Policy, Supervisor, Value, json};

const DEFAULT_SCRIPT: &str = include_str!("../hello.rhai");

#[derive(Parser)]
#[command(name = "cell", version, about = "Run untrusted scripts in cells")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct CellArgs {
    /// Backend: subinterp, process or microvm (default: the policy's, else subinterp).
    #[arg(long)]
    backend: Option<String>,
    /// Policy file (TOML); unknown keys are errors.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Name of the cell.
    #[arg(long, default_value = "main")]
    name: String,
    /// Append one JSON line per broker decision (cell, capability, action, allow/deny, rule).
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,
    /// Directory of the persistent `kv` store (created if missing); without it `kv` grants
    /// are refused.
    #[arg(long, value_name = "DIR")]
    kv_dir: Option<PathBuf>,
    /// TOML file of named secrets (`name = "value"`) that `secret` grants may expose.
    #[arg(long, value_name = "FILE")]
    secrets: Option<PathBuf>,
}

/// The broker behind `request(...)`: built-in capabilities, the kv store, secrets, audit log.
fn broker(args: &CellArgs) -> Result<supervisor::broker::Broker, String> {
    use supervisor::broker::{Broker, JsonLinesAudit, Secrets};
    let mut builder = Broker::builder();
    if let Some(path) = &args.audit_log {
        let sink = JsonLinesAudit::open(path)
            .map_err(|e| format!("cannot open audit log {}: {e}", path.display()))?;
        builder = builder.audit(std::sync::Arc::new(sink));
    }
    if let Some(dir) = &args.kv_dir {
        builder = builder.kv_dir(dir);
    }
    if let Some(path) = &args.secrets {
        builder = builder.secrets(Secrets::load(path).map_err(|e| e.to_string())?);
    }
    builder.build().map_err(|e| e.to_string())
}

#[derive(Subcommand)]
enum Command {
    /// Run a script (default: an embedded demo) and print each event as a JSON line.
    Run {
        #[command(flatten)]
        cell: CellArgs,
        /// Script file; omit to run the embedded default.
        script: Option<PathBuf>,
    },
    /// Load a script, then call one of its functions (or a host module's) with JSON arguments.
    Call {
        #[command(flatten)]
        cell: CellArgs,
        script: PathBuf,
        /// `name`, `main.name` or `module.name`.
        function: String,
        /// Arguments, each a JSON value (`42`, `-5`, `"text"`, `[1,2]`, `{"k":1}`); after
        /// `--` nothing is read as a flag.
        #[arg(allow_negative_numbers = true)]
        args: Vec<String>,
    },
    /// Print which backends and confinement layers this host supports.
    Doctor,
    /// Serve cells over HTTP until SIGTERM (drain); SIGHUP reloads tenants (docs/SERVICE.md).
    Serve(service::cli::ServeArgs),
    /// Tenants of `cell serve` and their API keys.
    #[command(subcommand)]
    Tenant(TenantCommand),
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Add a tenant, or a key to one; prints the key once (only its hash is stored).
    Add(service::cli::TenantAddArgs),
}

enum Failure {
    Cell(CellError),
    Policy(String),
    Spawn(String),
    Read(String),
    Usage(String),
    /// Stdout could not be written (closed by its reader, as `| head -1` does).
    Output(std::io::Error),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Cell(e) => match e.code {
                ErrorCode::Syntax
                | ErrorCode::Runtime
                | ErrorCode::NotFound
                | ErrorCode::OutOfModel
                | ErrorCode::Denied
                | ErrorCode::InvalidArgument
                | ErrorCode::CapabilityFailed => 1,
                ErrorCode::LimitOperations
                | ErrorCode::LimitCallDepth
                | ErrorCode::LimitExprDepth
                | ErrorCode::LimitStringSize
                | ErrorCode::LimitArraySize
                | ErrorCode::LimitMapSize
                | ErrorCode::LimitValue
                | ErrorCode::LimitFrameSize
                | ErrorCode::LimitEventQueue
                | ErrorCode::LimitMemory
                | ErrorCode::LimitCpu
                | ErrorCode::LimitQuota
                | ErrorCode::TimedOut
                | ErrorCode::Cancelled => 5,
                ErrorCode::SpawnFailed => 4,
                _ => 6,
            },
            Failure::Usage(_) => 2,
            Failure::Policy(_) => 3,
            Failure::Spawn(_) => 4,
            Failure::Read(_) => 7,
            // What a shell reports for a tool its pipe's reader left (128 + SIGPIPE).
            Failure::Output(_) => 141,
        }
    }
}

/// Makes `memory_mib` bind on subinterp cells: every block a cell's engine allocates is charged
/// to it.
#[global_allocator]
static ALLOCATOR: supervisor::AccountingAllocator = supervisor::AccountingAllocator;

fn main() -> ExitCode {
    diagnostics();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run { cell, script } => run(&cell, script, None),
        Command::Call {
            cell,
            script,
            function,
            args,
        } => run(&cell, Some(script), Some((function, args))),
        Command::Doctor => doctor(),
        Command::Serve(args) => args.run().map_err(Failure::Spawn),
        Command::Tenant(TenantCommand::Add(args)) => {
            args.run().map_err(Failure::Usage).and_then(out)
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            // Written without `println!`, which panics on a closed stream.
            let _ = match &failure {
                Failure::Cell(e) => out(json::error(e)),
                Failure::Policy(m) | Failure::Spawn(m) | Failure::Read(m) | Failure::Usage(m) => {
                    diagnostic(m)
                }
                Failure::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                Failure::Output(e) => diagnostic(&format!("cannot write the output: {e}")),
            };
            ExitCode::from(failure.exit_code())
        }
    }
}

/// Writes one line to stdout. A reader that went away (`cell run … | head -1`) is a
/// [`Failure::Output`], not the panic `println!` makes of it.
fn out(line: impl std::fmt::Display) -> Result<(), Failure> {
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{line}").map_err(Failure::Output)
}

/// Writes `cell: MESSAGE` (escaped) to stderr, or nothing if stderr is closed.
fn diagnostic(message: &str) -> Result<(), Failure> {
    use std::io::Write;
    writeln!(std::io::stderr().lock(), "cell: {}", escape(message)).map_err(Failure::Output)
}

/// Diagnostics on stderr, guest text escaped (a log message cannot forge a line), coloured only
/// on a terminal and never when `NO_COLOR` is set (<https://no-color.org>).
fn diagnostics() {
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fields = tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = escape(&format!("{value:?}")).into_owned();
        match field.name() {
            "message" => w.write_str(&text),
            name => write!(w, "{name}={text}"),
        }
    });
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CELL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .fmt_fields(tracing_subscriber::field::MakeExt::delimited(fields, " "))
        .init();
}

fn run(
    args: &CellArgs,
    script: Option<PathBuf>,
    call: Option<(String, Vec<String>)>,
) -> Result<(), Failure> {
    let policy = match &args.policy {
        Some(path) => Policy::load(path).map_err(|e| Failure::Policy(e.to_string()))?,
        None => Policy::default(),
    };
    let source = match &script {
        Some(path) => supervisor::read_text(path, supervisor::MAX_FILE_BYTES)
            .map_err(|e| Failure::Read(format!("cannot read {}: {e}", path.display())))?,
        None => DEFAULT_SCRIPT.to_string(),
    };
    let call_args = match &call {
        Some((_, raw)) => raw
            .iter()
            .map(|a| {
                serde_json::from_str::<serde_json::Value>(a)
                    .map(|j| json::parse_value(&j))
                    .map_err(|e| {
                        let a = shorten(a, 80);
                        Failure::Usage(format!("argument `{a}` is not JSON: {e}"))
                    })
            })
            .collect::<Result<Vec<Value>, _>>()?,
        None => Vec::new(),
    };
    let backend = args
        .backend
        .clone()
        .or_else(|| policy.backend.clone())
        .unwrap_or_else(|| "subinterp".into());
    let supervisor = one_cell_supervisor();
    supervisor.set_broker(broker(args).map_err(Failure::Policy)?);
    let cell = supervisor
        .spawn(&args.name, &backend, &policy)
        .map_err(|e| Failure::Spawn(e.to_string()))?;

    let result = stream_events(&cell, {
        let cell = cell.clone();
        move || {
            let loaded = cell.exec(&source);
            match call {
                Some((function, _)) => {
                    loaded.and_then(|_| cell.call(&function, call_args, Map::new()))
                }
                None => loaded,
            }
        }
    });
    out(json::result(&Ok(result?)))
}

/// A supervisor for a process that runs one cell: its backends start that cell the cheapest
/// way for one. What makes many starts fast costs a single start more: the process backend's
/// fork server (started and confined, then kept two spare cells ahead) and the microvm
/// backend's snapshot (a template VM booted and torn down, then the cell's own VM paying a
/// fault for each page it touches). So the process cell is confined directly and the microVM
/// boots from the image: the same confinement and the same answers (the conformance suite runs
/// on both starts), in about 0.74x and 0.45x the wall time of `cell run` of the script `1`.
fn one_cell_supervisor() -> Supervisor {
    let supervisor = Supervisor::new();
    supervisor.register_backend(Arc::new(backend_microvm::MicroVm::cold()));
    supervisor.register_backend(Arc::new(backend_process::ProcessBackend {
        fork_server: false,
        ..backend_process::ProcessBackend::new()
    }));
    supervisor
}

/// Runs `work` on a worker thread, which closes the cell when it is done, and prints events
/// here as they arrive: `recv` blocks until the next event or the close (events queued before
/// the close are still delivered), so nothing waits on a timer. A cell that posts faster than
/// stdout takes its lines waits for room (backpressure) rather than failing, so a flood of
/// events gives the same lines and result on every backend, whatever the reader's speed.
fn stream_events(
    cell: &Cell,
    work: impl FnOnce() -> Result<Value, CellError> + Send + 'static,
) -> Result<Value, Failure> {
    /// Closes the cell when the worker ends, by returning or by panicking.
    struct CloseOnDrop(Cell);
    impl Drop for CloseOnDrop {
        fn drop(&mut self) {
            self.0.close();
        }
    }
    cell.set_backpressure(true);
    let worker = std::thread::spawn({
        let closer = CloseOnDrop(cell.clone());
        move || {
            let result = work();
            drop(closer);
            result
        }
    });
    while let Ok(event) = cell.recv(None) {
        if let Err(closed) = out(json::event(&event)) {
            // Nobody reads what the cell says any more: stop it rather than run it for nothing.
            cell.kill();
            let _ = worker.join();
            return Err(closed);
        }
    }
    worker
        .join()
        .unwrap_or_else(|_| {
            Err(CellError::new(
                ErrorCode::Internal,
                "the exec thread panicked",
            ))
        })
        .map_err(Failure::Cell)
}

fn doctor() -> Result<(), Failure> {
    let supervisor = Supervisor::new();
    for (name, availability) in supervisor.backends() {
        match availability {
            Ok(()) => out(format_args!("backend {name}: available"))?,
            Err(reason) => out(format_args!("backend {name}: unavailable ({reason})"))?,
        }
    }
    for (backend, layers) in supervisor.host_layers() {
        for layer in layers {
            let state = if layer.active { "supported" } else { "missing" };
            match layer.detail.as_str() {
                "" => out(format_args!("  {backend} layer {}: {state}", layer.name))?,
                detail => out(format_args!(
                    "  {backend} layer {}: {state} ({detail})",
                    layer.name
                ))?,
            }
        }
    }
    Ok(())
}
