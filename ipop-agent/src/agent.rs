//! The async shell around the switch: sets up the devices and the datapath, feeds the core
//! with ring buffer events and the time, carries out its outputs, and tears everything down
//! on SIGINT/SIGTERM or on any error.

use std::{io, os::fd::AsRawFd, time::Duration};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use ipop_common::maps::{self as m, ArpEvent};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};
use tracing::{debug, info, warn};

use crate::{
    addr::Mac,
    config::AgentConfig,
    datapath::Datapath,
    lock,
    netif::{Netlink, Tap},
    preflight,
    switch::{Output, Switch},
    tables::monotonic_ns,
};

/// How often the shell checks its devices and ages the core's tables.
const TICK: Duration = Duration::from_secs(2);
/// Largest frame read from the TAP (Ethernet header + 1500, with room for a VLAN tag).
const TAP_FRAME_MAX: usize = 1522;

/// Decodes one ring buffer record; `None` if it is not a whole event.
pub fn parse_event(bytes: &[u8]) -> Option<ArpEvent> {
    if bytes.len() < size_of::<ArpEvent>() {
        return None;
    }
    // SAFETY: the length is checked and ArpEvent is plain old data; the read is unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<ArpEvent>()) })
}

/// Registers an fd-owning object with the tokio reactor for readability.
fn watch<T: AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its fd (a map, a TAP) and keeps it open until the AsyncFd, which
    // owns `inner`, is dropped.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }.map_err(io::Error::from)
}

/// Runs the agent until SIGINT or SIGTERM. Everything it attached or created is removed
/// when this returns, whether it returns `Ok` or an error.
pub async fn run(cfg: AgentConfig) -> Result<()> {
    preflight::check_privileges()?;
    preflight::check_bpffs(&cfg.pin_dir)?;
    let nl = Netlink::connect()?;
    let bridge = nl.bridge(&cfg.bridge).await?;
    let _lock = lock::acquire(&cfg.bridge, bridge.index, &cfg.pin_dir)?;
    if let Some(existing) = nl.link(&cfg.tap).await? {
        bail!(
            "interface {} already exists (a {} device): another agent may own it; choose another name with --tap",
            cfg.tap,
            existing.kind.as_deref().unwrap_or("physical")
        );
    }
    if !bridge.up {
        warn!(bridge = %cfg.bridge, "the bridge is down: nothing will flow until it is up");
    }

    let mut datapath = Datapath::load(&cfg.pin_dir)?;
    let tap = Tap::create(&cfg.tap)?;
    let tap_link = nl
        .link(tap.name())
        .await?
        .context("the TAP vanished right after it was created")?;
    nl.join_bridge(tap_link.index, bridge.index).await?;
    datapath.configure(m::Config {
        bridge_ifindex: bridge.index,
        tap_ifindex: tap_link.index,
        max_age_ns: cfg.arp_max_age.as_nanos() as u64,
        flags: m::CONFIG_ANSWER,
        _reserved: 0,
    })?;
    datapath.attach(&cfg.bridge, tap.name())?;
    if let Some(port) = cfg.icc_port {
        info!(
            icc_port = port,
            "icc_port noted: peer links are not part of this version"
        );
    }

    let mut events = watch(datapath.take_events()?)?;
    let mut logger = watch(datapath.take_logger()?)?;
    let tap = watch(tap)?;
    let mut switch = Switch::new(cfg.arp_max_age.as_nanos() as u64);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(TICK);
    let mut frame = vec![0u8; TAP_FRAME_MAX];
    let mut tap_frames = 0u64;

    info!(
        bridge = %cfg.bridge,
        tap = %cfg.tap,
        pin_dir = %datapath.pin_dir().display(),
        "ipop-agent ready"
    );
    let result: Result<()> = loop {
        tokio::select! {
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
            guard = events.readable_mut() => {
                let mut guard = guard?;
                drain_events(guard.get_inner_mut(), &mut switch);
                guard.clear_ready();
            }
            guard = logger.readable_mut() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            guard = tap.readable() => {
                let mut guard = guard?;
                match guard.try_io(|t| t.get_ref().recv(&mut frame)) {
                    // No peers yet: frames toward the overlay have nowhere to go.
                    Ok(Ok(_)) => tap_frames += 1,
                    Ok(Err(e)) => break Err(e).context("reading the TAP (was it deleted?)"),
                    Err(_would_block) => {}
                }
            }
            _ = tick.tick() => {
                for ip in switch.expire(monotonic_ns()) {
                    debug!(%ip, "local host forgotten (silent for longer than the ARP max age)");
                }
                match nl.link(&cfg.bridge).await? {
                    Some(link) if link.index == bridge.index => {}
                    _ => break Err(io::Error::other("the bridge was deleted"))
                        .with_context(|| format!("bridge {} is gone", cfg.bridge)),
                }
                debug!(counters = ?switch.counters(), tap_frames, "tick");
            }
        }
    };
    match &result {
        Ok(()) => info!("stopping: detaching programs, removing the TAP and the pins"),
        Err(e) => warn!("stopping on error: {e:#}"),
    }
    drop((events, logger, tap, datapath));
    info!("stopped");
    result
}

fn drain_events(ring: &mut RingBuf<MapData>, switch: &mut Switch) {
    while let Some(item) = ring.next() {
        let Some(ev) = parse_event(&item) else {
            warn!(len = item.len(), "short record on arp_events");
            continue;
        };
        let now = monotonic_ns();
        for out in switch.handle_arp(now, &ev) {
            report(&out);
        }
    }
}

/// Carries out an output. Without peers, asking and telling them ends here, logged.
fn report(out: &Output) {
    match out {
        Output::LocalLearned {
            ip,
            mac,
            previous: None,
        } => info!(%ip, %mac, "local host"),
        Output::LocalLearned {
            ip,
            mac,
            previous: Some(old),
        } => {
            warn!(%ip, %mac, old = %old, "local host changed its MAC")
        }
        Output::AnsweredInKernel { ip, requester } => {
            debug!(%ip, %requester, "answered in the kernel")
        }
        Output::AskPeers { request, eth_src } => debug!(
            target_ip = %std::net::Ipv4Addr::from(request.target_ip),
            requester = %eth_src,
            "ARP request for an unknown IP (no peers to ask)"
        ),
        Output::TellPeers { arp, .. } => debug!(
            ip = %std::net::Ipv4Addr::from(arp.sender_ip),
            mac = %Mac(arp.sender_mac),
            "ARP reply or announcement (no peers to tell)"
        ),
    }
}
