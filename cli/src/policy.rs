//! `sovctl policy ...`: placement policy bundles, through `sov.v1.PolicyService`. Each function
//! makes its call(s) and prints the answer; routing and retries belong to `client`, rendering
//! to `output::policy`, choosing the files of a bundle to `bundle`, comparing versions to `diff`,
//! the polling of `--wait` to `watch`.
//!
//! `policy apply` is atomic with what it checked: unless told `--yes`, it sends a plan hash, and
//! the scheduler refuses the bundle if applying it at the committed index would stop, move or
//! flag other replicas than that plan said.

use std::path::Path;
use std::time::Duration;

use crate::client::Channel;
use sov_proto::v1::policy_service_client::PolicyServiceClient;
use sov_proto::v1::{
    ApplyPolicyRequest, GetPolicyRequest, ListPoliciesRequest, PlanPolicyRequest, PolicyBundle,
    PolicyProgress, ProgressRequest,
};
use tonic::{Code, Status};

use crate::client::{CallFailed, Client, read_consistency};
use crate::output::policy::{
    self as out, PolicyDiffView, PolicyListView, PolicyPlanView, PolicyProgressView, PolicyRefView,
    PolicyVersionView, short_hash,
};
use crate::output::{self, Format, duration_text, shell_join};
use crate::watch::{self, WatchOpts};
use crate::{UsageError, bundle, diff};

/// Largest answer accepted: a version carries its files (up to the 4 MiB a bundle may have)
/// plus its rules, a little over tonic's default of 4 MiB.
const RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The scheduler refused a bundle; `problems` are its findings, one per entry, usually
/// `file:line:column: message`. The only error sovctl prints on several lines: one line per
/// problem, because a reviewer fixing a bundle needs all of them at once.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidBundle {
    pub problems: Vec<String>,
}

/// The heading the scheduler puts before the problems, and that sovctl prints itself.
const INVALID_BUNDLE_HEADING: &str = "invalid policy bundle:";

impl InvalidBundle {
    /// Splits the message of an INVALID_ARGUMENT answer to `Apply` into its problems.
    pub fn from_message(message: &str) -> Self {
        let message = message.trim();
        let message = message
            .strip_prefix(INVALID_BUNDLE_HEADING)
            .unwrap_or(message);
        let problems: Vec<String> = message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        InvalidBundle {
            problems: if problems.is_empty() {
                vec!["the scheduler gave no details".to_owned()]
            } else {
                problems
            },
        }
    }

    /// The text `main` prints on stderr: the heading, then each problem on its own line.
    pub fn report(&self) -> String {
        let mut text = format!("error: {INVALID_BUNDLE_HEADING}\n");
        for problem in &self.problems {
            text.push_str(&format!("  {problem}\n"));
        }
        text
    }
}

impl std::fmt::Display for InvalidBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{INVALID_BUNDLE_HEADING} {}", self.problems.join("; "))
    }
}

impl std::error::Error for InvalidBundle {}

/// The author recorded with a bundle when `--author` is not given: the login name, which is an
/// opaque id rather than a person's name.
fn default_author() -> String {
    author_from(std::env::var("USER").ok())
}

fn author_from(user: Option<String>) -> String {
    user.map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// What `policy apply` checks before the bundle takes effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Plan first; apply only if nothing running is stopped, moved or flagged, and then only
    /// with exactly that plan's impact.
    Plan,
    /// Apply only with exactly the impact of this plan hash (`--plan-hash`).
    PlanHash(String),
    /// Apply whatever it does (`--yes`).
    Skip,
}

/// The flags of `policy apply` besides the bundle.
#[derive(Debug, Clone)]
pub struct ApplyOpts {
    pub comment: String,
    /// `None`: the login name.
    pub author: Option<String>,
    pub check: Check,
    /// Watch the cluster carry the version out, for at most this long.
    pub wait: Option<Duration>,
}

/// The request carrying the bundle at `path`, read before any network call so that bad input
/// fails fast and offline; says on stderr which files go.
fn read_bundle(path: &Path, comment: String, author: String) -> Result<PolicyBundle, UsageError> {
    let bundle = bundle::read(path)?;
    eprintln!("{}", sent_note(path, &bundle));
    Ok(PolicyBundle {
        files: bundle.files.into_iter().collect(),
        comment,
        author,
    })
}

