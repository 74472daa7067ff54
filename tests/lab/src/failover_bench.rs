//! `cargo xtask bench failover`: the client-seen gap and the requests lost, per scenario, over
//! several trials, each on a fresh topology; and a soak under CPU load that counts takeovers
//! and measures the agent's footprint. Writes its section of BENCHMARKS.md.
use std::{fmt::Write as _, path::PathBuf, process::Child, sync::Arc, time::Duration};

use anyhow::{Context, Result};

use crate::{
    agents::{Agent, Cluster, Timing, LOGICAL},
    keepalived::{Keepalived, Vrrp},
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
    /// a's links go down (the line first), then its agent is SIGKILLed: nothing more comes
    /// from a.
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
        misses: 8,
        preempt_delay: "500ms",
        realtime: true,
    }
}

/// What serves the logical address: our agents, or keepalived as the reference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum System {
    Takeover,
    Keepalived(Vrrp),
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Takeover => "takeover",
            System::Keepalived(Vrrp::Fast) => "keepalived, VRRPv3 advert_int 0.01",
            System::Keepalived(Vrrp::Default) => "keepalived, defaults (VRRPv2, advert 1 s)",
        }
    }

    /// keepalived has no switchover command.
    fn runs(self, sc: Scenario) -> bool {
        self == System::Takeover || sc != Scenario::Switchover
    }
}

