//! Compiling a policy bundle: file layout and limits, Cedar parsing, annotations, entity data,
//! schema validation, and the checks Cedar does not do (unknown group ids, policies naming one
//! deployment or node, annotation values). Either every check passes and a [`CompiledPolicy`]
//! comes out, or a [`BundleError`] lists every problem with its file, line and column.
//!
//! Owns: [`compile`] and the compiled form ([`Compiled`]). Must not touch: evaluation
//! (`evaluate.rs`), the shape of the principal and resource (`entities.rs`), I/O: the caller
//! reads the files.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::ffi::DetailedError;
use cedar_policy::{
    Authorizer, Entities, Entity, EntityUid, EvalResult, Policy, PolicyId, PolicySet, Schema,
    ValidationMode, Validator,
};
use sha2::{Digest, Sha256};

use super::entities::{self, ACCELERATOR, ACTION, COUNTRY, DEPLOYMENT, GROUP, NODE};
use super::{
    BUNDLE_BYTES_MAX, BUNDLE_FILES_MAX, BundleError, CompiledPolicy, ENTITIES_MAX, Effect,
    FILE_NAME_LEN_MAX, OnChange, POLICIES_MAX, PROBLEMS_MAX, Problem, REASON_LEN_MAX,
    RESERVED_RULE_IDS, RULE_ID_LEN_MAX, Rule,
};
use crate::state::{is_group_name, iso3166};

/// A bundle after every check passed. Immutable; shared through [`CompiledPolicy`].
pub(super) struct Compiled {
    pub hash: String,
    pub rules: Vec<Rule>,
    /// Rule id -> index in `rules`, to put Cedar's answers back into bundle order.
    pub rule_index: BTreeMap<String, usize>,
    pub groups: BTreeSet<String>,
    /// GPU model -> export class, from the Accelerator entities.
    pub accelerator_eccns: BTreeMap<String, String>,
    pub schema: Schema,
    /// Whether the schema declares the node's `fact_trust` record. Bundles written before it
    /// existed (and active in clusters that were upgraded) do not: sov then leaves the
    /// attribute out rather than refuse the bundle, which would stop placing anything.
    pub node_fact_trust: bool,
    /// Forbids and permits are evaluated separately: Cedar reports only the forbids when it
    /// denies, and an explanation also needs to know whether any permit matched.
    pub forbids: PolicySet,
    pub permits: PolicySet,
    /// Every Country, Group and Accelerator, and the schema's actions, with their ancestors
    /// computed once.
    pub entities: Entities,
    /// Every name the policies mention (attribute names, string literals, entity ids): an
    /// attribute of the principal or the resource that is not in here is read by no policy.
    pub mentioned: BTreeSet<String>,
    /// Per rule (in `rules` order): the names that policy mentions, and a policy set holding
    /// that policy alone, so the evaluator can decide each rule on its own classes.
    pub rule_mentioned: Vec<BTreeSet<String>>,
    pub rule_sets: Vec<PolicySet>,
    /// The entities every request's store starts from: all groups, the actions, and every
    /// entity a policy names. Each request adds what its principal and resource refer to
    /// (see `evaluate::request_store`).
    pub always: Entities,
    pub authorizer: Authorizer,
}

const ANNOTATION_ID: &str = "id";
const ANNOTATION_REASON: &str = "reason";
const ANNOTATION_ON_CHANGE: &str = "on_change";

