//! Mapping Rhai errors to the ABI's stable error codes, and the errors our API throws.

use abi::{CellError, ErrorCode, op::out_of_model_hint};
use alloc::{boxed::Box, format, string::String, string::ToString};
use rhai::{Dynamic, EvalAltResult, ParseErrorType, Position};

/// An error one of our functions raised (a refused `request`, a bad `log` level, ...), as a
/// script sees it: a value of its own type that only the runtime makes. A script may `catch`
/// it, read `code`, `name` and `message`, and throw it on unchanged; it cannot make one, so
/// the code it carries is always the runtime's or the host's, never the script's.
#[derive(Clone, Debug)]
pub struct HostError(pub CellError);

/// The error a script sees when one of our functions fails.
pub fn throw(err: CellError) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(HostError(err)),
        Position::NONE,
    ))
}

/// Lets scripts read a caught [`HostError`] (no setters: it cannot be altered).
pub(crate) fn register_host_error(module: &mut rhai::Module) {
    let f = |name: &str| rhai::FuncRegistration::new(name).in_global_namespace();
    module.set_custom_type::<HostError>("error");
    f("get$code").set_into_module(module, |e: &mut HostError| {
        rhai::INT::from(e.0.code.as_u16())
    });
    f("get$name").set_into_module(module, |e: &mut HostError| {
        rhai::ImmutableString::from(e.0.code.name())
    });
    f("get$message").set_into_module(module, |e: &mut HostError| {
        rhai::ImmutableString::from(e.0.message.as_str())
    });
    f("to_string").set_into_module(module, |e: &mut HostError| e.0.to_string());
    f("to_debug").set_into_module(module, |e: &mut HostError| e.0.to_string());
}

pub fn out_of_model(name: &str) -> CellError {
    let hint = out_of_model_hint(name).unwrap_or("it is not part of the cell ABI");
    CellError::new(
        ErrorCode::OutOfModel,
        format!("`{name}` is out of model: {hint}"),
    )
}

/// Converts any Rhai error into the ABI error a caller of exec/call receives.
pub fn cell_error(err: &EvalAltResult) -> CellError {
    use EvalAltResult as E;
    let code = match err {
        E::ErrorParsing(kind, _) => return parse_error(kind, err),
        E::ErrorInFunctionCall(_, _, inner, _) | E::ErrorInModule(_, inner, _) => {
            let inner = cell_error(inner);
            if inner.code == ErrorCode::LimitCallDepth || is_stop(err) {
                // One wording however deep the nesting or the stop was found.
                return inner;
            }
            return CellError::new(inner.code, message(err));
        }
        E::ErrorRuntime(value, _) => {
            if let Some(HostError(err)) = value.read_lock::<HostError>().map(|e| e.clone()) {
                return err;
            }
            // Anything a script throws is its own failure: the value is kept as data in the
            // message (`Runtime error: <value> (line, position)`), whatever it holds (a `code`
            // field included).
            ErrorCode::Runtime
        }
        E::ErrorFunctionNotFound(signature, _) => {
            let name = signature.split(['(', ' ']).next().unwrap_or_default();
            if out_of_model_hint(name).is_some() {
                return out_of_model(name);
            }
            ErrorCode::NotFound
        }
        E::ErrorModuleNotFound(name, _) => {
            return CellError::new(
                ErrorCode::OutOfModel,
                format!(
                    "module `{name}` is not allowed by this cell's policy: imports resolve only the modules the policy lists"
                ),
            );
        }
        E::ErrorVariableNotFound(..) | E::ErrorPropertyNotFound(..) => ErrorCode::NotFound,
        E::ErrorTooManyOperations(_) => ErrorCode::LimitOperations,
        E::ErrorStackOverflow(at) => return call_depth(*at),
        E::ErrorDataTooLarge(what, _) => data_limit_code(what),
        E::ErrorTerminated(token, at) => {
            let code = token
                .as_int()
                .ok()
                .and_then(|c| u16::try_from(c).ok())
                .and_then(ErrorCode::from_u16)
                .unwrap_or(ErrorCode::Cancelled);
            return stopped(code, *at);
        }
        E::ErrorMismatchDataType(..) | E::ErrorMismatchOutputType(..) => ErrorCode::InvalidArgument,
        _ => ErrorCode::Runtime,
    };
    CellError::new(code, message(err))
}

/// The longest error message rendered: more than any frame carries, so a longer one could
/// never cross the boundary whole anyway.
const MAX_MESSAGE: usize = abi::wire::ABSOLUTE_MAX_FRAME_LEN as usize;

