//! ipop's TC programs: see ARCHITECTURE.md for the packet walk.
//!
//! `tap_egress` sees exactly what the bridge sends toward the overlay: it reports every ARP
//! frame to the agent and answers requests for remote IPs from `arp_table`, redirecting the
//! reply into the TAP's ingress so the bridge learns the remote MAC on the TAP port.
//! `bridge_ingress` sees every broadcast that reaches the bridge device, including the frames
//! the agent injects through the TAP; it reports local ARP only (never frames whose sender is
//! remote, which would loop between agents) and never answers (the TAP hook already did).
//! Neighbour discovery (`nd`) is handled at the TAP's egress only, the same way, from
//! `nd_table`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, TC_ACT_REDIRECT},
    btf_maps::{Array, HashMap, PerCpuArray, RingBuf},
    helpers::{bpf_ktime_get_ns, bpf_redirect},
    macros::{btf_map, classifier},
    programs::TcContext,
};

mod nd;
use aya_log_ebpf::debug;
use ipop_common::{
    arp::{ETHERTYPE_ARP, ETHERTYPE_IPV4, FRAME_LEN, HTYPE_ETHERNET, OP_REPLY, OP_REQUEST, field},
    maps::{
        ARP_EVENTS_BYTES, ARP_TABLE_SIZE, ArpEntry, ArpEvent, ArpKey, CONFIG_ANSWER, Config, HOOK_BRIDGE_INGRESS,
        HOOK_TAP_EGRESS, ND_TABLE_SIZE, NdKey, Stats, VERDICT_ANSWERED, VERDICT_PASSED,
    },
    nd::ETHERTYPE_IPV6,
};

/// "No opinion": let the next program (or the stack) decide. TCX_NEXT on TCX links.
const TC_ACT_UNSPEC: i32 = -1;

#[btf_map(name = "arp_table")]
static ARP_TABLE: HashMap<ArpKey, ArpEntry, { ARP_TABLE_SIZE as usize }> = HashMap::new();

#[btf_map(name = "nd_table")]
static ND_TABLE: HashMap<NdKey, ArpEntry, { ND_TABLE_SIZE as usize }> = HashMap::new();

#[btf_map(name = "arp_events")]
static ARP_EVENTS: RingBuf<ArpEvent, { ARP_EVENTS_BYTES as usize }> = RingBuf::new();

#[btf_map(name = "stats")]
static STATS: PerCpuArray<Stats, 1> = PerCpuArray::new();

#[btf_map(name = "config")]
static CONFIG: Array<Config, 1> = Array::new();

#[classifier]
pub fn tap_egress(ctx: TcContext) -> i32 {
    handle(&ctx, HOOK_TAP_EGRESS)
}

#[classifier]
pub fn bridge_ingress(ctx: TcContext) -> i32 {
    handle(&ctx, HOOK_BRIDGE_INGRESS)
}

#[inline(always)]
fn count(update: impl FnOnce(&mut Stats)) {
    if let Some(s) = STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        update(unsafe { &mut *s });
    }
}

/// The ARP header after the Ethernet header, as loaded in one helper call.
#[repr(C)]
struct ArpHdr {
    htype: [u8; 2],
    ptype: [u8; 2],
    hlen: u8,
    plen: u8,
    op: [u8; 2],
    sender_mac: [u8; 6],
    sender_ip: [u8; 4],
    target_mac: [u8; 6],
    target_ip: [u8; 4],
}

/// The rewritten tail of the frame, from `op` to the end of the ARP packet.
#[repr(C)]
struct ReplyTail {
    op: [u8; 2],
    sender_mac: [u8; 6],
    sender_ip: [u8; 4],
    target_mac: [u8; 6],
    target_ip: [u8; 4],
}

#[inline(always)]
fn handle(ctx: &TcContext, hook: u8) -> i32 {
    let Ok(ethertype) = ctx.load::<[u8; 2]>(field::ETHERTYPE) else {
        return TC_ACT_UNSPEC;
    };
    match u16::from_be_bytes(ethertype) {
        ETHERTYPE_ARP => handle_arp(ctx, hook),
        // The agent injects ND only through the TAP, and the bridge's own solicitations and
        // answers to them reach the TAP's egress too: one hook sees all that matters.
        ETHERTYPE_IPV6 if hook == HOOK_TAP_EGRESS => nd::handle(ctx),
        _ => TC_ACT_UNSPEC,
    }
}

