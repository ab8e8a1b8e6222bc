//! Talking to the scheduler cluster: the endpoint list, connections, bounded retries that follow
//! leader hints, and the one-line reasons for failures.
//!
//! Owns every network call sovctl makes. A command hands `Client::call` a request and a closure
//! that performs one RPC on a channel; the client decides where each attempt goes. The routing
//! decisions (`classify`, `Route`) are pure so they are tested without a network.
//!
//! Every connection is mutual TLS (`https://`) when a client certificate is configured
//! (`Transport::Tls`, from `credentials`), whatever scheme the endpoints were written with;
//! without one it is plaintext, which only in-process test servers speak, so its connection
//! failures say that no certificate is configured. A failed TLS handshake is never retried:
//! every scheduler of a cluster holds certificates from the same CA, so the next would fail
//! alike; its one-line reason says what to check instead.
//!
//! Retry rules, in order of the protocol's promises:
//! - UNAVAILABLE with trailer `sov-leader-api`: the node could not forward to the leader and says
//!   where it is; retry there.
//! - UNAVAILABLE without it, a refused connection or no answer in time: try the next endpoint.
//! - Anything else (invalid argument, not found, failed precondition, ...) is the answer; a retry
//!   would get the same one, or apply a rejected write after the user saw the rejection.
//!
//! A retried write whose first outcome is unknown may be applied twice; every write in sov.v1 is
//! idempotent by name or id, so the second application changes nothing.
//!
//! Watches (`deploy show --watch`, `--wait`) poll with `Client::poll` instead: one attempt per
//! poll, and a failure that a retry could cure (a leader change, a restarting scheduler) is not
//! the end of the watch but a missed poll; the next one goes where the retry would have gone.

use std::error::Error as StdError;
use std::future::Future;
use std::time::Duration;

use sov_proto::LEADER_API_METADATA;
use sov_proto::tls::TlsMaterial;
use sov_proto::v1::ReadConsistency;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Endpoint, Uri};
use tonic::{Code, Status};

use crate::UsageError;

/// Where sovctl looks when neither `--endpoint` nor `SOV_ENDPOINT` is given.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7400";
/// The scheduler's API port, assumed when an endpoint names only a host.
const DEFAULT_PORT: u16 = 7400;
/// Attempts per call, the first included: enough to ride out a leader change and a dead node,
/// few enough that a broken cluster is reported within seconds.
pub const ATTEMPTS_MAX: u32 = 5;
/// Wait before the first retry; doubles with every further retry (200, 400, 800, 1600 ms).
const BACKOFF_FIRST_MS: u64 = 200;
/// A TCP connect to a live host takes milliseconds; a long wait means a dead or firewalled one,
/// and the next endpoint is the better bet.
const CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(3);

/// The `consistency` field of read requests: linearizable unless the user asked for `--stale`.
pub fn read_consistency(stale: bool) -> i32 {
    if stale {
        ReadConsistency::Stale as i32
    } else {
        ReadConsistency::Linearizable as i32
    }
}

/// Parses `--endpoint`: a comma-separated list of `host[:port]`, `http://host[:port]` or
/// `https://host[:port]`, into canonical `http://host:port` addresses, in order, without
/// duplicates. The scheme says nothing about the transport: `Client` connects over mutual TLS,
/// at `https://host:port`, whenever a client certificate is configured.
pub fn parse_endpoints(list: &str) -> Result<Vec<String>, UsageError> {
    let mut endpoints: Vec<String> = Vec::new();
    for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let endpoint = parse_endpoint(raw).map_err(|reason| {
            UsageError(format!(
                "invalid endpoint {raw:?}: {reason}; expected host:port, http://host:port or \
                 https://host:port"
            ))
        })?;
        if !endpoints.contains(&endpoint) {
            endpoints.push(endpoint);
        }
    }
    if endpoints.is_empty() {
        return Err(UsageError(format!(
            "no endpoint given; pass --endpoint host:port (default {DEFAULT_ENDPOINT})"
        )));
    }
    Ok(endpoints)
}

/// One endpoint, or a leader hint (`host:port`), to `http://host:port`.
fn parse_endpoint(raw: &str) -> Result<String, String> {
    let authority = match raw.split_once("://") {
        Some(("http" | "https", rest)) => rest,
        Some((scheme, _)) => return Err(format!("unsupported scheme {scheme:?}")),
        None => raw,
    };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err("only a host and a port may be given".to_owned());
    }
    // A port follows the last ':' unless that ':' sits inside an IPv6 literal such as `[::1]`.
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(host, _)| !host.starts_with('[') || host.ends_with(']'));
    let uri: Uri = if has_port {
        format!("http://{authority}")
    } else {
        format!("http://{authority}:{DEFAULT_PORT}")
    }
    .parse()
    .map_err(|e| format!("{e}"))?;
    match (uri.host(), uri.port_u16()) {
        (Some(host), Some(port)) if !host.is_empty() && port != 0 => {}
        _ => return Err("it needs a host and a port from 1 to 65535".to_owned()),
    }
    let authority = uri.authority().ok_or("it needs a host")?;
    Ok(format!("http://{authority}"))
}

/// Why one attempt failed.
#[derive(Debug)]
pub enum Failure {
    /// No connection could be made, so nothing was sent.
    Connect { reason: String },
    /// The TLS handshake failed (either side refused the other's certificate), before or during
    /// the call: a matter of credentials, which another scheduler of the cluster would judge
    /// the same way.
    Tls { reason: String },
    /// No answer within the deadline; a write may or may not have been applied.
    Timeout,
    /// The server answered with an error, or the transport broke during the call.
    Status(Status),
}

/// What to do after a failed attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Retry at the leader the server named (canonical address).
    RetryAtLeader(String),
    /// Retry at the next endpoint of the list.
    RetryNextEndpoint,
    /// The failure is the answer.
    GiveUp,
}

/// Decides, from the failure alone, whether and where to retry. `retry_timeouts` is false for
/// calls that legitimately run long (join), where a timeout means "still working", not "dead".
pub fn classify(failure: &Failure, retry_timeouts: bool) -> Action {
    match failure {
        Failure::Connect { .. } => Action::RetryNextEndpoint,
        Failure::Tls { .. } => Action::GiveUp,
        Failure::Timeout if retry_timeouts => Action::RetryNextEndpoint,
        Failure::Timeout => Action::GiveUp,
        Failure::Status(status) => match status.code() {
            Code::Unavailable => {
                leader_hint(status).map_or(Action::RetryNextEndpoint, Action::RetryAtLeader)
            }
            Code::DeadlineExceeded if retry_timeouts => Action::RetryNextEndpoint,
            // The connection broke mid-call (e.g. the scheduler was killed): the server never
            // answered, so try elsewhere. A write may already have been applied; every sovctl
            // write is idempotent (apply by name, delete), so repeating it is safe.
            Code::Unknown | Code::Cancelled if is_broken_transport(status) => {
                Action::RetryNextEndpoint
            }
            _ => Action::GiveUp,
        },
    }
}

