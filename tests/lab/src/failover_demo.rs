//! The failover demo: two agents, a client at 1000 requests/s, a real crash of the active,
//! its return, and the timeline of both, printed and drawn (SVG).
use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::{
    agents::{Cluster, Timing, LOGICAL},
    load::{now_us, Load, Seen},
    topology::{wait_for, Host, Lan},
    udp::{Client, Responder},
    Takeover,
};

const PORT: u16 = 7000;

/// First log line of `log` at or after `from` whose message contains `what`, as Unix
/// microseconds. Lines are JSON (`--log-format json`) or text (`<secs>.<micros> takeover: ...`).
pub fn log_time(log: &str, what: &str, from: u64) -> Option<u64> {
    log.lines().find_map(|l| {
        let (ts, message) = match serde_json::from_str::<serde_json::Value>(l) {
            Ok(v) => (
                v["ts"].as_str()?.to_string(),
                v["message"].as_str()?.to_string(),
            ),
            Err(_) => {
                let (ts, rest) = l.split_once(' ')?;
                (ts.to_string(), rest.to_string())
            }
        };
        let (s, us) = ts.split_once('.')?;
        let t = s.parse::<u64>().ok()? * 1_000_000 + us.parse::<u64>().ok()?;
        (t >= from && message.contains(what)).then_some(t)
    })
}

fn wait_address(host: &Host) -> Result<()> {
    wait_for(
        &format!("{LOGICAL} on {}", host.name),
        Duration::from_secs(15),
        || {
            Ok(host
                .ns
                .ip("-o addr show dev lan")?
                .contains(LOGICAL)
                .then_some(()))
        },
    )
}

/// A client of `LOGICAL:port` in `cli`, for the load, once `a` answers there.
pub(crate) fn client_once_a_serves(cli: &Host, port: u16) -> Result<Arc<Client>> {
    let target = format!("{LOGICAL}:{port}");
    let probe = Client::new(&cli.ns, "0.0.0.0:0", &target)?;
    let mut n = 0;
    wait_for("a to serve", Duration::from_secs(15), || {
        n += 1;
        Ok((probe.request(n, Duration::from_millis(100))?.as_deref() == Some("a")).then_some(()))
    })?;
    Ok(Arc::new(Client::new(&cli.ns, "0.0.0.0:0", &target)?))
}

