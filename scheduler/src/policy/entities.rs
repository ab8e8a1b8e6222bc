//! Cedar entities built from sov's own types: the `Deployment` principal and the `Node`
//! resource of every request, and the signatures that decide when two requests are the same.
//!
//! Owns: the entity type names and attribute names sov supplies (the bundle's schema must
//! declare exactly these), and the mapping from `DeploymentSpec` and `Node` to signatures and
//! from signatures to entities. Must not touch: the bundle's own entity data (`bundle.rs`),
//! Cedar evaluation (`evaluate.rs`), clocks: the calendar day comes in as a string.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};

use crate::state::iso3166;
use crate::state::node::Node;
use crate::state::{DeploymentSpec, is_date};

pub(super) const GROUP: &str = "Group";
pub(super) const COUNTRY: &str = "Country";
pub(super) const ACCELERATOR: &str = "Accelerator";
pub(super) const DEPLOYMENT: &str = "Deployment";
pub(super) const NODE: &str = "Node";
pub(super) const ACTION: &str = "Action";
const PLACE: &str = "Place";

/// The ids of the principal and the resource of a one-off request. An [`Evaluator`] names its
/// classes `deployment-N` and `node-N` instead, so one entity store holds them all. Policies
/// cannot tell: `bundle.rs` refuses policies that name an individual deployment or node, so a
/// decision depends on attributes only and is shared by every deployment and node with the same
/// signature.
///
/// [`Evaluator`]: super::Evaluator
pub(super) const PRINCIPAL_ID: &str = "deployment";
pub(super) const RESOURCE_ID: &str = "node";

/// Export class given to GPU models the entity data does not classify, so a policy can refuse
/// them explicitly instead of letting an unknown model pass as uncontrolled (invariant I5).
pub(super) const UNCLASSIFIED_ECCN: &str = "unclassified";

pub(super) fn uid(type_name: &str, id: &str) -> EntityUid {
    // Only called with the constants above, which are plain Cedar identifiers.
    let type_name = EntityTypeName::from_str(type_name).expect("entity type names are identifiers");
    EntityUid::from_type_name_and_id(type_name, EntityId::new(id))
}

pub(super) fn place_action() -> EntityUid {
    uid(ACTION, PLACE)
}

/// Everything about a deployment that Cedar sees. Two deployments with equal signatures get
/// the same decision on every node. Sets are sorted and deduplicated, as Cedar sets are.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct DeploymentSignature {
    pub model: String,
    pub eccn: String,
    pub weights_published: bool,
    pub training_compute_log10: u32,
    pub lineage: BTreeSet<String>,
    /// Residency entries that are ISO 3166-1 codes.
    pub residency_countries: BTreeSet<String>,
    /// Every other residency entry: a group name, which the bundle may or may not define.
    pub residency_groups: BTreeSet<String>,
    pub min_location_trust: u8,
    pub required_certifications: BTreeSet<String>,
}

impl DeploymentSignature {
    pub fn of(spec: &DeploymentSpec) -> DeploymentSignature {
        let (countries, groups): (Vec<&String>, Vec<&String>) = spec
            .residency
            .allowed
            .iter()
            .partition(|place| iso3166::is_country(place));
        DeploymentSignature {
            model: spec.model.clone(),
            eccn: spec.export.eccn.clone(),
            weights_published: spec.export.weights_published,
            training_compute_log10: spec.export.training_compute_log10,
            lineage: spec.export.lineage.iter().cloned().collect(),
            residency_countries: countries.into_iter().cloned().collect(),
            residency_groups: groups.into_iter().cloned().collect(),
            min_location_trust: spec.residency.min_location_trust,
            required_certifications: spec
                .residency
                .required_certifications
                .iter()
                .cloned()
                .collect(),
        }
    }
}

