//! `cargo xtask bench failover`: the client-seen gap and the requests lost, per scenario, over
//! several trials, each on a fresh topology; and a soak under CPU load that counts takeovers
//! and measures the agent's footprint. Writes its section of BENCHMARKS.md.
use std::{fmt::Write as _, process::Child, sync::Arc, time::Duration};

use anyhow::{Context, Result};

use crate::{
    agents::{Agent, Cluster, Timing, LOGICAL},
    load::{now_us, Load, Seen},
    stats::{median, range},
    topology::{wait_for, Lan},
    udp::{Client, Responder},
    Takeover,
};

const PORT: u16 = 7000;
const TRIALS: usize = 5;
const SOAK: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scenario {
    /// a's agent is SIGKILLed, then its links go down: nothing more comes from a.
    Crash,
    /// Nothing leaves a any more (an empty qdisc) while its carrier stays up; then SIGKILL.
    Silent,
    /// After a crash, a comes back and takes its address again (preempt).
    Failback,
    /// `takeover switchover` moves the address from a to b on purpose.
    Switchover,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [Self::Crash, Self::Silent, Self::Failback, Self::Switchover];
}

fn timing() -> Timing {
    Timing {
        interval: "1ms",
        misses: 5,
        preempt_delay: "500ms",
        realtime: true,
    }
}

/// One cluster (a serving, b standing by) with a client load running.
struct Rig {
    lan: Lan,
    cluster: Cluster,
    agents: Vec<Agent>,
    _responders: Vec<Responder>,
    load: Load,
}

fn rig(t: &Takeover) -> Result<Rig> {
    let lan = Lan::new(t, &["cli", "a", "b"])?;
    lan.dedicated_line("a", "b")?;
    let cluster = Cluster::new(&lan, timing())?;
    let (a, b) = (lan.host("a"), lan.host("b"));
    let agents = vec![cluster.start(t, a, b)?, cluster.start(t, b, a)?];
    let mut responders = Vec::new();
    for h in [a, b] {
        wait_for("the logical address", Duration::from_secs(15), || {
            Ok(h.ns
                .ip("-o addr show dev lan")?
                .contains(LOGICAL)
                .then_some(()))
        })?;
        responders.push(Responder::spawn(
            &h.ns,
            &format!("{LOGICAL}:{PORT}"),
            &h.name,
        )?);
    }
    let client = Arc::new(Client::new(
        &lan.host("cli").ns,
        "0.0.0.0:0",
        &format!("{LOGICAL}:{PORT}"),
    )?);
    let mut n = 0;
    wait_for("a to serve", Duration::from_secs(15), || {
        n += 1;
        Ok((client
            .request(1_000_000 + n, Duration::from_millis(100))?
            .as_deref()
            == Some("a"))
        .then_some(()))
    })?;
    let load = Load::start(client, 1000);
    std::thread::sleep(Duration::from_millis(300));
    Ok(Rig {
        lan,
        cluster,
        agents,
        _responders: responders,
        load,
    })
}

impl Rig {
    fn wait_served_by(&self, who: &str, after: u64) -> Result<()> {
        wait_for(&format!("{who} to answer"), Duration::from_secs(15), || {
            Ok(self.load.served_by(who, after).then_some(()))
        })
    }

    fn crash_a(&mut self) -> Result<u64> {
        let t0 = now_us();
        self.agents[0].kill();
        let a = self.lan.host("a");
        a.ns.ip("link set ded down")?;
        a.ns.ip("link set lan down")?;
        self.wait_served_by("b", t0)?;
        Ok(t0)
    }
}

/// One trial: (client-seen gap, requests lost).
fn trial(t: &Takeover, sc: Scenario) -> Result<(Duration, usize)> {
    let mut r = rig(t)?;
    let t0 = match sc {
        Scenario::Crash => r.crash_a()?,
        Scenario::Silent => {
            let t0 = now_us();
            let a = r.lan.host("a");
            // One shell, the line first: a stays reachable to the client until both are mute,
            // so the gap is the detection's, not the time between two commands.
            a.ns.sh("tc qdisc replace dev ded root pfifo limit 0; tc qdisc replace dev lan root pfifo limit 0")?;
            r.agents[0].kill();
            r.wait_served_by("b", t0)?;
            t0
        }
        Scenario::Failback => {
            r.crash_a()?;
            std::thread::sleep(Duration::from_millis(300));
            let t0 = now_us();
            let (a, b) = (r.lan.host("a"), r.lan.host("b"));
            a.ns.ip("link set lan up")?;
            a.ns.ip("link set ded up")?;
            r.agents[0] = r.cluster.start(t, a, b)?;
            r.wait_served_by("a", t0)?;
            t0
        }
        Scenario::Switchover => {
            let t0 = now_us();
            t.ok(&r.lan.host("a").ns, &format!("switchover {LOGICAL} --to b"))?;
            r.wait_served_by("b", t0)?;
            t0
        }
    };
    std::thread::sleep(Duration::from_millis(300));
    let end = now_us();
    let seen: Seen = r.load.stop();
    if std::env::var_os("TAKEOVER_BENCH_LOGS").is_some() {
        eprintln!(
            "t0 = {}.{:06}\n-- a:\n{}-- b:\n{}",
            t0 / 1_000_000,
            t0 % 1_000_000,
            r.agents[0].log(),
            r.agents[1].log()
        );
    }
    let gap = seen.longest_gap(t0.saturating_sub(100_000), end);
    // Requests still in flight at the end are not counted as lost.
    let lost = seen.lost(t0.saturating_sub(50_000), end.saturating_sub(50_000));
    Ok((gap, lost))
}