enum Servers {
    Agents(Cluster, Vec<Agent>),
    Keepalived(TempDir, Vec<Keepalived>),
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One cluster (a serving, b standing by) with a client load running.
struct Rig {
    lan: Lan,
    servers: Servers,
    _responders: Vec<Responder>,
    load: Load,
}

fn rig(t: &Takeover, system: System) -> Result<Rig> {
    let lan = Lan::new(t, &["cli", "a", "b"])?;
    lan.dedicated_line("a", "b")?;
    let (a, b) = (lan.host("a"), lan.host("b"));
    let servers = match system {
        System::Takeover => {
            let cluster = Cluster::new(&lan, timing())?;
            let agents = vec![cluster.start(t, a, b)?, cluster.start(t, b, a)?];
            for h in [a, b] {
                wait_for("the logical address", Duration::from_secs(15), || {
                    Ok(h.ns
                        .ip("-o addr show dev lan")?
                        .contains(LOGICAL)
                        .then_some(()))
                })?;
            }
            Servers::Agents(cluster, agents)
        }
        System::Keepalived(vrrp) => {
            let dir = TempDir(std::env::temp_dir().join(format!(
                "takeover-keepalived-{}-{}",
                std::process::id(),
                lan.switch.name
            )));
            let k = vec![
                Keepalived::start(a, vrrp, &dir.0)?,
                Keepalived::start(b, vrrp, &dir.0)?,
            ];
            Servers::Keepalived(dir, k)
        }
    };
    let mut responders = Vec::new();
    for h in [a, b] {
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
        servers,
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

    /// SIGKILL to every process of a's failover software.
    fn kill_a(&mut self) {
        match &mut self.servers {
            Servers::Agents(_, agents) => agents[0].kill(),
            Servers::Keepalived(_, k) => k[0].kill(),
        }
    }

    fn restart_a(&mut self, t: &Takeover) -> Result<()> {
        let (a, b) = (self.lan.host("a"), self.lan.host("b"));
        match &mut self.servers {
            Servers::Agents(cluster, agents) => agents[0] = cluster.start(t, a, b)?,
            Servers::Keepalived(dir, k) => {
                k[0] = Keepalived::start(a, k[0].vrrp, &dir.0)?;
            }
        }
        Ok(())
    }

    fn logs(&self) -> (String, String) {
        match &self.servers {
            Servers::Agents(_, agents) => (agents[0].log(), agents[1].log()),
            Servers::Keepalived(_, k) => (k[0].log(), k[1].log()),
        }
    }

    fn crash_a(&mut self) -> Result<u64> {
        let t0 = now_us();
        let a = self.lan.host("a");
        // One shell, as for `silent`: the gap is the detection's, not the time between two
        // commands.
        a.ns.sh("ip link set ded down; ip link set lan down")?;
        self.kill_a();
        self.wait_served_by("b", t0)?;
        Ok(t0)
    }
}

/// One trial: (client-seen gap, requests lost).
fn trial(t: &Takeover, system: System, sc: Scenario) -> Result<(Duration, usize)> {
    let mut r = rig(t, system)?;
    let t0 = match sc {
        Scenario::Crash => r.crash_a()?,
        Scenario::Silent => {
            let t0 = now_us();
            let a = r.lan.host("a");
            // One shell, the line first: a stays reachable to the client until both are mute,
            // so the gap is the detection's, not the time between two commands.
            a.ns.sh("tc qdisc replace dev ded root pfifo limit 0; tc qdisc replace dev lan root pfifo limit 0")?;
            let killed = now_us();
            r.kill_a();
            if std::env::var_os("TAKEOVER_BENCH_LOGS").is_some() {
                let reaped = now_us();
                eprintln!(
                    "a's agent: SIGKILL at {}, reaped at {}",
                    killed as f64 / 1e6,
                    reaped as f64 / 1e6
                );
            }
            r.wait_served_by("b", t0)?;
            t0
        }
        Scenario::Failback => {
            r.crash_a()?;
            std::thread::sleep(Duration::from_millis(300));
            let t0 = now_us();
            let a = r.lan.host("a");
            a.ns.ip("link set lan up")?;
            a.ns.ip("link set ded up")?;
            r.restart_a(t)?;
            if let Err(e) = r.wait_served_by("a", t0) {
                let (la, lb) = r.logs();
                anyhow::bail!("{e}\n-- a:\n{la}-- b:\n{lb}");
            }
            t0
        }
        Scenario::Switchover => {
            let t0 = now_us();
            let ordered = t.ok(&r.lan.host("a").ns, &format!("switchover {LOGICAL} --to b"));
            if let Err(e) = ordered.and_then(|_| r.wait_served_by("b", t0)) {
                let (la, lb) = r.logs();
                anyhow::bail!("{e}\n-- a:\n{la}-- b:\n{lb}");
            }
            t0
        }
    };
    std::thread::sleep(Duration::from_millis(300));
    let end = now_us();
    let (la, lb) = r.logs();
    let seen: Seen = r.load.stop();
    if std::env::var_os("TAKEOVER_BENCH_LOGS").is_some() {
        let (gap, at) = seen.longest_gap_at(t0.saturating_sub(100_000), end);
        eprintln!(
            "t0 = {}.{:06}, longest gap {gap:?} from {}.{:06}\n-- a:\n{la}-- b:\n{lb}",
            t0 / 1_000_000,
            t0 % 1_000_000,
            at / 1_000_000,
            at % 1_000_000,
        );
    }
    let gap = seen.longest_gap(t0.saturating_sub(100_000), end);
    // Requests still in flight at the end are not counted as lost.
    let lost = seen.lost(t0.saturating_sub(50_000), end.saturating_sub(50_000));
    Ok((gap, lost))
}

/// Resident memory of `pid`, KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")
}

/// Nanoseconds `pid` has run on a CPU, all threads: the scheduler's own account
/// (`/proc/PID/task/*/schedstat`, first field), exact where tick sampling is not.
fn runtime_ns(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat"))?;
        total += stat
            .split_whitespace()
            .next()
            .context("schedstat")?
            .parse::<u64>()?;
    }
    Ok(total)
}

struct Soak {
    takeovers: usize,
    fences: usize,
    /// Agents a (serving) and b (standing by), % of a core.
    cpu_percent: [f64; 2],
    rss_kib: u64,
}

