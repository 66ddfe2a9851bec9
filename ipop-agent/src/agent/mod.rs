//! The async shell around the switch: sets up the devices and the datapath (`setup`), feeds
//! the core with ring buffer events, frames, RPCs, link changes and the time (`shell`,
//! `events`), carries out its outputs (`outputs`), and tears everything down on
//! SIGINT/SIGTERM or on any error.

mod events;
mod outputs;
pub mod reload;
mod setup;
mod shell;

pub use reload::Reload;

use std::{io, os::fd::AsRawFd, sync::Arc, time::Duration};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{MapData, RingBuf};
use ipop_common::maps::{ArpEvent, NdEvent};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{debug, info, warn};

use crate::{
    agent::shell::Shell,
    config::AgentConfig,
    core::{
        chunk,
        switch::{Output, Switch},
    },
    kernel::{
        datapath::Datapath,
        maps::monotonic_ns,
        netif::{Link, Netlink},
        preflight,
        tables::Neighbours,
        tap::Tap,
    },
    link::{event::LinkEvent, receive::Reader},
    ops::{lock, notify},
    signaling::SignalEvent,
};

/// How often the shell checks its devices and ages the core's tables.
const TICK: Duration = Duration::from_secs(2);
/// How long learned entries left by a crashed agent stay answered while their peers' links
/// come back (they take a few seconds; a link attempt times out after 20 s).
const ORPHAN_GRACE: Duration = Duration::from_secs(30);
/// Frames read from the TAP per wake-up before other work gets a turn.
const TAP_BATCH: usize = 64;
/// Link events (mostly frames from peers) taken per wake-up before other work gets a turn.
const LINK_BATCH: usize = 64;

/// How late the kernel may wake this thread for a timer. Every link's ICE agent wakes on its
/// own 200 ms timer (webrtc-ice's floor, whatever its keepalive): with this slack the kernel
/// folds those wakeups together, as systemd's `TimerSlackNSec=` does. Frames, datagrams and
/// signals wake the loop through their fds, which slack does not delay.
const TIMER_SLACK: Duration = Duration::from_millis(20);

/// Lets the kernel coalesce this thread's timer wakeups (`TIMER_SLACK`); the runtime's
/// thread must be this one. A kernel that refuses only costs wakeups.
pub fn coalesce_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes a value and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, TIMER_SLACK.as_nanos() as libc::c_ulong, 0, 0, 0) } != 0 {
        debug!("PR_SET_TIMERSLACK: {}", io::Error::last_os_error());
    }
}

/// glibc's default threshold above which an allocation is its own mapping (128 KiB).
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Keeps glibc's mmap threshold where it starts. glibc raises it to the size of any mapped
/// block that is freed, so the one large allocation at start (argon2's 7 MiB, stretching the
/// secret) would send every later buffer up to that size to the heap, where freed memory stays:
/// measured, +4.5 MiB of peak RSS under TCP load, for nothing. Setting it turns that off.
pub fn fix_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt sets an allocator parameter and touches no memory of ours.
    if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) } != 1 {
        debug!("mallopt(M_MMAP_THRESHOLD) refused");
    }
}

/// One record of `arp_events`: ARP and ND events share the ring, told apart by length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelEvent {
    Arp(ArpEvent),
    Nd(NdEvent),
}

/// Decodes one ring buffer record; `None` if it is no whole event.
pub fn parse_event(bytes: &[u8]) -> Option<KernelEvent> {
    // SAFETY (both reads): the length is checked and both are plain old data; the reads are
    // unaligned.
    match bytes.len() {
        n if n == size_of::<ArpEvent>() => {
            Some(KernelEvent::Arp(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<ArpEvent>()) }))
        }
        n if n == size_of::<NdEvent>() => {
            Some(KernelEvent::Nd(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<NdEvent>()) }))
        }
        _ => None,
    }
}

/// Registers an fd-owning object with the tokio reactor for readability.
fn watch<T: AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its fd (a map, a TAP) and keeps it open until the AsyncFd, which
    // owns `inner`, is dropped.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }.map_err(io::Error::from)
}

/// Runs the agent until SIGINT or SIGTERM (SIGHUP: `reload`). Everything it attached or
/// created is removed when this returns, whether it returns `Ok` or an error.
pub async fn run(cfg: AgentConfig, reload: Reload) -> Result<()> {
    preflight::check_privileges()?;
    preflight::check_bpffs(&cfg.pin_dir)?;
    // Before anything is made: a node key that cannot be read or kept, or a turns: server's
    // roots that cannot be read, stop the start.
    let joining = setup::joining(&cfg)?;
    let nl = Netlink::connect()?;
    let bridge = nl.bridge(&cfg.bridge).await?;
    let _lock = lock::acquire(&cfg.bridge, bridge.index, &cfg.pin_dir)?;
    setup::check_tap_free(&nl, &cfg).await?;
    if !bridge.up {
        warn!(bridge = %cfg.bridge, "the bridge is down: nothing will flow until it is up");
    }
    let mut datapath = Datapath::load(&cfg.pin_dir)?;
    let (tap, tap_link) = setup::tap(&nl, &cfg, &bridge, &mut datapath).await?;
    let switch = setup::switch(&nl, &cfg, &bridge).await?;
    let devices = Devices { nl, cfg: &cfg, bridge, tap: tap_link };
    let result = serve(&devices, &mut datapath, tap, switch, joining, &reload).await;
    finish(result, datapath)
}