/// Compiles and validates a bundle: `files` maps file names to contents. Exactly one
/// `*.cedarschema`, exactly one `*.json` entity file and one or more `*.cedar` files; any other
/// name is an error (loaders skip documentation such as `README.md` themselves).
pub fn compile(files: &BTreeMap<String, String>) -> Result<CompiledPolicy, BundleError> {
    let layout = layout(files).map_err(finish)?;
    let mut problems = Vec::new();

    let schema = parse_schema(layout.schema, &mut problems);
    let mut parsed = Vec::new();
    for &(file, text) in &layout.policies {
        parsed.extend(parse_policy_file(file, text, &mut problems));
    }
    check_policy_count(&parsed, &mut problems);
    let parsed = unique_ids(parsed, &mut problems);
    let data = schema
        .as_ref()
        .and_then(|(schema, _)| parse_entity_data(layout.entities, schema, &mut problems));

    let (Some((schema, node_fact_trust)), Some(data)) = (schema, data) else {
        return Err(finish(problems));
    };
    validate_policies(&schema, &parsed, &mut problems);
    check_entity_literals(&parsed, &data, &mut problems);
    // Only on an otherwise clean bundle: a permit with a syntax error is already reported.
    if problems.is_empty() && !parsed.iter().any(|p| p.rule.effect == Effect::Permit) {
        problems.push(problem_at(
            layout.policies[0].0,
            None,
            "the bundle has no permit policy, so every placement would be denied; add one \
             (e.g. @id(\"base-permit\") permit (principal, action == Action::\"Place\", \
             resource);)"
                .into(),
        ));
    }
    if !problems.is_empty() {
        return Err(finish(problems));
    }

    // What follows cannot fail on a bundle that passed every check; a failure would be a bug
    // here or in Cedar, so it is reported rather than trusted.
    assemble(files, parsed, schema, node_fact_trust, data)
        .map_err(|message| finish(vec![problem_at("", None, message)]))
}

/// The compiled form of a bundle that passed every check.
fn assemble(
    files: &BTreeMap<String, String>,
    parsed: Vec<Parsed>,
    schema: Schema,
    node_fact_trust: bool,
    data: EntityData,
) -> Result<CompiledPolicy, String> {
    let (forbids, permits): (Vec<&Parsed>, Vec<&Parsed>) =
        parsed.iter().partition(|p| p.rule.effect == Effect::Forbid);
    let (forbids, permits) = (policy_set(forbids)?, policy_set(permits)?);
    let actions = data
        .entities
        .iter()
        .map(Entity::uid)
        .filter(|uid| uid.type_name().to_string() == ACTION);
    let always = data
        .groups
        .iter()
        .map(|group| entities::uid(GROUP, group))
        .chain(actions)
        .chain(parsed.iter().flat_map(|p| p.policy.entity_literals()))
        .collect::<BTreeSet<EntityUid>>()
        .into_iter()
        .filter_map(|uid| data.entities.get(&uid).cloned());
    let always = Entities::from_entities(always, None).map_err(|e| e.to_string())?;
    let rule_mentioned = parsed
        .iter()
        .map(|p| mentioned_names(std::slice::from_ref(p)))
        .collect::<Result<Vec<_>, _>>()?;
    let mentioned = rule_mentioned.iter().flatten().cloned().collect();
    let rule_sets = parsed
        .iter()
        .map(|p| policy_set([p]))
        .collect::<Result<Vec<_>, _>>()?;
    let rules: Vec<Rule> = parsed.into_iter().map(|p| p.rule).collect();
    let rule_index = rules
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.clone(), i))
        .collect();
    Ok(CompiledPolicy {
        inner: Arc::new(Compiled {
            hash: hash(files),
            rules,
            rule_index,
            groups: data.groups,
            accelerator_eccns: data.accelerator_eccns,
            schema,
            node_fact_trust,
            forbids,
            permits,
            entities: data.entities,
            mentioned,
            rule_mentioned,
            rule_sets,
            always,
            authorizer: Authorizer::new(),
        }),
    })
}

