//! The script API: exactly `post`, `log`, `metric` and `request`, plus the out-of-model names
//! that fail with a hint instead of "function not found".

use crate::convert::{from_dynamic_within, to_dynamic};
use crate::errors::{out_of_model, register_host_error, throw};
use crate::transport::{Transport, TransportError};
use abi::{CellError, EngineLimits, ErrorCode, GuestFrame, HostFrame, Level, Map, Value};
use alloc::{
    boxed::Box, collections::BTreeMap, format, string::String, string::ToString, sync::Arc,
};
use core::sync::atomic::{AtomicU64, Ordering};
use rhai::{Dynamic, Engine, EvalAltResult};

type Res<T> = Result<T, Box<EvalAltResult>>;

/// The guest's end of the channel, shared by the agent loop and the script API.
pub(crate) struct Link {
    transport: spin::Mutex<Box<dyn Transport>>,
    next_request: AtomicU64,
}

impl Link {
    pub(crate) fn new(transport: Box<dyn Transport>) -> Self {
        Link {
            transport: spin::Mutex::new(transport),
            next_request: AtomicU64::new(1),
        }
    }

    pub(crate) fn send(&self, frame: GuestFrame) -> Result<(), TransportError> {
        self.transport.lock().send(frame)
    }

    pub(crate) fn recv(&self) -> Result<HostFrame, TransportError> {
        self.transport.lock().recv()
    }

    fn emit(&self, frame: GuestFrame) -> Res<()> {
        self.send(frame).map_err(|e| throw(e.into_cell_error()))
    }

    /// Sends a broker request and waits for the reply with the same id.
    fn request(
        &self,
        capability: String,
        action: String,
        payload: Value,
    ) -> Result<Value, CellError> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let mut transport = self.transport.lock();
        transport
            .send(GuestFrame::Request {
                id,
                capability,
                action,
                payload,
            })
            .map_err(TransportError::into_cell_error)?;
        match transport.recv().map_err(TransportError::into_cell_error)? {
            HostFrame::Reply { id: got, result } if got == id => result,
            other => Err(CellError::new(
                ErrorCode::ProtocolViolation,
                format!(
                    "expected the reply to request {id}, got a {:?} frame",
                    other.kind()
                ),
            )),
        }
    }
}

fn value(d: Dynamic, limits: &EngineLimits) -> Res<Value> {
    from_dynamic_within(d, limits).map_err(throw)
}

fn fields(map: rhai::Map, limits: &EngineLimits) -> Res<Map> {
    match value(Dynamic::from_map(map), limits)? {
        Value::Map(m) => Ok(m),
        _ => Ok(Map::new()),
    }
}

fn level(name: &str) -> Res<Level> {
    Level::from_name(name).ok_or_else(|| {
        throw(CellError::new(
            ErrorCode::InvalidArgument,
            format!("unknown log level `{name}`: use trace, debug, info, warn or error"),
        ))
    })
}

fn number(d: &Dynamic) -> Res<f64> {
    if let Ok(i) = d.as_int() {
        return Ok(i as f64);
    }
    d.as_float().map_err(|t| {
        throw(CellError::new(
            ErrorCode::InvalidArgument,
            format!("a metric value must be a number, not {t}"),
        ))
    })
}

fn tags(map: rhai::Map) -> BTreeMap<String, String> {
    map.into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Registers the four guest operations on `engine`, bound to `link`. Values leaving the cell
/// are checked against the engine's size `limits` on the way out.
pub(crate) fn register(engine: &mut Engine, link: &Arc<Link>, limits: &EngineLimits) {
    register_host_error(engine);
    let (l, lim) = (link.clone(), limits.clone());
    engine.register_fn("post", move |message: Dynamic| -> Res<()> {
        l.emit(GuestFrame::Post(value(message, &lim)?))
    });

    let l = link.clone();
    engine.register_fn("log", move |lvl: &str, message: &str| -> Res<()> {
        let (level, message, fields) = (level(lvl)?, message.into(), Map::new());
        l.emit(GuestFrame::Log {
            level,
            message,
            fields,
        })
    });
    let (l, lim) = (link.clone(), limits.clone());
    engine.register_fn(
        "log",
        move |lvl: &str, message: &str, f: rhai::Map| -> Res<()> {
            let (level, message, fields) = (level(lvl)?, message.into(), fields(f, &lim)?);
            l.emit(GuestFrame::Log {
                level,
                message,
                fields,
            })
        },
    );

    let l = link.clone();
    engine.register_fn("metric", move |name: &str, v: Dynamic| -> Res<()> {
        let (name, value, tags) = (name.into(), number(&v)?, BTreeMap::new());
        l.emit(GuestFrame::Metric { name, value, tags })
    });
    let l = link.clone();
    engine.register_fn(
        "metric",
        move |name: &str, v: Dynamic, t: rhai::Map| -> Res<()> {
            let (name, value, tags) = (name.into(), number(&v)?, tags(t));
            l.emit(GuestFrame::Metric { name, value, tags })
        },
    );

    let l = link.clone();
    engine.register_fn(
        "request",
        move |capability: &str, action: &str| -> Res<Dynamic> {
            let reply = l.request(capability.into(), action.into(), Value::Unit);
            reply.map(to_dynamic).map_err(throw)
        },
    );
    let (l, lim) = (link.clone(), limits.clone());
    engine.register_fn(
        "request",
        move |capability: &str, action: &str, payload: Dynamic| -> Res<Dynamic> {
            let reply = l.request(capability.into(), action.into(), value(payload, &lim)?);
            reply.map(to_dynamic).map_err(throw)
        },
    );

    // Out of model: `print` and `debug` are ordinary functions in Rhai's standard library.
    // Registered here for every type the library prints, they take precedence over it and fail
    // with a hint rather than writing to a console nobody reads.
    macro_rules! refuse {
        ($($t:ty),*) => {$(
            engine.register_fn("print", |_: $t| -> Res<()> { Err(throw(out_of_model("print"))) });
            engine.register_fn("debug", |_: $t| -> Res<()> { Err(throw(out_of_model("debug"))) });
        )*};
    }
    refuse!(
        rhai::INT,
        rhai::FLOAT,
        bool,
        char,
        rhai::ImmutableString,
        (),
        rhai::Array,
        rhai::Map,
        rhai::Blob,
        rhai::FnPtr,
        Dynamic
    );
    // Rhai's std build has a blocking `sleep`; time is a broker capability here.
    engine.register_fn("sleep", |_: rhai::INT| -> Res<()> {
        Err(throw(out_of_model("sleep")))
    });
    engine.register_fn("sleep", |_: rhai::FLOAT| -> Res<()> {
        Err(throw(out_of_model("sleep")))
    });
    engine.register_fn("print", || -> Res<()> { Err(throw(out_of_model("print"))) });
    engine.register_fn("debug", || -> Res<()> { Err(throw(out_of_model("debug"))) });
}
