//! The database demo (patent fig. 4): PostgreSQL on a shared disk, run cold by the agents;
//! a client writes rows; a's host crashes; b fences it, mounts, starts the database (it
//! recovers), opens; a comes back and is given it back. Printed as two timelines from the
//! agents' logs, with the client's longest wait and the acknowledged rows lost.
use anyhow::Result;

use crate::{
    agents::{Agent, Timing},
    database::DbCluster,
    Takeover,
};

/// What the logs say happened, after `since` (seconds since the epoch), in order: its time,
/// the host, the sentence.
fn timeline(agents: &[(&str, &Agent)], since: f64, wanted: &[&str]) -> Vec<(f64, String, String)> {
    let mut lines = Vec::new();
    for (host, agent) in agents {
        for l in agent.log().lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
                continue;
            };
            let ts = v["ts"].as_str().and_then(|t| t.parse::<f64>().ok());
            let msg = v["message"].as_str().unwrap_or_default();
            let kind = v["event"].as_str().unwrap_or_default();
            let pick = wanted
                .iter()
                .any(|w| *w == kind || (kind.is_empty() && msg.contains(w)));
            if let (Some(ts), true) = (ts, pick) {
                if ts >= since {
                    lines.push((ts, host.to_string(), msg.to_string()));
                }
            }
        }
    }
    lines.sort_by(|x, y| x.0.total_cmp(&y.0));
    lines
}

pub fn run(t: &Takeover) -> Result<()> {
    println!("\n==== A database on a shared disk: crash, takeover, failback ====");
    println!("== PostgreSQL 15 with its data on ext4 on a shared disk (a loop device per host over one file);");
    println!("   the agents of a and b run it cold (only where the address is served), fence = cut off the LAN and the disk");
    let mut c = DbCluster::new(
        t,
        Timing {
            interval: "1ms",
            misses: 8,
            preempt_delay: "1s",
            realtime: true,
        },
    )?;
    println!("== Client `cli`: one row per transaction (a new connection each), noting each acknowledged one");
    let r = c.crash_and_failback()?;
    let agents = [("a", &c.agents[0]), ("b", &c.agents[1])];
    let wanted = [
        "fence_started",
        "fenced",
        "acquiring",
        "mounted on",
        "acquired in",
        "takeover",
        "releasing",
        "stopped",
        "unmounted",
        "released in",
    ];
    let print = |title: &str, since: f64, until: f64| {
        println!("== {title}");
        for (ts, host, msg) in timeline(&agents, since, &wanted) {
            if ts < until {
                println!("   {:>9.1} ms  {host}: {msg}", (ts - since) * 1e3);
            }
        }
    };
    print(
        "a crashes (processes frozen, links down, disk path cut, killed) at 0 ms:",
        r.crashed_at,
        r.rebooted_at,
    );
    println!(
        "   client: longest wait {:.0} ms, {} acknowledged rows lost",
        r.takeover_gap.as_secs_f64() * 1e3,
        r.takeover_lost.len()
    );
    print("a is back (links up, disk path back, new agent) at 0 ms; preferred, it gets the database back:", r.rebooted_at, f64::MAX);
    println!(
        "   client: longest wait {:.0} ms, {} acknowledged rows lost",
        r.failback_gap.as_secs_f64() * 1e3,
        r.failback_lost.len()
    );
    println!(
        "== Started, with the epoch and reason each start was told: {:?}",
        c.starts()
    );
    println!(
        "== {} rows acknowledged in all, {} lost: every acknowledged row is in the table",
        r.acked.len(),
        r.takeover_lost.len() + r.failback_lost.len()
    );
    anyhow::ensure!(
        r.takeover_lost.is_empty() && r.failback_lost.is_empty(),
        "acknowledged rows were lost"
    );
    Ok(())
}
