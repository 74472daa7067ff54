//! The data plane on crafted frames, through BPF_PROG_TEST_RUN: no network needed.
//!
//! Each test loads its own copy of the gate programs (maps pinned in a directory of its own)
//! and runs them on frames built here, checking the verdict, the rewritten bytes and the
//! counters the agent reads back.
use std::net::{IpAddr, SocketAddr};

use aya::{
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use takeover::{
    dataplane::{Gates, Service, Target, OBJECT},
    sys::bpffs,
};
use takeover_common::{Action, GateValue, TC_PROGRAM, XDP_PROGRAM};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
/// TC_ACT_UNSPEC (-1): no opinion, the packet goes on.
const TC_PASS: u32 = u32::MAX;
const TC_SHOT: u32 = 2;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
const CLIENT4: [u8; 4] = [192, 0, 2, 1];
const LOGICAL4: [u8; 4] = [192, 0, 2, 100];
const OTHER4: [u8; 4] = [192, 0, 2, 2];
const CLIENT6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const LOGICAL6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x64,
];
const LINK_LOCAL6: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// One loaded copy of the gate, with its maps in a pin directory removed on drop.
struct Gate {
    ebpf: Ebpf,
    gates: Gates,
    pins: std::path::PathBuf,
}

impl Gate {
    fn load() -> Self {
        bpffs::ensure_mounted().unwrap();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let pins = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/takeover-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&pins).unwrap();
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pins)
            .load(OBJECT)
            .unwrap();
        let xdp: &mut Xdp = ebpf.program_mut(XDP_PROGRAM).unwrap().try_into().unwrap();
        xdp.load().unwrap();
        let tc: &mut SchedClassifier = ebpf.program_mut(TC_PROGRAM).unwrap().try_into().unwrap();
        tc.load().unwrap();
        let gates = Gates::from_ebpf(&mut ebpf).unwrap();
        Self { ebpf, gates, pins }
    }

    fn set(&mut self, addr: IpAddr, service: Option<&str>, value: GateValue) {
        self.gates.set(&target(addr, service), value).unwrap();
    }

    fn ingress(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let xdp: &Xdp = self.ebpf.program(XDP_PROGRAM).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let r = xdp
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .unwrap();
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn egress(&self, frame: &[u8]) -> u32 {
        self.try_egress(frame).unwrap()
    }

    fn try_egress(&self, frame: &[u8]) -> Result<u32, aya::programs::ProgramError> {
        let tc: &SchedClassifier = self.ebpf.program(TC_PROGRAM).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        tc.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .map(|r| r.return_value)
    }

    fn counters(&self, addr: IpAddr, service: Option<&str>) -> takeover_common::Counters {
        self.gates.counters(&target(addr, service)).unwrap()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

fn target(addr: IpAddr, service: Option<&str>) -> Target {
    Target::new(addr, service.map(|s| s.parse::<Service>().unwrap()))
}

fn v4(a: [u8; 4]) -> IpAddr {
    IpAddr::from(a)
}

fn v6(a: [u8; 16]) -> IpAddr {
    IpAddr::from(a)
}

fn open() -> GateValue {
    GateValue::new(Action::Open)
}

fn closed() -> GateValue {
    GateValue::new(Action::Closed)
}

// ---- frame builders -------------------------------------------------------------------

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Inserts an 802.1Q tag (VLAN `id`) after the MAC addresses.
fn tagged(frame: &[u8], id: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&0x8100u16.to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let sum = !checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = sport.to_be_bytes().to_vec();
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

fn tcp(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = sport.to_be_bytes().to_vec();
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    h
}

fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    eth(
        SERVER_MAC,
        CLIENT_MAC,
        0x0800,
        &ipv4(src, dst, 17, &udp(sport, dport, b"hello")),
    )
}

fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    eth(
        SERVER_MAC,
        CLIENT_MAC,
        0x0800,
        &ipv4(src, dst, 6, &tcp(sport, dport)),
    )
}

fn udp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
    eth(
        SERVER_MAC,
        CLIENT_MAC,
        0x86dd,
        &ipv6(src, dst, 17, &udp(sport, dport, b"hello")),
    )
}

/// ARP (op 1 request, 2 reply) from `sender` asking for / answering about `target`.
fn arp(op: u16, sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&CLIENT_MAC);
    a.extend_from_slice(&sender);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target);
    eth([0xff; 6], CLIENT_MAC, 0x0806, &a)
}

/// ICMPv6 neighbour solicitation (135) or advertisement (136) about `target`.
fn nd(icmp_type: u8, src: [u8; 16], dst: [u8; 16], target: [u8; 16]) -> Vec<u8> {
    let mut m = vec![icmp_type, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&target);
    eth(
        [0x33, 0x33, 0, 0, 0, 1],
        CLIENT_MAC,
        0x86dd,
        &ipv6(src, dst, 58, &m),
    )
}

const SOLICITED_NODE: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0x64];

// ---- ingress --------------------------------------------------------------------------

#[test]
fn unknown_address_passes_untouched_and_uncounted() {
    let g = Gate::load();
    let frame = udp4(CLIENT4, OTHER4, 1000, 53);
    let (verdict, out) = g.ingress(&frame);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, frame);
    assert_eq!(g.gates.entries().unwrap(), vec![]);
    assert_eq!(g.counters(v4(OTHER4), None), Default::default());
}

#[test]
fn open_address_passes_and_is_counted() {
    let mut g = Gate::load();
    g.set(v4(LOGICAL4), None, open());
    let frame = udp4(CLIENT4, LOGICAL4, 1000, 53);
    for _ in 0..3 {
        assert_eq!(g.ingress(&frame).0, XDP_PASS);
    }
    let c = g.counters(v4(LOGICAL4), None);
    assert_eq!(
        (c.rx_pass_packets, c.rx_pass_bytes),
        (3, 3 * frame.len() as u64)
    );
    assert_eq!(c.rx_drop_packets, 0);
}

