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
