//! The contract between the data plane (`ebpf/gate`) and the agent: map layouts, map names,
//! pin paths. Both sides compile this one file, so a layout can never drift between them.
//!
//! Every type here is `#[repr(C)]` without implicit padding: the kernel hashes and copies keys
//! and values byte for byte, and an uninitialised padding byte would make equal keys differ.
#![no_std]

/// Layout version of the maps below. Stored in the pinned [`INFO_MAP`] at attach time; a
/// `takeover` that speaks another version refuses to reuse those pins instead of misreading them.
pub const ABI_VERSION: u32 = 2;

/// Map names. They are also the file names of the pinned maps (kernel limit: 15 bytes).
pub const GATES_MAP: &str = "GATES";
pub const COUNTERS_MAP: &str = "COUNTERS";
pub const REDIRECT_MAP: &str = "REDIRECT";
pub const INFO_MAP: &str = "INFO";
/// One per network namespace (shared by every interface's gate there): the agent's
/// [`Liveness`]. Pinned in the namespace's directory, not an interface's.
pub const LIVENESS_MAP: &str = "LIVENESS";
/// One per network namespace, beside [`LIVENESS_MAP`]: the ring of [`Heard`] heartbeats.
pub const HEARD_MAP: &str = "HEARD";
/// One per network namespace, beside [`LIVENESS_MAP`]: the agent's lease, slot 0, a `u64`:
/// until when (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) the gates marked [`FLAG_LEASED`] serve.
/// Memory-mapped by the agent (`BPF_F_MMAPABLE`), which renews it with a store, no system
/// call. Zero: lapsed. The exit tracepoint zeroes it when the agent dies unannounced.
pub const LEASE_MAP: &str = "LEASE";

/// Of the exit tracepoint's object, not pinned (it lives as long as the tracepoint's link):
/// per process the agent watches, the gate entries to write the moment it exits
/// ([`ExitPlanKey`] -> [`ExitPlan`]).
pub const EXIT_PLANS_MAP: &str = "EXIT_PLANS";
/// Plans per process (a service's ports on its addresses), and processes watched.
pub const MAX_PLANS_PER_PROCESS: u32 = 16;
pub const MAX_EXIT_PLANS: u32 = 4096;

/// Program names (the `fn` names in `ebpf/gate`).
pub const XDP_PROGRAM: &str = "gate_ingress";
pub const TC_PROGRAM: &str = "gate_egress";
/// Raw tracepoint on `sched_process_exit`: marks the agent dead in [`LIVENESS_MAP`].
pub const EXIT_PROGRAM: &str = "agent_exit";
/// A program that passes everything (benchmark baseline).
pub const PASS_PROGRAM: &str = "xdp_pass";
/// A classifier with no opinion on anything (benchmark baseline).
pub const TC_PASS_PROGRAM: &str = "tc_pass";

/// Where everything is pinned: `<PIN_ROOT>/<netns>/<iface>/`. Network namespaces share one
/// bpffs and may reuse interface names, so `<netns>` names the namespace by its cookie,
/// never reused (`netns-<cookie>`; `net-<inode>` before, and on kernels < 5.14).
pub const PIN_ROOT: &str = "/sys/fs/bpf/takeover";
/// Pinned bpf_link of the XDP program, inside the interface's pin directory.
pub const XDP_LINK_PIN: &str = "xdp_link";
/// Pinned tcx link of the egress classifier, inside the interface's pin directory.
pub const TC_LINK_PIN: &str = "tc_egress_link";
/// Pinned link of [`EXIT_PROGRAM`], in the namespace's pin directory.
pub const EXIT_LINK_PIN: &str = "exit_link";

/// Capacity of the gate table: addresses plus per-service entries.
pub const MAX_GATES: u32 = 65_536;
/// Capacity of the redirect device map (interfaces a `Forward` may leave through).
pub const MAX_REDIRECT_IFACES: u32 = 64;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// `GateKey::proto` for an address-wide entry.
pub const PROTO_ANY: u8 = 0;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Key of the gate table: a logical address, optionally narrowed to one service
/// (protocol + port). A service entry overrides the address entry for the traffic it matches.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GateKey {
    /// IPv4 in the first 4 bytes (rest zero), or IPv6; network byte order.
    pub addr: [u8; 16],
    /// Port in host byte order; 0 with `PROTO_ANY`.
    pub port: u16,
    /// `PROTO_ANY`, `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
}