#[test]
fn closed_address_drops_udp_tcp_and_icmp() {
    let mut g = Gate::load();
    g.set(v4(LOGICAL4), None, closed());
    let icmp = eth(
        SERVER_MAC,
        CLIENT_MAC,
        0x0800,
        &ipv4(CLIENT4, LOGICAL4, 1, &[8, 0, 0, 0, 0, 1, 0, 1]),
    );
    for frame in [
        udp4(CLIENT4, LOGICAL4, 1000, 53),
        tcp4(CLIENT4, LOGICAL4, 40000, 80),
        icmp,
    ] {
        assert_eq!(g.ingress(&frame).0, XDP_DROP);
    }
    assert_eq!(g.counters(v4(LOGICAL4), None).rx_drop_packets, 3);
    // The host's own address is not affected.
    assert_eq!(g.ingress(&udp4(CLIENT4, OTHER4, 1000, 53)).0, XDP_PASS);
}

#[test]
fn arp_for_a_closed_address_is_dropped_and_for_others_passes() {
    let mut g = Gate::load();
    g.set(v4(LOGICAL4), None, closed());
    assert_eq!(
        g.ingress(&arp(1, CLIENT4, LOGICAL4)).0,
        XDP_DROP,
        "request for closed"
    );
    assert_eq!(
        g.ingress(&arp(2, CLIENT4, LOGICAL4)).0,
        XDP_DROP,
        "reply to closed"
    );
    assert_eq!(
        g.ingress(&arp(1, CLIENT4, OTHER4)).0,
        XDP_PASS,
        "request for unknown"
    );
    // A gratuitous ARP by the new owner names the address as target too: dropped here, which
    // is right, since this host must not learn anything about an address it does not serve.
    assert_eq!(g.counters(v4(LOGICAL4), None).rx_drop_packets, 2);
    g.set(v4(LOGICAL4), None, open());
    assert_eq!(
        g.ingress(&arp(1, CLIENT4, LOGICAL4)).0,
        XDP_PASS,
        "request for open"
    );
}

#[test]
fn ipv6_closed_address_and_its_neighbour_discovery_are_dropped() {
    let mut g = Gate::load();
    g.set(v6(LOGICAL6), None, closed());
    assert_eq!(g.ingress(&udp6(CLIENT6, LOGICAL6, 1000, 53)).0, XDP_DROP);
    assert_eq!(
        g.ingress(&nd(135, CLIENT6, SOLICITED_NODE, LOGICAL6)).0,
        XDP_DROP,
        "NS"
    );
    assert_eq!(
        g.ingress(&nd(136, CLIENT6, LOGICAL6, LOGICAL6)).0,
        XDP_DROP,
        "NA"
    );
    assert_eq!(
        g.ingress(&nd(135, CLIENT6, SOLICITED_NODE, CLIENT6)).0,
        XDP_PASS,
        "NS for another"
    );
    assert_eq!(g.counters(v6(LOGICAL6), None).rx_drop_packets, 3);
    g.set(v6(LOGICAL6), None, open());
    assert_eq!(
        g.ingress(&nd(135, CLIENT6, SOLICITED_NODE, LOGICAL6)).0,
        XDP_PASS
    );
    assert_eq!(g.ingress(&udp6(CLIENT6, LOGICAL6, 1000, 53)).0, XDP_PASS);
}

#[test]
fn ipv6_extension_headers_are_walked_to_the_ports() {
    let mut g = Gate::load();
    g.set(v6(LOGICAL6), None, closed());
    g.set(v6(LOGICAL6), Some("udp/53"), open());
    // Hop-by-hop options (8 bytes) then UDP to port 53: the service entry applies.
    let mut hbh = vec![17, 0, 1, 4, 0, 0, 0, 0];
    hbh.extend_from_slice(&udp(1000, 53, b"x"));
    let frame = eth(
        SERVER_MAC,
        CLIENT_MAC,
        0x86dd,
        &ipv6(CLIENT6, LOGICAL6, 0, &hbh),
    );
    assert_eq!(g.ingress(&frame).0, XDP_PASS);
    // A non-first fragment has no ports: the address entry applies.
    let mut frag = vec![17, 0, 0x00, 0x10, 0, 0, 0, 1];
    frag.extend_from_slice(b"later bytes");
    let frame = eth(
        SERVER_MAC,
        CLIENT_MAC,
        0x86dd,
        &ipv6(CLIENT6, LOGICAL6, 44, &frag),
    );
    assert_eq!(g.ingress(&frame).0, XDP_DROP);
}

#[test]
fn vlan_tagged_frames_are_gated_like_untagged_ones() {
    let mut g = Gate::load();
    g.set(v4(LOGICAL4), None, closed());
    g.set(v6(LOGICAL6), None, open());
    assert_eq!(
        g.ingress(&tagged(&udp4(CLIENT4, LOGICAL4, 1, 2), 42)).0,
        XDP_DROP
    );
    assert_eq!(
        g.ingress(&tagged(&arp(1, CLIENT4, LOGICAL4), 42)).0,
        XDP_DROP
    );
    assert_eq!(
        g.ingress(&tagged(&udp6(CLIENT6, LOGICAL6, 1, 2), 7)).0,
        XDP_PASS
    );
    assert_eq!(
        g.ingress(&tagged(&udp4(CLIENT4, OTHER4, 1, 2), 42)).0,
        XDP_PASS
    );
    assert_eq!(g.counters(v4(LOGICAL4), None).rx_drop_packets, 2);
    assert_eq!(g.counters(v6(LOGICAL6), None).rx_pass_packets, 1);
}

#[test]
fn service_entry_overrides_the_address_entry() {
    let mut g = Gate::load();
    // Closed address with one open service (the rest of the host moved away)...
    g.set(v4(LOGICAL4), None, closed());
    g.set(v4(LOGICAL4), Some("udp/53"), open());
    assert_eq!(g.ingress(&udp4(CLIENT4, LOGICAL4, 1000, 53)).0, XDP_PASS);
    assert_eq!(g.ingress(&udp4(CLIENT4, LOGICAL4, 1000, 54)).0, XDP_DROP);
    assert_eq!(
        g.ingress(&tcp4(CLIENT4, LOGICAL4, 1000, 53)).0,
        XDP_DROP,
        "tcp/53 is not udp/53"
    );
    // ...and an open address with one closed service (one service failed).
    g.set(v4(LOGICAL4), None, open());
    g.set(v4(LOGICAL4), Some("tcp/80"), closed());
    assert_eq!(g.ingress(&tcp4(CLIENT4, LOGICAL4, 40000, 80)).0, XDP_DROP);
    assert_eq!(g.ingress(&tcp4(CLIENT4, LOGICAL4, 40000, 81)).0, XDP_PASS);
    assert_eq!(g.counters(v4(LOGICAL4), Some("udp/53")).rx_pass_packets, 1);
    assert_eq!(g.counters(v4(LOGICAL4), Some("tcp/80")).rx_drop_packets, 1);
    // Counted under the entry that decided.
    let addr = g.counters(v4(LOGICAL4), None);
    assert_eq!((addr.rx_drop_packets, addr.rx_pass_packets), (2, 1));
}

