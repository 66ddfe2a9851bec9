//! IPv6 neighbour discovery at the TAP's egress: every solicitation and advertisement is
//! reported to the agent, and a solicitation for a remote host in `nd_table` is rewritten
//! into the owner's advertisement and sent back into the bridge, as ARP requests are.
//! Which frames count as ND is exactly `ipop_common::nd::NdFrame::parse`'s rule.
//!
//! The event is filled in the ring buffer itself and the advertisement is built in a per-CPU
//! scratch buffer: both are too large for the 512-byte BPF stack beside their copies.

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, TC_ACT_REDIRECT},
    btf_maps::PerCpuArray,
    helpers::{bpf_ktime_get_ns, bpf_redirect},
    macros::btf_map,
    programs::TcContext,
};
use ipop_common::{
    arp::ETH_HLEN,
    maps::{ArpEntry, ENTRY_ROUTER, HOOK_TAP_EGRESS, NdEvent, NdKey, VERDICT_ANSWERED, VERDICT_PASSED},
    nd::{
        ADVERT_PACKET_LEN, FLAG_OVERRIDE, FLAG_ROUTER, FLAG_SOLICITED, IPV6_HLEN, LL_OPT_LEN, MIN_FRAME_LEN, ND_LEN,
        NEIGHBOR_ADVERT, NEIGHBOR_SOLICIT, NEXT_HEADER_ICMPV6, OPT_SOURCE_LL, OPT_TARGET_LL, field, write_advert,
    },
};

use crate::{ARP_EVENTS, ND_TABLE, TC_ACT_UNSPEC, answering, count};

#[btf_map(name = "nd_scratch")]
static SCRATCH: PerCpuArray<[u8; ADVERT_PACKET_LEN], 1> = PerCpuArray::new();

/// Not inlined: a function of its own gets a stack frame of its own, apart from ARP's.
#[inline(never)]
pub fn handle(ctx: &TcContext) -> i32 {
    let Some(kind) = nd_kind(ctx) else {
        // Not ND as hosts accept it: it crosses the overlay as any other frame.
        return TC_ACT_UNSPEC;
    };
    count(|s| s.nd_seen += 1);
    let Some(mut slot) = ARP_EVENTS.reserve_untyped::<NdEvent>(0) else {
        count(|s| s.events_lost += 1);
        return TC_ACT_UNSPEC;
    };
    let p = slot.as_mut_ptr();
    // SAFETY: the reserved slot is ours until submitted or discarded.
    if unsafe { fill(ctx, kind, p) }.is_err() {
        slot.discard(0);
        count(|s| s.malformed += 1);
        return TC_ACT_UNSPEC;
    }
    // SAFETY: `fill` wrote every field.
    let ev = unsafe { &mut *p };
    let mut action = TC_ACT_UNSPEC;
    if kind == NEIGHBOR_SOLICIT
        && ev.has_lladdr != 0
        && ev.src != [0; 16]
        && let Some(redirect) = answer_from_table(ctx, ev)
    {
        ev.verdict = VERDICT_ANSWERED;
        action = redirect;
    }
    slot.submit(0);
    count(|s| s.events += 1);
    action
}

/// The ICMPv6 type if the frame is a solicitation or advertisement as RFC 4861 has them on
/// a link (IPv6 carrying ICMPv6 directly, code 0, hop limit 255, whole).
#[inline(always)]
fn nd_kind(ctx: &TcContext) -> Option<u8> {
    let len = ctx.len() as usize;
    let head = ctx.load::<[u8; 8]>(field::IP6).ok()?;
    let icmp = ctx.load::<[u8; 2]>(field::ICMP_TYPE).ok()?;
    let payload = u16::from_be_bytes([head[4], head[5]]) as usize;
    let nd = head[0] >> 4 == 6
        && head[6] == NEXT_HEADER_ICMPV6
        && len >= MIN_FRAME_LEN
        && ETH_HLEN + IPV6_HLEN + payload <= len
        && (icmp[0] == NEIGHBOR_SOLICIT || icmp[0] == NEIGHBOR_ADVERT)
        && icmp[1] == 0
        && head[7] == 255
        && payload >= ND_LEN;
    nd.then_some(icmp[0])
}

