//! The gate: the patent's virtual LAN interface manager (803), both directions.
//!
//! `gate_ingress` (XDP) decides what a host receives for a logical address, `gate_egress`
//! (TC) what it sends from one. Both read the same `GATES` table, written only by the agent.
//! Traffic that concerns no logical address passes untouched and is not counted.
#![no_std]
#![no_main]

mod parse;

use aya_ebpf::{
    bindings::{xdp_action, BPF_RB_NO_WAKEUP, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_xdp_load_bytes},
    macros::{classifier, map, raw_tracepoint, xdp},
    maps::{Array, DevMapHash, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{RawTracePointContext, TcContext, XdpContext},
    EbpfContext,
};
use aya_log_ebpf::warn;
use takeover_common::{
    Action, Counters, ExitPlan, ExitPlanKey, GateKey, GateValue, Heard, Liveness, ACTION_NONE,
    AGENT_EXITED, AGENT_NONE, AGENT_RUNNING, FLAG_LEASED, FLAG_SERVICES, HEARD_MAX,
    HEARD_RING_BYTES, MAX_EXIT_PLANS, MAX_GATES, MAX_PLANS_PER_PROCESS, MAX_REDIRECT_IFACES,
    NOTICE_LEN, PROTO_UDP, WIRE_KIND_HEARTBEAT, WIRE_KIND_PROBE, WIRE_KIND_PROBE_ANSWER,
    WIRE_MAGIC,
};

use parse::{Frame, Packet, SkbFrame, XdpFrame};

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

/// Slot 0: the agent of this network namespace (see `takeover_common::Liveness`). Shared by
/// every interface's gate and by `agent_exit`: the agent pins it per namespace.
#[map(name = "EXIT_PLANS")]
static EXIT_PLANS: HashMap<ExitPlanKey, ExitPlan> = HashMap::with_max_entries(MAX_EXIT_PLANS, 0);

#[map(name = "LIVENESS")]
static LIVENESS: Array<Liveness> = Array::pinned(1, 0);

/// Slot 0: the agent's lease (see `takeover_common::LEASE_MAP`); pinned beside `LIVENESS`,
/// memory-mapped by the agent.
#[map(name = "LEASE")]
static LEASE: Array<u64> = Array::pinned(1, BPF_F_MMAPABLE);

/// `BPF_F_MMAPABLE` (uapi `linux/bpf.h`).
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Has the namespace's lease lapsed? (No lease map entry: lapsed.)
#[inline(always)]
fn lease_lapsed() -> bool {
    match LEASE.get(0) {
        Some(until) => (unsafe { bpf_ktime_get_ns() }) >= *until,
        None => true,
    }
}

/// Peers' heartbeats for the agent of this namespace (see `takeover_common::Heard`); pinned
/// beside `LIVENESS`.
#[map(name = "HEARD")]
static HEARD: RingBuf = RingBuf::pinned(HEARD_RING_BYTES, 0);

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
                return Some((skey, unleased(*v)));
            }
        }
    }
    if addr.action == ACTION_NONE {
        return None;
    }
    Some((key, unleased(addr)))
}

/// A leased entry that serves (`Open`, `Receive`) acts as `Closed` once the lease lapsed.
#[inline(always)]
fn unleased(mut v: GateValue) -> GateValue {
    if v.flags & FLAG_LEASED != 0
        && (v.action == Action::Open as u8 || v.action == Action::Receive as u8)
        && lease_lapsed()
    {
        v.action = Action::Closed as u8;
    }
    v
}

