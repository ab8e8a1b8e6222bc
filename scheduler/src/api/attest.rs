//! Attested location: what an agent's certificate vouches for wins over what the agent says.
//!
//! An operator issues each agent a certificate carrying the node's location claims
//! (`sovctl ca issue --role agent --name fr-par-1 --country FR ...`). At registration the
//! scheduler compares them with the facts the agent reports:
//! - a reported fact that differs from the certificate's claim: registration refused, and the
//!   refusal is recorded in history (a node is never placed on the strength of a claim its
//!   operator did not make);
//! - a fact the agent leaves empty but the certificate claims: taken from the certificate;
//! - trust: `operator-certificate` when the certificate vouches for every location fact the node
//!   has, otherwise `self-reported` (one unvouched fact is enough for a rule that requires
//!   `location_trust >= 2` to refuse the node: invariant I5, fail closed).
//!
//! Pure; [`super::agents`] applies it and records refusals.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sov_proto::identity::Identity;

use crate::state::node::{LocationTrust, NodeFacts};

fn fact_mut<'a>(facts: &'a mut NodeFacts, name: &str) -> Option<&'a mut String> {
    Some(match name {
        "country" => &mut facts.country,
        "subdivision" => &mut facts.subdivision,
        "site" => &mut facts.site,
        "operator" => &mut facts.operator,
        "operator_hq" => &mut facts.operator_hq,
        "ultimate_parent_hq" => &mut facts.ultimate_parent_hq,
        _ => return None,
    })
}

/// Checks `facts` against the certificate of `identity`, fills what the certificate claims and
/// the agent left empty, and returns the trust level; `Err` names the first disagreement.
pub fn attest(identity: &Identity, facts: &mut NodeFacts) -> Result<LocationTrust, String> {
    for (name, claimed) in &identity.location {
        let Some(reported) = fact_mut(facts, name) else {
            return Err(format!("the certificate claims an unknown fact {name:?}"));
        };
        if reported.is_empty() {
            reported.clone_from(claimed);
        } else if reported != claimed {
            return Err(format!(
                "{name}: the agent reports {reported:?}, its certificate says {claimed:?}"
            ));
        }
    }
    let all_vouched = sov_proto::identity::LOCATION_FACTS.iter().all(|name| {
        let value = fact_mut(facts, name).map_or(String::new(), |v| v.clone());
        value.is_empty() || identity.location.contains_key(*name)
    });
    Ok(
        if all_vouched && !identity.location.is_empty() && !identity.is_wildcard() {
            LocationTrust::OperatorCertificate
        } else {
            LocationTrust::SelfReported
        },
    )
}

/// How often the same refusal of the same node is recorded again: an agent retries its
/// registration every few seconds, and history should say it was refused, not fill with it.
pub const REFUSAL_RECORD_INTERVAL: Duration = Duration::from_secs(600);
/// Refusals remembered for that purpose; beyond it the oldest are forgotten (and recorded
/// again on their next attempt).
const REFUSALS_REMEMBERED_MAX: usize = 1024;

/// Which refusals were recorded lately.
#[derive(Default)]
pub struct RecentRefusals {
    seen: Mutex<HashMap<(String, String), Instant>>,
}

impl RecentRefusals {
    /// Whether this refusal should be recorded now (and remembers that it was).
    pub fn should_record(&self, node: &str, reason: &str, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let key = (node.to_string(), reason.to_string());
        if seen
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < REFUSAL_RECORD_INTERVAL)
        {
            return false;
        }
        if seen.len() >= REFUSALS_REMEMBERED_MAX {
            let oldest = seen
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                seen.remove(&oldest);
            }
        }
        seen.insert(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use sov_proto::identity::Role;

    use super::*;

    fn facts(country: &str, operator: &str) -> NodeFacts {
        NodeFacts {
            country: country.into(),
            operator: operator.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_certificate_wins_and_sets_the_trust() {
        let cert = Identity::new(Role::Agent, "fr-1")
            .unwrap()
            .with_location("country", "FR")
            .unwrap()
            .with_location("operator", "Example-Cloud")
            .unwrap();
        let mut f = facts("FR", "Example-Cloud");
        assert_eq!(
            attest(&cert, &mut f),
            Ok(LocationTrust::OperatorCertificate)
        );
        // Left empty by the agent: taken from the certificate.
        let mut f = facts("", "");
        assert_eq!(
            attest(&cert, &mut f),
            Ok(LocationTrust::OperatorCertificate)
        );
        assert_eq!(f.country, "FR");
        // A disagreement is refused, naming the fact.
        let err = attest(&cert, &mut facts("DE", "Example-Cloud")).unwrap_err();
        assert!(err.contains("country") && err.contains("\"DE\""), "{err}");
        // A fact the certificate does not vouch for keeps the node self-reported.
        let country_only = Identity::new(Role::Agent, "fr-1")
            .unwrap()
            .with_location("country", "FR")
            .unwrap();
        assert_eq!(
            attest(&country_only, &mut facts("FR", "Example-Cloud")),
            Ok(LocationTrust::SelfReported)
        );
        // No claims at all: self-reported.
        let bare = Identity::new(Role::Agent, "fr-1").unwrap();
        assert_eq!(
            attest(&bare, &mut facts("FR", "")),
            Ok(LocationTrust::SelfReported)
        );
    }

    #[test]
    fn a_refusal_is_recorded_once_per_interval() {
        let recent = RecentRefusals::default();
        let t = Instant::now();
        assert!(recent.should_record("n", "country", t));
        assert!(!recent.should_record("n", "country", t + Duration::from_secs(5)));
        assert!(recent.should_record("n", "site", t));
        assert!(recent.should_record("n", "country", t + REFUSAL_RECORD_INTERVAL));
    }
}
