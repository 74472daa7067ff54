//! Real agents (`takeover run`) on the namespace topology: client `cli`, servers `a` and `b`
//! on a bridge, and a dedicated line a<->b. Faults are real: links taken down, processes
//! killed with SIGKILL. Every process is kept by PID and killed on drop.
use std::time::Duration;

use anyhow::Result;
use takeover_lab::{
    agents::{with_logs, without_fence, Agent, Cluster, Timing, LOGICAL},
    storage::LoopDevice,
    topology::{wait_for, Host, Lan},
    udp::{Client, Responder},
    Takeover,
};

const PORT: u16 = 7000;
const WAIT: Duration = Duration::from_secs(15);

fn takeover() -> Takeover {
    Takeover::new(env!("CARGO_BIN_EXE_takeover"))
}

/// Waits until the client's requests to the logical address are answered by `who`.
fn wait_served_by(client: &Client, who: &str, what: &str) -> Result<()> {
    let mut seq = 0;
    wait_for(what, WAIT, || {
        seq += 1;
        Ok((client.request(seq, Duration::from_millis(50))?.as_deref() == Some(who)).then_some(()))
    })
}

/// The address is configured by the agent; the responder binds to it once it is there.
fn responder(host: &Host) -> Result<Responder> {
    wait_for(&format!("{LOGICAL} on {}", host.name), WAIT, || {
        Ok(host
            .ns
            .ip("-o addr show dev lan")?
            .contains(LOGICAL)
            .then_some(()))
    })?;
    Responder::spawn(&host.ns, &format!("{LOGICAL}:{PORT}"), &host.name)
}

struct Setup {
    lan: Lan,
    cluster: Cluster,
    agents: Vec<Agent>,
    _responders: Vec<Responder>,
    client: Client,
}

impl Setup {
    /// Adds both agents' logs to an error.
    fn logged<T>(&self, r: Result<T>) -> Result<T> {
        with_logs(&self.agents, r)
    }
}

/// A real crash of `host`, whose agent is `agent`: nothing more leaves the host, neither from
/// its agent nor from its kernel. The agent is stopped first (an agent that saw its links go
/// would tell its peer), then the links go down, and only then is the agent killed (a kernel
/// that outlived its agent would report the exit, which is the killed-agent story below).
fn crash(agent: &mut Agent, host: &Host) -> Result<()> {
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGSTOP) };
    host.ns.sh("ip link set ded down; ip link set lan down")?;
    agent.kill();
    Ok(())
}

/// Neither agent started a fence.
fn nobody_fenced(s: &Setup) -> bool {
    s.agents.iter().all(|a| !a.logged("fence_started", &[]))
}

fn setup() -> Result<Setup> {
    setup_with(|cluster, a, b| cluster.start(&takeover(), a, b))
}

/// [`setup`] with node a's agent started by `start_a`.
fn setup_with(start_a: impl Fn(&Cluster, &Host, &Host) -> Result<Agent>) -> Result<Setup> {
    setup_starting(start_a, |cluster, b, a| cluster.start(&takeover(), b, a))
}

/// [`setup`] with node a's agent started by `start_a` and b's by `start_b` (each given its
/// own host first).
fn setup_starting(
    start_a: impl Fn(&Cluster, &Host, &Host) -> Result<Agent>,
    start_b: impl Fn(&Cluster, &Host, &Host) -> Result<Agent>,
) -> Result<Setup> {
    let t = takeover();
    let lan = Lan::new(&t, &["cli", "a", "b"])?;
    lan.dedicated_line("a", "b")?;
    let cluster = Cluster::new(&lan, Timing::default())?;
    let (a, b) = (lan.host("a"), lan.host("b"));
    let agents = vec![start_a(&cluster, a, b)?, start_b(&cluster, b, a)?];
    let responders = vec![responder(a)?, responder(b)?];
    let client = Client::new(
        &lan.host("cli").ns,
        "0.0.0.0:0",
        &format!("{LOGICAL}:{PORT}"),
    )?;
    if let Err(e) = wait_served_by(&client, "a", "a to serve its address") {
        anyhow::bail!("{e}\na:\n{}\nb:\n{}", agents[0].log(), agents[1].log());
    }
    Ok(Setup {
        lan,
        cluster,
        agents,
        _responders: responders,
        client,
    })
}