#[test]
fn forward_rewrites_the_macs_and_transmits() {
    let mut g = Gate::load();
    g.set(
        v4(LOGICAL4),
        None,
        GateValue::forward(0, PEER_MAC, SERVER_MAC),
    );
    let frame = udp4(CLIENT4, LOGICAL4, 1000, 53);
    let (verdict, out) = g.ingress(&frame);
    assert_eq!(verdict, XDP_TX);
    assert_eq!(&out[0..6], &PEER_MAC, "destination is the next hop");
    assert_eq!(
        &out[6..12],
        &SERVER_MAC,
        "source is the interface it leaves by"
    );
    assert_eq!(&out[12..], &frame[12..], "nothing else changes");
    let c = g.counters(v4(LOGICAL4), None);
    assert_eq!(
        (c.rx_forward_packets, c.rx_forward_bytes),
        (1, frame.len() as u64)
    );
    // A forwarding host claims nothing (invariant 6): ARP and neighbour discovery for the
    // address never reach its stack, so a client resolving it afresh finds only the server.
    assert_eq!(
        g.ingress(&arp(1, CLIENT4, LOGICAL4)).0,
        XDP_DROP,
        "ARP request"
    );
    assert_eq!(
        g.ingress(&arp(2, CLIENT4, LOGICAL4)).0,
        XDP_DROP,
        "ARP reply"
    );
    g.set(
        v6(LOGICAL6),
        None,
        GateValue::forward(0, PEER_MAC, SERVER_MAC),
    );
    assert_eq!(
        g.ingress(&nd(135, CLIENT6, SOLICITED_NODE, LOGICAL6)).0,
        XDP_DROP,
        "neighbour solicitation"
    );
    assert_eq!(g.ingress(&udp6(CLIENT6, LOGICAL6, 1000, 53)).0, XDP_TX);
}

/// A frame as the handing-over host forwards it: to this host, from that host's MAC.
fn forwarded(frame: &[u8], from: [u8; 6]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[0..6].copy_from_slice(&SERVER_MAC);
    f[6..12].copy_from_slice(&from);
    f
}

#[test]
fn receive_passes_the_arp_replies_its_own_requests_need_and_nothing_that_claims() {
    let mut g = Gate::load();
    g.set(v4(LOGICAL4), None, GateValue::receive(PEER_MAC));
    // The new server asked a client's MAC (sender: the address): the client's answer passes,
    // or its replies to what is forwarded would wait for the next ARP retry (a second).
    assert_eq!(g.ingress(&arp(2, CLIENT4, LOGICAL4)).0, XDP_PASS, "reply");
    // Someone asking for the address does not reach this host's stack; whatever it would
    // say for the address (a reply, an announcement) does not leave it.
    assert_eq!(g.ingress(&arp(1, CLIENT4, LOGICAL4)).0, XDP_DROP, "request");
    assert_eq!(g.egress(&arp(2, LOGICAL4, CLIENT4)), TC_SHOT, "its answer");
    assert_eq!(
        g.egress(&arp(1, LOGICAL4, LOGICAL4)),
        TC_SHOT,
        "its announcement"
    );
}

#[test]
fn receive_passes_ip_for_the_address_and_claims_nothing() {
    let mut g = Gate::load();
    g.set(v4(LOGICAL4), None, GateValue::receive(PEER_MAC));
    g.set(v6(LOGICAL6), None, GateValue::receive(PEER_MAC));
    let request = udp4(CLIENT4, LOGICAL4, 1000, 53);
    let (verdict, out) = g.ingress(&forwarded(&request, PEER_MAC));
    assert_eq!(
        verdict, XDP_PASS,
        "forwarded by the old server: served here"
    );
    assert_eq!(out, forwarded(&request, PEER_MAC), "untouched");
    let v6_request = udp6(CLIENT6, LOGICAL6, 1000, 53);
    assert_eq!(g.ingress(&forwarded(&v6_request, PEER_MAC)).0, XDP_PASS);
    // Straight from a client: it learnt this host's MAC from the ARP request this host made
    // to answer what the old server forwarded (so the old server has let go). Dropping it
    // would lose a request in the moment before this host opens.
    assert_eq!(g.ingress(&request).0, XDP_PASS, "from the client itself");
    // Nothing that would claim or resolve the address, even from the old server's MAC.
    let mut ask = arp(1, CLIENT4, LOGICAL4);
    ask[6..12].copy_from_slice(&PEER_MAC);
    assert_eq!(g.ingress(&ask).0, XDP_DROP, "ARP for it");
    assert_eq!(
        g.ingress(&forwarded(
            &nd(135, CLIENT6, SOLICITED_NODE, LOGICAL6),
            PEER_MAC
        ))
        .0,
        XDP_DROP,
        "NS for it"
    );
    let c = g.counters(v4(LOGICAL4), None);
    assert_eq!((c.rx_pass_packets, c.rx_drop_packets), (2, 1));
    // The replies leave, and the requests for the clients' MACs they need (the kernel asks
    // from the address it replies from); an ARP reply, a gratuitous ARP or an NA, which
    // would claim the address, does not.
    assert_eq!(g.egress(&udp4(LOGICAL4, CLIENT4, 53, 1000)), TC_PASS);
    assert_eq!(g.egress(&udp6(LOGICAL6, CLIENT6, 53, 1000)), TC_PASS);
    assert_eq!(
        g.egress(&arp(1, LOGICAL4, CLIENT4)),
        TC_PASS,
        "who has the client"
    );
    assert_eq!(
        g.egress(&nd(135, LOGICAL6, SOLICITED_NODE, CLIENT6)),
        TC_PASS,
        "NS for the client"
    );
    assert_eq!(g.egress(&arp(2, LOGICAL4, CLIENT4)), TC_SHOT, "ARP reply");
    assert_eq!(g.egress(&arp(1, LOGICAL4, LOGICAL4)), TC_SHOT, "gratuitous");
    assert_eq!(
        g.egress(&nd(136, LINK_LOCAL6, CLIENT6, LOGICAL6)),
        TC_SHOT,
        "NA"
    );
    assert_eq!(
        g.egress(&nd(136, LOGICAL6, CLIENT6, LOGICAL6)),
        TC_SHOT,
        "NA"
    );
}

