//! Watching the cluster carry out what was asked (`deploy show --watch`, `policy apply --wait`,
//! `node drain --wait`): poll every `POLL_INTERVAL` until the answer says it converged, the
//! timeout passes or the user presses Ctrl-C.
//!
//! Owns the loop, its bounds and its ending; what is written for each answer is decided by the
//! pure `output::watch`. A poll that finds no leader (an election, a restarting scheduler) does
//! not end the watch: it is said once on stderr and the next poll tries again, until the
//! timeout. A poll answered with an error (the deployment was deleted) ends it.

use std::future::Future;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::client::Channel;
use tonic::Status;

use crate::client::{Client, Polled};
use crate::output::watch::{Display, Mode, Watched};
use crate::output::{self, Format, clock_cell, duration_text, now_ms};

/// Between two polls: fast enough to look live, slow enough that a few watching users cost the
/// leader nothing (one read each, twice a second).
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How long `--watch` and `--wait` watch unless told otherwise: the default migration deadline
/// (10 minutes) and time for replacements to start. `main` spells it "15m" for clap.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(15 * 60);
/// Exit code when the user stops a watch with Ctrl-C: 128 + SIGINT, as shells report it.
pub const INTERRUPTED_EXIT: u8 = 130;

/// What a watch waits for, and how it shows it.
#[derive(Debug, Clone)]
pub struct WatchOpts {
    pub timeout: Duration,
    pub mode: Mode,
    /// What converges, for the timeout error: `deployment open-eu`, `policy version 5`.
    pub what: String,
}

/// How a watch writes with `-o FORMAT`: redrawn on a terminal, lines elsewhere, JSON lines.
pub fn mode(format: Format) -> Mode {
    match format {
        Format::Json => Mode::Json,
        Format::Table if std::io::stdout().is_terminal() => Mode::Terminal,
        Format::Table => Mode::Lines,
    }
}

/// The state of one watch between polls.
struct Progress<V> {
    display: Display,
    /// The last answer, shown.
    last: Option<V>,
    /// Whether a missed poll was reported: once per watch is enough.
    missed_noted: bool,
    deadline: Instant,
}

impl<V: Watched> Progress<V> {
    /// Shows the outcome of one poll; true when the watch is over: converged, or nobody reads
    /// any more (`| head`).
    fn show(&mut self, polled: Polled<V>) -> anyhow::Result<bool> {
        let view = match polled {
            Polled::Answer(view) => view,
            Polled::Missed(reason) => {
                if !self.missed_noted {
                    self.missed_noted = true;
                    self.display.interrupted();
                    let left = self.deadline.saturating_duration_since(Instant::now());
                    let until = now_ms() + left.as_millis() as i64;
                    eprintln!(
                        "no answer this time ({reason}); still watching until {}",
                        clock_cell(until, now_ms())
                    );
                }
                return Ok(false);
            }
        };
        let now = now_ms();
        let text = self.display.update(self.last.as_ref(), &view, now);
        if !write(text.as_deref().unwrap_or(""))? {
            return Ok(true);
        }
        let converged = view.converged();
        if converged {
            write(&self.display.finish(&view, now))?;
        }
        self.last = Some(view);
        Ok(converged)
    }
}

/// Shows `first` (an answer already in hand, if any), then polls with `rpc` and `req` until an
/// answer converged. Returns the exit code: 0 when converged, `INTERRUPTED_EXIT` on Ctrl-C;
/// the timeout is an error that says what is left.
pub async fn watch<V, Req, Resp, F, Fut>(
    client: &mut Client,
    opts: &WatchOpts,
    first: Option<V>,
    req: Req,
    mut rpc: F,
    convert: impl Fn(Resp) -> V,
) -> anyhow::Result<u8>
where
    V: Watched,
    Req: Clone,
    F: FnMut(Channel, Req) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let mut progress = Progress {
        display: Display::new(opts.mode),
        last: None,
        missed_noted: false,
        deadline: Instant::now() + opts.timeout,
    };
    // Each round sleeps a full interval except the last, so this bound is never the one that
    // ends a watch; it keeps the loop finite whatever the clock does.
    let rounds_max = opts.timeout.as_millis() / POLL_INTERVAL.as_millis() + 2;
    let polling = async {
        let mut in_hand = first.map(Polled::Answer);
        for _ in 0..rounds_max {
            let polled = match in_hand.take() {
                Some(polled) => polled,
                None => client.poll(req.clone(), &mut rpc).await?.map(&convert),
            };
            if progress.show(polled)? {
                return Ok(true);
            }
            let left = progress.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(POLL_INTERVAL.min(left)).await;
        }
        anyhow::Ok(false)
    };
    let finished = tokio::select! {
        result = polling => Some(result),
        () = interrupted() => None,
    };
    let left = || {
        progress
            .last
            .as_ref()
            .map_or_else(|| "no answer from the cluster yet".to_owned(), V::left)
    };
    match finished {
        Some(Ok(true)) => Ok(0),
        Some(Ok(false)) => anyhow::bail!(
            "{} not converged after {}: {}",
            opts.what,
            duration_text(opts.timeout.as_millis() as u64),
            left()
        ),
        Some(Err(err)) => Err(err),
        None => {
            eprintln!("stopped watching; {} is at: {}", opts.what, left());
            Ok(INTERRUPTED_EXIT)
        }
    }
}

/// Resolves when the user presses Ctrl-C; never, if the signal cannot be caught (then Ctrl-C
/// ends sovctl the default way, which is what the user wanted anyway).
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Writes `text` to stdout now; false when the reader went away.
fn write(text: &str) -> anyhow::Result<bool> {
    if text.is_empty() {
        return Ok(true);
    }
    output::write_stdout(text)
}
