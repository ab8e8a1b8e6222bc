//! The agent's view of the scheduler cluster: a list of endpoints, one cached gRPC channel per
//! endpoint, and which of them is believed to lead.
//!
//! Every channel is mutual TLS ([`tls_endpoint`]): `https://HOST:PORT`, presenting the agent's
//! certificate and trusting only the cluster CA. Endpoints are kept as `HOST:PORT` whatever
//! scheme the config or a leader hint wrote, so one scheduler gets one channel.
//!
//! Why follow the leader: heartbeats live in the leader's memory and assignment streams are
//! served by the leader (see `scheduler/src/api/agents.rs`). A follower answers UNAVAILABLE
//! with the `sov-leader-api` trailer; [`Schedulers::failed`] moves to that address, or to the
//! next configured endpoint when there is no hint. Retries are the caller's, with
//! [`Backoff`]: capped, jittered, reset on success.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use sov_proto::v1::agent_service_client::AgentServiceClient;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::config::scheduler_address;

/// Connection attempts give up after this long (the agent retries with backoff).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 keepalive, so a dead scheduler behind a silent network is noticed in seconds, not at
/// the next TCP timeout.
const KEEPALIVE: Duration = Duration::from_secs(5);
/// Unary calls (register, heartbeat, report) wait at most this long.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Channels cached at most (configured endpoints plus leaders learnt from hints).
const CHANNELS_MAX: usize = 64;

/// A leader hint naming an endpoint that could not be reached this recently is ignored:
/// followers keep naming a dead leader until they elect a new one.
const UNREACHABLE_MEMORY: Duration = Duration::from_secs(3);

#[derive(Debug)]
struct Inner {
    /// Index into `endpoints` of the endpoint tried when no hint is known.
    next: usize,
    current: String,
    channels: HashMap<String, Channel>,
    /// The last endpoint that could not be reached (no connection at all), and when.
    unreachable: Option<(String, std::time::Instant)>,
}

/// Endpoints of the scheduler cluster and the one in use. Cheap to share behind an `Arc`.
pub struct Schedulers {
    /// `HOST:PORT` of each configured scheduler.
    endpoints: Vec<String>,
    tls: ClientTlsConfig,
    inner: Mutex<Inner>,
}

/// Not derived: the TLS configuration holds the private key, which no log may show.
impl std::fmt::Debug for Schedulers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schedulers")
            .field("endpoints", &self.endpoints)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Schedulers {
    /// `endpoints` must be non-empty `HOST:PORT` addresses ([`scheduler_address`] of each
    /// configured endpoint); `tls` comes from the agent's
    /// [`Credentials`](crate::credentials::Credentials).
    pub fn new(endpoints: Vec<String>, tls: ClientTlsConfig) -> Self {
        let current = endpoints.first().cloned().unwrap_or_default();
        Self {
            endpoints,
            tls,
            inner: Mutex::new(Inner {
                next: 0,
                current,
                channels: HashMap::new(),
                unreachable: None,
            }),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The endpoint in use now (`HOST:PORT`).
    pub fn current(&self) -> String {
        self.inner().current.clone()
    }

    /// A client of the endpoint in use. Connects lazily: the first call dials.
    pub fn client(&self) -> anyhow::Result<(String, AgentServiceClient<Channel>)> {
        let mut inner = self.inner();
        let url = inner.current.clone();
        if !inner.channels.contains_key(&url) {
            if inner.channels.len() >= CHANNELS_MAX {
                inner.channels.clear();
            }
            let channel = tls_endpoint(&url, &self.tls)?
                .http2_keep_alive_interval(KEEPALIVE)
                .keep_alive_timeout(KEEPALIVE)
                .keep_alive_while_idle(true)
                .connect_lazy();
            inner.channels.insert(url.clone(), channel);
        }
        let channel = inner.channels[&url].clone();
        Ok((url, AgentServiceClient::new(channel)))
    }

    /// Picks where to go after `status` from `endpoint`: the leader it named, else the next
    /// configured endpoint. Returns the new endpoint.
    pub fn failed(&self, endpoint: &str, status: &tonic::Status) -> String {
        let hint = leader_hint(status);
        let mut inner = self.inner();
        if hint.is_none() && status.code() == tonic::Code::Unavailable {
            inner.unreachable = Some((endpoint.to_string(), std::time::Instant::now()));
        }
        if inner.current != endpoint {
            // Someone else already moved on; keep their choice.
            return inner.current.clone();
        }
        let dead = |leader: &str, inner: &Inner| {
            inner
                .unreachable
                .as_ref()
                .is_some_and(|(e, at)| e == leader && at.elapsed() < UNREACHABLE_MEMORY)
        };
        inner.current = match hint {
            Some(leader) if leader != endpoint && !dead(&leader, &inner) => leader,
            _ => {
                inner.next = (inner.next + 1) % self.endpoints.len().max(1);
                self.endpoints
                    .get(inner.next)
                    .cloned()
                    .unwrap_or_else(|| endpoint.to_string())
            }
        };
        inner.current.clone()
    }
}

/// A channel's endpoint for scheduler `address` (`HOST:PORT`): mutual TLS with `tls`, bounded
/// connection attempts, no Nagle delay for small messages. Callers add their keepalive.
pub fn tls_endpoint(address: &str, tls: &ClientTlsConfig) -> anyhow::Result<Endpoint> {
    Ok(sov_proto::tls::scheduler_endpoint(address, Some(tls))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true))
}

/// The leader's `HOST:PORT` a follower named in its answer, if it named a valid one.
pub fn leader_hint(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get(sov_proto::LEADER_API_METADATA)
        .and_then(|v| v.to_str().ok())
        .and_then(|addr| scheduler_address(addr).ok())
}

/// A unary request bounded by [`CALL_TIMEOUT`]: tonic sends it as `grpc-timeout` (the server
/// gives up too) and its channel enforces it on the client, so a hung server cannot hang the
/// call.
pub fn with_timeout<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

/// Bounds the opening of a server stream (until its first response headers) on the client
/// side. A `grpc-timeout` cannot serve here: it would be a deadline for the whole stream.
pub async fn bounded<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<tonic::Response<T>, tonic::Status> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no answer within {CALL_TIMEOUT:?}"
        ))),
    }
}

