//! Validation of everything a user can put into the replicated state.
//!
//! The API calls these before proposing (so bad input is answered with `InvalidArgument` and
//! nothing is written) and `apply` calls them again (so a command that reached the log another
//! way is rejected identically on every replica). Every field has an explicit upper bound: the
//! log, snapshots and every replica's memory are sized by what these functions let through.

use serde::{Deserialize, Serialize};

use super::iso3166;
use super::node::{Inventory, LocationTrust, NodeFacts};
use super::{DeploymentSpec, ExportAttrs, HealthCheck, HealthProbe, Proposal, Residency};

pub const MAX_DEPLOYMENTS: usize = 10_000;
pub const MAX_NODES: usize = 100_000;
pub const NAME_LEN_MAX: usize = 63;
pub const MODEL_LEN_MAX: usize = 256;
pub const REPLICAS_MAX: u32 = 1_000;
pub const GPU_COUNT_MAX: u32 = 64;
pub const GPU_MEMORY_MIB_MAX: u64 = 4 * 1024 * 1024;
pub const CPU_MILLIS_MAX: u32 = 4_096_000;
pub const MEMORY_MIB_MAX: u64 = 64 * 1024 * 1024;
pub const COMMAND_ARGS_MAX: usize = 128;
/// Longest free text a history record carries (a refusal's reason, who did it).
pub const RECORD_TEXT_BYTES_MAX: usize = 1024;
pub const COMMAND_ARG_LEN_MAX: usize = 4_096;
pub const ENV_ENTRIES_MAX: usize = 128;
pub const ENV_KEY_LEN_MAX: usize = 128;
pub const ENV_VALUE_LEN_MAX: usize = 4_096;
pub const LABELS_MAX: usize = 64;
pub const LABEL_KEY_LEN_MAX: usize = 63;
pub const LABEL_VALUE_LEN_MAX: usize = 256;
pub const CLUSTER_ID_LEN_MAX: usize = 64;
pub const ECCN_LEN_MAX: usize = 16;
pub const COMMENT_LEN_MAX: usize = 4_096;
pub const HEALTH_PATH_LEN_MAX: usize = 256;
pub const HEALTH_INTERVAL_MS_MIN: u32 = 1_000;
pub const HEALTH_INTERVAL_MS_MAX: u32 = 3_600_000;
pub const DISCONNECT_MS_MIN: u64 = 1_000;
pub const DISCONNECT_MS_MAX: u64 = 7 * 24 * 3_600_000;
pub const TRAINING_COMPUTE_LOG10_MAX: u32 = 40;
pub const LINEAGE_MAX: usize = 32;
pub const RESIDENCY_ENTRIES_MAX: usize = 64;
pub const GROUP_NAME_LEN_MAX: usize = 64;
pub const CERTIFICATIONS_MAX: usize = 32;
/// Status reports one command may carry; an agent sends transitions, rarely more than a few.
pub const REPORTS_MAX: usize = 256;
/// Nodes one `ReportMany` may carry, and reports in all: bounds one Raft entry (about 100 bytes
/// a report) and one apply.
pub const REPORT_NODES_MAX: usize = 4_096;
pub const REPORTS_TOTAL_MAX: usize = 32_768;
/// Model servers never get privileged ports.
pub const PORT_MIN: u16 = 1_024;
/// Nodes one liveness command may change (the leader splits bigger batches).
pub const STATUS_BATCH_MAX: usize = 10_000;
pub const REASON_LEN_MAX: usize = 1_024;
/// `<deployment>-<raft index>-<n>` fits easily.
pub const ALLOCATION_ID_LEN_MAX: usize = 128;
pub const CERTIFICATION_LEN_MAX: usize = 64;
/// Longest a replica may keep running after it was told to move (a migrate rule, a drain).
pub const MOVE_DEADLINE_MS_MAX: u64 = 30 * 24 * 3_600_000;
/// Stops one reconcile round may carry: bounds one Raft entry (about 100 bytes a stop) and one
/// apply, like `plan::PLAN_PLACEMENTS_MAX`.
pub const PLAN_STOPS_MAX: usize = 20_000;
/// A plan hash is hex SHA-256.
pub const PLAN_HASH_LEN: usize = 64;

