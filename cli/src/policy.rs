//! `sovctl policy ...`: placement policy bundles, through `sov.v1.PolicyService`. Each function
//! makes its call(s) and prints the answer; routing and retries belong to `client`, rendering
//! to `output::policy`, choosing the files of a bundle to `bundle`, comparing versions to `diff`.

use std::path::Path;

use sov_proto::v1::policy_service_client::PolicyServiceClient;
use sov_proto::v1::{ApplyPolicyRequest, GetPolicyRequest, ListPoliciesRequest, PolicyBundle};
use tonic::Code;

use crate::client::{CallFailed, Client, read_consistency};
use crate::output::policy::{
    self as out, PolicyDiffView, PolicyListView, PolicyRefView, PolicyVersionView,
};
use crate::output::{self, Format};
use crate::{bundle, diff};

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
pub fn default_author() -> String {
    author_from(std::env::var("USER").ok())
}

fn author_from(user: Option<String>) -> String {
    user.map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

pub async fn apply(
    client: &mut Client,
    format: Format,
    path: &Path,
    comment: String,
    author: String,
) -> anyhow::Result<()> {
    // Read the files before any network call, so bad input fails fast and offline.
    let bundle = bundle::read(path)?;
    eprintln!("{}", sent_note(path, &bundle));
    let req = ApplyPolicyRequest {
        bundle: Some(PolicyBundle {
            files: bundle.files.into_iter().collect(),
            comment,
            author,
        }),
        plan_hash: String::new(),
    };
    let answer = client
        .call(req, |ch, req| async move {
            PolicyServiceClient::new(ch)
                .max_decoding_message_size(RESPONSE_BYTES_MAX)
                .apply(req)
                .await
        })
        .await
        .map_err(|err| {
            // The request is nothing but the bundle, so INVALID_ARGUMENT is about its files.
            let refused = err
                .downcast_ref::<CallFailed>()
                .and_then(|c| c.status.as_ref())
                .filter(|s| s.code() == Code::InvalidArgument)
                .map(|s| InvalidBundle::from_message(s.message()));
            refused.map_or(err, anyhow::Error::from)
        })?;
    output::emit(format, &PolicyVersionView::from(answer), out::apply_line)
}

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