/// Every string in the policies' JSON form (Cedar's EST) except their annotations: attribute
/// names of `.attr`, `has attr` and `["attr"]` all appear there as strings, and Cedar has no
/// other way to read an attribute, so this over-approximates what the policies can read. The
/// evaluator leaves every other attribute out of its signatures (`entities.rs`, `projected`).
fn mentioned_names(parsed: &[Parsed]) -> Result<BTreeSet<String>, String> {
    fn walk(value: &serde_json::Value, out: &mut BTreeSet<String>) {
        match value {
            serde_json::Value::String(s) => {
                out.insert(s.clone());
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            serde_json::Value::Object(fields) => fields
                .iter()
                .filter(|(key, _)| key.as_str() != "annotations")
                .for_each(|(key, v)| {
                    // Record keys in a policy's record literals are names too.
                    out.insert(key.clone());
                    walk(v, out)
                }),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    for p in parsed {
        walk(&p.policy.to_json().map_err(|e| e.to_string())?, &mut out);
    }
    Ok(out)
}

/// A Cedar policy set of parsed policies (their ids are unique by now).
fn policy_set<'a: 'p, 'p>(
    parsed: impl IntoIterator<Item = &'p Parsed<'a>>,
) -> Result<PolicySet, String> {
    PolicySet::from_policies(parsed.into_iter().map(|p| p.policy.clone()))
        .map_err(|e| e.to_string())
}

/// Hex SHA-256 over (name length, name, contents length, contents) of every file in name
/// order; lengths are u64 big-endian so no two bundles hash the same bytes.
pub(super) fn hash(files: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (name, text) in files {
        hasher.update((name.len() as u64).to_be_bytes());
        hasher.update(name.as_bytes());
        hasher.update((text.len() as u64).to_be_bytes());
        hasher.update(text.as_bytes());
    }
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// A policy id as text (`PolicyId` is `AsRef` of two types, so the call needs a name).
pub(super) fn id_str(id: &PolicyId) -> &str {
    id.as_ref()
}

/// Sorts problems into file, line, column order and caps their number.
fn finish(mut problems: Vec<Problem>) -> BundleError {
    debug_assert!(!problems.is_empty(), "a rejected bundle says why");
    problems.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    if problems.len() > PROBLEMS_MAX {
        let more = problems.len() - PROBLEMS_MAX;
        problems.truncate(PROBLEMS_MAX);
        problems.push(Problem {
            file: String::new(),
            line: 0,
            column: 0,
            message: format!("... and {more} more problems; fix these first"),
        });
    }
    BundleError { problems }
}

/// A problem at a byte offset of `text` (line and column 0 when the offset is unknown).
fn problem_at(file: &str, position: Option<(&str, usize)>, message: String) -> Problem {
    let (line, column) = position.map_or((0, 0), |(text, offset)| line_column(text, offset));
    Problem {
        file: file.to_owned(),
        line,
        column,
        message,
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (u32, u32) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    (to_u32(line), to_u32(column))
}

/// Cedar's message (with its causes and help) and the byte offset of its first label. Cedar
/// exposes spans only through `miette`; its FFI `DetailedError` flattens them into plain
/// numbers, which is all a `Problem` needs.
fn detail(error: DetailedError) -> (String, Option<usize>) {
    let offset = error
        .source_locations
        .first()
        .or_else(|| {
            error
                .related
                .iter()
                .find_map(|related| related.source_locations.first())
        })
        .map(|label| label.loc.start);
    let mut message = error.message;
    for related in &error.related {
        message.push_str("; ");
        message.push_str(&related.message);
    }
    if let Some(help) = error.help {
        message.push_str(" (");
        message.push_str(&help);
        message.push(')');
    }
    (message, offset)
}

struct Layout<'a> {
    schema: (&'a str, &'a str),
    entities: (&'a str, &'a str),
    policies: Vec<(&'a str, &'a str)>,
}

fn layout(files: &BTreeMap<String, String>) -> Result<Layout<'_>, Vec<Problem>> {
    let mut problems = Vec::new();
    let whole = |message: String| problem_at("", None, message);
    if files.len() > BUNDLE_FILES_MAX {
        problems.push(whole(format!(
            "the bundle has {} files; the limit is {BUNDLE_FILES_MAX}",
            files.len()
        )));
    }
    let bytes: usize = files
        .iter()
        .map(|(name, text)| name.len() + text.len())
        .sum();
    if bytes > BUNDLE_BYTES_MAX {
        problems.push(whole(format!(
            "the bundle is {bytes} bytes; the limit is {BUNDLE_BYTES_MAX}"
        )));
    }
    let mut schemas = Vec::new();
    let mut data = Vec::new();
    let mut policies = Vec::new();
    for (name, text) in files {
        let plain = !name.is_empty()
            && name.len() <= FILE_NAME_LEN_MAX
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !plain {
            problems.push(problem_at(
                name,
                None,
                format!(
                    "file names are letters, digits, '.', '_' and '-' (at most \
                     {FILE_NAME_LEN_MAX}, not starting with '.'), without directories"
                ),
            ));
        } else if name.ends_with(".cedarschema") {
            schemas.push((name.as_str(), text.as_str()));
        } else if name.ends_with(".json") {
            data.push((name.as_str(), text.as_str()));
        } else if name.ends_with(".cedar") {
            policies.push((name.as_str(), text.as_str()));
        } else {
            problems.push(problem_at(
                name,
                None,
                "is not part of a bundle: only *.cedar (policies), one *.cedarschema and one \
                 *.json (entity data) are"
                    .into(),
            ));
        }
    }
    for (found, kind, example) in [
        (&schemas, "*.cedarschema schema", "schema.cedarschema"),
        (&data, "*.json entity data file", "entities.json"),
    ] {
        if found.len() != 1 {
            let names: Vec<&str> = found.iter().map(|(name, _)| *name).collect();
            problems.push(whole(format!(
                "a bundle has exactly one {kind} (e.g. {example}); found {}: {names:?}",
                found.len()
            )));
        }
    }
    if policies.is_empty() {
        problems.push(whole(
            "a bundle has at least one *.cedar policy file".into(),
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Layout {
        schema: schemas[0],
        entities: data[0],
        policies,
    })
}

/// The schema, and whether it declares the node's `fact_trust`.
fn parse_schema((file, text): (&str, &str), problems: &mut Vec<Problem>) -> Option<(Schema, bool)> {
    let schema = match Schema::from_cedarschema_str(text) {
        // Schema warnings (shadowed names) do not change meaning; they are not problems.
        Ok((schema, _warnings)) => schema,
        Err(e) => {
            let (message, offset) = detail(DetailedError::from(&e));
            problems.push(problem_at(file, offset.map(|o| (text, o)), message));
            return None;
        }
    };
    // sov builds the principal and resource itself; a schema that does not accept them would
    // make every evaluation fail, so it is refused now. A schema from before `fact_trust` is
    // accepted as it is (its policies cannot mention the record: validation refuses them).
    let accepts = |with_fact_trust: bool| {
        entities::probes(with_fact_trust)
            .into_iter()
            .try_for_each(|(principal, resource)| {
                Entities::from_entities([principal, resource], Some(&schema))
                    .map(drop)
                    .map_err(|e| detail(DetailedError::from(&e)).0)
            })
    };
    match accepts(true) {
        Ok(()) => Some((schema, true)),
        Err(_) if accepts(false).is_ok() => Some((schema, false)),
        Err(message) => {
            problems.push(problem_at(
                file,
                None,
                format!(
                    "the schema must declare the Deployment and Node attributes sov supplies \
                     (see deploy/policies/README.md): {message}"
                ),
            ));
            None
        }
    }
}

/// One policy of the bundle: the Cedar policy (its id replaced by `@id`), its rule, and where
/// it is.
struct Parsed<'a> {
    policy: Policy,
    rule: Rule,
    text: &'a str,
    span: Range<usize>,
}

impl Parsed<'_> {
    fn problem(&self, message: String) -> Problem {
        problem_at(&self.rule.file, Some((self.text, self.span.start)), message)
    }

    /// A problem at `offset` when it lies inside this policy, else at the policy's start.
    fn problem_near(&self, offset: Option<usize>, message: String) -> Problem {
        let offset = offset
            .filter(|o| self.span.contains(o))
            .unwrap_or(self.span.start);
        problem_at(&self.rule.file, Some((self.text, offset)), message)
    }
}

fn parse_policy_file<'a>(
    file: &'a str,
    text: &'a str,
    problems: &mut Vec<Problem>,
) -> Vec<Parsed<'a>> {
    let set = match PolicySet::from_str(text) {
        Ok(set) => set,
        Err(errors) => {
            for error in errors.iter() {
                let (message, offset) = detail(DetailedError::from(error));
                problems.push(problem_at(file, offset.map(|o| (text, o)), message));
            }
            return Vec::new();
        }
    };
    if set.templates().next().is_some() {
        problems.push(problem_at(
            file,
            None,
            "templates (policies with ?principal or ?resource slots) are not supported; \
             write static policies"
                .into(),
        ));
    }
    // Cedar names the policies of one text "policy0", "policy1", ... in source order; the
    // rule order of a bundle is that order.
    let mut policies: Vec<(usize, &Policy)> = set
        .policies()
        .map(|p| {
            let index = id_str(p.id())
                .strip_prefix("policy")
                .and_then(|n| n.parse().ok());
            (index.unwrap_or(usize::MAX), p)
        })
        .collect();
    policies.sort_by_key(|(index, _)| *index);

    let mut cursor = 0;
    let mut parsed = Vec::new();
    for (_, policy) in policies {
        // Each policy keeps its own source text; finding it after the previous one gives its
        // position even when two policies read the same.
        let source = policy.to_cedar().unwrap_or_default();
        let start = text[cursor..]
            .find(&source)
            .map_or(cursor, |found| cursor + found);
        let span = start..start + source.len().max(1);
        cursor = span.end.min(text.len());
        match rule_of(policy, file) {
            Ok(rule) => parsed.push(Parsed {
                policy: policy.new_id(PolicyId::new(&rule.id)),
                rule,
                text,
                span,
            }),
            Err(messages) => problems.extend(
                messages
                    .into_iter()
                    .map(|m| problem_at(file, Some((text, span.start)), m)),
            ),
        }
    }
    parsed
}

