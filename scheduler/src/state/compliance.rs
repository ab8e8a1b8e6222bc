//! Continuous compliance inside `apply` (invariant I1): when the rules or the facts they read
//! change, every allocation they touch is judged again *in the same committed entry*, so there
//! is no index at which a forbidden replica runs unmarked.
//!
//! Owns: the re-check ([`recheck`]: decide with the policy, then enact), the per-rule actions
//! (`stop-now` stops, `migrate` marks the allocation migrating with a deadline, `audit` records a
//! violation; the strictest forbidding rule wins), the impact of a policy change and its plan
//! hash, the accounting of a deployment's replicas that the planner, the reconciler and apply
//! share ([`counted`], [`Tally`]), and applying the stops the leader's reconcile round planned
//! (each re-checked at its index).
//! Must not touch: clocks (time is the leader's stamp), placement choices (`crate::placement`),
//! the order of later moves (`crate::reconcile` plans them; apply only re-checks them).
//!
//! Triggers and their scope:
//!
//! | command | re-checks |
//! |---|---|
//! | `ApplyPolicy` (a new version) | every allocation |
//! | any command stamped on a new UTC day (`CheckCompliance` when nothing else is) | every allocation |
//! | `RegisterNode` with changed facts or inventory | the node's allocations |
//! | `SetDraining` | the node's allocations |
//! | `ApplyDeployment` with a changed spec | the deployment's allocations |

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::node::NodeStatus;
use super::plan::{PolicyGate, day_of};
use super::{Allocation, Desired, Standing, State};
use crate::history;
use crate::placement::{Forbid, PolicyOracle};
use crate::policy::OnChange;

/// Milliseconds in a UTC day.
pub const DAY_MS: i64 = 86_400_000;

/// Which allocations a re-check judges.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    All,
    Node(&'a str),
    Deployment(&'a str),
}

/// What a re-check did to one allocation, from the strictest rule that forbids it where it is.
/// Ordered from mildest to strictest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// No rule forbids it any more: a violation or a move is lifted.
    Cleared,
    /// Recorded as a violation; keeps running.
    Audit,
    /// Marked migrating: replaced elsewhere, then stopped (by its deadline at the latest).
    Migrate,
    /// Told to stop in this very entry.
    StopNow,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Cleared => "cleared",
            Action::Audit => "audit",
            Action::Migrate => "migrate",
            Action::StopNow => "stop-now",
        }
    }
}

/// One allocation whose standing a re-check changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub allocation: String,
    pub deployment: String,
    pub node: String,
    pub action: Action,
    /// The rules that forbid it where it is, in bundle order (empty for `Cleared` and for a
    /// move caused by a drain alone).
    pub rules: Vec<String>,
    /// Its node is draining (the move is the drain's).
    pub drain: bool,
}

/// What applying a policy version did (or, in `sovctl policy plan`, would do) to running
/// allocations, and the hash that pins it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Impact {
    /// In allocation id order.
    pub changes: Vec<Change>,
    /// Hex SHA-256 over the bundle hash, the version it replaces and every change: equal plan
    /// hashes mean the apply does exactly what the plan showed.
    pub plan_hash: String,
}

