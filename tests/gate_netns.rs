//! The gate on real veths in network namespaces, driven by the real `takeover` binary.
//!
//! Topology (docs/design.md): a bridge in its own namespace as the switch, a client `cli` and
//! servers `a` (and `b`) on it. The logical address 10.77.0.100 / fd77::100 is configured on
//! every server; only the gate decides who serves it. Every namespace is removed on drop.
use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use std::path::{Path, PathBuf};

use anyhow::Result;
use aya::maps::{Array, Map, MapData};
use takeover::dataplane::{liveness, pinned_link};
use takeover_common::{Liveness, AGENT_EXITED, AGENT_NONE, LIVENESS_MAP, NOTICE_LEN, XDP_LINK_PIN};
use takeover_lab::{
    capture::{v4, Capture, Frame},
    topology::{wait_for, Host, Lan},
    udp::{Client, Responder},
    Netns, Takeover, PIN_ROOT,
};

const LOGICAL4: &str = "10.77.0.100";
const LOGICAL6: &str = "fd77::100";
const PORT: u16 = 7000;
const WAIT: Duration = Duration::from_secs(10);
/// How long a request may take when a reply is expected (generous: shared machines).
const REPLY: Duration = Duration::from_secs(2);

fn takeover() -> Takeover {
    Takeover::new(env!("CARGO_BIN_EXE_takeover"))
}

/// A server with the logical addresses configured, the gate attached, and responders on
/// the logical addresses and on its own address.
fn server(t: &Takeover, host: &Host) -> Result<Vec<Responder>> {
    host.add_addr(LOGICAL4)?;
    host.add_addr(LOGICAL6)?;
    t.ok(&host.ns, "attach --iface lan")?;
    [
        format!("{LOGICAL4}:{PORT}"),
        format!("[{LOGICAL6}]:{PORT}"),
        format!("{}:{PORT}", host.addr4()),
    ]
    .iter()
    .map(|bind| Responder::spawn(&host.ns, bind, &host.name))
    .collect()
}

/// Client `cli` and server `a` (see [`server`]); the client's neighbour entries for the
/// logical addresses point at `a`, so ARP is not part of what the test measures.
fn client_and_server(t: &Takeover) -> Result<(Lan, Vec<Responder>)> {
    let lan = Lan::new(t, &["cli", "a"])?;
    let srv = server(t, lan.host("a"))?;
    let (cli, a) = (lan.host("cli"), lan.host("a"));
    cli.static_neigh(LOGICAL4, &a.mac())?;
    cli.static_neigh(LOGICAL6, &a.mac())?;
    Ok((lan, srv))
}

/// Waits until a counter of an entry reaches `at_least` (the data plane counts asynchronously
/// to the sender: veth hands frames to the receiver's NAPI).
fn wait_counter(
    t: &Takeover,
    host: &Host,
    addr: &str,
    service: Option<&str>,
    which: &str,
    at_least: u64,
) -> Result<u64> {
    wait_for(
        &format!("{which} of {addr} on {} to reach {at_least}", host.name),
        WAIT,
        || {
            let v = t.counter(&host.ns, "lan", addr, service, which)?;
            Ok((v >= at_least).then_some(v))
        },
    )
}

#[test]
fn client_reaches_an_open_address_and_not_a_closed_one() -> Result<()> {
    let t = takeover();
    let (lan, _srv) = client_and_server(&t)?;
    let (cli, a) = (lan.host("cli"), lan.host("a"));
    let c4 = Client::new(&cli.ns, "0.0.0.0:0", &format!("{LOGICAL4}:{PORT}"))?;
    let c6 = Client::new(&cli.ns, "[::]:0", &format!("[{LOGICAL6}]:{PORT}"))?;
    let own = Client::new(&cli.ns, "0.0.0.0:0", &format!("{}:{PORT}", a.addr4()))?;

    for addr in [LOGICAL4, LOGICAL6] {
        t.ok(&a.ns, &format!("gate open {addr} --iface lan"))?;
    }
    assert_eq!(c4.request(1, REPLY)?.as_deref(), Some("a"));
    assert_eq!(c6.request(1, REPLY)?.as_deref(), Some("a"));

    for addr in [LOGICAL4, LOGICAL6] {
        t.ok(&a.ns, &format!("gate close {addr} --iface lan"))?;
    }
    c4.send(2)?;
    c6.send(2)?;
    // The drop is seen in the counters; once counted, no reply can follow.
    wait_counter(&t, a, LOGICAL4, None, "rx_drop", 1)?;
    wait_counter(&t, a, LOGICAL6, None, "rx_drop", 1)?;
    assert_eq!(c4.recv(Duration::from_millis(1))?, None);
    assert_eq!(c6.recv(Duration::from_millis(1))?, None);
    // The host's own address is never affected, and is not counted.
    assert_eq!(own.request(3, REPLY)?.as_deref(), Some("a"));
    assert!(t.entry(&a.ns, "lan", &a.addr4(), None)?.is_none());

    for addr in [LOGICAL4, LOGICAL6] {
        t.ok(&a.ns, &format!("gate open {addr} --iface lan"))?;
    }
    assert_eq!(c4.request(4, REPLY)?.as_deref(), Some("a"));
    assert_eq!(c6.request(4, REPLY)?.as_deref(), Some("a"));
    Ok(())
}

