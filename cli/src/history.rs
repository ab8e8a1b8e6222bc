//! `sovctl history ...`: the placement history for compliance reviewers, through
//! `sov.v1.HistoryService`: events by filter (`query`), where a deployment ran at an instant
//! (`query --as-of`), and evidence that verifies offline (`export`). Routing and retries belong
//! to `client`, rendering to `output::history`, the evidence format and its checks to
//! `sov_proto::evidence` (read by `audit`).
//!
//! An export is streamed: to stdout as it arrives, or to `FILE.partial`, renamed to the file
//! once the signed seal has arrived, so a file named by `-f` is always a complete export.

use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use sov_proto::evidence::{Line, Seal};
use sov_proto::v1::history_service_client::HistoryServiceClient;
use sov_proto::v1::{AsOfRequest, EvidenceChunk, ExportRequest, HistoryPage, HistoryQuery};
use tonic::Streaming;

use crate::UsageError;
use crate::atomic_file::{AtomicFile, refuse_to_replace};
use crate::client::{Client, read_consistency, status_reason};
use crate::output::history::{self as out, AsOfView, EventView, ExportedView, HistoryView, hex};
use crate::output::{self, Format};

/// Every kind of event the history records, for `--kind`.
pub const KINDS: [&str; 23] = [
    "cluster.initialized",
    "deployment.created",
    "deployment.changed",
    "deployment.deleted",
    "allocation.placed",
    "allocation.started",
    "allocation.healthy",
    "allocation.failed",
    "allocation.stop-ordered",
    "allocation.stopped",
    "allocation.migrated",
    "policy.activated",
    "violation.detected",
    "violation.cleared",
    "node.registered",
    "node.facts-changed",
    "node.down",
    "node.ready",
    "node.drained",
    "node.undrained",
    "certification.expired",
    "node.registration-refused",
    "cluster.membership-changed",
];

/// Largest page the API serves.
const PAGE_LIMIT_MAX: u32 = 1000;
/// `--limit` at most: a hundred full pages. Longer stretches of history are for `export`.
pub const QUERY_LIMIT_MAX: u32 = 100_000;
/// Pages per query. Stops a server whose page token never runs out (or that answers with empty
/// pages) from keeping sovctl busy forever.
const PAGES_MAX: u32 = 1000;
/// Largest message accepted: a page of 1000 events, or an export chunk of 500 events with
/// their proofs, is well under it.
const MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// How much of the end of a `--previous` file is read to find its seal, at most. A seal lists
/// the leaf ranges exported: a heavily filtered export has many, a few MiB at worst.
const SEAL_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// The first window read from the end of a `--previous` file; doubled until the seal fits.
const SEAL_WINDOW_FIRST: u64 = 64 * 1024;

/// Events of `filter` (its `limit` and `page_token` are set here), oldest first, up to `limit`.
pub async fn query(
    client: &mut Client,
    format: Format,
    filter: HistoryQuery,
    limit: u32,
) -> anyhow::Result<()> {
    let mut pages = Pages::new(limit);
    let mut count = 0;
    while let Some(req) = pages.next_request(&filter) {
        count += 1;
        anyhow::ensure!(
            count <= PAGES_MAX,
            "the history did not end after {PAGES_MAX} pages; narrow the filters or lower --limit"
        );
        let page = client
            .call(req, |ch, req| async move {
                HistoryServiceClient::new(ch)
                    .max_decoding_message_size(MESSAGE_BYTES_MAX)
                    .query(req)
                    .await
            })
            .await?;
        pages.add_page(page)?;
    }
    let view = pages.view;
    if format == Format::Table {
        if view.events.is_empty() {
            eprintln!("no events match; widen the filters (see sovctl history query --help)");
            return Ok(());
        }
        if view.more {
            eprintln!(
                "more events follow; raise --limit (at most {QUERY_LIMIT_MAX}) or narrow the \
                 filters to see them"
            );
        }
    }
    output::emit(format, &view, |v| out::events_table(&v.events))
}

