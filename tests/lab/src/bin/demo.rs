//! `cargo xtask demo`: failover of a logical address between two agents, then a service
//! failing alone (partial takeover), then a database on a shared disk taken over and given
//! back; `cargo xtask demo failover|service|database` one of them;
//! `cargo xtask demo gate`: the gate on its own, step by step. All clean up after themselves.
//!
//! Usage: demo PATH-TO-TAKEOVER [failover|service|database|gate]
use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, Result};
use takeover_lab::{
    topology::{Host, Lan},
    udp::{Client, Responder},
    Takeover,
};

const LOGICAL: &str = "10.77.0.100";
const PORT: u16 = 7000;

fn main() -> Result<()> {
    let bin = std::env::args()
        .nth(1)
        .context("usage: demo PATH-TO-TAKEOVER [failover|service|database|gate]")?;
    let t = Takeover::new(bin);
    match std::env::args().nth(2).as_deref() {
        None => {
            takeover_lab::failover_demo::run(&t)?;
            takeover_lab::service_demo::run(&t)?;
            takeover_lab::database_demo::run(&t)
        }
        Some("failover") => takeover_lab::failover_demo::run(&t),
        Some("service") => takeover_lab::service_demo::run(&t),
        Some("database") => takeover_lab::database_demo::run(&t),
        Some("gate") => gate(&t),
        Some(other) => {
            anyhow::bail!("unknown demo {other:?} (failover, service, database or gate)")
        }
    }
}

fn gate(t: &Takeover) -> Result<()> {
    let t = t.clone();
    println!("== Building the topology: client `cli`, servers `a` and `b` on a bridge, each in its own network namespace");
    let lan = Lan::new(&t, &["cli", "a", "b"])?;
    let (cli, a, b) = (lan.host("cli"), lan.host("a"), lan.host("b"));
    println!(
        "   cli {}  a {} ({})  b {} ({})",
        cli.addr4(),
        a.addr4(),
        a.mac(),
        b.addr4(),
        b.mac()
    );
    println!("   logical address {LOGICAL} is configured on both a and b; only the gate decides who serves it");
    let mut responders = Vec::new();
    for h in [a, b] {
        h.add_addr(LOGICAL)?;
        responders.push(Responder::spawn(
            &h.ns,
            &format!("{LOGICAL}:{PORT}"),
            &h.name,
        )?);
    }
    let client = Client::new(&cli.ns, "0.0.0.0:0", &format!("{LOGICAL}:{PORT}"))?;

    step("Attach the gate to both servers' LAN interface");
    run(&t, a, "attach --iface lan")?;
    run(&t, b, "attach --iface lan")?;

    step("a serves the address, b stands by (closed: drops it both ways, ARP included)");
    run(&t, a, &format!("gate open {LOGICAL} --iface lan"))?;
    run(&t, b, &format!("gate close {LOGICAL} --iface lan"))?;
    traffic(&client, 100)?;
    arp(cli)?;
    show(&t, a)?;
    show(&t, b)?;

    step("Close a too: nobody answers, not even ARP");
    run(&t, a, &format!("gate close {LOGICAL} --iface lan"))?;
    traffic(&client, 100)?;
    show(&t, a)?;

    step("a forwards to b (the clients still send to a's MAC); b serves");
    run(&t, b, &format!("gate open {LOGICAL} --iface lan"))?;
    run(
        &t,
        a,
        &format!("gate forward {LOGICAL} --iface lan --to-mac {}", b.mac()),
    )?;
    // The client's cache still says a: show that a hands the requests on.
    cli.static_neigh(LOGICAL, &a.mac())?;
    traffic(&client, 100)?;
    show(&t, a)?;
    show(&t, b)?;

    step("Per service: a serves the address again but hands udp/7000 to b");
    run(&t, a, &format!("gate open {LOGICAL} --iface lan"))?;
    run(
        &t,
        a,
        &format!(
            "gate forward {LOGICAL} --iface lan --to-mac {} --service udp/{PORT}",
            b.mac()
        ),
    )?;
    traffic(&client, 100)?;
    show(&t, a)?;

    step("Machine-readable: takeover map show --json (on a)");
    println!("{}", t.ok(&a.ns, "map show --json")?);

    step("Detach and clean up");
    run(&t, a, "detach --iface lan")?;
    run(&t, b, "detach --iface lan")?;
    drop(responders);
    drop(lan);
    println!("   all namespaces and pins removed");
    Ok(())
}

fn step(title: &str) {
    println!("\n== {title}");
}

fn run(t: &Takeover, host: &Host, args: &str) -> Result<()> {
    println!("[{}]$ takeover {args}", host.name);
    for line in t.ok(&host.ns, args)?.lines() {
        println!("   {line}");
    }
    Ok(())
}

fn show(t: &Takeover, host: &Host) -> Result<()> {
    run(t, host, "map show")
}

/// Sends `n` requests, one per millisecond, and says who answered.
fn traffic(client: &Client, n: u64) -> Result<()> {
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    let mut lost = 0;
    for seq in 0..n {
        match client.request(seq, Duration::from_millis(20))? {
            Some(tag) => *by.entry(tag).or_default() += 1,
            None => lost += 1,
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let answered: Vec<String> = by.iter().map(|(k, v)| format!("{v} by {k}")).collect();
    println!(
        "   client -> {LOGICAL}:{PORT}: {n} requests, answered {}, unanswered {lost}",
        if answered.is_empty() {
            "by nobody".to_string()
        } else {
            answered.join(", ")
        }
    );
    Ok(())
}

fn arp(cli: &Host) -> Result<()> {
    let out = cli
        .ns
        .cmd("arping")
        .args(["-c", "1", "-w", "1", "-I", "lan", LOGICAL])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let reply = text
        .lines()
        .find(|l| l.contains("reply from") || l.contains("bytes from"));
    println!(
        "   client arping {LOGICAL}: {}",
        reply.map(str::trim).unwrap_or("no answer")
    );
    Ok(())
}