/// The rule a policy's annotations describe, or every complaint about them.
fn rule_of(policy: &Policy, file: &str) -> Result<Rule, Vec<String>> {
    let mut complaints = Vec::new();
    for (key, _) in policy.annotations() {
        if ![ANNOTATION_ID, ANNOTATION_REASON, ANNOTATION_ON_CHANGE].contains(&key) {
            // A misspelt @on_change would otherwise silently become the default.
            complaints.push(format!(
                "unknown annotation @{key}; policies take @id, @reason and @on_change"
            ));
        }
    }
    let id = policy.annotation(ANNOTATION_ID).unwrap_or_default();
    let id_ok = !id.is_empty()
        && id.len() <= RULE_ID_LEN_MAX
        && id.as_bytes()[0].is_ascii_lowercase()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if policy.annotation(ANNOTATION_ID).is_none() {
        complaints.push(
            "policy has no @id; every policy needs one, unique in the bundle (e.g. \
             @id(\"eu-residency\"))"
                .into(),
        );
    } else if !id_ok {
        complaints.push(format!(
            "@id({id:?}) must be lower-case letters, digits and '-', starting with a letter, \
             at most {RULE_ID_LEN_MAX} characters"
        ));
    } else if RESERVED_RULE_IDS.contains(&id) {
        complaints.push(format!(
            "@id({id:?}) is reserved for sov's own explanations; choose another"
        ));
    }

    let reason = policy.annotation(ANNOTATION_REASON).unwrap_or_default();
    if reason.trim().is_empty() {
        complaints.push(
            "policy has no @reason; it is the text users see when the rule forbids a \
             placement (e.g. @reason(\"data must stay in the EU\"))"
                .into(),
        );
    } else if reason.len() > REASON_LEN_MAX {
        complaints.push(format!(
            "@reason is {} bytes long; the limit is {REASON_LEN_MAX}",
            reason.len()
        ));
    } else if reason.chars().any(char::is_control) {
        complaints.push("@reason must not contain control characters (newlines, tabs)".into());
    }

    let effect = match policy.effect() {
        cedar_policy::Effect::Permit => Effect::Permit,
        cedar_policy::Effect::Forbid => Effect::Forbid,
    };
    let on_change = match (effect, policy.annotation(ANNOTATION_ON_CHANGE)) {
        (_, None) => OnChange::default(),
        (Effect::Permit, Some(_)) => {
            complaints.push(
                "@on_change applies to forbid policies only; a permit that stops matching \
                 is handled by the no-permit rule (migrate)"
                    .into(),
            );
            OnChange::default()
        }
        (Effect::Forbid, Some(value)) => OnChange::parse(value).unwrap_or_else(|| {
            complaints.push(format!(
                "@on_change({value:?}) must be \"audit\", \"migrate\" or \"stop-now\""
            ));
            OnChange::default()
        }),
    };
    if !complaints.is_empty() {
        return Err(complaints);
    }
    Ok(Rule {
        id: id.to_owned(),
        effect,
        reason: reason.to_owned(),
        on_change,
        file: file.to_owned(),
    })
}

