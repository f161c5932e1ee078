//! `http`: requests to allowlisted origins with method, size and time caps (`ureq`). Redirects
//! are returned to the guest, never followed (a redirect could leave the origin), and proxies
//! from the environment are ignored.

use crate::capability::{Call, Capability, Payload, ReadLimit, check_max_bytes};
use crate::error::CapabilityError;
use crate::rules::{Rule, RuleKind};
use abi::{Map, Value};
use ureq::http;
use url::Url;

/// Size cap of a request or response body when the grant sets no `max_bytes` (1 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;
/// Most request headers a guest may set.
pub const MAX_HEADERS: usize = 64;

/// One action per method: `get`, `head`, `post`, `put`, `patch`, `delete`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Http;

/// The origin (`scheme://host[:port]`, default port omitted) of an absolute URL.
fn origin_of(url: &Url) -> Result<String, String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme `{}` is not http or https", url.scheme()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("URLs with credentials are not allowed".into());
    }
    if url.host_str().is_none() {
        return Err("the URL has no host".into());
    }
    Ok(url.origin().ascii_serialization())
}

/// Normalizes a configured origin; it must be an origin and nothing more.
fn config_origin(text: &str) -> Result<String, String> {
    let url = Url::parse(text).map_err(|e| format!("origin `{text}` does not parse: {e}"))?;
    let origin = origin_of(&url).map_err(|e| format!("origin `{text}`: {e}"))?;
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "origin `{text}` has a path, query or fragment: write only scheme://host[:port]"
        ));
    }
    if url.scheme() == "https" && !cfg!(feature = "tls") {
        return Err(format!(
            "origin `{text}`: https needs cell-broker's `tls` feature, which this build lacks"
        ));
    }
    Ok(origin)
}

fn request_url(payload: &Value) -> Result<(Url, String), CapabilityError> {
    let p = Payload::new(payload, "http")?;
    let text = p.str("url")?;
    let url = Url::parse(text)
        .map_err(|e| CapabilityError::invalid(format!("http: `url` does not parse: {e}")))?;
    let origin = origin_of(&url).map_err(|e| CapabilityError::invalid(format!("http: {e}")))?;
    Ok((url, origin))
}

fn map_err(e: ureq::Error, limit: ReadLimit) -> CapabilityError {
    match e {
        ureq::Error::Timeout(t) => CapabilityError::TimedOut(format!("http: {t} timeout")),
        ureq::Error::BodyExceedsLimit(_) if limit.by_reply => {
            limit.exceeded(format!("the response body exceeds {} bytes", limit.max))
        }
        ureq::Error::BodyExceedsLimit(_) => CapabilityError::TooLarge(format!(
            "the response body exceeds the grant's cap of {} bytes",
            limit.max
        )),
        e => CapabilityError::failed(format!("http: {e}")),
    }
}

impl Capability for Http {
    fn name(&self) -> &str {
        "http"
    }

    fn actions(&self) -> &[&str] {
        &["get", "head", "post", "put", "patch", "delete"]
    }

    fn scope_fields(&self) -> &[&str] {
        &["origins", "max_bytes"]
    }

    fn check_shape(&self, rule: &Rule, kind: RuleKind) -> Result<(), String> {
        if kind == RuleKind::Grant && rule.origins.is_empty() {
            return Err("an `http` grant must list its `origins`".into());
        }
        if kind == RuleKind::Deny && rule.max_bytes.is_some() {
            return Err("`max_bytes` means nothing on a deny rule".into());
        }
        for o in &rule.origins {
            config_origin(o)?;
        }
        check_max_bytes(rule)?;
        Ok(())
    }

    fn covers(
        &self,
        rule: &Rule,
        _: RuleKind,
        _: &str,
        payload: &Value,
    ) -> Result<bool, CapabilityError> {
        let (_, origin) = request_url(payload)?;
        Ok(rule.origins.is_empty()
            || rule
                .origins
                .iter()
                .any(|o| config_origin(o).is_ok_and(|o| o == origin)))
    }

    fn execute(&self, call: &Call) -> Result<Value, CapabilityError> {
        let p = Payload::new(&call.payload, "http")?;
        p.only(&["url", "headers", "body"])?;
        let (url, _) = request_url(&call.payload)?;
        let max = call.rule.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
        let body: Vec<u8> = match p.get("body") {
            None | Some(Value::Unit) => Vec::new(),
            Some(_) => p.bytes("body")?.to_vec(),
        };
        if body.len() as u64 > max {
            return Err(CapabilityError::TooLarge(format!(
                "a request body of {} bytes, the grant allows {max}",
                body.len()
            )));
        }
        let mut builder = http::Request::builder()
            .method(call.action.to_ascii_uppercase().as_str())
            .uri(url.as_str());
        match p.get("headers") {
            None | Some(Value::Unit) => {}
            Some(Value::Map(headers)) => {
                if headers.len() > MAX_HEADERS {
                    return Err(CapabilityError::invalid(format!(
                        "http: at most {MAX_HEADERS} headers"
                    )));
                }
                for (name, value) in headers {
                    let Value::Str(value) = value else {
                        return Err(CapabilityError::invalid(format!(
                            "http: header `{name}` must be a string"
                        )));
                    };
                    if name.eq_ignore_ascii_case("host") {
                        return Err(CapabilityError::invalid(
                            "http: the `host` header is set from the URL",
                        ));
                    }
                    builder = builder.header(name.as_str(), value.as_str());
                }
            }
            Some(other) => {
                return Err(CapabilityError::invalid(format!(
                    "http: `headers` must be a map, got {}",
                    other.type_name()
                )));
            }
        }
        let request = builder
            .body(body)
            .map_err(|e| CapabilityError::invalid(format!("http: {e}")))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(call.timeout))
            .max_redirects(0)
            .max_redirects_will_error(false)
            .http_status_as_error(false)
            .proxy(None)
            .build()
            .into();
        // The response body is read up to the grant's cap or the largest reply the cell takes,
        // whichever is smaller: never more is allocated.
        let limit = call.read_limit(max);
        let response = agent.run(request).map_err(|e| map_err(e, limit))?;
        let status = response.status().as_u16();
        let mut headers = Map::new();
        for (name, value) in response.headers() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers
                .entry(name.as_str().to_string())
                .and_modify(|v| {
                    if let Value::Str(s) = v {
                        s.push_str(", ");
                        s.push_str(&value);
                    }
                })
                .or_insert(Value::Str(value));
        }
        let body = response
            .into_body()
            .with_config()
            .limit(limit.max)
            .read_to_vec()
            .map_err(|e| map_err(e, limit))?;
        let mut out = Map::new();
        out.insert("status".into(), Value::Int(status.into()));
        out.insert("headers".into(), Value::Map(headers));
        out.insert("body".into(), Value::Bytes(body));
        Ok(Value::Map(out))
    }
}
