//! What this node has to offer: CPU and memory measured with sysinfo, GPUs found through NVML,
//! and (dev/test fleets only) GPUs declared in the configuration.
//!
//! NVML is loaded at run time (nvml-wrapper opens `libnvidia-ml.so` with libloading), so one
//! agent binary runs on GPU and CPU-only hosts alike: without the driver, initialisation fails,
//! the agent says so once, and reports no real GPUs. A [`Fingerprinter`] keeps the NVML handle
//! and the sysinfo state between calls because the agent re-fingerprints periodically and on
//! SIGHUP; opening NVML every time would cost a driver round trip per call for nothing.
//!
//! Problems are reported when they appear, change or clear, not on every re-fingerprint: a
//! GPU that fell off the bus should produce one warning, not one a minute forever.

use std::collections::BTreeMap;

use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;
use sov_scheduler::state::node::{Gpu, Inventory};
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, System};
use tracing::{info, warn};

use crate::config::{AgentConfig, ResourceOverrides, simulated_gpu_list};

/// NVML's `NVML_DEVICE_MIG_ENABLE`: the value of `MigMode::current` when MIG is on. nvml-wrapper
/// does not re-export the constant.
const NVML_DEVICE_MIG_ENABLE: u32 = 1;

const BYTES_PER_MIB: u64 = 1024 * 1024;

/// Measures the node's inventory; keep one for the life of the agent.
pub struct Fingerprinter {
    /// `None` when NVML could not be initialised (no driver) or was not asked for.
    nvml: Option<Nvml>,
    system: System,
    resources: ResourceOverrides,
    /// Declared GPUs with indexes counted from 0; re-indexed after the real ones each time.
    simulated: Vec<Gpu>,
    /// Problem subject ("GPU 3", "driver version") -> last message, so each is logged once.
    problems: BTreeMap<String, String>,
    /// Real and simulated GPUs together is almost always a configuration copied from a test
    /// fleet; warn about it once, not on every re-fingerprint.
    warned_mixed: bool,
}

impl Fingerprinter {
    /// Opens NVML if the driver is installed (logging one line if it is not) and announces
    /// any simulated GPUs.
    pub fn new(cfg: &AgentConfig) -> Fingerprinter {
        let nvml = match Nvml::init() {
            Ok(nvml) => Some(nvml),
            Err(e) => {
                info!("no NVIDIA driver found (NVML: {e}); reporting 0 GPUs");
                None
            }
        };
        Self::with_nvml(cfg, nvml)
    }

    /// Reports only declared (simulated) GPUs and never touches NVML: for the fleet simulator,
    /// which runs many simulated nodes on one machine that may well have real GPUs of its own,
    /// and for tests that must not depend on the host.
    pub fn simulated_only(cfg: &AgentConfig) -> Fingerprinter {
        Self::with_nvml(cfg, None)
    }

    fn with_nvml(cfg: &AgentConfig, nvml: Option<Nvml>) -> Fingerprinter {
        let simulated = simulated_gpu_list(&cfg.name, &cfg.simulated_gpus, 0);
        if !simulated.is_empty() {
            warn!(
                node = %cfg.name,
                "node reports {} SIMULATED GPUs from its configuration; they do not exist, and \
                 model servers placed on them get no GPU",
                simulated.len()
            );
        }
        Fingerprinter {
            nvml,
            system: System::new(),
            resources: cfg.resources,
            simulated,
            problems: BTreeMap::new(),
            warned_mixed: false,
        }
    }

    /// Whether real GPUs are being looked for (NVML initialised).
    pub fn has_nvml(&self) -> bool {
        self.nvml.is_some()
    }

    /// Measures the node now. Never fails: whatever cannot be measured is logged and left out,
    /// because a node with one broken GPU should still offer its others.
    pub fn fingerprint(&mut self) -> Inventory {
        self.system.refresh_cpu_list(CpuRefreshKind::nothing());
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let cpu_count = u32::try_from(self.system.cpus().len()).unwrap_or(u32::MAX);
        let measured_cpu_millis = cpu_count.saturating_mul(1_000);
        let measured_memory_mib = self.system.total_memory() / BYTES_PER_MIB;

        let mut gpus = self.real_gpus();
        if !gpus.is_empty() && !self.simulated.is_empty() && !self.warned_mixed {
            warn!(
                "node has {} real GPUs and declares {} simulated ones; both are reported, but \
                 simulated GPUs belong on dev/test nodes only",
                gpus.len(),
                self.simulated.len()
            );
            self.warned_mixed = true;
        }
        // After the real GPUs, so indexes are unique in the inventory; UUIDs, which allocations
        // are bound to, do not depend on the index.
        let first_simulated = u32::try_from(gpus.len()).unwrap_or(u32::MAX);
        gpus.extend(self.simulated.iter().zip(0u32..).map(|(gpu, ordinal)| Gpu {
            index: first_simulated.saturating_add(ordinal),
            ..gpu.clone()
        }));

        Inventory {
            cpu_millis: self.resources.cpu_millis.unwrap_or(measured_cpu_millis),
            memory_mib: self.resources.memory_mib.unwrap_or(measured_memory_mib),
            gpus,
            port_first: self.resources.ports().0,
            port_last: self.resources.ports().1,
        }
    }