/// The plan hash of applying bundle `bundle_hash` over version `replaces` with `changes`.
pub fn plan_hash(bundle_hash: &str, replaces: u64, changes: &[Change]) -> String {
    let mut h = Sha256::new();
    h.update(b"sov-policy-plan-v1\n");
    h.update(bundle_hash.as_bytes());
    h.update(replaces.to_be_bytes());
    for c in changes {
        // Length-prefixed fields, so no two different lists hash alike.
        for field in [&c.allocation, &c.deployment, &c.node] {
            h.update((field.len() as u64).to_be_bytes());
            h.update(field.as_bytes());
        }
        h.update([c.action as u8, u8::from(c.drain)]);
        h.update((c.rules.len() as u64).to_be_bytes());
        for r in &c.rules {
            h.update((r.len() as u64).to_be_bytes());
            h.update(r.as_bytes());
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Why the leader's reconcile round wants an allocation stopped; apply stops it only if that is
/// still true at its own index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopWhy {
    /// It is migrating and its replacement `by` reports running (make-before-break done).
    Replaced { by: String },
    /// It is migrating and its deadline has passed.
    DeadlinePassed,
    /// Its node is down: its replicas are placed elsewhere.
    NodeDown,
    /// The deployment has more replicas that count than it wants.
    Surplus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStop {
    pub allocation: String,
    pub why: StopWhy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedStop {
    pub allocation: String,
    pub reason: String,
}

/// Whether an allocation takes part in serving: it should run and its node is not down, or
/// the cluster is disrupted ([`State::disrupted`]: then down nodes keep their replicas).
pub fn live(state: &State, a: &Allocation) -> bool {
    a.desired == Desired::Run
        && state
            .nodes
            .get(&a.node)
            .is_some_and(|n| n.status != NodeStatus::Down || state.disrupted())
}

/// Which nodes' allocations are live ([`live`]), looked up by hashing the node's name instead of
/// searching the state's node map: the passes over every allocation (apply of a plan,
/// reconcile, statuses) ask once per allocation, 100,000 times in a large cluster.
pub struct NodesUp<'s> {
    up: HashMap<&'s str, bool>,
}

impl<'s> NodesUp<'s> {
    pub fn of(state: &'s State) -> Self {
        let disrupted = state.disrupted();
        NodesUp {
            up: state
                .nodes
                .values()
                .map(|n| (n.name.as_str(), n.status != NodeStatus::Down || disrupted))
                .collect(),
        }
    }

    /// [`live`], from the precomputed node states.
    pub fn live(&self, a: &Allocation) -> bool {
        a.desired == Desired::Run && self.node_up(&a.node)
    }

    /// Whether `node` is registered and not down (or the cluster is disrupted).
    pub fn node_up(&self, node: &str) -> bool {
        self.up.get(node).copied().unwrap_or(false)
    }

    /// Whether the allocation `r` replaced is told to stop and its agent, still reachable, has
    /// not confirmed it yet: the move is not over, since both processes may still run.
    pub fn replaced_still_stopping(&self, state: &State, r: &Allocation) -> bool {
        !r.replaces.is_empty()
            && state.allocations.get(&r.replaces).is_some_and(|old| {
                old.desired == Desired::Stop
                    && old.status != super::AllocStatus::Stopped
                    && self.node_up(&old.node)
            })
    }
}

/// The live, not itself migrating, allocation that took over from `a`, if any.
pub fn live_replacement<'s>(state: &'s State, a: &Allocation) -> Option<&'s Allocation> {
    let Standing::Migrating { replacement, .. } = &a.standing else {
        return None;
    };
    state
        .allocations
        .get(replacement)
        .filter(|r| live(state, r) && !r.standing.is_migrating())
}

/// Whether `a` counts toward its deployment's replicas: live, and not a migrating allocation
/// whose replacement already counts in its place. The planner fills a deployment up to its
/// replica count of these; the reconciler stops any beyond it.
pub fn counted(state: &State, a: &Allocation) -> bool {
    live(state, a) && live_replacement(state, a).is_none()
}

/// How the allocations of one deployment stand, in one pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Allocations that count toward the replica count ([`counted`]).
    pub counted: u32,
    /// Live migrating allocations without a live replacement: each needs one.
    pub unreplaced: u32,
    /// Live migrating allocations whose replacement is live but not running yet: the
    /// replacements in flight, bounded by `max_parallel`.
    pub inflight: u32,
    /// Allocations that should run and whose agent reports them running.
    pub running: u32,
}

impl Tally {
    pub fn add(&mut self, state: &State, up: &NodesUp, a: &Allocation) {
        if a.desired == Desired::Run && a.status == super::AllocStatus::Running {
            self.running += 1;
        }
        if !up.live(a) {
            return;
        }
        match live_replacement(state, a) {
            None => {
                self.counted += 1;
                self.unreplaced += u32::from(a.standing.is_migrating());
            }
            Some(r) => self.inflight += u32::from(r.status != super::AllocStatus::Running),
        }
    }
}

