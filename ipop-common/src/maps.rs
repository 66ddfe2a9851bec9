//! The BPF maps' key and value types, and the names they are pinned under.
//!
//! All types are `#[repr(C)]` with explicit fields and no implicit padding, so they are
//! plain old data on both sides and bpftool prints them by field name (BTF).

/// Pin names under the agent's pin directory (`/sys/fs/bpf/ipop/<bridge>/` by default).
pub const ARP_TABLE: &str = "arp_table";
pub const ARP_EVENTS: &str = "arp_events";
pub const STATS: &str = "stats";
pub const CONFIG: &str = "config";
pub const ND_TABLE: &str = "nd_table";
/// All pinned maps, for pinning and for cleaning up.
pub const PINNED: [&str; 5] = [ARP_TABLE, ND_TABLE, ARP_EVENTS, STATS, CONFIG];
/// The neighbour tables a restarted agent takes back (their entries survive a crash).
pub const TABLES: [&str; 2] = [ARP_TABLE, ND_TABLE];

/// Capacity of `arp_table` (remote hosts answered in the kernel).
pub const ARP_TABLE_SIZE: u32 = 16384;
/// Capacity of `nd_table` (remote IPv6 hosts answered in the kernel).
pub const ND_TABLE_SIZE: u32 = 16384;
/// Size of the `arp_events` ring buffer in bytes (a power of two, page aligned).
pub const ARP_EVENTS_BYTES: u32 = 512 * 1024;

/// Key of `arp_table`: an IPv4 address in network byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArpKey {
    pub ip: [u8; 4],
}

/// Key of `nd_table`: an IPv6 address in network byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NdKey {
    pub ip: [u8; 16],
}

/// Entry flag: added by the operator; never ages.
pub const ENTRY_STATIC: u16 = 1;
/// Entry flag: known to be out of date; the kernel must not answer from it.
pub const ENTRY_STALE: u16 = 2;
/// Entry flag (`nd_table`): the host is an IPv6 router, as its own advertisement said; the
/// kernel's answers for it carry the router flag too.
pub const ENTRY_ROUTER: u16 = 4;

/// Value of `arp_table` and `nd_table`: where a remote IP lives.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpEntry {
    pub mac: [u8; 6],
    /// `ENTRY_*` bits.
    pub flags: u16,
    /// `CLOCK_MONOTONIC` (`bpf_ktime_get_ns`) time of the last refresh, in ns.
    pub updated_ns: u64,
    /// For a learned entry, a tag of the peer that vouched for it (`peer_tag` of its node
    /// id), so that an agent restarted after a crash knows whose it is; 0 for static entries.
    pub peer_tag: u32,
    pub _reserved: u32,
}

impl ArpEntry {
    /// Whether the kernel may answer from this entry at monotonic time `now_ns`,
    /// given the configured maximum age (0: entries never age).
    /// The eBPF program applies exactly this rule.
    #[inline(always)]
    pub fn is_fresh(&self, now_ns: u64, max_age_ns: u64) -> bool {
        if self.flags & ENTRY_STALE != 0 {
            return false;
        }
        if self.flags & ENTRY_STATIC != 0 || max_age_ns == 0 {
            return true;
        }
        now_ns.saturating_sub(self.updated_ns) <= max_age_ns
    }
}

/// The hook a frame was seen at.
pub const HOOK_BRIDGE_INGRESS: u8 = 1;
pub const HOOK_TAP_EGRESS: u8 = 2;

/// What the program did with the frame.
pub const VERDICT_PASSED: u8 = 0;
pub const VERDICT_ANSWERED: u8 = 1;

/// One ARP frame seen by a program, pushed on `arp_events`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpEvent {
    /// Interface the hook is attached to.
    pub ifindex: u32,
    /// `HOOK_*`.
    pub hook: u8,
    /// `VERDICT_*`.
    pub verdict: u8,
    /// ARP operation, host byte order.
    pub op: u16,
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub sender_mac: [u8; 6],
    pub sender_ip: [u8; 4],
    pub target_mac: [u8; 6],
    pub target_ip: [u8; 4],
}

impl ArpEvent {
    /// The ARP fields of the event.
    pub fn arp(&self) -> crate::arp::Arp {
        crate::arp::Arp {
            op: self.op,
            sender_mac: self.sender_mac,
            sender_ip: self.sender_ip,
            target_mac: self.target_mac,
            target_ip: self.target_ip,
        }
    }
}

/// One neighbour solicitation or advertisement seen by a program, pushed on `arp_events`
/// beside the ARP events (told apart by their length: ND events are longer).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NdEvent {
    pub ifindex: u32,
    /// `HOOK_*`.
    pub hook: u8,
    /// `VERDICT_*`.
    pub verdict: u8,
    /// ICMPv6 type: 135 (solicitation) or 136 (advertisement).
    pub kind: u8,
    /// An advertisement's `nd::FLAG_*`.
    pub flags: u8,
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    /// The link-layer address option (source or target), if the message has one.
    pub lladdr: [u8; 6],
    pub has_lladdr: u8,
    pub _pad: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub target: [u8; 16],
}