#[xdp]
pub fn gate_ingress(ctx: XdpContext) -> u32 {
    let frame = XdpFrame::new(&ctx);
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let Some(pkt) = parse::parse(&frame) else {
        return xdp_action::XDP_PASS;
    };
    if let Packet::Ip {
        proto: PROTO_UDP,
        dport: Some(port),
        ..
    } = pkt
    {
        if let Some((live, at)) = agent_at(port).zip(peer_udp(&frame)) {
            if answer_peer(&frame, live, at).is_some() {
                return xdp_action::XDP_TX;
            }
            if take_heartbeat(&ctx, &frame, live, at).is_some() {
                return xdp_action::XDP_DROP;
            }
        }
    }
    let Some((key, gate)) = ingress_gate(&pkt) else {
        return xdp_action::XDP_PASS;
    };
    let c = counters(&ctx, &key);
    // Receiving: IP for the address passes (what the handing-over host forwards, and what
    // clients send here directly once this host's own neighbour requests, made to answer
    // that, taught them its MAC: the old host has let go by then), and so do the ARP replies
    // to those requests. Requests for the address do not: this host claims nothing yet.
    let received = gate.action == Action::Receive as u8
        && match pkt {
            // A reply (or an announcement of the old server's): this host's stack only
            // learns from it; whatever it would send for the address in answer is dropped
            // on the way out.
            Packet::Arp { asks, .. } => !asks,
            Packet::Neighbour { .. } => false,
            Packet::Ip { .. } => true,
        };
    match Action::from_u8(gate.action) {
        Some(Action::Closed) | Some(Action::Receive) if !received => {
            if let Some(c) = c {
                c.rx_drop_packets += 1;
                c.rx_drop_bytes += bytes;
            }
            xdp_action::XDP_DROP
        }
        // A forwarding host claims nothing (invariant 6): ARP and neighbour discovery for the
        // address are dropped, so a client that resolves it afresh finds only its server;
        // what still arrives from clients with an old entry is sent on.
        Some(Action::Forward) if pkt.is_neighbour() => {
            if let Some(c) = c {
                c.rx_drop_packets += 1;
                c.rx_drop_bytes += bytes;
            }
            xdp_action::XDP_DROP
        }
        Some(Action::Forward) => {
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

/// The registered agent of this namespace, if it listens on `port`.
#[inline(always)]
fn agent_at(port: u16) -> Option<&'static Liveness> {
    let live = LIVENESS.get(0)?;
    (live.state != AGENT_NONE && live.port == port && port != 0).then_some(live)
}

/// Answers a peer in the agent's name, turning the frame around (the caller sends it with
/// XDP_TX): a heartbeat to an agent that died unannounced gets the agent's exit notice; a
/// probe to an agent registered as running (stalled or not) gets its answer (headers where
/// `peer_udp` found them).
/// Nothing is written before the payload has been read: the frame is then long enough for
/// every write.
#[inline(always)]
fn answer_peer(f: &XdpFrame, live: &Liveness, (ip, ip_len, l4): PeerUdp) -> Option<()> {
    let payload = l4 + 8;
    let head = f.read::<[u8; NOTICE_LEN]>(payload)?;
    if head[..4] != WIRE_MAGIC {
        return None;
    }
    let reply = if head[5] == WIRE_KIND_HEARTBEAT && live.state == AGENT_EXITED {
        live.notice
    } else if head[5] == WIRE_KIND_PROBE && live.state == AGENT_RUNNING {
        let mut r = head;
        r[5] = WIRE_KIND_PROBE_ANSWER;
        r
    } else {
        return None;
    };
    let macs = f.read::<[u8; 12]>(0)?;
    let udp = f.read::<[u8; 8]>(l4)?;
    // Back to the sender: swap the Ethernet, IP and UDP sources and destinations. The IP
    // header checksum stays valid (a ones-complement sum does not depend on the order).
    let mut m = [0u8; 12];
    m[..6].copy_from_slice(&macs[6..]);
    m[6..].copy_from_slice(&macs[..6]);
    f.write(0, m)?;
    if ip_len == 4 {
        let a = f.read::<[u8; 8]>(ip)?;
        f.write(ip, [a[4], a[5], a[6], a[7], a[0], a[1], a[2], a[3]])?;
    } else {
        let a = f.read::<[u8; 32]>(ip)?;
        let mut b = [0u8; 32];
        b[..16].copy_from_slice(&a[16..]);
        b[16..].copy_from_slice(&a[..16]);
        f.write(ip, b)?;
    }
    let checksum = if ip_len == 4 {
        // IPv4 allows "no checksum"; the heartbeat's may be a partial one (checksum offload
        // of a local sender), which no update could mend.
        [0, 0]
    } else {
        // IPv6 requires one: update it for the bytes replaced.
        let mut sum = (!u16::from_be_bytes([udp[6], udp[7]])) as u32;
        let mut i = 0;
        while i < NOTICE_LEN {
            sum += (!u16::from_be_bytes([head[i], head[i + 1]])) as u32;
            sum += u16::from_be_bytes([reply[i], reply[i + 1]]) as u32;
            i += 2;
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        match !(sum as u16) {
            0 => [0xff, 0xff],
            c => c.to_be_bytes(),
        }
    };
    f.write(
        l4,
        [
            udp[2],
            udp[3],
            udp[0],
            udp[1],
            udp[4],
            udp[5],
            checksum[0],
            checksum[1],
        ],
    )?;
    f.write(payload, reply)
}

/// Offsets in a peer's datagram: its source IP address, that address's length (the
/// destination follows), its UDP header.
type PeerUdp = (usize, usize, usize);

/// Where a peer's datagram has its IP addresses (offset and length of the source; the
/// destination follows) and its UDP header, for the shapes the agents send: untagged, IPv4
/// without options or IPv6 without extension headers.
#[inline(always)]
fn peer_udp(f: &XdpFrame) -> Option<PeerUdp> {
    match f.read::<[u8; 2]>(12)? {
        [0x08, 0x00] => {
            let [version_ihl, _] = f.read::<[u8; 2]>(14)?;
            if version_ihl != 0x45 {
                return None;
            }
            Some((26, 4, 34))
        }
        [0x86, 0xdd] => {
            let [_, _, _, _, _, _, next, _] = f.read::<[u8; 8]>(14)?;
            if next != PROTO_UDP {
                return None;
            }
            Some((22, 16, 54))
        }
        _ => None,
    }
}

/// Takes a peer's heartbeat to the agent's port into the `HEARD` ring, if the agent runs (the
/// caller drops the frame). `None` leaves the frame to the network stack: no running agent, not a
/// heartbeat, too long, or the ring is full.
#[inline(always)]
fn take_heartbeat(
    ctx: &XdpContext,
    f: &XdpFrame,
    live: &Liveness,
    (ip, ip_len, l4): PeerUdp,
) -> Option<()> {
    if live.state != AGENT_RUNNING {
        return None;
    }
    let payload = l4 + 8;
    let head = f.read::<[u8; 6]>(payload)?;
    if head[..4] != WIRE_MAGIC || head[5] != WIRE_KIND_HEARTBEAT {
        return None;
    }
    let [sport_hi, sport_lo, _, _, len_hi, len_lo] = f.read::<[u8; 6]>(l4)?;
    let len = (u16::from_be_bytes([len_hi, len_lo]) as usize).checked_sub(8)?;
    if len == 0 || len > HEARD_MAX {
        return None;
    }
    let mut entry = HEARD.reserve::<Heard>(0)?;
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` is the reserved record (size_of::<Heard>() bytes); `len` is at most
    // HEARD_MAX, the size of `data`; the helper checks the frame's bounds.
    let copied = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            payload as u32,
            core::ptr::addr_of_mut!((*rec).data).cast(),
            len as u32,
        )
    };
    let addrs = if ip_len == 4 {
        let a = f.read::<[u8; 8]>(ip);
        a.map(|a| {
            let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
            s[..4].copy_from_slice(&a[..4]);
            d[..4].copy_from_slice(&a[4..]);
            (s, d)
        })
    } else {
        f.read::<[[u8; 16]; 2]>(ip).map(|[s, d]| (s, d))
    };
    let (Some((src, dst)), 0) = (addrs, copied) else {
        entry.discard(0);
        return None;
    };
    // SAFETY: writes within the reserved record.
    unsafe {
        (*rec).stamp_ns = bpf_ktime_get_ns();
        (*rec).src = src;
        (*rec).dst = dst;
        (*rec).sport = u16::from_be_bytes([sport_hi, sport_lo]);
        (*rec).len = len as u16;
        (*rec).v6 = (ip_len == 16) as u8;
        (*rec)._pad = [0; 3];
    }
    // The agent reads the ring at its tick: no wake-up.
    entry.submit(BPF_RB_NO_WAKEUP as u64);
    Some(())
}

/// `sched_process_exit`: the registered agent's main thread is exiting. Unless the agent said
/// it was stopping (a planned restart), mark it dead, for `exit_notice`. A service's process
/// exiting: its exit plans go into the gate table now, at the start of its exit, before its
/// files are closed and long before the agent hears of it.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn agent_exit(_ctx: RawTracePointContext) -> i32 {
    let id = bpf_get_current_pid_tgid();
    let (tgid, pid) = ((id >> 32) as u32, id as u32);
    if pid == tgid {
        for index in 0..MAX_PLANS_PER_PROCESS {
            // SAFETY: a map value, copied out at once.
            let Some(plan) = (unsafe { EXIT_PLANS.get(&ExitPlanKey { tgid, index }) }).copied()
            else {
                break;
            };
            let _ = GATES.insert(&plan.key, &plan.value, 0);
            // Once: a later process given the same pid (the agent dead, say) is not this one.
            let _ = EXIT_PLANS.remove(&ExitPlanKey { tgid, index });
        }
    }
    if let Some(live) = LIVENESS.get_ptr_mut(0) {
        // SAFETY: a map value; a racing writer can only be the agent registering anew.
        unsafe {
            if (*live).tgid != 0
                && (*live).tgid == tgid
                && pid == tgid
                && (*live).state == AGENT_RUNNING
            {
                // Its gates close now, before the state that makes the gates send its exit
                // notice: the notice proves them closed.
                if let Some(lease) = LEASE.get_ptr_mut(0) {
                    *lease = 0;
                }
                (*live).state = AGENT_EXITED;
            }
        }
    }
    0
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
    let passes_receiving = match pkt {
        Packet::Ip { .. } => true,
        Packet::Arp { asks, .. } => asks,
        Packet::Neighbour { advert, .. } => !advert,
    };
    let Some((key, gate)) = egress_gate(&pkt) else {
        return TC_ACT_UNSPEC;
    };
    let bytes = ctx.len() as u64;
    let c = counters(&ctx, &key);
    // Receiving: the replies to what is forwarded leave, and the neighbour requests they
    // need (the clients' MACs); nothing that claims the address (ARP replies, gratuitous
    // ARP, NA).
    // Forwarding: the host's replies to what it received before it let go leave; nothing
    // that claims the address (any ARP with it as sender, NS from it, NA for it).
    let shut = gate.action == Action::Closed as u8
        || (gate.action == Action::Receive as u8 && !passes_receiving)
        || (gate.action == Action::Forward as u8 && !matches!(pkt, Packet::Ip { .. }));
    if shut {
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
                    if hit.1.action == Action::Closed as u8
                        || hit.1.action == Action::Receive as u8
                        || hit.1.action == Action::Forward as u8
                    {
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