/// Environment variables the agent sets itself for every model server; a spec may not set them.
/// Set by the agent for every model server (which GPUs, which port, who it is and where).
const RESERVED_ENV: [&str; 6] = [
    "CUDA_VISIBLE_DEVICES",
    "PORT",
    "SOV_ALLOCATION",
    "SOV_DEPLOYMENT",
    "SOV_NODE",
    "SOV_COUNTRY",
];

/// One precise complaint about one field, worded for the person who wrote the spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Dotted path of the offending field, e.g. `spec.resources.gpu_count`.
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.into(),
        message: message.into(),
    }
}

/// A DNS label: what Kubernetes and Nomad users already know, and safe in file names and URLs.
pub fn validate_deployment_name(name: &str) -> Result<(), ValidationError> {
    let field = "spec.name";
    if name.is_empty() {
        return Err(invalid(field, "is required"));
    }
    if name.len() > NAME_LEN_MAX {
        return Err(invalid(
            field,
            format!(
                "is {} characters long; the limit is {NAME_LEN_MAX}",
                name.len()
            ),
        ));
    }
    let dns_label = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let starts_ok = name.as_bytes()[0].is_ascii_lowercase();
    if !dns_label || !starts_ok || name.ends_with('-') {
        return Err(invalid(
            field,
            format!(
                "{name:?} must be a DNS label: lowercase letters, digits and '-', starting with a \
                 letter and not ending with '-' (e.g. \"mistral-7b\")"
            ),
        ));
    }
    Ok(())
}