impl GateKey {
    pub const fn v4(addr: [u8; 4]) -> Self {
        let mut a = [0u8; 16];
        a[0] = addr[0];
        a[1] = addr[1];
        a[2] = addr[2];
        a[3] = addr[3];
        Self {
            addr: a,
            port: 0,
            proto: PROTO_ANY,
            family: FAMILY_V4,
        }
    }

    pub const fn v6(addr: [u8; 16]) -> Self {
        Self {
            addr,
            port: 0,
            proto: PROTO_ANY,
            family: FAMILY_V6,
        }
    }

    /// The same address narrowed to one service.
    pub const fn service(self, proto: u8, port: u16) -> Self {
        Self {
            proto,
            port,
            ..self
        }
    }

    /// The address-wide key this (possibly per-service) key belongs to.
    pub const fn address(self) -> Self {
        Self {
            proto: PROTO_ANY,
            port: 0,
            ..self
        }
    }
}

/// What the gate does with a logical address's traffic.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// This host serves it: pass both ways.
    Open = 1,
    /// Another host serves it: drop it both ways, ARP and neighbour discovery included.
    Closed = 2,
    /// Another host serves it but the clients still send here: rewrite the Ethernet addresses
    /// and send the frame on (ingress). It claims nothing: ARP and neighbour discovery for
    /// the address are dropped both ways; IP from it leaves (replies to what came before).
    Forward = 3,
    /// Another host serves it and is about to hand it to this one: pass IP for it (what that
    /// host forwards once it lets go, and what clients then send here directly, having
    /// learnt this host's MAC from the neighbour requests its replies need) and the
    /// neighbour replies to those requests; let out this host's IP replies and those
    /// requests; nothing that answers for or announces the address. So a request the old host
    /// forwards before this one has heard that it let go is served, not dropped. (`src_mac`,
    /// the old host's MAC, is kept for `map show`.)
    Receive = 4,
}

impl Action {
    /// The word the CLI and the JSON use for this state.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Forward => "forward",
            Self::Receive => "receive",
        }
    }

    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Open),
            2 => Some(Self::Closed),
            3 => Some(Self::Forward),
            4 => Some(Self::Receive),
            _ => None,
        }
    }
}

/// `GateValue::action` of an address entry that only carries [`FLAG_SERVICES`]: the address
/// itself is not gated (its traffic passes untouched), only the services listed for it are.
pub const ACTION_NONE: u8 = 0;

/// `GateValue::flags` of an address entry: per-service entries exist for this address. The
/// data plane looks the address up first and the service only when this is set, so addresses
/// without services cost one lookup. The agent keeps it true: every service entry has an
/// address entry with this flag (with `ACTION_NONE` if the address has no verdict of its own).
pub const FLAG_SERVICES: u8 = 1;

/// `GateValue::flags`: this `Open` or `Receive` entry serves only while the namespace's lease
/// ([`LEASE_MAP`]) runs; once it has lapsed the entry acts as `Closed`, both ways (a dead,
/// hung or frozen agent's host stops serving by itself). Other actions ignore it.
pub const FLAG_LEASED: u8 = 2;

/// Value of the gate table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateValue {
    /// An [`Action`] as `u8`, or [`ACTION_NONE`] (a map value must accept any byte written).
    pub action: u8,
    /// [`FLAG_SERVICES`] on address entries.
    pub flags: u8,
    pub _pad: [u8; 2],
    /// `Forward`: interface to redirect to (must be in the redirect map), 0 = back out of the
    /// interface it came in on (XDP_TX).
    pub ifindex: u32,
    /// `Forward`: the next hop's MAC.
    pub dst_mac: [u8; 6],
    /// `Forward`: the MAC of the interface the frame leaves through. `Receive`: the MAC of
    /// the host handing over (the source of what it forwards).
    pub src_mac: [u8; 6],
}