pub fn run(t: &Takeover) -> Result<()> {
    println!("== Topology: client `cli`, servers `a` and `b` on a bridge, a dedicated line a<->b");
    let lan = Lan::new(t, &["cli", "a", "b"])?;
    lan.dedicated_line("a", "b")?;
    let (a, b, cli) = (lan.host("a"), lan.host("b"), lan.host("cli"));
    let timing = Timing {
        interval: "1ms",
        misses: 8,
        preempt_delay: "1s",
        realtime: true,
    };
    println!(
        "== Agents: one heartbeat every {} by the line or the LAN in turn, dead after {} misses, failback after {} healthy",
        timing.interval, timing.misses, timing.preempt_delay
    );
    let cluster = Cluster::new(&lan, timing)?;
    let mut agent_a = cluster.start(t, a, b)?;
    let agent_b = cluster.start(t, b, a)?;
    wait_address(a)?;
    wait_address(b)?;
    let _ra = Responder::spawn(&a.ns, &format!("{LOGICAL}:{PORT}"), "a")?;
    let _rb = Responder::spawn(&b.ns, &format!("{LOGICAL}:{PORT}"), "b")?;
    let client = client_once_a_serves(cli, PORT)?;

    println!("== Client: one UDP request every millisecond to {LOGICAL}:{PORT}");
    let load = Load::start(client, 1000);
    std::thread::sleep(Duration::from_millis(500));

    println!("== Crash of a: its agent is SIGKILLed, then its links go down (a real crash sends nothing)");
    let crash = now_us();
    agent_a.kill();
    a.ns.ip("link set ded down")?;
    a.ns.ip("link set lan down")?;
    wait_for("b to answer", Duration::from_secs(15), || {
        Ok(load.served_by("b", crash).then_some(()))
    })?;
    std::thread::sleep(Duration::from_millis(1000));

    println!("== a comes back: links up, agent started; it takes its address back after the preempt delay");
    let back = now_us();
    a.ns.ip("link set lan up")?;
    a.ns.ip("link set ded up")?;
    agent_a = cluster.start(t, a, b)?;
    wait_for("a to answer again", Duration::from_secs(15), || {
        Ok(load.served_by("a", back).then_some(()))
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let seen = load.stop();

    let (la, lb) = (agent_a.log(), agent_b.log());
    let ms = |t: Option<u64>, from: u64| {
        t.map(|t| format!("{:>8.2} ms", (t as f64 - from as f64) / 1000.0))
            .unwrap_or_else(|| "       -".into())
    };
    let first_b = seen.first_reply("b", crash);
    // What the agents logged, as times from an event.
    let row = |label: &str, log: &str, what: &str, from: u64| {
        println!("  {label:<27}{}", ms(log_time(log, what, from), from));
    };
    println!("\n== Timeline of the crash (from the SIGKILL)");
    row("peer a declared dead on b", &lb, "peer a is dead", crash);
    row("fence command started", &lb, "fencing a", crash);
    row("a fenced", &lb, "peer a fenced", crash);
    row("gate open on b", &lb, &format!("{LOGICAL} open"), crash);
    println!("  first reply from b         {}", ms(first_b, crash));
    println!(
        "  requests lost              {:>8}",
        seen.lost(crash.saturating_sub(50_000), first_b.unwrap_or(back))
    );
    let first_a = seen.first_reply("a", back);
    println!("\n== Timeline of the failback (from a's return)");
    row("agent a running", &la, "running", back);
    row(
        "b hands over (forwards)",
        &lb,
        &format!("{LOGICAL} handed over"),
        back,
    );
    row("gate open on a", &la, &format!("{LOGICAL} open"), back);
    println!("  first reply from a         {}", ms(first_a, back));
    let end = seen.sent.values().last().copied().unwrap_or(back);
    println!(
        "  requests lost              {:>8}",
        seen.lost(back, end.saturating_sub(100_000))
    );
    println!(
        "\n  {} requests sent, {} answered by a, {} by b",
        seen.sent.len(),
        seen.replies.values().filter(|(_, w)| w == "a").count(),
        seen.replies.values().filter(|(_, w)| w == "b").count()
    );

    let svg = Path::new("target/takeover-demo.svg");
    draw(
        svg,
        &seen,
        &[
            ("crash of a (t = 0: SIGKILL)", crash, 200),
            ("a returns (t = 0: links up, agent started)", back, 1600),
        ],
    )?;
    println!("\n== Picture of the timeline: {}", svg.display());
    println!("== Cleaning up: agents stopped, namespaces and pins removed");
    Ok(())
}

/// Replies per millisecond, coloured by the server that answered, around each event: one
/// panel per (title, the event's time, how many milliseconds after it to show).
pub(crate) fn draw(path: &Path, seen: &Seen, events: &[(&str, u64, i64)]) -> Result<()> {
    let root = SVGBackend::new(path, (1100, 350 * events.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let panels = root.split_evenly((events.len(), 1));
    for (panel, &(title, at, to)) in panels.iter().zip(events) {
        let from = -100i64;
        let mut per_ms: BTreeMap<(i64, bool), u32> = BTreeMap::new();
        for (t, who) in seen.replies.values() {
            let x = (*t as i64 - at as i64) / 1000;
            if (from..to).contains(&x) {
                *per_ms.entry((x, who == "a")).or_default() += 1;
            }
        }
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("replies per millisecond: {title}"),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(40)
            .build_cartesian_2d(from..to, 0u32..4u32)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("ms")
            .y_desc("replies")
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (is_a, colour, label) in [(true, BLUE, "answered by a"), (false, RED, "answered by b")]
        {
            let points: Vec<(i64, u32)> = per_ms
                .iter()
                .filter(|((_, w), _)| *w == is_a)
                .map(|((x, _), n)| (*x, *n))
                .collect();
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|&(x, n)| Rectangle::new([(x, 0), (x + 1, n)], colour.filled())),
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled())
                });
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    root.present().context("writing the SVG")?;
    Ok(())
}