fn validate_text(field: &str, value: &str, len_max: usize) -> Result<(), ValidationError> {
    if value.len() > len_max {
        return Err(invalid(
            field,
            format!("is {} bytes long; the limit is {len_max}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

fn check_max<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    max: T,
) -> Result<(), ValidationError> {
    if value > max {
        return Err(invalid(field, format!("is {value}; the limit is {max}")));
    }
    Ok(())
}

pub fn validate_spec(spec: &DeploymentSpec) -> Result<(), ValidationError> {
    validate_deployment_name(&spec.name)?;
    if spec.model.trim().is_empty() {
        return Err(invalid(
            "spec.model",
            "is required (e.g. \"mistralai/Mistral-7B-Instruct-v0.3\")",
        ));
    }
    validate_text("spec.model", &spec.model, MODEL_LEN_MAX)?;
    check_max("spec.replicas", spec.replicas, REPLICAS_MAX)?;

    let r = &spec.resources;
    check_max("spec.resources.gpu_count", r.gpu_count, GPU_COUNT_MAX)?;
    validate_text("spec.resources.gpu_model", &r.gpu_model, MODEL_LEN_MAX)?;
    check_max(
        "spec.resources.gpu_memory_mib",
        r.gpu_memory_mib,
        GPU_MEMORY_MIB_MAX,
    )?;
    check_max("spec.resources.cpu_millis", r.cpu_millis, CPU_MILLIS_MAX)?;
    check_max("spec.resources.memory_mib", r.memory_mib, MEMORY_MIB_MAX)?;
    if r.gpu_count == 0 && (r.gpu_memory_mib > 0 || !r.gpu_model.is_empty()) {
        return Err(invalid(
            "spec.resources.gpu_count",
            "is 0 but gpu_model or gpu_memory_mib is set; request at least one GPU or drop them",
        ));
    }

    if spec.command.len() > COMMAND_ARGS_MAX {
        return Err(invalid(
            "spec.command",
            format!(
                "has {} arguments; the limit is {COMMAND_ARGS_MAX}",
                spec.command.len()
            ),
        ));
    }
    if spec.command.first().is_some_and(|c| c.trim().is_empty()) {
        return Err(invalid(
            "spec.command[0]",
            "the program to run must not be empty",
        ));
    }
    for (i, arg) in spec.command.iter().enumerate() {
        if arg.contains('\0') {
            return Err(invalid(
                format!("spec.command[{i}]"),
                "must not contain NUL bytes",
            ));
        }
        check_max(
            &format!("spec.command[{i}] length"),
            arg.len(),
            COMMAND_ARG_LEN_MAX,
        )?;
    }

    check_max("spec.env entries", spec.env.len(), ENV_ENTRIES_MAX)?;
    for (key, value) in &spec.env {
        let field = format!("spec.env.{key}");
        let shape_ok = !key.is_empty()
            && key.len() <= ENV_KEY_LEN_MAX
            && !key.as_bytes()[0].is_ascii_digit()
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !shape_ok {
            return Err(invalid(
                field,
                format!(
                    "{key:?} is not a valid variable name: letters, digits and '_', not starting with a digit, at most {ENV_KEY_LEN_MAX} characters"
                ),
            ));
        }
        if RESERVED_ENV.contains(&key.as_str()) {
            return Err(invalid(
                field,
                "is set by the agent for every model server and cannot be overridden",
            ));
        }
        if value.contains('\0') {
            return Err(invalid(field, "must not contain NUL bytes"));
        }
        check_max(&format!("{field} length"), value.len(), ENV_VALUE_LEN_MAX)?;
    }

    validate_export(&spec.export)?;
    validate_residency(&spec.residency)?;
    validate_health(&spec.health)?;
    check_max(
        "spec.placement.prefer_countries entries",
        spec.placement.prefer_countries.len(),
        RESIDENCY_ENTRIES_MAX,
    )?;
    for (i, c) in spec.placement.prefer_countries.iter().enumerate() {
        if !iso3166::is_country(c) {
            return Err(invalid(
                format!("spec.placement.prefer_countries[{i}]"),
                format!("{c:?} is not an ISO 3166-1 alpha-2 country code"),
            ));
        }
    }
    check_max(
        "spec.placement.prefer_sites entries",
        spec.placement.prefer_sites.len(),
        RESIDENCY_ENTRIES_MAX,
    )?;
    for (i, site) in spec.placement.prefer_sites.iter().enumerate() {
        validate_text(
            &format!("spec.placement.prefer_sites[{i}]"),
            site,
            MODEL_LEN_MAX,
        )?;
    }
    if spec.migration.max_parallel == 0 || spec.migration.max_parallel > REPLICAS_MAX {
        return Err(invalid(
            "spec.migration.max_parallel",
            format!(
                "is {}; it must be between 1 and {REPLICAS_MAX}",
                spec.migration.max_parallel
            ),
        ));
    }
    check_max(
        "spec.migration.deadline_ms",
        spec.migration.deadline_ms,
        MOVE_DEADLINE_MS_MAX,
    )?;
    if spec.stop_after_disconnect_ms != 0 {
        let ok = (DISCONNECT_MS_MIN..=DISCONNECT_MS_MAX).contains(&spec.stop_after_disconnect_ms);
        if !ok {
            return Err(invalid(
                "spec.stop_after_disconnect",
                format!(
                    "must be between 1s and 7d (or unset), not {} ms",
                    spec.stop_after_disconnect_ms
                ),
            ));
        }
    }

    if !spec.working_dir.is_empty() {
        validate_text("spec.working_dir", &spec.working_dir, COMMAND_ARG_LEN_MAX)?;
        let ok = spec.working_dir.starts_with('/')
            && !spec.working_dir.split('/').any(|part| part == "..");
        if !ok {
            return Err(invalid(
                "spec.working_dir",
                format!(
                    "{:?} must be an absolute path without \"..\" (or unset: the allocation's own directory)",
                    spec.working_dir
                ),
            ));
        }
    }
    check_max("spec.labels entries", spec.labels.len(), LABELS_MAX)?;
    for (key, value) in &spec.labels {
        let field = format!("spec.labels.{key}");
        let shape_ok = !key.is_empty()
            && key.len() <= LABEL_KEY_LEN_MAX
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_./".contains(&b));
        if !shape_ok {
            return Err(invalid(
                field,
                format!(
                    "{key:?} is not a valid label key: lowercase letters, digits, '-', '_', '.', '/', at most {LABEL_KEY_LEN_MAX} characters"
                ),
            ));
        }
        validate_text(&field, value, LABEL_VALUE_LEN_MAX)?;
    }
    Ok(())
}

fn validate_export(export: &ExportAttrs) -> Result<(), ValidationError> {
    let eccn_ok = !export.eccn.is_empty()
        && export.eccn.len() <= ECCN_LEN_MAX
        && export
            .eccn
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if !eccn_ok {
        return Err(invalid(
            "spec.export.eccn",
            format!(
                "{:?} is not an export classification: upper-case letters and digits, e.g. \"4E091\" or \"EAR99\"",
                export.eccn
            ),
        ));
    }
    check_max(
        "spec.export.training_compute_log10",
        export.training_compute_log10,
        TRAINING_COMPUTE_LOG10_MAX,
    )?;
    check_max(
        "spec.export.lineage entries",
        export.lineage.len(),
        LINEAGE_MAX,
    )?;
    for (i, model) in export.lineage.iter().enumerate() {
        validate_text(&format!("spec.export.lineage[{i}]"), model, MODEL_LEN_MAX)?;
    }
    Ok(())
}

fn validate_health(health: &HealthCheck) -> Result<(), ValidationError> {
    if let HealthProbe::Http(path) = &health.probe {
        let ok = path.starts_with('/')
            && path.len() <= HEALTH_PATH_LEN_MAX
            && !path.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            return Err(invalid(
                "spec.health.http",
                format!(
                    "{path:?} must be a URL path starting with '/', without spaces, at most {HEALTH_PATH_LEN_MAX} bytes"
                ),
            ));
        }
    }
    if health.probe == HealthProbe::Off {
        return Ok(());
    }
    if !(HEALTH_INTERVAL_MS_MIN..=HEALTH_INTERVAL_MS_MAX).contains(&health.interval_ms) {
        return Err(invalid(
            "spec.health.interval",
            format!("must be between 1s and 1h, not {} ms", health.interval_ms),
        ));
    }
    if health.timeout_ms == 0 || health.timeout_ms > health.interval_ms {
        return Err(invalid(
            "spec.health.timeout",
            format!(
                "must be above 0 and at most the interval ({} ms), not {} ms",
                health.interval_ms, health.timeout_ms
            ),
        ));
    }
    Ok(())
}

/// A jurisdiction group name as policy bundles define them (e.g. "EU27", "GDPR-adequate").
pub fn is_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= GROUP_NAME_LEN_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b))
}

