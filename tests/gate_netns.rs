//! The gate on real veths in network namespaces, driven by the real `takeover` binary.
//!
//! Topology (DESIGN.md): a bridge in its own namespace as the switch, a client `cli` and
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

use anyhow::Result;
use takeover_lab::{
    capture::{v4, Capture, Frame},
    topology::{wait_for, Host, Lan},
    udp::{Client, Responder},
    Takeover,
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
    assert!(
        out.contains("kept"),
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

#[test]
fn attach_replaces_a_gate_whose_interface_was_recreated() -> Result<()> {
    let t = takeover();
    let lan = Lan::new(&t, &["cli", "a"])?;
    let a = lan.host("a");
    // A second interface in a, attached, then deleted and made again under the same name.
    a.ns.ip("link add tmp0 type veth peer tmp1")?;
    a.ns.ip("link set tmp0 up")?;
    a.ns.ip("link set tmp1 up")?;
    t.ok(&a.ns, "attach --iface tmp0")?;
    t.ok(&a.ns, &format!("gate close {LOGICAL4} --iface tmp0"))?;
    a.ns.ip("link del tmp0")?;
    a.ns.ip("link add tmp0 type veth peer tmp1")?;
    let out = t.ok(&a.ns, "attach --iface tmp0")?;
    assert!(!out.contains("kept"), "a defunct link was kept: {out}");
    assert!(a.ns.ip("link show dev tmp0")?.contains("xdp"));
    // The gate table is the operator's: it survived.
    assert_eq!(
        t.entry(&a.ns, "tmp0", LOGICAL4, None)?.unwrap()["state"],
        "closed"
    );
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