/// True for a frame that carries the logical address as its IPv4 or ARP sender.
fn from_logical(f: &Frame) -> bool {
    match f {
        Frame::Ipv4 { src, .. } => *src == v4(LOGICAL4),
        Frame::Arp { sender, .. } => *sender == v4(LOGICAL4),
        Frame::Other => false,
    }
}

/// One ICMP echo from the logical address (its reply, if any, does not matter).
fn ping_from_logical(from: &Host, to: &Host) -> Result<()> {
    let _ = from
        .ns
        .cmd("ping")
        .args(["-c", "1", "-W", "1", "-I", LOGICAL4, &to.addr4()])
        .output()?;
    Ok(())
}

/// A gratuitous ARP for the logical address, as a new owner announces itself (Habets'
/// arping: -U unsolicited, -S source IP).
fn gratuitous_arp(from: &Host) -> Result<()> {
    let _ = from
        .ns
        .cmd("arping")
        .args(["-U", "-c", "1", "-i", "lan", "-S", LOGICAL4, LOGICAL4])
        .output()?;
    Ok(())
}

#[test]
fn closed_server_neither_answers_arp_nor_sends_from_the_address() -> Result<()> {
    let t = takeover();
    let lan = Lan::new(&t, &["cli", "a"])?;
    let (cli, a) = (lan.host("cli"), lan.host("a"));
    let _srv = server(&t, a)?;
    t.ok(&a.ns, &format!("gate close {LOGICAL4} --iface lan"))?;
    let cap = Capture::start(&cli.ns, "lan")?;
    let marker_port = 7999;
    let marker = |n: u8| -> Result<()> {
        // From a's own address: the gate lets it through, and the capture reads up to it.
        let s = a.ns.udp(&format!("{}:0", a.addr4()))?;
        s.send_to(
            format!("marker{n}").as_bytes(),
            format!("{}:{marker_port}", cli.addr4()),
        )?;
        Ok(())
    };
    let is_marker = |n: u8| move |f: &Frame| matches!(f, Frame::Ipv4 { payload, .. } if payload.ends_with(format!("marker{n}").as_bytes()));

    // The client asks who has the address: nobody answers.
    let arping = cli
        .ns
        .cmd("arping")
        .args(["-c", "1", "-w", "1", "-I", "lan", LOGICAL4])
        .output()?;
    assert!(
        !arping.status.success(),
        "arping got an answer for a closed address"
    );
    wait_counter(&t, a, LOGICAL4, None, "rx_drop", 1)?;
    // The server tries to send from the address: ICMP, and a gratuitous ARP (arping -U -S).
    // (ping retries a send the egress refused, so count from what is there.)
    ping_from_logical(a, cli)?;
    let dropped = wait_counter(&t, a, LOGICAL4, None, "tx_drop", 1)?;
    gratuitous_arp(a)?;
    wait_counter(&t, a, LOGICAL4, None, "tx_drop", dropped + 1)?;
    marker(1)?;
    let seen = cap.until(WAIT, is_marker(1))?;
    let leaked: Vec<_> = seen.iter().filter(|f| from_logical(f)).collect();
    assert!(
        leaked.is_empty(),
        "the closed address leaked onto the LAN: {leaked:?}"
    );
    assert!(
        seen.iter()
            .any(|f| matches!(f, Frame::Arp { op: 1, target, .. } if *target == v4(LOGICAL4))),
        "the client's ARP request itself should have been captured"
    );

    // Control: open, the same traffic is seen, so the capture above could have seen it.
    t.ok(&a.ns, &format!("gate open {LOGICAL4} --iface lan"))?;
    ping_from_logical(a, cli)?;
    gratuitous_arp(a)?;
    marker(2)?;
    let seen = cap.until(WAIT, is_marker(2))?;
    assert!(
        seen.iter()
            .any(|f| matches!(f, Frame::Ipv4 { src, proto: 1, .. } if *src == v4(LOGICAL4))),
        "open: ICMP from the address"
    );
    assert!(
        seen.iter()
            .any(|f| matches!(f, Frame::Arp { sender, .. } if *sender == v4(LOGICAL4))),
        "open: ARP from the address"
    );
    let arping = cli
        .ns
        .cmd("arping")
        .args(["-c", "1", "-w", "2", "-I", "lan", LOGICAL4])
        .output()?;
    assert!(
        arping.status.success(),
        "arping got no answer for an open address"
    );
    Ok(())
}

