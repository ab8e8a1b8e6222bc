//! Policy versions in the replicated state: every accepted bundle is a new, immutable, numbered
//! version (author, comment, hash, files); the last one is in force.
//!
//! The compiled form of the version in force is cached beside the state (not serialized, not
//! compared): it is derived data, rebuilt on demand after a restart or a snapshot install.
//! Compiling is deterministic, so every replica derives the same policy from the same files.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::compliance::{self, Impact, Scope, plan_hash};
use super::plan::PolicyGate;
use super::{Outcome, Rejection, State};
use crate::policy::{self, CompiledPolicy};

/// Versions kept; applying past this is refused (a bundle a day for 27 years).
pub const POLICY_VERSIONS_MAX: usize = 10_000;

/// A bundle as submitted: file name -> contents, and who submitted it and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyBundle {
    pub files: BTreeMap<String, String>,
    /// Opaque id of the submitter (no personal data in the state).
    pub author: String,
    pub comment: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicyVersion {
    /// 1, 2, 3, ... in order of activation.
    pub version: u64,
    pub files: BTreeMap<String, String>,
    /// Hex SHA-256 over the files (see `policy::CompiledPolicy::hash`).
    pub hash: String,
    pub author: String,
    pub comment: String,
    pub activated_at_ms: i64,
    pub revision: u64,
}

/// The compiled policy in force, keyed by version and hash, and the policy evaluator placement
/// last used (`plan::PolicyGate`). Shared by clones of a state: a clone is a snapshot of the
/// same versions, so what is cached is equally valid for it, and the leader's planner, which
/// plans on a clone, keeps its decisions from one round to the next.
#[derive(Clone, Default)]
pub struct PolicyCache(Arc<Mutex<CacheSlots>>);

#[derive(Default)]
struct CacheSlots {
    compiled: Option<(u64, CompiledPolicy)>,
    gate: Option<super::plan::GateMemo>,
}

impl PolicyCache {
    fn slots(&self) -> std::sync::MutexGuard<'_, CacheSlots> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the kept evaluator out (a gate borrows it for a round).
    pub(super) fn take_gate(&self) -> Option<super::plan::GateMemo> {
        self.slots().gate.take()
    }

    /// Gives an evaluator back; when another gate gave one back meanwhile, the one for the
    /// newer policy version stays, and of two for the same version the one that has decided
    /// more.
    pub(super) fn put_gate(&self, memo: super::plan::GateMemo) {
        let mut slots = self.slots();
        let keep_old = slots.gate.as_ref().is_some_and(|old| {
            old.version > memo.version
                || (old.version == memo.version
                    && old.evaluator.evaluations() > memo.evaluator.evaluations())
        });
        if !keep_old {
            slots.gate = Some(memo);
        }
    }
}

impl std::fmt::Debug for PolicyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PolicyCache")
    }
}

/// Derived data: two states with the same versions are equal whatever their caches hold.
impl PartialEq for PolicyCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for PolicyCache {}

impl State {
    /// The version in force and its compiled form; `None` when no bundle was ever applied (then
    /// nothing may be placed: fail closed).
    pub fn active_policy(&self) -> Option<(u64, CompiledPolicy)> {
        let active = self.policies.last()?;
        let mut slots = self.policy_cache.slots();
        if let Some((version, compiled)) = slots.compiled.as_ref()
            && *version == active.version
            && compiled.hash() == active.hash
        {
            return Some((*version, compiled.clone()));
        }
        // Stored versions compiled when they were accepted; a failure here could only come from
        // a changed Cedar release, and then placing nothing is the safe answer.
        let compiled = policy::compile(&active.files).ok()?;
        slots.compiled = Some((active.version, compiled.clone()));
        Some((active.version, compiled))
    }
}

pub(super) fn apply_policy(
    state: &mut State,
    index: u64,
    at_ms: i64,
    bundle: &PolicyBundle,
    expected_plan_hash: Option<&str>,
) -> Outcome {
    let compiled = match policy::compile(&bundle.files) {
        Ok(c) => c,
        Err(e) => return Outcome::Rejected(Rejection::InvalidPolicy(e.to_string())),
    };
    let replaces = state.policies.last().map_or(0, |v| v.version);
    if let Some(active) = state.policies.last()
        && active.hash == compiled.hash()
    {
        return Outcome::PolicyApplied {
            version: active.version,
            hash: active.hash.clone(),
            activated_at_ms: active.activated_at_ms,
            changed: false,
            impact: Box::new(Impact {
                changes: Vec::new(),
                plan_hash: plan_hash(compiled.hash(), replaces, &[]),
            }),
        };
    }
    if state.policies.len() >= POLICY_VERSIONS_MAX {
        return Outcome::Rejected(Rejection::TooManyPolicyVersions {
            max: POLICY_VERSIONS_MAX,
        });
    }
    let version = state.policies.len() as u64 + 1;
    let hash = compiled.hash().to_string();
    // Decide what the new version does to every running allocation before anything changes,
    // so a plan-hash mismatch leaves the state as it was.
    let mut gate = PolicyGate::with_policy(Some((version, &compiled)), &compliance::today(state));
    let decided = compliance::decide(state, &mut gate, version, at_ms, Scope::All);
    // Its classes are those of the version about to be in force: keep them for the next round.
    gate.keep_in(&state.policy_cache);
    drop(gate);
    let changes: Vec<compliance::Change> = decided.iter().map(|d| d.change.clone()).collect();
    let impact = Impact {
        plan_hash: plan_hash(&hash, replaces, &changes),
        changes,
    };
    if let Some(expected) = expected_plan_hash
        && expected != impact.plan_hash
    {
        return Outcome::Rejected(Rejection::PlanHashMismatch {
            expected: expected.to_string(),
            actual: impact.plan_hash,
        });
    }
    state.policies.push(PolicyVersion {
        version,
        files: bundle.files.clone(),
        hash: hash.clone(),
        author: bundle.author.clone(),
        comment: bundle.comment.clone(),
        activated_at_ms: at_ms,
        revision: index,
    });
    state.policy_cache.slots().compiled = Some((version, compiled));
    let count =
        |a: compliance::Action| impact.changes.iter().filter(|c| c.action == a).count() as u32;
    crate::history::record(
        state,
        crate::history::What::PolicyActivated {
            version,
            bundle_hash: hash.clone(),
            author: bundle.author.clone(),
            comment: bundle.comment.clone(),
            stopped: count(compliance::Action::StopNow),
            migrating: count(compliance::Action::Migrate),
            violations: count(compliance::Action::Audit),
            cleared: count(compliance::Action::Cleared),
        },
    );
    compliance::enact(state, index, &decided);
    Outcome::PolicyApplied {
        version,
        hash,
        activated_at_ms: at_ms,
        changed: true,
        impact: Box::new(impact),
    }
}
