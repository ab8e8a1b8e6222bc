//! Processes and process groups as the kernel sees them: `/proc/<pid>/stat`, liveness, signals,
//! and the SIGTERM-then-SIGKILL shutdown of a whole group.
//!
//! Every model server runs as the leader of its own process group, so a group signal also
//! reaches the workers it forked (tokenizer pools, NCCL helpers) and a stop leaves no orphan
//! holding a GPU or a port. The dangerous part of signalling by number is pid reuse: a pid is
//! only trusted together with its start time (field 22 of `/proc/<pid>/stat`), and no signal
//! ever goes to group 1, to a negative id, or to the agent's own group.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::time::{Instant, sleep, timeout, timeout_at};

/// How often an adopted process (not our child, so no SIGCHLD) is checked for liveness.
pub(crate) const ADOPTED_POLL: Duration = Duration::from_millis(500);

/// How often a group being stopped is checked; short because a stop blocks its caller.
const STOP_POLL: Duration = Duration::from_millis(50);

/// After SIGKILL the kernel needs only to schedule the victims; this bounds the wait for that
/// (a process stuck in uninterruptible I/O can outlive it, which is logged).
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The fields of `/proc/<pid>/stat` the driver needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// Field 5: the process group id.
    pub pgrp: i32,
    /// Field 22: start time in clock ticks after boot; with the pid it names one process.
    pub start_time: u64,
}

impl ProcStat {
    /// A zombie has exited and only waits for its parent to reap it; the agent's init may never
    /// do that (PID 1 in a container often does not reap), so a zombie counts as dead.
    pub(crate) fn is_running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses one `/proc/<pid>/stat` line. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted from the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let close = text.rfind(')')?;
    let mut fields = text[close + 1..].split_whitespace();
    // After `)` the fields start at number 3 (state).
    let state = fields.next()?.chars().next()?;
    let pgrp = fields.nth(1)?.parse().ok()?;
    // Field 5 was consumed; field 22 is 16 further on.
    let start_time = fields.nth(16)?.parse().ok()?;
    Some(ProcStat {
        state,
        pgrp,
        start_time,
    })
}

pub(crate) fn read_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// True when `pid` is a running (non-zombie) process that started at `start_time`, i.e. the
/// very process the agent started, not a later one that got the same pid.
pub(crate) fn is_alive(pid: u32, start_time: u64) -> bool {
    read_stat(pid).is_some_and(|st| st.is_running() && st.start_time == start_time)
}

/// True when any running process is a member of group `pgid`.
pub(crate) fn group_has_running_members(pgid: u32) -> bool {
    let Ok(pgid) = i32::try_from(pgid) else {
        return false;
    };
    let entries = match std::fs::read_dir("/proc") {
        Ok(entries) => entries,
        // Without /proc the kernel's answer to signal 0 is the best left; it counts zombies too,
        // which only makes a stop wait longer, never leave a process behind.
        Err(_) => return unsafe { libc::kill(-pgid, 0) } == 0,
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            return false;
        };
        // A process may exit between listing and reading; then it is simply not a member.
        read_stat(pid).is_some_and(|st| st.pgrp == pgid && st.is_running())
    })
}

/// How a process ended, as far as the agent can know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i32),
    Signal(i32),
    /// An adopted process is not our child, so its exit status goes to its new parent.
    Unknown,
}

impl Exit {
    pub(crate) fn from_status(status: ExitStatus) -> Exit {
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(signal)) => Exit::Signal(signal),
            (None, None) => Exit::Unknown,
        }
    }

    pub(crate) fn code(self) -> Option<i32> {
        match self {
            Exit::Code(code) => Some(code),
            Exit::Signal(_) | Exit::Unknown => None,
        }
    }

    pub(crate) fn describe(self) -> String {
        match self {
            Exit::Code(code) => format!("exited with code {code}"),
            Exit::Signal(signal) => format!("killed by signal {signal}"),
            Exit::Unknown => "exited (status unknown: adopted from a previous agent run)".into(),
        }
    }
}

/// A running model server: either our child, or a process adopted from a previous agent run.
#[derive(Debug)]
pub(crate) enum Proc {
    Child {
        child: tokio::process::Child,
        pid: u32,
        start_time: u64,
    },
    Adopted {
        pid: u32,
        start_time: u64,
    },
}

