//! Score: among feasible nodes, which one a replica should go to. Higher is better.
//!
//! Default: GPU bin-packing, so large free blocks stay available for large models (the node left
//! with the fewest free GPUs wins; CPU-only replicas pack by CPU). Replicas of the same
//! deployment are spread over nodes first (a soft anti-affinity that outweighs packing), so one
//! node loss takes out as few replicas as possible; a spec may spread over sites or countries
//! instead, or not at all, and may prefer countries or sites (soft affinity).

use super::fit::Free;
use crate::state::Resources;

/// Weight of one replica of the same deployment already on the node: larger than any packing
/// score difference, so spreading wins over packing.
pub const SAME_DEPLOYMENT_PENALTY: i64 = 1_000_000;

/// Bonus of a node in a preferred country or site: more than any packing difference, less than
/// one replica of spreading, so preferences pick among equally spread choices.
const PREFERRED_BONUS: i64 = 500_000;

/// `replicas_here`: replicas of the same deployment already in this node's spread domain. Without
/// spreading every node shares one domain, so the term shifts all scores alike and packing
/// decides.
pub fn score(free: &Free, r: &Resources, replicas_here: u32, preferred: bool) -> i64 {
    let packing = if r.gpu_count > 0 {
        // Fewer GPUs left free after placing = better packed.
        -((free.gpus.len() as i64 - r.gpu_count as i64) * 1_000)
    } else {
        -(i64::from(free.cpu_millis.saturating_sub(r.cpu_millis)) / 1_000)
    };
    packing - i64::from(replicas_here) * SAME_DEPLOYMENT_PENALTY
        + if preferred { PREFERRED_BONUS } else { 0 }
}
