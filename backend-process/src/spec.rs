//! What a spawn asks for, and the checks made before any process exists.

use crate::error::{Error, Result};
use crate::host;
use crate::image::Image;
use crate::layers::{Layer, LayerState};
use crate::limits::Limits;
use crate::seccomp::Role;
#[cfg(test)]
use crate::step::Step;

/// What to spawn and what the policy requires.
#[derive(Clone, Debug)]
pub struct SpawnSpec {
    /// The cell's resource limits.
    pub limits: Limits,
    /// Layers that must be fully active, or the spawn is refused naming the first
    /// missing one. Defaults to [`Layer::ALWAYS`].
    pub require: Vec<Layer>,
    /// Fork the cell from the pre-confined fork server (started on first use) instead of
    /// cloning and confining a fresh process from the supervisor. Same layers, a
    /// fraction of the start-up cost.
    pub fork_server: bool,
    pub(crate) image: Image,
    pub(crate) args: Vec<String>,
    pub(crate) role: Role,
    /// A confinement step made to fail (fault injection): every step of a direct spawn,
    /// or, forked, the steps of the fork server's cells (probe image only).
    #[cfg(test)]
    pub(crate) fault: Option<Step>,
}

impl Default for SpawnSpec {
    fn default() -> Self {
        SpawnSpec {
            limits: Limits::default(),
            require: Layer::ALWAYS.to_vec(),
            fork_server: true,
            image: Image::Guest,
            args: Vec::new(),
            role: Role::Cell,
            #[cfg(test)]
            fault: None,
        }
    }
}

/// Refuses a spawn the host cannot serve: invalid limits, or a required layer the
/// host lacks (cgroup layers are decided when the cell's cgroups are made).
pub(crate) fn check_host(spec: &SpawnSpec) -> Result<()> {
    spec.limits.validate()?;
    let layers = host::host_layers();
    for &layer in &spec.require {
        if matches!(
            layer,
            Layer::CgroupMemory | Layer::CgroupPids | Layer::CgroupCpu | Layer::CgroupKill
        ) {
            continue;
        }
        if let LayerState::Inactive(why) | LayerState::Partial(why) = layers.get(layer) {
            return Err(Error::LayerUnavailable {
                layer,
                reason: why.clone(),
            });
        }
    }
    Ok(())
}
