//! The service-failure demo (partial takeover): two agents each run a UDP service on the
//! logical address; a client sends 1000 requests/s; the service on the active is SIGKILLed.
//! Its traffic alone goes to the peer's instance, through the active's gate (the address
//! does not move), until the agent has restarted it and it has held; then it comes back.
//! Printed as a timeline and drawn (SVG).
use std::{path::Path, time::Duration};

use anyhow::{Context, Result};

use crate::{
    agents::{Cluster, Timing, LOGICAL},
    failover_demo::{client_once_a_serves, draw, log_time},
    load::{now_us, Load},
    topology::{wait_for, Lan},
    Takeover,
};

const PORT: u16 = 7000;
const HOLD: &str = "500ms";

/// The lab's `responder` beside this executable.
fn responder() -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("responder");
    anyhow::ensure!(
        bin.is_file(),
        "{} missing: cargo build --release -p takeover-lab",
        bin.display()
    );
    Ok(bin)
}

fn service(me: &str, responder: &Path) -> String {
    format!(
        r#"
[[service]]
name = "echo"
address = "{LOGICAL}"
protocol = "udp"
port = {PORT}
run = {{ command = ["{bin}", "{LOGICAL}:{PORT}", "{me}"] }}

[[service.check]]
type = "udp"
send = "check"
expect = "check"
interval = "10ms"
timeout = "10ms"

[service.recovery]
backoff = "20ms"
hold = "{HOLD}"
"#,
        bin = responder.display()
    )
}

pub fn run(t: &Takeover) -> Result<()> {
    println!("\n==== A service fails, the server does not: partial takeover ====");
    println!("== Topology: client `cli`, servers `a` and `b` on a bridge, a dedicated line a<->b");
    let lan = Lan::new(t, &["cli", "a", "b"])?;
    lan.dedicated_line("a", "b")?;
    let (a, b, cli) = (lan.host("a"), lan.host("b"), lan.host("cli"));
    let cluster = Cluster::new(
        &lan,
        Timing {
            interval: "1ms",
            misses: 8,
            preempt_delay: "1s",
            realtime: true,
        },
    )?;
    let bin = responder()?;
    println!(
        "== Both agents run the service `echo` ({LOGICAL} udp/{PORT}), checked every 10 ms; a restarted instance serves again after {HOLD}"
    );
    let agent_a = cluster.start_with(t, a, b, |c| c + &service("a", &bin))?;
    let agent_b = cluster.start_with(t, b, a, |c| c + &service("b", &bin))?;
    let client = client_once_a_serves(cli, PORT)?;
    let arp = || -> Result<String> {
        Ok(cli
            .ns
            .ip(&format!("neigh show {LOGICAL} dev lan"))?
            .trim()
            .to_string())
    };
    let arp_before = arp()?;
    let status: serde_json::Value = serde_json::from_str(&t.ok(&a.ns, "status --json")?)?;
    let pid = status["components"]
        .as_array()
        .and_then(|c| c.iter().find(|x| x["name"] == "echo"))
        .and_then(|c| c["pid"].as_i64())
        .context("echo's pid on a")? as i32;

    println!("== Client: one UDP request every millisecond to {LOGICAL}:{PORT}");
    let load = Load::start(client, 1000);
    std::thread::sleep(Duration::from_millis(500));

    println!("== The service on a is SIGKILLed (pid {pid}); a, its agent and its address stay up");
    let kill = now_us();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for("b to answer", Duration::from_secs(15), || {
        Ok(load.served_by("b", kill).then_some(()))
    })?;
    wait_for("a to answer again", Duration::from_secs(15), || {
        Ok(load.served_by("a", kill + 100_000).then_some(()))
    })?;
    std::thread::sleep(Duration::from_millis(300));
    let seen = load.stop();
    let arp_after = arp()?;

    let (la, lb) = (agent_a.log(), agent_b.log());
    let resource = format!("{LOGICAL} udp/{PORT}");
    let at = |log: &str, what: &str| log_time(log, what, kill);
    let us = |t: Option<u64>| {
        t.map(|t| format!("{:>10.3} ms", (t as f64 - kill as f64) / 1000.0))
            .unwrap_or_else(|| "         -".into())
    };
    let first_b = seen.first_reply("b", kill);
    let forward = at(&la, &format!("{resource} forward to b"));
    let back = at(&la, &format!("{resource} open"));
    let first_a = back.and_then(|t| seen.first_reply("a", t));
    println!("\n== Timeline (from the SIGKILL)");
    println!("  exit seen, a's gate forwards echo to b {}", us(forward));
    println!("  first reply from b                     {}", us(first_b));
    println!(
        "  requests lost                          {:>10}",
        seen.lost(kill.saturating_sub(50_000), first_b.unwrap_or(kill))
    );
    println!(
        "  echo restarted on a                    {}",
        us(at(&la, "service echo: restarted"))
    );
    println!(
        "  normal again (checks risen)            {}",
        us(at(&la, "service echo normal"))
    );
    println!("  held {HOLD}: a's gate serves echo again {}", us(back));
    println!("  first reply from a                     {}", us(first_a));
    let end = seen.sent.values().last().copied().unwrap_or(kill);
    println!(
        "  requests lost on the way back          {:>10}",
        seen.lost(back.unwrap_or(kill), end.saturating_sub(100_000))
    );
    let moved = [&la, &lb]
        .iter()
        .any(|l| log_time(l, &format!("{LOGICAL} open (epoch"), kill).is_some());
    println!(
        "\n  the address moved: {}; announcements: none; the client's ARP entry before and after:\n    {arp_before}\n    {arp_after}",
        if moved { "YES" } else { "no" }
    );
    println!(
        "  {} requests sent, {} answered by a, {} by b",
        seen.sent.len(),
        seen.replies.values().filter(|(_, w)| w == "a").count(),
        seen.replies.values().filter(|(_, w)| w == "b").count()
    );
    let svg = Path::new("target/takeover-service-demo.svg");
    let back_ms = back.map_or(1500, |t| ((t - kill) / 1000) as i64 + 200);
    draw(
        svg,
        &seen,
        &[
            ("echo SIGKILLed on a (t = 0)", kill, 100),
            (
                "the whole story: to b and back (t = 0: SIGKILL)",
                kill,
                back_ms,
            ),
        ],
    )?;
    println!("\n== Picture of the timeline: {}", svg.display());
    println!("== Cleaning up: agents stopped, services killed, namespaces and pins removed");
    Ok(())
}
