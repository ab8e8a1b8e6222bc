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
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 1_000,
            heartbeat_ttl_ms: 10_000,
            failover_grace_ms: 10_000,
        }
    }
}

pub const HEARTBEAT_INTERVAL_MS_MIN: u64 = 100;
pub const HEARTBEAT_INTERVAL_MS_MAX: u64 = 60_000;
pub const HEARTBEAT_TTL_MS_MAX: u64 = 3_600_000;

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
        Ok(())
    }

    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ttl_ms)
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
    /// Last heartbeat per registered node name. Bounded by the node count: only names of
    /// registered nodes are inserted.
    last_seen: HashMap<String, Instant>,
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
    /// `status`.
    pub fn heartbeat(&self, name: &str, status: NodeStatus, now: Instant) {
        let mut inner = self.inner();
        match inner.last_seen.get_mut(name) {
            Some(seen) => *seen = now,
            None => {
                inner.last_seen.insert(name.to_string(), now);
            }
        }
        if status == NodeStatus::Down {
            inner.revived.insert(name.to_string());
        }
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
        let ttl = self.config.ttl();
        let mut due = Due::default();
        let in_grace = now.saturating_duration_since(since) < self.config.grace();
        for node in state.nodes.values() {
            match node.status {
                NodeStatus::Ready if !in_grace => {
                    // Heartbeats heard under an earlier leadership are not evidence for this
                    // one: count from whichever is later.
                    let seen = inner
                        .last_seen
                        .get(&node.name)
                        .map_or(since, |&seen| seen.max(since));
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
        let due = {
            let applied = replica.sm.read();
            liveness.due(&applied.state, term, Instant::now())
        };
        for (names, status) in [(due.down, NodeStatus::Down), (due.ready, NodeStatus::Ready)] {
            for chunk in names.chunks(STATUS_BATCH_MAX) {
                propose_status(&replica, chunk.to_vec(), status, &liveness.config).await;
            }
        }
    }
}

async fn propose_status(
    replica: &Replica,
    names: Vec<String>,
    status: NodeStatus,
    config: &LivenessConfig,
) {
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
                        ttl_ms = config.heartbeat_ttl_ms,
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
            l.heartbeat("a", NodeStatus::Ready, t0 + S(t));
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
        l.heartbeat("a", NodeStatus::Ready, t0);
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
        l.heartbeat("a", NodeStatus::Down, t0 + S(1));
        assert_eq!(l.due(&s, Some(1), t0 + S(1)).ready, vec!["a".to_string()]);
        // Once committed ready, it is not proposed again.
        let s = state(&[("a", NodeStatus::Ready), ("b", NodeStatus::Down)]);
        assert!(l.due(&s, Some(1), t0 + S(2)).ready.is_empty());
    }

    #[test]
    fn followers_decide_nothing_and_forget_unregistered_nodes() {
        let l = liveness();
        let t0 = Instant::now();
        l.heartbeat("gone", NodeStatus::Ready, t0);
        assert_eq!(l.due(&state(&[]), None, t0 + S(60)), Due::default());
        l.due(&state(&[]), Some(1), t0 + S(60));
        assert!(l.inner().last_seen.is_empty());
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
    }
}
