//! One cell's engine and state: exec, call, and the dispatch of host frames.

use crate::api::{self, Link};
use crate::compiled::CompileCache;
use crate::convert::{from_dynamic_within, to_dynamic};
use crate::errors::{PARSE_STOPPED, STACK_EXHAUSTED, cell_error, stopped};
use crate::limits::{self, StackGuard};
use crate::meter::Meter;
use crate::transport::{Interrupt, Transport};
use crate::{ENGINE, ENGINE_VERSION, modules};
use abi::{
    ABI_VERSION, CellError, ErrorCode, GuestFrame, Hello, HostFrame, Map, Ready, SCHEMA_KEY, Value,
};
use alloc::{
    boxed::Box,
    format,
    string::{String, ToString},
    sync::Arc,
    vec::Vec,
};
use core::sync::atomic::{AtomicU64, Ordering};
use rhai::packages::{Package, StandardPackage};
use rhai::{AST, CallFnOptions, Dynamic, Engine, EvalAltResult, Module, Scope, Shared};

/// What the agent loop does after a host frame.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// The frame was handled; wait for the next one.
    Continue,
    /// The host asked the cell to exit.
    Shutdown,
    /// The host broke the protocol (a frame that cannot come now); the guest exits.
    Violation(CellError),
}

/// A cell: its engine, the variables and functions earlier execs left, and its channel.
pub struct Cell {
    engine: Engine,
    scope: Scope<'static>,
    /// Functions defined by every exec so far (later definitions replace earlier ones).
    lib: AST,
    compiled: CompileCache,
    link: Arc<Link>,
    modules: modules::Allowed,
    limits: abi::EngineLimits,
    stack: Arc<StackGuard>,
    meter: Arc<Meter>,
}

/// Rhai's standard library, built once per process and shared by every engine.
fn standard_library() -> Shared<Module> {
    static STANDARD: spin::Once<Shared<Module>> = spin::Once::new();
    STANDARD
        .call_once(|| StandardPackage::new().as_shared_module())
        .clone()
}

/// Builds what every cell of this process shares (Rhai's standard library), so a process
/// that forks cells (the process backend's fork server) does it once for all of them.
pub fn prewarm() {
    standard_library();
}

/// Refuses a handshake from a host that speaks another ABI version or schema.
pub fn check_hello(hello: &Hello) -> Result<(), CellError> {
    if hello.abi_version != ABI_VERSION || hello.schema != SCHEMA_KEY {
        return Err(CellError::new(
            ErrorCode::VersionMismatch,
            format!(
                "host speaks ABI {} ({}), this cell speaks ABI {ABI_VERSION} ({SCHEMA_KEY})",
                hello.abi_version, hello.schema
            ),
        ));
    }
    Ok(())
}

/// The handshake answer of this runtime.
pub fn ready() -> Ready {
    Ready::new(ENGINE, ENGINE_VERSION)
}