/// Called first by every `apply`: moves the state's policy day forward to the command's, and
/// when it moved, re-checks every allocation (certifications are in force by day).
pub(super) fn enter_day(state: &mut State, index: u64, at_ms: i64) {
    let day = at_ms.div_euclid(DAY_MS);
    if day <= state.day {
        return;
    }
    if state.day > 0 {
        // Certifications valid until a day now past: on record before what they cause.
        let (from, to) = (day_of(state.day * DAY_MS), day_of(day * DAY_MS));
        let expired: Vec<history::What> = state
            .nodes
            .values()
            .flat_map(|n| {
                n.facts
                    .certifications
                    .iter()
                    .filter(|(_, until)| {
                        from.as_str() <= until.as_str() && until.as_str() < to.as_str()
                    })
                    .map(|(name, until)| history::What::CertificationExpired {
                        node: n.name.clone(),
                        certification: name.clone(),
                        valid_until: until.clone(),
                    })
            })
            .collect();
        for e in expired {
            history::record(state, e);
        }
    }
    state.day = day;
    recheck(state, index, at_ms, Scope::All);
}

/// The calendar day (YYYY-MM-DD) policy is decided for at this state: certifications valid
/// until the day before are not in force.
pub fn today(state: &State) -> String {
    day_of(state.day * DAY_MS)
}

/// Judges the allocations in `scope` against the policy in force and enacts the result in
/// this entry. Returns what changed, in allocation id order.
pub(super) fn recheck(state: &mut State, index: u64, at_ms: i64, scope: Scope) -> Vec<Change> {
    let Some((version, _)) = state.active_policy() else {
        // Nothing was ever placed without a policy in force (fail closed), so nothing to judge.
        return Vec::new();
    };
    let mut gate = PolicyGate::for_state(state, &today(state));
    let decided = decide(state, &mut gate, version, at_ms, scope);
    drop(gate);
    enact(state, index, &decided);
    decided.into_iter().map(|d| d.change).collect()
}

/// One allocation's new standing, as decided.
pub(super) struct Decided {
    pub change: Change,
    /// `None`: stop it now, with this reason.
    pub standing: Option<Standing>,
    pub stop_reason: String,
}

/// Decides, without changing anything, how every allocation in `scope` that should run stands
/// under `gate` (the policy of version `version`), and returns those whose standing changes.
pub(super) fn decide(
    state: &State,
    gate: &mut PolicyGate,
    version: u64,
    at_ms: i64,
    scope: Scope,
) -> Vec<Decided> {
    // Classes per name: a node or deployment is classified once however many allocations it
    // has (100,000 allocations on 10,000 nodes in the benchmark).
    let mut node_classes: HashMap<&str, u32> = HashMap::new();
    let mut deployment_classes: HashMap<&str, u32> = HashMap::new();
    let mut out = Vec::new();
    for a in state.allocations.values() {
        let in_scope = match scope {
            Scope::All => true,
            Scope::Node(n) => a.node == n,
            Scope::Deployment(d) => a.deployment == d,
        };
        if !in_scope || a.desired != Desired::Run {
            continue;
        }
        let (Some(node), Some(deployment)) = (
            state.nodes.get(&a.node),
            state.deployments.get(&a.deployment),
        ) else {
            continue;
        };
        let n = *node_classes
            .entry(node.name.as_str())
            .or_insert_with(|| gate.node_class(node));
        let d = *deployment_classes
            .entry(deployment.spec.name.as_str())
            .or_insert_with(|| gate.deployment_class(&deployment.spec));
        let forbidding = gate.forbidding(d, n);
        let drain_deadline = node.draining.then_some(node.drain_deadline_ms);
        if let Some(decided) = judge(
            a,
            forbidding,
            drain_deadline,
            at_ms + deployment.spec.migration.deadline_ms as i64,
            version,
            at_ms,
        ) {
            out.push(decided);
        }
    }
    out
}

