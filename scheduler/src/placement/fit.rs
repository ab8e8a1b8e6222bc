//! Fit: a node's free capacity and whether one replica's resources fit in it.
//!
//! Free capacity = inventory minus what every allocation that should run on the node reserves.
//! A replica fits when enough GPUs of the requested model, each with enough memory, plus CPU,
//! memory and a port are free. Every shortfall is reported, not just the first.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::state::node::{Gpu, Node};
use crate::state::{Allocation, Desired, Resources};

/// Ports handed to model servers on a node that declares no range of its own, lowest free first.
pub const PORT_FIRST: u16 = 20_000;
pub const PORT_LAST: u16 = 20_999;

/// What is still free on one node (borrowing the node's GPUs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Free<'n> {
    pub cpu_millis: u32,
    pub memory_mib: u64,
    /// Unallocated GPUs, in inventory order.
    pub gpus: Vec<&'n Gpu>,
    pub ports_used: BTreeSet<u16>,
    /// The node's port range for model servers (inclusive).
    pub port_first: u16,
    pub port_last: u16,
    /// Ports of the range not in `ports_used`, kept by [`Free::charge`] so [`Free::fits`]
    /// needs no search.
    pub ports_free: u32,
    /// Every GPU of the node has the same model and memory (the usual case), so one GPU
    /// answers for all in [`Free::fits`]; charging removes GPUs and keeps it true.
    pub uniform_gpus: bool,
}

impl<'n> Free<'n> {
    pub fn of<'a>(node: &'n Node, allocations: impl IntoIterator<Item = &'a Allocation>) -> Self {
        let (port_first, port_last) = node.inventory.port_range();
        let mut free = Free {
            cpu_millis: node.inventory.cpu_millis,
            memory_mib: node.inventory.memory_mib,
            gpus: node.inventory.gpus.iter().collect(),
            ports_used: BTreeSet::new(),
            port_first,
            port_last,
            ports_free: (u32::from(port_last) + 1).saturating_sub(u32::from(port_first)),
            uniform_gpus: node
                .inventory
                .gpus
                .windows(2)
                .all(|w| w[0].model == w[1].model && w[0].memory_mib == w[1].memory_mib),
        };
        for a in allocations {
            if a.node == node.name && a.desired == Desired::Run {
                free.charge(&a.gpu_uuids, a.cpu_millis, a.memory_mib, a.port);
            }
        }
        free
    }

    /// Removes a reservation from the free capacity. Saturates: an over-committed node (which
    /// apply never produces) shows zero free, never wraps around.
    pub fn charge(&mut self, gpu_uuids: &[String], cpu_millis: u32, memory_mib: u64, port: u16) {
        self.cpu_millis = self.cpu_millis.saturating_sub(cpu_millis);
        self.memory_mib = self.memory_mib.saturating_sub(memory_mib);
        if !gpu_uuids.is_empty() {
            self.gpus.retain(|g| !gpu_uuids.contains(&g.uuid));
        }
        if self.ports_used.insert(port) && (self.port_first..=self.port_last).contains(&port) {
            self.ports_free -= 1;
        }
    }

    /// Whether one replica needing `r` fits: exactly when [`fit`] succeeds, without building
    /// the reservation or the shortfalls. The planner's inner loop runs this for every node
    /// the policy permits, so it allocates nothing.
    pub fn fits(&self, r: &Resources) -> bool {
        if r.cpu_millis > self.cpu_millis || r.memory_mib > self.memory_mib || self.ports_free == 0
        {
            return false;
        }
        let need = r.gpu_count as usize;
        if need == 0 {
            return true;
        }
        if self.gpus.len() < need {
            return false;
        }
        if self.uniform_gpus {
            return suitable(self.gpus[0], r);
        }
        self.gpus
            .iter()
            .filter(|g| suitable(g, r))
            .take(need)
            .count()
            == need
    }
}

/// A free GPU of the requested model (any, when none is named) with enough memory.
fn suitable(g: &Gpu, r: &Resources) -> bool {
    (r.gpu_model.is_empty() || g.model == r.gpu_model) && g.memory_mib >= r.gpu_memory_mib
}

/// Why one replica does not fit on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shortfall {
    GpuCount {
        need: u32,
        free: u32,
    },
    GpuModel {
        need: String,
    },
    GpuMemory {
        need_mib: u64,
        largest_free_mib: u64,
    },
    Cpu {
        need_millis: u32,
        free_millis: u32,
    },
    Memory {
        need_mib: u64,
        free_mib: u64,
    },
    Ports {
        first: u16,
        last: u16,
    },
}

