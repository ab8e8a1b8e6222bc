//! Node liveness, decided on the leader from heartbeats kept in its memory.
//!
//! Why memory and not Raft: at a 1 s heartbeat, 5,000 nodes would be 5,000 commits a second of
//! nothing. Only transitions are committed: nodes silent past their TTL go `down` together in
//! one `SetNodeStatus` command, and a down node heard from again goes back to `ready`.
//!
//! Why a grace period: a new leader has heard nobody yet. Every node counts as seen at the
//! moment this replica started leading, and nothing is marked down until `failover_grace_ms`
//! has passed, so an election never marks the fleet down.
//!
//! Why the pace stretches with the fleet (Nomad's `max_heartbeats_per_second` does the same):
//! every heartbeat costs the leader a TLS-protected gRPC call, about 57 µs of CPU. At a 1 s
//! interval 10,000 nodes would keep more than half a core busy on "still here", the core that
//! plans and applies placements when rules change. So the leader asks for at most
//! [`LivenessConfig::max_heartbeats_per_s`] heartbeats a second from the whole fleet: past
//! that many nodes per interval, the interval it tells agents grows with the node count, and
//! the TTL with it (at least [`TTL_INTERVALS`] intervals), the trade Kubernetes makes with its
//! 10 s node leases. Each node is judged by the longest interval it was told, so a fleet that
//! shrinks never has a node marked down for keeping the slower pace it was given.
//!
//! [`Liveness`] holds the clocks and makes the decision ([`Liveness::due`], pure given its
//! inputs, unit-tested with explicit instants); [`liveness_loop`] proposes what it decides.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::raft::Replica;
use crate::state::node::NodeStatus;
use crate::state::{Outcome, Proposal, STATUS_BATCH_MAX, State};

/// How agents heartbeat and when silence means `down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LivenessConfig {
    /// How often agents are told to heartbeat.
    pub heartbeat_interval_ms: u64,
    /// A node silent this long is marked down.
    pub heartbeat_ttl_ms: u64,
    /// After this replica becomes leader, nobody is marked down for this long.
    pub failover_grace_ms: u64,
    /// The most heartbeats a second the leader asks of the whole fleet: with more nodes than
    /// this many per `heartbeat_interval_ms`, the interval agents are told grows to
    /// `nodes / max_heartbeats_per_s` seconds (at most [`HEARTBEAT_INTERVAL_MS_MAX`]) and the TTL
    /// to at least [`TTL_INTERVALS`] of those intervals. 0 keeps the configured pace at any
    /// fleet size.
    pub max_heartbeats_per_s: u64,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 1_000,
            heartbeat_ttl_ms: 10_000,
            failover_grace_ms: 10_000,
            max_heartbeats_per_s: 1_000,
        }
    }
}

pub const HEARTBEAT_INTERVAL_MS_MIN: u64 = 100;
pub const HEARTBEAT_INTERVAL_MS_MAX: u64 = 60_000;
pub const HEARTBEAT_TTL_MS_MAX: u64 = 3_600_000;
/// Bounds of a non-zero [`LivenessConfig::max_heartbeats_per_s`].
pub const MAX_HEARTBEATS_PER_S_MIN: u64 = 10;
pub const MAX_HEARTBEATS_PER_S_MAX: u64 = 1_000_000;
/// A node on a stretched pace is marked down after this many intervals of silence, or the
/// configured TTL if that is longer.
pub const TTL_INTERVALS: u64 = 4;

/// What the leader asks of agents for a fleet of a given size: how often to heartbeat, and how
/// long a silence means `down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    pub interval_ms: u64,
    pub ttl_ms: u64,
}

impl Pace {
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }
}