/// Whether a status is tonic's report of a connection that failed during the call, rather than
/// an answer from the server.
fn is_broken_transport(status: &Status) -> bool {
    let message = status.message();
    message.contains("transport error") || message.contains("connection")
}

/// The leader address a node attached to an UNAVAILABLE answer, if it is a usable one.
fn leader_hint(status: &Status) -> Option<String> {
    let value = status.metadata().get(LEADER_API_METADATA)?.to_str().ok()?;
    parse_endpoint(value.trim()).ok()
}

/// A planned retry.
#[derive(Debug, PartialEq, Eq)]
pub struct Retry {
    pub target: String,
    /// Why the previous attempt failed, for the note on stderr.
    pub reason: String,
    pub backoff: Duration,
}

/// Where the attempts of one command go, and how many are left.
#[derive(Debug)]
pub struct Route {
    endpoints: Vec<String>,
    /// Index in `endpoints` of the last endpoint taken from the list; following a leader hint
    /// does not move it, so a dead leader sends the next attempt on along the list.
    list_pos: usize,
    target: String,
    attempts: u32,
    /// List endpoints that refused a connection since they last answered. When every one has,
    /// nothing is listening on any of them and waiting longer will not change that.
    unreachable: Vec<bool>,
    /// Every address (listed or hinted) that refused a connection since it last answered;
    /// bounded by the attempt budget.
    refused: Vec<String>,
    /// Whether the endpoints are `https://`: leader hints, which name a bare `host:port`, are
    /// followed with the same scheme.
    https: bool,
}

impl Route {
    pub fn new(endpoints: Vec<String>) -> Self {
        assert!(!endpoints.is_empty(), "a route needs at least one endpoint");
        Route {
            https: endpoints[0].starts_with("https://"),
            target: endpoints[0].clone(),
            unreachable: vec![false; endpoints.len()],
            refused: Vec::new(),
            endpoints,
            list_pos: 0,
            attempts: 0,
        }
    }

    /// Where the next attempt goes.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// A new call begins: it gets the whole attempt budget. What the route learnt (where the
    /// leader is, which endpoints refused) carries over.
    pub fn begin_call(&mut self) {
        self.attempts = 0;
    }

    /// Counts an attempt at `target()`.
    pub fn begin_attempt(&mut self) {
        assert!(self.attempts < ATTEMPTS_MAX, "attempt budget overrun");
        self.attempts += 1;
    }

    /// The target answered: it is reachable.
    pub fn answered(&mut self) {
        self.mark_target(false);
    }

    /// Plans the retry after `failure` at `target()`, or `None` when the command should fail.
    pub fn after_failure(&mut self, failure: &Failure, retry_timeouts: bool) -> Option<Retry> {
        let refused = matches!(failure, Failure::Connect { .. });
        self.mark_target(refused);
        let action = classify(failure, retry_timeouts);
        if action == Action::GiveUp
            || self.attempts >= ATTEMPTS_MAX
            || (refused && self.all_unreachable())
        {
            return None;
        }
        let reason = self.move_on(action, failure);
        Some(Retry {
            target: self.target.clone(),
            reason,
            backoff: backoff(self.attempts),
        })
    }

    /// Decides where the next poll of a watch goes after `failure` at `target()`, and returns
    /// why this one failed; `None` when the failure is an answer. Unlike `after_failure` it
    /// never runs out: a watch has its own deadline, and every scheduler being briefly
    /// unreachable (a restart) must not end it.
    pub fn after_missed_poll(&mut self, failure: &Failure) -> Option<String> {
        self.mark_target(matches!(failure, Failure::Connect { .. }));
        match classify(failure, true) {
            Action::GiveUp => None,
            action => {
                let reason = describe_for_retry(failure, &self.target);
                self.move_on(action, failure);
                Some(reason)
            }
        }
    }

    /// Points `target()` where a retry after `failure` should go; returns why, for the note.
    fn move_on(&mut self, action: Action, failure: &Failure) -> String {
        match action {
            // Right after a leader dies, followers still name it for a moment: do not bounce
            // back to an address that just refused us; go on along the list instead.
            Action::RetryAtLeader(leader) if !self.refused.contains(&self.with_scheme(&leader)) => {
                self.target = self.with_scheme(&leader);
                "leader moved".to_owned()
            }
            _ => {
                let reason = describe_for_retry(failure, &self.target);
                self.list_pos = (self.list_pos + 1) % self.endpoints.len();
                self.target = self.endpoints[self.list_pos].clone();
                reason
            }
        }
    }

    /// A canonical `http://` address in the scheme of the endpoints.
    fn with_scheme(&self, address: &str) -> String {
        match address.strip_prefix("http://") {
            Some(authority) if self.https => format!("https://{authority}"),
            _ => address.to_owned(),
        }
    }

    /// The one-line reason the command failed with, after `after_failure` returned `None`.
    pub fn give_up_reason(&self, failure: &Failure, timeout: Duration) -> String {
        let retried = self.attempts >= ATTEMPTS_MAX;
        match failure {
            Failure::Connect { reason } if self.all_unreachable() => format!(
                "cannot reach any scheduler at {} ({reason}); is the cluster running? \
                 start one with: cargo run --bin sov-scheduler -- dev",
                self.endpoints.join(", ")
            ),
            Failure::Connect { reason } => format!(
                "cannot reach the scheduler at {} ({reason}); gave up after {} attempts",
                self.target, self.attempts
            ),
            Failure::Tls { reason } => {
                format!("TLS handshake with {} failed ({reason})", self.target)
            }
            Failure::Timeout => format!(
                "no answer from {} within {}s; a write may still take effect. A cluster without \
                 a quorum cannot answer: check `sovctl cluster status` on each node, or raise \
                 --timeout",
                self.target,
                timeout.as_secs()
            ),
            Failure::Status(status) if retried => format!(
                "{}; gave up after {} attempts",
                status_reason(status),
                self.attempts
            ),
            Failure::Status(status) => status_reason(status),
        }
    }