#[test]
fn flipping_the_gate_while_traffic_flows_changes_the_verdict_at_once() -> Result<()> {
    let t = takeover();
    let (lan, _srv) = client_and_server(&t)?;
    let (cli, a) = (lan.host("cli"), lan.host("a"));
    t.ok(&a.ns, &format!("gate open {LOGICAL4} --iface lan"))?;
    let client = Arc::new(Client::new(
        &cli.ns,
        "0.0.0.0:0",
        &format!("{LOGICAL4}:{PORT}"),
    )?);

    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let replies = Arc::new(Mutex::new(BTreeSet::new()));
    let sender = {
        let (client, next, stop) = (client.clone(), next.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let seq = next.fetch_add(1, Ordering::SeqCst);
                client.send(seq).unwrap();
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    let receiver = {
        let (client, stop, replies) = (client.clone(), stop.clone(), replies.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some((_, seq)) = client.recv(Duration::from_millis(20)).unwrap() {
                    replies.lock().unwrap().insert(seq);
                }
            }
        })
    };
    let got = |from: u64| replies.lock().unwrap().range(from..).next().copied();
    wait_for("replies while open", WAIT, || Ok(got(0)))?;

    t.ok(&a.ns, &format!("gate close {LOGICAL4} --iface lan"))?;
    // Every request numbered from here on was sent after the close returned.
    let closed_from = next.load(Ordering::SeqCst);
    let drops_before = t.counter(&a.ns, "lan", LOGICAL4, None, "rx_drop")?;
    wait_counter(&t, a, LOGICAL4, None, "rx_drop", drops_before + 50)?;
    let closed_until = next.load(Ordering::SeqCst);
    t.ok(&a.ns, &format!("gate open {LOGICAL4} --iface lan"))?;
    let open_from = next.load(Ordering::SeqCst);
    // The first request sent after the open returned is answered, and every later one.
    wait_for("the first reply after the open", WAIT, || {
        Ok(got(open_from))
    })?;
    let last = next.load(Ordering::SeqCst);
    wait_for("replies to every request after the open", WAIT, || {
        let r = replies.lock().unwrap();
        Ok((open_from..last).all(|s| r.contains(&s)).then_some(()))
    })?;
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    receiver.join().unwrap();

    let r = replies.lock().unwrap();
    let answered_while_closed: Vec<_> = r.range(closed_from..closed_until).collect();
    assert!(
        answered_while_closed.is_empty(),
        "requests sent while closed were answered: {answered_while_closed:?}"
    );
    assert!(closed_until - closed_from >= 50);
    Ok(())
}