/// `policy plan`: prints what applying the bundle at `path` would do; returns whether it would
/// stop, move or flag running replicas, which is the command's exit code.
pub async fn plan(client: &mut Client, format: Format, path: &Path) -> anyhow::Result<bool> {
    let bundle = read_bundle(path, String::new(), default_author())?;
    let plan = plan_bundle(client, bundle).await?;
    let command = out::apply_command(&path.display().to_string(), &plan.plan_hash, &[]);
    output::emit(format, &plan, |p| out::plan_text(p, &command))?;
    Ok(plan.disruptions() > 0)
}

/// `policy apply`; returns the exit code (that of the watch with `--wait`).
pub async fn apply(
    client: &mut Client,
    format: Format,
    path: &Path,
    opts: ApplyOpts,
) -> anyhow::Result<u8> {
    let author = opts.author.clone().unwrap_or_else(default_author);
    let bundle = read_bundle(path, opts.comment.clone(), author)?;
    let plan_hash = match &opts.check {
        Check::Skip => String::new(),
        Check::PlanHash(hash) => hash.clone(),
        Check::Plan => {
            let plan = plan_bundle(client, bundle.clone()).await?;
            let disruptions = plan.disruptions();
            if disruptions > 0 {
                let command = out::apply_command(
                    &path.display().to_string(),
                    &plan.plan_hash,
                    &rerun_flags(&opts),
                );
                let text = output::render_as(format, &plan, |p| out::plan_text(p, &command));
                eprint!("{text}");
                anyhow::bail!(
                    "this bundle stops, moves or flags {disruptions} running {}; review the plan \
                     above, then run: {command} (or --yes to skip the check)",
                    if disruptions == 1 {
                        "replica"
                    } else {
                        "replicas"
                    }
                );
            }
            plan.plan_hash
        }
    };
    let req = ApplyPolicyRequest {
        bundle: Some(bundle),
        plan_hash: plan_hash.clone(),
    };
    let answer = client
        .call(req, |ch, req| async move {
            PolicyServiceClient::new(ch)
                .max_decoding_message_size(RESPONSE_BYTES_MAX)
                .apply(req)
                .await
        })
        .await
        .map_err(|err| match status_code(&err) {
            Some(Code::FailedPrecondition) => anyhow::anyhow!(
                "failed precondition: the cluster changed since plan hash {} was computed: \
                 applying the bundle now would stop, move or flag other replicas than planned, so \
                 nothing was applied; review the new plan with: sovctl policy plan {}",
                short_hash(&plan_hash),
                shell_join(&[path.display().to_string()])
            ),
            _ => refused_bundle(err),
        })?;
    let view = PolicyVersionView::from(answer);
    let Some(timeout) = opts.wait else {
        output::emit(format, &view, out::apply_line)?;
        return Ok(0);
    };
    output::emit_line(format, &view, out::apply_line)?;
    wait_for_progress(
        client,
        format,
        timeout,
        format!("policy version {}", view.version),
    )
    .await
}

/// The flags that repeat the user's `policy apply` (other than the check), for the command it
/// suggests running after a review.
fn rerun_flags(opts: &ApplyOpts) -> Vec<String> {
    let mut flags = Vec::new();
    if !opts.comment.is_empty() {
        flags.extend(["--comment".to_owned(), opts.comment.clone()]);
    }
    if let Some(author) = &opts.author {
        flags.extend(["--author".to_owned(), author.clone()]);
    }
    if let Some(timeout) = opts.wait {
        flags.push("--wait".to_owned());
        if timeout != watch::TIMEOUT_DEFAULT {
            flags.extend([
                "--wait-timeout".to_owned(),
                duration_text(timeout.as_millis() as u64),
            ]);
        }
    }
    flags
}

/// Dry-runs `bundle`.
async fn plan_bundle(client: &mut Client, bundle: PolicyBundle) -> anyhow::Result<PolicyPlanView> {
    let req = PlanPolicyRequest {
        bundle: Some(bundle),
    };
    let answer = client
        .call(req, |ch, req| async move {
            PolicyServiceClient::new(ch)
                .max_decoding_message_size(RESPONSE_BYTES_MAX)
                .plan(req)
                .await
        })
        .await
        .map_err(refused_bundle)?;
    Ok(PolicyPlanView::from(answer))
}