/// The devices the agent watches while it runs.
struct Devices<'a> {
    nl: Netlink,
    cfg: &'a AgentConfig,
    bridge: Link,
    tap: Link,
}

/// Joins the overlay and runs the loop until a signal or an error; drops what it made.
async fn serve(
    dev: &Devices<'_>,
    datapath: &mut Datapath,
    tap: Tap,
    mut switch: Switch,
    joining: Option<setup::Joining>,
    reload: &Reload,
) -> Result<()> {
    let cfg = dev.cfg;
    let mut events = watch(datapath.take_events()?)?;
    let mut logger = watch(datapath.take_logger()?)?;
    let mut tables = datapath.take_tables()?;
    let removals = restore_orphans(&mut tables, &mut switch, cfg);
    let (link_tx, mut link_rx) = mpsc::channel::<LinkEvent>(8192);
    let overlay = setup::overlay(cfg, joining, link_tx)?;
    let (peers, mut signals, mut reader) = match overlay {
        Some(o) => (Some(o.peers), Some(o.signals), o.reader),
        None => (None, None, None),
    };
    let tap = Arc::new(watch(tap)?);
    let mut shell = Shell::new(switch, tables, tap.clone(), peers);
    shell.apply(removals);

    let (control, http, mut queries) = setup::operations(cfg).await?;
    let mut live = cfg.clone();
    let mut about = setup::about(&live);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(TICK);
    let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);
    let mut revocations = setup::RevocationFile::new(cfg);
    let mut frame = vec![0u8; chunk::MAX_WHOLE];

    info!(bridge = %cfg.bridge, tap = %cfg.tap, pin_dir = %datapath.pin_dir().display(), "ipop-agent ready");
    notify::ready("running");
    let result: Result<()> = loop {
        tokio::select! {
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
            _ = sighup.recv() => {
                reload::reload(&mut shell, &mut live, reload);
                about = setup::about(&live);
            }
            _ = async { watchdog.as_mut().unwrap().tick().await }, if watchdog.is_some() => notify::watchdog(),
            guard = events.readable_mut() => arp_events(&mut shell, guard?),
            guard = logger.readable_mut() => kernel_log(guard?),
            guard = tap.readable() => {
                if let Err(e) = tap_frames(&mut shell, guard?, &mut frame) {
                    break Err(e).context("reading the TAP (was it deleted?)");
                }
            }
            Some(ev) = link_rx.recv(), if shell.peers.is_some() => link_events(&mut shell, ev, &mut link_rx),
            ok = async { reader.as_mut().unwrap().readable().await }, if reader.is_some() => {
                data_socket(&mut shell, &mut reader, ok);
            }
            ev = async { signals.as_mut().unwrap().recv().await }, if signals.is_some() => match ev {
                Some(SignalEvent::Refused(reason)) => break Err(anyhow!("{reason}")),
                Some(ev) => shell.signal_event(ev),
                None => break Err(anyhow!("signaling stopped")),
            },
            Some(q) = queries.recv() => {
                let doc = shell.answer(&q.get, &about, &kernel_counters(datapath.pin_dir()));
                q.answer(doc);
            }
            _ = tick.tick() => {
                if let Err(e) = on_tick(&mut shell, &mut revocations, dev).await {
                    break Err(e);
                }
            }
        }
        check_departures(&mut shell, dev).await;
    };
    notify::stopping();
    drop((events, logger, shell, tap, control, http));
    result
}

/// The learned entries a previous agent left, kept as orphans until their peers return.
fn restore_orphans(tables: &mut Neighbours, switch: &mut Switch, cfg: &AgentConfig) -> Vec<Output> {
    let left = setup::take_learned(tables, cfg.overlay.is_some());
    if !left.is_empty() {
        info!(
            kept = left.len(),
            "learned neighbour entries of the previous agent kept until their peers' links return (at most {ORPHAN_GRACE:?})"
        );
    }
    switch.restore(monotonic_ns(), ORPHAN_GRACE.as_nanos() as u64, left)
}

