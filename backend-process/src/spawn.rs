//! Where a spawn goes: a spare of the fork server (the default), or a direct spawn that
//! confines a fresh child of the supervisor.

use crate::cell::{Prepared, ProcessCell, require};
use crate::error::Result;
use crate::seccomp::Role;
use crate::spec::{SpawnSpec, check_host};
use crate::{direct, fork_server};

impl ProcessCell {
    /// Spawns the guest program under every confinement layer.
    pub fn spawn(spec: &SpawnSpec) -> Result<ProcessCell> {
        check_host(spec)?;
        if spec.fork_server && spec.role == Role::Cell {
            return fork_server::spawn(spec);
        }
        let prepared = Prepared::new(&spec.limits)?;
        require(&prepared.layers, &spec.require)?;
        direct::spawn(spec, prepared)
    }
}
