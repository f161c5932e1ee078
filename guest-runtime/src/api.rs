//! The script API: exactly `post`, `log`, `metric` and `request`, plus the out-of-model names
//! that fail with a hint instead of "function not found".

use crate::convert::{Budget, from_dynamic_within, to_dynamic};
use crate::errors::{out_of_model, register_host_error, throw};
use crate::text::Text;
use crate::transport::{Transport, TransportError};
use abi::{CellError, EngineLimits, ErrorCode, GuestFrame, HostFrame, Level, Map, Value};
use alloc::{
    boxed::Box, collections::BTreeMap, format, string::String, string::ToString, sync::Arc,
};
use core::sync::atomic::{AtomicU64, Ordering};
use rhai::{Dynamic, Engine, EvalAltResult, FuncRegistration, Module, NativeCallContext, Shared};

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

/// A metric's name, refused here if the host would refuse it: an empty or overlong name killed
/// the cell with `protocol_violation`, which the script could not catch.
fn metric_name(name: &str) -> Res<String> {
    if name.is_empty() || name.len() > abi::MAX_METRIC_NAME_LEN {
        return Err(throw(CellError::new(
            ErrorCode::InvalidArgument,
            format!(
                "a metric name is 1 to {} bytes long, not {}",
                abi::MAX_METRIC_NAME_LEN,
                name.len()
            ),
        )));
    }
    Ok(name.into())
}

/// A metric's tags, each value as `{}` writes it. Each is one string, so it is held to the
/// string limit (`limit_string_size`, worded as the engine words it), and all of them together
/// to what a frame can carry (`limit_frame_size`); a text stops being written past its bound
/// (see `Text`), or when the cell is stopped (whose stop then answers).
fn tags(ctx: &NativeCallContext, map: rhai::Map) -> Res<BTreeMap<String, String>> {
    let budget = Budget::new();
    let max = ctx.engine().max_string_size();
    map.into_iter()
        .map(|(k, v)| {
            budget.take(k.len()).map_err(throw)?;
            let mut text = Text::new(ctx, budget.left());
            let whole = text.push(&v);
            let text = text.into_string();
            budget.take(text.len()).map_err(throw)?;
            if !whole || (max > 0 && text.len() > max) {
                return Err(Box::new(EvalAltResult::ErrorDataTooLarge(
                    "Length of string".into(),
                    rhai::Position::NONE,
                )));
            }
            Ok((k.to_string(), text))
        })
        .collect()
}

/// What the script API of one cell is bound to: its channel and the limits values leaving it
/// are checked against. Kept in the engine's default tag, so that the API itself is one module
/// built once per process and shared by every cell's engine (registering it per cell cost most
/// of a cold spawn's allocations).
struct Binding {
    link: Arc<Link>,
    limits: EngineLimits,
}

/// The binding of the cell whose script is running. The tag is set by [`bind`] before any
/// script runs and no script can reach it, so its absence is a bug of ours, reported as such.
fn binding(ctx: &NativeCallContext) -> Res<Arc<Binding>> {
    ctx.tag()
        .and_then(|tag| tag.read_lock::<Arc<Binding>>().map(|b| b.clone()))
        .ok_or_else(|| {
            throw(CellError::new(
                ErrorCode::Internal,
                "the script API is not bound to a cell",
            ))
        })
}

/// Binds `engine` to one cell: the shared API module, and the tag its functions read the
/// cell's `link` and `limits` from. Values leaving the cell are checked against the engine's
/// size `limits` on the way out.
pub(crate) fn bind(engine: &mut Engine, link: &Arc<Link>, limits: &EngineLimits) {
    engine.register_global_module(api_module());
    // Shared, so that copying the tag costs a reference count: the engine copies it with its
    // whole runtime state whenever a native function calls back into the script (`"k" + i`
    // calls `to_string`; `map`, `filter` and `sort` call their closures), and an unshared
    // custom value would be boxed anew each time.
    engine.set_default_tag(
        Dynamic::from(Arc::new(Binding {
            link: link.clone(),
            limits: limits.clone(),
        }))
        .into_shared(),
    );
}

