//! `sovctl deploy ...` and `sovctl explain`: the deployments ML engineers submit, and why their
//! replicas are (not) placed, through `sov.v1.DeploymentService`. Each function makes its
//! call(s) and prints the answer; routing and retries belong to `client`, rendering to `output`,
//! spec files to `spec`, the polling of `deploy show --watch` to `watch`.

use std::time::Duration;

use crate::client::Channel;
use sov_proto::v1::deployment_service_client::DeploymentServiceClient;
use sov_proto::v1::{
    ApplyDeploymentRequest, DeleteDeploymentRequest, Deployment, DeploymentSpec, ExplainRequest,
    GetDeploymentRequest, ListDeploymentsRequest, ListDeploymentsResponse, PlanDeploymentRequest,
};
use tonic::Status;

use crate::client::{Client, read_consistency};
use crate::output::plan::{self as plan_out, DeploymentPlanView, ExplanationView};
use crate::output::{self, ApplyView, DeleteView, DeploymentView, Format, ListView, now_ms};
use crate::watch::{self, WatchOpts};

/// Largest page the API serves; fewer round trips for long listings.
const PAGE_LIMIT_MAX: u32 = 1000;
/// Pages per listing: a million deployments at the largest page size. Stops a server whose page
/// token never runs out from keeping sovctl busy forever.
const PAGES_MAX: u32 = 1000;

pub async fn apply(
    client: &mut Client,
    format: Format,
    spec: DeploymentSpec,
    expected_generation: u64,
) -> anyhow::Result<()> {
    let req = ApplyDeploymentRequest {
        spec: Some(spec),
        expected_generation,
    };
    let answer = client
        .call(req, |ch, req| async move {
            DeploymentServiceClient::new(ch).apply(req).await
        })
        .await?;
    output::emit(format, &ApplyView::from(answer), output::apply_line)
}

pub async fn list(
    client: &mut Client,
    format: Format,
    stale: bool,
    limit: Option<u64>,
) -> anyhow::Result<()> {
    let mut listing = Listing::new(limit);
    let mut pages = 0;
    while let Some(req) = listing.next_request(read_consistency(stale)) {
        pages += 1;
        anyhow::ensure!(
            pages <= PAGES_MAX,
            "the listing did not end after {PAGES_MAX} pages; pass --limit to list fewer"
        );
        let page = client
            .call(req, |ch, req| async move {
                DeploymentServiceClient::new(ch).list(req).await
            })
            .await?;
        listing.add_page(page)?;
    }
    let view = listing.view;
    if format == Format::Table {
        if view.deployments.is_empty() {
            eprintln!(
                "no deployments; create one with: sovctl deploy apply -f deploy/examples/tiny-echo.toml"
            );
            return Ok(());
        }
        if !view.next_after.is_empty() {
            eprintln!(
                "more deployments follow {}; raise --limit to see them",
                view.next_after
            );
        }
    }
    output::emit(format, &view, |v| output::deployments_table(&v.deployments))
}

/// Shows deployment `name`; with `watch` (the timeout), keeps showing it until its compliance
/// report says it converged, and returns the exit code of the watch.
pub async fn show(
    client: &mut Client,
    format: Format,
    name: String,
    stale: bool,
    watch: Option<Duration>,
) -> anyhow::Result<u8> {
    let req = GetDeploymentRequest {
        name,
        consistency: read_consistency(stale),
    };
    let view = DeploymentView::from(client.call(req.clone(), get).await?);
    let Some(timeout) = watch else {
        output::emit(format, &view, |v| output::deployment_text(v, now_ms()))?;
        return Ok(0);
    };
    anyhow::ensure!(
        view.compliance.is_some(),
        "the scheduler sent no compliance report for deployment {} (it predates them), so \
         --watch cannot tell when it converged; upgrade the schedulers or leave out --watch",
        view.name()
    );
    let opts = WatchOpts {
        timeout,
        mode: watch::mode(format),
        what: format!("deployment {}", view.name()),
    };
    watch::watch(client, &opts, Some(view), req, get, DeploymentView::from).await
}

/// `DeploymentService.Get`, for `Client::call` and `Client::poll`.
async fn get(
    ch: Channel,
    req: GetDeploymentRequest,
) -> Result<tonic::Response<Deployment>, Status> {
    DeploymentServiceClient::new(ch).get(req).await
}

/// Dry-runs `spec`; returns whether applying it now would place replicas, which is the
/// command's exit code.
pub async fn plan(
    client: &mut Client,
    format: Format,
    spec: DeploymentSpec,
) -> anyhow::Result<bool> {
    let (name, wanted) = (spec.name.clone(), spec.replicas);
    let req = PlanDeploymentRequest { spec: Some(spec) };
    let answer = client
        .call(req, |ch, req| async move {
            DeploymentServiceClient::new(ch).plan(req).await
        })
        .await?;
    let view = DeploymentPlanView::from(answer);
    output::emit(format, &view, |v| plan_out::plan_text(&name, wanted, v))?;
    Ok(view.would_change())
}

pub async fn explain(
    client: &mut Client,
    format: Format,
    name: String,
    node: Option<String>,
    stale: bool,
) -> anyhow::Result<()> {
    let req = ExplainRequest {
        name,
        node: node.clone().unwrap_or_default(),
        consistency: read_consistency(stale),
    };
    let answer = client
        .call(req, |ch, req| async move {
            DeploymentServiceClient::new(ch).explain(req).await
        })
        .await?;
    output::emit(format, &ExplanationView::from(answer), |v| {
        plan_out::explanation_text(v, node.as_deref())
    })
}

