//! `cargo xtask bench failover`: the client-seen gap and the requests lost, per scenario, over
//! several trials, each on a fresh topology; and soaks under CPU load that count takeovers
//! and measure the agent's footprint. Writes its section of BENCHMARKS.md.
//!
//! To look at a few stories only (each variable optional):
//! `TAKEOVER_BENCH_ONLY=svcfail,svchang` (scenarios, by name), `TAKEOVER_BENCH_TRIALS=1`,
//! `TAKEOVER_BENCH_SYSTEMS=takeover` (or `keepalived`), `TAKEOVER_BENCH_SOAK=0` (no soak;
//! or some of `plain,line,services`), `TAKEOVER_BENCH_SOAK_SECS=10`, `TAKEOVER_BENCH_LOGS=1`.
use std::{
    fmt::Write as _,
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::Child,
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{
    agents::{without_fence, Agent, Cluster, Timing, LOGICAL},
    bench_services::{
        agent_services, keepalived_track, wait_services_ready, web_pid, Nginx, CHECK_FALL,
        CHECK_INTERVAL_MS, CHECK_TIMEOUT_MS, WEB_PORT,
    },
    http_load::HttpLoad,
    keepalived::{Keepalived, Vrrp},
    load::{now_us, Load, Seen},
    services::http_get,
    stats::{median, range},
    storage::LoopDevice,
    topology::{wait_for, Lan},
    udp::{Client, Responder},
    Takeover,
};

const PORT: u16 = 7000;
const TRIALS: usize = 5;
const SOAK: Duration = Duration::from_secs(30);
/// The service scenarios' targets: SvcFail's median gap and lost; SvcHang's median gap is
/// fall x interval + this.
const SVCFAIL_GAP_MS: f64 = 2.0;
const SVCFAIL_LOST: f64 = 1.0;
const SVCHANG_SLACK_MS: f64 = 2.0;

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
    /// nginx on a (the address's server) SIGKILLed, its whole process group, under an HTTP
    /// load: its traffic goes to b's nginx.
    SvcFail,
    /// nginx on a SIGSTOPped, its whole process group: a hang, which only a check finds.
    SvcHang,
    /// No fence device (takeover: no `[fence]`, the leases alone): a's agent SIGKILLed, its
    /// host running on.
    Killed,
    /// No fence device: a's agent SIGSTOPped (frozen), its host running on; thawed after.
    Frozen,
    /// No fence device: a hangs whole (agent SIGSTOPped, its switch port and line down: its
    /// kernel answers nothing either); takeover with a storage area (its defaults); thawed
    /// after.
    Hung,
}

impl Scenario {
    pub const ALL: [Scenario; 9] = [
        Self::Crash,
        Self::Silent,
        Self::Failback,
        Self::Switchover,
        Self::SvcFail,
        Self::SvcHang,
        Self::Killed,
        Self::Frozen,
        Self::Hung,
    ];

    /// Run with no fence device: the hosts that answer afterwards are counted.
    fn unfenced(self) -> bool {
        matches!(self, Self::Killed | Self::Frozen | Self::Hung)
    }

    /// A service's fault (nginx, the HTTP load), not the node's (the UDP load).
    fn is_service(self) -> bool {
        matches!(self, Self::SvcFail | Self::SvcHang)
    }
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

    /// keepalived has no switchover command; a service is watched by a `vrrp_script`, whose
    /// seconds dwarf the adverts: only its fastest VRRP is run.
    fn runs(self, sc: Scenario) -> bool {
        match self {
            System::Takeover => true,
            System::Keepalived(Vrrp::Fast) => sc != Scenario::Switchover,
            System::Keepalived(Vrrp::Default) => sc != Scenario::Switchover && !sc.is_service(),
        }
    }
}

/// What runs on a and b besides the failover software.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Services {
    /// Nothing: the UDP responders answer the UDP load.
    None,
    /// nginx on port 80, answering the HTTP load: the agents' `[[service]]`, or run by the
    /// bench and watched by keepalived's `vrrp_script`.
    Web,
    /// Three nginx (ports 80-82) as the agents' services, each checked; the UDP responders
    /// answer the UDP load as in `None`.
    Three,
}