/// CPU time (user + system, in clock ticks) and resident memory (KiB) of a process.
fn usage(pid: u32) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .context("stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Ok((ticks, rss))
}

struct Soak {
    takeovers: usize,
    fences: usize,
    cpu_percent: f64,
    rss_kib: u64,
}

/// 30 s with four CPU-busy processes and no fault: count takeovers, measure the agent.
fn soak(t: &Takeover) -> Result<Soak> {
    let r = rig(t)?;
    let mut hogs: Vec<Child> = (0..4)
        .map(|_| {
            std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    let pid = r.agents[0].child.id();
    let (ticks0, _) = usage(pid)?;
    std::thread::sleep(SOAK);
    let (ticks1, rss) = usage(pid)?;
    for h in &mut hogs {
        let _ = h.kill();
        let _ = h.wait();
    }
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let lb = r.agents[1].log();
    let la = r.agents[0].log();
    Ok(Soak {
        takeovers: lb.matches(&format!("{LOGICAL} open")).count(),
        fences: lb.matches("fencing").count() + la.matches("fencing").count(),
        cpu_percent: 100.0 * (ticks1 - ticks0) as f64 / hz / SOAK.as_secs_f64(),
        rss_kib: rss,
    })
}

pub fn run(t: &Takeover, machine: &str, date: &str) -> Result<String> {
    let mut results: Vec<(Scenario, Vec<(Duration, usize)>)> =
        Scenario::ALL.iter().map(|s| (*s, Vec::new())).collect();
    // TAKEOVER_BENCH_ONLY=Silent TAKEOVER_BENCH_TRIALS=1 TAKEOVER_BENCH_LOGS=1: one look at one story.
    let only = std::env::var("TAKEOVER_BENCH_ONLY").ok();
    let trials = std::env::var("TAKEOVER_BENCH_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(TRIALS);
    results.retain(|(sc, _)| only.as_deref().is_none_or(|o| format!("{sc:?}") == o));
    for round in 0..trials {
        for (sc, v) in results.iter_mut() {
            let r = trial(t, *sc)?;
            eprintln!("trial {round} {sc:?}: gap {:?}, lost {}", r.0, r.1);
            v.push(r);
        }
    }
    eprintln!("soak: {SOAK:?} with 4 busy processes");
    let soak = soak(t)?;
    let mut s = String::new();
    writeln!(s, "## Failover (`cargo xtask bench failover`)\n")?;
    writeln!(
        s,
        "Measured {date} on {machine}, by `cargo xtask bench failover`."
    )?;
    let tm = timing();
    writeln!(
        s,
        "Namespace topology (client, a, b on a bridge, dedicated line a<->b); agents with heartbeats every {} on both paths, dead after {} \
         misses, preempt delay {}, real-time priority; a UDP client at 1000 requests/s. {TRIALS} trials per scenario, each on a fresh \
         topology, scenarios interleaved. Gap = the longest silence the client saw; lost = requests without a reply.\n",
        tm.interval, tm.misses, tm.preempt_delay
    )?;
    writeln!(
        s,
        "| scenario | gap median | gap range | lost median | lost range |"
    )?;
    writeln!(s, "|---|---|---|---|---|")?;
    for (sc, v) in &results {
        let gaps: Vec<f64> = v.iter().map(|(g, _)| g.as_secs_f64() * 1e3).collect();
        let lost: Vec<f64> = v.iter().map(|(_, l)| *l as f64).collect();
        let (gmin, gmax) = range(&gaps);
        let (lmin, lmax) = range(&lost);
        writeln!(
            s,
            "| {sc:?} | {:.1} ms | {gmin:.1}–{gmax:.1} ms | {} | {lmin}–{lmax} |",
            median(&gaps),
            median(&lost)
        )?;
    }
    writeln!(
        s,
        "\nSoak, {} s with 4 CPU-busy processes on {} cores and no fault: {} takeovers, {} fence commands; agent a used {:.2} % of a core, RSS {:.1} MiB.",
        SOAK.as_secs(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        soak.takeovers,
        soak.fences,
        soak.cpu_percent,
        soak.rss_kib as f64 / 1024.0
    )?;
    writeln!(s, "\nNot yet measured side by side: keepalived (the DESIGN.md reference figures came from an earlier run on this topology).")?;
    Ok(s)
}