impl Cell {
    /// Builds a cell for `hello` (checked first) that talks over `transport`.
    /// Runs on a stack of [`limits::ENGINE_STACK_BYTES`].
    ///
    /// For a backend that drives the cell itself rather than through [`crate::agent::serve`]
    /// (the in-process backend does):
    ///
    /// ```no_run
    /// use abi::HostFrame;
    /// use cell_runtime::{Cell, NeverInterrupt, Transport};
    /// use std::sync::Arc;
    ///
    /// fn run(mut transport: Box<dyn Transport>) -> Result<(), abi::CellError> {
    ///     let Ok(HostFrame::Hello(hello)) = transport.recv() else {
    ///         return Ok(()); // the host went away, or broke the protocol
    ///     };
    ///     let mut cell = Cell::new(&hello, transport, Arc::new(NeverInterrupt))?;
    ///     let answer = cell.exec("40 + 2")?;
    ///     assert_eq!(answer, abi::Value::Int(42));
    ///     Ok(())
    /// }
    /// ```
    pub fn new<I: Interrupt + ?Sized + 'static>(
        hello: &Hello,
        transport: Box<dyn Transport>,
        interrupt: Arc<I>,
    ) -> Result<Cell, CellError> {
        Self::with_stack(hello, transport, interrupt, limits::ENGINE_STACK_BYTES)
    }

    /// Like [`Cell::new`] for a backend whose engine runs on `stack_bytes` of stack from the
    /// frame that calls [`Cell::handle`], [`Cell::exec`] or [`Cell::call`].
    pub fn with_stack<I: Interrupt + ?Sized + 'static>(
        hello: &Hello,
        transport: Box<dyn Transport>,
        interrupt: Arc<I>,
        stack_bytes: usize,
    ) -> Result<Cell, CellError> {
        Self::with_link(
            hello,
            Arc::new(Link::new(transport)),
            interrupt,
            stack_bytes,
        )
    }

    /// Generic over the interrupt so that its check, made on every operation, is compiled into
    /// the engine's progress callback rather than called through a vtable.
    pub(crate) fn with_link<I: Interrupt + ?Sized + 'static>(
        hello: &Hello,
        link: Arc<Link>,
        interrupt: Arc<I>,
        stack_bytes: usize,
    ) -> Result<Cell, CellError> {
        check_hello(hello)?;
        let limits = &hello.limits;
        let stack = Arc::new(StackGuard::new(stack_bytes));
        let mut engine = Engine::new_raw();
        engine.register_global_module(standard_library());
        // Depths the stack cannot hold are held to the bounds (policy validation refuses them;
        // a host that skips it gets the bound, never a deeper stack).
        let (calls, exprs) = (
            bounded(limits.max_call_depth, limits::MAX_CALL_DEPTH),
            bounded(limits.max_expr_depth, limits::MAX_EXPR_DEPTH),
        );
        // `max_operations` is the meter's, not the engine's (see `meter`): the engine's count
        // misses the operations of callbacks from native functions.
        let meter = Arc::new(Meter::new(limits.max_operations));
        engine
            .set_max_call_levels(calls)
            .set_max_expr_depths(exprs, exprs)
            .set_max_string_size(limits.max_string_len as usize)
            .set_max_array_size(limits.max_array_len as usize)
            .set_max_map_size(limits.max_map_len as usize)
            .set_max_value_depth(limits::MAX_VALUE_NESTING)
            .set_max_modules(hello.modules.len().max(1));
        // Out of model: a script using `eval` fails to compile with a hint (see `errors`).
        engine.disable_symbol("eval");
        // Whatever nests deeper than the limits can see (calls whose bodies nest expressions,
        // closures in closures) stops at the stack budget: per operation while running, per
        // token while parsing.
        let (guard, ticks, parse_interrupt) = (stack.clone(), meter.clone(), interrupt.clone());
        engine.on_progress(move |asked| {
            // The stack's end is no stop: it passes as the script unwinds (a native function
            // that discards the error, such as the printer of a deeply nested value, goes on
            // shallower), so only the meter's stops stick.
            ticks
                .tick(|ops| {
                    if asked == rhai::NATIVE_PROGRESS {
                        interrupt.check_now(ops)
                    } else {
                        interrupt.check(ops)
                    }
                })
                .or_else(|| guard.exceeded().then_some(ErrorCode::LimitCallDepth))
                .map(|code| Dynamic::from_int(code.as_u16().into()))
        });
        let (guard, parse_meter) = (stack.clone(), meter.clone());
        let tokens = AtomicU64::new(0);
        #[allow(deprecated)] // volatile, not deprecated: the only hook inside the parser
        engine.on_parse_token(move |token, _, _| {
            if guard.exceeded() {
                return rhai::Token::LexError(Box::new(rhai::LexError::Runtime(
                    STACK_EXHAUSTED.into(),
                )));
            }
            // A kill, the wall time, the CPU time or the memory limit stops a parse as it stops
            // a running script (and sticks: the exec answers with it). The parser does no
            // operations, so on subinterp a slow parse (a call of 100,000 arguments, a long
            // source) ran on past all of them, where process and microVM cells were killed.
            let n = tokens.fetch_add(1, Ordering::Relaxed) + 1;
            match parse_meter.stopped().or_else(|| parse_interrupt.check(n)) {
                Some(code) => {
                    parse_meter.stop(code);
                    rhai::Token::LexError(Box::new(rhai::LexError::Runtime(PARSE_STOPPED.into())))
                }
                None => token,
            }
        });

        let mut allowed = modules::Allowed::default();
        for name in &hello.modules {
            allowed.insert(name);
            let module = modules::get(name).ok_or_else(|| {
                CellError::new(
                    ErrorCode::InvalidArgument,
                    format!("the policy allows module `{name}`, which this runtime does not provide (it has: {})", modules::AVAILABLE.join(", ")),
                )
            })?;
            engine.register_static_module(name.as_str(), module);
        }
        engine.set_module_resolver(modules::PolicyResolver::new(allowed));
        api::bind(&mut engine, &link, limits);

        Ok(Cell {
            engine,
            scope: Scope::new(),
            lib: AST::empty(),
            compiled: CompileCache::default(),
            link,
            modules: allowed,
            limits: hello.limits.clone(),
            stack,
            meter,
        })
    }

    /// The most stack a transaction used since the last call (then reset), so that a backend
    /// can give back the pages a deep script touched.
    pub fn take_deepest_stack(&self) -> usize {
        self.stack.take_deepest()
    }

    /// Runs source text. Variables it declares and functions it defines stay in the cell.
    /// Returns the value of the last expression.
    pub fn exec(&mut self, source: &str) -> Result<Value, CellError> {
        self.begin();
        let engine = &self.engine;
        let ast = match self.compiled.get_or_compile(source, |s| engine.compile(s)) {
            Ok(ast) => ast,
            // A parse stopped by a kill or a limit answers with that stop.
            Err(e) => {
                let error = cell_error(&Box::<EvalAltResult>::from(e));
                return self
                    .meter
                    .verdict(Err(error), |code| stopped(code, rhai::Position::NONE));
            }
        };
        let merged = self.lib.merge(&ast);
        drop(ast);
        self.lib = merged.clone_functions_only();
        let result = self
            .engine
            .eval_ast_with_scope::<Dynamic>(&mut self.scope, &merged);
        self.answer(result)
    }

    /// Starts a transaction: the stack's high-water mark and the meter afresh.
    fn begin(&self) {
        self.stack.enter();
        self.meter.begin();
    }

    /// A transaction's answer: its stop if it was stopped (whatever the script made of it),
    /// else its result as a value within the limits.
    fn answer(&self, result: Result<Dynamic, Box<EvalAltResult>>) -> Result<Value, CellError> {
        let value = self
            .meter
            .verdict(result.map_err(|e| cell_error(&e)), |code| {
                stopped(code, rhai::Position::NONE)
            })?;
        from_dynamic_within(value, &self.limits)
    }

    /// Invokes `function` — `name` or `main.name` for functions defined by exec, `module.name`
    /// for a host module the policy allows. Non-empty `kwargs` arrive as one trailing map argument.
    pub fn call(
        &mut self,
        function: &str,
        mut args: Vec<Value>,
        kwargs: Map,
    ) -> Result<Value, CellError> {
        self.begin();
        let (module, name) = split_path(function)?;
        if !kwargs.is_empty() {
            args.push(Value::Map(kwargs));
        }
        let args: Vec<Dynamic> = args.into_iter().map(to_dynamic).collect();
        let result = match module {
            None | Some("main") => {
                let given = args.len();
                let options = CallFnOptions::new().eval_ast(false).rewind_scope(true);
                let result = self.engine.call_fn_with_options::<Dynamic>(
                    options,
                    &mut self.scope,
                    &self.lib,
                    name,
                    args,
                );
                // The engine names only the function; a caller who got the arguments wrong
                // needs to hear what the cell has under that name. (Its own lookup failure
                // carries the bare name and no position; one inside the function carries a
                // signature with the argument types, and a position.)
                if let Err(e) = &result
                    && let EvalAltResult::ErrorFunctionNotFound(signature, at) = &**e
                    && signature == name
                    && at.is_none()
                    && let Some(takes) = self.arities(name)
                {
                    return self.meter.verdict(
                        Err(CellError::new(
                            ErrorCode::NotFound,
                            format!(
                                "Function not found: {name} with {given} argument{}: the cell's `{name}` takes {takes}",
                                if given == 1 { "" } else { "s" }
                            ),
                        )),
                        |code| stopped(code, rhai::Position::NONE),
                    );
                }
                result
            }
            Some(module) => {
                if !self.modules.contains(module) {
                    return Err(CellError::new(
                        ErrorCode::OutOfModel,
                        format!("module `{module}` is not allowed by this cell's policy"),
                    ));
                }
                // The path segments are validated identifiers, so this expression is exactly a
                // call of `module::name` with the arguments bound as constants.
                let mut scope = Scope::new();
                let mut expr = format!("{module}::{name}(");
                for (i, arg) in args.into_iter().enumerate() {
                    scope.push_constant_dynamic(format!("__arg{i}"), arg);
                    expr.push_str(&format!("{}__arg{i}", if i == 0 { "" } else { ", " }));
                }
                expr.push(')');
                // A name the language keeps for itself (`if`, `fn`, `match`, ...) makes this
                // no call at all: no module has such a function.
                let Ok(ast) = self.engine.compile_expression_with_scope(&scope, &expr) else {
                    return self.meter.verdict(
                        Err(CellError::new(
                            ErrorCode::NotFound,
                            format!("module `{module}` has no function `{name}`: a keyword of the language names none"),
                        )),
                        |code| stopped(code, rhai::Position::NONE),
                    );
                };
                // A position would point into this expression, which the caller never wrote.
                self.engine
                    .eval_ast_with_scope::<Dynamic>(&mut scope, &ast)
                    .map_err(|mut e| {
                        e.clear_position();
                        e
                    })
            }
        };
        self.answer(result)
    }

    /// The argument counts of the script functions named `name` (`2`, `1 or 3`), if any.
    fn arities(&self, name: &str) -> Option<String> {
        let mut counts: Vec<usize> = self
            .lib
            .iter_functions()
            .filter(|f| f.name == name && f.this_type.is_none())
            .map(|f| f.params.len())
            .collect();
        counts.sort_unstable();
        counts.dedup();
        let (last, rest) = counts.split_last()?;
        let noun = if counts == [1] {
            "argument"
        } else {
            "arguments"
        };
        Some(match rest {
            [] => format!("{last} {noun}"),
            _ => {
                let rest: Vec<String> = rest.iter().map(usize::to_string).collect();
                format!("{} or {last} {noun}", rest.join(", "))
            }
        })
    }

    /// Handles one host frame of a running cell; completions go out over the channel.
    pub fn handle(&mut self, frame: HostFrame) -> Step {
        let (id, result) = match frame {
            HostFrame::Exec { id, source } => (id, self.exec(&source)),
            HostFrame::Call {
                id,
                function,
                args,
                kwargs,
            } => (id, self.call(&function, args, kwargs)),
            HostFrame::Shutdown => return Step::Shutdown,
            other => {
                return Step::Violation(CellError::new(
                    ErrorCode::ProtocolViolation,
                    format!(
                        "a {:?} frame cannot arrive between transactions",
                        other.kind()
                    ),
                ));
            }
        };
        self.complete(id, result)
    }

    fn complete(&self, id: u64, result: Result<Value, CellError>) -> Step {
        match self.link.send(GuestFrame::Done { id, result }) {
            Ok(()) => Step::Continue,
            // The value could not be sent (too large for a frame): report that instead.
            Err(crate::TransportError::Failed(err)) => match self.link.send(GuestFrame::Done {
                id,
                result: Err(err),
            }) {
                Ok(()) => Step::Continue,
                Err(e) => Step::Violation(e.into_cell_error()),
            },
            Err(e) => Step::Violation(e.into_cell_error()),
        }
    }

    pub(crate) fn link(&self) -> &Arc<Link> {
        &self.link
    }
}

/// `limit`, or `bound` when the limit is above it or unlimited (0).
fn bounded(limit: u32, bound: u32) -> usize {
    (if limit == 0 || limit > bound {
        bound
    } else {
        limit
    }) as usize
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn split_path(path: &str) -> Result<(Option<&str>, &str), CellError> {
    let (module, name) = match path.split_once('.') {
        Some((m, n)) => (Some(m), n),
        None => (None, path),
    };
    if !module.is_none_or(is_identifier) || !is_identifier(name) {
        return Err(CellError::new(
            ErrorCode::InvalidArgument,
            format!("`{path}` is not a function path: use `name`, `main.name` or `module.name`"),
        ));
    }
    Ok((module, name))
}