impl Proc {
    pub(crate) fn pid(&self) -> u32 {
        match self {
            Proc::Child { pid, .. } | Proc::Adopted { pid, .. } => *pid,
        }
    }

    pub(crate) fn start_time(&self) -> u64 {
        match self {
            Proc::Child { start_time, .. } | Proc::Adopted { start_time, .. } => *start_time,
        }
    }

    /// Waits for the leader to exit. Cancel safe, and returns at once when called again after
    /// the leader has exited.
    pub(crate) async fn wait(&mut self) -> Exit {
        self.wait_polling(ADOPTED_POLL).await
    }

    async fn wait_polling(&mut self, poll: Duration) -> Exit {
        match self {
            Proc::Child { child, .. } => match child.wait().await {
                Ok(status) => Exit::from_status(status),
                // Only possible if something else reaped our child; it is gone either way.
                Err(_) => Exit::Unknown,
            },
            Proc::Adopted { pid, start_time } => {
                while is_alive(*pid, *start_time) {
                    sleep(poll).await;
                }
                Exit::Unknown
            }
        }
    }

    /// The group still belongs to this allocation unless its leader's pid now names another
    /// process. A group id cannot be reused while the group has members, so a vanished leader
    /// with members left means those members are ours.
    fn group_is_ours(&self) -> bool {
        read_stat(self.pid()).is_none_or(|st| st.start_time == self.start_time())
    }

    /// True while the leader or any member of its group still runs. The leader is checked on
    /// its own too, because a server may have moved itself to another group (`setsid`).
    fn anything_running(&self) -> bool {
        let group = self.group_is_ours() && group_has_running_members(self.pid());
        group || is_alive(self.pid(), self.start_time())
    }

    /// Sends `signal` to the group and, if it left the group, to the leader, provided they are
    /// still ours and still running.
    fn signal(&self, signal: i32) {
        let Ok(pgid) = i32::try_from(self.pid()) else {
            return;
        };
        // kill(-1) would signal every process we may signal; our own group is the agent.
        if pgid <= 1 || pgid == unsafe { libc::getpgrp() } {
            tracing::error!(
                pgid,
                "refusing to signal a process group that is not a model server"
            );
            return;
        }
        if self.group_is_ours() && group_has_running_members(self.pid()) {
            send(-pgid, signal);
        }
        let leader = read_stat(self.pid());
        if leader.is_some_and(|st| {
            st.pgrp != pgid && st.is_running() && st.start_time == self.start_time()
        }) {
            send(pgid, signal);
        }
    }
}

/// `kill(2)`; ESRCH (it exited since the check) is the outcome a caller wanted anyway.
fn send(target: i32, signal: i32) {
    if unsafe { libc::kill(target, signal) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(target, signal, %err, "cannot signal model server");
        }
    }
}

/// Stops the whole group: SIGTERM, up to `grace` for the leader and every member to exit, then
/// SIGKILL for whatever is left. Also used after the leader exited on its own, to take its
/// leftover children with it. Returns the leader's exit if it was observed.
pub(crate) async fn terminate(proc: &mut Proc, grace: Duration) -> Option<Exit> {
    let deadline = Instant::now() + grace;
    proc.signal(libc::SIGTERM);
    let mut exit = timeout_at(deadline, proc.wait_polling(STOP_POLL))
        .await
        .ok();
    while Instant::now() < deadline && proc.anything_running() {
        sleep(STOP_POLL).await;
    }
    if exit.is_some() && !proc.anything_running() {
        return exit;
    }
    proc.signal(libc::SIGKILL);
    if exit.is_none() {
        exit = timeout(KILL_WAIT, proc.wait_polling(STOP_POLL)).await.ok();
    }
    let kill_deadline = Instant::now() + KILL_WAIT;
    while Instant::now() < kill_deadline && proc.anything_running() {
        sleep(STOP_POLL).await;
    }
    if proc.anything_running() {
        tracing::error!(
            pgid = proc.pid(),
            "model server survived SIGKILL (uninterruptible I/O?) and is no longer managed; it needs an operator"
        );
    }
    exit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let line = "4242 (my (weird) srv) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 987654 1000 10";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                pgrp: 4242,
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("4242 (truncated) S 1 2"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn reads_own_stat() {
        let st = read_stat(std::process::id()).expect("own /proc/<pid>/stat");
        assert!(st.is_running());
        assert!(is_alive(std::process::id(), st.start_time));
        assert!(!is_alive(std::process::id(), st.start_time + 1));
    }
}
