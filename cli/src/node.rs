//! `sovctl node ...`: the GPU machines agents registered, through `sov.v1.NodeService`. Each
//! function makes its call and prints the answer; routing and retries belong to `client`,
//! rendering to `output::node`.

use std::time::Duration;

use sov_proto::v1::node_service_client::NodeServiceClient;
use sov_proto::v1::{DrainNodeRequest, GetNodeRequest, ListNodesRequest, UndrainNodeRequest};

use crate::client::{Client, read_consistency};
use crate::output::node::{self as out, NodeListView, NodeView};
use crate::output::{self, Format};

/// Largest answer accepted: a fleet of thousands of nodes with eight GPUs each is a few MiB,
/// more than tonic's default of 4 MiB allows.
const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Longest drain deadline accepted: a week. Anything longer is most likely a typo (`10d` for
/// `10h`), and a drain meant to last longer can be re-issued.
pub const DRAIN_DEADLINE_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

pub async fn list(client: &mut Client, format: Format, stale: bool) -> anyhow::Result<()> {
    let req = ListNodesRequest {
        consistency: read_consistency(stale),
    };
    let answer = client
        .call(req, |ch, req| async move {
            NodeServiceClient::new(ch)
                .max_decoding_message_size(RESPONSE_BYTES_MAX)
                .list(req)
                .await
        })
        .await?;
    let view = NodeListView::from(answer);
    if format == Format::Table && view.nodes.is_empty() {
        eprintln!("no nodes registered; a node appears here once its sov-agent registers it");
        return Ok(());
    }
    output::emit(format, &view, |v| out::nodes_table(&v.nodes))
}

pub async fn show(
    client: &mut Client,
    format: Format,
    name: String,
    stale: bool,
) -> anyhow::Result<()> {
    let req = GetNodeRequest {
        name,
        consistency: read_consistency(stale),
    };
    let answer = client
        .call(req, |ch, req| async move {
            NodeServiceClient::new(ch).get(req).await
        })
        .await?;
    output::emit(format, &NodeView::from(answer), out::node_text)
}

/// `deadline`: how long running replicas get to move away once moving them exists; `None`
/// leaves it to the scheduler (sent as 0).
pub async fn drain(
    client: &mut Client,
    format: Format,
    name: String,
    deadline: Option<Duration>,
) -> anyhow::Result<()> {
    let deadline_ms = deadline.map_or(0, |d| {
        assert!(
            d <= DRAIN_DEADLINE_MAX,
            "the flag parser bounds the deadline"
        );
        d.as_millis() as u64
    });
    let req = DrainNodeRequest { name, deadline_ms };
    let answer = client
        .call(req, |ch, req| async move {
            NodeServiceClient::new(ch).drain(req).await
        })
        .await?;
    output::emit(format, &NodeView::from(answer), out::drain_line)
}

pub async fn undrain(client: &mut Client, format: Format, name: String) -> anyhow::Result<()> {
    let answer = client
        .call(UndrainNodeRequest { name }, |ch, req| async move {
            NodeServiceClient::new(ch).undrain(req).await
        })
        .await?;
    output::emit(format, &NodeView::from(answer), out::undrain_line)
}

/// Parses a duration such as `90s`, `10m`, `1h30m` or `500ms` (units ms, s, m, h, d), for
/// `--deadline`. A bare number is refused: `10` could mean seconds or minutes.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let usage = || format!("{text:?} is not a duration; write it like 90s, 10m or 1h30m");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(usage());
    }
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(usage)?;
        if digits == 0 {
            return Err(usage());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| usage())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(usage()),
        };
        rest = &rest[unit_len..];
        total_ms = number
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(usage)?;
    }
    let duration = Duration::from_millis(total_ms);
    if duration.is_zero() {
        return Err("the deadline must be longer than 0".to_owned());
    }
    if duration > DRAIN_DEADLINE_MAX {
        return Err(format!(
            "{text} is longer than the maximum of 7d; drain again later if you need more"
        ));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_combine() {
        for (text, ms) in [
            ("10m", 600_000),
            ("90s", 90_000),
            ("1h30m", 5_400_000),
            ("500ms", 500),
            ("2d", 172_800_000),
            (" 1m1s ", 61_000),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_durations_say_how_to_write_one() {
        for text in [
            "",
            "10",
            "m",
            "10x",
            "1.5h",
            "-1m",
            "10 m",
            "99999999999999999999s",
        ] {
            let err = parse_duration(text).unwrap_err();
            assert!(err.contains("is not a duration"), "{text}: {err}");
        }
        assert_eq!(
            parse_duration("0s").unwrap_err(),
            "the deadline must be longer than 0"
        );
        assert!(parse_duration("8d").unwrap_err().contains("maximum of 7d"));
        assert_eq!(parse_duration("7d"), Ok(DRAIN_DEADLINE_MAX));
    }
}