#[test]
fn crash_of_the_active_moves_its_address_to_the_standby() -> Result<()> {
    let mut s = setup()?;
    let a = s.lan.host("a");
    // A real crash sends nothing: the agent dies (SIGKILL), then the links go down (an agent
    // that saw its links go first would tell b, which is the LAN-down story below).
    crash(&mut s.agents[0], a)?;
    // b fences a, opens, and announces: the client's ARP cache (a's MAC) is corrected.
    s.logged(wait_served_by(&s.client, "b", "b to take over"))?;
    let (b_agent, log) = (&s.agents[1], s.agents[1].log());
    assert!(
        b_agent.logged("fence_started", &[("peer", "a")]),
        "b did not fence a:\n{log}\na:\n{}",
        s.agents[0].log()
    );
    assert!(
        b_agent.logged("takeover", &[("resource", LOGICAL)]),
        "{log}"
    );
    // Ordering the address back to the dead node is refused, with the reason.
    let out = takeover().output(&s.lan.host("b").ns, &format!("switchover {LOGICAL} --to a"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("a is not alive"), "{stderr}");
    drop(s.cluster);
    Ok(())
}

#[test]
fn a_killed_agent_is_reported_by_its_kernel_and_its_address_taken_over() -> Result<()> {
    let mut s = setup()?;
    // Only the agent dies; a's links stay up and its kernel keeps running. The data plane of
    // a answers b's next heartbeat with a's exit notice, long before the dead time (100 ms).
    s.agents[0].kill();
    s.logged(wait_served_by(&s.client, "b", "b to take over"))?;
    let (b_agent, log) = (&s.agents[1], s.agents[1].log());
    assert!(
        b_agent.logged("peer_dead", &[("peer", "a"), ("reason", "agent_exited")]),
        "b did not learn of the exit from a's kernel:\n{log}"
    );
    assert!(
        !b_agent.logged("peer_dead", &[("reason", "silent")]),
        "{log}"
    );
    // a's kernel closed its gates at the exit (its lease) before it sent the notice: proof
    // enough, no fence.
    assert!(
        b_agent.logged("lease_lapsed", &[("peer", "a"), ("by_kernel", "true")]),
        "{log}"
    );
    assert!(!b_agent.logged("fence_started", &[]), "{log}");
    Ok(())
}

/// Both agents' fence is a command that does nothing and says it worked (what many
/// keepalived users write): only the leases keep one server.
fn with_a_fence_that_does_nothing(config: String) -> String {
    let fence = config
        .lines()
        .find(|l| l.starts_with("command = "))
        .expect("the lab's config has a fence command")
        .to_string();
    config.replace(&fence, r#"command = ["/bin/true"]"#)
}

#[test]
fn a_frozen_agent_with_a_fence_that_does_nothing_leaves_exactly_one_server() -> Result<()> {
    let t = takeover();
    let start = |cluster: &Cluster, me: &Host, peer: &Host| {
        cluster.start_with(&takeover(), me, peer, with_a_fence_that_does_nothing)
    };
    let s = setup_starting(start, start)?;
    let (a, b) = (s.lan.host("a"), s.lan.host("b"));
    only_answerer(&s, a, "a serves")?;
    // No storage area here: handoff records have nowhere to live, and the agent says so.
    let refused = t.output(&a.ns, "handoff list")?;
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && why.contains("no [storage]"),
        "{why}"
    );
    // a's agent hangs: its process lives (no exit notice), its links and kernel work, its
    // gate is still written open. Its lease, renewed only as far as b echoed it, ends about
    // when b counts it dead; b takes over on the first proof: the fence that lies (at once),
    // or the lease (once a's kernel has answered for the dead time while its agent stayed
    // silent). Either way a's gate has closed by itself.
    let pid = s.agents[0].child.id() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let frozen = s.logged(wait_served_by(&s.client, "b", "b to take over"));
    let result = (|| -> Result<()> {
        frozen?;
        let log = s.agents[1].log();
        assert!(
            s.agents[1].logged("lease_lapsed", &[("peer", "a"), ("by_kernel", "false")])
                || s.agents[1].logged("fenced", &[("peer", "a")]),
            "{log}"
        );
        // The pinned table of a still says open: the lease is what closed it, and `map show`
        // says so.
        let map: serde_json::Value =
            serde_json::from_str(&t.ok(&a.ns, "map show --iface lan --json")?)?;
        let entry = &map["interfaces"][0]["entries"][0];
        assert_eq!(
            (&entry["state"], &entry["leased"]),
            (&"open".into(), &true.into()),
            "{map}"
        );
        assert_eq!(map["lease"]["remaining_ms"], 0.0, "{map}");
        assert!(
            map["lease"]["lapsed_ms_ago"]
                .as_f64()
                .is_some_and(|ms| ms > 0.0),
            "{map}"
        );
        let table = t.ok(&a.ns, "map show")?;
        assert!(
            table.starts_with("lease: LAPSED") && table.contains("open (lapsed)"),
            "{table}"
        );
        only_answerer(&s, b, "b serves, a's lapsed gate claims nothing")?;
        for seq in 2000..2050 {
            assert_eq!(
                s.client.request(seq, Duration::from_secs(1))?.as_deref(),
                Some("b"),
                "request {seq}"
            );
        }
        Ok(())
    })();
    // Thawed, a renews nothing it lost (it closes on hearing b's newer epoch); the preempt
    // delay then gives the address back to a in a handover.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    result?;
    s.logged(wait_served_by(&s.client, "a", "the failback to a"))?;
    only_answerer(&s, a, "a serves again")?;
    Ok(())
}

/// A formatted storage area for nodes a and b on a loop device, and the configuration lines
/// that use it (written every 10 ms, stale after 200 ms).
fn shared_storage() -> Result<(LoopDevice, String)> {
    let dev = LoopDevice::new("area", 8)?;
    takeover().ok_plain(&format!("storage init {} --nodes a,b", dev.dev))?;
    let lines = dev.config("10ms", "200ms");
    Ok((dev, lines))
}

#[test]
fn both_network_paths_cut_with_the_storage_fine_moves_nothing_and_fences_no_one() -> Result<()> {
    let (dev, storage) = shared_storage()?;
    let start = |cluster: &Cluster, me: &Host, peer: &Host| {
        cluster.start_with(&takeover(), me, peer, |c| c + &storage)
    };
    let s = setup_starting(start, start)?;
    let (a, b) = (s.lan.host("a"), s.lan.host("b"));
    only_answerer(&s, a, "a serves")?;
    // Every path between a and b cut both ways with no carrier lost: the switch isolates
    // their ports (the client still reaches both), the line drops all they send.
    s.lan.isolate("a", "b", true)?;
    for h in [a, b] {
        h.ns.sh("tc qdisc replace dev ded root pfifo limit 0")?;
    }
    s.logged(wait_for("b to see a alive on the disk", WAIT, || {
        Ok(s.agents[1]
            .logged("disk_alive", &[("peer", "a")])
            .then_some(()))
    }))?;
    // Well past the storage timeout: a serves throughout, b takes nothing, nobody fences.
    for seq in 3000..3100 {
        let got = s.client.request(seq, Duration::from_secs(1))?;
        if got.as_deref() != Some("a") {
            s.logged(Err(anyhow::anyhow!("request {seq} answered by {got:?}")))?;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    only_answerer(&s, a, "a serves through the partition")?;
    // a counts b dead too, and renews its lease alone: b's disk heartbeat keeps b from
    // taking anything, a's own keeps its lease running.
    assert!(s.agents[0].logged("peer_dead", &[("peer", "b")]));
    assert!(nobody_fenced(&s), "{}", s.agents[1].log());
    assert!(
        !s.agents[1].logged("takeover", &[]),
        "{}",
        s.agents[1].log()
    );
    // The area shows both heartbeats moving and what a serves.
    let area: serde_json::Value =
        serde_json::from_str(&takeover().ok_plain(&format!("storage show {} --json", dev.dev))?)?;
    let serving = &area["nodes"][0]["heartbeat"]["value"]["serving"];
    assert!(serving[LOGICAL].as_u64().is_some(), "{area}");
    assert!(area["nodes"][1]["heartbeat"]["generation"].as_u64() > Some(0));
    // Healed: they hear each other again; nothing moved.
    s.lan.isolate("a", "b", false)?;
    for h in [a, b] {
        h.ns.sh("tc qdisc del dev ded root")?;
    }
    s.logged(wait_for("b to hear a again", WAIT, || {
        Ok(s.agents[1]
            .logged("peer_alive", &[("peer", "a")])
            .then_some(()))
    }))?;
    only_answerer(&s, a, "a serves after the partition")?;
    drop(s);
    Ok(())
}

#[test]
fn an_owner_cut_off_every_path_with_its_lan_down_obeys_a_poison_pill_and_is_taken_over(
) -> Result<()> {
    // No fence command: the storage area is the only way left to tell a to let go.
    let (dev, storage) = shared_storage()?;
    let start = |cluster: &Cluster, me: &Host, peer: &Host| {
        cluster.start_with(&takeover(), me, peer, |c| without_fence(c) + &storage)
    };
    let s = setup_starting(start, start)?;
    let (a, b) = (s.lan.host("a"), s.lan.host("b"));
    only_answerer(&s, a, "a serves")?;
    // a's LAN goes down at its switch port (a sees its carrier go), and the line drops all
    // a sends and gets with no carrier lost: b hears nothing from a on any path, a's disk
    // heartbeat still moves, and says a's LAN is down.
    a.ns.sh("tc qdisc replace dev ded root pfifo limit 0")?;
    b.ns.sh("tc qdisc replace dev ded root pfifo limit 0")?;
    a.ns.ip("link set lan down")?;
    s.logged(wait_served_by(&s.client, "b", "b to take over"))?;
    let (la, lb) = (&s.agents[0], &s.agents[1]);
    assert!(lb.logged("pill_sent", &[("peer", "a")]), "{}", lb.log());
    assert!(
        la.logged("ordered", &[("by", "b"), ("fenced", "true")]),
        "{}",
        la.log()
    );
    assert!(lb.logged("pill_obeyed", &[("peer", "a")]), "{}", lb.log());
    assert!(nobody_fenced(&s));
    // The order is on the area: in b's message slot, obeyed in a's heartbeat.
    let area: serde_json::Value =
        serde_json::from_str(&takeover().ok_plain(&format!("storage show {} --json", dev.dev))?)?;
    let orders = &area["nodes"][1]["message"]["value"]["orders"];
    assert_eq!(orders[0]["to"], "a", "{area}");
    assert_eq!(
        area["nodes"][0]["heartbeat"]["value"]["obeyed"]["b"], orders[0]["id"],
        "{area}"
    );
    // a's LAN back but its port isolated from b's, the line still dead: b still hears
    // nothing of a, the order stands, a serves nothing (its clients reach it, it answers
    // none of them).
    s.lan.isolate("a", "b", true)?;
    a.ns.ip("link set lan up")?;
    std::thread::sleep(Duration::from_millis(500));
    only_answerer(&s, b, "b serves while a is ordered off")?;
    let status = takeover().ok(&a.ns, "status")?;
    assert!(status.contains("FENCED BY ORDER of b"), "{status}");
    // The paths back: b hears a and withdraws the order; a, first in preference, gets its
    // address back after the preempt delay.
    s.lan.isolate("a", "b", false)?;
    a.ns.sh("tc qdisc del dev ded root")?;
    b.ns.sh("tc qdisc del dev ded root")?;
    s.logged(wait_served_by(&s.client, "a", "the address back to a"))?;
    assert!(s.agents[1].logged("pill_withdrawn", &[("peer", "a")]));
    assert!(s.agents[0].logged("ordered", &[("by", "b"), ("fenced", "false")]));
    only_answerer(&s, a, "a serves again")?;
    Ok(())
}

#[test]
fn storage_lost_on_the_owner_is_reported_and_hands_over_when_told_to() -> Result<()> {
    // Each host reaches the area by a path of its own (two loop devices over one file): a's
    // can fail alone.
    let (dev_a, _) = shared_storage()?;
    let dev_b = dev_a.another()?;
    let lines = |dev: &LoopDevice| dev.config("10ms", "200ms") + "on_lost = \"hand_over\"\n";
    let (for_a, for_b) = (lines(&dev_a), lines(&dev_b));
    let s = setup_starting(
        |cluster, me, peer| cluster.start_with(&takeover(), me, peer, |c| c + &for_a),
        |cluster, me, peer| cluster.start_with(&takeover(), me, peer, |c| c + &for_b),
    )?;
    let (a, b) = (s.lan.host("a"), s.lan.host("b"));
    only_answerer(&s, a, "a serves")?;
    // a's writes fail (its path to the storage is read-only): it says so, and hands its
    // address to b, which still writes; nobody is fenced, nothing is lost on the way.
    dev_a.set_writable(false)?;
    s.logged(wait_served_by(&s.client, "b", "b to take the address over"))?;
    let log = s.agents[0].log();
    assert!(s.agents[0].logged("storage", &[("lost", "true")]), "{log}");
    assert!(
        s.agents[1].logged("handover", &[]) || s.agents[0].logged("handover", &[]),
        "{log}"
    );
    assert!(nobody_fenced(&s), "{log}");
    let status = takeover().ok(&a.ns, "status")?;
    assert!(status.contains("storage LOST"), "{status}");
    only_answerer(&s, b, "b serves")?;
    // Writable again: a is fit, and the preempt delay gives the address back.
    dev_a.set_writable(true)?;
    s.logged(wait_served_by(&s.client, "a", "the address back to a"))?;
    assert!(s.agents[0].logged("storage", &[("lost", "false")]));
    Ok(())
}

#[test]
fn a_hung_host_without_a_fence_is_taken_over_once_its_disk_heartbeat_is_stale() -> Result<()> {
    let (dev, storage) = shared_storage()?;
    // Each resource's owner and epoch, as the storage area records them.
    let owner = || -> Result<(String, u64)> {
        let area: serde_json::Value = serde_json::from_str(
            &takeover().ok_plain(&format!("storage show {} --json", dev.dev))?,
        )?;
        let o = &area["owners"][LOGICAL];
        Ok((
            o["node"].as_str().unwrap_or("").to_string(),
            o["epoch"].as_u64().unwrap_or(0),
        ))
    };
    let start = |cluster: &Cluster, me: &Host, peer: &Host| {
        cluster.start_with(&takeover(), me, peer, |c| without_fence(c) + &storage)
    };
    let s = setup_starting(start, start)?;
    let (a, b) = (s.lan.host("a"), s.lan.host("b"));
    only_answerer(&s, a, "a serves")?;
    // a's service leaves a handoff for its successor; b, which does not serve the address,
    // may not write one.
    let t = takeover();
    t.ok(
        &a.ns,
        &format!("handoff put {LOGICAL} clients=12 note=two=words"),
    )?;
    let refused = t.output(&b.ns, &format!("handoff put {LOGICAL} clients=0"))?;
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && why.contains("a serves it"),
        "{why}"
    );
    // a hangs whole: its agent stops, and nothing leaves the host any more, its kernel's
    // answers included (its switch port and its end of the line go down). To b that is a
    // crash, or a partition: only the disk can tell.
    let pid = s.agents[0].child.id() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    s.lan.switch.ip("link set p-a down")?;
    a.ns.ip("link set ded down")?;
    let hung = s.logged(wait_served_by(&s.client, "b", "b to take over"));
    let result = (|| -> Result<()> {
        hung?;
        let log = s.agents[1].log();
        assert!(s.agents[1].logged("disk_stale", &[("peer", "a")]), "{log}");
        assert!(
            s.agents[1].logged("lease_lapsed", &[("peer", "a"), ("by_kernel", "false")]),
            "{log}"
        );
        assert!(nobody_fenced(&s), "{log}");
        // On record before b opened: b owns it now, in a newer epoch than a's.
        assert_eq!(owner()?, ("b".to_string(), 2));
        // b reads what a left, then writes its own record under its epoch.
        assert_eq!(
            t.ok(&b.ns, &format!("handoff get {LOGICAL} note"))?.trim(),
            "two=words"
        );
        t.ok(&b.ns, &format!("handoff put {LOGICAL} clients=13"))?;
        let got: serde_json::Value =
            serde_json::from_str(&t.ok(&b.ns, &format!("handoff get {LOGICAL} --json"))?)?;
        let record = &got["resources"][LOGICAL];
        assert_eq!(
            (&record["epoch"], &record["node"]),
            (&2.into(), &"b".into()),
            "{got}"
        );
        assert_eq!(
            record["values"],
            serde_json::json!({"clients": "13"}),
            "{got}"
        );
        Ok(())
    })();
    only_answerer(&s, b, "b serves, a's lapsed gate claims nothing")?;
    // Back: a serves nothing it lost (its lease lapsed; it hears b's newer epoch), and gets
    // its address back by a handover after the preempt delay.
    s.lan.switch.ip("link set p-a up")?;
    a.ns.ip("link set ded up")?;
    unsafe { libc::kill(pid, libc::SIGCONT) };
    result?;
    s.logged(wait_served_by(&s.client, "a", "the failback to a"))?;
    let (node, epoch) = owner()?;
    assert!(
        node == "a" && epoch > 2,
        "{node} {epoch}\n{}",
        s.agents[0].log()
    );
    only_answerer(&s, a, "a serves again")?;
    Ok(())
}

#[test]
fn lan_link_down_on_the_active_moves_its_address_without_fencing() -> Result<()> {
    let s = setup()?;
    s.lan.host("a").ns.ip("link set lan down")?;
    s.logged(wait_served_by(&s.client, "b", "b to take over"))?;
    let (la, lb) = (s.agents[0].log(), s.agents[1].log());
    assert!(s.agents[0].logged("lan_link", &[("up", "false")]), "{la}");
    assert!(
        !s.agents[1].logged("fence_started", &[]),
        "b fenced a live peer that told it about its link:\n{lb}"
    );
    // Back up: after the preempt delay the address goes home.
    s.lan.host("a").ns.ip("link set lan up")?;
    s.logged(wait_served_by(
        &s.client,
        "a",
        "the address to come back to a",
    ))?;
    Ok(())
}

#[test]
fn losing_the_dedicated_line_alone_moves_nothing() -> Result<()> {
    let s = setup()?;
    s.lan.host("a").ns.ip("link set ded down")?;
    // Long enough for several dead times (10 x 10 ms) and the preempt delay.
    for seq in 1000..1100 {
        assert_eq!(
            s.client.request(seq, Duration::from_secs(1))?.as_deref(),
            Some("a"),
            "request {seq}\na:\n{}\nb:\n{}",
            s.agents[0].log(),
            s.agents[1].log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (la, lb) = (s.agents[0].log(), s.agents[1].log());
    assert!(nobody_fenced(&s), "{la}\n{lb}");
    assert!(
        s.agents[0].logged("line_carrier", &[("peer", "b"), ("up", "false")]),
        "{la}"
    );
    Ok(())
}

#[test]
fn status_shows_the_state_table() -> Result<()> {
    let s = setup()?;
    let t = takeover();
    let b = s.lan.host("b");
    let v: serde_json::Value = serde_json::from_str(&t.ok(&b.ns, "status --json")?)?;
    assert_eq!(v["node"], "b");
    assert_eq!(v["ready"], true);
    assert_eq!(v["lan"]["state"], "up");
    assert_eq!(v["addresses"][0]["address"], LOGICAL);
    assert_eq!(v["addresses"][0]["gate"], "closed");
    assert_eq!(v["addresses"][0]["served_by"], "a");
    let peer = &v["peers"][0];
    assert_eq!(
        (peer["name"].as_str(), peer["state"].as_str()),
        (Some("a"), Some("alive"))
    );
    for path in peer["paths"].as_array().unwrap() {
        assert!(
            path["last_heard_ms_ago"].as_f64().unwrap() < 1000.0,
            "{path}"
        );
    }
    // In a steady state the peer's heartbeats reach the agent through the gate's ring only:
    // the sockets carry news and kernel answers, and there is none.
    let read = |v: &serde_json::Value, k: &str| v["received"][k].as_u64().unwrap();
    let later = wait_for("more heartbeats through the ring", WAIT, || {
        let l: serde_json::Value = serde_json::from_str(&t.ok(&b.ns, "status --json")?)?;
        Ok((read(&l, "gate") >= read(&v, "gate") + 100).then_some(l))
    })?;
    assert_eq!(
        read(&later, "socket"),
        read(&v, "socket"),
        "{} then {}",
        v["received"],
        later["received"]
    );
    let table = t.ok(&b.ns, "status")?;
    assert!(
        table.contains("PEER")
            && table.contains("dedicated")
            && table.contains("alive")
            && table.contains("from the gates' ring"),
        "{table}"
    );
    Ok(())
}

#[test]
fn forged_and_replayed_heartbeats_are_rejected_and_counted() -> Result<()> {
    use takeover_lab::capture::{Capture, Frame};
    let s = setup()?;
    let t = takeover();
    let (a, b, cli) = (s.lan.host("a"), s.lan.host("b"), s.lan.host("cli"));
    // A real heartbeat from a to b, taken off a's LAN interface.
    let cap = Capture::start(&a.ns, "lan")?;
    let b_lan = takeover_lab::capture::v4(&b.addr4());
    let frames = cap.until(WAIT, |f| matches!(f, Frame::Ipv4 { dst, proto: 17, payload, .. } if *dst == b_lan && payload.len() > 8 && payload[2..4] == 7400u16.to_be_bytes()))?;
    let Some(Frame::Ipv4 { payload, .. }) = frames.last() else {
        unreachable!()
    };
    let heartbeat = payload[8..].to_vec();
    // An attacker on the LAN replays it, flips a bit in it, and sends garbage.
    let attacker = cli.ns.udp("0.0.0.0:0")?;
    let to = format!("{}:7400", b.addr4());
    let mut flipped = heartbeat.clone();
    flipped[20] ^= 1;
    for d in [&heartbeat, &flipped, &b"not a heartbeat at all".to_vec()] {
        attacker.send_to(d, &to)?;
    }
    let counts = wait_for("the rejections to be counted", WAIT, || {
        let v: serde_json::Value = serde_json::from_str(&t.ok(&b.ns, "status --json")?)?;
        let r = v["rejected"].clone();
        let all = ["replayed", "bad_tag", "bad_magic"]
            .iter()
            .all(|k| r[k].as_u64().unwrap_or(0) >= 1);
        Ok(all.then_some(v))
    })?;
    // And nothing changed: a still serves, b still stands by.
    assert_eq!(counts["addresses"][0]["served_by"], "a");
    assert_eq!(counts["peers"][0]["state"], "alive");
    assert_eq!(
        s.client.request(9999, Duration::from_secs(1))?.as_deref(),
        Some("a")
    );
    // The log says so, once (at most a line a second), naming the sender.
    let lb = s.agents[1].log();
    let lines = lb.matches("refused datagrams").count();
    assert!((1..=3).contains(&lines), "{lb}");
    assert!(lb.contains(&cli.addr4()), "{lb}");
    Ok(())
}

#[test]
fn run_refuses_an_invalid_config_with_every_problem() -> Result<()> {
    let t = takeover();
    let ns = takeover_lab::Netns::new("badcfg")?;
    let path = std::env::temp_dir().join(format!("takeover-badcfg-{}.toml", std::process::id()));
    // Leases off: then a fence command is required too.
    std::fs::write(&path, "[node]\nname = \"a\"\nlan = \"lan\"\nlisten = [\"10.0.0.1\"]\n[lease]\nenabled = false\n[auth]\nkey_file = \"/nonexistent\"\n")?;
    let out = t
        .cmd(&ns)
        .args(["run", "--no-realtime", "--config"])
        .arg(&path)
        .output()?;
    std::fs::remove_file(&path)?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("node.listen")
            && stderr.contains("fence.command")
            && stderr.contains("[[peer]]"),
        "{stderr}"
    );
    // It stopped before touching anything: no gate attached.
    assert!(!ns.pin_dir()?.exists());
    Ok(())
}

#[test]
fn a_planned_restart_of_the_active_agent_drops_no_request() -> Result<()> {
    let mut s = setup()?;
    let t = takeover();
    let (a, b) = (s.lan.host("a"), s.lan.host("b"));
    // Requests flow the whole time; the agent of a is stopped (SIGTERM) and started again.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let restarter = {
        let stop = stop.clone();
        let pid = s.agents[0].child.id() as i32;
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            unsafe { libc::kill(pid, libc::SIGTERM) };
            // No agent on a for three dead times (10 x 10 ms): only the restart notice keeps
            // b from fencing it, and the pinned gate keeps serving.
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let mut seq = 0u64;
    let mut restarted = false;
    while seq < 600 {
        seq += 1;
        let reply = s.client.request(10_000 + seq, Duration::from_secs(1))?;
        assert_eq!(
            reply.as_deref(),
            Some("a"),
            "request {seq} during the restart\n{}",
            s.agents[1].log()
        );
        if !restarted && stop.load(std::sync::atomic::Ordering::SeqCst) {
            // The old agent has exited (reaped below); a new one takes over the pinned gates.
            let _ = s.agents[0].child.wait();
            s.agents[0] = s.cluster.start(&t, a, b)?;
            restarted = true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    restarter.join().unwrap();
    assert!(restarted);
    let (la, lb) = (s.agents[0].log(), s.agents[1].log());
    // The new agent found the gate open and kept it; b neither fenced nor opened anything.
    assert!(
        la.contains("gate on lan")
            && !s.agents[0].logged("gate_changed", &[("resource", LOGICAL), ("gate", "closed")]),
        "{la}"
    );
    assert!(
        !s.agents[1].logged("fence_started", &[]) && !s.agents[1].logged("takeover", &[]),
        "{lb}"
    );
    Ok(())
}

#[test]
fn a_planned_switchover_moves_the_address_and_back_without_fencing() -> Result<()> {
    let s = setup()?;
    let t = takeover();
    let (a, b) = (s.lan.host("a"), s.lan.host("b"));
    // Toward the node that serves it already: refused, nothing to do.
    let out = t.output(&b.ns, &format!("switchover {LOGICAL} --to a"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("already served by a"),
        "{stderr}"
    );
    // Ordered on the node that serves it; then back, ordered on the other.
    let out = t.ok(&a.ns, &format!("switchover {LOGICAL} --to b"))?;
    assert!(out.contains("switchover to b"), "{out}");
    s.logged(wait_served_by(&s.client, "b", "the switchover to b"))?;
    // a handed the address over: a client whose ARP cache still names a is served by b,
    // through a (its gate forwards), instead of losing its requests.
    let status = t.ok(&a.ns, "status --json")?;
    assert!(status.contains("forward to b"), "{status}");
    let cli = s.lan.host("cli");
    cli.ns.ip(&format!(
        "neigh replace {LOGICAL} lladdr {} dev lan nud permanent",
        a.mac()
    ))?;
    assert_eq!(
        s.client.request(40_000, Duration::from_secs(1))?.as_deref(),
        Some("b"),
        "a stale ARP entry: forwarded by a, answered by b"
    );
    cli.ns.ip(&format!("neigh del {LOGICAL} dev lan"))?;
    // The order stands: well past the preempt delay, b still serves.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        s.client.request(50_000, Duration::from_secs(1))?.as_deref(),
        Some("b")
    );
    t.ok(&b.ns, &format!("switchover {LOGICAL} --to a"))?;
    s.logged(wait_served_by(&s.client, "a", "the switchover back to a"))?;
    let (la, lb) = (s.agents[0].log(), s.agents[1].log());
    assert!(nobody_fenced(&s), "{la}\n{lb}");
    // Bad orders are refused with a clear message.
    let out = t.output(&a.ns, &format!("switchover {LOGICAL} --to nobody"))?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody is not a node of this cluster"));
    let out = t.output(&a.ns, "switchover 10.9.9.9 --to b")?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a logical address"));
    Ok(())
}

/// One request on an agent's control socket and its one-line answer (JSON).
fn control(sock: &std::path::Path, request: &[u8]) -> Result<serde_json::Value> {
    use std::io::Write;
    let mut stream = std::os::unix::net::UnixStream::connect(sock)?;
    stream.set_read_timeout(Some(WAIT))?;
    // The agent may answer and close before reading it all (an oversized line).
    let _ = stream.write_all(request);
    read_answer(stream)
}

fn read_answer(stream: std::os::unix::net::UnixStream) -> Result<serde_json::Value> {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line)?;
    Ok(serde_json::from_str(&line)?)
}

/// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
fn proc_kib(pid: u32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with(field))
        .ok_or_else(|| anyhow::anyhow!("no {field} in /proc/{pid}/status"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

/// Sets the soft RLIMIT_NOFILE of process `pid` (the hard one stays: raising it again takes
/// CAP_SYS_RESOURCE); returns the previous soft limit.
fn set_nofile(pid: u32, soft: u64) -> Result<u64> {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let pid = pid as libc::pid_t;
    if unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    if unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(old.rlim_cur)
}

/// Waits until the agent answers `status` on its control socket.
fn wait_answered(sock: &std::path::Path, what: &str) -> Result<serde_json::Value> {
    wait_for(what, WAIT, || {
        Ok(control(sock, b"status\n")
            .ok()
            .filter(|v| v.get("node").is_some()))
    })
}

#[test]
fn an_oversized_control_request_is_refused_without_buffering_it() -> Result<()> {
    let s = setup()?;
    let sock = s.lan.host("a").ns.control_socket()?;
    let pid = s.agents[0].child.id();
    // The peak RSS restarts from the current one ("5" resets VmHWM).
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
    let before = proc_kib(pid, "VmHWM")?;
    // 10 MiB and no newline, written while the answer is read.
    let stream = std::os::unix::net::UnixStream::connect(&sock)?;
    stream.set_read_timeout(Some(WAIT))?;
    let mut writer = stream.try_clone()?;
    let flood = std::thread::spawn(move || {
        use std::io::Write;
        let _ = writer.write_all(&vec![b'x'; 10 << 20]);
    });
    let answer = s.logged(read_answer(stream))?;
    drop(flood.join());
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(error.contains("longer than"), "{answer}");
    let grew = proc_kib(pid, "VmHWM")?.saturating_sub(before);
    assert!(grew < 4096, "the agent's peak RSS grew by {grew} KiB");
    // And the next client is served.
    assert_eq!(control(&sock, b"status\n")?["node"], "a");
    Ok(())
}

#[test]
fn the_control_socket_survives_running_out_of_descriptors() -> Result<()> {
    let s = setup()?;
    let sock = s.lan.host("a").ns.control_socket()?;
    let pid = s.agents[0].child.id();
    // A few descriptors more than the agent holds: some idle clients take them, the next
    // accept fails with EMFILE.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    let exhausted = std::time::Instant::now();
    let old = set_nofile(pid, open + 4)?;
    let idle: Vec<_> = (0..16)
        .map(|_| std::os::unix::net::UnixStream::connect(&sock))
        .collect::<std::io::Result<_>>()?;
    let said = s.logged(wait_for("the agent to log EMFILE", WAIT, || {
        let log = s.agents[0].log();
        Ok(log.contains("Too many open files").then_some(log))
    }));
    set_nofile(pid, old)?;
    let said = said?;
    assert!(said.contains("control socket"), "{said}");
    drop(idle);
    // Every client after the exhaustion is answered.
    s.logged(wait_answered(&sock, "a status answer after EMFILE"))?;
    // Logged at most once a second, not once per failed accept.
    let lines = s.agents[0].log().matches("Too many open files").count() as u64;
    let seconds = exhausted.elapsed().as_secs();
    assert!(
        lines <= seconds + 1,
        "{lines} lines in {seconds} s:\n{}",
        s.agents[0].log()
    );
    Ok(())
}

#[test]
fn control_clients_beyond_the_cap_are_told_so_at_once() -> Result<()> {
    let s = setup()?;
    let sock = s.lan.host("a").ns.control_socket()?;
    // 32 idle clients hold every slot (each until the 2 s read timeout); the next are
    // refused with an answer instead of waiting.
    let idle: Vec<_> = (0..32)
        .map(|_| std::os::unix::net::UnixStream::connect(&sock))
        .collect::<std::io::Result<_>>()?;
    for _ in 0..8 {
        let answer = control(&sock, b"status\n")?;
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains("busy"), "{answer}");
    }
    // The command line says so too, whether or not its request was read.
    let out = takeover().output(&s.lan.host("a").ns, "status")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("busy"), "{stderr}");
    // Slots come back as clients go.
    drop(idle);
    s.logged(wait_answered(
        &sock,
        "a status answer once the idle clients left",
    ))?;
    Ok(())
}

/// The MACs that answer the client's ARP requests for the logical address (three requests).
fn arp_answerers(cli: &Host) -> Result<std::collections::BTreeSet<String>> {
    cli.arp_answerers(LOGICAL, 3, Duration::from_secs(1))
}

/// Waits until every ARP answer comes from `who` (announcements may still be on their way),
/// then checks that it stays so: exactly one host answers.
fn only_answerer(s: &Setup, who: &Host, when: &str) -> Result<()> {
    let cli = s.lan.host("cli");
    let want: std::collections::BTreeSet<String> = [who.mac()].into();
    s.logged(wait_for(when, WAIT, || {
        Ok((arp_answerers(cli)? == want).then_some(()))
    }))?;
    let again = arp_answerers(cli)?;
    assert_eq!(again, want, "{when}: answered by {again:?}");
    Ok(())
}

#[test]
fn exactly_one_host_answers_arp_for_the_address_through_every_handover() -> Result<()> {
    let mut s = setup()?;
    let t = takeover();
    let (a, b) = (s.lan.host("a"), s.lan.host("b"));
    only_answerer(&s, a, "a serves")?;
    // A switchover: a forwards for a while (clients with an old entry), and claims nothing.
    t.ok(&a.ns, &format!("switchover {LOGICAL} --to b"))?;
    s.logged(wait_served_by(&s.client, "b", "the switchover to b"))?;
    assert!(t.ok(&a.ns, "status")?.contains("forward to b"));
    only_answerer(&s, b, "a forwards to b")?;
    // The window ends: a closes.
    s.logged(wait_for("a to stop forwarding", WAIT, || {
        Ok((!t.ok(&a.ns, "status")?.contains("forward to b")).then_some(()))
    }))?;
    assert!(s.agents[0].logged("forward_ended", &[("to", "b")]));
    only_answerer(&s, b, "after a's window")?;
    // And back: now b forwards and claims nothing.
    t.ok(&b.ns, &format!("switchover {LOGICAL} --to a"))?;
    s.logged(wait_served_by(&s.client, "a", "the switchover back to a"))?;
    assert!(t.ok(&b.ns, "status")?.contains("forward to a"));
    only_answerer(&s, a, "b forwards to a")?;
    // A crash of a and its failback once it is back (preempt): b forwards, a answers.
    crash(&mut s.agents[0], a)?;
    s.logged(wait_served_by(&s.client, "b", "b to take over"))?;
    only_answerer(&s, b, "b took over from a crashed a")?;
    a.ns.ip("link set lan up")?;
    a.ns.ip("link set ded up")?;
    s.agents[0] = s.cluster.start(&t, a, b)?;
    s.logged(wait_served_by(&s.client, "a", "the failback to a"))?;
    only_answerer(&s, a, "b forwards to a after the failback")?;
    Ok(())
}

/// `takeover run` of `me`'s configuration (edited by `edit`), expected to fail: its stderr.
fn failed_run(
    cluster: &Cluster,
    me: &Host,
    peer: &Host,
    edit: impl Fn(String) -> String,
) -> Result<String> {
    let path = cluster.config(me, peer)?;
    let text = edit(std::fs::read_to_string(&path)?);
    let edited = path.with_extension("edited.toml");
    std::fs::write(&edited, text)?;
    let out = takeover()
        .cmd(&me.ns)
        .args(["run", "--no-realtime", "--config"])
        .arg(&edited)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "run succeeded:\n{stderr}");
    Ok(stderr)
}

/// What a failed start may not leave: a gate, the logical address, a control socket.
fn nothing_left(host: &Host) -> Result<()> {
    assert!(!host.ns.pin_dir()?.exists(), "pins left on {}", host.name);
    assert!(
        !host.ns.ip("-o addr show dev lan")?.contains(LOGICAL),
        "{LOGICAL} left on {}",
        host.name
    );
    assert!(!host.ns.control_socket()?.exists(), "control socket left");
    Ok(())
}

#[test]
fn a_run_that_cannot_start_changes_nothing() -> Result<()> {
    let t = takeover();
    let lan = Lan::new(&t, &["cli", "a", "b"])?;
    lan.dedicated_line("a", "b")?;
    let cluster = Cluster::new(&lan, Timing::default())?;
    let (a, b) = (lan.host("a"), lan.host("b"));
    // A listen address this host does not have: refused before anything changed.
    let stderr = failed_run(&cluster, a, b, |c| {
        c.replacen(&a.ded_addr4(), "10.99.0.1", 1)
    })?;
    assert!(
        stderr.contains("no interface of this host holds 10.99.0.1"),
        "{stderr}"
    );
    nothing_left(a)?;
    // Its port taken by another program.
    let busy = a.ns.udp(&format!("{}:7400", a.addr4()))?;
    let stderr = failed_run(&cluster, a, b, |c| c)?;
    assert!(stderr.contains("cannot bind"), "{stderr}");
    nothing_left(a)?;
    drop(busy);
    // A failure after the gates were attached and the address added (the control socket's
    // directory is taken by a file): all of it undone.
    let control = a.ns.control_socket()?;
    let dir = control.parent().unwrap().to_path_buf();
    std::fs::create_dir_all(dir.parent().unwrap())?;
    std::fs::write(&dir, "in the way")?;
    let stderr = failed_run(&cluster, a, b, |c| c);
    std::fs::remove_file(&dir)?;
    let stderr = stderr?;
    assert!(stderr.contains("undoing what it changed"), "{stderr}");
    nothing_left(a)?;
    Ok(())
}

#[test]
fn a_second_run_beside_a_running_agent_is_refused_and_changes_no_gate() -> Result<()> {
    let s = setup()?;
    let t = takeover();
    let (a, b) = (s.lan.host("a"), s.lan.host("b"));
    t.ok(&a.ns, &format!("switchover {LOGICAL} --to b"))?;
    s.logged(wait_served_by(&s.client, "b", "the switchover to b"))?;
    let before = t.map(&a.ns)?;
    assert!(format!("{before}").contains("forward"), "{before}");
    let stderr = failed_run(&s.cluster, a, b, |c| c)?;
    let pid = s.agents[0].child.id();
    assert!(
        stderr.contains(&format!(
            "an agent is already running in this network namespace (pid {pid}"
        )),
        "{stderr}"
    );
    let states = |v: &serde_json::Value| {
        v["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|i| i["entries"].as_array().cloned().unwrap_or_default())
            .map(|e| {
                (
                    e["address"].clone(),
                    e["state"].clone(),
                    e["forward"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        states(&before),
        states(&t.map(&a.ns)?),
        "the second run changed the gates"
    );
    Ok(())
}

#[test]
fn a_peer_configured_one_address_short_is_reported_never_fenced_and_nothing_moves() -> Result<()> {
    let mut s = setup()?;
    let t = takeover();
    let (a, b) = (s.lan.host("a"), s.lan.host("b"));
    // b restarts with an address a does not have.
    s.agents[1].stop();
    let extra = "[[address]]\nip = \"10.77.0.200/24\"\nowner = \"b\"\n\n[heartbeat]";
    s.agents[1] = s
        .cluster
        .start_with(&t, b, a, |c| c.replacen("[heartbeat]", extra, 1))?;
    s.logged(wait_for("both to report the mismatch", WAIT, || {
        Ok(
            (s.agents[0].logged("config_mismatch", &[("peer", "b"), ("why", "digest")])
                && s.agents[1].logged("config_mismatch", &[("peer", "a"), ("why", "digest")]))
            .then_some(()),
        )
    }))?;
    let status: serde_json::Value = serde_json::from_str(&t.ok(&a.ns, "status --json")?)?;
    let peer = &status["peers"][0];
    assert_eq!(peer["state"], "alive", "{status}");
    assert!(
        peer["config"].as_str().unwrap().starts_with("MISMATCH"),
        "{status}"
    );
    // What would move the address (a's LAN link down) moves nothing while they differ.
    a.ns.ip("link set lan down")?;
    std::thread::sleep(Duration::from_millis(500));
    let status: serde_json::Value = serde_json::from_str(&t.ok(&b.ns, "status --json")?)?;
    assert_eq!(status["addresses"][0]["gate"], "closed", "{status}");
    let (la, lb) = (s.agents[0].log(), s.agents[1].log());
    assert!(nobody_fenced(&s), "a live peer was fenced:\n{la}\n{lb}");
    // The same configuration again on b: they agree, and the address moves (without a
    // fence: a is alive and closed it itself).
    s.agents[1].stop();
    s.agents[1] = s.cluster.start(&t, b, a)?;
    s.logged(wait_served_by(
        &s.client,
        "b",
        "b to take over once they agree",
    ))?;
    assert!(s.agents[0].logged("config_agrees", &[("peer", "b")]));
    assert!(nobody_fenced(&s), "{}", s.agents[1].log());
    Ok(())
}

/// The gate entries of a namespace without their counters (traffic moves those).
fn verdicts(t: &Takeover, host: &Host) -> Result<Vec<serde_json::Value>> {
    let map = t.map(&host.ns)?;
    Ok(map["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["entries"].as_array().cloned().unwrap_or_default())
        .map(|mut e| {
            e.as_object_mut().unwrap().remove("counters");
            e
        })
        .collect())
}

/// The registration the agent of `host`'s namespace left in its liveness map.
fn registration(host: &Host) -> Result<takeover_common::Liveness> {
    takeover::dataplane::liveness::registered(&host.ns.pin_dir()?)?
        .ok_or_else(|| anyhow::anyhow!("no liveness map in {}", host.name))
}

#[test]
fn gate_commands_are_refused_while_an_agent_runs_and_work_once_it_is_gone() -> Result<()> {
    use takeover_common::{AGENT_EXITED, AGENT_RUNNING, AGENT_STOPPING};
    let mut s = setup()?;
    let t = takeover();
    let (a, b) = (s.lan.host("a"), s.lan.host("b"));
    let refuses = |pid: u32, args: &str| -> Result<()> {
        let out = t.output(&b.ns, args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "`{args}` succeeded beside the agent");
        assert!(
            stderr.contains(&format!(
                "the agent (pid {pid}) manages the gates of this network namespace"
            )) && stderr.trim_end().lines().count() == 1,
            "`{args}`: {stderr}"
        );
        Ok(())
    };
    let pid = s.agents[1].child.id();
    let before = verdicts(&t, b)?;
    for args in [
        format!("gate open {LOGICAL} --iface lan"),
        format!("gate close {LOGICAL} --iface lan"),
        format!("gate remove {LOGICAL} --iface lan"),
        format!("gate forward {LOGICAL} --iface lan --to-mac {}", a.mac()),
        "detach --iface lan".into(),
    ] {
        refuses(pid, &args)?;
    }
    assert_eq!(
        verdicts(&t, b)?,
        before,
        "a refused command changed the table"
    );
    assert!(b.ns.ip("link show dev lan")?.contains("xdp"));
    // Attaching is idempotent: the agent's gate is kept as it is.
    assert!(t.ok(&b.ns, "attach --iface lan")?.contains("kept"));

    // A planned stop: the registration says stopping; once the process is gone the gates are
    // nobody's until the next agent starts (which keeps what it finds open).
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    s.agents[1].child.wait()?;
    assert_eq!(registration(b)?.state, AGENT_STOPPING);
    t.ok(&b.ns, &format!("gate close {LOGICAL} --iface lan"))?;

    // A new agent takes the gates again; killed, the kernel marks it exited.
    s.agents[1] = s.cluster.start(&t, b, a)?;
    let pid = s.agents[1].child.id();
    s.logged(wait_for("b's new agent to register", WAIT, || {
        let r = registration(b)?;
        Ok((r.tgid == pid && r.state == AGENT_RUNNING).then_some(()))
    }))?;
    refuses(pid, &format!("gate open {LOGICAL} --iface lan"))?;
    s.agents[1].kill();
    assert_eq!(registration(b)?.state, AGENT_EXITED);
    t.ok(&b.ns, &format!("gate close {LOGICAL} --iface lan"))?;
    Ok(())
}

#[test]
fn a_gate_changed_behind_the_agent_is_reported_and_repaired() -> Result<()> {
    use takeover::dataplane::{Gates, PinDir, Target};
    use takeover_common::{Action, GateValue};
    let s = setup()?;
    let b = s.lan.host("b");
    // Another writer (not the CLI, which refuses) opens the standby's gate.
    let pins = PinDir::under(&b.ns.pin_dir()?, "lan");
    let target = Target::new(LOGICAL.parse()?, None);
    Gates::open(&pins)?.set(&target, GateValue::new(Action::Open))?;
    s.logged(wait_for("b to repair its gate", WAIT, || {
        let closed = Gates::open(&pins)?
            .get(&target)?
            .is_some_and(|e| e.action == Some(Action::Closed));
        Ok((closed && s.agents[1].log().contains("changed behind the agent")).then_some(()))
    }))?;
    assert_eq!(
        s.client.request(70_000, Duration::from_secs(1))?.as_deref(),
        Some("a")
    );
    Ok(())
}

/// `n` more addresses, owned alternately by a and b (every resource unlike its neighbour:
/// the longest heartbeat summary, sent in parts).
fn many_addresses(n: usize) -> String {
    let mut extra = String::new();
    for i in 0..n {
        let (owner, standby) = if i % 2 == 0 { ("b", "a") } else { ("a", "b") };
        extra.push_str(&format!(
            "[[address]]\nip = \"fd78::{:x}/128\"\nowner = \"{owner}\"\nstandbys = [\"{standby}\"]\n\n",
            i + 1
        ));
    }
    extra
}

/// How many of the gates on `host`'s LAN are open.
fn open_gates(t: &Takeover, host: &Host) -> Result<usize> {
    let map = t.map(&host.ns)?;
    Ok(map["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["iface"] == "lan")
        .flat_map(|i| i["entries"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["state"] == "open")
        .count())
}

#[test]
fn a_thousand_resources_fail_over_and_back_together() -> Result<()> {
    let t = takeover();
    let lan = Lan::new(&t, &["cli", "a", "b"])?;
    lan.dedicated_line("a", "b")?;
    let cluster = Cluster::new(&lan, Timing::default())?;
    let (a, b) = (lan.host("a"), lan.host("b"));
    let extra = many_addresses(999);
    let edit = |c: String| c.replacen("[heartbeat]", &format!("{extra}[heartbeat]"), 1);
    let mut agents = vec![
        cluster.start_with(&t, a, b, edit)?,
        cluster.start_with(&t, b, a, edit)?,
    ];
    let logs = |agents: &[Agent]| format!("a:\n{}\nb:\n{}", agents[0].log(), agents[1].log());
    // The pinned maps exist once an agent answers on its control socket (a slow start under
    // load is not a failure).
    let answering = |host: &Host, agents: &[Agent]| {
        wait_for("the agent to answer", WAIT, || {
            Ok(t.ok(&host.ns, "status --json").ok().map(|_| ()))
        })
        .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(agents)))
    };
    answering(a, &agents)?;
    answering(b, &agents)?;
    // 1000 resources: a owns 500 (LOGICAL among them), b 500.
    wait_for("each to serve its 500", WAIT, || {
        Ok((open_gates(&t, a)? == 500 && open_gates(&t, b)? == 500).then_some(()))
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&agents)))?;
    let _responders = [responder(a)?, responder(b)?];
    let client = Client::new(
        &lan.host("cli").ns,
        "0.0.0.0:0",
        &format!("{LOGICAL}:{PORT}"),
    )?;
    wait_served_by(&client, "a", "a to serve LOGICAL")?;
    // a crashes: b takes all of them.
    crash(&mut agents[0], a)?;
    wait_for("b to serve all 1000", WAIT, || {
        Ok((open_gates(&t, b)? == 1000).then_some(()))
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&agents)))?;
    wait_served_by(&client, "b", "b to answer for LOGICAL")?;
    // a comes back: after the preempt delay its 500 go home, b keeps its own.
    a.ns.ip("link set lan up")?;
    a.ns.ip("link set ded up")?;
    agents[0] = cluster.start_with(&t, a, b, edit)?;
    answering(a, &agents)?;
    wait_for("the failback of a's 500", WAIT, || {
        Ok((open_gates(&t, a)? == 500 && open_gates(&t, b)? == 500).then_some(()))
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&agents)))?;
    wait_served_by(&client, "a", "a to answer for LOGICAL again")?;
    let status: serde_json::Value = serde_json::from_str(&t.ok(&a.ns, "status --json")?)?;
    assert_eq!(status["addresses"].as_array().map(Vec::len), Some(1000));
    assert_eq!(status["peers"][0]["config"], "agrees");
    Ok(())
}

#[test]
fn a_failback_to_a_restarted_node_loses_no_request() -> Result<()> {
    let mut s = setup()?;
    let t = takeover();
    let (a, b) = (s.lan.host("a"), s.lan.host("b"));
    crash(&mut s.agents[0], a)?;
    s.logged(wait_served_by(&s.client, "b", "b to take over"))?;
    // a comes back with empty neighbour tables (its links went down): the handover must not
    // wait on ARP (its gate receives the clients' answers to its own requests).
    a.ns.ip("link set lan up")?;
    a.ns.ip("link set ded up")?;
    s.agents[0] = s.cluster.start(&t, a, b)?;
    let mut seq = 200_000;
    let mut lost = Vec::new();
    let mut served_by_a = 0;
    while served_by_a < 200 {
        seq += 1;
        match s
            .client
            .request(seq, Duration::from_millis(500))?
            .as_deref()
        {
            Some("a") => served_by_a += 1,
            Some(_) => {}
            None => lost.push(seq),
        }
        assert!(seq < 220_000, "a never took its address back");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        lost.is_empty(),
        "requests without an answer in 500 ms: {lost:?}\na:\n{}\nb:\n{}",
        s.agents[0].log(),
        s.agents[1].log()
    );
    Ok(())
}

/// What b's agent says about its peer a (`status --json`).
fn peer_a_seen_by_b(t: &Takeover, b: &Host) -> Result<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&t.ok(&b.ns, "status --json")?)?;
    Ok(v["peers"][0].clone())
}

/// Waits until b's agent sees a alive, agreeing, and writes it wire version `version`.
fn wait_b_reads_a_on(s: &Setup, version: u64, what: &str) -> Result<()> {
    let (t, b) = (takeover(), s.lan.host("b"));
    s.logged(wait_for(what, WAIT, || {
        // A starting agent has no control socket yet.
        let Ok(p) = peer_a_seen_by_b(&t, b) else {
            return Ok(None);
        };
        Ok(
            (p["state"] == "alive" && p["config"] == "agrees" && p["wire_version"] == version)
                .then_some(()),
        )
    }))
}

/// A rolling upgrade: a runs the previous release (wire v2, pins keyed by the namespace's
/// inode), b this one. Each takes over from the other, and a is then upgraded in place.
#[test]
fn a_node_of_the_previous_release_and_one_of_this_fail_over_both_ways() -> Result<()> {
    let old = takeover_lab::previous::takeover()?;
    let mut s = setup_with(|cluster, a, b| cluster.start_previous(&old, a, b))?;
    let t = takeover();
    let (a, b) = (s.lan.host("a"), s.lan.host("b"));
    wait_b_reads_a_on(&s, 2, "b to read a's v2 heartbeats and write it v2")?;
    only_answerer(&s, a, "the previous release serves")?;
    // The previous release crashes: this one fences it and takes over.
    crash(&mut s.agents[0], a)?;
    s.logged(wait_served_by(&s.client, "b", "b to take over from a"))?;
    assert!(s.agents[1].logged("fence_started", &[("peer", "a")]));
    only_answerer(&s, b, "b took over from the previous release")?;
    // It comes back: this one hands the address back to it (failback).
    a.ns.ip("link set lan up")?;
    a.ns.ip("link set ded up")?;
    s.agents[0] = s.cluster.start_previous(&old, a, b)?;
    s.logged(wait_served_by(&s.client, "a", "the failback to a"))?;
    only_answerer(&s, a, "b handed the address back to the previous release")?;
    // The other way: a switchover ordered on the previous release, then this one crashes.
    old.ok(&a.ns, &format!("switchover {LOGICAL} --to b"))?;
    s.logged(wait_served_by(&s.client, "b", "the switchover to b"))?;
    crash(&mut s.agents[1], b)?;
    s.logged(wait_served_by(
        &s.client,
        "a",
        "the previous release to take over",
    ))?;
    assert!(
        s.agents[0].log().contains("fencing b"),
        "{}",
        s.agents[0].log()
    );
    only_answerer(&s, a, "the previous release took over from b")?;
    // b is back on this release, and the switchover's order stands: b serves again.
    // (Forwarding after a handover lasts long enough here to be seen; the previous release
    // knows no forward_for, so the window is this release's own.)
    let long_forward =
        |c: String| c.replacen("[announce]\n", "[announce]\nforward_for = \"30s\"\n", 1);
    b.ns.ip("link set lan up")?;
    b.ns.ip("link set ded up")?;
    s.agents[1] = s.cluster.start_with(&t, b, a, long_forward)?;
    s.logged(wait_served_by(
        &s.client,
        "b",
        "b to serve once back (the order stands)",
    ))?;
    wait_b_reads_a_on(&s, 2, "b back beside the previous release")?;
    // a is upgraded in place (SIGTERM, then this release): it adopts the gates the previous
    // one pinned under the inode and replaces their programs, so its forward to b now claims
    // nothing (the previous release's answered ARP for the address).
    let by_inode =
        std::path::Path::new(takeover_lab::PIN_ROOT).join(format!("net-{}", a.ns.inode()?));
    assert!(by_inode.is_dir(), "no pins in {}", by_inode.display());
    s.agents[0].stop();
    s.agents[0] = s.cluster.start_with(&t, a, b, long_forward)?;
    wait_b_reads_a_on(&s, 4, "b to write wire v4 to the upgraded a")?;
    assert!(!by_inode.exists(), "{} left", by_inode.display());
    assert!(a.ns.pin_dir()?.is_dir());
    let log = s.agents[0].log();
    assert!(log.contains("ran another build's programs"), "{log}");
    only_answerer(&s, b, "b serves beside the upgraded a")?;
    // Both on this release: the address goes to a through the adopted gates, and back. a's
    // forward to b, by this build's programs, claims nothing.
    t.ok(&b.ns, &format!("switchover {LOGICAL} --to a"))?;
    s.logged(wait_served_by(
        &s.client,
        "a",
        "the switchover to the upgraded a",
    ))?;
    only_answerer(&s, a, "the upgraded a serves")?;
    t.ok(&a.ns, &format!("switchover {LOGICAL} --to b"))?;
    s.logged(wait_served_by(&s.client, "b", "the switchover back to b"))?;
    only_answerer(&s, b, "the upgraded a forwards to b")?;
    assert!(t.ok(&a.ns, "status")?.contains("forward to b"));
    Ok(())
}
