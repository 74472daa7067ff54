//! The gate: the patent's virtual LAN interface manager (803), both directions.
//!
//! `gate_ingress` (XDP) decides what a host receives for a logical address, `gate_egress`
//! (TC) what it sends from one. Both read the same `GATES` table, written only by the agent.
//! Traffic that concerns no logical address passes untouched and is not counted.
#![no_std]
#![no_main]

mod parse;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map, xdp},
    maps::{Array, DevMapHash, HashMap, PerCpuArray, PerCpuHashMap},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use aya_log_ebpf::warn;
use takeover_common::{
    Action, Counters, GateKey, GateValue, ACTION_NONE, FLAG_SERVICES, MAX_GATES,
    MAX_REDIRECT_IFACES,
};

use parse::{Packet, SkbFrame, XdpFrame};

/// Logical address (or address + service) -> what to do with it.
#[map(name = "GATES")]
static GATES: HashMap<GateKey, GateValue> = HashMap::pinned(MAX_GATES, 0);

/// Per-CPU counters per gate entry. Not preallocated: big hosts have many CPUs.
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuHashMap<GateKey, Counters> =
    PerCpuHashMap::pinned(MAX_GATES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Interfaces a `Forward` may redirect to, keyed by ifindex.
#[map(name = "REDIRECT")]
static REDIRECT: DevMapHash = DevMapHash::pinned(MAX_REDIRECT_IFACES, 0);

/// Slot 0: the ABI version of these maps, written by the agent (see `takeover_common`).
#[map(name = "INFO")]
static INFO: Array<u32> = Array::pinned(1, 0);

/// Per CPU, when each kind of rare event was last logged (ns): at most one line per second
/// and CPU, so a misconfiguration hit by every packet cannot flood the log.
#[map(name = "LOG_LAST")]
static LOG_LAST: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_KINDS, 0);

const EVENT_COUNTERS_FULL: u32 = 0;
const EVENT_REDIRECT_MISSING: u32 = 1;
const EVENT_KINDS: u32 = 2;

/// True if an event of `kind` may be logged now (and records that it is).
#[inline(always)]
fn may_log(kind: u32) -> bool {
    let Some(last) = LOG_LAST.get_ptr_mut(kind) else {
        return false;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a per-CPU slot, only this CPU touches it.
    unsafe {
        if *last != 0 && now.wrapping_sub(*last) < 1_000_000_000 {
            return false;
        }
        *last = now;
    }
    true
}

const BPF_NOEXIST: u64 = 1;

#[inline(always)]
fn counters<C: EbpfContext>(ctx: &C, key: &GateKey) -> Option<&'static mut Counters> {
    if let Some(c) = COUNTERS.get_ptr_mut(key) {
        return Some(unsafe { &mut *c });
    }
    // First packet of this entry on any CPU: create it (a racing CPU may win; both fine).
    let _ = COUNTERS.insert(key, Counters::default(), BPF_NOEXIST);
    let c = COUNTERS.get_ptr_mut(key).map(|c| unsafe { &mut *c });
    if c.is_none() && may_log(EVENT_COUNTERS_FULL) {
        warn!(ctx, "counters table full: a gate entry goes uncounted");
    }
    c
}

/// The gate entry that decides for `key` (an address) and, if the packet has one, its
/// service: the address entry first, then the service entry if the address has any.
#[inline(always)]
fn lookup(key: GateKey, service: Option<(u8, u16)>) -> Option<(GateKey, GateValue)> {
    let addr = *unsafe { GATES.get(key) }?;
    if addr.flags & FLAG_SERVICES != 0 {
        if let Some((proto, port)) = service {
            let skey = key.service(proto, port);
            if let Some(v) = unsafe { GATES.get(skey) } {
                return Some((skey, *v));
            }
        }
    }
    if addr.action == ACTION_NONE {
        return None;
    }
    Some((key, addr))
}

