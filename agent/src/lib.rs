//! `sov-agent`: the node agent of sov, as a library so the binary, the fleet simulator and the
//! end-to-end tests share one implementation.
//!
//! - [`config`]: the agent's TOML config (scheduler endpoints, node name, location facts,
//!   certificate files, simulated GPUs), validated at start so malformed facts never reach a
//!   scheduler.
//! - [`credentials`]: the agent's certificate, checked at start against its node name and
//!   location (mutual TLS on every connection), and hints for failed handshakes.
//! - [`inventory`]: CPU and memory via sysinfo, GPUs via NVML loaded at run time (or declared
//!   simulated GPUs), re-fingerprinted periodically and on SIGHUP.
//! - [`driver`]: runs model servers as processes (env, ports, GPUs, logs, health checks,
//!   restarts with backoff, SIGTERM then SIGKILL, re-adoption after an agent restart).
//! - [`client`]: scheduler endpoints, leader following, jittered backoff.
//! - [`agent`]: the agent's main loop (register, heartbeat, watch assignments, converge,
//!   report, fail closed when cut off).
//! - [`fleet`]: N virtual nodes in one process for tests and benchmarks.
pub mod agent;
pub mod client;
pub mod config;
pub mod credentials;
pub mod driver;
pub mod fleet;
pub mod inventory;