impl GateValue {
    const EMPTY: Self = Self {
        action: ACTION_NONE,
        flags: 0,
        _pad: [0; 2],
        ifindex: 0,
        dst_mac: [0; 6],
        src_mac: [0; 6],
    };

    pub const fn new(action: Action) -> Self {
        Self {
            action: action as u8,
            ..Self::EMPTY
        }
    }

    /// Admit what the host with `from_mac` forwards (see [`Action::Receive`]).
    pub const fn receive(from_mac: [u8; 6]) -> Self {
        Self {
            action: Action::Receive as u8,
            src_mac: from_mac,
            ..Self::EMPTY
        }
    }

    pub const fn forward(ifindex: u32, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Self {
        Self {
            action: Action::Forward as u8,
            ifindex,
            dst_mac,
            src_mac,
            ..Self::EMPTY
        }
    }

    /// The placeholder address entry of an address that only has service entries.
    pub const fn services_only() -> Self {
        Self {
            flags: FLAG_SERVICES,
            ..Self::EMPTY
        }
    }

    pub const fn has_services(&self) -> bool {
        self.flags & FLAG_SERVICES != 0
    }

    /// The same entry, serving only while the lease runs (see [`FLAG_LEASED`]).
    pub const fn leased(self) -> Self {
        Self {
            flags: self.flags | FLAG_LEASED,
            ..self
        }
    }

    pub const fn is_leased(&self) -> bool {
        self.flags & FLAG_LEASED != 0
    }
}

/// Per-CPU counters of one gate entry, by direction and verdict. The agent sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_pass_packets: u64,
    pub rx_pass_bytes: u64,
    pub rx_drop_packets: u64,
    pub rx_drop_bytes: u64,
    pub rx_forward_packets: u64,
    pub rx_forward_bytes: u64,
    pub tx_pass_packets: u64,
    pub tx_pass_bytes: u64,
    pub tx_drop_packets: u64,
    pub tx_drop_bytes: u64,
}

impl Counters {
    /// Adds `other` field by field (summing per-CPU values).
    pub fn add(&mut self, other: &Self) {
        self.rx_pass_packets += other.rx_pass_packets;
        self.rx_pass_bytes += other.rx_pass_bytes;
        self.rx_drop_packets += other.rx_drop_packets;
        self.rx_drop_bytes += other.rx_drop_bytes;
        self.rx_forward_packets += other.rx_forward_packets;
        self.rx_forward_bytes += other.rx_forward_bytes;
        self.tx_pass_packets += other.tx_pass_packets;
        self.tx_pass_bytes += other.tx_pass_bytes;
        self.tx_drop_packets += other.tx_drop_packets;
        self.tx_drop_bytes += other.tx_drop_bytes;
    }
}

/// [`Liveness::state`]: no agent has registered (the kernel answers nothing).
pub const AGENT_NONE: u32 = 0;
/// The agent runs.
pub const AGENT_RUNNING: u32 = 1;
/// The agent is stopping for a restart (its peers were told): its exit is expected.
pub const AGENT_STOPPING: u32 = 2;
/// The agent's process exited without saying it would: set by the kernel at the exit.
pub const AGENT_EXITED: u32 = 3;

/// The peer protocol's magic and message kinds (`agent/src/core/wire.rs`): the data plane
/// recognises heartbeats by them and answers with an exit notice.
pub const WIRE_MAGIC: [u8; 4] = *b"TKOV";
pub const WIRE_KIND_HEARTBEAT: u8 = 1;
pub const WIRE_KIND_EXIT: u8 = 2;
/// A liveness probe, answered by the data plane itself (the kind byte set to
/// [`WIRE_KIND_PROBE_ANSWER`], sent back) while an agent is registered as running, however
/// stalled it is.
pub const WIRE_KIND_PROBE: u8 = 3;
pub const WIRE_KIND_PROBE_ANSWER: u8 = 4;

/// Length of the exit notice the kernel sends in the agent's name.
pub const NOTICE_LEN: usize = 32;

