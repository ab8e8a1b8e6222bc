//! `sov-agent`: the node agent (inventory, location facts, heartbeats, model-server driver).
//!
//! The agent channel it will speak is defined in `proto/proto/sov/v1/agent.proto`; the agent
//! itself is the next milestone (issue #3). Until then this binary only explains that, so a
//! deployment script that starts it fails loudly instead of silently doing nothing.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "sov-agent",
    version,
    about = "sov node agent: reports GPU inventory and location facts, runs model servers (not yet available)"
)]
struct Cli {}

fn main() {
    Cli::parse();
    eprintln!(
        "error: sov-agent is not implemented yet (issue #3); schedulers run without agents for now"
    );
    std::process::exit(2);
}