/// Where every replica of `deployment` ran at `at_ms`.
pub async fn as_of(
    client: &mut Client,
    format: Format,
    deployment: String,
    at_ms: i64,
    stale: bool,
) -> anyhow::Result<()> {
    let req = AsOfRequest {
        deployment,
        at_ms,
        consistency: read_consistency(stale),
    };
    let answer = client
        .call(req, |ch, req| async move {
            HistoryServiceClient::new(ch)
                .max_decoding_message_size(MESSAGE_BYTES_MAX)
                .as_of(req)
                .await
        })
        .await?;
    output::emit(format, &AsOfView::from(answer), out::as_of_text)
}

/// Pages of `Query` merged into one answer, stopping at `limit` events.
#[derive(Debug)]
struct Pages {
    remaining: u32,
    token: String,
    done: bool,
    view: HistoryView,
}

impl Pages {
    fn new(limit: u32) -> Self {
        assert!(limit > 0, "clap keeps --limit above 0");
        Pages {
            remaining: limit,
            token: String::new(),
            done: false,
            view: HistoryView {
                events: Vec::new(),
                tree_size: 0,
                root: String::new(),
                more: false,
            },
        }
    }

    /// The request for the next page, or `None` when the query is complete.
    fn next_request(&self, filter: &HistoryQuery) -> Option<HistoryQuery> {
        if self.done {
            return None;
        }
        Some(HistoryQuery {
            limit: self.remaining.min(PAGE_LIMIT_MAX),
            page_token: self.token.clone(),
            ..filter.clone()
        })
    }

    fn add_page(&mut self, page: HistoryPage) -> anyhow::Result<()> {
        assert!(!self.done, "a page arrived after the query ended");
        let offered = page.events.len();
        let take = offered.min(self.remaining as usize);
        self.view
            .events
            .extend(page.events.into_iter().take(take).map(EventView::from));
        self.remaining -= take as u32;
        // Every event shown is a leaf of the latest tree read.
        self.view.tree_size = page.tree_size;
        self.view.root = hex(&page.root);
        if take < offered || page.next_page.is_empty() || self.remaining == 0 {
            self.view.more = take < offered || !page.next_page.is_empty();
            self.done = true;
            return Ok(());
        }
        anyhow::ensure!(
            page.next_page != self.token,
            "the scheduler returned the same page twice (token {:?}); the query cannot make \
             progress",
            self.token
        );
        self.token = page.next_page;
        Ok(())
    }
}

/// The tree size in the seal (the last line) of an earlier export, which a new export proves
/// it extends.
pub fn previous_size(path: &Path) -> Result<u64, UsageError> {
    let usage = |why: String| UsageError(format!("--previous {}: {why}", path.display()));
    let line = last_line(path).map_err(|e| usage(format!("cannot read it: {e}")))?;
    let not_an_export = || {
        usage(
            "its last line is not the seal of a sov export ({\"type\":\"seal\",…}); pass a \
             file `sovctl history export` wrote, complete"
                .to_owned(),
        )
    };
    let size = match serde_json::from_str::<Line>(&line) {
        Ok(Line::Seal(Seal { checkpoint, .. })) => checkpoint.tree_size,
        _ => return Err(not_an_export()),
    };
    if size == 0 {
        return Err(usage(
            "it is an export of an empty history, which anything extends; leave out --previous"
                .to_owned(),
        ));
    }
    Ok(size)
}

/// The last non-empty line of a file, read from its end.
fn last_line(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut window = SEAL_WINDOW_FIRST;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::new();
        (&mut file).take(len - start).read_to_end(&mut tail)?;
        let end = tail
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        let tail = &tail[..end];
        match tail.iter().rposition(|&b| b == b'\n') {
            Some(newline) => return Ok(String::from_utf8_lossy(&tail[newline + 1..]).into()),
            None if start == 0 => return Ok(String::from_utf8_lossy(tail).into()),
            None if window >= SEAL_BYTES_MAX => {
                return Err(std::io::Error::other(format!(
                    "its last line is longer than {SEAL_BYTES_MAX} bytes"
                )));
            }
            None => window *= 2,
        }
    }
}

/// Where `history export` writes: stdout, or a file that appears only once complete.
enum Sink {
    Stdout,
    File(AtomicFile),
}

