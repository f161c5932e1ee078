//! Confinement layers, their per-cell status, and what a policy requires.

use std::fmt;

/// One confinement layer of a process cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Layer {
    /// A user namespace of its own.
    UserNamespace,
    /// A pid namespace of its own (the cell's init is pid 1).
    PidNamespace,
    /// A mount namespace of its own.
    MountNamespace,
    /// An ipc namespace of its own.
    IpcNamespace,
    /// A uts namespace of its own (hostname `cell`).
    UtsNamespace,
    /// A cgroup namespace of its own.
    CgroupNamespace,
    /// The cell joins a pre-made empty network namespace (or gets a fresh empty one).
    NetworkNamespace,
    /// `pivot_root` into a fresh read-only tmpfs: no host file is visible.
    EmptyRoot,
    /// The guest runs as an unprivileged uid/gid in its namespace (1000, or one of its own
    /// above 1000 for a fork-server cell of a root supervisor), mapped to a non-root host id.
    UnprivilegedUid,
    /// `no_new_privs`: no exec can gain privileges.
    NoNewPrivs,
    /// An empty environment.
    ClearedEnvironment,
    /// Every fd but the channel is closed.
    ClosedFds,
    /// Killed when the supervisor dies.
    ParentDeathSignal,
    /// New session: no controlling terminal to inject input into.
    NewSession,
    /// Address space, CPU seconds, open files, file size, core = 0, processes, stack.
    Rlimits,
    /// A memory limit (cgroup).
    CgroupMemory,
    /// A process limit (cgroup).
    CgroupPids,
    /// A CPU bandwidth limit (cgroup).
    CgroupCpu,
    /// The whole cgroup is killed atomically on kill (cgroup v2 `cgroup.kill`).
    CgroupKill,
    /// Landlock: no filesystem access, no TCP bind/connect, scoped signals/sockets.
    Landlock,
    /// seccomp-bpf allowlist with architecture check.
    Seccomp,
    /// The capability bounding set is empty: no exec could give a capability back.
    CapabilityBoundingSet,
}

impl Layer {
    /// Every layer, in the order they are reported.
    pub const ALL: [Layer; 22] = [
        Layer::UserNamespace,
        Layer::PidNamespace,
        Layer::MountNamespace,
        Layer::IpcNamespace,
        Layer::UtsNamespace,
        Layer::CgroupNamespace,
        Layer::NetworkNamespace,
        Layer::EmptyRoot,
        Layer::UnprivilegedUid,
        Layer::NoNewPrivs,
        Layer::ClearedEnvironment,
        Layer::ClosedFds,
        Layer::ParentDeathSignal,
        Layer::NewSession,
        Layer::Rlimits,
        Layer::CgroupMemory,
        Layer::CgroupPids,
        Layer::CgroupCpu,
        Layer::CgroupKill,
        Layer::Landlock,
        Layer::Seccomp,
        Layer::CapabilityBoundingSet,
    ];

    /// Layers every spawn applies or fails: they need nothing the host could lack
    /// once user namespaces work.
    pub const ALWAYS: [Layer; 17] = [
        Layer::UserNamespace,
        Layer::PidNamespace,
        Layer::MountNamespace,
        Layer::IpcNamespace,
        Layer::UtsNamespace,
        Layer::CgroupNamespace,
        Layer::NetworkNamespace,
        Layer::EmptyRoot,
        Layer::UnprivilegedUid,
        Layer::NoNewPrivs,
        Layer::ClearedEnvironment,
        Layer::ClosedFds,
        Layer::ParentDeathSignal,
        Layer::NewSession,
        Layer::Rlimits,
        Layer::Seccomp,
        Layer::CapabilityBoundingSet,
    ];

    /// Stable lower-case name (used in errors, policy files and `cell doctor`).
    pub fn name(self) -> &'static str {
        match self {
            Layer::UserNamespace => "user-namespace",
            Layer::PidNamespace => "pid-namespace",
            Layer::MountNamespace => "mount-namespace",
            Layer::IpcNamespace => "ipc-namespace",
            Layer::UtsNamespace => "uts-namespace",
            Layer::CgroupNamespace => "cgroup-namespace",
            Layer::NetworkNamespace => "network-namespace",
            Layer::EmptyRoot => "empty-root",
            Layer::UnprivilegedUid => "unprivileged-uid",
            Layer::NoNewPrivs => "no-new-privs",
            Layer::ClearedEnvironment => "cleared-environment",
            Layer::ClosedFds => "closed-fds",
            Layer::ParentDeathSignal => "parent-death-signal",
            Layer::NewSession => "new-session",
            Layer::Rlimits => "rlimits",
            Layer::CgroupMemory => "cgroup-memory",
            Layer::CgroupPids => "cgroup-pids",
            Layer::CgroupCpu => "cgroup-cpu",
            Layer::CgroupKill => "cgroup-kill",
            Layer::Landlock => "landlock",
            Layer::Seccomp => "seccomp",
            Layer::CapabilityBoundingSet => "capability-bounding-set",
        }
    }

    /// Parses a name produced by [`Layer::name`].
    pub fn from_name(name: &str) -> Option<Layer> {
        Layer::ALL.into_iter().find(|l| l.name() == name)
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a layer is in force.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayerState {
    /// In force at full strength.
    Active,
    /// In force with less than its full strength (the detail says what is missing).
    Partial(String),
    /// Not in force (the detail says why).
    Inactive(String),
}

impl LayerState {
    /// Whether the layer is in force at full strength.
    pub fn is_active(&self) -> bool {
        matches!(self, LayerState::Active)
    }
}

impl fmt::Display for LayerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerState::Active => f.write_str("active"),
            LayerState::Partial(why) => write!(f, "partial ({why})"),
            LayerState::Inactive(why) => write!(f, "inactive ({why})"),
        }
    }
}

/// The state of every layer, for one cell (or for the host, from [`crate::doctor`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerReport {
    states: Vec<(Layer, LayerState)>,
}

impl LayerReport {
    pub(crate) fn new(states: Vec<(Layer, LayerState)>) -> Self {
        LayerReport { states }
    }

    /// Replaces the states of the given layers.
    pub(crate) fn update(&mut self, states: impl IntoIterator<Item = (Layer, LayerState)>) {
        for (layer, state) in states {
            if let Some(slot) = self.states.iter_mut().find(|(l, _)| *l == layer) {
                slot.1 = state;
            }
        }
    }

    /// The state of `layer`.
    pub fn get(&self, layer: Layer) -> &LayerState {
        self.states
            .iter()
            .find(|(l, _)| *l == layer)
            .map(|(_, s)| s)
            .expect("every layer is reported")
    }

    /// Every layer and its state.
    pub fn iter(&self) -> impl Iterator<Item = (Layer, &LayerState)> {
        self.states.iter().map(|(l, s)| (*l, s))
    }

    /// The first of `required` that is not fully active.
    pub fn first_missing(&self, required: &[Layer]) -> Option<(Layer, &LayerState)> {
        required
            .iter()
            .map(|&l| (l, self.get(l)))
            .find(|(_, s)| !s.is_active())
    }
}

impl fmt::Display for LayerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (layer, state) in &self.states {
            writeln!(f, "{:<22} {state}", layer.name())?;
        }
        Ok(())
    }
}