impl DeploymentSignature {
    /// The signature with every attribute no policy of the bundle reads set to its default:
    /// deployments that differ only there get the same decision, so they share one.
    /// `read` holds every name a policy mentions (see `bundle::mentioned_names`); an attribute
    /// whose name no policy mentions cannot be read, as Cedar has no dynamic attribute access.
    pub fn projected(&self, read: &BTreeSet<String>) -> DeploymentSignature {
        let keep = |name: &str| read.contains(name);
        DeploymentSignature {
            model: kept(keep("model"), &self.model),
            eccn: kept(keep("eccn"), &self.eccn),
            weights_published: kept(keep("weights_published"), &self.weights_published),
            training_compute_log10: kept(
                keep("training_compute_log10"),
                &self.training_compute_log10,
            ),
            lineage: kept(keep("lineage"), &self.lineage),
            residency_countries: kept(keep("residency_countries"), &self.residency_countries),
            // Groups are also checked against the bundle outside Cedar (unknown jurisdiction),
            // so they are always kept.
            residency_groups: self.residency_groups.clone(),
            min_location_trust: kept(keep("min_location_trust"), &self.min_location_trust),
            required_certifications: kept(
                keep("required_certifications"),
                &self.required_certifications,
            ),
        }
    }
}

/// `value` when `keep`, else the type's default (what a projection leaves out).
fn kept<T: Clone + Default>(keep: bool, value: &T) -> T {
    if keep { value.clone() } else { T::default() }
}

/// Everything about a node, on one calendar day, that Cedar sees. Nodes with equal signatures
/// (same place, operator, certifications in force, trust and GPU models) share decisions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct NodeSignature {
    pub country: String,
    pub subdivision: String,
    pub site: String,
    pub operator: String,
    /// Empty when unknown: the attribute is then left out, and rules about it fail closed.
    pub operator_hq: String,
    pub ultimate_parent_hq: String,
    /// Certifications whose valid-until day is `today` or later.
    pub certifications: BTreeSet<String>,
    pub location_trust: u8,
    /// Trust level of each location fact, in `NodeFacts::location` order; 0 where the node
    /// does not have the fact.
    pub fact_trust: [u8; 6],
    pub gpu_models: BTreeSet<String>,
}

impl NodeSignature {
    /// `today` must be a YYYY-MM-DD date (callers check); ISO dates compare as strings.
    pub fn of(node: &Node, today: &str) -> NodeSignature {
        let facts = &node.facts;
        NodeSignature {
            country: facts.country.clone(),
            subdivision: facts.subdivision.clone(),
            site: facts.site.clone(),
            operator: facts.operator.clone(),
            operator_hq: facts.operator_hq.clone(),
            ultimate_parent_hq: facts.ultimate_parent_hq.clone(),
            // A malformed valid-until day is not in force: it cannot be compared (I5).
            certifications: facts
                .certifications
                .iter()
                .filter(|(_, until)| is_date(until) && until.as_str() >= today)
                .map(|(name, _)| name.clone())
                .collect(),
            location_trust: facts.location_trust.level(),
            fact_trust: facts
                .location()
                .map(|(name, _)| facts.trust_of(name).map_or(0, |t| t.level())),
            gpu_models: node
                .inventory
                .gpus
                .iter()
                .map(|g| g.model.clone())
                .collect(),
        }
    }

    /// The signature with every attribute no policy reads set to its default (see
    /// [`DeploymentSignature::projected`]). Callers project only nodes whose facts all
    /// resolve ([`Self::unresolvable`] is empty), since those checks read the facts too.
    pub fn projected(&self, read: &BTreeSet<String>) -> NodeSignature {
        let keep = |name: &str| read.contains(name);
        NodeSignature {
            country: kept(keep("country"), &self.country),
            subdivision: kept(keep("subdivision"), &self.subdivision),
            site: kept(keep("site"), &self.site),
            operator: kept(keep("operator"), &self.operator),
            operator_hq: kept(keep("operator_hq"), &self.operator_hq),
            ultimate_parent_hq: kept(keep("ultimate_parent_hq"), &self.ultimate_parent_hq),
            certifications: kept(keep("certifications"), &self.certifications),
            location_trust: kept(keep("location_trust"), &self.location_trust),
            fact_trust: kept(keep("fact_trust"), &self.fact_trust),
            gpu_models: kept(
                keep("accelerators") || keep("accelerator_eccns"),
                &self.gpu_models,
            ),
        }
    }

