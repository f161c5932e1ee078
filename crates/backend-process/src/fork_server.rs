//! The fork server: a pre-confined guest process that forks cells on request.
//!
//! A cold spawn clones a child of the supervisor and walks it through the whole
//! confinement sequence (namespaces, pivot_root, ids, Landlock, seccomp) before
//! executing the guest image. The fork server pays that once: it is the guest image
//! itself, spawned through the same sequence (keeping only `CAP_SYS_ADMIN` inside its
//! own user namespace), and then forks each cell with new pid, mount, ipc and uts
//! namespaces. The supervisor's memory, secrets and fds are never in it: it is a fresh
//! exec of the embedded image, and it only ever sees the cell's channel.
//!
//! Per cell: the host makes the cell's cgroups and a socketpair, sends the server the
//! rlimits and arguments with the cell's end of the socketpair, and gets the new
//! process's pidfd back. Cells are forked with `CLONE_PARENT`, so the supervisor is
//! their parent and reaps them exactly like directly spawned cells. The host moves the
//! process into its cgroups and only then sends the go byte the child waits for before
//! it runs anything of its program.
//!
//! The server is started on first use, by a keeper thread that lives as long as the
//! supervisor process: a parent-death signal follows the thread that spawned, and
//! every cell's parent is that thread. A server that died is replaced on the next spawn.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::error::{Error, Result, host};
use crate::fork_protocol::{
    ForkRequest, MAX_MESSAGE, Reply, encode_setup, recv_message, send_message,
};
use crate::host::seccomp_program;
use crate::seccomp::Role;
use crate::spawn::{Image, Limits, Prepared, ProcessCell, SpawnSpec, rlimit_values};

/// A running fork server.
struct Server {
    process: ProcessCell,
}

/// The server of each image (the probe image has its own in unit tests).
fn slot(image: Image) -> &'static Mutex<Option<Server>> {
    static GUEST: Mutex<Option<Server>> = Mutex::new(None);
    #[cfg(test)]
    static PROBE: Mutex<Option<Server>> = Mutex::new(None);
    match image {
        Image::Guest => &GUEST,
        #[cfg(test)]
        Image::Probe => &PROBE,
    }
}

/// Forks a cell from the server of `spec.image` (started if needed) and places it
/// in the cgroups `prepared` holds.
pub(crate) fn spawn(spec: &SpawnSpec, prepared: Prepared) -> Result<ProcessCell> {
    let request = ForkRequest {
        rlimits: rlimit_values(&spec.limits),
        args: spec.args.clone(),
    };
    if request.encode().len() > MAX_MESSAGE {
        return Err(Error::InvalidLimit(format!(
            "cell arguments longer than the fork server's {MAX_MESSAGE}-byte request"
        )));
    }
    let (parent, child) = UnixStream::pair().map_err(host("socketpair"))?;
    let pidfd = {
        let mut slot = slot(spec.image)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match fork(&mut slot, spec.image, &request, &child) {
            Err(Error::ForkServer(_)) => {
                // The server died (or broke its protocol): replace it, once.
                *slot = None;
                fork(&mut slot, spec.image, &request, &child)?
            }
            other => other?,
        }
    };
    drop(child);
    let pid = pid_of(&pidfd)?;
    let cell = ProcessCell::from_parts(pid, pidfd, parent, prepared);
    // On failure the cell is dropped, which kills and reaps it.
    cell.place_in_cgroups()
        .map_err(host("placing the cell in its cgroups"))?;
    cell.channel()
        .write_all(&[1])
        .map_err(host("sending the go byte"))?;
    Ok(cell)
}

/// One fork on the server in `slot`, starting it first if there is none.
fn fork(
    slot: &mut Option<Server>,
    image: Image,
    request: &ForkRequest,
    channel: &UnixStream,
) -> Result<OwnedFd> {
    if slot.is_none() {
        *slot = Some(start(image)?);
    }
    let server = slot.as_ref().expect("started above");
    let control = server.process.channel().as_raw_fd();
    send_message(control, &request.encode(), Some(channel.as_raw_fd()))
        .map_err(|e| Error::ForkServer(format!("sending a fork request: {e}")))?;
    let (reply, pidfd) = recv(control)?;
    match (reply.errno, pidfd) {
        (0, Some(fd)) => Ok(fd),
        (0, None) => Err(Error::ForkServer("a fork reply without a pidfd".into())),
        (errno, _) => Err(Error::Host {
            what: "the fork server's clone3",
            source: io::Error::from_raw_os_error(errno),
        }),
    }
}

/// Spawns a fork server for `image` on the keeper thread and hands it the cell filter.
fn start(image: Image) -> Result<Server> {
    type Job = (Image, mpsc::Sender<Result<ProcessCell>>);
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("cell-fork-keeper".into())
            .spawn(move || {
                for (image, reply) in rx {
                    let _ = reply.send(ProcessCell::spawn(&server_spec(image)));
                }
                // Never reached while the process lives: the sender is in a static.
                std::thread::park();
            })
            .expect("spawning the fork-server keeper thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    keeper
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send((image, tx))
        .map_err(|_| Error::ForkServer("the keeper thread is gone".into()))?;
    let process = rx
        .recv()
        .map_err(|_| Error::ForkServer("the keeper thread is gone".into()))??;
    let control = process.channel().as_raw_fd();
    send_message(control, &encode_setup(seccomp_program(Role::Cell)), None)
        .map_err(|e| Error::ForkServer(format!("sending the setup: {e}")))?;
    match recv(control)? {
        (Reply { errno: 0 }, None) => Ok(Server { process }),
        (reply, _) => Err(Error::ForkServer(format!("setup refused: {reply:?}"))),
    }
}

/// The fork server's own spawn: every layer but a pid namespace of its own (cells get
/// theirs), generous limits (each cell lowers its own), no CPU-time limit.
fn server_spec(image: Image) -> SpawnSpec {
    SpawnSpec {
        limits: Limits {
            memory_bytes: 256 << 20,
            cpu_seconds: 0,
            cpu_percent: 100,
            max_processes: 1024,
            open_files: 64,
            file_size_bytes: 0,
        },
        require: Vec::new(),
        fork_server: false,
        image,
        args: vec!["--fork-server".into()],
        role: Role::ForkServer,
    }
}

/// Receives one reply and the fd it carries, if any. The server is trusted no more
/// than it must be: a malformed reply is an error, extra fds are closed.
fn recv(control: i32) -> Result<(Reply, Option<OwnedFd>)> {
    let mut buf = [0u8; 64];
    let mut received = recv_message(control, &mut buf).map_err(|e| {
        Error::ForkServer(if e.kind() == io::ErrorKind::UnexpectedEof {
            "the fork server closed its channel".into()
        } else {
            format!("reading its reply: {e}")
        })
    })?;
    let reply = Reply::decode(&buf[..received.len])
        .filter(|_| received.fds.len() <= 1)
        .ok_or_else(|| Error::ForkServer("a malformed reply".into()))?;
    Ok((reply, received.fds.pop()))
}

/// The pid of a pidfd's process in the supervisor's pid namespace.
fn pid_of(pidfd: &OwnedFd) -> Result<i32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))
        .map_err(host("reading the pidfd's fdinfo"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|p| p.trim().parse::<i32>().ok())
        .filter(|&p| p > 0)
        .ok_or_else(|| Error::ForkServer("the forked cell is already gone".into()))
}
