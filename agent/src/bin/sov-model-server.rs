//! `sov-model-server`: a toy model server for sov's examples and end-to-end tests.
//!
//! It is NOT a model and computes nothing: `POST /v1/completions` answers in the shape of the
//! OpenAI completions API with a deterministic "continuation" (the prompt's words in reverse
//! order, cut to `max_tokens` words). What it does report truthfully is where it runs: the node,
//! country, allocation and GPUs the sov driver gave it through its environment, so a test (or a
//! curious user) can see that a request really landed on a node in the right jurisdiction.
//!
//! It listens on `127.0.0.1:$PORT` (the driver sets `PORT`), answers `GET /health` for the
//! driver's health check, and exits with code 0 after a graceful shutdown on SIGTERM, which is
//! what the driver sends to stop it.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use serde_json::{Value, json};

/// Completion requests are a prompt and a few fields; anything larger is refused unread.
const BODY_BYTES_MAX: usize = 1 << 20;

/// Words in a completion when the request does not say.
const MAX_TOKENS_DEFAULT: u64 = 16;

/// The toy never produces more than this many words, whatever the request asks.
const MAX_TOKENS_LIMIT: u64 = 4096;

#[derive(Parser)]
#[command(
    name = "sov-model-server",
    version,
    about = "Toy OpenAI-style completion server for sov examples and tests (computes no model)"
)]
struct Cli {
    /// Port to listen on, on 127.0.0.1; the sov driver sets PORT for every model server.
    #[arg(long, env = "PORT")]
    port: Option<String>,
    /// Full listen address (e.g. 0.0.0.0:8000); overrides --port/PORT.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
}

/// Where this server runs, as the driver described it in the environment.
#[derive(Debug, Clone, Default)]
struct Identity {
    node: Option<String>,
    country: Option<String>,
    allocation: Option<String>,
    deployment: Option<String>,
    gpus: Option<String>,
}

impl Identity {
    fn from_env() -> Identity {
        let var = |name: &str| std::env::var(name).ok();
        Identity {
            node: var("SOV_NODE"),
            country: var("SOV_COUNTRY"),
            allocation: var("SOV_ALLOCATION"),
            deployment: var("SOV_DEPLOYMENT"),
            gpus: var("CUDA_VISIBLE_DEVICES"),
        }
    }
}

struct App {
    identity: Identity,
    /// Completion ids only need to be unique within one server process.
    next_id: AtomicU64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let served = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|runtime| runtime.block_on(serve(cli)));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Printed by hand: one line an operator can act on, not a backtrace.
            eprintln!("sov-model-server: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let addr = listen_addr(cli.listen, cli.port.as_deref())?;
    let identity = Identity::from_env();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener
        .local_addr()
        .context("cannot read the bound address")?;
    eprintln!(
        "sov-model-server: listening on {bound} (node {}, allocation {}); a toy server, not a model",
        identity.node.as_deref().unwrap_or("-"),
        identity.allocation.as_deref().unwrap_or("-"),
    );
    let app = Arc::new(App {
        identity,
        next_id: AtomicU64::new(1),
    });
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("server failed")?;
    Ok(())
}

/// `--listen` wins; otherwise `127.0.0.1:<port>` from `--port` or `PORT`, which must be a real
/// port: the driver health-checks the port it assigned, so 0 would never pass.
fn listen_addr(listen: Option<SocketAddr>, port: Option<&str>) -> anyhow::Result<SocketAddr> {
    if let Some(addr) = listen {
        return Ok(addr);
    }
    let Some(port) = port else {
        bail!(
            "no port to listen on: set PORT (the sov driver does), or pass --port N or --listen ADDR"
        );
    };
    match port.trim().parse::<u16>() {
        Ok(0) | Err(_) => {
            bail!("invalid port {port:?} (from --port or PORT): expected a number from 1 to 65535")
        }
        Ok(port) => Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            eprintln!("sov-model-server: cannot watch SIGTERM ({e}); stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    eprintln!("sov-model-server: shutting down");
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(describe))
        .route("/health", get(health))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .with_state(app)
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error_response(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error"}});
    json_response(status, &body)
}

async fn health() -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "no such route; try GET /, GET /health or POST /v1/completions",
    )
}