    fn real_gpus(&mut self) -> Vec<Gpu> {
        let Some(nvml) = &self.nvml else {
            return Vec::new();
        };
        let mut found = Vec::new();
        let mut problems = Vec::new();
        let driver_version = match nvml.sys_driver_version() {
            Ok(version) => version,
            Err(e) => {
                problems.push(("driver version".to_owned(), e.to_string()));
                "unknown".to_owned()
            }
        };
        match nvml.device_count() {
            Ok(count) => {
                for index in 0..count {
                    match read_device(nvml, index, &driver_version) {
                        Ok(gpu) => found.push(gpu),
                        Err(e) => problems.push((format!("GPU {index}"), e)),
                    }
                }
            }
            Err(e) => problems.push(("GPU count".to_owned(), e.to_string())),
        }
        self.report_problems(problems);
        found
    }

    /// Logs problems that are new or changed since the last fingerprint, and the ones that went
    /// away; everything else was already said.
    fn report_problems(&mut self, current: Vec<(String, String)>) {
        let current: BTreeMap<String, String> = current.into_iter().collect();
        for (subject, message) in &current {
            if self.problems.get(subject) != Some(message) {
                warn!(
                    "cannot read {subject} through NVML ({message}); leaving it out of the inventory"
                );
            }
        }
        for subject in self.problems.keys() {
            if !current.contains_key(subject) {
                info!("{subject} can be read through NVML again");
            }
        }
        self.problems = current;
    }
}