impl Services {
    fn ports(self) -> &'static [u16] {
        match self {
            Services::None => &[],
            Services::Web => &[WEB_PORT],
            Services::Three => &[WEB_PORT, WEB_PORT + 1, WEB_PORT + 2],
        }
    }
}

/// Dropped before the namespaces (the last field of [`Rig`]), whose deletion kills the
/// services the agents left running: an agent alive then could start them again.
enum Servers {
    /// The cluster's files, the agents, each node's `[[service]]` and `[storage]` sections (a
    /// restart gets the same), and whether they run without a fence command.
    Agents(Cluster, Vec<Agent>, [String; 2], bool),
    /// keepalived, and the nginx it watches if any.
    Keepalived(TempDir, Vec<Keepalived>, Vec<Nginx>),
}

/// The client's load: UDP requests, or HTTP requests each on a new connection.
enum ClientLoad {
    Udp(Load),
    Http(HttpLoad),
}

impl ClientLoad {
    fn served_by(&self, who: &str, after: u64) -> bool {
        match self {
            ClientLoad::Udp(l) => l.served_by(who, after),
            ClientLoad::Http(l) => l.served_by(who, after),
        }
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One cluster (a serving, b standing by) with a client load running. Dropped in field
/// order: the load, the servers, the responders, then the namespaces.
struct Rig {
    load: ClientLoad,
    servers: Servers,
    /// The storage area the agents share, if the scenario has one.
    _storage: Option<LoopDevice>,
    _responders: Vec<Responder>,
    lan: Lan,
}

fn rig(t: &Takeover, system: System, services: Services) -> Result<Rig> {
    rig_for(t, system, services, None)
}

/// A rig for `scenario`, if given: one with no fence device runs the agents without a fence
/// command, and `Hung` with a storage area.
fn rig_for(
    t: &Takeover,
    system: System,
    services: Services,
    scenario: Option<Scenario>,
) -> Result<Rig> {
    let lan = Lan::new(t, &["cli", "a", "b"])?;
    lan.dedicated_line("a", "b")?;
    let (a, b) = (lan.host("a"), lan.host("b"));
    let unfenced = scenario.is_some_and(Scenario::unfenced);
    let storage = match (system, scenario) {
        (System::Takeover, Some(Scenario::Hung)) => {
            let dev = LoopDevice::new("bench-area", 8)?;
            t.ok_plain(&format!("storage init {} --nodes a,b", dev.dev))?;
            Some(dev)
        }
        _ => None,
    };
    let servers = match system {
        System::Takeover => {
            let cluster = Cluster::new(&lan, timing())?;
            // The storage area's defaults (50 ms, 500 ms).
            let area = storage
                .as_ref()
                .map_or(String::new(), |d| d.config("50ms", "500ms"));
            let extra = [
                agent_services(&cluster.dir, a, services.ports())? + &area,
                agent_services(&cluster.dir, b, services.ports())? + &area,
            ];
            let agents = vec![
                cluster.start_with(t, a, b, |c| fenced(c, unfenced) + &extra[0])?,
                cluster.start_with(t, b, a, |c| fenced(c, unfenced) + &extra[1])?,
            ];
            let servers = Servers::Agents(cluster, agents, extra, unfenced);
            for h in [a, b] {
                wait_for("the logical address", Duration::from_secs(15), || {
                    Ok(h.ns
                        .ip("-o addr show dev lan")?
                        .contains(LOGICAL)
                        .then_some(()))
                })?;
            }
            if services != Services::None {
                for h in [a, b] {
                    if let Err(e) = wait_services_ready(t, h, services.ports().len()) {
                        let (la, lb) = logs(&servers);
                        bail!("{e}\n-- a:\n{la}-- b:\n{lb}");
                    }
                }
            }
            servers
        }
        System::Keepalived(vrrp) => {
            let dir = TempDir(std::env::temp_dir().join(format!(
                "takeover-keepalived-{}-{}",
                std::process::id(),
                lan.switch.name
            )));
            // The service first: keepalived's check passes from its start.
            let (nginx, track) = match services {
                Services::None => (Vec::new(), None),
                Services::Web => (
                    vec![Nginx::start(a, &dir.0)?, Nginx::start(b, &dir.0)?],
                    Some(keepalived_track()),
                ),
                Services::Three => bail!("the soak with services is takeover's only"),
            };
            let k = vec![
                Keepalived::start_tracking(a, vrrp, &dir.0, track.clone())?,
                Keepalived::start_tracking(b, vrrp, &dir.0, track)?,
            ];
            Servers::Keepalived(dir, k, nginx)
        }
    };
    if services == Services::Web {
        let cli = &lan.host("cli").ns;
        wait_for("a to serve", Duration::from_secs(15), || {
            Ok(
                (http_get(cli, LOGICAL, WEB_PORT, Duration::from_millis(100))?.as_deref()
                    == Some("a"))
                .then_some(()),
            )
        })?;
        let target = SocketAddrV4::new(LOGICAL.parse()?, WEB_PORT);
        let load = ClientLoad::Http(HttpLoad::start(cli, target, 1000)?);
        std::thread::sleep(Duration::from_millis(300));
        return Ok(Rig {
            load,
            servers,
            _storage: storage,
            _responders: Vec::new(),
            lan,
        });
    }
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
    let load = ClientLoad::Udp(Load::start(client, 1000));
    std::thread::sleep(Duration::from_millis(300));
    Ok(Rig {
        load,
        servers,
        _storage: storage,
        _responders: responders,
        lan,
    })
}

/// The agents' configuration, without its fence command if `unfenced`.
fn fenced(config: String, unfenced: bool) -> String {
    if unfenced {
        without_fence(config)
    } else {
        config
    }
}

/// The logs of a's and b's failover software.
fn logs(servers: &Servers) -> (String, String) {
    match servers {
        Servers::Agents(_, agents, ..) => (agents[0].log(), agents[1].log()),
        Servers::Keepalived(_, k, _) => (k[0].log(), k[1].log()),
    }
}

impl Rig {
    fn wait_served_by(&self, who: &str, after: u64) -> Result<()> {
        wait_for(&format!("{who} to answer"), Duration::from_secs(15), || {
            Ok(self.load.served_by(who, after).then_some(()))
        })
    }

    /// Sends `signal` to the process group of a's nginx, taking the time just before: the
    /// fault's moment. The pid is asked for first (of the agent, or of the bench's nginx).
    fn signal_web_a(&self, t: &Takeover, signal: i32) -> Result<u64> {
        let pid = match &self.servers {
            Servers::Agents(..) => web_pid(t, self.lan.host("a"))?,
            Servers::Keepalived(_, _, nginx) => nginx.first().context("no nginx")?.pid(),
        };
        let t0 = now_us();
        if unsafe { libc::kill(-pid, signal) } != 0 {
            bail!(
                "kill(-{pid}, {signal}): {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(t0)
    }

    /// `signal` to a's failover software (the agent; keepalived's every process).
    fn signal_a(&self, signal: i32) {
        match &self.servers {
            Servers::Agents(_, agents, ..) => unsafe {
                libc::kill(agents[0].child.id() as i32, signal);
            },
            Servers::Keepalived(_, k, _) => k[0].signal(signal),
        }
    }

    /// SIGKILL to every process of a's failover software.
    fn kill_a(&mut self) {
        match &mut self.servers {
            Servers::Agents(_, agents, ..) => agents[0].kill(),
            Servers::Keepalived(_, k, _) => k[0].kill(),
        }
    }

    fn restart_a(&mut self, t: &Takeover) -> Result<()> {
        let (a, b) = (self.lan.host("a"), self.lan.host("b"));
        match &mut self.servers {
            Servers::Agents(cluster, agents, extra, unfenced) => {
                let unfenced = *unfenced;
                agents[0] = cluster.start_with(t, a, b, |c| fenced(c, unfenced) + &extra[0])?
            }
            Servers::Keepalived(dir, k, _) => {
                k[0] = Keepalived::start_tracking(a, k[0].vrrp, &dir.0, k[0].track.clone())?;
            }
        }
        Ok(())
    }

    fn logs(&self) -> (String, String) {
        logs(&self.servers)
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

/// One trial: (client-seen gap, requests lost, and for a scenario with no fence device, how
/// many hosts answered ARP for the address afterwards).
fn trial(t: &Takeover, system: System, sc: Scenario) -> Result<Trial> {
    let services = if sc.is_service() {
        Services::Web
    } else {
        Services::None
    };
    let mut r = rig_for(t, system, services, Some(sc))?;
    let t0 = match sc {
        Scenario::Killed | Scenario::Frozen | Scenario::Hung => {
            let t0 = now_us();
            match sc {
                Scenario::Killed => r.kill_a(),
                Scenario::Frozen => r.signal_a(libc::SIGSTOP),
                _ => {
                    // One shell: the host hangs at once, its kernel's answers stop with it.
                    r.signal_a(libc::SIGSTOP);
                    r.lan.switch.sh("ip link set p-a down")?;
                    r.lan.host("a").ns.ip("link set ded down")?;
                }
            }
            if let Err(e) = r.wait_served_by("b", t0) {
                let (la, lb) = r.logs();
                bail!("{e}\n-- a:\n{la}-- b:\n{lb}");
            }
            t0
        }
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
        Scenario::SvcFail | Scenario::SvcHang => {
            let signal = if sc == Scenario::SvcFail {
                libc::SIGKILL
            } else {
                libc::SIGSTOP
            };
            let t0 = r.signal_web_a(t, signal)?;
            if let Err(e) = r.wait_served_by("b", t0) {
                let (la, lb) = r.logs();
                bail!("{e}\n-- a:\n{la}-- b:\n{lb}");
            }
            t0
        }
    };
    if sc.is_service() {
        return service_trial_end(r, t0).map(|(gap, lost)| Trial {
            gap,
            lost,
            answering: None,
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    let end = now_us();
    // With no fence device: the client asks who has the address, three times in 300 ms, while
    // a is still down, then once a is back (thawed, its links up; before a's preempt delay
    // could move the address back).
    let answering = if sc.unfenced() {
        let ask = |r: &Rig| {
            r.lan
                .host("cli")
                .arp_answerers(LOGICAL, 3, Duration::from_millis(100))
                .map(|who| who.len())
        };
        let mut most = ask(&r)?;
        if sc != Scenario::Killed {
            r.lan.switch.ip("link set p-a up")?;
            r.lan.host("a").ns.ip("link set ded up")?;
            r.signal_a(libc::SIGCONT);
            most = most.max(ask(&r)?);
        }
        Some(most)
    } else {
        None
    };
    let (la, lb) = r.logs();
    let ClientLoad::Udp(load) = r.load else {
        unreachable!("a node's fault runs the UDP load")
    };
    let seen: Seen = load.stop();
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
    Ok(Trial {
        gap,
        lost,
        answering,
    })
}

/// What one trial measured.
#[derive(Clone, Copy, Debug)]
struct Trial {
    gap: Duration,
    lost: usize,
    /// Hosts that answered ARP for the address afterwards (scenarios with no fence device).
    answering: Option<usize>,
}

/// After a service's fault, b answers: the measure ends 50 ms after its first reply, before
/// a's restart (its start-up competes for these CPUs; its traffic would come back only after
/// the hold anyway), and begins at the last reply before the fault: the silence the fault
/// caused and whatever follows, not a hiccup before it. Every request sent until the end has
/// had time to finish (the HTTP load drains): the lost are those sent from 50 ms before the
/// fault to the end.
fn service_trial_end(r: Rig, t0: u64) -> Result<(Duration, usize)> {
    std::thread::sleep(Duration::from_millis(100));
    let (la, lb) = r.logs();
    let ClientLoad::Http(load) = r.load else {
        unreachable!("a service's fault runs the HTTP load")
    };
    let s = load.stop()?;
    let first_b = s
        .seen
        .first_reply("b", t0)
        .context("b answered, and then its reply is not in the record")?;
    let end = first_b + 50_000;
    let start = s
        .seen
        .replies
        .values()
        .map(|(t, _)| *t)
        .filter(|t| *t <= t0)
        .max()
        .unwrap_or(t0.saturating_sub(100_000));
    let from = t0.saturating_sub(50_000);
    let (gap, at) = s.seen.longest_gap_at(start, end);
    if std::env::var_os("TAKEOVER_BENCH_LOGS").is_some() {
        let us = |t: u64| format!("{}.{:06}", t / 1_000_000, t % 1_000_000);
        eprintln!(
            "t0 = {}, b's first reply {} (+{:.1} ms), longest gap {gap:?} from {} (the longest since 100 ms before the fault: {:?}); failed requests by reason: {:?}\n-- a:\n{la}-- b:\n{lb}",
            us(t0),
            us(first_b),
            (first_b - t0) as f64 / 1e3,
            us(at),
            s.seen.longest_gap(t0.saturating_sub(100_000), end),
            s.failures(from, end),
        );
    }
    Ok((gap, s.seen.lost(from, end)))
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
        total += task_runtime_ns(&task?.path())?;
    }
    Ok(total)
}

/// Nanoseconds the agent's main thread, its heartbeat loop, has run (the checks and the
/// supervision run on the runtime's other threads).
fn loop_runtime_ns(pid: u32) -> Result<u64> {
    task_runtime_ns(Path::new(&format!("/proc/{pid}/task/{pid}")))
}

fn task_runtime_ns(task: &Path) -> Result<u64> {
    let stat = std::fs::read_to_string(task.join("schedstat"))?;
    Ok(stat
        .split_whitespace()
        .next()
        .context("schedstat")?
        .parse::<u64>()?)
}

/// Which soak: the plain one, the dedicated line down, or with services checked.
#[derive(Clone, Copy, Debug, PartialEq)]
enum SoakKind {
    Plain,
    LineDown,
    Services,
}

impl SoakKind {
    const ALL: [SoakKind; 3] = [Self::Plain, Self::LineDown, Self::Services];

    /// Its name in `TAKEOVER_BENCH_SOAK`.
    fn key(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::LineDown => "line",
            Self::Services => "services",
        }
    }

    fn describe(self) -> String {
        match self {
            Self::Plain => "no services".into(),
            Self::LineDown => {
                "no services, the dedicated line down all along (one path left: the LAN alone, with the whole dead time)".into()
            }
            Self::Services => format!(
                "three services: an nginx each on ports {}-{} of the logical address, on both nodes, each checked by HTTP every {CHECK_INTERVAL_MS} ms (timeout {CHECK_TIMEOUT_MS} ms, fall {CHECK_FALL})",
                WEB_PORT,
                WEB_PORT + 2
            ),
        }
    }
}

struct Soak {
    takeovers: usize,
    fences: usize,
    /// Instances found failed, by either agent (each a false partial takeover).
    service_faults: usize,
    /// Agents a (serving) and b (standing by), % of a core.
    cpu_percent: [f64; 2],
    /// Of that, their heartbeat loops (main threads).
    loop_percent: [f64; 2],
    rss_kib: u64,
}

/// How long a soak lasts (`TAKEOVER_BENCH_SOAK_SECS` for a shorter look).
fn soak_time() -> Duration {
    std::env::var("TAKEOVER_BENCH_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(SOAK, Duration::from_secs)
}

/// A soak with four CPU-busy processes and no fault (`LineDown`: the dedicated line down from
/// the start, one path left, the LAN confirming with probes; `Services`: three services
/// checked every 10 ms): count takeovers and service faults, measure the agent.
fn soak(t: &Takeover, kind: SoakKind) -> Result<Soak> {
    let services = if kind == SoakKind::Services {
        Services::Three
    } else {
        Services::None
    };
    let r = rig(t, System::Takeover, services)?;
    if kind == SoakKind::LineDown {
        r.lan.host("a").ns.ip("link set ded down")?;
    }
    let Servers::Agents(_, agents, ..) = &r.servers else {
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
    let loop0 = [loop_runtime_ns(pid)?, loop_runtime_ns(pid_b)?];
    let time = soak_time();
    std::thread::sleep(time);
    let run1 = runtime_ns(pid)?;
    let run1_b = runtime_ns(pid_b)?;
    let loop1 = [loop_runtime_ns(pid)?, loop_runtime_ns(pid_b)?];
    let rss = rss_kib(pid)?;
    for h in &mut hogs {
        let _ = h.kill();
        let _ = h.wait();
    }
    let (la, lb) = r.logs();
    let count = |i: usize, kind: &str, state: Option<&str>| {
        agents[i]
            .events()
            .iter()
            .filter(|e| e["event"] == kind && state.is_none_or(|s| e["state"] == s))
            .count()
    };
    // b opening anything is a takeover (a serves from the start); a fence by either counts.
    let takeovers = count(1, "takeover", None);
    let fences = count(0, "fence_started", None) + count(1, "fence_started", None);
    let service_faults =
        count(0, "component", Some("failed")) + count(1, "component", Some("failed"));
    if fences > 0 || service_faults > 0 {
        let notable = |l: &str| {
            l.lines()
                .filter(|l| !l.contains("gate on") && !l.contains("threaded"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        eprintln!(
            "soak ({kind:?}): a fence or a service fault!\n-- a:\n{}\n-- b:\n{}",
            notable(&la),
            notable(&lb)
        );
    }
    Ok(Soak {
        takeovers,
        fences,
        service_faults,
        cpu_percent: [(run0, run1), (run0_b, run1_b)].map(|(r0, r1)| share(r1 - r0, time)),
        loop_percent: [0, 1].map(|i| share(loop1[i] - loop0[i], time)),
        rss_kib: rss,
    })
}

/// `ran` over `time`, in % of a core.
fn share(ran: u64, time: Duration) -> f64 {
    100.0 * ran as f64 / 1e9 / time.as_secs_f64()
}

/// Per trial: (client-seen gap, requests lost).
type Trials = Vec<Trial>;

const SYSTEMS: [System; 3] = [
    System::Takeover,
    System::Keepalived(Vrrp::Fast),
    System::Keepalived(Vrrp::Default),
];

/// `median (min–max)` of gaps in ms, and the median of losses; with the most hosts that
/// answered for the address afterwards, where counted.
fn summary(v: &[Trial]) -> (f64, String, f64) {
    let gaps: Vec<f64> = v.iter().map(|t| t.gap.as_secs_f64() * 1e3).collect();
    let lost: Vec<f64> = v.iter().map(|t| t.lost as f64).collect();
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
    let mut text = format!(
        "{} ms ({}–{}), lost {} ({lmin}–{lmax})",
        fmt(g),
        fmt(gmin),
        fmt(gmax),
        median(&lost)
    );
    if let Some(most) = v.iter().filter_map(|t| t.answering).max() {
        text += &format!("; hosts answering after: {most} at most");
    }
    (g, text, median(&lost))
}

pub fn run(t: &Takeover, machine: &str, date: &str) -> Result<String> {
    // TAKEOVER_BENCH_ONLY=Silent TAKEOVER_BENCH_TRIALS=1 TAKEOVER_BENCH_LOGS=1: one look at one
    // story (TAKEOVER_BENCH_SYSTEMS=takeover leaves keepalived out, TAKEOVER_BENCH_SOAK=0 the
    // soaks). Scenarios and soaks may be lists: TAKEOVER_BENCH_ONLY=svcfail,svchang.
    let list = |var: &str| {
        std::env::var(var).ok().map(|v| {
            v.split(',')
                .map(|w| w.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
    };
    let only = list("TAKEOVER_BENCH_ONLY");
    let systems = std::env::var("TAKEOVER_BENCH_SYSTEMS").ok();
    let trials = std::env::var("TAKEOVER_BENCH_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(TRIALS);
    let mut results: Vec<(System, Scenario, Trials)> = Vec::new();
    for sc in Scenario::ALL {
        for sys in SYSTEMS {
            let wanted = only
                .as_ref()
                .is_none_or(|o| o.contains(&format!("{sc:?}").to_ascii_lowercase()))
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
                "trial {round} {sc:?} {}: gap {:?}, lost {}, answering after {:?}",
                sys.name(),
                r.gap,
                r.lost,
                r.answering
            );
            v.push(r);
        }
    }
    let soak_kinds: Vec<SoakKind> = match list("TAKEOVER_BENCH_SOAK") {
        Some(l) if l == ["0"] => Vec::new(),
        Some(l) => SoakKind::ALL
            .into_iter()
            .filter(|k| l.iter().any(|w| w == k.key()))
            .collect(),
        None => SoakKind::ALL.to_vec(),
    };
    let mut soaks = Vec::new();
    for kind in soak_kinds {
        eprintln!("soak ({kind:?}): {:?} with 4 busy processes", soak_time());
        soaks.push((
            kind,
            soak(t, kind).with_context(|| format!("soak {kind:?}"))?,
        ));
    }
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
    if results.iter().any(|(_, sc, _)| sc.is_service()) {
        writeln!(
            s,
            "SvcFail and SvcHang fault a service, not the node: nginx (Debian's) answers `GET /` with its host's name on port {WEB_PORT} of the logical address on a and b, \
             and an HTTP client in `cli` sends 1000 requests/s to it, each on a new TCP connection, none waiting for another (nonblocking sockets in one poll loop); \
             only a `200` counts as a reply, a refusal, a reset or 2 s without an answer is a lost request. \
             SvcFail: a's nginx SIGKILLed, its whole process group; SvcHang: SIGSTOPped (a hang: its kernel still accepts connections, nothing answers). \
             takeover: the agents run nginx as a `[[service]]` checked by HTTP every {CHECK_INTERVAL_MS} ms, timeout {CHECK_TIMEOUT_MS} ms, fall {CHECK_FALL} (an exit is seen at once through a pidfd); \
             a's gate forwards that port alone to b's nginx over the dedicated line, the address stays on a. \
             keepalived (VRRPv3, advert 10 ms; not run with its defaults, whose adverts the script's seconds dwarf): the bench runs nginx, a `vrrp_script` \
             (`curl -sf -m 0.5 http://127.0.0.1/`) every 1 s (whole seconds: the finest 2.2.7 takes), fall 1, rise 1, no weight: a failed script puts a in FAULT, \
             which gives the address up, and b takes it. Their gap is measured from the client's last reply before the fault (not from 100 ms before it: a hiccup before the fault is not the fault's) to 50 ms after b's first reply, before a restarts its instance (whose traffic comes back only after a hold of 1 s); the requests still open then get 1.5 s to finish.\n"
        )?;
    }
    if results.iter().any(|(_, sc, _)| sc.unfenced()) {
        writeln!(
            s,
            "Killed, Frozen and Hung have no fence device: takeover runs without `[fence]` (the leases alone; for Hung, a storage area on a loop device with its defaults, \
             a disk heartbeat every 50 ms, stale after 500 ms), keepalived as always. Killed: a's agent (keepalived: its processes) SIGKILLed; Frozen: SIGSTOPped; \
             Hung: SIGSTOPped, and a's switch port and end of the line down (its kernel answers nothing: to b a crash and a partition look alike, only the disk tells). \
             After the gap is measured, the client sends 3 ARP requests 100 ms apart for the address, and again once a is back (SIGCONT, links up): \
             \"hosts answering after\" is how many distinct MACs answered one round, the most over both rounds and the trials (2: two hosts claim the address).\n"
        )?;
    }
    if !results.is_empty() {
        writeln!(
            s,
            "| scenario | takeover | keepalived VRRPv3, advert 10 ms | keepalived defaults, advert 1 s | ratio (10 ms) | ratio (defaults) |"
        )?;
        writeln!(s, "|---|---|---|---|---|---|")?;
    }
    let cell = |sys: System, sc: Scenario| {
        results
            .iter()
            .find(|(y, c, v)| *y == sys && *c == sc && !v.is_empty())
            .map(|(_, _, v)| summary(v))
    };
    for sc in Scenario::ALL {
        let ours = cell(System::Takeover, sc);
        let (fast, slow) = (
            cell(System::Keepalived(Vrrp::Fast), sc),
            cell(System::Keepalived(Vrrp::Default), sc),
        );
        if ours.is_none() && fast.is_none() && slow.is_none() {
            continue;
        }
        let text = |c: &Option<(f64, String, f64)>| {
            c.as_ref().map_or("—".to_string(), |(_, t, _)| t.clone())
        };
        // With no fence device, keepalived's figures are not a takeover (two hosts answer).
        let ratio = |c: &Option<(f64, String, f64)>| match (&ours, c) {
            _ if sc.unfenced() => "—".to_string(),
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
    let hang_target = f64::from(CHECK_FALL * CHECK_INTERVAL_MS) + SVCHANG_SLACK_MS;
    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    let mut targets = Vec::new();
    if let Some((gap, _, lost)) = cell(System::Takeover, Scenario::SvcFail) {
        targets.push(format!(
            "SvcFail median gap ≤ {SVCFAIL_GAP_MS} ms and median lost ≤ {SVCFAIL_LOST} ({}: {gap:.1} ms, lost {lost})",
            verdict(gap <= SVCFAIL_GAP_MS && lost <= SVCFAIL_LOST)
        ));
    }
    if let Some((gap, _, _)) = cell(System::Takeover, Scenario::SvcHang) {
        targets.push(format!(
            "SvcHang median gap ≤ fall × interval + {SVCHANG_SLACK_MS} ms = {hang_target} ms ({}: {gap:.1} ms)",
            verdict(gap <= hang_target)
        ));
    }
    if !targets.is_empty() {
        writeln!(
            s,
            "\nTargets (takeover): {}. A hang is found by the last of fall ({CHECK_FALL}) failed checks in a row, which fails at its timeout: \
             between (fall − 1) × interval + timeout and fall × interval + timeout after the hang began ({}–{} ms here, by where in the interval it falls), \
             then a's gate forwards.",
            targets.join("; "),
            (CHECK_FALL - 1) * CHECK_INTERVAL_MS + CHECK_TIMEOUT_MS,
            CHECK_FALL * CHECK_INTERVAL_MS + CHECK_TIMEOUT_MS,
        )?;
    }
    if !soaks.is_empty() {
        writeln!(
            s,
            "\nSoak (takeover), {} s each with 4 CPU-busy processes on {} cores and no fault, the UDP load running: takeovers (b opening anything), fence commands (either agent), \
             service faults (an instance either agent found failed: each a false partial takeover); the agents' CPU is their run time in /proc/PID/task/*/schedstat over the soak, \
             % of a core (the services' own processes not included), and in brackets its heartbeat loop's share (the main thread; checks and supervision run on others).\n",
            soak_time().as_secs(),
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        )?;
        writeln!(
            s,
            "| soak | takeovers | fence commands | service faults | agent a (serving) | agent b (standing by) | RSS of a |"
        )?;
        writeln!(s, "|---|---|---|---|---|---|---|")?;
        for (kind, soak) in &soaks {
            writeln!(
                s,
                "| {} | {} | {} | {} | {:.2} % ({:.2} %) | {:.2} % ({:.2} %) | {:.1} MiB |",
                kind.describe(),
                soak.takeovers,
                soak.fences,
                if *kind == SoakKind::Services {
                    soak.service_faults.to_string()
                } else {
                    "—".into()
                },
                soak.cpu_percent[0],
                soak.loop_percent[0],
                soak.cpu_percent[1],
                soak.loop_percent[1],
                soak.rss_kib as f64 / 1024.0
            )?;
        }
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