/// The answering config, if the agent enabled answers.
#[inline(always)]
fn answering() -> Option<&'static Config> {
    CONFIG.get(0).filter(|cfg| cfg.flags & CONFIG_ANSWER != 0 && cfg.tap_ifindex != 0)
}

#[inline(never)]
fn handle_arp(ctx: &TcContext, hook: u8) -> i32 {
    count(|s| s.seen += 1);
    if (ctx.len() as usize) < FRAME_LEN {
        count(|s| s.malformed += 1);
        return TC_ACT_UNSPEC;
    }
    let (Ok(eth), Ok(arp)) = (ctx.load::<[u8; 12]>(field::ETH_DST), ctx.load::<ArpHdr>(field::HTYPE)) else {
        count(|s| s.malformed += 1);
        return TC_ACT_UNSPEC;
    };
    let op = u16::from_be_bytes(arp.op);
    if u16::from_be_bytes(arp.htype) != HTYPE_ETHERNET
        || u16::from_be_bytes(arp.ptype) != ETHERTYPE_IPV4
        || arp.hlen != 6
        || arp.plen != 4
        || (op != OP_REQUEST && op != OP_REPLY)
    {
        count(|s| s.malformed += 1);
        return TC_ACT_UNSPEC;
    }
    let mut eth_dst = [0u8; 6];
    let mut eth_src = [0u8; 6];
    eth_dst.copy_from_slice(&eth[..6]);
    eth_src.copy_from_slice(&eth[6..]);

    // SAFETY: the entry is only read, and copied out at once.
    let sender = unsafe { ARP_TABLE.get(ArpKey { ip: arp.sender_ip }) }.copied();
    if hook == HOOK_BRIDGE_INGRESS {
        if let Some(remote) = sender
            && remote.mac == arp.sender_mac
        {
            // The agent wrote this frame into the TAP on a peer's behalf: reporting it
            // again would send it back to the overlay.
            count(|s| s.injected += 1);
            return TC_ACT_UNSPEC;
        }
    }

    let mut verdict = VERDICT_PASSED;
    let mut action = TC_ACT_UNSPEC;
    if hook == HOOK_TAP_EGRESS
        && op == OP_REQUEST
        && let Some(cfg) = answering()
        && arp.sender_ip != [0; 4]
        && arp.sender_ip != arp.target_ip
    {
        // SAFETY: read-only copy, as above.
        if let Some(entry) = unsafe { ARP_TABLE.get(ArpKey { ip: arp.target_ip }) }.copied() {
            // SAFETY: a helper without arguments.
            let now = unsafe { bpf_ktime_get_ns() };
            if entry.is_fresh(now, cfg.max_age_ns) {
                if answer(ctx, &eth_src, &arp, &entry.mac).is_ok() {
                    count(|s| s.answered += 1);
                    debug!(ctx, "answered {:i} is-at {:mac}", u32::from_be_bytes(arp.target_ip), entry.mac);
                    verdict = VERDICT_ANSWERED;
                    // SAFETY: a helper on plain integers.
                    action = unsafe { bpf_redirect(cfg.tap_ifindex, BPF_F_INGRESS as u64) } as i32;
                }
            } else {
                count(|s| s.stale += 1);
            }
        }
    }

    let event = ArpEvent {
        // SAFETY: reading a field of the context the kernel passed in.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        hook,
        verdict,
        op,
        eth_src,
        eth_dst,
        sender_mac: arp.sender_mac,
        sender_ip: arp.sender_ip,
        target_mac: arp.target_mac,
        target_ip: arp.target_ip,
    };
    match ARP_EVENTS.output(event, 0) {
        Ok(()) => count(|s| s.events += 1),
        Err(_) => count(|s| s.events_lost += 1),
    }
    if action == TC_ACT_REDIRECT as i32 { action } else { TC_ACT_UNSPEC }
}

/// Rewrites the request in place into the reply the owner of the target IP would send.
#[inline(always)]
fn answer(ctx: &TcContext, requester: &[u8; 6], arp: &ArpHdr, mac: &[u8; 6]) -> Result<(), i64> {
    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(requester);
    eth[6..].copy_from_slice(mac);
    let tail = ReplyTail {
        op: OP_REPLY.to_be_bytes(),
        sender_mac: *mac,
        sender_ip: arp.target_ip,
        target_mac: arp.sender_mac,
        target_ip: arp.sender_ip,
    };
    ctx.store(field::ETH_DST, &eth, 0)?;
    ctx.store(field::OP, &tail, 0)?;
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