#[test]
fn forward_delivers_the_frame_to_the_next_hop() -> Result<()> {
    let t = takeover();
    let lan = Lan::new(&t, &["cli", "a", "b"])?;
    let (cli, a, b) = (lan.host("cli"), lan.host("a"), lan.host("b"));
    let _ra = server(&t, a)?;
    let _rb = server(&t, b)?;
    let _ra2 = Responder::spawn(&a.ns, &format!("{LOGICAL4}:{}", PORT + 1), "a")?;
    // The clients still send to a (their ARP cache says so); b serves.
    cli.static_neigh(LOGICAL4, &a.mac())?;
    t.ok(&b.ns, &format!("gate open {LOGICAL4} --iface lan"))?;
    t.ok(
        &a.ns,
        &format!("gate forward {LOGICAL4} --iface lan --to-mac {}", b.mac()),
    )?;
    let c = Client::new(&cli.ns, "0.0.0.0:0", &format!("{LOGICAL4}:{PORT}"))?;
    let c2 = Client::new(&cli.ns, "0.0.0.0:0", &format!("{LOGICAL4}:{}", PORT + 1))?;
    assert_eq!(c.request(1, REPLY)?.as_deref(), Some("b"));
    assert!(wait_counter(&t, a, LOGICAL4, None, "rx_forward", 1)? >= 1);
    assert!(t.counter(&b.ns, "lan", LOGICAL4, None, "rx_pass")? >= 1);

    // The same interface name in two namespaces holds two separate gates.
    let a_state = t.entry(&a.ns, "lan", LOGICAL4, None)?.unwrap()["state"].clone();
    let b_state = t.entry(&b.ns, "lan", LOGICAL4, None)?.unwrap()["state"].clone();
    assert_eq!(
        (a_state.as_str(), b_state.as_str()),
        (Some("forward"), Some("open"))
    );

    // Per service: a serves the address but hands one service to b.
    t.ok(&a.ns, &format!("gate open {LOGICAL4} --iface lan"))?;
    t.ok(
        &a.ns,
        &format!(
            "gate forward {LOGICAL4} --iface lan --to-mac {} --service udp/{PORT}",
            b.mac()
        ),
    )?;
    assert_eq!(c.request(2, REPLY)?.as_deref(), Some("b"));
    assert_eq!(c2.request(3, REPLY)?.as_deref(), Some("a"));
    assert!(
        wait_counter(
            &t,
            a,
            LOGICAL4,
            Some(&format!("udp/{PORT}")),
            "rx_forward",
            1
        )? >= 1
    );
    Ok(())
}

#[test]
fn forward_via_the_dedicated_line_reaches_the_peer() -> Result<()> {
    let t = takeover();
    let lan = Lan::new(&t, &["cli", "a", "b"])?;
    let (cli, a, b) = (lan.host("cli"), lan.host("a"), lan.host("b"));
    lan.dedicated_line("a", "b")?;
    let _ra = server(&t, a)?;
    let _rb = server(&t, b)?;
    // b's end of the line runs a gate (empty table): a veth only takes redirected frames
    // when its receiving end has an XDP program.
    t.ok(&b.ns, "attach --iface ded")?;
    cli.static_neigh(LOGICAL4, &a.mac())?;
    t.ok(&b.ns, &format!("gate open {LOGICAL4} --iface lan"))?;
    t.ok(
        &a.ns,
        &format!(
            "gate forward {LOGICAL4} --iface lan --to-mac {} --via ded",
            b.ded_mac()
        ),
    )?;
    let shown = t.entry(&a.ns, "lan", LOGICAL4, None)?.unwrap();
    assert_eq!(shown["forward"]["via"], "ded");
    let c = Client::new(&cli.ns, "0.0.0.0:0", &format!("{LOGICAL4}:{PORT}"))?;
    assert_eq!(c.request(1, REPLY)?.as_deref(), Some("b"));
    assert!(wait_counter(&t, a, LOGICAL4, None, "rx_forward", 1)? >= 1);
    Ok(())
}

#[test]
fn detach_restores_plain_behaviour() -> Result<()> {
    let t = takeover();
    let (lan, _srv) = client_and_server(&t)?;
    let (cli, a) = (lan.host("cli"), lan.host("a"));
    t.ok(&a.ns, &format!("gate close {LOGICAL4} --iface lan"))?;
    let c = Client::new(&cli.ns, "0.0.0.0:0", &format!("{LOGICAL4}:{PORT}"))?;
    c.send(1)?;
    wait_counter(&t, a, LOGICAL4, None, "rx_drop", 1)?;
    assert!(a.ns.ip("link show dev lan")?.contains("xdp"));

    t.ok(&a.ns, "detach --iface lan")?;
    // At once: detach returns only when both programs are off the interface.
    assert_eq!(c.request(2, REPLY)?.as_deref(), Some("a"));
    assert!(
        !a.ns.ip("link show dev lan")?.contains("xdp"),
        "XDP still attached after detach"
    );
    assert!(!a.ns.pin_dir()?.join("lan").exists(), "pins left behind");
    assert!(t.ok(&a.ns, "map show")?.contains("no gate is attached"));
    Ok(())
}