    fn mark_target(&mut self, unreachable: bool) {
        if let Some(i) = self.endpoints.iter().position(|e| *e == self.target) {
            self.unreachable[i] = unreachable;
        }
        if unreachable {
            if !self.refused.contains(&self.target) {
                self.refused.push(self.target.clone());
            }
        } else {
            self.refused.retain(|t| *t != self.target);
        }
    }

    fn all_unreachable(&self) -> bool {
        self.unreachable.iter().all(|u| *u)
    }
}

/// Wait before retry number `attempts_made` (1-based): 200 ms, then doubling.
fn backoff(attempts_made: u32) -> Duration {
    Duration::from_millis(BACKOFF_FIRST_MS << attempts_made.saturating_sub(1).min(8))
}

fn describe_for_retry(failure: &Failure, at: &str) -> String {
    match failure {
        Failure::Connect { reason } => format!("{at} unreachable ({reason})"),
        Failure::Tls { reason } => format!("{at}: TLS handshake failed ({reason})"),
        Failure::Timeout => format!("no answer from {at}"),
        Failure::Status(status) => format!("{at}: {}", status_reason(status)),
    }
}

/// `invalid argument: spec.name "Foo" must be a DNS label`: the code in words, then the server's
/// message, which is written for the user.
pub fn status_reason(status: &Status) -> String {
    let code = match status.code() {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "not implemented by this scheduler",
        Code::Internal => "internal error",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    };
    let message = status.message().trim();
    if message.is_empty() {
        code.to_owned()
    } else {
        format!("{code}: {message}")
    }
}

/// The innermost cause of a transport error, as a short phrase: `connection refused`, not
/// `transport error`, and without the `(os error 111)` that means nothing to a user.
pub fn connect_reason(err: &(dyn StdError + 'static)) -> String {
    let mut innermost = err;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    tidy_reason(&innermost.to_string())
}

fn tidy_reason(text: &str) -> String {
    let text = match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "unknown reason".to_owned(),
    }
}

/// The error of a call that failed for good. It displays as the one-line reason; commands that
/// need the server's own answer (the problem list of a refused policy bundle) read `status`.
#[derive(Debug)]
pub struct CallFailed {
    reason: String,
    /// The server's last answer; `None` when it could not be reached or did not answer in time.
    pub status: Option<Status>,
}

impl std::fmt::Display for CallFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl StdError for CallFailed {}

/// Per-call settings.
#[derive(Debug, Clone, Copy)]
pub struct CallOpts {
    /// Deadline of one attempt, connection included.
    pub timeout: Duration,
    pub retry_timeouts: bool,
}

/// The outcome of one poll of a watch.
#[derive(Debug)]
pub enum Polled<T> {
    Answer(T),
    /// No answer this time, for a reason the next poll may not meet; the text says which.
    Missed(String),
}

impl<T> Polled<T> {
    /// The same outcome with the answer converted.
    pub fn map<U>(self, convert: impl FnOnce(T) -> U) -> Polled<U> {
        match self {
            Polled::Answer(answer) => Polled::Answer(convert(answer)),
            Polled::Missed(reason) => Polled::Missed(reason),
        }
    }
}

/// How connections are made.
#[derive(Clone)]
pub enum Transport {
    /// No client certificate configured: plaintext, which only in-process test servers accept.
    Plain,
    /// Mutual TLS with our certificate; `advice` says what to check when a handshake fails.
    Tls {
        material: TlsMaterial,
        advice: String,
    },
    /// TLS that checks the schedulers against the cluster CA (`ca_pem`), without a client
    /// certificate; every call carries `authorization: Bearer TOKEN` (`sovctl ca token`).
    Token {
        ca_pem: String,
        token: MetadataValue<Ascii>,
        advice: String,
    },
}

/// Said when a connection made with a bearer token breaks.
pub const TOKEN_REFUSED_HINT: &str = "sovctl presented a bearer token and no certificate";

/// Adds the bearer token, when there is one, to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// What the command modules make their gRPC clients on.
pub type Channel = InterceptedService<tonic::transport::Channel, Bearer>;

/// A connection to the cluster for the length of one command.
pub struct Client {
    route: Route,
    timeout: Duration,
    transport: Transport,
    /// The channel of the last target that answered, reused for the next call of the command
    /// (pages of a listing) so it skips the redirect that found the leader.
    channel: Option<(String, Channel)>,
}

impl Client {
    /// A plaintext client of `endpoints` (canonical, from `parse_endpoints`), as the tests'
    /// in-process servers speak.
    #[cfg(test)]
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Self {
        Client::with_transport(endpoints, timeout, Transport::Plain)
    }

    /// A client of `endpoints` (canonical, from `parse_endpoints`) over `transport`: with TLS,
    /// every endpoint is dialled as `https://host:port`.
    pub fn with_transport(endpoints: Vec<String>, timeout: Duration, transport: Transport) -> Self {
        let endpoints = match transport {
            Transport::Plain => endpoints,
            Transport::Tls { .. } | Transport::Token { .. } => endpoints
                .into_iter()
                .map(|e| match e.strip_prefix("http://") {
                    Some(authority) => format!("https://{authority}"),
                    None => e,
                })
                .collect(),
        };
        Client {
            route: Route::new(endpoints),
            timeout,
            transport,
            channel: None,
        }
    }

    /// Options of an ordinary call: the `--timeout` deadline, timeouts retried elsewhere.
    pub fn ordinary(&self) -> CallOpts {
        CallOpts {
            timeout: self.timeout,
            retry_timeouts: true,
        }
    }

    /// Performs an ordinary call; see `call_with`.
    pub async fn call<Req, Resp, F, Fut>(&mut self, req: Req, rpc: F) -> anyhow::Result<Resp>
    where
        Req: Clone,
        F: FnMut(Channel, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let opts = self.ordinary();
        self.call_with(opts, req, rpc).await
    }

    /// Performs `rpc` with `req`, retrying as the module documentation says: at most
    /// `ATTEMPTS_MAX` attempts, each retry with one note on stderr.
    pub async fn call_with<Req, Resp, F, Fut>(
        &mut self,
        opts: CallOpts,
        req: Req,
        mut rpc: F,
    ) -> anyhow::Result<Resp>
    where
        Req: Clone,
        F: FnMut(Channel, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        self.route.begin_call();
        loop {
            self.route.begin_attempt();
            let failure = match self.attempt(opts.timeout, req.clone(), &mut rpc).await {
                Ok(resp) => {
                    self.route.answered();
                    return Ok(resp);
                }
                Err(failure) => failure,
            };
            // A failed channel may be half-broken; the next attempt starts afresh.
            self.channel = None;
            match self.route.after_failure(&failure, opts.retry_timeouts) {
                Some(retry) => {
                    eprintln!("retrying at {}: {}", retry.target, retry.reason);
                    tokio::time::sleep(retry.backoff).await;
                }
                None => return Err(self.failed(failure, opts.timeout)),
            }
        }
    }