/// The server's answer, when `err` is one.
fn answer_status(err: &anyhow::Error) -> Option<&Status> {
    err.downcast_ref::<CallFailed>()
        .and_then(|c| c.status.as_ref())
}

/// The code of the server's answer, when `err` is one.
fn status_code(err: &anyhow::Error) -> Option<Code> {
    answer_status(err).map(Status::code)
}

/// `err`, as an `InvalidBundle` when the server refused the bundle: the request is the bundle
/// (and a plan hash sovctl checked), so INVALID_ARGUMENT is about its files.
fn refused_bundle(err: anyhow::Error) -> anyhow::Error {
    let refused = answer_status(&err)
        .filter(|s| s.code() == Code::InvalidArgument)
        .map(|s| InvalidBundle::from_message(s.message()));
    refused.map_or(err, anyhow::Error::from)
}

/// Watches `Progress` until the cluster carried out the rules and drains in force, for at most
/// `timeout`; `what` names what was asked, for the timeout error. Returns the exit code.
pub async fn wait_for_progress(
    client: &mut Client,
    format: Format,
    timeout: Duration,
    what: String,
) -> anyhow::Result<u8> {
    let opts = WatchOpts {
        timeout,
        mode: watch::mode(format),
        what,
    };
    let req = ProgressRequest {
        consistency: read_consistency(false),
    };
    watch::watch(client, &opts, None, req, progress, PolicyProgressView::from).await
}

/// `PolicyService.Progress`, for `Client::poll`.
async fn progress(
    ch: Channel,
    req: ProgressRequest,
) -> Result<tonic::Response<PolicyProgress>, Status> {
    PolicyServiceClient::new(ch).progress(req).await
}

/// A `--plan-hash` as `policy plan` prints it: 64 hex digits. Checked here because the
/// scheduler's refusal of a malformed hash would read like a refusal of the bundle.
pub fn parse_plan_hash(text: &str) -> Result<String, String> {
    let hash = text.trim().to_ascii_lowercase();
    if hash.len() == PLAN_HASH_LEN && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hash)
    } else {
        Err(format!(
            "{text:?} is not a plan hash: 64 hex digits, as `sovctl policy plan` prints it"
        ))
    }
}

/// Hex digits of a plan hash (SHA-256).
const PLAN_HASH_LEN: usize = 64;

/// `sending 3 files from DIR: a.cedar, entities.json, schema.cedarschema (left out: README.md)`
fn sent_note(path: &Path, bundle: &bundle::Bundle) -> String {
    let names: Vec<&str> = bundle.files.keys().map(String::as_str).collect();
    let mut note = format!(
        "sending {} {} from {}: {}",
        names.len(),
        if names.len() == 1 { "file" } else { "files" },
        path.display(),
        names.join(", ")
    );
    if !bundle.skipped.is_empty() {
        note.push_str(&format!(" (left out: {})", bundle.skipped.join(", ")));
    }
    note
}

pub async fn list(client: &mut Client, format: Format, stale: bool) -> anyhow::Result<()> {
    let req = ListPoliciesRequest {
        consistency: read_consistency(stale),
    };
    let answer = client
        .call(req, |ch, req| async move {
            PolicyServiceClient::new(ch)
                .max_decoding_message_size(RESPONSE_BYTES_MAX)
                .list(req)
                .await
        })
        .await?;
    let view = PolicyListView {
        versions: answer
            .versions
            .into_iter()
            .map(PolicyVersionView::from)
            .collect(),
    };
    if format == Format::Table && view.versions.is_empty() {
        eprintln!(
            "no policy versions yet, so nothing can be placed; apply one with: sovctl policy apply deploy/policies"
        );
        return Ok(());
    }
    output::emit(format, &view, |v| out::versions_table(&v.versions))
}

pub async fn show(
    client: &mut Client,
    format: Format,
    version: Option<u64>,
    stale: bool,
    with_files: bool,
) -> anyhow::Result<()> {
    let answer = get(client, version.unwrap_or(0), stale).await?;
    output::emit(format, &answer, |v| out::version_text(v, with_files))
}