#[test]
fn gates_survive_the_loader_exiting_and_a_second_attach() -> Result<()> {
    let t = takeover();
    let (lan, _srv) = client_and_server(&t)?;
    let (cli, a) = (lan.host("cli"), lan.host("a"));
    // Every `takeover` command is a process that has exited by now: the pins hold the gate.
    t.ok(&a.ns, &format!("gate close {LOGICAL4} --iface lan"))?;
    t.ok(&a.ns, &format!("gate open {LOGICAL6} --iface lan"))?;
    let c4 = Client::new(&cli.ns, "0.0.0.0:0", &format!("{LOGICAL4}:{PORT}"))?;
    c4.send(1)?;
    wait_counter(&t, a, LOGICAL4, None, "rx_drop", 1)?;

    // A second attach while traffic flows to the open address: nothing is lost or reset.
    let c6 = Client::new(&cli.ns, "[::]:0", &format!("[{LOGICAL6}]:{PORT}"))?;
    assert_eq!(c6.request(0, REPLY)?.as_deref(), Some("a"));
    let out = t.ok(&a.ns, "attach --iface lan")?;
    // Kept whole: the same build's programs are not swapped (only another build's are).
    assert!(
        out.contains("kept") && !out.contains("another build"),
        "second attach did not keep the gate: {out}"
    );
    for seq in 1..=20 {
        assert_eq!(
            c6.request(seq, REPLY)?.as_deref(),
            Some("a"),
            "request {seq} after the second attach"
        );
    }
    // The table and the counters are the same ones.
    c4.send(2)?;
    wait_counter(&t, a, LOGICAL4, None, "rx_drop", 2)?;
    assert_eq!(c4.recv(Duration::from_millis(1))?, None);
    assert!(t.counter(&a.ns, "lan", LOGICAL6, None, "rx_pass")? >= 21);
    Ok(())
}

/// A namespace with a veth pair `v0`/`v1` (up) and the gate attached to `v0`.
fn namespace_with_gate(t: &Takeover, role: &str) -> Result<Netns> {
    let ns = Netns::new(role)?;
    ns.ip("link add v0 type veth peer v1")?;
    ns.ip("link set v0 up")?;
    ns.ip("link set v1 up")?;
    t.ok(&ns, "attach --iface v0")?;
    Ok(ns)
}

/// Writes the namespace's liveness registration, as an agent killed unannounced leaves it
/// (the kernel marked it exited): every gate reading it answers heartbeats with `notice`.
fn leave_a_dead_agents_registration(ns_dir: &Path) -> Result<()> {
    let data = MapData::from_pin(ns_dir.join(LIVENESS_MAP))?;
    let mut map: Array<MapData, Liveness> = Array::try_from(Map::from_map_data(data)?)?;
    let mut notice = [0u8; NOTICE_LEN];
    notice[..4].copy_from_slice(b"TKOV");
    map.set(
        0,
        Liveness {
            tgid: 999_999,
            state: AGENT_EXITED,
            port: 7400,
            _pad: [0; 6],
            notice,
        },
        0,
    )?;
    Ok(())
}

#[test]
fn attach_replaces_a_stale_gate_with_a_fresh_table() -> Result<()> {
    let t = takeover();
    let ns = namespace_with_gate(&t, "stale")?;
    t.ok(&ns, &format!("gate open {LOGICAL4} --iface v0"))?;
    leave_a_dead_agents_registration(&ns.pin_dir()?)?;
    // The interface is deleted (its XDP link goes defunct) and made again under its name.
    ns.ip("link del v0")?;
    ns.ip("link add v0 type veth peer v1")?;
    ns.ip("link set v0 up")?;
    let map = t.map(&ns)?;
    assert!(
        map["interfaces"][0]["stale"]
            .as_str()
            .is_some_and(|s| s.contains("interface was deleted")),
        "{map}"
    );
    // What is pinned there filters nothing: writing it by hand would mislead.
    let out = t.output(&ns, &format!("gate close {LOGICAL4} --iface v0"))?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is stale"));

    let out = t.ok(&ns, "attach --iface v0")?;
    assert!(
        out.contains("removed the stale gate pinned for v0")
            && out.contains("its table is not reused")
            && out.contains("removed the stale liveness map"),
        "{out}"
    );
    assert!(!out.contains("kept"), "a defunct link was kept: {out}");
    assert!(ns.ip("link show dev v0")?.contains("xdp"));
    // Nothing inherited: not the open entry (a standby would serve an address at once), not
    // the dead agent's registration (the gate would answer live peers with its exit notice).
    assert!(t.entry(&ns, "v0", LOGICAL4, None)?.is_none());
    let live = liveness::registered(&ns.pin_dir()?)?.expect("a liveness map");
    assert_eq!((live.state, live.tgid), (AGENT_NONE, 0));
    Ok(())
}