/// Looks up, for the claims of local hosts' MACs waiting, whether the bridge still has each
/// MAC on a port; gone, the host moved. One read of the table for all of them; rare: only such
/// claims queue here, at most one per address a second and 64 at once.
async fn check_departures(shell: &mut Shell, dev: &Devices<'_>) {
    if shell.departures.is_empty() {
        return;
    }
    let macs = match dev.nl.bridge_macs(dev.bridge.index).await {
        Ok(macs) => Some(macs),
        Err(e) => {
            warn!("could not read the bridge's forwarding table ({e:#}): claimed hosts stay here");
            None
        }
    };
    for check in std::mem::take(&mut shell.departures) {
        let still_here = macs.as_ref().is_none_or(|m| m.contains(&check.mac.0));
        let out = shell.switch.departure_checked(monotonic_ns(), check, still_here);
        shell.apply(out);
    }
}

/// Every tick: ages the tables, drops what expired or was revoked, tells the peers about this
/// node's links, checks the devices are still there.
async fn on_tick(shell: &mut Shell, revocations: &mut setup::RevocationFile, dev: &Devices<'_>) -> Result<()> {
    let out = shell.switch.expire(monotonic_ns());
    shell.apply(out);
    shell.expire_certificates();
    shell.share_summary();
    if let Some(list) = revocations.changed() {
        shell.revoke(&list, "its file");
    }
    setup::check_devices(&dev.nl, dev.cfg, &dev.bridge, &dev.tap).await?;
    debug!(counters = ?shell.switch.counters(), "tick");
    Ok(())
}

/// The programs' aya-log messages, into the log.
fn kernel_log(mut guard: tokio::io::unix::AsyncFdReadyMutGuard<'_, aya_log::EbpfLogger<&'static dyn log::Log>>) {
    guard.get_inner_mut().flush();
    guard.clear_ready();
}

/// Everything on the ring buffer, into the switch.
/// The programs' own counters (the pinned `stats` map, summed over CPUs), for `status`; null
/// if the map cannot be read.
fn kernel_counters(pin_dir: &std::path::Path) -> serde_json::Value {
    match crate::kernel::maps::Pinned::new(pin_dir).stats() {
        Ok(s) => crate::kernel::maps::stats_rows(&s)
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect(),
        Err(e) => {
            debug!("reading the kernel's counters: {e:#}");
            serde_json::Value::Null
        }
    }
}

fn arp_events(shell: &mut Shell, mut guard: tokio::io::unix::AsyncFdReadyMutGuard<'_, RingBuf<MapData>>) {
    while let Some(item) = guard.get_inner_mut().next() {
        let out = match parse_event(&item) {
            Some(KernelEvent::Arp(ev)) => shell.switch.handle_arp(monotonic_ns(), &ev),
            Some(KernelEvent::Nd(ev)) => shell.switch.handle_nd(monotonic_ns(), &ev),
            None => {
                warn!(len = item.len(), "a record of unknown length on arp_events");
                continue;
            }
        };
        shell.apply(out);
    }
    guard.clear_ready();
}

/// Up to `TAP_BATCH` frames from the TAP, toward the peers.
fn tap_frames(
    shell: &mut Shell,
    mut guard: tokio::io::unix::AsyncFdReadyGuard<'_, Tap>,
    frame: &mut [u8],
) -> io::Result<()> {
    let mut read = Ok(());
    for _ in 0..TAP_BATCH {
        match guard.try_io(|t| t.get_ref().recv(frame)) {
            Ok(Ok(n)) => shell.frame_from_bridge(&frame[..n]),
            Ok(Err(e)) => {
                read = Err(e);
                break;
            }
            Err(_would_block) => break,
        }
    }
    // The batch's frames for the data socket leave now, a peer's in one send.
    if let Some(p) = shell.peers.as_mut() {
        p.flush_frames();
    }
    read
}

/// What the data socket brought, into the switch; `readable` false: it failed, and is no
/// longer read.
fn data_socket(shell: &mut Shell, reader: &mut Option<Reader>, readable: bool) {
    match reader.as_mut() {
        Some(r) if readable => r.read().for_each(|ev| shell.link_event(ev)),
        _ => {
            warn!("the data socket cannot be read any more: links fall back to their ICE paths");
            *reader = None;
        }
    }
}

/// `first` and what else the links have queued, up to `LINK_BATCH`: an ICE reader hands
/// over frames in bursts, and each turn of the loop costs a poll of every branch.
fn link_events(shell: &mut Shell, first: LinkEvent, rx: &mut mpsc::Receiver<LinkEvent>) {
    shell.link_event(first);
    for _ in 1..LINK_BATCH {
        match rx.try_recv() {
            Ok(ev) => shell.link_event(ev),
            Err(_) => break,
        }
    }
}

/// Logs how the agent stops and removes the datapath (programs, pins) last.
fn finish(result: Result<()>, datapath: Datapath) -> Result<()> {
    match &result {
        Ok(()) => info!("stopping: detaching programs, removing the TAP and the pins"),
        Err(e) => warn!("stopping on error: {e:#}"),
    }
    drop(datapath);
    info!("stopped");
    result
}