/// The script API, built once per process.
fn api_module() -> Shared<Module> {
    static API: spin::Once<Shared<Module>> = spin::Once::new();
    API.call_once(|| Shared::new(build_api_module())).clone()
}

fn build_api_module() -> Module {
    let mut m = Module::new();
    register_host_error(&mut m);
    let f = |name: &str| FuncRegistration::new(name).in_global_namespace();
    f("post").set_into_module(
        &mut m,
        |ctx: NativeCallContext, message: Dynamic| -> Res<()> {
            let b = binding(&ctx)?;
            b.link.emit(GuestFrame::Post(value(message, &b.limits)?))
        },
    );
    f("log").set_into_module(
        &mut m,
        |ctx: NativeCallContext, lvl: &str, message: &str| -> Res<()> {
            let (level, message, fields) = (level(lvl)?, message.into(), Map::new());
            binding(&ctx)?.link.emit(GuestFrame::Log {
                level,
                message,
                fields,
            })
        },
    );
    f("log").set_into_module(
        &mut m,
        |ctx: NativeCallContext, lvl: &str, message: &str, f: rhai::Map| -> Res<()> {
            let b = binding(&ctx)?;
            let (level, message, fields) = (level(lvl)?, message.into(), fields(f, &b.limits)?);
            b.link.emit(GuestFrame::Log {
                level,
                message,
                fields,
            })
        },
    );
    f("metric").set_into_module(
        &mut m,
        |ctx: NativeCallContext, name: &str, v: Dynamic| -> Res<()> {
            let (name, value, tags) = (metric_name(name)?, number(&v)?, BTreeMap::new());
            binding(&ctx)?
                .link
                .emit(GuestFrame::Metric { name, value, tags })
        },
    );
    f("metric").set_into_module(
        &mut m,
        |ctx: NativeCallContext, name: &str, v: Dynamic, t: rhai::Map| -> Res<()> {
            let (name, value, tags) = (metric_name(name)?, number(&v)?, tags(&ctx, t)?);
            binding(&ctx)?
                .link
                .emit(GuestFrame::Metric { name, value, tags })
        },
    );
    f("request").set_into_module(
        &mut m,
        |ctx: NativeCallContext, capability: &str, action: &str| -> Res<Dynamic> {
            let reply = binding(&ctx)?
                .link
                .request(capability.into(), action.into(), Value::Unit);
            reply.map(to_dynamic).map_err(throw)
        },
    );
    f("request").set_into_module(
        &mut m,
        |ctx: NativeCallContext,
         capability: &str,
         action: &str,
         payload: Dynamic|
         -> Res<Dynamic> {
            let b = binding(&ctx)?;
            let payload = value(payload, &b.limits)?;
            let reply = b.link.request(capability.into(), action.into(), payload);
            reply.map(to_dynamic).map_err(throw)
        },
    );

    // Out of model: `print` and `debug` are ordinary functions in Rhai's standard library.
    // Registered here for every type the library prints, they take precedence over it (a
    // module registered later is searched first) and fail with a hint rather than writing to
    // a console nobody reads.
    macro_rules! refuse {
        ($($t:ty),*) => {$(
            f("print").set_into_module(&mut m, |_: $t| -> Res<()> { Err(throw(out_of_model("print"))) });
            f("debug").set_into_module(&mut m, |_: $t| -> Res<()> { Err(throw(out_of_model("debug"))) });
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
    f("sleep").set_into_module(&mut m, |_: rhai::INT| -> Res<()> {
        Err(throw(out_of_model("sleep")))
    });
    f("sleep").set_into_module(&mut m, |_: rhai::FLOAT| -> Res<()> {
        Err(throw(out_of_model("sleep")))
    });
    f("print").set_into_module(&mut m, || -> Res<()> { Err(throw(out_of_model("print"))) });
    f("debug").set_into_module(&mut m, || -> Res<()> { Err(throw(out_of_model("debug"))) });
    m.build_index();
    m
}