/// `err` as text, cut after [`MAX_MESSAGE`] bytes. A thrown value is rendered into the
/// message, and the engine's strings are shared: `throw` of an array holding one 1 MiB string
/// 10,000 times would otherwise render 10 GB (in the host's process on subinterp).
fn message(err: &EvalAltResult) -> String {
    use core::fmt::Write;
    struct Capped(String, bool);
    impl Write for Capped {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            if self.1 {
                return Err(core::fmt::Error);
            }
            let room = MAX_MESSAGE - self.0.len();
            if s.len() <= room {
                self.0.push_str(s);
                return Ok(());
            }
            self.1 = true;
            let mut end = room;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            self.0.push_str(&s[..end]);
            self.0.push('…');
            // Stops the rendering: every `Display` of the engine's values passes this on.
            Err(core::fmt::Error)
        }
    }
    let mut out = Capped(String::new(), false);
    let _ = write!(out, "{err}");
    // The engine names a string argument of a call it could not match by the Rust types it
    // accepts; a script knows the type as `string` (`type_of("x")`). Only in such an error: no
    // thrown value is rendered in it, so no script's text is rewritten.
    if matches!(innermost(err), EvalAltResult::ErrorFunctionNotFound(..))
        && out.0.contains(RUST_STRING_TYPES)
    {
        return out.0.replace(RUST_STRING_TYPES, "string");
    }
    out.0
}

/// How the engine's call signatures name a string argument.
const RUST_STRING_TYPES: &str = "&str | ImmutableString | String";

/// The error under any calls and modules that wrap it.
fn innermost(err: &EvalAltResult) -> &EvalAltResult {
    match err {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
        | EvalAltResult::ErrorInModule(_, inner, _) => innermost(inner),
        other => other,
    }
}

/// Whether `err` is, under any calls that wrap it, a stop of the cell's (see `meter`).
fn is_stop(err: &EvalAltResult) -> bool {
    matches!(innermost(err), EvalAltResult::ErrorTerminated(..))
}

/// The limit code for the engine's description of what is too large (`Length of string`,
/// `Size of array/BLOB`, `Size of array literal`, `Size of object map`, ...).
fn data_limit_code(what: &str) -> ErrorCode {
    let what = what.to_ascii_lowercase();
    if what.contains("string") {
        ErrorCode::LimitStringSize
    } else if what.contains("array") {
        ErrorCode::LimitArraySize
    } else if what.contains("map") {
        ErrorCode::LimitMapSize
    } else {
        ErrorCode::LimitValue
    }
}

/// A transaction the cell stopped with `code` at `at` (the cell counts operations and keeps
/// stops itself, see `meter`), worded as the engine words the same stop where it has one.
pub(crate) fn stopped(code: ErrorCode, at: Position) -> CellError {
    match code {
        ErrorCode::LimitCallDepth => call_depth(at),
        ErrorCode::LimitOperations => {
            CellError::new(code, EvalAltResult::ErrorTooManyOperations(at).to_string())
        }
        _ => CellError::new(code, terminated_message(code)),
    }
}

fn terminated_message(code: ErrorCode) -> String {
    match code {
        ErrorCode::TimedOut => "the script ran past its wall-time limit".into(),
        ErrorCode::Cancelled => "the script was cancelled: the cell was killed".into(),
        other => format!("the script was stopped: {other}"),
    }
}

/// The call-depth limit's one message ([`abi::error::CALL_DEPTH_MESSAGE`]), at the script
/// position where the engine stopped, the same whether the policy's limit or the stack's end
/// stopped it.
fn call_depth(at: Position) -> CellError {
    let message = if at.is_none() {
        abi::error::CALL_DEPTH_MESSAGE.to_string()
    } else {
        format!("{} ({at})", abi::error::CALL_DEPTH_MESSAGE)
    };
    CellError::new(ErrorCode::LimitCallDepth, message)
}

/// What the parser's token hook reports when parsing runs past the stack budget.
pub(crate) const STACK_EXHAUSTED: &str = "the script nests deeper than the engine's stack holds";

/// What the parser's token hook reports when the parse was stopped (a kill, a limit); the
/// transaction answers with the stop itself (see `Cell::exec`).
pub(crate) const PARSE_STOPPED: &str = "the parse was stopped";

fn parse_error(kind: &ParseErrorType, err: &EvalAltResult) -> CellError {
    match kind {
        ParseErrorType::ExprTooDeep => CellError::new(ErrorCode::LimitExprDepth, err.to_string()),
        ParseErrorType::BadInput(rhai::LexError::Runtime(msg)) if msg == STACK_EXHAUSTED => {
            CellError::new(ErrorCode::LimitExprDepth, err.to_string())
        }
        ParseErrorType::Reserved(word) | ParseErrorType::UnknownOperator(word)
            if out_of_model_hint(word).is_some() =>
        {
            out_of_model(word)
        }
        ParseErrorType::BadInput(rhai::LexError::ImproperSymbol(word, _))
            if out_of_model_hint(word).is_some() =>
        {
            out_of_model(word)
        }
        // A literal past a collection limit gives that limit's code, as growing one does.
        ParseErrorType::LiteralTooLarge(what, _) => {
            CellError::new(data_limit_code(what), err.to_string())
        }
        _ => CellError::new(ErrorCode::Syntax, err.to_string()),
    }
}