impl LivenessConfig {
    pub fn check(&self) -> anyhow::Result<()> {
        let interval = self.heartbeat_interval_ms;
        anyhow::ensure!(
            (HEARTBEAT_INTERVAL_MS_MIN..=HEARTBEAT_INTERVAL_MS_MAX).contains(&interval),
            "liveness.heartbeat_interval_ms: {interval} must be between {HEARTBEAT_INTERVAL_MS_MIN} and {HEARTBEAT_INTERVAL_MS_MAX}"
        );
        let ttl = self.heartbeat_ttl_ms;
        anyhow::ensure!(
            ttl >= 2 * interval && ttl <= HEARTBEAT_TTL_MS_MAX,
            "liveness.heartbeat_ttl_ms: {ttl} must be at least twice the heartbeat interval ({interval} ms) and at most {HEARTBEAT_TTL_MS_MAX}, so one lost heartbeat never marks a node down"
        );
        let grace = self.failover_grace_ms;
        anyhow::ensure!(
            grace >= interval && grace <= HEARTBEAT_TTL_MS_MAX,
            "liveness.failover_grace_ms: {grace} must be between the heartbeat interval ({interval} ms) and {HEARTBEAT_TTL_MS_MAX}"
        );
        let rate = self.max_heartbeats_per_s;
        anyhow::ensure!(
            rate == 0 || (MAX_HEARTBEATS_PER_S_MIN..=MAX_HEARTBEATS_PER_S_MAX).contains(&rate),
            "liveness.max_heartbeats_per_s: {rate} must be 0 (never stretch the heartbeat interval) or between {MAX_HEARTBEATS_PER_S_MIN} and {MAX_HEARTBEATS_PER_S_MAX}"
        );
        Ok(())
    }

    /// The pace for a fleet of `nodes` registered nodes: the configured one while the fleet's
    /// heartbeats stay within `max_heartbeats_per_s`, stretched beyond.
    pub fn pace(&self, nodes: usize) -> Pace {
        let base = self.heartbeat_interval_ms;
        let interval_ms = match self.max_heartbeats_per_s {
            0 => base,
            rate => {
                let spread = (nodes as u64).saturating_mul(1_000).div_ceil(rate);
                base.max(spread.min(HEARTBEAT_INTERVAL_MS_MAX))
            }
        };
        self.pace_at(interval_ms)
    }

    /// The pace of an agent told to heartbeat every `interval_ms`.
    fn pace_at(&self, interval_ms: u64) -> Pace {
        let ttl_ms = if interval_ms > self.heartbeat_interval_ms {
            self.heartbeat_ttl_ms.max(interval_ms * TTL_INTERVALS)
        } else {
            self.heartbeat_ttl_ms
        };
        Pace {
            interval_ms,
            ttl_ms,
        }
    }

    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.failover_grace_ms)
    }

    /// How often the leader checks for silent nodes: often enough that a node goes down
    /// within a quarter TTL of its deadline, never busier than every 100 ms.
    pub fn check_every(&self) -> Duration {
        Duration::from_millis((self.heartbeat_ttl_ms / 4).clamp(100, 1_000))
    }
}

/// Transitions the leader should propose now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    pub down: Vec<String>,
    pub ready: Vec<String>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The term this replica leads in, and when it noticed it leads.
    lead: Option<(u64, Instant)>,
    /// Last heartbeat per registered node name, and the interval that node was told then.
    /// Bounded by the node count: only names of registered nodes are inserted.
    last_seen: HashMap<String, (Instant, u64)>,
    /// Down nodes that heartbeated since; they go back to ready.
    revived: BTreeSet<String>,
}

/// Heartbeat clocks of one leader. Cheap to share.
#[derive(Debug)]
pub struct Liveness {
    pub config: LivenessConfig,
    inner: Mutex<Inner>,
}

