//! The kernel side as the agent sees it: load the embedded eBPF object, pin its maps,
//! configure and attach the programs; detach and unpin on drop.
//!
//! Programs are attached with TCX links owned by this process, not pinned: when the agent
//! exits, however it exits, the kernel detaches them, so no program ever outlives its agent.

use std::{
    fs, io,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, MapInfo, MapType, RingBuf},
    programs::{SchedClassifier, TcAttachType},
};
use ipop_common::maps::{self as m, ArpEntry, ArpKey, NdKey};
use tracing::{info, warn};

use crate::kernel::tables::Neighbours;

/// The eBPF object built by build.rs from ipop-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ipop"));

/// Where agents pin their maps unless told otherwise: one directory per bridge.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/ipop";

/// The pin directory an agent on `bridge` uses unless told otherwise.
pub fn default_pin_dir(bridge: &str) -> PathBuf {
    PathBuf::from(DEFAULT_PIN_ROOT).join(bridge)
}

/// The program at the TAP's egress (what the bridge sends toward the overlay).
pub const PROG_TAP_EGRESS: &str = "tap_egress";
/// The program at the bridge device's ingress (broadcasts reaching the host).
pub const PROG_BRIDGE_INGRESS: &str = "bridge_ingress";

/// Loads the programs without attaching or pinning anything (for BPF_PROG_TEST_RUN tests).
pub fn load_unpinned() -> Result<Ebpf> {
    EbpfLoader::new().load(EBPF_OBJECT).context("loading the eBPF object")
}

/// Loads `name` into the kernel (verifier included) and returns it.
pub fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    let prog: &mut SchedClassifier =
        ebpf.program_mut(name).with_context(|| format!("program {name} missing from the eBPF object"))?.try_into()?;
    if prog.fd().is_err() {
        prog.load().with_context(|| format!("loading program {name} (verifier)"))?;
    }
    Ok(prog)
}

/// A pin directory: the maps pinned in it, and the directories that were missing for it.
/// Dropping it removes both, leaving bpffs as it was before the agent started.
#[derive(Debug)]
pub struct PinDir {
    dir: PathBuf,
    created: Vec<PathBuf>,
}

impl PinDir {
    /// Creates `dir` (and missing parents), removing what a dead agent left in it except a
    /// compatible `arp_table` and `nd_table`, which are taken back so their entries survive
    /// a crash.
    /// The caller holds the pin directory's lock, so whoever pinned these is gone.
    pub fn prepare(dir: &Path) -> Result<Self> {
        let mut missing: Vec<PathBuf> = dir.ancestors().take_while(|p| !p.exists()).map(Path::to_owned).collect();
        missing.reverse();
        let pins = PinDir { dir: dir.to_owned(), created: missing };
        for d in &pins.created {
            // 0700: only root reaches the maps through their pins (each pin is 0600 too).
            match fs::DirBuilder::new().mode(0o700).create(d) {
                Ok(()) => {}
                // Another agent made it since we looked (agents started together under one
                // new parent): it is there. Whoever leaves last removes it (only when empty).
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("creating pin directory {}", d.display())),
            }
        }
        for name in m::PINNED {
            let path = dir.join(name);
            if !path.exists() {
                continue;
            }
            if table_compatible(name, &path) {
                info!(path = %path.display(), "taking back the neighbour table of a previous agent");
                continue;
            }
            warn!(path = %path.display(), "removing a pin left by a previous agent");
            fs::remove_file(&path).with_context(|| format!("removing stale pin {}", path.display()))?;
        }
        Ok(pins)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Whether the pin `name` at `path` is a neighbour table this agent can take back as is.
fn table_compatible(name: &str, path: &Path) -> bool {
    let (key_size, max_entries) = match name {
        m::ARP_TABLE => (size_of::<ArpKey>(), m::ARP_TABLE_SIZE),
        m::ND_TABLE => (size_of::<NdKey>(), m::ND_TABLE_SIZE),
        _ => return false,
    };
    MapInfo::from_pin(path).is_ok_and(|info| {
        matches!(info.map_type(), Ok(MapType::Hash))
            && info.key_size() as usize == key_size
            && info.value_size() as usize == size_of::<ArpEntry>()
            && info.max_entries() == max_entries
    })
}

impl Drop for PinDir {
    fn drop(&mut self) {
        for name in m::PINNED {
            match fs::remove_file(self.dir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warn!(pin = name, error = %e, "could not remove pin"),
            }
        }
        // The pin directory is ours (we hold its lock), and so are the directories we made
        // and ipop's own root; each is removed only if empty, never with someone else's files.
        let _ = fs::remove_dir(&self.dir);
        for d in self.created.iter().rev() {
            let _ = fs::remove_dir(d);
        }
        let root = Path::new(DEFAULT_PIN_ROOT);
        if self.dir.starts_with(root) {
            let _ = fs::remove_dir(root);
        }
    }
}

/// The loaded programs and pinned maps of one agent.
pub struct Datapath {
    // Field order is drop order: programs detach and maps close before the pins go.
    ebpf: Ebpf,
    pins: PinDir,
}

impl Datapath {
    /// Loads the object with its maps pinned in `pin_dir` (verifier included).
    pub fn load(pin_dir: &Path) -> Result<Self> {
        let pins = PinDir::prepare(pin_dir)?;
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&str, PathBuf)> = m::PINNED.iter().map(|n| (*n, pins.path(n))).collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let level = kernel_log_level();
        loader.override_global("AYA_LOG_LEVEL", &level, false);
        let mut ebpf = loader.load(EBPF_OBJECT).context("loading the eBPF object")?;
        for name in [PROG_TAP_EGRESS, PROG_BRIDGE_INGRESS] {
            program(&mut ebpf, name)?;
        }
        Ok(Self { ebpf, pins })
    }