/// 30 s with four CPU-busy processes and no fault (or, with `line_down`, the dedicated line
/// down from the start: one path left, the LAN confirming with probes): count takeovers,
/// measure the agent.
fn soak(t: &Takeover, line_down: bool) -> Result<Soak> {
    let r = rig(t, System::Takeover)?;
    if line_down {
        r.lan.host("a").ns.ip("link set ded down")?;
    }
    let Servers::Agents(_, agents) = &r.servers else {
        unreachable!("a takeover rig")
    };
    let mut hogs: Vec<Child> = (0..4)
        .map(|_| {
            std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    let pid = agents[0].child.id();
    let pid_b = agents[1].child.id();
    let run0 = runtime_ns(pid)?;
    let run0_b = runtime_ns(pid_b)?;
    std::thread::sleep(SOAK);
    let run1 = runtime_ns(pid)?;
    let run1_b = runtime_ns(pid_b)?;
    let rss = rss_kib(pid)?;
    for h in &mut hogs {
        let _ = h.kill();
        let _ = h.wait();
    }
    let (la, lb) = r.logs();
    let count =
        |agent: &Agent, kind: &str| agent.events().iter().filter(|e| e["event"] == kind).count();
    // b opening anything is a takeover (a serves from the start); a fence by either counts.
    let takeovers = count(&agents[1], "takeover");
    let fences = count(&agents[0], "fence_started") + count(&agents[1], "fence_started");
    if fences > 0 {
        let notable = |l: &str| {
            l.lines()
                .filter(|l| !l.contains("gate on") && !l.contains("threaded"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        eprintln!(
            "soak (line down: {line_down}): a fence!\n-- a:\n{}\n-- b:\n{}",
            notable(&la),
            notable(&lb)
        );
    }
    Ok(Soak {
        takeovers,
        fences,
        cpu_percent: [(run0, run1), (run0_b, run1_b)]
            .map(|(r0, r1)| 100.0 * (r1 - r0) as f64 / 1e9 / SOAK.as_secs_f64()),
        rss_kib: rss,
    })
}

/// Per trial: (client-seen gap, requests lost).
type Trials = Vec<(Duration, usize)>;

const SYSTEMS: [System; 3] = [
    System::Takeover,
    System::Keepalived(Vrrp::Fast),
    System::Keepalived(Vrrp::Default),
];

/// `median (min–max)` of gaps in ms, and the median of losses.
fn summary(v: &[(Duration, usize)]) -> (f64, String, f64) {
    let gaps: Vec<f64> = v.iter().map(|(g, _)| g.as_secs_f64() * 1e3).collect();
    let lost: Vec<f64> = v.iter().map(|(_, l)| *l as f64).collect();
    let (gmin, gmax) = range(&gaps);
    let (lmin, lmax) = range(&lost);
    let g = median(&gaps);
    let fmt = |x: f64| {
        if x >= 100.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.1}")
        }
    };
    let text = format!(
        "{} ms ({}–{}), lost {} ({lmin}–{lmax})",
        fmt(g),
        fmt(gmin),
        fmt(gmax),
        median(&lost)
    );
    (g, text, median(&lost))
}

pub fn run(t: &Takeover, machine: &str, date: &str) -> Result<String> {
    // TAKEOVER_BENCH_ONLY=Silent TAKEOVER_BENCH_TRIALS=1 TAKEOVER_BENCH_LOGS=1: one look at one
    // story (TAKEOVER_BENCH_SYSTEMS=takeover leaves keepalived out, TAKEOVER_BENCH_SOAK=0 the soak).
    let only = std::env::var("TAKEOVER_BENCH_ONLY").ok();
    let systems = std::env::var("TAKEOVER_BENCH_SYSTEMS").ok();
    let trials = std::env::var("TAKEOVER_BENCH_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(TRIALS);
    let mut results: Vec<(System, Scenario, Trials)> = Vec::new();
    for sc in Scenario::ALL {
        for sys in SYSTEMS {
            let wanted = only.as_deref().is_none_or(|o| format!("{sc:?}") == o)
                && systems.as_deref().is_none_or(|s| sys.name().starts_with(s));
            if sys.runs(sc) && wanted {
                results.push((sys, sc, Vec::new()));
            }
        }
    }
    // Interleaved: every (system, scenario) once per round, so drift hits all alike.
    for round in 0..trials {
        for (sys, sc, v) in results.iter_mut() {
            let r = trial(t, *sys, *sc)
                .with_context(|| format!("{} {sc:?}, round {round}", sys.name()))?;
            eprintln!(
                "trial {round} {sc:?} {}: gap {:?}, lost {}",
                sys.name(),
                r.0,
                r.1
            );
            v.push(r);
        }
    }
    let soak = if std::env::var("TAKEOVER_BENCH_SOAK").as_deref() == Ok("0") {
        None
    } else {
        eprintln!("soak: {SOAK:?} with 4 busy processes, then again with the line down");
        Some((soak(t, false)?, soak(t, true)?))
    };
    let mut s = String::new();
    writeln!(s, "## Failover (`cargo xtask bench failover`)\n")?;
    writeln!(
        s,
        "Measured {date} on {machine}, by `cargo xtask bench failover`."
    )?;
    let tm = timing();
    writeln!(
        s,
        "Namespace topology (client, a, b on a bridge, dedicated line a<->b); a UDP client at 1000 requests/s. \
         takeover: one heartbeat every {} by the line or the LAN in turn (each path every other), dead after {} misses, preempt delay {}, real-time priority with threaded NAPI (the defaults), \
         kernel exit notices on, the fence cuts the peer's LAN link (the lab's `fence` program, static, one netlink request: 0.6-2 ms of the gap with the process start, on these machines). \
         The switch's ports forward in threaded NAPI too (a real switch does not run on the hosts' CPUs). \
         keepalived {}: VRRP on the LAN, a priority 200, b 100, preempt; the backup's service binds the address with \
         `ip_nonlocal_bind`. {trials} trials per (system, scenario), each on a fresh topology, all interleaved. \
         Gap = the longest silence the client saw, median (min–max); lost = requests without a reply, median (min–max). \
         Ratio = keepalived's median gap / takeover's.\n",
        tm.interval, tm.misses, tm.preempt_delay, keepalived_version()
    )?;
    writeln!(
        s,
        "| scenario | takeover | keepalived VRRPv3, advert 10 ms | keepalived defaults, advert 1 s | ratio (10 ms) | ratio (defaults) |"
    )?;
    writeln!(s, "|---|---|---|---|---|---|")?;
    for sc in Scenario::ALL {
        let cell = |sys: System| {
            results
                .iter()
                .find(|(y, c, v)| *y == sys && *c == sc && !v.is_empty())
                .map(|(_, _, v)| summary(v))
        };
        let ours = cell(System::Takeover);
        let (fast, slow) = (
            cell(System::Keepalived(Vrrp::Fast)),
            cell(System::Keepalived(Vrrp::Default)),
        );
        if ours.is_none() && fast.is_none() && slow.is_none() {
            continue;
        }
        let text = |c: &Option<(f64, String, f64)>| {
            c.as_ref().map_or("—".to_string(), |(_, t, _)| t.clone())
        };
        let ratio = |c: &Option<(f64, String, f64)>| match (&ours, c) {
            (Some((o, _, _)), Some((k, _, _))) if *o > 0.0 => format!("{:.0}×", k / o),
            _ => "—".to_string(),
        };
        writeln!(
            s,
            "| {sc:?} | {} | {} | {} | {} | {} |",
            text(&ours),
            text(&fast),
            text(&slow),
            ratio(&fast),
            ratio(&slow)
        )?;
    }
    if let Some((soak, line)) = soak {
        writeln!(
            s,
            "\nSoak (takeover), {} s with 4 CPU-busy processes on {} cores and no fault: {} takeovers, {} fence commands; agent a (serving) used {:.2} % of a core, agent b (standing by) {:.2} % (their run time in /proc/PID/task/*/schedstat); RSS of a {:.1} MiB.",
            SOAK.as_secs(),
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            soak.takeovers,
            soak.fences,
            soak.cpu_percent[0],
            soak.cpu_percent[1],
            soak.rss_kib as f64 / 1024.0
        )?;
        writeln!(
            s,
            "The same with the dedicated line down all along (one path left: the LAN alone, with the whole dead time): {} takeovers, {} fence commands; agents a and b used {:.2} % and {:.2} % of a core.",
            line.takeovers,
            line.fences,
            line.cpu_percent[0],
            line.cpu_percent[1]
        )?;
    }
    Ok(s)
}

fn keepalived_version() -> String {
    std::process::Command::new("keepalived")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stderr).to_string()
                + &String::from_utf8_lossy(&o.stdout);
            text.split_whitespace()
                .find(|w| w.starts_with('v'))
                .map(|w| w.trim_start_matches('v').to_string())
        })
        .unwrap_or_else(|| "(version unknown)".into())
}