#[xdp]
pub fn gate_ingress(ctx: XdpContext) -> u32 {
    let frame = XdpFrame::new(&ctx);
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let Some(pkt) = parse::parse(&frame) else {
        return xdp_action::XDP_PASS;
    };
    let Some((key, gate)) = ingress_gate(&pkt) else {
        return xdp_action::XDP_PASS;
    };
    let c = counters(&ctx, &key);
    match Action::from_u8(gate.action) {
        Some(Action::Closed) => {
            if let Some(c) = c {
                c.rx_drop_packets += 1;
                c.rx_drop_bytes += bytes;
            }
            xdp_action::XDP_DROP
        }
        // ARP and neighbour discovery for a forwarded address are answered here: the clients
        // keep sending to this host, which passes the requests on.
        Some(Action::Forward) if !pkt.is_neighbour() => {
            let verdict = forward(&ctx, &gate);
            if let Some(c) = c {
                if verdict == xdp_action::XDP_DROP {
                    c.rx_drop_packets += 1;
                    c.rx_drop_bytes += bytes;
                } else {
                    c.rx_forward_packets += 1;
                    c.rx_forward_bytes += bytes;
                }
            }
            verdict
        }
        _ => {
            if let Some(c) = c {
                c.rx_pass_packets += 1;
                c.rx_pass_bytes += bytes;
            }
            xdp_action::XDP_PASS
        }
    }
}

/// Received traffic belongs to the gate of its destination (or of the ARP/ND target).
#[inline(always)]
fn ingress_gate(pkt: &Packet) -> Option<(GateKey, GateValue)> {
    match pkt {
        Packet::Arp { target, .. } => lookup(*target, None),
        Packet::Neighbour { target, .. } => lookup(*target, None),
        Packet::Ip {
            dst, proto, dport, ..
        } => lookup(*dst, dport.map(|p| (*proto, p))),
    }
}

/// Rewrites the Ethernet addresses and sends the frame toward the next hop.
#[inline(always)]
fn forward(ctx: &XdpContext, gate: &GateValue) -> u32 {
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: 12 bytes checked above.
    unsafe {
        core::ptr::write_unaligned(start as *mut [u8; 6], gate.dst_mac);
        core::ptr::write_unaligned((start + 6) as *mut [u8; 6], gate.src_mac);
    }
    if gate.ifindex == 0 {
        return xdp_action::XDP_TX;
    }
    // A missing devmap entry is a misconfiguration (or the interface is gone): drop rather
    // than loop the frame, and say so.
    match REDIRECT.redirect(gate.ifindex, xdp_action::XDP_DROP as u64) {
        Ok(v) => v,
        Err(v) => {
            if may_log(EVENT_REDIRECT_MISSING) {
                warn!(
                    ctx,
                    "forward dropped: interface {} is not a redirect target (gone?)", gate.ifindex
                );
            }
            v
        }
    }
}

/// Passes everything: the baseline the benchmark compares the gate with (on veth, attaching
/// any XDP program changes the receive path), and a receiver for frames redirected to a veth.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Egress counterpart of `xdp_pass` (benchmark baseline): no opinion on anything.
#[classifier]
pub fn tc_pass(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[classifier]
pub fn gate_egress(ctx: TcContext) -> i32 {
    let frame = SkbFrame::new(&ctx);
    let Some(pkt) = parse::parse(&frame) else {
        return TC_ACT_UNSPEC;
    };
    let Some((key, gate)) = egress_gate(&pkt) else {
        return TC_ACT_UNSPEC;
    };
    let bytes = ctx.len() as u64;
    let c = counters(&ctx, &key);
    if gate.action == Action::Closed as u8 {
        if let Some(c) = c {
            c.tx_drop_packets += 1;
            c.tx_drop_bytes += bytes;
        }
        return TC_ACT_SHOT;
    }
    if let Some(c) = c {
        c.tx_pass_packets += 1;
        c.tx_pass_bytes += bytes;
    }
    // Not TC_ACT_OK: leave the final say to whatever else runs on this hook.
    TC_ACT_UNSPEC
}

/// Sent traffic belongs to the gate of its source (the ARP sender, the NA target).
#[inline(always)]
fn egress_gate(pkt: &Packet) -> Option<(GateKey, GateValue)> {
    match pkt {
        Packet::Arp { sender, .. } => lookup(*sender, None),
        // An advertisement claims its target; a solicitation claims only its source.
        Packet::Neighbour {
            target,
            src,
            advert,
        } => {
            if *advert {
                if let Some(hit) = lookup(*target, None) {
                    if hit.1.action == Action::Closed as u8 {
                        return Some(hit);
                    }
                }
            }
            lookup(*src, None)
        }
        Packet::Ip {
            src, proto, sport, ..
        } => lookup(*src, sport.map(|p| (*proto, p))),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