fn check_policy_count(parsed: &[Parsed], problems: &mut Vec<Problem>) {
    if let Some(first_over) = parsed.get(POLICIES_MAX) {
        problems.push(first_over.problem(format!(
            "the bundle has {} policies; the limit is {POLICIES_MAX}",
            parsed.len()
        )));
    }
}

/// The policies with the first use of each id; every later use is a problem (the rest of
/// the bundle is still checked, so one compile reports everything).
fn unique_ids<'a>(parsed: Vec<Parsed<'a>>, problems: &mut Vec<Problem>) -> Vec<Parsed<'a>> {
    let mut first: BTreeMap<String, (String, u32, u32)> = BTreeMap::new();
    let mut unique = Vec::with_capacity(parsed.len());
    for p in parsed {
        match first.get(&p.rule.id) {
            Some((file, line, column)) => problems.push(p.problem(format!(
                "duplicate @id({:?}): also used at {file}:{line}:{column}; ids name rules in \
                 explanations and history, so each is unique in the bundle",
                p.rule.id
            ))),
            None => {
                let (line, column) = line_column(p.text, p.span.start);
                first.insert(p.rule.id.clone(), (p.rule.file.clone(), line, column));
                unique.push(p);
            }
        }
    }
    unique
}

/// The bundle's entity data, completed with every ISO 3166-1 country.
struct EntityData {
    entities: Entities,
    groups: BTreeSet<String>,
    accelerator_eccns: BTreeMap<String, String>,
}