/// Removes what a test left in bpffs or /run on purpose, also when it fails.
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Waits until the XDP link of `iface` pinned in `ns_dir` is defunct: the kernel destroys a
/// deleted namespace's interfaces a moment after its last reference goes.
fn wait_defunct(ns_dir: &Path, iface: &str) -> Result<()> {
    let link = ns_dir.join(iface).join(XDP_LINK_PIN);
    wait_for("the deleted namespace's interface to go", WAIT, || {
        Ok((pinned_link::ifindex(&link)? == 0).then_some(()))
    })
}

#[test]
fn a_new_namespace_never_inherits_a_deleted_ones_pins() -> Result<()> {
    let t = takeover();
    let old = namespace_with_gate(&t, "dead")?;
    t.ok(&old, &format!("gate open {LOGICAL4} --iface v0"))?;
    let old_id = t.map(&old)?["netns"].as_str().unwrap().to_string();
    let old_ino = old.inode()?;
    // The namespace is deleted and its pins stay, as a crashed host's or test's do. They are
    // moved aside first (a name `takeover cleanup` ignores), where another test's cleanup
    // leaves them alone.
    let aside = Path::new(PIN_ROOT).join(format!("test-aside-{}", std::process::id()));
    std::fs::rename(old.pin_dir()?, &aside)?;
    let mut leftovers = RemoveOnDrop(vec![
        aside.clone(),
        Path::new("/run/takeover").join(&old_id),
    ]);
    takeover_lab::ip(&format!("netns del {}", old.name))?;
    wait_defunct(&aside, "v0")?;

    // The kernel hands the freed inode to a later namespace: try for it.
    let mut made = Vec::new();
    for _ in 0..50 {
        let n = Netns::new("new")?;
        let reused = n.inode()? == old_ino;
        made.push(n);
        if reused {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let new = made.pop().unwrap();
    let reused = new.inode()? == old_ino;
    eprintln!("inode {old_ino} reused: {reused}");
    let new_id = t.map(&new)?["netns"].as_str().unwrap().to_string();
    assert_ne!(
        new_id, old_id,
        "two namespaces, one id (inode reused: {reused})"
    );
    // Where an earlier takeover looked for the new namespace's pins, by its inode, lie the
    // dead one's (the inode is the dead one's when reused; placed there either way).
    let legacy = Path::new(PIN_ROOT).join(format!("net-{}", new.inode()?));
    leftovers.0.push(legacy.clone());
    std::fs::rename(&aside, &legacy)?;
    assert_eq!(
        t.map(&new)?["interfaces"],
        serde_json::json!([]),
        "the new namespace sees the dead one's gates"
    );
    new.ip("link add v0 type veth peer v1")?;
    new.ip("link set v0 up")?;
    let out = t.ok(&new, "attach --iface v0")?;
    assert!(
        out.contains(&format!("removed {}", legacy.display())) && !out.contains("kept"),
        "{out}"
    );
    assert!(!legacy.exists());
    assert!(t.entry(&new, "v0", LOGICAL4, None)?.is_none());
    Ok(())
}

/// `takeover cleanup` run machine-wide (it needs no namespace), parsed.
fn cleanup(t: &Takeover, args: &[&str]) -> Result<serde_json::Value> {
    let out = takeover_lab::run(std::process::Command::new(&t.bin).arg("cleanup").args(args))?;
    Ok(serde_json::from_str(&out)?)
}

fn outcome<'a>(report: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    report["namespaces"]
        .as_array()?
        .iter()
        .find(|o| o["id"] == id)
}

#[test]
fn cleanup_removes_what_deleted_namespaces_left_and_nothing_else() -> Result<()> {
    let t = takeover();
    let gone = namespace_with_gate(&t, "gone")?;
    t.ok(&gone, &format!("gate open {LOGICAL4} --iface v0"))?;
    let gone_id = gone.id()?;
    let (gone_pins, gone_run) = (gone.pin_dir()?, Path::new("/run/takeover").join(&gone_id));
    std::fs::create_dir_all(&gone_run)?;
    std::fs::write(gone_run.join("v0.epochs"), format!("{LOGICAL4} 3\n"))?;
    let live = namespace_with_gate(&t, "live")?;
    t.ok(&live, &format!("gate close {LOGICAL4} --iface v0"))?;
    // Directories of an earlier takeover: one of a live namespace (kept: it may be in use),
    // one of an inode no namespace has (removed).
    let live_legacy = Path::new(PIN_ROOT).join(format!("net-{}", live.inode()?));
    let dead_legacy = Path::new(PIN_ROOT).join("net-1");
    let _leftovers = RemoveOnDrop(vec![
        gone_pins.clone(),
        gone_run.clone(),
        live_legacy.clone(),
        dead_legacy.clone(),
    ]);
    for d in [&live_legacy, &dead_legacy] {
        std::fs::create_dir_all(d)?;
    }
    takeover_lab::ip(&format!("netns del {}", gone.name))?;
    wait_defunct(&gone_pins, "v0")?;

    let dry = cleanup(&t, &["--dry-run", "--json"])?;
    assert_eq!(
        outcome(&dry, &gone_id).map(|o| o["action"].clone()),
        Some("would remove".into()),
        "{dry}"
    );
    assert!(
        gone_pins.exists() && gone_run.exists(),
        "the dry run removed something"
    );

    let done = cleanup(&t, &["--json"])?;
    assert_eq!(
        outcome(&done, &gone_id).unwrap()["action"],
        "removed",
        "{done}"
    );
    assert_eq!(
        outcome(&done, "net-1").unwrap()["action"],
        "removed",
        "{done}"
    );
    assert!(!gone_pins.exists() && !gone_run.exists() && !dead_legacy.exists());
    // The live namespace's directories are untouched, and its gate works as before.
    assert!(outcome(&done, &live.id()?).is_none());
    assert!(live_legacy.exists());
    assert_eq!(
        t.entry(&live, "v0", LOGICAL4, None)?.unwrap()["state"],
        "closed"
    );
    assert!(live.ip("link show dev v0")?.contains("xdp"));
    let text = takeover_lab::run(std::process::Command::new(&t.bin).arg("cleanup"))?;
    assert!(text.contains("left alone"), "{text}");
    Ok(())
}

#[test]
fn forward_to_a_vanished_interface_is_dropped_and_logged() -> Result<()> {
    use std::io::BufRead as _;
    let t = takeover();
    let lan = Lan::new(&t, &["cli", "a", "b"])?;
    let (cli, a) = (lan.host("cli"), lan.host("a"));
    lan.dedicated_line("a", "b")?;
    let _ra = server(&t, a)?;
    cli.static_neigh(LOGICAL4, &a.mac())?;
    t.ok(
        &a.ns,
        &format!(
            "gate forward {LOGICAL4} --iface lan --to-mac {} --via ded",
            lan.host("b").ded_mac()
        ),
    )?;
    // The line goes away: the kernel drops it from the redirect map.
    a.ns.ip("link del ded")?;

    let mut log = t
        .cmd(&a.ns)
        .args(["log", "--iface", "lan"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = log.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let c = Client::new(&cli.ns, "0.0.0.0:0", &format!("{LOGICAL4}:{PORT}"))?;
    // Requests until the event shows up (the logger may attach after the first ones).
    let mut line = None;
    for seq in 0..50 {
        c.send(seq)?;
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            line = Some(l);
            break;
        }
    }
    log.kill()?;
    log.wait()?;
    let line = line.expect("no event logged");
    assert!(
        line.contains("WARN") && line.contains("not a redirect target"),
        "{line}"
    );
    assert!(t.counter(&a.ns, "lan", LOGICAL4, None, "rx_drop")? >= 1);
    assert_eq!(t.counter(&a.ns, "lan", LOGICAL4, None, "rx_forward")?, 0);
    Ok(())
}
