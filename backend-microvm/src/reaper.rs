//! Destroys VMs off the caller's thread. Closing a VM's fds and unmapping its memory costs
//! milliseconds on this PVM host (shadow page tables are torn down with it); a cell's `close`
//! need not wait for that. A bounded queue keeps a burst of closes from piling up VMs: when the
//! reaper is behind, the closing thread waits for room.

use crate::machine::Machine;
use std::sync::OnceLock;
use std::sync::mpsc::{SyncSender, sync_channel};

/// VMs waiting to be destroyed at most.
const BACKLOG: usize = 32;

static REAPER: OnceLock<Option<SyncSender<Machine>>> = OnceLock::new();

fn start() -> Option<SyncSender<Machine>> {
    let (tx, rx) = sync_channel::<Machine>(BACKLOG);
    std::thread::Builder::new()
        .name("cell-vm-reaper".into())
        .spawn(move || rx.into_iter().for_each(drop))
        .ok()?;
    Some(tx)
}

/// Hands `machine` to the reaper thread, or destroys it here if there is none.
pub(crate) fn destroy_later(machine: Machine) {
    match REAPER.get_or_init(start) {
        Some(tx) => {
            if let Err(unsent) = tx.send(machine) {
                drop(unsent.0);
            }
        }
        None => drop(machine),
    }
}