fn gib(mib: u64) -> String {
    if mib.is_multiple_of(1024) {
        format!("{} GiB", mib / 1024)
    } else {
        format!("{mib} MiB")
    }
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shortfall::GpuCount { need, free } => {
                write!(f, "insufficient GPUs (need {need}, {free} free)")
            }
            Shortfall::GpuModel { need } => write!(f, "no free GPU of model {need:?}"),
            Shortfall::GpuMemory {
                need_mib,
                largest_free_mib,
            } => write!(
                f,
                "insufficient GPU memory (need {} per GPU, largest free {})",
                gib(*need_mib),
                gib(*largest_free_mib)
            ),
            Shortfall::Cpu {
                need_millis,
                free_millis,
            } => {
                write!(
                    f,
                    "insufficient CPU (need {need_millis}m, {free_millis}m free)"
                )
            }
            Shortfall::Memory { need_mib, free_mib } => {
                write!(
                    f,
                    "insufficient memory (need {}, {} free)",
                    gib(*need_mib),
                    gib(*free_mib)
                )
            }
            Shortfall::Ports { first, last } => write!(f, "no free port in {first}-{last}"),
        }
    }
}

/// CPU and memory a replica needs beyond what is free; shared by planning and re-checking.
fn cpu_memory_shortfalls(free: &Free, r: &Resources) -> impl Iterator<Item = Shortfall> {
    let cpu = (r.cpu_millis > free.cpu_millis).then_some(Shortfall::Cpu {
        need_millis: r.cpu_millis,
        free_millis: free.cpu_millis,
    });
    let memory = (r.memory_mib > free.memory_mib).then_some(Shortfall::Memory {
        need_mib: r.memory_mib,
        free_mib: free.memory_mib,
    });
    cpu.into_iter().chain(memory)
}

/// The concrete resources one replica would take on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub gpu_uuids: Vec<String>,
    pub port: u16,
}

/// Fits one replica needing `r` into `free`, or lists every shortfall.
pub fn fit(free: &Free, r: &Resources) -> Result<Reservation, Vec<Shortfall>> {
    let mut short = Vec::new();
    let need = r.gpu_count as usize;
    let mut gpu_uuids = Vec::new();
    if need > 0 {
        let of_model: Vec<&Gpu> = free
            .gpus
            .iter()
            .copied()
            .filter(|g| r.gpu_model.is_empty() || g.model == r.gpu_model)
            .collect();
        let usable: Vec<&Gpu> = of_model
            .iter()
            .copied()
            .filter(|g| g.memory_mib >= r.gpu_memory_mib)
            .collect();
        if usable.len() >= need {
            gpu_uuids = usable[..need].iter().map(|g| g.uuid.clone()).collect();
        } else if !r.gpu_model.is_empty() && of_model.is_empty() && !free.gpus.is_empty() {
            short.push(Shortfall::GpuModel {
                need: r.gpu_model.clone(),
            });
        } else if of_model.len() >= need {
            let largest_free_mib = of_model.iter().map(|g| g.memory_mib).max().unwrap_or(0);
            short.push(Shortfall::GpuMemory {
                need_mib: r.gpu_memory_mib,
                largest_free_mib,
            });
        } else {
            short.push(Shortfall::GpuCount {
                need: r.gpu_count,
                free: of_model.len() as u32,
            });
        }
    }
    short.extend(cpu_memory_shortfalls(free, r));
    let port = (free.port_first..=free.port_last).find(|p| !free.ports_used.contains(p));
    if port.is_none() {
        short.push(Shortfall::Ports {
            first: free.port_first,
            last: free.port_last,
        });
    }
    match (short.is_empty(), port) {
        (true, Some(port)) => Ok(Reservation { gpu_uuids, port }),
        _ => Err(short),
    }
}

/// Checks that a reservation chosen by a planner still fits `free` exactly as chosen: the same
/// GPUs are free and suitable, CPU and memory fit, the port is free. Apply uses this to re-check
/// a plan made against an older state.
pub fn verify(
    free: &Free,
    r: &Resources,
    gpu_uuids: &[String],
    port: u16,
) -> Result<(), Vec<Shortfall>> {
    let mut short = Vec::new();
    let all_suitable = gpu_uuids
        .iter()
        .all(|uuid| free.gpus.iter().any(|g| &g.uuid == uuid && suitable(g, r)));
    let mut distinct = gpu_uuids.to_vec();
    distinct.sort();
    distinct.dedup();
    if gpu_uuids.len() != r.gpu_count as usize || distinct.len() != gpu_uuids.len() || !all_suitable
    {
        let free_suitable = free.gpus.iter().filter(|g| suitable(g, r)).count();
        short.push(Shortfall::GpuCount {
            need: r.gpu_count,
            free: free_suitable as u32,
        });
    }
    short.extend(cpu_memory_shortfalls(free, r));
    if !(free.port_first..=free.port_last).contains(&port) || free.ports_used.contains(&port) {
        short.push(Shortfall::Ports {
            first: free.port_first,
            last: free.port_last,
        });
    }
    if short.is_empty() { Ok(()) } else { Err(short) }
}