/// One device as the scheduler sees it. Any error skips the whole device: a GPU reported with
/// a wrong model, memory or MIG mode could be given work it cannot run.
fn read_device(nvml: &Nvml, index: u32, driver_version: &str) -> Result<Gpu, String> {
    let device = nvml
        .device_by_index(index)
        .map_err(|e| format!("opening it: {e}"))?;
    let uuid = device.uuid().map_err(|e| format!("its UUID: {e}"))?;
    let model = device.name().map_err(|e| format!("its name: {e}"))?;
    let memory = device
        .memory_info()
        .map_err(|e| format!("its memory: {e}"))?;
    let mig_enabled = match device.mig_mode() {
        Ok(mode) => mode.current == NVML_DEVICE_MIG_ENABLE,
        // GPUs before Ampere have no MIG at all.
        Err(NvmlError::NotSupported) => false,
        Err(e) => return Err(format!("its MIG mode: {e}")),
    };
    Ok(Gpu {
        index,
        uuid,
        model,
        memory_mib: memory.total / BYTES_PER_MIB,
        mig_enabled,
        driver_version: driver_version.to_owned(),
        simulated: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SimulatedGpus;

    fn config() -> AgentConfig {
        let text = r#"
name = "sim-1"
schedulers = ["http://127.0.0.1:7400"]
data_dir = "/tmp/sov-agent-test"

[location]
country = "FR"
site = "par-1"
operator = "Example Cloud SAS"
operator_hq = "FR"
ultimate_parent_hq = "FR"

[[simulated_gpus]]
model = "NVIDIA H100 80GB HBM3"
memory_mib = 81920
count = 2

[[simulated_gpus]]
model = "NVIDIA L4"
memory_mib = 23034
"#;
        AgentConfig::from_toml_str(text, "test.toml").expect("valid test config")
    }

    #[test]
    fn measures_the_host_and_flags_simulated_gpus() {
        let cfg = config();
        let mut fingerprinter = Fingerprinter::new(&cfg);
        let inventory = fingerprinter.fingerprint();
        assert!(inventory.cpu_millis >= 1_000, "{inventory:?}");
        assert_eq!(inventory.cpu_millis % 1_000, 0);
        assert!(inventory.memory_mib > 0, "{inventory:?}");

        let simulated: Vec<&Gpu> = inventory.gpus.iter().filter(|g| g.simulated).collect();
        assert_eq!(simulated.len(), 3);
        assert_eq!(simulated[0].uuid, "GPU-sim-sim-1-0");
        assert_eq!(simulated[0].model, "NVIDIA H100 80GB HBM3");
        assert_eq!(simulated[0].memory_mib, 81_920);
        assert_eq!(simulated[2].uuid, "GPU-sim-sim-1-2");
        assert_eq!(simulated[2].model, "NVIDIA L4");
        assert!(simulated.iter().all(|g| g.driver_version == "simulated"));

        // Indexes are unique across real and simulated GPUs alike.
        let mut indexes: Vec<u32> = inventory.gpus.iter().map(|g| g.index).collect();
        indexes.sort_unstable();
        indexes.dedup();
        assert_eq!(indexes.len(), inventory.gpus.len());

        sov_scheduler::state::validate_node(&cfg.name, &cfg.facts(), &inventory)
            .expect("the scheduler accepts what the agent reports");
    }

    #[test]
    fn simulated_only_reports_no_real_gpus() {
        let mut fingerprinter = Fingerprinter::simulated_only(&config());
        assert!(!fingerprinter.has_nvml());
        let inventory = fingerprinter.fingerprint();
        assert_eq!(inventory.gpus.len(), 3);
        assert!(inventory.gpus.iter().all(|g| g.simulated));
        let indexes: Vec<u32> = inventory.gpus.iter().map(|g| g.index).collect();
        assert_eq!(indexes, [0, 1, 2]);
    }

    #[test]
    fn resource_overrides_replace_measurements() {
        let mut cfg = config();
        cfg.resources = ResourceOverrides {
            cpu_millis: Some(2_500),
            memory_mib: Some(4_096),
            port_first: Some(21_000),
            port_last: Some(21_099),
        };
        let inventory = Fingerprinter::simulated_only(&cfg).fingerprint();
        assert_eq!(inventory.cpu_millis, 2_500);
        assert_eq!(inventory.memory_mib, 4_096);
        assert_eq!(
            (inventory.port_first, inventory.port_last),
            (21_000, 21_099)
        );

        cfg.resources.memory_mib = None;
        let inventory = Fingerprinter::simulated_only(&cfg).fingerprint();
        assert_eq!(inventory.cpu_millis, 2_500);
        assert!(inventory.memory_mib > 0);

        // Unset, the range is left to the scheduler's default.
        let inventory = Fingerprinter::simulated_only(&config()).fingerprint();
        assert_eq!((inventory.port_first, inventory.port_last), (0, 0));
    }

    #[test]
    fn simulated_uuids_are_stable_across_calls_and_restarts() {
        let cfg = config();
        let mut fingerprinter = Fingerprinter::new(&cfg);
        let first = fingerprinter.fingerprint();
        let second = fingerprinter.fingerprint();
        let restarted = Fingerprinter::new(&cfg).fingerprint();
        let uuids = |inventory: &Inventory| -> Vec<String> {
            inventory.gpus.iter().map(|g| g.uuid.clone()).collect()
        };
        assert_eq!(uuids(&first), uuids(&second));
        assert_eq!(uuids(&first), uuids(&restarted));
    }

    #[test]
    fn nodes_with_the_same_layout_get_distinct_uuids() {
        let mut other = config();
        other.name = "sim-2".to_owned();
        other.simulated_gpus = vec![SimulatedGpus {
            model: "NVIDIA H100 80GB HBM3".to_owned(),
            memory_mib: 81_920,
            count: 1,
        }];
        let a = Fingerprinter::simulated_only(&config()).fingerprint();
        let b = Fingerprinter::simulated_only(&other).fingerprint();
        assert_ne!(a.gpus[0].uuid, b.gpus[0].uuid);
    }

    /// Runs where an NVIDIA driver is installed; elsewhere says it was skipped.
    #[test]
    fn real_gpus_are_complete_when_a_driver_is_present() {
        if let Err(e) = Nvml::init() {
            eprintln!("skipped: no NVIDIA driver (NVML: {e})");
            return;
        }
        let mut cfg = config();
        cfg.simulated_gpus.clear();
        let mut fingerprinter = Fingerprinter::new(&cfg);
        assert!(fingerprinter.has_nvml());
        let inventory = fingerprinter.fingerprint();
        eprintln!("real GPUs: {:#?}", inventory.gpus);
        for gpu in &inventory.gpus {
            assert!(!gpu.simulated);
            assert!(!gpu.uuid.is_empty(), "{gpu:?}");
            assert!(!gpu.model.is_empty(), "{gpu:?}");
            assert!(gpu.memory_mib > 0, "{gpu:?}");
            assert!(!gpu.driver_version.is_empty(), "{gpu:?}");
        }
        sov_scheduler::state::validate_node(&cfg.name, &cfg.facts(), &inventory)
            .expect("the scheduler accepts what the agent reports");
    }
}
