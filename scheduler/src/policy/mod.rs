//! Policy: which nodes a deployment may be placed on, as Cedar policy bundles decide it.
//!
//! Owns: compiling and validating a bundle ([`compile`], in `bundle.rs`), turning sov's
//! deployments and nodes into Cedar entities (`entities.rs`), and deciding, with Cedar asked
//! once per rule and distinct pair of that rule's classes (`evaluate.rs`).
//! Must not touch: I/O, clocks, randomness, async, the replicated state. Callers pass the bundle
//! files in and the calendar day as a string, so every replica decides the same way (I3).
//!
//! One decision, end to end:
//!
//! ```text
//!  bundle files ──compile──▶ CompiledPolicy (immutable, hashed; shared Group/Country/
//!                              Accelerator entities built once; per rule: the names it
//!                              mentions and a policy set of it alone)
//!  DeploymentSpec ─┐
//!                  ├─ classes (signatures reduced to mentioned attributes)
//!  Node + today  ──┘      │
//!                         ▼
//!                  Evaluator table[deployment class][node class] ─miss─▶ for each rule: its
//!                         │        own classes ─miss─▶ Cedar (one policy, shared store)
//!                         ▼
//!  Decision { allowed, every forbidding rule, errors }
//! ```
//!
//! [`CompiledPolicy::evaluate`] decides one pair the straightforward way (whole bundle, fresh
//! store): the reference the evaluator is tested against.
//!
//! Fail closed (invariant I5): anything Cedar cannot decide (an evaluation error, a residency
//! entry the bundle does not define, node facts the bundle cannot resolve) denies, with a
//! synthetic rule that says why. Policies are written as forbids so that `sovctl explain` can
//! list every rule that fails, not just the first.
//!
//! Cedar's API takes `std` hash maps and sets; nothing this module returns depends on their
//! iteration order, because rules and reasons are always re-sorted into bundle order.

mod bundle;
mod entities;
mod evaluate;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use bundle::compile;
pub use evaluate::Evaluator;

/// Most files in one bundle: a schema, the entity data and the policy files.
pub const BUNDLE_FILES_MAX: usize = 64;
/// Most bytes of all files of one bundle together: every replica holds each version in memory.
pub const BUNDLE_BYTES_MAX: usize = 1024 * 1024;
pub const FILE_NAME_LEN_MAX: usize = 128;
/// Most policies (permits and forbids) in one bundle.
pub const POLICIES_MAX: usize = 1_000;
/// Most entities in the entity data file (the generated countries are not counted).
pub const ENTITIES_MAX: usize = 10_000;
pub const RULE_ID_LEN_MAX: usize = 64;
pub const REASON_LEN_MAX: usize = 512;
/// Most problems one rejected bundle reports; the rest are summarized in one line.
pub const PROBLEMS_MAX: usize = 100;
/// Most deployment classes, and most node classes, an [`Evaluator`] keeps before its owner
/// starts a new one (between planning rounds).
pub const CLASSES_MAX: usize = 1 << 16;
/// Most cells of an [`Evaluator`]'s decision table (4 bytes each) before its owner starts a
/// new one: 64 MiB. A round over 10,000 distinct nodes and 1,000 distinct deployments fits.
pub const DECISION_CELLS_MAX: usize = 1 << 24;

/// Synthetic rule: no permit policy matched (Cedar denies by default).
pub const NO_PERMIT_RULE_ID: &str = "no-permit";
/// Synthetic rule: Cedar could not evaluate a policy, or the node facts cannot be resolved.
pub const EVALUATION_ERROR_RULE_ID: &str = "evaluation-error";
/// Synthetic rule: the deployment's residency names a country or group the bundle lacks.
pub const UNKNOWN_JURISDICTION_RULE_ID: &str = "unknown-jurisdiction";
/// Synthetic rule ids; a bundle may not use them for its own policies.
pub const RESERVED_RULE_IDS: [&str; 3] = [
    NO_PERMIT_RULE_ID,
    EVALUATION_ERROR_RULE_ID,
    UNKNOWN_JURISDICTION_RULE_ID,
];

