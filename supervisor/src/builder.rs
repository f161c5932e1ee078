//! `Supervisor::builder()`: which backends a supervisor has, and where `request(...)` goes.

use crate::supervisor::Supervisor;
use abi::backend::Backend;
use host::RequestHandler;
use std::sync::Arc;

/// Configures a [`Supervisor`]: the built-in backends this build has (one cargo feature each:
/// `subinterp`, `process`, `microvm`), any backend registered by name (a third party's, or a
/// built-in configured differently), a broker or a plain request handler.
///
/// ```
/// use cell_supervisor::Supervisor;
/// let supervisor = Supervisor::builder().build();
/// # #[cfg(feature = "subinterp")]
/// assert!(supervisor.backend("subinterp").is_some());
/// ```
#[must_use]
pub struct SupervisorBuilder {
    builtin: bool,
    backends: Vec<Arc<dyn Backend>>,
    broker: Option<broker::Broker>,
    requests: Option<Arc<dyn RequestHandler>>,
}

impl SupervisorBuilder {
    pub(crate) fn new() -> Self {
        SupervisorBuilder {
            builtin: true,
            backends: Vec::new(),
            broker: None,
            requests: None,
        }
    }

    /// Registers `backend` under its [`Backend::name`], replacing a built-in or an earlier one of
    /// the same name. Any type implementing [`Backend`] plugs in here.
    pub fn backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backends.push(backend);
        self
    }

    /// Leaves out the built-in backends compiled into this build: only those given to
    /// [`SupervisorBuilder::backend`] are registered.
    pub fn without_builtin_backends(mut self) -> Self {
        self.builtin = false;
        self
    }

    /// The broker that serves every cell: policy grants are checked against its capabilities
    /// and each request is audited to its sink. Without one, a default broker is made when a
    /// policy first grants something.
    pub fn broker(mut self, broker: broker::Broker) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Where `request(...)` goes for cells whose policy grants nothing while no broker is
    /// attached (default: deny all).
    pub fn request_handler(mut self, handler: Arc<dyn RequestHandler>) -> Self {
        self.requests = Some(handler);
        self
    }

    /// The supervisor: the built-in backends (unless turned off), the registered ones (a registered
    /// name replaces a built-in one), and the broker or handler that answers `request`.
    pub fn build(self) -> Supervisor {
        let supervisor = Supervisor::empty();
        if self.builtin {
            for backend in builtin_backends() {
                supervisor.register_backend(backend);
            }
        }
        for backend in self.backends {
            supervisor.register_backend(backend);
        }
        if let Some(broker) = self.broker {
            supervisor.set_broker(broker);
        }
        if let Some(handler) = self.requests {
            supervisor.set_request_handler(handler);
        }
        supervisor
    }
}

/// The backends compiled into this build, one cargo feature each.
#[allow(unused_mut, clippy::vec_init_then_push)] // one push per enabled feature, maybe none
fn builtin_backends() -> Vec<Arc<dyn Backend>> {
    let mut backends: Vec<Arc<dyn Backend>> = Vec::new();
    #[cfg(feature = "subinterp")]
    backends.push(Arc::new(backend_subinterp::Subinterp));
    #[cfg(feature = "process")]
    backends.push(Arc::new(backend_process::ProcessBackend::new()));
    #[cfg(feature = "microvm")]
    backends.push(Arc::new(backend_microvm::MicroVm::new()));
    backends
}