    /// Facts Cedar cannot resolve to an entity of the bundle. Every ISO 3166-1 code is a
    /// Country of every bundle, so anything else would silently match no group; it denies.
    pub fn unresolvable(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if !iso3166::is_country(&self.country) {
            errors.push(format!(
                "node fact country {:?} is not an ISO 3166-1 alpha-2 code; the node is \
                 eligible for nothing until its facts are corrected",
                self.country
            ));
        }
        for (fact, value) in [
            ("operator_hq", &self.operator_hq),
            ("ultimate_parent_hq", &self.ultimate_parent_hq),
        ] {
            if !value.is_empty() && !iso3166::is_country(value) {
                errors.push(format!(
                    "node fact {fact} {value:?} is not an ISO 3166-1 alpha-2 code"
                ));
            }
        }
        errors
    }
}

fn strings(values: &BTreeSet<String>) -> RestrictedExpression {
    RestrictedExpression::new_set(values.iter().cloned().map(RestrictedExpression::new_string))
}

fn entity_refs(type_name: &str, ids: &BTreeSet<String>) -> RestrictedExpression {
    RestrictedExpression::new_set(
        ids.iter()
            .map(|id| RestrictedExpression::new_entity_uid(uid(type_name, id))),
    )
}

/// The principal of a request: `Deployment::"<id>"` with the signature's attributes.
pub(super) fn principal(sig: &DeploymentSignature, id: &str) -> Result<Entity, String> {
    let attrs = HashMap::from([
        (
            "model".to_owned(),
            RestrictedExpression::new_string(sig.model.clone()),
        ),
        (
            "eccn".to_owned(),
            RestrictedExpression::new_string(sig.eccn.clone()),
        ),
        (
            "weights_published".to_owned(),
            RestrictedExpression::new_bool(sig.weights_published),
        ),
        (
            "training_compute_log10".to_owned(),
            RestrictedExpression::new_long(i64::from(sig.training_compute_log10)),
        ),
        ("lineage".to_owned(), strings(&sig.lineage)),
        (
            "residency_countries".to_owned(),
            entity_refs(COUNTRY, &sig.residency_countries),
        ),
        (
            "residency_groups".to_owned(),
            entity_refs(GROUP, &sig.residency_groups),
        ),
        (
            "min_location_trust".to_owned(),
            RestrictedExpression::new_long(i64::from(sig.min_location_trust)),
        ),
        (
            "required_certifications".to_owned(),
            strings(&sig.required_certifications),
        ),
    ]);
    Entity::new(uid(DEPLOYMENT, id), attrs, HashSet::new()).map_err(|e| e.to_string())
}

/// The resource of a request: `Node::"<id>"` with the signature's attributes. GPU models are
/// looked up in `accelerator_eccns` (the bundle's Accelerator entities). `with_fact_trust` is
/// false only for bundles whose schema predates `fact_trust` (see `bundle::parse_schema`).
pub(super) fn resource(
    sig: &NodeSignature,
    id: &str,
    accelerator_eccns: &BTreeMap<String, String>,
    with_fact_trust: bool,
) -> Result<Entity, String> {
    let eccns: BTreeSet<String> = sig
        .gpu_models
        .iter()
        .map(|model| {
            accelerator_eccns
                .get(model)
                .cloned()
                .unwrap_or_else(|| UNCLASSIFIED_ECCN.to_owned())
        })
        .collect();
    let mut attrs = HashMap::from([
        (
            "country".to_owned(),
            RestrictedExpression::new_entity_uid(uid(COUNTRY, &sig.country)),
        ),
        (
            "subdivision".to_owned(),
            RestrictedExpression::new_string(sig.subdivision.clone()),
        ),
        (
            "site".to_owned(),
            RestrictedExpression::new_string(sig.site.clone()),
        ),
        (
            "operator".to_owned(),
            RestrictedExpression::new_string(sig.operator.clone()),
        ),
        ("certifications".to_owned(), strings(&sig.certifications)),
        (
            "location_trust".to_owned(),
            RestrictedExpression::new_long(i64::from(sig.location_trust)),
        ),
        (
            "accelerators".to_owned(),
            entity_refs(ACCELERATOR, &sig.gpu_models),
        ),
        ("accelerator_eccns".to_owned(), strings(&eccns)),
    ]);
    if with_fact_trust {
        attrs.insert("fact_trust".to_owned(), fact_trust(&sig.fact_trust)?);
    }
    // Unknown headquarters are left out rather than invented: the schema declares them
    // optional, so a policy must test `has` and an unknown value can never match a group.
    for (name, value) in [
        ("operator_hq", &sig.operator_hq),
        ("ultimate_parent_hq", &sig.ultimate_parent_hq),
    ] {
        if !value.is_empty() {
            attrs.insert(
                name.to_owned(),
                RestrictedExpression::new_entity_uid(uid(COUNTRY, value)),
            );
        }
    }
    Entity::new(uid(NODE, id), attrs, HashSet::new()).map_err(|e| e.to_string())
}