/// Compares versions `a` and `b`; returns whether they differ, which is the command's exit
/// code.
pub async fn diff(
    client: &mut Client,
    format: Format,
    a: u64,
    b: u64,
    stale: bool,
) -> anyhow::Result<bool> {
    let old = get(client, a, stale).await?;
    let new = get(client, b, stale).await?;
    let files = diff::bundles(
        &old.files,
        &new.files,
        &format!("v{}", old.version),
        &format!("v{}", new.version),
    );
    let view = PolicyDiffView {
        from: PolicyRefView {
            version: old.version,
            bundle_hash: old.bundle_hash,
        },
        to: PolicyRefView {
            version: new.version,
            bundle_hash: new.bundle_hash,
        },
        identical: files.is_empty(),
        files,
    };
    output::emit(format, &view, out::diff_text)?;
    Ok(!view.identical)
}

/// One version with its files; 0 is the version in force.
async fn get(client: &mut Client, version: u64, stale: bool) -> anyhow::Result<PolicyVersionView> {
    let req = GetPolicyRequest {
        version,
        consistency: read_consistency(stale),
    };
    let answer = client
        .call(req, |ch, req| async move {
            PolicyServiceClient::new(ch)
                .max_decoding_message_size(RESPONSE_BYTES_MAX)
                .get(req)
                .await
        })
        .await?;
    Ok(PolicyVersionView::from(answer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn every_problem_of_a_refused_bundle_is_kept() {
        let refused = InvalidBundle::from_message(
            "invalid policy bundle:\neu.cedar:3:14: unexpected token `}`\n\
             entities.json:1:1: expected an array\n",
        );
        assert_eq!(
            refused.problems,
            [
                "eu.cedar:3:14: unexpected token `}`",
                "entities.json:1:1: expected an array"
            ]
        );
        assert_eq!(
            refused.report(),
            "error: invalid policy bundle:\n  eu.cedar:3:14: unexpected token `}`\n  \
             entities.json:1:1: expected an array\n"
        );
        assert_eq!(
            refused.to_string(),
            "invalid policy bundle: eu.cedar:3:14: unexpected token `}`; entities.json:1:1: \
             expected an array"
        );
    }

    #[test]
    fn a_message_without_the_heading_is_one_problem_per_line() {
        let refused = InvalidBundle::from_message("bundle: no .cedarschema file");
        assert_eq!(refused.problems, ["bundle: no .cedarschema file"]);
        assert_eq!(
            InvalidBundle::from_message("").problems,
            ["the scheduler gave no details"]
        );
    }

    #[test]
    fn plan_hashes_are_64_hex_digits() {
        let hash = "3F9A1C0B7D2E4F60A1B2C3D4E5F60718293A4B5C6D7E8F90A1B2C3D4E5F60718";
        assert_eq!(parse_plan_hash(hash), Ok(hash.to_ascii_lowercase()));
        for bad in [
            "",
            "3f9a1c0b7d2e",
            &format!("{hash}0"),
            &hash.replace('F', "g"),
        ] {
            let err = parse_plan_hash(bad).unwrap_err();
            assert!(err.contains("is not a plan hash"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_suggested_command_repeats_the_users_flags() {
        let mut opts = ApplyOpts {
            comment: "allow Swiss sites".into(),
            author: None,
            check: Check::Plan,
            wait: None,
        };
        assert_eq!(rerun_flags(&opts), ["--comment", "allow Swiss sites"]);
        opts.comment.clear();
        opts.author = Some("ops-7".into());
        opts.wait = Some(watch::TIMEOUT_DEFAULT);
        assert_eq!(rerun_flags(&opts), ["--author", "ops-7", "--wait"]);
        opts.author = None;
        opts.wait = Some(Duration::from_secs(3600));
        assert_eq!(rerun_flags(&opts), ["--wait", "--wait-timeout", "1h"]);
    }

    #[test]
    fn the_author_defaults_to_the_login_name_or_unknown() {
        assert_eq!(author_from(Some("alice".into())), "alice");
        assert_eq!(author_from(Some(" ".into())), "unknown");
        assert_eq!(author_from(None), "unknown");
    }

    #[test]
    fn the_note_names_what_was_sent_and_left_out() {
        let bundle = bundle::Bundle {
            files: BTreeMap::from([
                ("eu.cedar".to_owned(), String::new()),
                ("schema.cedarschema".to_owned(), String::new()),
            ]),
            skipped: vec!["README.md".to_owned()],
        };
        assert_eq!(
            sent_note(Path::new("deploy/policy"), &bundle),
            "sending 2 files from deploy/policy: eu.cedar, schema.cedarschema (left out: README.md)"
        );
    }
}