    /// Writes the single `config` entry the programs read.
    pub fn configure(&mut self, config: m::Config) -> Result<()> {
        let map = self.ebpf.map_mut(m::CONFIG).context("config map missing")?;
        let mut array: Array<_, m::Config> = Array::try_from(map)?;
        array.set(0, config, 0).context("writing the config map")?;
        Ok(())
    }

    /// Attaches the programs: `tap_egress` to the TAP, `bridge_ingress` to the bridge.
    pub fn attach(&mut self, bridge: &str, tap: &str) -> Result<()> {
        for (name, iface, hook) in
            [(PROG_TAP_EGRESS, tap, TcAttachType::Egress), (PROG_BRIDGE_INGRESS, bridge, TcAttachType::Ingress)]
        {
            program(&mut self.ebpf, name)?
                .attach(iface, hook)
                .with_context(|| format!("attaching {name} to {iface} {hook:?}"))?;
        }
        Ok(())
    }

    /// The `arp_events` ring buffer, for the agent's reader.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map(m::ARP_EVENTS).context("arp_events map missing")?;
        RingBuf::try_from(map).map_err(|e| anyhow!(e))
    }

    /// `arp_table` and `nd_table`, for the agent to install and remove learned entries.
    pub fn take_tables(&mut self) -> Result<Neighbours> {
        let arp = self.ebpf.take_map(m::ARP_TABLE).context("arp_table map missing")?;
        let nd = self.ebpf.take_map(m::ND_TABLE).context("nd_table map missing")?;
        Ok(Neighbours::new(aya::maps::HashMap::try_from(arp)?, aya::maps::HashMap::try_from(nd)?))
    }

    /// The reader of the programs' aya-log messages.
    pub fn take_logger(&mut self) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).context("initialising the eBPF logger")
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pins.dir
    }
}

/// The aya-log level to filter at in the kernel: what the agent's log would print anyway,
/// so busy programs do not format messages nobody reads.
fn kernel_log_level() -> u8 {
    use tracing::level_filters::LevelFilter;
    // aya_log_common::Level: Error = 1 .. Trace = 5.
    match LevelFilter::current() {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => 1,
        LevelFilter::WARN => 2,
        LevelFilter::INFO => 3,
        LevelFilter::DEBUG => 4,
        _ => 5,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;

    /// Agents started together under one new parent: each sees the parent missing, and all
    /// but one find it made when they create it. Threads released by a barrier make that
    /// race likely in every round (plain files stand in for bpffs: `prepare` only makes
    /// directories and removes stale pins).
    #[test]
    fn pin_dirs_made_at_once_under_one_new_parent_all_succeed() {
        let root = std::env::temp_dir().join(format!("ipop-pin-race-{}", std::process::id()));
        for round in 0..50 {
            let parent = root.join(format!("r{round}")).join("x");
            let barrier = Arc::new(Barrier::new(8));
            let made: Vec<_> = (0..8)
                .map(|i| {
                    let (dir, barrier) = (parent.join(format!("h{i}")), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        PinDir::prepare(&dir).map_err(|e| format!("{e:#}"))
                    })
                })
                .collect();
            let pins: Vec<PinDir> = made.into_iter().map(|t| t.join().unwrap().unwrap()).collect();
            assert!(pins.iter().all(|p| p.dir.is_dir()));
            drop(pins);
            for i in 0..8 {
                assert!(!parent.join(format!("h{i}")).exists(), "each removed its own");
            }
        }
        let _ = fs::remove_dir_all(&root);
    }
}