/// `fact_trust`: a record with one Long per location fact (0 = the node does not have it).
fn fact_trust(levels: &[u8; 6]) -> Result<RestrictedExpression, String> {
    RestrictedExpression::new_record(sov_proto::identity::LOCATION_FACTS.iter().zip(levels).map(
        |(name, level)| {
            (
                (*name).to_owned(),
                RestrictedExpression::new_long(i64::from(*level)),
            )
        },
    ))
    .map_err(|e| e.to_string())
}

/// The Country and Accelerator entities the principal's and the resource's attributes refer
/// to: with the groups, all a request can reach, since Group and Accelerator attributes are
/// plain strings.
pub(super) fn referenced(deployment: &DeploymentSignature, node: &NodeSignature) -> Vec<EntityUid> {
    let countries = [&node.country, &node.operator_hq, &node.ultimate_parent_hq]
        .into_iter()
        .filter(|code| !code.is_empty())
        .chain(&deployment.residency_countries)
        .map(|code| uid(COUNTRY, code));
    let accelerators = node.gpu_models.iter().map(|model| uid(ACCELERATOR, model));
    countries.chain(accelerators).collect()
}

/// Requests with every attribute sov can supply, with and without the optional ones: the
/// bundle's schema must accept all of them, or every evaluation would fail. Without
/// `with_fact_trust`, the node as a schema written before `fact_trust` declares it.
pub(super) fn probes(with_fact_trust: bool) -> Vec<(Entity, Entity)> {
    let full_deployment = DeploymentSignature {
        model: "probe".into(),
        eccn: "EAR99".into(),
        weights_published: false,
        training_compute_log10: 0,
        lineage: BTreeSet::from(["probe".into()]),
        residency_countries: BTreeSet::from(["FR".into()]),
        residency_groups: BTreeSet::from(["probe".into()]),
        min_location_trust: 0,
        required_certifications: BTreeSet::from(["probe".into()]),
    };
    let full_node = NodeSignature {
        country: "FR".into(),
        subdivision: String::new(),
        site: String::new(),
        operator: String::new(),
        operator_hq: "FR".into(),
        ultimate_parent_hq: "FR".into(),
        certifications: BTreeSet::from(["probe".into()]),
        location_trust: 1,
        fact_trust: [1; 6],
        gpu_models: BTreeSet::from(["probe".into()]),
    };
    let bare_node = NodeSignature {
        operator_hq: String::new(),
        ultimate_parent_hq: String::new(),
        ..full_node.clone()
    };
    let no_eccns = BTreeMap::new();
    [full_node, bare_node]
        .iter()
        .map(|node| {
            // Built from constants, so these cannot fail; a failure would be a bug here.
            let p =
                principal(&full_deployment, PRINCIPAL_ID).expect("probe principal is well-formed");
            let r = resource(node, RESOURCE_ID, &no_eccns, with_fact_trust)
                .expect("probe resource is well-formed");
            (p, r)
        })
        .collect()
}