#[test]
fn forward_via_another_interface_redirects_through_the_devmap() {
    let mut g = Gate::load();
    let lo = 1; // loopback: any existing ifindex will do for the verdict
    g.gates.allow_redirect(lo).unwrap();
    g.set(
        v4(LOGICAL4),
        Some("udp/53"),
        GateValue::forward(lo, PEER_MAC, SERVER_MAC),
    );
    let (verdict, out) = g.ingress(&udp4(CLIENT4, LOGICAL4, 1000, 53));
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(&out[0..6], &PEER_MAC);
    // Only the service is forwarded; the rest of the address is not a gate here.
    assert_eq!(g.ingress(&udp4(CLIENT4, LOGICAL4, 1000, 54)).0, XDP_PASS);
    // A target missing from the devmap is a misconfiguration: drop, never loop.
    g.set(
        v4(LOGICAL4),
        Some("udp/53"),
        GateValue::forward(9999, PEER_MAC, SERVER_MAC),
    );
    assert_eq!(g.ingress(&udp4(CLIENT4, LOGICAL4, 1000, 53)).0, XDP_DROP);
}

#[test]
fn flipping_an_entry_changes_the_next_verdict() {
    let mut g = Gate::load();
    let frame = udp4(CLIENT4, LOGICAL4, 1000, 53);
    for (value, expected) in [(open(), XDP_PASS), (closed(), XDP_DROP), (open(), XDP_PASS)] {
        g.set(v4(LOGICAL4), None, value);
        assert_eq!(g.ingress(&frame).0, expected);
    }
    g.gates.remove(&target(v4(LOGICAL4), None)).unwrap();
    assert_eq!(g.ingress(&frame).0, XDP_PASS);
    assert_eq!(
        g.counters(v4(LOGICAL4), None),
        Default::default(),
        "remove drops the counters"
    );
}

// ---- egress ---------------------------------------------------------------------------

#[test]
fn egress_drops_what_a_closed_address_sends() {
    let mut g = Gate::load();
    g.set(v4(LOGICAL4), None, closed());
    g.set(v6(LOGICAL6), None, closed());
    let reply = udp4(LOGICAL4, CLIENT4, 53, 1000);
    assert_eq!(g.egress(&reply), TC_SHOT, "IPv4 from the address");
    assert_eq!(g.egress(&tcp4(LOGICAL4, CLIENT4, 80, 40000)), TC_SHOT);
    assert_eq!(
        g.egress(&udp6(LOGICAL6, CLIENT6, 53, 1000)),
        TC_SHOT,
        "IPv6 from the address"
    );
    assert_eq!(
        g.egress(&arp(2, LOGICAL4, CLIENT4)),
        TC_SHOT,
        "ARP reply with it as sender"
    );
    assert_eq!(
        g.egress(&arp(1, LOGICAL4, LOGICAL4)),
        TC_SHOT,
        "gratuitous ARP"
    );
    assert_eq!(
        g.egress(&nd(136, LINK_LOCAL6, CLIENT6, LOGICAL6)),
        TC_SHOT,
        "NA for it"
    );
    // A solicitation from a link-local address only asks; it claims nothing.
    assert_eq!(
        g.egress(&nd(135, LINK_LOCAL6, SOLICITED_NODE, LOGICAL6)),
        TC_PASS
    );
    // Traffic to the address, from the host's own address, is not its business.
    assert_eq!(g.egress(&udp4(OTHER4, LOGICAL4, 1000, 53)), TC_PASS);
    let c = g.counters(v4(LOGICAL4), None);
    assert_eq!(c.tx_drop_packets, 4);
    let dropped4 = [
        reply.clone(),
        tcp4(LOGICAL4, CLIENT4, 80, 40000),
        arp(2, LOGICAL4, CLIENT4),
        arp(1, LOGICAL4, LOGICAL4),
    ];
    assert_eq!(
        c.tx_drop_bytes,
        dropped4.iter().map(|f| f.len() as u64).sum::<u64>()
    );
    assert_eq!(g.counters(v6(LOGICAL6), None).tx_drop_packets, 2);
}

#[test]
fn egress_passes_what_an_open_address_sends_and_counts_it() {
    let mut g = Gate::load();
    g.set(v4(LOGICAL4), None, open());
    let reply = udp4(LOGICAL4, CLIENT4, 53, 1000);
    assert_eq!(g.egress(&reply), TC_PASS);
    assert_eq!(g.egress(&arp(2, LOGICAL4, CLIENT4)), TC_PASS);
    let c = g.counters(v4(LOGICAL4), None);
    assert_eq!((c.tx_pass_packets, c.tx_drop_packets), (2, 0));
}

#[test]
fn a_forwarding_host_sends_its_replies_but_claims_nothing() {
    let mut g = Gate::load();
    for a in [v4(LOGICAL4), v6(LOGICAL6)] {
        g.set(a, None, GateValue::forward(0, PEER_MAC, SERVER_MAC));
    }
    // Replies to what it received before it let go still leave.
    assert_eq!(g.egress(&udp4(LOGICAL4, CLIENT4, 53, 1000)), TC_PASS);
    assert_eq!(g.egress(&udp6(LOGICAL6, CLIENT6, 53, 1000)), TC_PASS);
    // Nothing that would put its MAC in a client's cache for the address.
    for (frame, what) in [
        (arp(2, LOGICAL4, CLIENT4), "ARP reply"),
        (arp(1, LOGICAL4, CLIENT4), "ARP request with it as sender"),
        (arp(1, LOGICAL4, LOGICAL4), "gratuitous ARP"),
        (nd(136, LINK_LOCAL6, CLIENT6, LOGICAL6), "NA for it"),
        (nd(135, LOGICAL6, SOLICITED_NODE, CLIENT6), "NS from it"),
    ] {
        assert_eq!(g.egress(&frame), TC_SHOT, "{what}");
    }
}