impl NdEvent {
    /// The ND fields of the event.
    pub fn nd(&self) -> crate::nd::Nd {
        crate::nd::Nd {
            kind: self.kind,
            flags: self.flags,
            src: self.src,
            dst: self.dst,
            target: self.target,
            lladdr: (self.has_lladdr != 0).then_some(self.lladdr),
        }
    }
}

/// Config flag: answer ARP requests from `arp_table` and solicitations from `nd_table` in
/// the kernel.
pub const CONFIG_ANSWER: u32 = 1;

/// The single entry of `config`, written by the agent before it attaches the programs.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Config {
    pub bridge_ifindex: u32,
    /// Where in-kernel replies are redirected (ingress of the TAP); 0 disables answers.
    pub tap_ifindex: u32,
    /// Entries older than this are not answered (0: never age).
    pub max_age_ns: u64,
    /// `CONFIG_*` bits.
    pub flags: u32,
    pub _reserved: u32,
}

/// Per-CPU counters, the single entry of `stats`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// ARP frames (EtherType 0x0806) seen at either hook.
    pub seen: u64,
    /// Requests answered in the kernel.
    pub answered: u64,
    /// Events pushed on `arp_events`.
    pub events: u64,
    /// Events lost because `arp_events` was full.
    pub events_lost: u64,
    /// ARP frames that are truncated or not IPv4 over Ethernet.
    pub malformed: u64,
    /// Requests for entries too old or marked stale, not answered.
    pub stale: u64,
    /// Frames at the bridge ingress from a remote sender (injected by the agent), not reported.
    pub injected: u64,
    /// Neighbour solicitations and advertisements seen at the TAP's egress.
    pub nd_seen: u64,
    /// Solicitations answered in the kernel from `nd_table`.
    pub nd_answered: u64,
    /// Solicitations for entries too old or marked stale, not answered.
    pub nd_stale: u64,
}

impl Stats {
    /// Adds `other` field by field (summing the per-CPU values).
    pub fn add(&mut self, other: &Stats) {
        self.seen += other.seen;
        self.answered += other.answered;
        self.events += other.events;
        self.events_lost += other.events_lost;
        self.malformed += other.malformed;
        self.stale += other.stale;
        self.injected += other.injected;
        self.nd_seen += other.nd_seen;
        self.nd_answered += other.nd_answered;
        self.nd_stale += other.nd_stale;
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are #[repr(C)], Copy, and have no padding (checked below).
    unsafe impl aya::Pod for super::ArpKey {}
    unsafe impl aya::Pod for super::ArpEntry {}
    unsafe impl aya::Pod for super::ArpEvent {}
    unsafe impl aya::Pod for super::NdKey {}
    unsafe impl aya::Pod for super::NdEvent {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Stats {}
}

// No implicit padding: the sizes are the sums of the fields.
const _: () = assert!(core::mem::size_of::<ArpKey>() == 4);
const _: () = assert!(core::mem::size_of::<ArpEntry>() == 24);
const _: () = assert!(core::mem::size_of::<ArpEvent>() == 40);
const _: () = assert!(core::mem::size_of::<Config>() == 24);
const _: () = assert!(core::mem::size_of::<Stats>() == 80);
const _: () = assert!(core::mem::size_of::<NdKey>() == 16);
const _: () = assert!(core::mem::size_of::<NdEvent>() == 76);

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(flags: u16, updated_ns: u64) -> ArpEntry {
        ArpEntry { mac: [2, 0, 0, 0, 0, 1], flags, updated_ns, peer_tag: 0, _reserved: 0 }
    }

    #[test]
    fn learned_entries_age_out() {
        let e = entry(0, 1_000);
        assert!(e.is_fresh(1_000, 500));
        assert!(e.is_fresh(1_500, 500));
        assert!(!e.is_fresh(1_501, 500));
        assert!(e.is_fresh(u64::MAX, 0), "max age 0 means never age");
    }

    #[test]
    fn static_entries_never_age_but_stale_wins() {
        assert!(entry(ENTRY_STATIC, 0).is_fresh(u64::MAX, 1));
        assert!(!entry(ENTRY_STATIC | ENTRY_STALE, 0).is_fresh(0, 0));
        assert!(!entry(ENTRY_STALE, 10).is_fresh(10, 0));
    }

    #[test]
    fn a_clock_behind_the_entry_does_not_underflow() {
        assert!(entry(0, 5_000).is_fresh(1_000, 10));
    }
}