impl Liveness {
    pub fn new(config: LivenessConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a heartbeat (or a registration) of a registered node whose committed status is
    /// `status`, in a fleet of `nodes` registered nodes; returns the pace to tell it.
    pub fn heartbeat(&self, name: &str, status: NodeStatus, nodes: usize, now: Instant) -> Pace {
        let pace = self.config.pace(nodes);
        let mut inner = self.inner();
        match inner.last_seen.get_mut(name) {
            Some(seen) => *seen = (now, pace.interval_ms),
            None => {
                inner
                    .last_seen
                    .insert(name.to_string(), (now, pace.interval_ms));
            }
        }
        if status == NodeStatus::Down {
            inner.revived.insert(name.to_string());
        }
        pace
    }

    /// Decides which nodes change status, given that this replica leads in `term` (or does not
    /// lead: `None`). Forgets nodes that are no longer registered.
    pub fn due(&self, state: &State, term: Option<u64>, now: Instant) -> Due {
        let mut inner = self.inner();
        let Some(term) = term else {
            inner.lead = None;
            inner.revived.clear();
            return Due::default();
        };
        let since = match inner.lead {
            Some((t, since)) if t == term => since,
            _ => {
                inner.lead = Some((term, now));
                now
            }
        };
        inner
            .last_seen
            .retain(|name, _| state.nodes.contains_key(name));
        let ttl = self.config.pace(state.nodes.len()).ttl();
        let mut due = Due::default();
        let in_grace = now.saturating_duration_since(since) < self.config.grace();
        for node in state.nodes.values() {
            match node.status {
                NodeStatus::Ready if !in_grace => {
                    // Heartbeats heard under an earlier leadership are not evidence for this
                    // one: count from whichever is later. A node told a slower pace than the
                    // fleet's size calls for now keeps that pace until its next answer.
                    let (seen, ttl) = match inner.last_seen.get(&node.name) {
                        Some(&(seen, told)) => {
                            (seen.max(since), ttl.max(self.config.pace_at(told).ttl()))
                        }
                        None => (since, ttl),
                    };
                    if now.saturating_duration_since(seen) > ttl {
                        due.down.push(node.name.clone());
                    }
                }
                NodeStatus::Down if inner.revived.contains(&node.name) => {
                    due.ready.push(node.name.clone());
                }
                _ => {}
            }
        }
        inner.revived.retain(|name| {
            state
                .nodes
                .get(name)
                .is_some_and(|n| n.status == NodeStatus::Down)
        });
        due
    }
}

/// On the leader: marks silent nodes down and revived ones ready, in batches of at most
/// `STATUS_BATCH_MAX` names per command.
pub async fn liveness_loop(
    replica: Arc<Replica>,
    liveness: Arc<Liveness>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(liveness.config.check_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pace_logged = liveness.config.pace(0);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        let metrics = replica.metrics();
        let term = (metrics.state == openraft::ServerState::Leader).then_some(metrics.current_term);
        let (due, nodes) = {
            let applied = replica.sm.read();
            (
                liveness.due(&applied.state, term, Instant::now()),
                applied.state.nodes.len(),
            )
        };
        let pace = liveness.config.pace(nodes);
        if term.is_some() && pace != pace_logged {
            tracing::info!(
                nodes,
                interval_ms = pace.interval_ms,
                ttl_ms = pace.ttl_ms,
                max_heartbeats_per_s = liveness.config.max_heartbeats_per_s,
                "heartbeat pace for the fleet's size"
            );
            pace_logged = pace;
        }
        for (names, status) in [(due.down, NodeStatus::Down), (due.ready, NodeStatus::Ready)] {
            for chunk in names.chunks(STATUS_BATCH_MAX) {
                propose_status(&replica, chunk.to_vec(), status, pace).await;
            }
        }
    }
}

async fn propose_status(replica: &Replica, names: Vec<String>, status: NodeStatus, pace: Pace) {
    let count = names.len();
    let sample: Vec<String> = names.iter().take(10).cloned().collect();
    match replica
        .propose(Proposal::SetNodeStatus { names, status })
        .await
    {
        Ok(resp) => {
            if let Outcome::NodeStatusSet { changed } = resp.outcome
                && !changed.is_empty()
            {
                match status {
                    NodeStatus::Down => tracing::warn!(
                        nodes = changed.len(),
                        first = ?sample,
                        ttl_ms = pace.ttl_ms,
                        "nodes marked down: no heartbeat within the TTL"
                    ),
                    NodeStatus::Ready => tracing::info!(
                        nodes = changed.len(),
                        first = ?sample,
                        "nodes back to ready: heartbeats resumed"
                    ),
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, nodes = count, ?status, "liveness change not committed; will retry")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::node::Node;

    fn state(nodes: &[(&str, NodeStatus)]) -> State {
        let mut s = State::default();
        for (name, status) in nodes {
            s.nodes.insert(
                name.to_string(),
                Node {
                    name: name.to_string(),
                    status: *status,
                    ..Node::default()
                },
            );
        }
        s
    }

    fn liveness() -> Liveness {
        Liveness::new(LivenessConfig {
            heartbeat_interval_ms: 1_000,
            heartbeat_ttl_ms: 5_000,
            failover_grace_ms: 8_000,
            max_heartbeats_per_s: 0,
        })
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn silent_node_goes_down_after_ttl_not_before() {
        let l = liveness();
        let s = state(&[("a", NodeStatus::Ready), ("b", NodeStatus::Ready)]);
        let t0 = Instant::now();
        assert_eq!(l.due(&s, Some(1), t0), Due::default());
        // Past the grace, "a" keeps heartbeating, "b" is silent.
        for t in 1..=12 {
            l.heartbeat("a", NodeStatus::Ready, 2, t0 + S(t));
        }
        assert_eq!(l.due(&s, Some(1), t0 + S(5)).down, Vec::<String>::new());
        let due = l.due(&s, Some(1), t0 + S(12));
        assert_eq!(due.down, vec!["b".to_string()]);
        assert!(due.ready.is_empty());
    }

    #[test]
    fn no_node_goes_down_during_the_grace_after_a_leader_change() {
        let l = liveness();
        let s = state(&[("a", NodeStatus::Ready)]);
        let t0 = Instant::now();
        l.heartbeat("a", NodeStatus::Ready, 2, t0);
        assert!(l.due(&s, Some(1), t0).down.is_empty());
        // Losing leadership, then leading again in a later term: the clock restarts, even
        // though "a" was last heard long ago.
        assert_eq!(l.due(&s, None, t0 + S(20)), Due::default());
        assert!(l.due(&s, Some(3), t0 + S(30)).down.is_empty());
        assert!(l.due(&s, Some(3), t0 + S(37)).down.is_empty(), "in grace");
        assert_eq!(l.due(&s, Some(3), t0 + S(39)).down, vec!["a".to_string()]);
    }

    #[test]
    fn a_down_node_that_heartbeats_comes_back() {
        let l = liveness();
        let s = state(&[("a", NodeStatus::Down), ("b", NodeStatus::Down)]);
        let t0 = Instant::now();
        assert_eq!(l.due(&s, Some(1), t0), Due::default());
        l.heartbeat("a", NodeStatus::Down, 2, t0 + S(1));
        assert_eq!(l.due(&s, Some(1), t0 + S(1)).ready, vec!["a".to_string()]);
        // Once committed ready, it is not proposed again.
        let s = state(&[("a", NodeStatus::Ready), ("b", NodeStatus::Down)]);
        assert!(l.due(&s, Some(1), t0 + S(2)).ready.is_empty());
    }

    #[test]
    fn followers_decide_nothing_and_forget_unregistered_nodes() {
        let l = liveness();
        let t0 = Instant::now();
        l.heartbeat("gone", NodeStatus::Ready, 2, t0);
        assert_eq!(l.due(&state(&[]), None, t0 + S(60)), Due::default());
        l.due(&state(&[]), Some(1), t0 + S(60));
        assert!(l.inner().last_seen.is_empty());
    }

    #[test]
    fn the_pace_stretches_with_the_fleet_past_the_heartbeat_budget() {
        let c = LivenessConfig::default();
        let base = Pace {
            interval_ms: 1_000,
            ttl_ms: 10_000,
        };
        assert_eq!(c.pace(0), base);
        assert_eq!(c.pace(1_000), base);
        assert_eq!(
            c.pace(1_001),
            Pace {
                interval_ms: 1_001,
                ttl_ms: 10_000
            }
        );
        assert_eq!(
            c.pace(10_000),
            Pace {
                interval_ms: 10_000,
                ttl_ms: 40_000
            }
        );
        // Capped at the longest interval agents accept.
        assert_eq!(c.pace(10_000_000).interval_ms, HEARTBEAT_INTERVAL_MS_MAX);
        assert_eq!(c.pace(10_000_000).ttl_ms, 4 * HEARTBEAT_INTERVAL_MS_MAX);
        // 0 never stretches.
        let fixed = LivenessConfig {
            max_heartbeats_per_s: 0,
            ..c
        };
        assert_eq!(fixed.pace(1_000_000), base);
    }

    #[test]
    fn a_stretched_pace_stretches_the_ttl_and_a_shrinking_fleet_keeps_the_pace_told() {
        // 10 heartbeats a second for 30 nodes: every 3 s, down after 12 s.
        let l = Liveness::new(LivenessConfig {
            max_heartbeats_per_s: 10,
            ..liveness().config
        });
        let names: Vec<String> = (0..30).map(|i| format!("n{i}")).collect();
        let many: Vec<(&str, NodeStatus)> = names
            .iter()
            .map(|n| (n.as_str(), NodeStatus::Ready))
            .collect();
        let s = state(&many);
        let t0 = Instant::now();
        assert!(l.due(&s, Some(1), t0).down.is_empty());
        for name in &names {
            let pace = l.heartbeat(name, NodeStatus::Ready, s.nodes.len(), t0 + S(9));
            assert_eq!(
                pace,
                Pace {
                    interval_ms: 3_000,
                    ttl_ms: 12_000
                }
            );
        }
        // Past the configured 5 s TTL but within the stretched 12 s: nobody is down.
        assert!(l.due(&s, Some(1), t0 + S(20)).down.is_empty());
        assert_eq!(l.due(&s, Some(1), t0 + S(22)).down.len(), 30);
        // The fleet shrinks to two nodes: the pace for two is the configured one, but a node
        // last told 3 s keeps its 12 s TTL until it is told otherwise.
        let few = state(&[("n0", NodeStatus::Ready), ("n1", NodeStatus::Ready)]);
        l.heartbeat("n0", NodeStatus::Ready, 30, t0 + S(30));
        let pace = l.heartbeat("n1", NodeStatus::Ready, 2, t0 + S(30));
        assert_eq!(pace.interval_ms, 1_000);
        assert_eq!(
            l.due(&few, Some(1), t0 + S(40)).down,
            vec!["n1".to_string()]
        );
        assert!(
            l.due(&few, Some(1), t0 + S(43))
                .down
                .contains(&"n0".to_string())
        );
    }

    #[test]
    fn config_bounds() {
        assert!(LivenessConfig::default().check().is_ok());
        let bad = LivenessConfig {
            heartbeat_ttl_ms: 1_500,
            ..LivenessConfig::default()
        };
        let err = bad.check().unwrap_err().to_string();
        assert!(err.contains("heartbeat_ttl_ms"), "{err}");
        for rate in [1, 9, 1_000_001] {
            let bad = LivenessConfig {
                max_heartbeats_per_s: rate,
                ..LivenessConfig::default()
            };
            let err = bad.check().unwrap_err().to_string();
            assert!(err.contains("max_heartbeats_per_s"), "{err}");
        }
    }
}