/// Capped exponential backoff with +-25% jitter, so a fleet that lost its leader does not
/// reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The pause before the next attempt; each call doubles the following one up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = rand::random_range(0.75..1.25);
        base.mul_f64(jitter)
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// One line without control characters and at most `max` bytes: what the scheduler accepts as
/// a status reason.
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_leader(hint: &str) -> tonic::Status {
        let mut status = tonic::Status::unavailable("not the leader");
        status
            .metadata_mut()
            .insert(sov_proto::LEADER_API_METADATA, hint.parse().unwrap());
        status
    }

    #[test]
    fn follows_leader_hints_then_rotates() {
        let s = Schedulers::new(vec!["a:1".into(), "b:2".into()], ClientTlsConfig::new());
        assert_eq!(s.current(), "a:1");
        let status = not_leader("127.0.0.1:9");
        assert_eq!(s.failed("a:1", &status), "127.0.0.1:9");
        // A stale failure report from the old endpoint does not undo the move.
        assert_eq!(s.failed("a:1", &status), "127.0.0.1:9");
        let plain = tonic::Status::unavailable("connection refused");
        assert_eq!(s.failed("127.0.0.1:9", &plain), "b:2");
        // b is a follower that still names the dead 127.0.0.1:9 as leader: not believed.
        assert_eq!(s.failed("b:2", &not_leader("127.0.0.1:9")), "a:1");
    }

    #[test]
    fn a_leader_hint_with_a_scheme_is_the_same_scheduler() {
        let s = Schedulers::new(vec!["a:1".into(), "b:2".into()], ClientTlsConfig::new());
        assert_eq!(s.failed("a:1", &not_leader("http://b:2")), "b:2");
        assert_eq!(s.failed("b:2", &not_leader("https://a:1")), "a:1");
        // A hint that is no endpoint is ignored: rotate instead.
        assert_eq!(s.failed("a:1", &not_leader("a:1/x")), "b:2");
        assert_eq!(leader_hint(&not_leader("")), None);
    }

    #[tokio::test]
    async fn one_channel_per_scheduler() {
        let s = Schedulers::new(vec!["127.0.0.1:1".into()], ClientTlsConfig::new());
        let (address, _) = s.client().expect("a lazy channel");
        assert_eq!(address, "127.0.0.1:1");
        assert_eq!(s.inner().channels.len(), 1);
        s.client().expect("the same channel");
        assert_eq!(s.inner().channels.len(), 1);
    }

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let d: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(75) && d[0] <= Duration::from_millis(125));
        assert!(d[4] <= Duration::from_millis(500), "capped: {d:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }

    #[test]
    fn reasons_become_one_bounded_line() {
        assert_eq!(one_line("exit 1\nstack trace", 100), "exit 1 stack trace");
        assert_eq!(one_line("ééé", 4), "éé");
    }
}
