//! Attested location: what an agent's certificate vouches for wins over what the agent says.
//!
//! An operator issues each agent a certificate carrying the node's location claims
//! (`sovctl ca issue --role agent --name fr-par-1 --country FR ...`). At registration the
//! scheduler compares them with the facts the agent reports:
//! - a reported fact that differs from the certificate's claim: registration refused, and the
//!   refusal is recorded in history (a node is never placed on the strength of a claim its
//!   operator did not make);
//! - a fact the agent leaves empty but the certificate claims: taken from the certificate;
//! - trust, per fact: `operator-certificate` for each fact the certificate vouches for,
//!   `self-reported` for the others (policy reads them as `resource.fact_trust.<fact>`); the
//!   node's `location_trust` is the least of them (one unvouched fact is enough for a rule that
//!   requires `location_trust >= 2` to refuse the node: invariant I5, fail closed).
//!
//! Pure; [`super::agents`] applies it and records refusals.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sov_proto::identity::Identity;

#[cfg(test)]
use crate::state::node::LocationTrust;
use crate::state::node::NodeFacts;

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
/// the agent left empty, and sets the trust of each fact (`operator-certificate` where the
/// certificate vouches for it, else `self-reported`) and the node's least trust; `Err` names
/// the first disagreement and changes nothing the caller keeps.
pub fn attest(identity: &Identity, facts: &mut NodeFacts) -> Result<(), String> {
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
    // A wildcard certificate (the fleet simulator's) speaks for many nodes: it vouches for none.
    let vouches = !identity.is_wildcard();
    facts.set_trust(|name| vouches && identity.location.contains_key(name));
    Ok(())
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

    /// `attest`, then (node trust, trust of country, trust of operator).
    fn attested(
        cert: &Identity,
        f: &mut NodeFacts,
    ) -> Result<(LocationTrust, Option<LocationTrust>, Option<LocationTrust>), String> {
        attest(cert, f)?;
        Ok((
            f.location_trust,
            f.trust_of("country"),
            f.trust_of("operator"),
        ))
    }

    #[test]
    fn the_certificate_wins_and_sets_the_trust_of_each_fact() {
        use LocationTrust::{OperatorCertificate as Cert, SelfReported as Own};
        let cert = Identity::new(Role::Agent, "fr-1")
            .unwrap()
            .with_location("country", "FR")
            .unwrap()
            .with_location("operator", "Example-Cloud")
            .unwrap();
        let mut f = facts("FR", "Example-Cloud");
        assert_eq!(attested(&cert, &mut f), Ok((Cert, Some(Cert), Some(Cert))));
        // Left empty by the agent: taken from the certificate.
        let mut f = facts("", "");
        assert_eq!(attested(&cert, &mut f), Ok((Cert, Some(Cert), Some(Cert))));
        assert_eq!(f.country, "FR");
        // A disagreement is refused, naming the fact.
        let err = attest(&cert, &mut facts("DE", "Example-Cloud")).unwrap_err();
        assert!(err.contains("country") && err.contains("\"DE\""), "{err}");
        // A fact the certificate does not vouch for is self-reported, and so is the node; the
        // vouched fact keeps its own level.
        let country_only = Identity::new(Role::Agent, "fr-1")
            .unwrap()
            .with_location("country", "FR")
            .unwrap();
        let mut f = facts("FR", "Example-Cloud");
        assert_eq!(
            attested(&country_only, &mut f),
            Ok((Own, Some(Cert), Some(Own)))
        );
        // A fact the node does not have has no trust and does not lower the node's.
        let mut f = facts("FR", "");
        assert_eq!(
            attested(&country_only, &mut f),
            Ok((Cert, Some(Cert), None))
        );
        assert_eq!(f.fact_trust.len(), 1);
        // No claims at all: self-reported.
        let bare = Identity::new(Role::Agent, "fr-1").unwrap();
        assert_eq!(
            attested(&bare, &mut facts("FR", "")),
            Ok((Own, Some(Own), None))
        );
        // A wildcard certificate vouches for nothing, whatever it claims.
        let fleet = Identity::new(Role::Agent, "sim-*")
            .unwrap()
            .with_location("country", "FR")
            .unwrap();
        assert!(fleet.is_wildcard());
        assert_eq!(
            attested(&fleet, &mut facts("FR", "")),
            Ok((Own, Some(Own), None))
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
