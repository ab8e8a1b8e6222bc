//! `sov-scheduler`: the Raft-replicated scheduler of sov.
//!
//! The crate is split into a pure core and an I/O shell (see `../shared/DESIGN.md` and
//! `docs/architecture.md`):
//! - core: [`state`] — replicated state, commands, the pure `apply` (with
//!   `state::compliance`: rules re-checked in the entry that changes them); [`policy`] — Cedar
//!   bundles and decisions; [`placement`] — where replicas go; [`reconcile`] — what the leader
//!   does next (stops, replacements, missing replicas); [`history`] — the events of the
//!   tamper-evident placement history and the head of their Merkle tree.
//! - shell: [`raft`] (openraft glue: redb storage, tonic peer network, forwarding to the leader),
//!   [`api`] (the public gRPC services), [`web`] (health, readiness, metrics), [`server`] (wires
//!   one scheduler process together), [`config`] and [`dev`] (the local cluster launcher),
//!   [`restore`] (seeding a data dir from a backup).
//!
//! To follow one write: `api::deployments` validates the request, `raft::Replica::propose`
//! stamps it and hands it to openraft (or forwards it to the leader), `raft::log_store` makes it
//! durable, and `raft::state_machine` calls `state::apply` on every replica.

pub mod api;
pub mod config;
pub mod dev;
pub mod history;
pub mod keygen;
pub mod leader;
pub mod placement;
pub mod policy;
pub mod raft;
pub mod reconcile;
pub mod restore;
pub mod server;
pub mod state;
pub mod web;

/// Turns transparent huge pages off (`allowed = false`) or back to the host's setting (`true`)
/// for this process and the processes it starts afterwards (Linux; elsewhere it does nothing).
///
/// `sov-scheduler` turns them off first thing in `main`: mimalloc asks the kernel for huge pages
/// on its arenas (`MADV_HUGEPAGE`), and the kernel then zeroes 2 MiB at the first touch of each
/// region the allocator takes, or takes back after returning it. In the rule-change benchmark's
/// reaction that zeroing (`clear_page_erms`) was a fifth of all CPU on the machine; with huge
/// pages off, about 1 % (docs/benchmarks.md, Rule changes).
///
/// `sov-agent` calls it with `true`: the flag is inherited across `fork` and `exec`, and the
/// agent's children are the operators' workloads, which must get the host's setting even when
/// the agent itself was started by a scheduler (`sov-scheduler dev`).
pub fn transparent_huge_pages(allowed: bool) {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE only sets a flag of this process; no memory is passed.
    unsafe {
        libc::prctl(
            libc::PR_SET_THP_DISABLE,
            libc::c_ulong::from(!allowed),
            0,
            0,
            0,
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = allowed;
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    fn off() -> i32 {
        // SAFETY: PR_GET_THP_DISABLE only reads a flag of this process.
        unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) }
    }

    #[test]
    fn transparent_huge_pages_turn_off_and_back_to_the_hosts_setting() {
        super::transparent_huge_pages(false);
        assert_eq!(off(), 1);
        super::transparent_huge_pages(true);
        assert_eq!(off(), 0);
    }
}
