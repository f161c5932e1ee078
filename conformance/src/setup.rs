//! What a cell under test gets: the handshake's engine limits and modules, the boundary's
//! resources, the channel bounds, the wall-time limit and the broker rules. The suite's own
//! stand-in for a policy file, so it needs no supervisor.

use abi::backend::{Resources, SpawnSpec};
use abi::{EngineLimits, Hello};
use host::Channel;
use std::time::Duration;

/// Everything a scenario's cell is allowed.
#[derive(Clone, Debug, PartialEq)]
pub struct Setup {
    /// Engine limits sent in the handshake.
    pub limits: EngineLimits,
    /// Host modules the cell may import and call.
    pub modules: Vec<String>,
    /// Limits the boundary enforces.
    pub resources: Resources,
    /// Frame cap and event-queue bounds, enforced by the host side.
    pub channel: Channel,
    /// Wall time of one exec/call (`None`: unlimited).
    pub wall_time: Option<Duration>,
    /// Broker grants and denies (`[[grants]]`/`[[denies]]` as in a policy file).
    pub rules: broker::Rules,
}

impl Default for Setup {
    /// The defaults of a policy file with no keys: every host module, default limits, 10 s of
    /// wall time, nothing granted.
    fn default() -> Self {
        Setup {
            limits: EngineLimits::default(),
            modules: vec!["math".into(), "text".into(), "json".into()],
            resources: Resources::default(),
            channel: Channel::default(),
            wall_time: Some(Duration::from_secs(10)),
            rules: broker::Rules::default(),
        }
    }
}

impl Setup {
    /// Parses `[[grants]]`/`[[denies]]` tables (the policy file's syntax) into the rules.
    pub fn with_rules_toml(mut self, text: &str) -> Self {
        self.rules = toml::from_str(text).unwrap_or_else(|e| panic!("scenario rules: {e}"));
        self
    }

    /// The spawn specification a backend receives for a cell named `name`.
    pub fn spawn_spec(&self, name: &str) -> SpawnSpec {
        SpawnSpec {
            hello: Hello::new(name, self.limits.clone(), self.modules.clone()),
            resources: self.resources.clone(),
            max_frame_len: self.channel.max_frame_bytes,
            required_layers: Vec::new(),
        }
    }
}