impl Sink {
    /// Writes complete lines; false when stdout's reader went away.
    fn write(&mut self, lines: &str) -> anyhow::Result<bool> {
        match self {
            Sink::Stdout => output::write_stdout(lines),
            Sink::File(f) => f
                .write_all(lines.as_bytes())
                .map(|()| true)
                .map_err(Into::into),
        }
    }
}

/// What the lines of an export received so far hold, checked as they arrive: a header first,
/// a seal last, nothing after it.
#[derive(Debug, Default)]
struct Tally {
    lines: u64,
    events: u64,
    seal: Option<Seal>,
}

impl Tally {
    /// Counts the lines of one chunk; an error says what is wrong with them.
    fn add(&mut self, chunk: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(chunk).map_err(|_| "a chunk is not UTF-8".to_owned())?;
        if !text.ends_with('\n') {
            return Err("a chunk ends inside a line".to_owned());
        }
        for raw in text.lines().filter(|l| !l.trim().is_empty()) {
            self.lines += 1;
            let line: Line = serde_json::from_str(raw)
                .map_err(|e| format!("line {} is not an evidence line ({e})", self.lines))?;
            if self.seal.is_some() {
                return Err(format!("line {} follows the seal", self.lines));
            }
            match line {
                Line::Header { .. } if self.lines == 1 => {}
                _ if self.lines == 1 => return Err("the first line is not a header".to_owned()),
                Line::Header { .. } => {
                    return Err(format!("line {} is a second header", self.lines));
                }
                Line::Event { .. } => self.events += 1,
                Line::Consistency { .. } => {}
                Line::Seal(seal) => self.seal = Some(seal),
            }
        }
        Ok(())
    }
}

/// Shows how many events have arrived, on stderr, only when it is a terminal.
struct Progress {
    on_terminal: bool,
}

impl Progress {
    fn show(&self, events: u64) {
        if self.on_terminal {
            eprint!("\rexporting: {events} events written");
        }
    }

    fn done(&self) {
        if self.on_terminal {
            eprintln!();
        }
    }
}

/// Streams the evidence `req` selects to `file` (or stdout), then says on stderr what was
/// written; with `-o json` and a file, also prints that as JSON.
pub async fn export(
    client: &mut Client,
    format: Format,
    req: ExportRequest,
    file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let previous_size = (req.previous_size > 0).then_some(req.previous_size);
    // Before the call: a file that cannot be created is bad input, found offline. Should the
    // call fail, dropping the sink removes the partial file.
    let mut sink = match &file {
        Some(f) => Sink::File(
            AtomicFile::create(f)
                .map_err(|e| UsageError(format!("cannot write {}: {e}", f.display())))?,
        ),
        None => Sink::Stdout,
    };
    let stream = client
        .call(req, |ch, req| async move {
            HistoryServiceClient::new(ch)
                .max_decoding_message_size(MESSAGE_BYTES_MAX)
                .export(req)
                .await
        })
        .await?;
    let progress = Progress {
        on_terminal: std::io::stderr().is_terminal(),
    };
    let idle_max = client.ordinary().timeout;
    let received = receive(stream, &mut sink, &progress, idle_max).await;
    progress.done();
    let where_ = file.as_ref().map_or_else(
        || "the output is incomplete".to_owned(),
        |f| format!("{} was not written", f.display()),
    );
    let Some(tally) = received.map_err(|e| anyhow::anyhow!("{e}; {where_}"))? else {
        // stdout's reader went away: what it wanted, it got.
        return Ok(());
    };
    let Some(seal) = tally.seal else {
        anyhow::bail!(
            "the export ended after {} events without its signed seal; {where_}. Run it again",
            tally.events
        );
    };
    if let Sink::File(f) = sink {
        let path = file.as_ref().expect("a file sink has a path");
        f.commit()
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let view = ExportedView {
        file,
        cluster_id: seal.checkpoint.cluster_id,
        events: tally.events,
        leaves: seal.leaves,
        tree_size: seal.checkpoint.tree_size,
        root: hex(&seal.checkpoint.root),
        at_ms: seal.checkpoint.at_ms,
        previous_size,
    };
    eprint!("{}", out::exported_line(&view));
    if format == Format::Json && view.file.is_some() {
        output::emit(format, &view, out::exported_line)?;
    }
    Ok(())
}

/// Reads the export stream into `sink`, checking its lines; `None` when stdout's reader went
/// away. The error says how far it got and why it stopped.
async fn receive(
    mut stream: Streaming<EvidenceChunk>,
    sink: &mut Sink,
    progress: &Progress,
    idle_max: Duration,
) -> anyhow::Result<Option<Tally>> {
    let mut tally = Tally::default();
    loop {
        let message = tokio::time::timeout(idle_max, stream.message())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the export stalled after {} events: nothing arrived for {}s (raise \
                     --timeout on a slow link)",
                    tally.events,
                    idle_max.as_secs()
                )
            })?
            .map_err(|status| {
                anyhow::anyhow!(
                    "the export broke off after {} events: {}",
                    tally.events,
                    status_reason(&status)
                )
            })?;
        let Some(chunk) = message else {
            return Ok(Some(tally));
        };
        tally
            .add(&chunk.lines)
            .map_err(|why| anyhow::anyhow!("the scheduler sent a malformed export: {why}"))?;
        // `add` checked the chunk is UTF-8.
        let lines = String::from_utf8_lossy(&chunk.lines);
        if !sink.write(&lines)? {
            return Ok(None);
        }
        progress.show(tally.events);
    }
}