#[test]
fn egress_service_entry_matches_the_source_port() {
    let mut g = Gate::load();
    g.set(v4(LOGICAL4), None, closed());
    g.set(v4(LOGICAL4), Some("udp/53"), open());
    assert_eq!(
        g.egress(&udp4(LOGICAL4, CLIENT4, 53, 1000)),
        TC_PASS,
        "reply of the open service"
    );
    assert_eq!(
        g.egress(&udp4(LOGICAL4, CLIENT4, 54, 1000)),
        TC_SHOT,
        "another port"
    );
    assert_eq!(
        g.egress(&udp4(LOGICAL4, CLIENT4, 1000, 53)),
        TC_SHOT,
        "destination port is not the service"
    );
}

// ---- malformed and truncated frames ---------------------------------------------------

/// Every prefix of a frame gets a defined verdict: drop exactly when the part that names the
/// closed address survived, pass otherwise.
fn check_truncations(g: &Gate, frame: &[u8], decided_at: usize, closed_verdict: u32, what: &str) {
    for len in 14..=frame.len() {
        let (verdict, _) = g.ingress(&frame[..len]);
        let expected = if len >= decided_at {
            closed_verdict
        } else {
            XDP_PASS
        };
        assert_eq!(verdict, expected, "{what} cut to {len} bytes");
    }
}

#[test]
fn truncated_frames_get_a_defined_verdict() {
    let mut g = Gate::load();
    g.set(v4(LOGICAL4), None, closed());
    g.set(v6(LOGICAL6), None, closed());
    // IPv4: decided once the 20-byte header is there (ports only refine it).
    check_truncations(
        &g,
        &udp4(CLIENT4, LOGICAL4, 1000, 53),
        14 + 20,
        XDP_DROP,
        "IPv4/UDP",
    );
    // ARP: decided once the target address is there (byte 14 + 28).
    check_truncations(&g, &arp(1, CLIENT4, LOGICAL4), 14 + 28, XDP_DROP, "ARP");
    // IPv6: decided once the 40-byte header is there.
    check_truncations(
        &g,
        &udp6(CLIENT6, LOGICAL6, 1000, 53),
        14 + 40,
        XDP_DROP,
        "IPv6/UDP",
    );
    // NS to the solicited-node group: only its target names the address.
    check_truncations(
        &g,
        &nd(135, CLIENT6, SOLICITED_NODE, LOGICAL6),
        14 + 40 + 24,
        XDP_DROP,
        "NS",
    );
    // VLAN-tagged IPv4.
    check_truncations(
        &g,
        &tagged(&udp4(CLIENT4, LOGICAL4, 1, 2), 5),
        18 + 20,
        XDP_DROP,
        "VLAN IPv4",
    );
}

#[test]
fn truncated_service_frames_fall_back_to_the_address_entry() {
    let mut g = Gate::load();
    g.set(v4(LOGICAL4), None, closed());
    g.set(v4(LOGICAL4), Some("udp/53"), open());
    let frame = udp4(CLIENT4, LOGICAL4, 1000, 53);
    // Without the 4 port bytes the packet is judged by the address entry.
    assert_eq!(g.ingress(&frame[..14 + 20 + 3]).0, XDP_DROP);
    assert_eq!(g.ingress(&frame[..14 + 20 + 4]).0, XDP_PASS);
    assert_eq!(
        g.egress(&udp4(LOGICAL4, CLIENT4, 53, 1)[..14 + 20 + 3]),
        TC_SHOT
    );
}

#[test]
fn malformed_frames_never_crash_and_pass_unless_they_name_a_closed_address() {
    let mut g = Gate::load();
    g.set(v4(LOGICAL4), None, closed());
    let good = udp4(CLIENT4, LOGICAL4, 1000, 53);
    let mut cases: Vec<(&str, Vec<u8>, u32)> = Vec::new();
    let mut bad_version = good.clone();
    bad_version[14] = 0x65; // IPv4 ethertype, version 6
    cases.push(("IP version mismatch", bad_version, XDP_PASS));
    let mut short_ihl = good.clone();
    short_ihl[14] = 0x42; // IHL 2 words: no ports, still names the address
    cases.push(("IHL below 5", short_ihl, XDP_DROP));
    let mut long_ihl = good.clone();
    long_ihl[14] = 0x4f; // IHL 60 bytes, past the end: ports unreadable
    cases.push(("IHL past the end", long_ihl, XDP_DROP));
    let mut fragment = good.clone();
    fragment[20] = 0x00;
    fragment[21] = 0x10; // offset 128 bytes: a non-first fragment
    cases.push(("non-first fragment", fragment, XDP_DROP));
    let mut arp_ipx = arp(1, CLIENT4, LOGICAL4);
    arp_ipx[16] = 0x81; // ptype not IPv4
    cases.push(("ARP for another protocol", arp_ipx, XDP_PASS));
    let mut arp_hlen = arp(1, CLIENT4, LOGICAL4);
    arp_hlen[18] = 8; // hardware address length not 6
    cases.push(("ARP with odd lengths", arp_hlen, XDP_PASS));
    cases.push((
        "unknown ethertype",
        eth(SERVER_MAC, CLIENT_MAC, 0x88b5, &[0xaa; 64]),
        XDP_PASS,
    ));
    cases.push((
        "bare Ethernet header",
        eth(SERVER_MAC, CLIENT_MAC, 0x0800, &[]),
        XDP_PASS,
    ));
    cases.push((
        "VLAN tag with nothing after it",
        eth(SERVER_MAC, CLIENT_MAC, 0x8100, &[0, 5]),
        XDP_PASS,
    ));
    // Endless IPv6 extension headers: the walk gives up and judges by the address.
    let mut ext = Vec::new();
    for _ in 0..8 {
        ext.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
    }
    g.set(v6(LOGICAL6), None, closed());
    cases.push((
        "IPv6 extension header chain",
        eth(
            SERVER_MAC,
            CLIENT_MAC,
            0x86dd,
            &ipv6(CLIENT6, LOGICAL6, 60, &ext),
        ),
        XDP_DROP,
    ));
    for (what, frame, expected) in &cases {
        assert_eq!(g.ingress(frame).0, *expected, "{what}");
    }
    // Pseudo-random garbage, with and without a valid-looking start: any defined verdict.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..500 {
        let len = 14 + (i % 120);
        let mut f: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        if i % 2 == 0 {
            f[12..14].copy_from_slice(&[0x08, 0x00]);
        }
        let (verdict, _) = g.ingress(&f);
        assert!(
            verdict == XDP_PASS || verdict == XDP_DROP,
            "garbage frame {i} got {verdict}"
        );
        // BPF_PROG_TEST_RUN refuses (EINVAL) to build an skb with an IPv4 ethertype and less
        // than a whole IPv4 header; the stack never sends such a packet anyway.
        let v = match g.try_egress(&f) {
            Err(_) if f[12..14] == [0x08, 0x00] && f.len() < 14 + 20 => continue,
            r => r.unwrap(),
        };
        assert!(
            v == TC_PASS || v == TC_SHOT,
            "garbage frame {i} got {v} on egress"
        );
    }
}