/// The standing of one allocation given the rules that forbid it where it is and whether its
/// node drains; `None` when it does not change.
fn judge(
    a: &Allocation,
    forbidding: &[Forbid],
    drain_deadline_ms: Option<i64>,
    migrate_deadline_ms: i64,
    version: u64,
    at_ms: i64,
) -> Option<Decided> {
    let strictest = forbidding.iter().map(|f| f.on_change).max();
    let rules: Vec<String> = forbidding.iter().map(|f| f.id.clone()).collect();
    let drain = drain_deadline_ms.is_some();
    let change = |action| Change {
        allocation: a.id.clone(),
        deployment: a.deployment.clone(),
        node: a.node.clone(),
        action,
        rules: rules.clone(),
        drain,
    };
    match (strictest, drain_deadline_ms) {
        (Some(OnChange::StopNow), _) => {
            let stop_now: Vec<&str> = forbidding
                .iter()
                .filter(|f| f.on_change == OnChange::StopNow)
                .map(|f| f.id.as_str())
                .collect();
            Some(Decided {
                change: change(Action::StopNow),
                standing: None,
                stop_reason: format!("policy v{version}: {} (stop-now)", stop_now.join(", ")),
            })
        }
        (Some(OnChange::Migrate), _) | (_, Some(_)) => {
            let policy_deadline =
                (strictest == Some(OnChange::Migrate)).then_some(migrate_deadline_ms);
            let new_deadline = [policy_deadline, drain_deadline_ms]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(migrate_deadline_ms);
            let standing = match &a.standing {
                Standing::Migrating {
                    rules: old_rules,
                    drain: old_drain,
                    since_ms,
                    deadline_ms,
                    policy_version,
                    replacement,
                } => {
                    if *old_rules == rules && *old_drain == drain {
                        return None;
                    }
                    Standing::Migrating {
                        rules: rules.clone(),
                        drain,
                        since_ms: *since_ms,
                        // A move never gets more time because another reason joined it.
                        deadline_ms: (*deadline_ms).min(new_deadline),
                        policy_version: if *old_rules == rules {
                            *policy_version
                        } else {
                            version
                        },
                        replacement: replacement.clone(),
                    }
                }
                _ => Standing::Migrating {
                    rules: rules.clone(),
                    drain,
                    since_ms: at_ms,
                    deadline_ms: new_deadline,
                    policy_version: version,
                    replacement: String::new(),
                },
            };
            Some(Decided {
                change: change(Action::Migrate),
                standing: Some(standing),
                stop_reason: String::new(),
            })
        }
        (Some(OnChange::Audit), None) => {
            let since_ms = match &a.standing {
                Standing::Violating {
                    rules: old_rules, ..
                } if *old_rules == rules => return None,
                Standing::Violating { since_ms, .. } => *since_ms,
                _ => at_ms,
            };
            Some(Decided {
                change: change(Action::Audit),
                standing: Some(Standing::Violating {
                    rules: rules.clone(),
                    since_ms,
                    policy_version: version,
                }),
                stop_reason: String::new(),
            })
        }
        (None, None) => (a.standing != Standing::Compliant).then(|| Decided {
            change: change(Action::Cleared),
            standing: Some(Standing::Compliant),
            stop_reason: String::new(),
        }),
    }
}

/// Enacts decisions: new standings, stops, and the deployments' move counters.
pub(super) fn enact(state: &mut State, index: u64, decided: &[Decided]) {
    let mut touched: Vec<String> = Vec::new();
    for d in decided {
        let id = &d.change.allocation;
        let c = &d.change;
        let allocation = history::AllocationRef {
            allocation: c.allocation.clone(),
            deployment: c.deployment.clone(),
            node: c.node.clone(),
        };
        // A replica stopped at once is recorded by its stop (`allocation.stop-ordered`, with
        // the rules and the reason): one event, not a violation and a stop.
        let event = match c.action {
            Action::Cleared => Some(history::What::ViolationCleared(allocation)),
            _ if d.standing.is_none() => None,
            action => Some(history::What::ViolationDetected {
                allocation,
                rules: c.rules.clone(),
                action: action.as_str().into(),
                drain: c.drain,
            }),
        };
        if let Some(event) = event {
            history::record(state, event);
        }
        match &d.standing {
            None => stop(state, index, id, &d.stop_reason, &d.change.rules),
            Some(standing) => {
                let Some(a) = state.allocations.get_mut(id) else {
                    continue;
                };
                let was_moving = a.standing.is_migrating();
                let moving = standing.is_migrating();
                a.standing = standing.clone();
                let deployment = a.deployment.clone();
                if let Some(dep) = state.deployments.get_mut(&deployment) {
                    match (was_moving, moving) {
                        (false, true) => dep.moves.started += 1,
                        (true, false) => dep.moves.finished += 1,
                        _ => {}
                    }
                }
            }
        }
        touched.push(d.change.deployment.clone());
    }
    settle_moves(state, touched);
}