/// Checks `--file`/`--force` and reads `--previous` before anything is sent, so bad input fails
/// fast and offline.
pub fn prepare_export(
    mut req: ExportRequest,
    previous: Option<&Path>,
    file: Option<&Path>,
    force: bool,
) -> Result<ExportRequest, UsageError> {
    if let Some(file) = file {
        refuse_to_replace(file, force)?;
    }
    if let Some(previous) = previous {
        req.previous_size = previous_size(previous)?;
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sov_proto::evidence::{Checkpoint, FORMAT};
    use sov_proto::v1::HistoryEvent;

    fn page(seqs: std::ops::Range<u64>, next_page: &str) -> HistoryPage {
        HistoryPage {
            events: seqs
                .map(|seq| HistoryEvent {
                    seq,
                    kind: "node.down".into(),
                    body: format!("{{\"seq\":{seq}}}").into_bytes(),
                    ..Default::default()
                })
                .collect(),
            next_page: next_page.to_owned(),
            tree_size: 50,
            root: vec![0xab; 32],
        }
    }

    fn seqs(p: &Pages) -> Vec<u64> {
        p.view.events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn pages_are_followed_until_the_history_ends() {
        let filter = HistoryQuery {
            deployment: "open-eu".into(),
            ..Default::default()
        };
        let mut p = Pages::new(2500);
        let req = p.next_request(&filter).unwrap();
        assert_eq!(
            (req.limit, req.page_token.as_str(), req.deployment.as_str()),
            (1000, "", "open-eu")
        );
        p.add_page(page(0..3, "3")).unwrap();
        let req = p.next_request(&filter).unwrap();
        assert_eq!((req.limit, req.page_token.as_str()), (1000, "3"));
        p.add_page(page(3..5, "")).unwrap();
        assert!(p.next_request(&filter).is_none());
        assert_eq!(seqs(&p), [0, 1, 2, 3, 4]);
        assert!(!p.view.more);
        assert_eq!((p.view.tree_size, p.view.root.len()), (50, 64));
    }

    #[test]
    fn the_limit_caps_the_total_and_says_more_follow() {
        let filter = HistoryQuery::default();
        let mut p = Pages::new(3);
        assert_eq!(p.next_request(&filter).unwrap().limit, 3);
        p.add_page(page(0..2, "2")).unwrap();
        assert_eq!(p.next_request(&filter).unwrap().limit, 1);
        p.add_page(page(2..3, "3")).unwrap();
        assert!(p.next_request(&filter).is_none());
        assert_eq!(seqs(&p), [0, 1, 2]);
        assert!(p.view.more);

        // A server sending more than asked is cut at the limit.
        let mut p = Pages::new(2);
        p.add_page(page(0..4, "")).unwrap();
        assert_eq!(seqs(&p), [0, 1]);
        assert!(p.view.more);

        // Exactly the limit, and the history ends there: nothing more.
        let mut p = Pages::new(2);
        p.add_page(page(0..2, "")).unwrap();
        assert!(!p.view.more);
    }

    #[test]
    fn a_repeated_page_token_is_an_error() {
        let mut p = Pages::new(100);
        p.add_page(page(0..1, "1")).unwrap();
        let err = p.add_page(page(0..1, "1")).unwrap_err();
        assert!(err.to_string().contains("same page twice"), "{err}");
    }

    fn seal_line(tree_size: u64) -> String {
        Line::Seal(Seal {
            checkpoint: Checkpoint {
                cluster_id: "c-1".into(),
                tree_size,
                root: [1; 32],
                at_ms: 5,
            },
            checkpoint_signature: vec![2; 64],
            leaves: vec![(0, 1)],
            filter: String::new(),
            signature: vec![3; 64],
        })
        .to_json()
    }

    fn header_line() -> String {
        Line::Header {
            format: FORMAT.into(),
            cluster_id: "c-1".into(),
            exported_at_ms: 5,
            filter: String::new(),
        }
        .to_json()
    }

    fn event_line(leaf: u64) -> String {
        Line::Event {
            leaf,
            event: format!("{{\"seq\":{leaf}}}"),
            proof: vec![[4; 32]],
        }
        .to_json()
    }

    #[test]
    fn the_previous_size_is_read_from_the_seal_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("may.jsonl");
        std::fs::write(
            &file,
            format!(
                "{}\n{}\n{}\n{}\n\n",
                header_line(),
                event_line(0),
                event_line(1),
                seal_line(37)
            ),
        )
        .unwrap();
        assert_eq!(previous_size(&file).unwrap(), 37);

        // A seal longer than the first window is still found.
        let long = "x".repeat(SEAL_WINDOW_FIRST as usize * 3);
        let mut seal = seal_line(41);
        seal.insert_str(seal.len() - 1, &format!(",\"padding\":\"{long}\""));
        std::fs::write(&file, format!("{}\n{seal}\n", header_line())).unwrap();
        assert_eq!(previous_size(&file).unwrap(), 41);

        // A file of one line, the seal.
        std::fs::write(&file, seal_line(8)).unwrap();
        assert_eq!(previous_size(&file).unwrap(), 8);
    }

    #[test]
    fn a_previous_file_without_a_seal_is_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cut.jsonl");
        std::fs::write(&file, format!("{}\n{}\n", header_line(), event_line(0))).unwrap();
        let err = previous_size(&file).unwrap_err().0;
        assert!(
            err.starts_with(&format!(
                "--previous {}: its last line is not the seal",
                file.display()
            )),
            "{err}"
        );
        std::fs::write(&file, seal_line(0)).unwrap();
        assert!(
            previous_size(&file)
                .unwrap_err()
                .0
                .contains("empty history")
        );
        let missing = dir.path().join("none.jsonl");
        assert!(
            previous_size(&missing)
                .unwrap_err()
                .0
                .contains("cannot read it")
        );
    }

    #[test]
    fn a_tally_checks_the_export_as_it_arrives() {
        let mut t = Tally::default();
        t.add(format!("{}\n{}\n", header_line(), event_line(0)).as_bytes())
            .unwrap();
        t.add(format!("{}\n{}\n", event_line(1), seal_line(2)).as_bytes())
            .unwrap();
        assert_eq!((t.lines, t.events), (4, 2));
        assert_eq!(t.seal.as_ref().unwrap().checkpoint.tree_size, 2);
        assert_eq!(
            t.add(format!("{}\n", event_line(2)).as_bytes()),
            Err("line 5 follows the seal".to_owned())
        );

        let bad = |chunk: String| Tally::default().add(chunk.as_bytes()).unwrap_err();
        assert_eq!(
            bad(format!("{}\n", event_line(0))),
            "the first line is not a header"
        );
        assert_eq!(
            bad(format!("{}\n{}", header_line(), event_line(0))),
            "a chunk ends inside a line"
        );
        assert_eq!(
            bad(format!("{}\n{}\n", header_line(), header_line())),
            "line 2 is a second header"
        );
        assert!(
            bad(format!("{}\n{{\"type\":\"gossip\"}}\n", header_line()))
                .starts_with("line 2 is not an evidence line")
        );
    }
}