    /// One poll of a watch: a single attempt with the `--timeout` deadline. A failure that a
    /// retry could cure is `Polled::Missed` (the route already points where the next poll
    /// should go); any other is the error, as `call` reports it.
    pub async fn poll<Req, Resp, F, Fut>(
        &mut self,
        req: Req,
        mut rpc: F,
    ) -> anyhow::Result<Polled<Resp>>
    where
        F: FnMut(Channel, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        self.route.begin_call();
        let failure = match self.attempt(self.timeout, req, &mut rpc).await {
            Ok(resp) => {
                self.route.answered();
                return Ok(Polled::Answer(resp));
            }
            Err(failure) => failure,
        };
        self.channel = None;
        match self.route.after_missed_poll(&failure) {
            Some(reason) => Ok(Polled::Missed(reason)),
            None => Err(self.failed(failure, self.timeout)),
        }
    }

    /// The error of a call that failed for good with `failure`.
    fn failed(&self, failure: Failure, timeout: Duration) -> anyhow::Error {
        let mut reason = self.route.give_up_reason(&failure, timeout);
        match (&self.transport, &failure) {
            (
                Transport::Tls { advice, .. } | Transport::Token { advice, .. },
                Failure::Tls { .. },
            ) => {
                reason = format!("{reason}; {advice}");
            }
            // A real scheduler speaks mutual TLS only and hangs up on plaintext, which tonic
            // reports as a status of its own making ("transport error", "h2 protocol error"),
            // with the cause attached; a server's answer has none. Say what happened, and what
            // is missing.
            (Transport::Plain, Failure::Status(status))
                if status.source().is_some() || is_broken_transport(status) =>
            {
                let cause = status
                    .source()
                    .map_or_else(|| status.message().to_owned(), connect_reason);
                reason = format!(
                    "the connection to {} failed ({cause}); {}",
                    self.route.target(),
                    crate::credentials::NO_CERTIFICATE_HINT
                );
            }
            // A scheduler that does not accept tokens requires a client certificate, and in
            // TLS 1.3 says so by breaking the first call.
            (Transport::Token { advice, .. }, Failure::Status(status))
                if status.source().is_some() || is_broken_transport(status) =>
            {
                let cause = status
                    .source()
                    .map_or_else(|| status.message().to_owned(), connect_reason);
                reason = format!(
                    "the connection to {} failed ({cause}); {}: the cluster may not accept \
                     bearer tokens (bearer_tokens = true on its schedulers), then call with a \
                     certificate instead; {advice}",
                    self.route.target(),
                    TOKEN_REFUSED_HINT
                );
            }
            (Transport::Plain, Failure::Connect { .. }) => {
                reason = format!("{reason}; {}", crate::credentials::NO_CERTIFICATE_HINT);
            }
            _ => {}
        }
        let status = match failure {
            Failure::Status(status) => Some(status),
            Failure::Connect { .. } | Failure::Tls { .. } | Failure::Timeout => None,
        };
        CallFailed { reason, status }.into()
    }

    /// Whether `err`, on a connection we made with TLS, is the handshake failing: a
    /// certificate refused by us (unknown issuer, expired, wrong name) or by the server (its
    /// alert), or a peer that does not speak TLS. `None` when it is not, or we did not use TLS.
    fn tls_failure(&self, err: &(dyn StdError + 'static)) -> Option<String> {
        if matches!(self.transport, Transport::Plain) {
            return None;
        }
        let mut cause = Some(err);
        while let Some(e) = cause {
            let text = e.to_string();
            let lower = text.to_lowercase();
            let is_tls = [
                "certificate",
                "alert",
                "tls",
                "handshake",
                "corrupt message",
            ]
            .iter()
            .any(|marker| lower.contains(marker))
                || e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData);
            if is_tls {
                return Some(connect_reason(e));
            }
            cause = e.source();
        }
        None
    }

    async fn attempt<Req, Resp, F, Fut>(
        &mut self,
        timeout: Duration,
        req: Req,
        rpc: &mut F,
    ) -> Result<Resp, Failure>
    where
        F: FnMut(Channel, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let channel = self.channel(timeout).await?;
        // The deadline is enforced here, not with a `grpc-timeout` header, so that "no answer"
        // is always `Failure::Timeout` whoever noticed it; dropping the call resets the stream,
        // which cancels it on the server too.
        match tokio::time::timeout(timeout, rpc(channel, req)).await {
            Err(_elapsed) => Err(Failure::Timeout),
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            // In TLS 1.3 the server judges our certificate after our side of the handshake is
            // done, so its refusal arrives as the first call breaking.
            Ok(Err(status)) => Err(self.judge_broken_call(status, timeout).await),
        }
    }

    /// A call over TLS that broke may be the server refusing our certificate: in TLS 1.3 its
    /// verdict comes after our side of the handshake, as the first call breaking, often
    /// without the alert's text; `handshake::refusal` then asks. Any other status is the
    /// server's answer, or a plain broken connection.
    async fn judge_broken_call(&self, status: Status, timeout: Duration) -> Failure {
        let Transport::Tls { material, .. } = &self.transport else {
            return Failure::Status(status);
        };
        // Only tonic's own statuses carry a cause; a server's answer never does.
        let Some(cause) = status.source() else {
            return Failure::Status(status);
        };
        if let Some(reason) = self.tls_failure(cause) {
            return Failure::Tls { reason };
        }
        let authority = self
            .route
            .target()
            .split_once("://")
            .map_or(self.route.target(), |(_, a)| a);
        let budget = timeout.min(CONNECT_TIMEOUT_MAX);
        match crate::handshake::refusal(authority, material, budget).await {
            Some(reason) => Failure::Tls { reason },
            None => Failure::Status(status),
        }
    }