/// Tells an allocation to stop, with the reason users will read (and the rules behind it, for
/// the history), and tells its node's agent. A migrating allocation that stops has finished
/// its move.
pub(super) fn stop(state: &mut State, index: u64, id: &str, reason: &str, rules: &[String]) {
    stop_recording(state, index, id, reason, |a| history::What::StopOrdered {
        allocation: history::alloc_ref(a),
        reason: reason.to_string(),
        rules: rules.to_vec(),
    });
}

/// [`stop`], recording `event` (made from the allocation) as what happened.
fn stop_recording(
    state: &mut State,
    index: u64,
    id: &str,
    reason: &str,
    event: impl FnOnce(&Allocation) -> history::What,
) {
    let Some(a) = state.allocations.get_mut(id) else {
        return;
    };
    if a.desired == Desired::Stop {
        return;
    }
    a.desired = Desired::Stop;
    a.stop_reason = reason.to_string();
    a.revision = index;
    let event = event(a);
    history::record(state, event);
    let Some(a) = state.allocations.get(id) else {
        return;
    };
    let (node, deployment, moving) = (
        a.node.clone(),
        a.deployment.clone(),
        a.standing.is_migrating(),
    );
    if moving && let Some(dep) = state.deployments.get_mut(&deployment) {
        dep.moves.finished += 1;
    }
    super::nodes::touch_assignments(state, &node, index);
}

/// Whether some allocation of `deployment` that should run is migrating. Visits only that
/// deployment's allocations, up to the first one moving: an allocation's id starts with its
/// deployment's name and a dash (`<deployment>-<raft index>-<n>`, made by `plan::apply_plan`
/// only), so they lie together in the map, with those of deployments whose names extend it
/// (`web-2` after `web-`), which are skipped. Called for every entry that stops or marks a
/// replica: a pass over all 100,000 allocations each time was 47 % of the pure-core
/// rule-change bench (`scheduler/benches/compliance.rs`, where each node reports alone).
fn moving(state: &State, deployment: &str) -> bool {
    let prefix = format!("{deployment}-");
    state
        .allocations
        .range::<str, _>((
            std::ops::Bound::Included(prefix.as_str()),
            std::ops::Bound::Unbounded,
        ))
        .take_while(|(id, _)| id.starts_with(&prefix))
        .any(|(_, a)| {
            a.deployment == deployment && a.desired == Desired::Run && a.standing.is_migrating()
        })
}

/// Resets the move counters of every deployment in `deployments` that has nothing moving any
/// more, so the next change starts counting from 0/0.
pub(super) fn settle_moves(state: &mut State, mut deployments: Vec<String>) {
    deployments.sort_unstable();
    deployments.dedup();
    deployments.retain(|d| {
        state
            .deployments
            .get(d)
            .is_some_and(|dep| dep.moves != super::Moves::default())
    });
    deployments.retain(|d| !moving(state, d));
    for d in deployments {
        if let Some(dep) = state.deployments.get_mut(&d) {
            dep.moves = super::Moves::default();
        }
    }
}