#[test]
fn service_entries_keep_their_address_flagged_whatever_the_order() {
    let mut g = Gate::load();
    let svc = udp4(CLIENT4, LOGICAL4, 1000, 53);
    let other = udp4(CLIENT4, LOGICAL4, 1000, 54);
    // A service alone: the address gets a placeholder that gates nothing by itself.
    g.set(v4(LOGICAL4), Some("udp/53"), closed());
    assert_eq!(g.ingress(&svc).0, XDP_DROP);
    assert_eq!(g.ingress(&other).0, XDP_PASS);
    assert_eq!(
        g.counters(v4(LOGICAL4), None),
        Default::default(),
        "placeholder counts nothing"
    );
    assert_eq!(
        g.gates.entries().unwrap().len(),
        1,
        "placeholders are not shown"
    );
    assert_eq!(g.gates.raw_len().unwrap(), 2);
    // An address verdict written afterwards keeps the service in force.
    g.set(v4(LOGICAL4), None, open());
    assert_eq!(g.ingress(&svc).0, XDP_DROP);
    assert_eq!(g.ingress(&other).0, XDP_PASS);
    assert_eq!(g.counters(v4(LOGICAL4), None).rx_pass_packets, 1);
    // Removing the address verdict leaves the service.
    assert!(g.gates.remove(&target(v4(LOGICAL4), None)).unwrap());
    assert!(
        !g.gates.remove(&target(v4(LOGICAL4), None)).unwrap(),
        "nothing left to remove"
    );
    assert_eq!(g.ingress(&svc).0, XDP_DROP);
    // Removing the last service leaves nothing behind.
    assert!(g
        .gates
        .remove(&target(v4(LOGICAL4), Some("udp/53")))
        .unwrap());
    assert_eq!(g.gates.raw_len().unwrap(), 0);
    assert_eq!(g.ingress(&svc).0, XDP_PASS);
    // With the address verdict kept, removing the last service unflags it.
    g.set(v4(LOGICAL4), None, closed());
    g.set(v4(LOGICAL4), Some("udp/53"), open());
    g.set(v4(LOGICAL4), Some("udp/54"), open());
    assert!(g
        .gates
        .remove(&target(v4(LOGICAL4), Some("udp/53")))
        .unwrap());
    assert_eq!(
        g.ingress(&svc).0,
        XDP_DROP,
        "udp/53 falls back to the address"
    );
    assert_eq!(g.ingress(&other).0, XDP_PASS, "udp/54 still open");
    assert!(g
        .gates
        .remove(&target(v4(LOGICAL4), Some("udp/54")))
        .unwrap());
    assert_eq!(g.gates.raw_len().unwrap(), 1);
    assert_eq!(g.ingress(&other).0, XDP_DROP);
}

// ---- kernel-assisted liveness: the exit notice ------------------------------------------

const HB_PORT: u16 = 7400;

/// A heartbeat-shaped payload (the data plane looks at the magic and kind only).
fn heartbeat_payload(kind: u8) -> Vec<u8> {
    let mut p = takeover_common::WIRE_MAGIC.to_vec();
    p.extend_from_slice(&[takeover::core::wire::VERSION, kind]);
    p.extend((0..90u8).map(|i| i.wrapping_mul(37)));
    p
}

fn set_liveness(g: &mut Gate, state: u32, notice: [u8; 32]) {
    use aya::maps::Array;
    let mut m: Array<_, takeover_common::Liveness> =
        Array::try_from(g.ebpf.map_mut(takeover_common::LIVENESS_MAP).unwrap()).unwrap();
    m.set(
        0,
        takeover_common::Liveness {
            tgid: 4242,
            state,
            port: HB_PORT,
            _pad: [0; 6],
            notice,
        },
        0,
    )
    .unwrap();
}