/// Certification names are lower-case identifiers, e.g. "secnumcloud", "c5-type2".
pub fn is_certification_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= CERTIFICATION_LEN_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn validate_residency(residency: &Residency) -> Result<(), ValidationError> {
    check_max(
        "spec.residency.allowed entries",
        residency.allowed.len(),
        RESIDENCY_ENTRIES_MAX,
    )?;
    for (i, place) in residency.allowed.iter().enumerate() {
        let looks_like_country = place.len() == 2 && place.bytes().all(|b| b.is_ascii_alphabetic());
        if looks_like_country && !iso3166::is_country(place) {
            return Err(invalid(
                format!("spec.residency.allowed[{i}]"),
                format!(
                    "{place:?} is not an ISO 3166-1 alpha-2 country code (upper case, e.g. \"FR\"; the United Kingdom is \"GB\")"
                ),
            ));
        }
        if !looks_like_country && !is_group_name(place) {
            return Err(invalid(
                format!("spec.residency.allowed[{i}]"),
                format!(
                    "{place:?} is neither a country code nor a jurisdiction group name (e.g. \"EU27\")"
                ),
            ));
        }
    }
    check_max(
        "spec.residency.min_location_trust",
        residency.min_location_trust,
        LocationTrust::HardwareAttested.level(),
    )?;
    check_max(
        "spec.residency.required_certifications entries",
        residency.required_certifications.len(),
        CERTIFICATIONS_MAX,
    )?;
    for (i, cert) in residency.required_certifications.iter().enumerate() {
        if !is_certification_name(cert) {
            return Err(invalid(
                format!("spec.residency.required_certifications[{i}]"),
                format!(
                    "{cert:?} is not a certification name: lower-case letters, digits and '-', e.g. \"secnumcloud\""
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a calendar date written as YYYY-MM-DD.
pub fn is_date(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return false;
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return false;
    }
    let (Ok(y), Ok(m), Ok(d)) = (y.parse::<u32>(), m.parse::<u32>(), d.parse::<u32>()) else {
        return false;
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&d)
}

/// Checks a node's name, location facts and inventory: what registration writes into state.
pub fn validate_node(
    name: &str,
    facts: &NodeFacts,
    inventory: &Inventory,
) -> Result<(), ValidationError> {
    if let Err(e) = validate_deployment_name(name) {
        return Err(invalid("node.name", e.message));
    }
    if !iso3166::is_country(&facts.country) {
        return Err(invalid(
            "facts.country",
            format!(
                "{:?} is not an ISO 3166-1 alpha-2 country code (upper case, e.g. \"FR\")",
                facts.country
            ),
        ));
    }
    if !facts.subdivision.is_empty()
        && !iso3166::is_subdivision_of(&facts.subdivision, &facts.country)
    {
        return Err(invalid(
            "facts.subdivision",
            format!(
                "{:?} is not an ISO 3166-2 code of {} (e.g. \"{}-XX\")",
                facts.subdivision, facts.country, facts.country
            ),
        ));
    }
    for (field, value) in [
        ("facts.operator_hq", &facts.operator_hq),
        ("facts.ultimate_parent_hq", &facts.ultimate_parent_hq),
    ] {
        if !value.is_empty() && !iso3166::is_country(value) {
            return Err(invalid(
                field,
                format!("{value:?} is not an ISO 3166-1 alpha-2 country code"),
            ));
        }
    }
    validate_text("facts.site", &facts.site, MODEL_LEN_MAX)?;
    validate_text("facts.operator", &facts.operator, MODEL_LEN_MAX)?;
    check_max(
        "facts.certifications entries",
        facts.certifications.len(),
        CERTIFICATIONS_MAX,
    )?;
    for (cert, until) in &facts.certifications {
        if !is_certification_name(cert) {
            return Err(invalid(
                format!("facts.certifications.{cert}"),
                "is not a certification name: lower-case letters, digits and '-'",
            ));
        }
        if !is_date(until) {
            return Err(invalid(
                format!("facts.certifications.{cert}"),
                format!("valid-until {until:?} is not a date (YYYY-MM-DD)"),
            ));
        }
    }
    check_max("inventory.cpu_millis", inventory.cpu_millis, CPU_MILLIS_MAX)?;
    check_max("inventory.memory_mib", inventory.memory_mib, MEMORY_MIB_MAX)?;
    if (inventory.port_first, inventory.port_last) != (0, 0) {
        let (first, last) = (inventory.port_first, inventory.port_last);
        if first < PORT_MIN || last < first {
            return Err(invalid(
                "inventory.ports",
                format!(
                    "{first}-{last} is not a port range: need {PORT_MIN} <= first <= last (or neither set, for 20000-20999)"
                ),
            ));
        }
    }
    check_max(
        "inventory.gpus entries",
        inventory.gpus.len(),
        GPU_COUNT_MAX as usize,
    )?;
    for (i, gpu) in inventory.gpus.iter().enumerate() {
        if gpu.uuid.is_empty() || inventory.gpus[..i].iter().any(|g| g.uuid == gpu.uuid) {
            return Err(invalid(
                format!("inventory.gpus[{i}].uuid"),
                format!("{:?} must be present and unique", gpu.uuid),
            ));
        }
        validate_text(
            &format!("inventory.gpus[{i}].model"),
            &gpu.model,
            MODEL_LEN_MAX,
        )?;
        check_max(
            &format!("inventory.gpus[{i}].memory_mib"),
            gpu.memory_mib,
            GPU_MEMORY_MIB_MAX,
        )?;
    }
    Ok(())
}

pub fn validate_proposal(proposal: &Proposal) -> Result<(), ValidationError> {
    match proposal {
        Proposal::InitCluster { cluster_id } => {
            let ok = !cluster_id.is_empty()
                && cluster_id.len() <= CLUSTER_ID_LEN_MAX
                && cluster_id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if ok {
                Ok(())
            } else {
                Err(invalid(
                    "cluster_id",
                    format!("{cluster_id:?} must be 1-{CLUSTER_ID_LEN_MAX} of [a-z0-9-]"),
                ))
            }
        }
        Proposal::ApplyDeployment { spec, .. } => validate_spec(spec),
        Proposal::DeleteDeployment { name } => validate_deployment_name(name),
        Proposal::RegisterNode { node } => validate_node(&node.name, &node.facts, &node.inventory),
        Proposal::ApplyPolicy {
            bundle,
            expected_plan_hash,
        } => {
            validate_text("author", &bundle.author, MODEL_LEN_MAX)?;
            validate_text("comment", &bundle.comment, COMMENT_LEN_MAX)?;
            match expected_plan_hash {
                Some(h)
                    if h.len() != PLAN_HASH_LEN
                        || !h
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
                {
                    Err(invalid(
                        "plan_hash",
                        format!(
                            "{h:?} is not a plan hash: 64 lowercase hex digits, as `sovctl policy plan` prints"
                        ),
                    ))
                }
                _ => Ok(()),
            }
        }
        Proposal::ApplyPlan { placements, stops } => {
            check_max(
                "placements",
                placements.len(),
                super::plan::PLAN_PLACEMENTS_MAX,
            )?;
            check_max("stops", stops.len(), PLAN_STOPS_MAX)
        }
        Proposal::SetDraining {
            name, deadline_ms, ..
        } => {
            validate_deployment_name(name).map_err(|e| invalid("node.name", e.message))?;
            check_max("deadline_ms", *deadline_ms, MOVE_DEADLINE_MS_MAX)
        }
        Proposal::CheckCompliance {} => Ok(()),
        Proposal::RefuseRegistration { node, reason, by } => {
            validate_deployment_name(node).map_err(|e| invalid("node", e.message))?;
            check_max("reason", reason.len(), RECORD_TEXT_BYTES_MAX)?;
            check_max("by", by.len(), RECORD_TEXT_BYTES_MAX)
        }
        Proposal::RecordMembership { change, by } => {
            check_max("change", change.len(), RECORD_TEXT_BYTES_MAX)?;
            check_max("by", by.len(), RECORD_TEXT_BYTES_MAX)
        }
        Proposal::ReportAllocations { node, reports } => validate_reports(node, reports),
        Proposal::ReportMany { nodes } => {
            check_max("nodes", nodes.len(), REPORT_NODES_MAX)?;
            let total: usize = nodes.iter().map(|n| n.reports.len()).sum();
            check_max("reports", total, REPORTS_TOTAL_MAX)?;
            for n in nodes {
                validate_reports(&n.node, &n.reports)?;
            }
            Ok(())
        }
        Proposal::SetNodeStatus { names, .. } => {
            check_max("names", names.len(), STATUS_BATCH_MAX)?;
            for name in names {
                validate_deployment_name(name).map_err(|e| invalid("node.name", e.message))?;
            }
            Ok(())
        }
    }
}

/// One node's status reports, as an agent sends them.
pub fn validate_node_reports(n: &super::NodeReports) -> Result<(), ValidationError> {
    validate_reports(&n.node, &n.reports)
}

/// One node's status reports: its name, how many, and each report's fields.
fn validate_reports(node: &str, reports: &[super::AllocReport]) -> Result<(), ValidationError> {
    validate_deployment_name(node).map_err(|e| invalid("node", e.message))?;
    check_max("reports", reports.len(), REPORTS_MAX)?;
    for r in reports {
        if r.id.is_empty() || r.id.len() > ALLOCATION_ID_LEN_MAX {
            return Err(invalid(
                "allocation_id",
                format!("must be 1-{ALLOCATION_ID_LEN_MAX} characters"),
            ));
        }
        validate_text("reason", &r.reason, REASON_LEN_MAX)?;
    }
    Ok(())
}