/// Fills the event for the ND message of type `kind` (the frame passed `nd_kind`), every
/// field, in place: zeroing it first would be a memset loop, whose pointer arithmetic the
/// verifier refuses without CAP_PERFMON (the agent runs with CAP_BPF and CAP_NET_ADMIN only).
///
/// # Safety
/// `ev` is valid for writes of an `NdEvent`.
#[inline(always)]
unsafe fn fill(ctx: &TcContext, kind: u8, ev: *mut NdEvent) -> Result<(), i64> {
    let flags = if kind == NEIGHBOR_ADVERT {
        ctx.load::<u8>(field::FLAGS)? & (FLAG_ROUTER | FLAG_SOLICITED | FLAG_OVERRIDE)
    } else {
        0
    };
    let head = ctx.load::<[u8; 8]>(field::IP6)?;
    let mut has_lladdr = 0;
    if u16::from_be_bytes([head[4], head[5]]) as usize >= ND_LEN + LL_OPT_LEN {
        let opt = ctx.load::<[u8; 2]>(field::OPT_TYPE)?;
        let wanted = if kind == NEIGHBOR_SOLICIT { OPT_SOURCE_LL } else { OPT_TARGET_LL };
        has_lladdr = (opt[0] == wanted && opt[1] == 1) as u8;
    }
    // Without the option, the Ethernet source stands in (no zeroed array: see above).
    let lladdr: [u8; 6] = ctx.load(if has_lladdr != 0 { field::OPT_LLADDR } else { field::ETH_SRC })?;
    // SAFETY: the caller's promise; each write is of one whole field.
    unsafe {
        (&raw mut (*ev).ifindex).write((*ctx.skb.skb).ifindex);
        (&raw mut (*ev).hook).write(HOOK_TAP_EGRESS);
        (&raw mut (*ev).verdict).write(VERDICT_PASSED);
        (&raw mut (*ev).kind).write(kind);
        (&raw mut (*ev).flags).write(flags);
        (&raw mut (*ev).eth_dst).write(ctx.load(field::ETH_DST)?);
        (&raw mut (*ev).eth_src).write(ctx.load(field::ETH_SRC)?);
        (&raw mut (*ev).lladdr).write(lladdr);
        (&raw mut (*ev).has_lladdr).write(has_lladdr);
        (&raw mut (*ev)._pad).write(0);
        (&raw mut (*ev).src).write(ctx.load(field::SRC)?);
        (&raw mut (*ev).dst).write(ctx.load(field::DST)?);
        (&raw mut (*ev).target).write(ctx.load(field::TARGET)?);
    }
    Ok(())
}

/// Rewrites the solicitation into the target owner's advertisement if `nd_table` has a fresh
/// entry for the target; the redirect that sends it back into the bridge.
#[inline(always)]
fn answer_from_table(ctx: &TcContext, ev: &NdEvent) -> Option<i32> {
    let cfg = answering()?;
    // SAFETY: read-only copy of the entry.
    let entry: ArpEntry = unsafe { ND_TABLE.get(NdKey { ip: ev.target }) }.copied()?;
    // SAFETY: a helper without arguments.
    if !entry.is_fresh(unsafe { bpf_ktime_get_ns() }, cfg.max_age_ns) {
        count(|s| s.nd_stale += 1);
        return None;
    }
    // SAFETY: per-CPU scratch, only this CPU uses it while the program runs.
    let packet = unsafe { &mut *SCRATCH.get_ptr_mut(0)? };
    // A router's answer says it routes (a host that saw the flag drop would forget the
    // routes through it, RFC 4861 7.2.5).
    let router = if entry.flags & ENTRY_ROUTER != 0 { FLAG_ROUTER } else { 0 };
    write_advert(packet, &ev.target, &ev.src, &entry.mac, router | FLAG_SOLICITED | FLAG_OVERRIDE);
    ctx.store(field::ETH_DST, &ev.eth_src, 0).ok()?;
    ctx.store(field::ETH_SRC, &entry.mac, 0).ok()?;
    ctx.store(field::IP6, packet, 0).ok()?;
    count(|s| s.nd_answered += 1);
    // SAFETY: a helper on plain integers.
    let action = unsafe { bpf_redirect(cfg.tap_ifindex, BPF_F_INGRESS as u64) } as i32;
    (action == TC_ACT_REDIRECT as i32).then_some(action)
}