/// Applies the stops of a reconcile round, each only if its reason still holds at this index.
pub(super) fn apply_stops(
    state: &mut State,
    index: u64,
    at_ms: i64,
    stops: &[PlannedStop],
) -> (Vec<String>, Vec<RejectedStop>) {
    let mut stopped = Vec::new();
    let mut rejected = Vec::new();
    if stops.is_empty() {
        return (stopped, rejected);
    }
    // Replicas that count, per deployment a surplus stop names, as of this index; lowered as
    // stops are accepted.
    let mut surplus: BTreeMap<String, i64> = BTreeMap::new();
    for s in stops {
        if s.why == StopWhy::Surplus
            && let Some(a) = state.allocations.get(&s.allocation)
        {
            surplus.insert(a.deployment.clone(), 0);
        }
    }
    if !surplus.is_empty() {
        let up = NodesUp::of(state);
        for a in state.allocations.values() {
            if let Some(n) = surplus.get_mut(a.deployment.as_str())
                && up.live(a)
                && live_replacement(state, a).is_none()
            {
                *n += 1;
            }
        }
        for (name, n) in surplus.iter_mut() {
            *n -= state
                .deployments
                .get(name)
                .map_or(0, |d| i64::from(d.spec.replicas));
        }
    }
    let mut touched = Vec::new();
    for s in stops {
        let verdict = stop_verdict(state, at_ms, s, &mut surplus);
        match verdict {
            Ok(reason) => {
                if let Some(a) = state.allocations.get(&s.allocation) {
                    touched.push(a.deployment.clone());
                }
                match &s.why {
                    // A move's end is recorded as the move (it implies the stop order).
                    StopWhy::Replaced { by } => {
                        let to_node = state
                            .allocations
                            .get(by)
                            .map(|r| r.node.clone())
                            .unwrap_or_default();
                        stop_recording(state, index, &s.allocation, &reason, |a| {
                            history::What::AllocationMigrated {
                                allocation: a.id.clone(),
                                deployment: a.deployment.clone(),
                                from_node: a.node.clone(),
                                to_node,
                                replacement: by.clone(),
                            }
                        });
                    }
                    _ => stop(state, index, &s.allocation, &reason, &[]),
                }
                stopped.push(s.allocation.clone());
            }
            Err(reason) => rejected.push(RejectedStop {
                allocation: s.allocation.clone(),
                reason,
            }),
        }
    }
    settle_moves(state, touched);
    (stopped, rejected)
}

/// Whether a planned stop still holds at this index: `Ok(the reason recorded on the
/// allocation)` or `Err(why it is refused)`.
fn stop_verdict(
    state: &State,
    at_ms: i64,
    s: &PlannedStop,
    surplus: &mut BTreeMap<String, i64>,
) -> Result<String, String> {
    let Some(a) = state.allocations.get(&s.allocation) else {
        return Err("the allocation no longer exists".into());
    };
    if a.desired == Desired::Stop {
        return Err("the allocation is already told to stop".into());
    }
    match &s.why {
        StopWhy::Replaced { by } => {
            let Standing::Migrating { replacement, .. } = &a.standing else {
                return Err("the allocation is not migrating any more".into());
            };
            let running = live_replacement(state, a)
                .is_some_and(|r| r.id == *by && r.status == super::AllocStatus::Running);
            if replacement != by || !running {
                return Err(format!("its replacement {by} is not running"));
            }
            Ok(format!(
                "moved: replaced by {by} on {}",
                state.allocations[by].node
            ))
        }
        StopWhy::DeadlinePassed => match &a.standing {
            Standing::Migrating { deadline_ms, .. } if at_ms >= *deadline_ms => {
                Ok("moved: its deadline passed before a replacement was running".into())
            }
            Standing::Migrating { .. } => Err("its deadline has not passed".into()),
            _ => Err("the allocation is not migrating any more".into()),
        },
        StopWhy::NodeDown => {
            if live(state, a) {
                Err("its node is not down (or most nodes are: a disruption moves nothing)".into())
            } else {
                Ok(format!("node {} is down; replaced elsewhere", a.node))
            }
        }
        StopWhy::Surplus => {
            let over = surplus.get_mut(a.deployment.as_str());
            match over {
                Some(n) if *n > 0 && counted(state, a) => {
                    *n -= 1;
                    Ok(match state.deployments.get(&a.deployment) {
                        Some(d) => {
                            format!("surplus: the deployment wants {} replicas", d.spec.replicas)
                        }
                        None => "surplus".into(),
                    })
                }
                _ => Err("the deployment has no surplus replica".into()),
            }
        }
    }
}