fn parse_entity_data(
    (file, text): (&str, &str),
    schema: &Schema,
    problems: &mut Vec<Problem>,
) -> Option<EntityData> {
    let problems_before = problems.len();
    let values: Vec<serde_json::Value> = match serde_json::from_str(text) {
        Ok(values) => values,
        Err(e) => {
            problems.push(Problem {
                file: file.to_owned(),
                line: u32::try_from(e.line()).unwrap_or(u32::MAX),
                column: u32::try_from(e.column()).unwrap_or(u32::MAX),
                message: format!(
                    "entity data must be a JSON array of Cedar entities \
                     ({{\"uid\": {{\"type\": .., \"id\": ..}}, \"attrs\": {{..}}, \"parents\": [..]}}): {e}"
                ),
            });
            return None;
        }
    };
    if values.len() > ENTITIES_MAX {
        problems.push(problem_at(
            file,
            None,
            format!(
                "the entity data has {} entities; the limit is {ENTITIES_MAX}",
                values.len()
            ),
        ));
        return None;
    }
    let offsets = array_element_offsets(text);
    let at = |i: usize| offsets.get(i).map(|&o| (text, o));

    let mut parsed: Vec<(usize, Entity)> = Vec::new();
    let mut seen: HashSet<EntityUid> = HashSet::new();
    let mut groups = BTreeSet::new();
    let mut accelerator_eccns = BTreeMap::new();
    for (i, value) in values.into_iter().enumerate() {
        let entity = match Entity::from_json_value(value, Some(schema)) {
            Ok(entity) => entity,
            Err(e) => {
                let (message, _) = detail(DetailedError::from(&e));
                problems.push(problem_at(file, at(i), message));
                continue;
            }
        };
        let uid = entity.uid();
        let id = uid.id().unescaped();
        let complaint = match uid.type_name().to_string().as_str() {
            GROUP if id.len() == 2 || !is_group_name(id) => Some(format!(
                "Group::{id:?}: group names are letters, digits and '-', '_', ':', '.' (at \
                 most 64) and not two letters long, which deployments read as a country code"
            )),
            GROUP => {
                groups.insert(id.to_owned());
                None
            }
            COUNTRY if !iso3166::is_country(id) => Some(format!(
                "Country::{id:?} is not an ISO 3166-1 alpha-2 code (upper case; the United \
                 Kingdom is \"GB\")"
            )),
            COUNTRY => None,
            ACCELERATOR => match entity.attr("eccn") {
                Some(Ok(EvalResult::String(eccn))) => {
                    accelerator_eccns.insert(id.to_owned(), eccn);
                    None
                }
                _ => Some(format!("Accelerator::{id:?} needs a string attribute eccn")),
            },
            other => Some(format!(
                "entities of type {other} cannot be given as data: the data holds Group, \
                 Country and Accelerator entities, and sov builds Deployment and Node itself"
            )),
        };
        if let Some(message) = complaint {
            problems.push(problem_at(file, at(i), message));
        } else if !seen.insert(uid.clone()) {
            problems.push(problem_at(file, at(i), format!("{uid} is defined twice")));
        } else {
            parsed.push((i, entity));
        }
    }

    // Cedar accepts parents that do not exist; a misspelt group would then silently contain
    // nobody, so every parent must be a defined group.
    for (i, entity) in &parsed {
        let (uid, _, parents) = entity.clone().into_inner();
        let mut unknown: Vec<String> = parents
            .iter()
            .filter(|parent| !seen.contains(*parent))
            .map(ToString::to_string)
            .collect();
        unknown.sort();
        for parent in unknown {
            problems.push(problem_at(
                file,
                at(*i),
                format!(
                    "unknown group {parent} (a parent of {uid}): the entity data defines no \
                     such group; define it or fix the name"
                ),
            ));
        }
    }
    if problems.len() > problems_before {
        return None;
    }

    // Every ISO 3166-1 code is a Country, so any valid node country resolves; countries in
    // no group simply have no parents.
    let generated = iso3166::COUNTRIES
        .iter()
        .map(|code| entities::uid(COUNTRY, code))
        .filter(|uid| !seen.contains(uid))
        .map(|uid| Entity::new_no_attrs(uid, HashSet::new()));
    let all = parsed
        .into_iter()
        .map(|(_, entity)| entity)
        .chain(generated);
    match Entities::from_entities(all, Some(schema)) {
        Ok(entities) => Some(EntityData {
            entities,
            groups,
            accelerator_eccns,
        }),
        Err(e) => {
            let (message, _) = detail(DetailedError::from(&e));
            problems.push(problem_at(
                file,
                None,
                format!("{message} (a group may not contain itself, directly or not)"),
            ));
            None
        }
    }
}