    async fn channel(&mut self, timeout: Duration) -> Result<Channel, Failure> {
        let target = self.route.target().to_owned();
        if let Some((addr, channel)) = &self.channel
            && *addr == target
        {
            return Ok(channel.clone());
        }
        let mut endpoint = Endpoint::from_shared(target.clone())
            .map_err(|e| Failure::Connect {
                reason: connect_reason(&e),
            })?
            .connect_timeout(timeout.min(CONNECT_TIMEOUT_MAX));
        let tls = match &self.transport {
            Transport::Plain => None,
            Transport::Tls { material, .. } => Some(material.client()),
            Transport::Token { ca_pem, .. } => Some(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
                    .domain_name(sov_proto::tls::SCHEDULER_SERVER_NAME),
            ),
        };
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).map_err(|e| Failure::Tls {
                reason: connect_reason(&e),
            })?;
        }
        let bearer = Bearer(match &self.transport {
            Transport::Token { token, .. } => Some(token.clone()),
            _ => None,
        });
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| match self.tls_failure(&e) {
                Some(reason) => Failure::Tls { reason },
                None => Failure::Connect {
                    reason: connect_reason(&e),
                },
            })?;
        let channel = InterceptedService::new(channel, bearer);
        self.channel = Some((target, channel.clone()));
        Ok(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use sov_proto::v1::cluster_service_client::ClusterServiceClient;
    use sov_proto::v1::cluster_service_server::{ClusterService, ClusterServiceServer};
    use sov_proto::v1::{
        ClusterSnapshotChunk, ClusterSnapshotRequest, ClusterStatus, ClusterStatusRequest,
        JoinRequest, MembersRequest, MembersResponse, RemoveRequest,
    };
    use tonic::metadata::MetadataMap;

    fn unavailable_with_hint(hint: &str) -> Status {
        let mut md = MetadataMap::new();
        md.insert(LEADER_API_METADATA, hint.parse().unwrap());
        Status::with_metadata(Code::Unavailable, "cannot forward to leader", md)
    }

    fn list(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("http://10.0.0.{i}:7400")).collect()
    }

    #[test]
    fn endpoints_accept_host_port_and_http_urls() {
        assert_eq!(
            parse_endpoints("127.0.0.1:7400, http://10.0.0.2:7410/ ,localhost,[::1]:9,[::1]")
                .unwrap(),
            [
                "http://127.0.0.1:7400",
                "http://10.0.0.2:7410",
                "http://localhost:7400",
                "http://[::1]:9",
                "http://[::1]:7400"
            ]
        );
    }

    #[test]
    fn the_scheme_of_an_endpoint_does_not_choose_the_transport() {
        // Client dials https:// whenever a certificate is configured, plaintext otherwise.
        assert_eq!(
            parse_endpoints("https://a:1,http://a:1,a:1,https://b").unwrap(),
            ["http://a:1", "http://b:7400"]
        );
    }

    #[test]
    fn a_tls_route_follows_leader_hints_over_tls() {
        let mut r = Route::new(vec!["https://10.0.0.1:7400".into()]);
        r.begin_attempt();
        let retry = r
            .after_failure(
                &Failure::Status(unavailable_with_hint("10.0.0.9:7400")),
                true,
            )
            .unwrap();
        assert_eq!(retry.target, "https://10.0.0.9:7400");
    }

    #[test]
    fn a_failed_handshake_is_not_retried() {
        let f = Failure::Tls {
            reason: "invalid peer certificate: UnknownIssuer".into(),
        };
        assert_eq!(classify(&f, true), Action::GiveUp);
        let mut r = Route::new(list(2));
        r.begin_attempt();
        assert_eq!(r.after_failure(&f, true), None);
        assert_eq!(
            r.give_up_reason(&f, Duration::from_secs(10)),
            "TLS handshake with http://10.0.0.1:7400 failed (invalid peer certificate: \
             UnknownIssuer)"
        );
    }

    #[test]
    fn endpoints_drop_duplicates_and_blanks() {
        assert_eq!(
            parse_endpoints("a:1,,http://a:1, b:2,").unwrap(),
            ["http://a:1", "http://b:2"]
        );
    }

    #[test]
    fn endpoints_reject_what_cannot_be_dialled() {
        for (input, needle) in [
            ("grpc://a:1", "unsupported scheme"),
            ("a:1/path", "only a host and a port"),
            ("a:notaport", "invalid endpoint \"a:notaport\""),
            ("a:0", "port from 1"),
            (":7400", "invalid endpoint"),
            (" , ", "no endpoint given"),
        ] {
            let err = parse_endpoints(input).unwrap_err().0;
            assert!(err.contains(needle), "{input}: {err}");
        }
    }

    #[test]
    fn unavailable_with_leader_hint_redirects() {
        let f = Failure::Status(unavailable_with_hint("10.0.0.9:7400"));
        assert_eq!(
            classify(&f, true),
            Action::RetryAtLeader("http://10.0.0.9:7400".into())
        );
        assert_eq!(
            classify(&f, false),
            Action::RetryAtLeader("http://10.0.0.9:7400".into())
        );
    }

    #[test]
    fn unavailable_without_usable_hint_tries_next_endpoint() {
        let plain = Failure::Status(Status::unavailable("no leader"));
        assert_eq!(classify(&plain, true), Action::RetryNextEndpoint);
        for junk in ["", "not a/valid host"] {
            let f = Failure::Status(unavailable_with_hint(junk));
            assert_eq!(classify(&f, true), Action::RetryNextEndpoint, "{junk:?}");
        }
    }

    #[test]
    fn answers_about_the_request_are_never_retried() {
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::FailedPrecondition,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::Unimplemented,
            Code::Internal,
        ] {
            // Even a leader hint does not make a rejection retryable.
            let mut md = MetadataMap::new();
            md.insert(LEADER_API_METADATA, "10.0.0.9:7400".parse().unwrap());
            let f = Failure::Status(Status::with_metadata(code, "no", md));
            assert_eq!(classify(&f, true), Action::GiveUp, "{code:?}");
        }
    }

    #[test]
    fn connection_failures_and_timeouts_try_next_endpoint() {
        let refused = Failure::Connect {
            reason: "connection refused".into(),
        };
        assert_eq!(classify(&refused, false), Action::RetryNextEndpoint);
        assert_eq!(classify(&Failure::Timeout, true), Action::RetryNextEndpoint);
        assert_eq!(classify(&Failure::Timeout, false), Action::GiveUp);
        let deadline = Failure::Status(Status::deadline_exceeded("read index"));
        assert_eq!(classify(&deadline, true), Action::RetryNextEndpoint);
        assert_eq!(classify(&deadline, false), Action::GiveUp);
    }

    #[test]
    fn route_follows_hint_then_moves_along_the_list() {
        let mut r = Route::new(list(3));
        r.begin_attempt();
        let retry = r
            .after_failure(
                &Failure::Status(unavailable_with_hint("10.0.0.9:7400")),
                true,
            )
            .unwrap();
        assert_eq!(
            retry,
            Retry {
                target: "http://10.0.0.9:7400".into(),
                reason: "leader moved".into(),
                backoff: Duration::from_millis(200),
            }
        );
        r.begin_attempt();
        let retry = r
            .after_failure(&Failure::Status(Status::unavailable("stepping down")), true)
            .unwrap();
        assert_eq!(retry.target, "http://10.0.0.2:7400");
        assert_eq!(
            retry.reason,
            "http://10.0.0.9:7400: unavailable: stepping down"
        );
        assert_eq!(retry.backoff, Duration::from_millis(400));
    }

    #[test]
    fn a_hint_naming_an_address_that_just_refused_us_is_not_followed() {
        let mut r = Route::new(list(3));
        r.begin_attempt();
        let refused = Failure::Connect {
            reason: "connection refused".into(),
        };
        assert_eq!(
            r.after_failure(&refused, true).unwrap().target,
            "http://10.0.0.2:7400"
        );
        r.begin_attempt();
        // The follower still names the dead first endpoint as leader.
        let stale_hint = Failure::Status(unavailable_with_hint("10.0.0.1:7400"));
        let retry = r.after_failure(&stale_hint, true).unwrap();
        assert_eq!(retry.target, "http://10.0.0.3:7400");
    }

    #[test]
    fn a_connection_broken_mid_call_is_retried_elsewhere() {
        let broken = Failure::Status(Status::unknown("transport error"));
        assert_eq!(classify(&broken, true), Action::RetryNextEndpoint);
        let server_said_unknown = Failure::Status(Status::unknown("boom"));
        assert_eq!(classify(&server_said_unknown, true), Action::GiveUp);
    }

    #[test]
    fn route_spends_at_most_the_attempt_budget() {
        let mut r = Route::new(list(2));
        let mut backoffs = Vec::new();
        let f = Failure::Status(Status::unavailable("no leader"));
        for _ in 0..ATTEMPTS_MAX - 1 {
            r.begin_attempt();
            backoffs.push(r.after_failure(&f, true).unwrap().backoff.as_millis());
        }
        assert_eq!(backoffs, [200, 400, 800, 1600]);
        r.begin_attempt();
        assert_eq!(r.after_failure(&f, true), None);
        assert_eq!(
            r.give_up_reason(&f, Duration::from_secs(10)),
            "unavailable: no leader; gave up after 5 attempts"
        );
    }

    #[test]
    fn route_gives_up_at_once_on_a_rejection() {
        let mut r = Route::new(list(3));
        r.begin_attempt();
        let f = Failure::Status(Status::invalid_argument(
            "spec.name \"Foo\" must be a DNS label",
        ));
        assert_eq!(r.after_failure(&f, true), None);
        assert_eq!(
            r.give_up_reason(&f, Duration::from_secs(10)),
            "invalid argument: spec.name \"Foo\" must be a DNS label"
        );
    }

    #[test]
    fn route_stops_when_every_endpoint_refused() {
        let refused = Failure::Connect {
            reason: "connection refused".into(),
        };
        let mut r = Route::new(list(2));
        r.begin_attempt();
        assert_eq!(
            r.after_failure(&refused, true).unwrap().target,
            "http://10.0.0.2:7400"
        );
        r.begin_attempt();
        assert_eq!(r.after_failure(&refused, true), None);
        assert_eq!(
            r.give_up_reason(&refused, Duration::from_secs(10)),
            "cannot reach any scheduler at http://10.0.0.1:7400, http://10.0.0.2:7400 \
             (connection refused); is the cluster running? start one with: \
             cargo run --bin sov-scheduler -- dev"
        );
    }

    #[test]
    fn route_keeps_trying_while_some_endpoint_answered() {
        let refused = Failure::Connect {
            reason: "connection refused".into(),
        };
        let mut r = Route::new(list(2));
        r.begin_attempt();
        assert!(r.after_failure(&refused, true).is_some());
        r.begin_attempt();
        let no_leader = Failure::Status(Status::unavailable("no leader"));
        assert_eq!(
            r.after_failure(&no_leader, true).unwrap().target,
            "http://10.0.0.1:7400"
        );
        r.begin_attempt();
        // Endpoint 1 refused once, but endpoint 2 is up: worth another round.
        assert_eq!(
            r.after_failure(&refused, true).unwrap().target,
            "http://10.0.0.2:7400"
        );
    }

    #[test]
    fn every_call_gets_the_whole_budget() {
        let mut r = Route::new(list(2));
        let f = Failure::Status(Status::unavailable("no leader"));
        for _ in 0..ATTEMPTS_MAX - 1 {
            r.begin_attempt();
            assert!(r.after_failure(&f, true).is_some());
        }
        r.begin_attempt();
        r.answered();
        // A second call of the same command (a page, or Apply after Plan) starts afresh.
        r.begin_call();
        r.begin_attempt();
        assert!(r.after_failure(&f, true).is_some());
    }

    #[test]
    fn a_missed_poll_moves_on_and_never_runs_out() {
        let refused = Failure::Connect {
            reason: "connection refused".into(),
        };
        let mut r = Route::new(list(2));
        // Every endpoint refusing ends a call, but only misses a poll.
        for expected in ["http://10.0.0.2:7400", "http://10.0.0.1:7400"].repeat(4) {
            let before = r.target().to_owned();
            assert_eq!(
                r.after_missed_poll(&refused),
                Some(format!("{before} unreachable (connection refused)"))
            );
            assert_eq!(r.target(), expected);
        }
        let hinted = Failure::Status(unavailable_with_hint("10.0.0.9:7400"));
        assert!(r.after_missed_poll(&hinted).is_some());
        assert_eq!(r.target(), "http://10.0.0.9:7400");
        let answer = Failure::Status(Status::not_found("deployment \"x\" does not exist"));
        assert_eq!(r.after_missed_poll(&answer), None);
    }

    #[test]
    fn timeouts_are_reported_with_the_deadline() {
        let mut r = Route::new(list(1));
        r.begin_attempt();
        assert_eq!(r.after_failure(&Failure::Timeout, false), None);
        let reason = r.give_up_reason(&Failure::Timeout, Duration::from_secs(120));
        assert!(
            reason.starts_with("no answer from http://10.0.0.1:7400 within 120s"),
            "{reason}"
        );
    }

    #[test]
    fn reasons_are_short_phrases() {
        assert_eq!(
            tidy_reason("Connection refused (os error 111)"),
            "connection refused"
        );
        assert_eq!(tidy_reason("dns error"), "dns error");
        assert_eq!(tidy_reason(""), "unknown reason");
        assert_eq!(status_reason(&Status::not_found("")), "not found");
    }

    #[test]
    fn consistency_follows_stale_flag() {
        assert_eq!(read_consistency(true), ReadConsistency::Stale as i32);
        assert_eq!(
            read_consistency(false),
            ReadConsistency::Linearizable as i32
        );
    }

    /// A scheduler stand-in: `Status` answers with `reply` after `delay` and counts its calls.
    struct Fake {
        reply: fn(&str) -> Result<ClusterStatus, Status>,
        hint: String,
        delay: Duration,
        calls: Arc<AtomicUsize>,
    }

    #[tonic::async_trait]
    impl ClusterService for Fake {
        type SnapshotStream = tokio_stream::Empty<Result<ClusterSnapshotChunk, Status>>;

        async fn snapshot(
            &self,
            _: tonic::Request<ClusterSnapshotRequest>,
        ) -> Result<tonic::Response<Self::SnapshotStream>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn status(
            &self,
            _: tonic::Request<ClusterStatusRequest>,
        ) -> Result<tonic::Response<ClusterStatus>, Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            (self.reply)(&self.hint).map(tonic::Response::new)
        }
        async fn members(
            &self,
            _: tonic::Request<MembersRequest>,
        ) -> Result<tonic::Response<MembersResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn join(
            &self,
            _: tonic::Request<JoinRequest>,
        ) -> Result<tonic::Response<MembersResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn remove(
            &self,
            _: tonic::Request<RemoveRequest>,
        ) -> Result<tonic::Response<MembersResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
    }

    async fn serve(
        reply: fn(&str) -> Result<ClusterStatus, Status>,
        hint: String,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        serve_slow(reply, hint, Duration::ZERO).await
    }

    async fn serve_slow(
        reply: fn(&str) -> Result<ClusterStatus, Status>,
        hint: String,
        delay: Duration,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        serve_with(reply, hint, delay, None).await
    }

    async fn serve_with(
        reply: fn(&str) -> Result<ClusterStatus, Status>,
        hint: String,
        delay: Duration,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let fake = Fake {
            reply,
            hint,
            delay,
            calls: calls.clone(),
        };
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls).unwrap();
        }
        tokio::spawn(
            server
                .add_service(ClusterServiceServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (addr, calls)
    }

    async fn status_via(client: &mut Client) -> anyhow::Result<ClusterStatus> {
        client
            .call(ClusterStatusRequest {}, |ch, req| async move {
                ClusterServiceClient::new(ch).status(req).await
            })
            .await
    }

    #[tokio::test]
    async fn follows_leader_hint_over_grpc() {
        let (leader, leader_calls) = serve(
            |_| {
                Ok(ClusterStatus {
                    node_id: 1,
                    role: "leader".into(),
                    ..Default::default()
                })
            },
            String::new(),
        )
        .await;
        let (follower, follower_calls) =
            serve(|hint| Err(unavailable_with_hint(hint)), leader.to_string()).await;
        let mut client = Client::new(vec![format!("http://{follower}")], Duration::from_secs(5));
        let status = status_via(&mut client).await.unwrap();
        assert_eq!((status.node_id, status.role.as_str()), (1, "leader"));
        assert_eq!(follower_calls.load(Ordering::SeqCst), 1);
        assert_eq!(leader_calls.load(Ordering::SeqCst), 1);
        // The next call of the same command goes straight to the leader.
        status_via(&mut client).await.unwrap();
        assert_eq!(follower_calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn rejection_is_reported_after_one_attempt() {
        let (addr, calls) = serve(
            |_| Err(Status::not_found("deployment \"x\" not found")),
            String::new(),
        )
        .await;
        let mut client = Client::new(vec![format!("http://{addr}")], Duration::from_secs(5));
        let err = status_via(&mut client).await.unwrap_err();
        assert_eq!(err.to_string(), "not found: deployment \"x\" not found");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_rejection_keeps_the_server_answer_with_its_line_breaks() {
        let (addr, _) = serve(
            |_| {
                Err(Status::invalid_argument(
                    "invalid policy bundle:\na.cedar:1:5: unexpected token\nb.json:2:1: bad",
                ))
            },
            String::new(),
        )
        .await;
        let mut client = Client::new(vec![format!("http://{addr}")], Duration::from_secs(5));
        let err = status_via(&mut client).await.unwrap_err();
        let status = err.downcast_ref::<CallFailed>().unwrap().status.as_ref();
        assert_eq!(status.map(Status::code), Some(Code::InvalidArgument));
        assert_eq!(
            status.unwrap().message(),
            "invalid policy bundle:\na.cedar:1:5: unexpected token\nb.json:2:1: bad"
        );
    }

    #[tokio::test]
    async fn an_unreachable_cluster_leaves_no_server_answer() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut client = Client::new(vec![format!("http://{closed}")], Duration::from_secs(5));
        let err = status_via(&mut client).await.unwrap_err();
        assert!(err.downcast_ref::<CallFailed>().unwrap().status.is_none());
    }

    #[tokio::test]
    async fn refused_connection_names_the_endpoint() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut client = Client::new(vec![format!("http://{closed}")], Duration::from_secs(5));
        let err = status_via(&mut client).await.unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "cannot reach any scheduler at http://{closed} (connection refused); is the \
                 cluster running? start one with: cargo run --bin sov-scheduler -- dev; no \
                 client certificate configured (--tls-dir or SOV_TLS_DIR; see docs/security.md)"
            )
        );
    }

    #[tokio::test]
    async fn dead_endpoint_is_skipped_for_a_live_one() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (live, calls) = serve(|_| Ok(ClusterStatus::default()), String::new()).await;
        let mut client = Client::new(
            vec![format!("http://{closed}"), format!("http://{live}")],
            Duration::from_secs(5),
        );
        status_via(&mut client).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_command_may_make_more_calls_than_one_call_has_attempts() {
        let (addr, calls) = serve(|_| Ok(ClusterStatus::default()), String::new()).await;
        let mut client = Client::new(vec![format!("http://{addr}")], Duration::from_secs(5));
        for _ in 0..=ATTEMPTS_MAX {
            status_via(&mut client).await.unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), ATTEMPTS_MAX as usize + 1);
    }

    async fn poll_status(client: &mut Client) -> anyhow::Result<Polled<ClusterStatus>> {
        client
            .poll(ClusterStatusRequest {}, |ch, req| async move {
                ClusterServiceClient::new(ch).status(req).await
            })
            .await
    }

    #[tokio::test]
    async fn a_poll_misses_on_unavailable_and_fails_on_an_answer() {
        let (follower, _) = serve(
            |_| Err(Status::unavailable("no leader elected")),
            String::new(),
        )
        .await;
        let (live, live_calls) = serve(|_| Ok(ClusterStatus::default()), String::new()).await;
        let mut client = Client::new(
            vec![format!("http://{follower}"), format!("http://{live}")],
            Duration::from_secs(5),
        );
        match poll_status(&mut client).await.unwrap() {
            Polled::Missed(reason) => assert_eq!(
                reason,
                format!("http://{follower}: unavailable: no leader elected")
            ),
            Polled::Answer(a) => panic!("answered {a:?}"),
        }
        assert!(matches!(
            poll_status(&mut client).await.unwrap(),
            Polled::Answer(_)
        ));
        assert_eq!(live_calls.load(Ordering::SeqCst), 1);

        let (refusing, _) = serve(
            |_| Err(Status::not_found("deployment \"x\" does not exist")),
            String::new(),
        )
        .await;
        let mut client = Client::new(vec![format!("http://{refusing}")], Duration::from_secs(5));
        let err = poll_status(&mut client).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "not found: deployment \"x\" does not exist"
        );
    }

    #[tokio::test]
    async fn slow_node_is_left_for_the_next_endpoint() {
        let ok = |_: &str| Ok(ClusterStatus::default());
        let (slow, slow_calls) = serve_slow(ok, String::new(), Duration::from_secs(5)).await;
        let (fast, fast_calls) = serve(ok, String::new()).await;
        let mut client = Client::new(
            vec![format!("http://{slow}"), format!("http://{fast}")],
            Duration::from_millis(300),
        );
        status_via(&mut client).await.unwrap();
        assert_eq!(slow_calls.load(Ordering::SeqCst), 1);
        assert_eq!(fast_calls.load(Ordering::SeqCst), 1);
    }

    /// Credentials for the TLS tests: a CA, a scheduler certificate for the server, and an
    /// operator's for the client, in a temporary directory.
    struct Pki {
        _dir: tempfile::TempDir,
        server: sov_proto::tls::TlsMaterial,
        client: sov_proto::tls::TlsMaterial,
        expired: sov_proto::tls::TlsMaterial,
        /// The same names signed by another CA.
        other: sov_proto::tls::TlsMaterial,
    }

    fn pki() -> Pki {
        use sov_proto::identity::{Identity, Role};
        use sov_proto::tls::{Ca, valid_for_days};
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(&dir.path().join("ca"), "test CA").unwrap();
        let other_ca = Ca::init(&dir.path().join("other-ca"), "other CA").unwrap();
        let issue = |ca: &Ca, role, name: &str, out: &str, not_after| {
            let id = Identity::new(role, name).unwrap();
            ca.issue(&id, not_after, &[], &dir.path().join(out))
                .unwrap()
                .files
                .load()
                .unwrap()
        };
        let past = std::time::SystemTime::now() - Duration::from_secs(86_400);
        Pki {
            server: issue(&ca, Role::Scheduler, "s1", "s1", valid_for_days(1)),
            client: issue(&ca, Role::Operator, "ops", "ops", valid_for_days(1)),
            expired: issue(&ca, Role::Operator, "old", "ops", past),
            other: issue(&other_ca, Role::Operator, "ops", "other", valid_for_days(1)),
            _dir: dir,
        }
    }

    fn tls(material: &sov_proto::tls::TlsMaterial) -> Transport {
        Transport::Tls {
            material: material.clone(),
            advice: "ADVICE".into(),
        }
    }

    #[tokio::test]
    async fn mutual_tls_reaches_a_scheduler_of_the_same_ca_however_the_endpoint_is_written() {
        let pki = pki();
        let ok = |_: &str| Ok(ClusterStatus::default());
        let (addr, calls) =
            serve_with(ok, String::new(), Duration::ZERO, Some(pki.server.server())).await;
        for written in [
            format!("{addr}"),
            format!("http://{addr}"),
            format!("https://{addr}"),
        ] {
            let endpoints = parse_endpoints(&written).unwrap();
            let mut client =
                Client::with_transport(endpoints, Duration::from_secs(5), tls(&pki.client));
            status_via(&mut client).await.unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_failed_handshake_is_reported_at_once_with_what_to_check() {
        let pki = pki();
        let ok = |_: &str| Ok(ClusterStatus::default());
        let (tls_addr, calls) =
            serve_with(ok, String::new(), Duration::ZERO, Some(pki.server.server())).await;
        let (plain_addr, _) = serve(ok, String::new()).await;
        let mut foreign_cert = pki.client.clone();
        foreign_cert.cert_pem = pki.other.cert_pem.clone();
        foreign_cert.key_pem = pki.other.key_pem.clone();
        for (addr, material, cause) in [
            // The server refuses our certificate.
            (tls_addr, &pki.expired, "CertificateExpired"),
            (tls_addr, &foreign_cert, "UnknownCA"),
            // We refuse the server's.
            (tls_addr, &pki.other, "UnknownIssuer"),
            // The server does not speak TLS.
            (plain_addr, &pki.client, "corrupt message"),
        ] {
            let mut client = Client::with_transport(
                vec![format!("http://{addr}")],
                Duration::from_secs(5),
                tls(material),
            );
            let err = status_via(&mut client).await.unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("TLS handshake with https://{addr} failed (")),
                "{err}"
            );
            assert!(err.contains(cause) && err.ends_with("); ADVICE"), "{err}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn plaintext_failures_say_that_no_certificate_is_configured() {
        let pki = pki();
        let ok = |_: &str| Ok(ClusterStatus::default());
        let (tls_addr, _) =
            serve_with(ok, String::new(), Duration::ZERO, Some(pki.server.server())).await;
        let mut client = Client::new(vec![format!("http://{tls_addr}")], Duration::from_secs(5));
        let err = status_via(&mut client).await.unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("the connection to http://{tls_addr} failed (")),
            "{err}"
        );
        assert!(
            err.ends_with(&format!("); {}", crate::credentials::NO_CERTIFICATE_HINT)),
            "{err}"
        );
    }
}
