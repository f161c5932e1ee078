//! A subinterp cell driven through the real host side, as the supervisor drives it.
#![allow(dead_code)]

use abi::backend::{Backend, CellPipe, Resources, SpawnSpec};
use abi::{CellError, EngineLimits, Hello, HostFrame, Map, Value};
use cell_backend_subinterp::Subinterp;
use host::{CellHost, Channel, DenyAll};
use std::sync::Arc;
use std::time::Duration;

pub struct TestCell {
    pub host: Arc<CellHost>,
    pub pipe: Box<dyn CellPipe>,
    next: u64,
    pub wall_time: Option<Duration>,
}

pub fn spawn(limits: EngineLimits, resources: Resources) -> TestCell {
    let host = Arc::new(
        CellHost::new("t", "subinterp", Channel::default(), Arc::new(DenyAll))
            .with_resources(resources.clone()),
    );
    let spec = SpawnSpec {
        hello: Hello::new("t", limits, vec![]),
        resources,
        max_frame_len: Channel::default().max_frame_bytes,
        required_layers: vec![],
    };
    let mut pipe = Subinterp.spawn(&spec, host.clone()).unwrap();
    host.transact(&mut *pipe, HostFrame::Hello(spec.hello.clone()), None)
        .unwrap();
    TestCell {
        host,
        pipe,
        next: 1,
        wall_time: Some(Duration::from_secs(60)),
    }
}

pub fn cell() -> TestCell {
    spawn(EngineLimits::default(), Resources::default())
}

impl TestCell {
    pub fn exec(&mut self, source: &str) -> Result<Value, CellError> {
        self.next += 1;
        let frame = HostFrame::Exec {
            id: self.next,
            source: source.into(),
        };
        self.host.transact(&mut *self.pipe, frame, self.wall_time)
    }

    pub fn call(&mut self, function: &str, args: Vec<Value>) -> Result<Value, CellError> {
        self.next += 1;
        let frame = HostFrame::Call {
            id: self.next,
            function: function.into(),
            args,
            kwargs: Map::new(),
        };
        self.host.transact(&mut *self.pipe, frame, self.wall_time)
    }

    /// The cell still answers.
    pub fn alive(&mut self) -> bool {
        self.exec("40 + 2") == Ok(Value::Int(42))
    }
}