/// Byte offsets where the elements of a top-level JSON array start. Only called on text that
/// `serde_json` accepted, so it tracks nothing but strings and nesting.
fn array_element_offsets(text: &str) -> Vec<usize> {
    let mut offsets = Vec::new();
    let (mut depth, mut in_string, mut escaped, mut expect_element) = (0usize, false, false, false);
    for (i, b) in text.bytes().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        if b.is_ascii_whitespace() {
            continue;
        }
        if std::mem::take(&mut expect_element) && b != b']' {
            offsets.push(i);
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                expect_element = depth == 1;
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' => expect_element = depth == 1,
            _ => {}
        }
    }
    offsets
}

fn validate_policies(schema: &Schema, parsed: &[Parsed], problems: &mut Vec<Problem>) {
    let all = match policy_set(parsed) {
        Ok(all) => all,
        Err(message) => {
            problems.push(problem_at("", None, message));
            return;
        }
    };
    let result = Validator::new(schema.clone()).validate(&all, ValidationMode::Strict);
    for error in result.validation_errors() {
        let id = error.policy_id().to_string();
        let (message, offset) = detail(DetailedError::from(error));
        match parsed.iter().find(|p| p.rule.id == id) {
            Some(p) => problems.push(p.problem_near(offset, message)),
            None => problems.push(problem_at("", None, message)),
        }
    }
}

/// Cedar's validator checks entity types, not entity ids: `Group::"EU28"` would validate and
/// then match nothing. Every literal must exist, and none may name a single deployment or node
/// (decisions are shared by every deployment and node with the same attributes).
fn check_entity_literals(parsed: &[Parsed], data: &EntityData, problems: &mut Vec<Problem>) {
    for p in parsed {
        let mut reported = BTreeSet::new();
        for literal in p.policy.entity_literals() {
            let type_name = literal.type_name().to_string();
            let id = literal.id().unescaped();
            let message = match type_name.as_str() {
                DEPLOYMENT | NODE => format!(
                    "{literal}: policies may not name a single deployment or node; decisions \
                     are made on attributes (e.g. principal.model, resource.site)"
                ),
                GROUP | COUNTRY | ACCELERATOR if data.entities.get(&literal).is_none() => {
                    let known = match type_name.as_str() {
                        GROUP => format!(
                            "; the bundle defines {}",
                            data.groups.iter().cloned().collect::<Vec<_>>().join(", ")
                        ),
                        COUNTRY => " (ISO 3166-1 alpha-2, upper case)".to_owned(),
                        _ => String::new(),
                    };
                    let kind = type_name.to_lowercase();
                    format!("unknown {kind} {literal}: the entity data has no such entity{known}")
                }
                _ => continue,
            };
            if reported.insert(literal.to_string()) {
                let quoted = format!("{id:?}");
                let offset = p.text[p.span.clone()]
                    .find(&quoted)
                    .map(|o| p.span.start + o);
                problems.push(p.problem_near(offset, message));
            }
        }
    }
}