/// One precise complaint about a bundle. `line` and `column` are 1-based; 0 when unknown.
/// `file` is empty for problems of the whole bundle (too many files, no schema, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            // Problems of the whole bundle (layout, limits) name no file.
            _ if self.file.is_empty() => f.write_str(&self.message),
            (0, _) => write!(f, "{}: {}", self.file, self.message),
            (line, 0) => write!(f, "{}:{line}: {}", self.file, self.message),
            (line, column) => write!(f, "{}:{line}:{column}: {}", self.file, self.message),
        }
    }
}

/// Why a bundle was rejected: every problem found, in file, line, column order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", lines(.problems))]
pub struct BundleError {
    pub problems: Vec<Problem>,
}

fn lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether a policy lets a placement happen or stops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Permit,
    Forbid,
}

/// What happens to running replicas when a forbid rule starts to match them (invariant I1).
/// Ordered from mildest to strictest, so callers can take the maximum over several rules.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum OnChange {
    /// Keep running; record a violation.
    Audit,
    /// Mark migrating with a deadline; place elsewhere, then stop. The default for a forbid
    /// without `@on_change`: it never leaves a forbidden replica running unnoticed, and never
    /// stops service abruptly because an author forgot an annotation.
    #[default]
    Migrate,
    /// Stop at once.
    StopNow,
}

impl OnChange {
    pub const ALL: [OnChange; 3] = [OnChange::Audit, OnChange::Migrate, OnChange::StopNow];

    /// The annotation value: "audit", "migrate" or "stop-now".
    pub fn as_str(self) -> &'static str {
        match self {
            OnChange::Audit => "audit",
            OnChange::Migrate => "migrate",
            OnChange::StopNow => "stop-now",
        }
    }

    pub fn parse(value: &str) -> Option<OnChange> {
        OnChange::ALL.into_iter().find(|o| o.as_str() == value)
    }
}

impl fmt::Display for OnChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One policy of a bundle, as listed by `sovctl policy show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `@id`, unique in the bundle.
    pub id: String,
    pub effect: Effect,
    /// `@reason`, shown to users when the rule forbids a placement.
    pub reason: String,
    /// `@on_change`; permits carry [`OnChange::Migrate`], the effect of a permit that stops
    /// matching (the synthetic `no-permit` rule).
    pub on_change: OnChange,
    /// The `.cedar` file the policy is in.
    pub file: String,
}

/// A rule that forbids one placement, as an explanation shows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RuleRef {
    pub id: String,
    pub reason: String,
    pub on_change: OnChange,
}

/// The answer for one (deployment, node, day).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decision {
    pub allowed: bool,
    /// Every rule that forbids the placement, in bundle order, synthetic rules included
    /// (`unknown-jurisdiction` first, `no-permit` and `evaluation-error` last). Empty when
    /// allowed.
    pub forbidding: Vec<RuleRef>,
    /// Cedar evaluation errors and unresolvable facts; any error denies.
    pub errors: Vec<String>,
}

/// A validated, immutable bundle. Cloning shares it.
#[derive(Clone)]
pub struct CompiledPolicy {
    inner: Arc<bundle::Compiled>,
}

impl CompiledPolicy {
    /// Hex SHA-256 over the bundle files in name order: for each file, the name's length (u64
    /// big-endian), the name, the contents' length (u64 big-endian), the contents. Identical
    /// bundles have identical hashes on every replica.
    pub fn hash(&self) -> &str {
        &self.inner.hash
    }

    /// Every policy, in file name order, then source order.
    pub fn rules(&self) -> &[Rule] {
        &self.inner.rules
    }

    /// Names of the jurisdiction groups the bundle defines, sorted. The API rejects deployment
    /// residency entries that name anything else.
    pub fn groups(&self) -> Vec<String> {
        self.inner.groups.iter().cloned().collect()
    }

    /// Decides whether `deployment` may be placed on `node` on calendar day `today`
    /// (YYYY-MM-DD): certifications valid until a day before `today` are not in force. One
    /// Cedar evaluation per call; use an [`Evaluator`] to share decisions between pairs.
    pub fn evaluate(
        &self,
        deployment: &crate::state::DeploymentSpec,
        node: &crate::state::node::Node,
        today: &str,
    ) -> Decision {
        evaluate::evaluate_once(&self.inner, deployment, node, today)
    }
}

impl fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledPolicy")
            .field("hash", &self.inner.hash)
            .field("rules", &self.inner.rules.len())
            .field("groups", &self.inner.groups)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
pub(crate) mod tests;