/// Kernel-assisted liveness: what the data plane knows of the agent in this namespace.
///
/// The agent registers its process here. When that process exits unannounced (a crash,
/// SIGKILL, the OOM killer), `agent_exit` sets `state` to [`AGENT_EXITED`] at once, and from
/// then on the XDP gate answers every peer heartbeat arriving on `port` with `notice`, sent
/// straight back (XDP_TX): the peers learn of the death within one heartbeat interval instead
/// of waiting out the dead time. `notice` (magic, version, kind, incarnation, a random token)
/// is written by the agent at start; peers hold a hash of the token from its authenticated
/// heartbeats, so only this kernel can tell them, and only once the agent is gone.
///
/// While an agent is registered as running ([`AGENT_RUNNING`]), the gate also answers peers'
/// probes on `port`: a live kernel answers in microseconds even when processes are stalled,
/// and a peer that gets answers while the agent stays silent knows it stuck, its gates' lease
/// renewed no more. A stopping agent's probes go unanswered: its lease runs over its restart,
/// which a peer that did not hear it say so must not take for a stall. While it runs, the
/// gate also takes the peers' heartbeats on `port` into the [`HEARD_MAP`] ring for it (see
/// [`Heard`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// The agent's process id (thread group id), as the kernel's root PID namespace sees it.
    pub tgid: u32,
    pub state: u32,
    /// UDP port (host order) of the agent's heartbeat sockets; 0 = answer nothing.
    pub port: u16,
    pub _pad: [u8; 6],
    pub notice: [u8; NOTICE_LEN],
}

/// Size of the [`HEARD_MAP`] ring: 180 heartbeats, 180 ms of one peer at 1 ms (18 of ten),
/// far more than one tick leaves in it; an agent stalled longer finds the rest on its socket.
/// Small, since the agent locks its memory and the ring is mapped twice.
pub const HEARD_RING_BYTES: u32 = 1 << 18;
/// The longest heartbeat the gate takes for the ring (the peer protocol's longest message);
/// a longer datagram goes on to the socket.
pub const HEARD_MAX: usize = 1400;

/// A peer's periodic heartbeat, taken off the wire by the XDP gate for the agent.
///
/// While an agent is registered and running, the gate takes every datagram to its `port`
/// that starts like a heartbeat (magic and kind; authenticity is the agent's to check) into
/// the [`HEARD_MAP`] ring, stamped with its arrival time, and drops the frame: the agent reads
/// the ring from shared memory once per tick, without a system call and without the network
/// stack's work for each datagram. The ring wakes no one (the agent does not sleep on it); if
/// it is full, the datagram goes on to the agent's socket as before.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heard {
    /// Arrival, `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub stamp_ns: u64,
    /// Sender and receiver IP addresses: IPv4 in the first four bytes (`v6` == 0).
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Sender's UDP port, host order.
    pub sport: u16,
    /// Bytes of `data` that hold the datagram.
    pub len: u16,
    pub v6: u8,
    pub _pad: [u8; 3],
    pub data: [u8; HEARD_MAX],
}

/// Key of [`EXIT_PLANS_MAP`]: a process (thread group id) and the plan's number, from 0,
/// without gaps (the tracepoint reads them in order and stops at the first missing one).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExitPlanKey {
    pub tgid: u32,
    pub index: u32,
}

/// What to write in the gate table when that process exits: a service's entry, turned to
/// forward its traffic to a peer's instance before the agent has even heard of the exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitPlan {
    pub key: GateKey,
    pub value: GateValue,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, `#[repr(C)]`, no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::GateKey {}
    unsafe impl aya::Pod for super::GateValue {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::Liveness {}
    unsafe impl aya::Pod for super::Heard {}
    unsafe impl aya::Pod for super::ExitPlanKey {}
    unsafe impl aya::Pod for super::ExitPlan {}
}

// The layouts are part of the ABI: fail the build if one changes by accident.
const _: () = assert!(core::mem::size_of::<GateKey>() == 20);
const _: () = assert!(core::mem::size_of::<GateValue>() == 20);
const _: () = assert!(core::mem::size_of::<Counters>() == 80);
const _: () = assert!(core::mem::size_of::<Liveness>() == 48);
const _: () = assert!(core::mem::size_of::<ExitPlanKey>() == 8);
const _: () = assert!(core::mem::size_of::<ExitPlan>() == 40);
const _: () = assert!(core::mem::size_of::<Heard>() == 48 + HEARD_MAX);