async fn describe(State(app): State<Arc<App>>) -> String {
    let id = &app.identity;
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    format!(
        "sov-model-server: a toy completion server for sov examples and tests; it computes no model.\n\
         node: {}\ncountry: {}\nallocation: {}\ndeployment: {}\ngpus: {}\n",
        or_dash(&id.node),
        or_dash(&id.country),
        or_dash(&id.allocation),
        or_dash(&id.deployment),
        or_dash(&id.gpus),
    )
}

#[derive(Debug, PartialEq, Eq)]
struct CompletionRequest {
    model: Option<String>,
    prompt: String,
    max_tokens: u64,
}

/// Parses by hand rather than with a derive so each error names the offending field.
fn parse_request(body: &[u8]) -> Result<CompletionRequest, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("request body is not valid JSON: {e}"))?;
    let Value::Object(fields) = value else {
        return Err("request body must be a JSON object".into());
    };
    let prompt = match fields.get("prompt") {
        None | Some(Value::Null) => return Err("missing field `prompt`".into()),
        Some(Value::String(prompt)) => prompt.clone(),
        Some(_) => return Err("field `prompt` must be a string".into()),
    };
    let model = match fields.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(model)) => Some(model.clone()),
        Some(_) => return Err("field `model` must be a string".into()),
    };
    let max_tokens = match fields.get("max_tokens") {
        None | Some(Value::Null) => MAX_TOKENS_DEFAULT,
        Some(v) => v
            .as_u64()
            .filter(|n| *n <= MAX_TOKENS_LIMIT)
            .ok_or_else(|| {
                format!("field `max_tokens` must be an integer from 0 to {MAX_TOKENS_LIMIT}")
            })?,
    };
    Ok(CompletionRequest {
        model,
        prompt,
        max_tokens,
    })
}

/// The toy continuation: the prompt's words reversed, at most `max_tokens` of them. Returns the
/// text, the words emitted, and whether it was cut short (OpenAI's `finish_reason: "length"`).
fn toy_completion(prompt: &str, max_tokens: u64) -> (String, usize, bool) {
    let words: Vec<&str> = prompt.split_whitespace().rev().collect();
    let limit = usize::try_from(max_tokens).unwrap_or(usize::MAX);
    let emitted = words.len().min(limit);
    (words[..emitted].join(" "), emitted, words.len() > limit)
}

