//! http: allowlisted origins, method, size and time caps, against a real server on 127.0.0.1.

mod common;
use abi::{ErrorCode, Value};
use cell_broker::Broker;
use common::{cell, map, s};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

const B: &str = "subinterp";

/// A tiny HTTP/1.1 server on 127.0.0.1 answering by path. `/hang` never answers.
fn server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            if let Some(hung) = handle(stream) {
                held.push(hung);
            }
        }
    });
    format!("http://{addr}")
}

fn handle(stream: TcpStream) -> Option<TcpStream> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut length = 0usize;
    let mut custom = String::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
        if let Some(v) = lower.strip_prefix("x-test:") {
            custom = v.trim().to_string();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let (status, extra, out): (&str, String, Vec<u8>) = match path.as_str() {
        "/hang" => return Some(stream),
        "/hello" => ("200 OK", String::new(), b"hello".to_vec()),
        "/big" => ("200 OK", String::new(), vec![b'x'; 5000]),
        "/redirect" => (
            "302 Found",
            "location: http://127.0.0.1:9/elsewhere\r\n".into(),
            Vec::new(),
        ),
        "/echo" => (
            "201 Created",
            String::new(),
            format!(
                "{method} {} x-test={custom}",
                String::from_utf8_lossy(&body)
            )
            .into_bytes(),
        ),
        _ => ("404 Not Found", String::new(), b"no".to_vec()),
    };
    let mut stream = stream;
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\nx-server: tiny\r\n{extra}\r\n",
        out.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&out);
    None
}

fn grant(origin: &str, actions: &str, extra: &str) -> String {
    format!(
        "[[grants]]\ncapability = \"http\"\nactions = {actions}\norigins = [\"{origin}\"]\n{extra}"
    )
}

fn field(v: &Value, key: &str) -> Value {
    match v {
        Value::Map(m) => m[key].clone(),
        other => panic!("not a map: {other:?}"),
    }
}

#[test]
fn get_on_an_allowed_origin() {
    let origin = server();
    let broker = Broker::builder().build().unwrap();
    let c = cell(&broker, "h", &grant(&origin, "[\"get\", \"post\"]", ""));
    let r = c
        .request(
            B,
            "http",
            "get",
            map(&[("url", s(&format!("{origin}/hello")))]),
        )
        .unwrap();
    assert_eq!(field(&r, "status"), Value::Int(200));
    assert_eq!(field(&r, "body"), Value::Bytes(b"hello".to_vec()));
    assert_eq!(field(&field(&r, "headers"), "x-server"), s("tiny"));
    let r = c
        .request(
            B,
            "http",
            "post",
            map(&[
                ("url", s(&format!("{origin}/echo"))),
                ("body", s("ping")),
                ("headers", map(&[("x-test", s("yes"))])),
            ]),
        )
        .unwrap();
    assert_eq!(field(&r, "status"), Value::Int(201));
    assert_eq!(
        field(&r, "body"),
        Value::Bytes(b"POST ping x-test=yes".to_vec())
    );
    // A 404 is a result, not an error.
    let r = c
        .request(
            B,
            "http",
            "get",
            map(&[("url", s(&format!("{origin}/nope")))]),
        )
        .unwrap();
    assert_eq!(field(&r, "status"), Value::Int(404));
}

#[test]
fn methods_origins_and_redirects_stay_in_scope() {
    let origin = server();
    let broker = Broker::builder().build().unwrap();
    let c = cell(&broker, "h", &grant(&origin, "[\"get\"]", ""));
    // Method not granted.
    let err = c
        .request(
            B,
            "http",
            "post",
            map(&[("url", s(&format!("{origin}/echo")))]),
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Denied);
    assert!(err.message.contains("`http`") && err.message.contains("default-deny"));
    // Another origin (another port on loopback) is out of scope; nothing is sent there.
    let err = c
        .request(
            B,
            "http",
            "get",
            map(&[("url", s("http://127.0.0.1:9/hello"))]),
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Denied);
    assert!(err.message.contains("outside the scope"), "{err}");
    // Credentials in the URL and non-http schemes are refused.
    for url in [
        format!("http://u:p@{}/hello", &origin[7..]),
        "file:///etc/passwd".to_string(),
    ] {
        let err = c
            .request(B, "http", "get", map(&[("url", s(&url))]))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument, "{url}");
    }
    // A redirect to elsewhere is returned, not followed.
    let r = c
        .request(
            B,
            "http",
            "get",
            map(&[("url", s(&format!("{origin}/redirect")))]),
        )
        .unwrap();
    assert_eq!(field(&r, "status"), Value::Int(302));
    // Nothing granted.
    let none = cell(&broker, "n", "");
    let err = none
        .request(
            B,
            "http",
            "get",
            map(&[("url", s(&format!("{origin}/hello")))]),
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Denied);
}

#[test]
fn size_and_time_caps() {
    let origin = server();
    let broker = Broker::builder().build().unwrap();
    let c = cell(
        &broker,
        "h",
        &grant(
            &origin,
            "[\"get\", \"post\"]",
            "max_bytes = 1000\ntimeout_ms = 300",
        ),
    );
    let err = c
        .request(
            B,
            "http",
            "get",
            map(&[("url", s(&format!("{origin}/big")))]),
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitValue, "{err}");
    let err = c
        .request(
            B,
            "http",
            "post",
            map(&[
                ("url", s(&format!("{origin}/echo"))),
                ("body", Value::Bytes(vec![0; 2000])),
            ]),
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitValue);
    // A server that never answers: the request fails (not the cell), and the cell goes on.
    let err = c
        .request(
            B,
            "http",
            "get",
            map(&[("url", s(&format!("{origin}/hang")))]),
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::CapabilityFailed, "{err}");
    assert!(
        err.message.contains("timed out") || err.message.contains("timeout"),
        "{err}"
    );
    assert!(
        c.request(
            B,
            "http",
            "get",
            map(&[("url", s(&format!("{origin}/hello")))])
        )
        .is_ok()
    );
}

/// A response body past the largest reply the cell takes is refused while it is read (never
/// read whole), naming that limit, with the code the host gives an over-cap reply; a body
/// within it is returned whole.
#[test]
fn bodies_are_read_only_up_to_the_largest_reply() {
    let origin = server();
    let broker = Broker::builder().build().unwrap();
    let c = cell(&broker, "h", &grant(&origin, "[\"get\"]", ""));
    let get = |path: &str, max_reply: u64| {
        c.request_within(
            B,
            "http",
            "get",
            map(&[("url", s(&format!("{origin}{path}")))]),
            None,
            Some(max_reply),
        )
    };
    let err = get("/big", 4999).unwrap_err();
    assert_eq!(err.code, ErrorCode::LimitFrameSize, "{err}");
    assert!(
        err.message.contains("exceeds 4999 bytes")
            && err
                .message
                .contains("a reply to this cell carries at most 4999 bytes"),
        "{err}"
    );
    let body = field(&get("/big", 5000).unwrap(), "body");
    assert_eq!(body, Value::Bytes(vec![b'x'; 5000]));
}