pub async fn delete(client: &mut Client, format: Format, name: String) -> anyhow::Result<()> {
    let req = DeleteDeploymentRequest { name: name.clone() };
    let answer = client
        .call(req, |ch, req| async move {
            DeploymentServiceClient::new(ch).delete(req).await
        })
        .await?;
    let view = DeleteView {
        revision: answer.revision,
    };
    output::emit(format, &view, |v| {
        format!("deployment {name} deleted (revision {})\n", v.revision)
    })
}

/// Pages of `List` merged into one answer, stopping at `--limit` deployments if one was given.
#[derive(Debug)]
struct Listing {
    /// Deployments still wanted; `None` lists them all.
    remaining: Option<u64>,
    after: String,
    done: bool,
    view: ListView,
}

impl Listing {
    fn new(limit: Option<u64>) -> Self {
        Listing {
            remaining: limit,
            after: String::new(),
            done: limit == Some(0),
            view: ListView {
                deployments: Vec::new(),
                next_after: String::new(),
                revision: 0,
            },
        }
    }

    /// The request for the next page, or `None` when the listing is complete.
    fn next_request(&self, consistency: i32) -> Option<ListDeploymentsRequest> {
        if self.done {
            return None;
        }
        let limit = self
            .remaining
            .map_or(PAGE_LIMIT_MAX, |r| r.min(u64::from(PAGE_LIMIT_MAX)) as u32);
        Some(ListDeploymentsRequest {
            consistency,
            limit,
            after: self.after.clone(),
        })
    }

    fn add_page(&mut self, page: ListDeploymentsResponse) -> anyhow::Result<()> {
        assert!(!self.done, "a page arrived after the listing ended");
        let offered = page.deployments.len();
        let take = self
            .remaining
            .map_or(offered, |r| r.min(offered as u64) as usize);
        self.view.deployments.extend(
            page.deployments
                .into_iter()
                .take(take)
                .map(DeploymentView::from),
        );
        self.view.revision = page.revision;
        if let Some(r) = &mut self.remaining {
            *r -= take as u64;
        }
        if take < offered {
            // The server sent more than asked for; resume after the last one shown.
            self.view.next_after = self
                .view
                .deployments
                .last()
                .map_or_else(String::new, |d| d.name().to_owned());
            self.done = true;
            return Ok(());
        }
        anyhow::ensure!(
            page.next_after.is_empty() || page.next_after != self.after,
            "the scheduler returned the same page twice (after {:?}); the listing cannot make progress",
            self.after
        );
        self.after = page.next_after;
        self.done = self.after.is_empty() || self.remaining == Some(0);
        self.view.next_after = self.after.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sov_proto::v1::Deployment;

    fn page(names: &[&str], next_after: &str, revision: u64) -> ListDeploymentsResponse {
        ListDeploymentsResponse {
            deployments: names
                .iter()
                .map(|n| Deployment {
                    spec: Some(DeploymentSpec {
                        name: (*n).to_owned(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            next_after: next_after.to_owned(),
            revision,
        }
    }

    fn names(listing: &Listing) -> Vec<&str> {
        listing
            .view
            .deployments
            .iter()
            .map(DeploymentView::name)
            .collect()
    }

    #[test]
    fn follows_pages_until_exhausted() {
        let mut l = Listing::new(None);
        let req = l.next_request(1).unwrap();
        assert_eq!(
            (req.limit, req.after.as_str(), req.consistency),
            (1000, "", 1)
        );
        l.add_page(page(&["a", "b"], "b", 7)).unwrap();
        assert_eq!(l.next_request(1).unwrap().after, "b");
        l.add_page(page(&["c"], "", 8)).unwrap();
        assert!(l.next_request(1).is_none());
        assert_eq!(names(&l), ["a", "b", "c"]);
        assert_eq!((l.view.next_after.as_str(), l.view.revision), ("", 8));
    }

    #[test]
    fn limit_caps_the_total_and_keeps_the_resume_point() {
        let mut l = Listing::new(Some(3));
        assert_eq!(l.next_request(1).unwrap().limit, 3);
        l.add_page(page(&["a", "b"], "b", 1)).unwrap();
        assert_eq!(l.next_request(1).unwrap().limit, 1);
        l.add_page(page(&["c"], "c", 1)).unwrap();
        assert!(l.next_request(1).is_none());
        assert_eq!(names(&l), ["a", "b", "c"]);
        assert_eq!(l.view.next_after, "c");
    }

    #[test]
    fn oversized_page_is_cut_at_the_limit() {
        let mut l = Listing::new(Some(2));
        l.add_page(page(&["a", "b", "c"], "", 1)).unwrap();
        assert!(l.next_request(1).is_none());
        assert_eq!(names(&l), ["a", "b"]);
        assert_eq!(l.view.next_after, "b");
    }

    #[test]
    fn repeated_page_token_is_an_error() {
        let mut l = Listing::new(None);
        l.add_page(page(&["a"], "a", 1)).unwrap();
        let err = l.add_page(page(&["a"], "a", 1)).unwrap_err();
        assert!(err.to_string().contains("same page twice"), "{err}");
    }
}