async fn completions(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let too_large = || {
        let message = format!("request body is larger than the {BODY_BYTES_MAX}-byte limit");
        error_response(StatusCode::PAYLOAD_TOO_LARGE, &message)
    };
    // A declared length over the limit is refused before reading a byte of the body.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > BODY_BYTES_MAX as u64) {
        return too_large();
    }
    let body = match axum::body::to_bytes(body, BODY_BYTES_MAX).await {
        Ok(body) => body,
        // Over the limit without a declared length (chunked), or a broken connection, in which
        // case nobody reads this answer anyway.
        Err(_) => return too_large(),
    };
    let request = match parse_request(&body) {
        Ok(request) => request,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, &message),
    };
    let (text, completion_tokens, truncated) = toy_completion(&request.prompt, request.max_tokens);
    let prompt_tokens = request.prompt.split_whitespace().count();
    let id = app.next_id.fetch_add(1, Ordering::Relaxed);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let identity = &app.identity;
    let body = json!({
        "id": format!("cmpl-{id}"),
        "object": "text_completion",
        "created": created,
        "model": request.model.or_else(|| identity.deployment.clone()),
        "choices": [{
            "index": 0,
            "text": text,
            "finish_reason": if truncated { "length" } else { "stop" },
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "sov": {
            "node": identity.node,
            "country": identity.country,
            "allocation": identity.allocation,
            "gpus": identity.gpus,
        },
    });
    json_response(StatusCode::OK, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn listen_address_needs_a_real_port() {
        let local = |p| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
        assert_eq!(listen_addr(None, Some("8000")).ok(), Some(local(8000)));
        let explicit: SocketAddr = "0.0.0.0:9".parse().expect("addr");
        assert_eq!(listen_addr(Some(explicit), None).ok(), Some(explicit));
        for bad in [None, Some("0"), Some("http"), Some("70000"), Some("")] {
            let err = listen_addr(None, bad).expect_err("bad port accepted");
            assert!(err.to_string().contains("port"), "{err}");
        }
    }

    #[test]
    fn completion_is_the_prompt_reversed_and_cut() {
        assert_eq!(
            toy_completion("one two three", 16),
            ("three two one".into(), 3, false)
        );
        assert_eq!(
            toy_completion("one two three", 2),
            ("three two".into(), 2, true)
        );
        assert_eq!(toy_completion("  ", 4), (String::new(), 0, false));
    }

    #[test]
    fn request_errors_name_the_field() {
        assert_eq!(
            parse_request(br#"{"prompt":"hi","max_tokens":3,"model":"m"}"#),
            Ok(CompletionRequest {
                model: Some("m".into()),
                prompt: "hi".into(),
                max_tokens: 3
            })
        );
        assert_eq!(
            parse_request(br#"{"prompt":"hi"}"#).map(|r| r.max_tokens),
            Ok(MAX_TOKENS_DEFAULT)
        );
        assert!(
            parse_request(br#"{"model":"m"}"#)
                .unwrap_err()
                .contains("`prompt`")
        );
        assert!(
            parse_request(br#"{"prompt":1}"#)
                .unwrap_err()
                .contains("`prompt`")
        );
        assert!(
            parse_request(br#"{"prompt":"x","max_tokens":-1}"#)
                .unwrap_err()
                .contains("`max_tokens`")
        );
        assert!(
            parse_request(b"{not json")
                .unwrap_err()
                .contains("not valid JSON")
        );
        assert!(parse_request(b"[]").unwrap_err().contains("JSON object"));
    }

    /// One HTTP/1.0 exchange with a served router; returns (status, body).
    async fn exchange(addr: SocketAddr, request: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = String::new();
        let read = stream.read_to_string(&mut response);
        tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("no complete response within 10 s")
            .expect("read");
        let status = response[9..12].parse().expect("status");
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    fn post(body: &str) -> String {
        format!(
            "POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn serves_health_completions_and_errors() {
        let app = Arc::new(App {
            identity: Identity {
                node: Some("node-a".into()),
                country: Some("CH".into()),
                allocation: Some("tiny-echo-1-0".into()),
                deployment: Some("tiny-echo".into()),
                gpus: Some(String::new()),
            },
            next_id: AtomicU64::new(1),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router(app)).await });

        let (status, body) = exchange(addr, "GET /health HTTP/1.0\r\n\r\n").await;
        assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));

        let (status, body) = exchange(addr, &post(r#"{"prompt":"a b c","max_tokens":2}"#)).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["id"], "cmpl-1");
        assert_eq!(v["model"], "tiny-echo", "defaults to the deployment");
        assert_eq!(v["choices"][0]["text"], "c b");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["total_tokens"], 5);
        assert_eq!(v["sov"]["country"], "CH");
        assert_eq!(v["sov"]["gpus"], "");

        let (status, body) = exchange(addr, &post(r#"{"model":"m"}"#)).await;
        assert_eq!(status, 400);
        assert!(body.contains("missing field `prompt`"), "{body}");

        // Only the headers are sent: the declared length alone must be refused, unread.
        let oversized = format!(
            "POST /v1/completions HTTP/1.0\r\nContent-Length: {}\r\n\r\n",
            BODY_BYTES_MAX + 1
        );
        let (status, body) = exchange(addr, &oversized).await;
        assert_eq!(status, 413, "{body}");

        let (status, body) = exchange(addr, "GET / HTTP/1.0\r\n\r\n").await;
        assert_eq!(status, 200);
        assert!(
            body.contains("node: node-a") && body.contains("computes no model"),
            "{body}"
        );
    }
}