/// Ones-complement sum of the IPv6 pseudo-header and the UDP datagram: 0xffff if valid.
fn udp6_checksum_ok(frame: &[u8]) -> bool {
    let ip = &frame[14..];
    let udp = &ip[40..];
    let mut pseudo = ip[8..40].to_vec();
    pseudo.extend_from_slice(&(udp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    pseudo.extend_from_slice(udp);
    checksum(&pseudo) == 0xffff
}

#[test]
fn a_dead_agents_data_plane_answers_heartbeats_with_its_exit_notice() {
    let mut g = Gate::load();
    let notice = takeover::core::wire::encode_notice(77, &[5; 16]);
    let hb = heartbeat_payload(takeover_common::WIRE_KIND_HEARTBEAT);
    let frame4 = eth(
        SERVER_MAC,
        PEER_MAC,
        0x0800,
        &ipv4(OTHER4, CLIENT4, 17, &udp(HB_PORT, HB_PORT, &hb)),
    );
    // No agent, or one stopping for a restart: heartbeats pass untouched (a running agent
    // gets them through the ring: the next test).
    for state in [takeover_common::AGENT_NONE, takeover_common::AGENT_STOPPING] {
        set_liveness(&mut g, state, notice);
        assert_eq!(
            g.ingress(&frame4),
            (XDP_PASS, frame4.clone()),
            "state {state}"
        );
    }
    set_liveness(&mut g, takeover_common::AGENT_EXITED, notice);
    let (verdict, out) = g.ingress(&frame4);
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out.len(), frame4.len());
    assert_eq!((&out[..6], &out[6..12]), (&PEER_MAC[..], &SERVER_MAC[..]));
    assert_eq!((&out[26..30], &out[30..34]), (&CLIENT4[..], &OTHER4[..]));
    assert_eq!(
        checksum(&out[14..34]),
        0xffff,
        "IPv4 header checksum still valid"
    );
    assert_eq!(&out[40..42], &[0, 0], "UDP checksum: none");
    assert_eq!(&out[42..74], &notice[..]);
    assert_eq!(
        takeover::core::wire::decode_notice(&out[42..]),
        Ok((77, [5; 16]))
    );

    // IPv6: the checksum is mandatory and must be right after the rewrite.
    let mut seg = udp(HB_PORT, HB_PORT, &hb);
    let mut pseudo = CLIENT6.to_vec();
    pseudo.extend_from_slice(&LOGICAL6);
    pseudo.extend_from_slice(&(seg.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    pseudo.extend_from_slice(&seg);
    let sum = !checksum(&pseudo);
    seg[6..8].copy_from_slice(&sum.to_be_bytes());
    let frame6 = eth(
        SERVER_MAC,
        PEER_MAC,
        0x86dd,
        &ipv6(CLIENT6, LOGICAL6, 17, &seg),
    );
    assert!(udp6_checksum_ok(&frame6), "the test's own frame");
    let (verdict, out) = g.ingress(&frame6);
    assert_eq!(verdict, XDP_TX);
    assert_eq!((&out[22..38], &out[38..54]), (&LOGICAL6[..], &CLIENT6[..]));
    assert_eq!(&out[62..94], &notice[..]);
    assert!(udp6_checksum_ok(&out), "IPv6 UDP checksum updated");
}

/// The ring a gate takes heartbeats into, read as the agent reads it.
fn heard(g: &mut Gate) -> takeover::dataplane::heard::HeardRing {
    let map = g.ebpf.take_map(takeover_common::HEARD_MAP).unwrap();
    takeover::dataplane::heard::HeardRing::new(map).unwrap()
}

#[test]
fn a_running_agents_data_plane_takes_heartbeats_into_the_ring() {
    let mut g = Gate::load();
    set_liveness(&mut g, takeover_common::AGENT_RUNNING, [0; 32]);
    let mut ring = heard(&mut g);
    let hb = heartbeat_payload(takeover_common::WIRE_KIND_HEARTBEAT);
    let frame4 = eth(
        SERVER_MAC,
        PEER_MAC,
        0x0800,
        &ipv4(OTHER4, CLIENT4, 17, &udp(40001, HB_PORT, &hb)),
    );
    let long = [hb.clone(), vec![7; takeover_common::HEARD_MAX - hb.len()]].concat();
    let frame6 = eth(
        SERVER_MAC,
        PEER_MAC,
        0x86dd,
        &ipv6(CLIENT6, LOGICAL6, 17, &udp(40002, HB_PORT, &long)),
    );
    let before = takeover::dataplane::heard::clock_ns();
    assert_eq!(
        g.ingress(&frame4).0,
        XDP_DROP,
        "taken: the stack never sees it"
    );
    assert_eq!(g.ingress(&frame6).0, XDP_DROP, "the longest message fits");
    let after = takeover::dataplane::heard::clock_ns();
    let mut got = Vec::new();
    ring.drain(|d| got.push((d.stamp_ns, d.from, d.to, d.bytes.to_vec())));
    assert_eq!(got.len(), 2);
    let (v4, v6) = (&got[0], &got[1]);
    assert_eq!(
        (v4.1, v4.2, &v4.3),
        (
            SocketAddr::new(IpAddr::from(OTHER4), 40001),
            IpAddr::from(CLIENT4),
            &hb
        )
    );
    assert_eq!(
        (v6.1, v6.2, &v6.3),
        (
            SocketAddr::new(IpAddr::from(CLIENT6), 40002),
            IpAddr::from(LOGICAL6),
            &long
        )
    );
    assert!(
        before <= v4.0 && v4.0 <= v6.0 && v6.0 <= after,
        "stamped on arrival, on CLOCK_MONOTONIC: {before} {} {} {after}",
        v4.0,
        v6.0
    );
    ring.drain(|_| panic!("each heartbeat is read once"));

    // Everything else is the stack's (or the probe responder's).
    let too_long = [long.clone(), vec![7]].concat();
    let to = |dport: u16, payload: &[u8]| {
        eth(
            SERVER_MAC,
            PEER_MAC,
            0x0800,
            &ipv4(OTHER4, CLIENT4, 17, &udp(40001, dport, payload)),
        )
    };
    for (what, frame) in [
        ("another port", to(HB_PORT + 1, &hb)),
        ("longer than any message", to(HB_PORT, &too_long)),
        ("not our magic", to(HB_PORT, &[b'X'; 64])),
        (
            "an exit notice",
            to(HB_PORT, &heartbeat_payload(takeover_common::WIRE_KIND_EXIT)),
        ),
    ] {
        assert_eq!(g.ingress(&frame), (XDP_PASS, frame.clone()), "{what}");
    }
    let probe = takeover::core::wire::encode_probe(b"key", 9, 1, 0);
    assert_eq!(
        g.ingress(&to(HB_PORT, &probe)).0,
        XDP_TX,
        "a probe is answered"
    );
    for state in [takeover_common::AGENT_NONE, takeover_common::AGENT_STOPPING] {
        set_liveness(&mut g, state, [0; 32]);
        assert_eq!(
            g.ingress(&frame4),
            (XDP_PASS, frame4.clone()),
            "state {state}"
        );
    }
    ring.drain(|d| panic!("nothing else was taken: {:?}", d.from));
}

#[test]
fn the_exit_notice_answers_only_heartbeats_to_the_agents_port() {
    let mut g = Gate::load();
    let notice = takeover::core::wire::encode_notice(77, &[5; 16]);
    set_liveness(&mut g, takeover_common::AGENT_EXITED, notice);
    let hb = heartbeat_payload(takeover_common::WIRE_KIND_HEARTBEAT);
    let to = |dport: u16, payload: &[u8]| {
        eth(
            SERVER_MAC,
            PEER_MAC,
            0x0800,
            &ipv4(OTHER4, CLIENT4, 17, &udp(HB_PORT, dport, payload)),
        )
    };
    let cases = [
        ("another port", to(HB_PORT + 1, &hb)),
        ("a notice (two dead agents must not ping-pong)", {
            to(HB_PORT, &heartbeat_payload(takeover_common::WIRE_KIND_EXIT))
        }),
        ("not our magic", to(HB_PORT, &[b'X'; 64])),
        ("shorter than a notice", to(HB_PORT, &hb[..31])),
        ("TCP", {
            eth(
                SERVER_MAC,
                PEER_MAC,
                0x0800,
                &ipv4(OTHER4, CLIENT4, 6, &udp(HB_PORT, HB_PORT, &hb)),
            )
        }),
        ("IPv4 with options", {
            let mut ip = ipv4(OTHER4, CLIENT4, 17, &udp(HB_PORT, HB_PORT, &hb));
            ip[0] = 0x46;
            ip.splice(20..20, [1, 1, 1, 1]);
            eth(SERVER_MAC, PEER_MAC, 0x0800, &ip)
        }),
    ];
    for (what, frame) in cases {
        assert_eq!(g.ingress(&frame), (XDP_PASS, frame.clone()), "{what}");
    }
}

/// A probe is answered while the agent is registered as running, however stalled: a peer
/// that gets answers while the agent stays silent knows it stuck. Not while it stops for a
/// restart (its lease runs over the restart), nor after it exited (the exit notice says more).
#[test]
fn a_running_agents_data_plane_answers_probes_itself_a_stopping_or_dead_ones_does_not() {
    let mut g = Gate::load();
    let probe = takeover::core::wire::encode_probe(b"key", 9, 1, 0);
    let frame = eth(
        SERVER_MAC,
        PEER_MAC,
        0x0800,
        &ipv4(OTHER4, CLIENT4, 17, &udp(HB_PORT, HB_PORT, &probe)),
    );
    set_liveness(&mut g, takeover_common::AGENT_NONE, [0; 32]);
    assert_eq!(
        g.ingress(&frame),
        (XDP_PASS, frame.clone()),
        "no agent: no answer"
    );
    set_liveness(&mut g, takeover_common::AGENT_RUNNING, [0; 32]);
    let (verdict, out) = g.ingress(&frame);
    assert_eq!(verdict, XDP_TX);
    assert_eq!((&out[26..30], &out[30..34]), (&CLIENT4[..], &OTHER4[..]));
    assert_eq!(
        takeover::core::wire::decode_probe_answer(&out[42..], b"key"),
        Ok((9, 1, 0)),
        "the answer proves the probe arrived"
    );
    for state in [
        takeover_common::AGENT_STOPPING,
        takeover_common::AGENT_EXITED,
    ] {
        set_liveness(&mut g, state, [0; 32]);
        let (verdict, out) = g.ingress(&frame);
        assert_ne!(verdict, XDP_TX, "state {state}: answered");
        assert_eq!(out, frame, "state {state}: the frame was changed");
    }
}

#[test]
fn a_leased_gate_serves_only_while_the_lease_runs_both_ways() {
    use takeover::dataplane::{heard::clock_ns, lease::Lease};
    let mut g = Gate::load();
    let lease = Lease::new(g.ebpf.take_map(takeover_common::LEASE_MAP).unwrap()).unwrap();
    g.set(v4(LOGICAL4), None, GateValue::new(Action::Open).leased());
    g.set(v6(LOGICAL6), None, GateValue::receive(PEER_MAC).leased());
    g.set(v4(OTHER4), None, GateValue::new(Action::Open));
    let request = udp4(CLIENT4, LOGICAL4, 1000, 53);
    let reply = udp4(LOGICAL4, CLIENT4, 53, 1000);
    let forwarded6 = forwarded(&udp6(CLIENT6, LOGICAL6, 1000, 53), PEER_MAC);
    let serves = |g: &Gate| {
        (
            g.ingress(&request).0,
            g.egress(&reply),
            g.ingress(&arp(1, CLIENT4, LOGICAL4)).0,
            g.ingress(&forwarded6).0,
        )
    };
    let closed = (XDP_DROP, TC_SHOT, XDP_DROP, XDP_DROP);
    // Never renewed (a fresh map holds zero): lapsed, closed both ways, ARP included.
    assert_eq!(serves(&g), closed);
    // An entry written without the flag (the CLI's, an earlier release's) knows no lease.
    assert_eq!(g.ingress(&udp4(CLIENT4, OTHER4, 1000, 53)).0, XDP_PASS);
    assert_eq!(g.egress(&udp4(OTHER4, CLIENT4, 53, 1000)), TC_PASS);

    lease.extend(clock_ns() + 60_000_000_000);
    assert_eq!(serves(&g), (XDP_PASS, TC_PASS, XDP_PASS, XDP_PASS));
    // The kernel's word at the agent's exit, or time running out: closed again.
    lease.lapse();
    assert_eq!(serves(&g), closed);
    lease.extend(clock_ns() + 60_000_000_000);
    assert!(
        lease.extend(clock_ns()) > clock_ns(),
        "extending never shortens"
    );
    assert_eq!(serves(&g).0, XDP_PASS);
    lease.lapse();
    lease.extend(clock_ns().saturating_sub(1_000_000));
    assert_eq!(serves(&g), closed, "an end in the past");
    let c = g.counters(v4(LOGICAL4), None);
    assert_eq!(c.rx_drop_packets, 6, "counted as the drops they are");

    // A forward claims nothing and serves nothing here: no lease needed for it.
    g.set(
        v4(LOGICAL4),
        None,
        GateValue::forward(0, PEER_MAC, SERVER_MAC).leased(),
    );
    assert_eq!(g.ingress(&request).0, XDP_TX);
}
