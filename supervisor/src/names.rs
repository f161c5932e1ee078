//! The name table: which names are taken, by cells or by spawns still in their handshake.
//!
//! A spawn reserves its name, releases the table, spawns and greets the cell, then fills the
//! reservation: no lock is held across a backend's spawn or the handshake, so spawns run in
//! parallel. Every operation is one hash lookup, so spawn cost does not grow with the number of
//! live cells; a cell leaves the table when its last handle is dropped.

use crate::cell::Inner;
use crate::supervisor::SupervisorError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

enum Slot {
    /// A spawn of this name is under way.
    Spawning,
    /// A cell, alive or dead, with handles still held somewhere.
    Cell(Weak<Inner>),
}

#[derive(Default)]
pub(crate) struct Names(Mutex<HashMap<String, Slot>>);

impl Names {
    fn table(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `name` for a spawn, unless a live cell or another spawn holds it. A dead cell's
    /// name is free again.
    pub(crate) fn reserve(self: &Arc<Self>, name: &str) -> Result<Reservation, SupervisorError> {
        // Declared before the guard so that it drops after it: the last handle of a cell may
        // be dropped here, and its drop takes the table's lock.
        let holder: Option<Arc<Inner>>;
        let mut table = self.table();
        match table.get(name) {
            Some(Slot::Spawning) => return Err(SupervisorError::NameTaken(name.into())),
            Some(Slot::Cell(cell)) => {
                holder = cell.upgrade();
                if holder.as_ref().is_some_and(|c| c.host.dead().is_none()) {
                    return Err(SupervisorError::NameTaken(name.into()));
                }
            }
            None => {}
        }
        table.insert(name.into(), Slot::Spawning);
        Ok(Reservation {
            names: self.clone(),
            name: name.into(),
            filled: false,
        })
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<Inner>> {
        let table = self.table();
        let found = match table.get(name) {
            Some(Slot::Cell(cell)) => cell.upgrade(),
            _ => None,
        };
        // The guard goes first: dropping the last handle of a cell takes the table's lock.
        drop(table);
        found
    }

    /// Every cell with a handle still held, in no particular order.
    pub(crate) fn cells(&self) -> Vec<Arc<Inner>> {
        let table = self.table();
        let found = table
            .values()
            .filter_map(|slot| match slot {
                Slot::Cell(cell) => cell.upgrade(),
                Slot::Spawning => None,
            })
            .collect();
        drop(table);
        found
    }

    /// Called as the cell at `cell` is dropped: frees its name unless a newer cell has it.
    pub(crate) fn forget(&self, name: &str, cell: *const Inner) {
        let mut table = self.table();
        if let Some(Slot::Cell(held)) = table.get(name)
            && std::ptr::eq(held.as_ptr(), cell)
        {
            table.remove(name);
        }
    }
}

/// A name held for a spawn under way; dropped unfilled (a failed spawn), it frees the name.
pub(crate) struct Reservation {
    names: Arc<Names>,
    name: String,
    filled: bool,
}

impl Reservation {
    pub(crate) fn fill(mut self, cell: &Arc<Inner>) {
        self.names.table().insert(
            std::mem::take(&mut self.name),
            Slot::Cell(Arc::downgrade(cell)),
        );
        self.filled = true;
    }

    pub(crate) fn names(&self) -> Weak<Names> {
        Arc::downgrade(&self.names)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.filled {
            self.names.table().remove(&self.name);
        }
    }
}
