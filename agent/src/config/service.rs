//! `[[service]]`: a service on one or more logical addresses, as a monitored component (the
//! patent's state management table, 506): how it is run or found, how its health is checked,
//! how it recovers, and whether its failure escalates to a takeover of the whole address.
use std::{collections::BTreeMap, net::IpAddr, ops::Range, path::PathBuf, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::{Check, LogicalAddress};
/// The gate's own protocol type: a service's gate entries are keyed by it.
pub use crate::dataplane::target::Proto;

/// The most ports one service may span: each is a gate entry per address.
pub const MAX_PORTS: u32 = 1024;
/// Services a cluster may have.
pub const MAX_SERVICES: usize = 256;

#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub name: String,
    /// The logical addresses it is reached at (each an `[[address]]`).
    pub addresses: Vec<IpAddr>,
    pub proto: Proto,
    /// First and last port, inclusive.
    pub ports: (u16, u16),
    pub how: Supervision,
    pub checks: Vec<HealthCheck>,
    pub recovery: Recovery,
    /// A failure takes the whole address over at once (fence included), without trying a
    /// partial takeover or a restart first.
    pub critical: bool,
    /// Runs only where its address is served (`standby = "cold"`): started at a takeover or
    /// failback, told the epoch, stopped before the address is handed over. For a service
    /// whose state is on shared storage (a database): one instance at a time.
    pub cold: bool,
    /// Mounted before a cold service starts, unmounted after it stops.
    pub filesystem: Option<Filesystem>,
}

/// A cold service's file system on shared storage.
#[derive(Clone, Debug, PartialEq)]
pub struct Filesystem {
    pub device: PathBuf,
    pub mount: PathBuf,
    /// `mount -t`.
    pub kind: String,
    /// `mount -o` (empty: none).
    pub options: String,
}

/// How the agent knows the service's process.
#[derive(Clone, Debug, PartialEq)]
pub enum Supervision {
    /// The agent starts it (at agent start, on every node that may serve it: a standby's
    /// instance is hot) and restarts it as `recovery` says.
    Run(Run),
    /// Someone else runs it; the agent reads its pid from this file.
    PidFile(PathBuf),
    /// Someone else runs it: this systemd unit's main pid.
    SystemdUnit(String),
    /// An OCF resource agent (`/usr/lib/ocf/resource.d/<provider>/<type>`) starts, stops and
    /// monitors it, with `OCF_RESKEY_<name>` for each parameter.
    Ocf(Ocf),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub user: Option<String>,
    pub dir: Option<PathBuf>,
    /// After the stop signal, how long before SIGKILL.
    pub stop_timeout: Duration,
    /// What stops it cleanly (SIGTERM; PostgreSQL's fast shutdown is SIGINT).
    pub stop_signal: i32,
}

/// The signals a service may be stopped with, by name.
pub const STOP_SIGNALS: &[(&str, i32)] = &[
    ("TERM", libc::SIGTERM),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("HUP", libc::SIGHUP),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
];

#[derive(Clone, Debug, PartialEq)]
pub struct Ocf {
    pub provider: String,
    pub kind: String,
    pub params: BTreeMap<String, String>,
    /// Longest a start, stop or monitor action may take.
    pub timeout: Duration,
    /// Added to every action's environment (a cold service's takeover: its epoch and
    /// handoff); not configured.
    pub env: BTreeMap<String, String>,
}

impl Ocf {
    /// The resource agent's script.
    pub fn script(&self) -> PathBuf {
        PathBuf::from(OCF_ROOT)
            .join("resource.d")
            .join(&self.provider)
            .join(&self.kind)
    }
}

pub const OCF_ROOT: &str = "/usr/lib/ocf";

#[derive(Clone, Debug, PartialEq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures that make the instance Failed.
    pub fall: u32,
    /// Consecutive passes that make a Failed or Recovering instance Normal again.
    pub rise: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum CheckKind {
    /// The process is alive (its exit is also seen at once by the kernel).
    Process,
    /// A TCP connection to the service's address and port is accepted.
    Tcp { port: u16 },
    /// A datagram sent gets a reply (containing `expect`, if given).
    Udp {
        port: u16,
        send: Vec<u8>,
        expect: Option<Vec<u8>>,
    },
    /// An HTTP GET answers with `status` (and a body containing `body`, if given).
    Http {
        port: u16,
        path: String,
        host: Option<String>,
        status: u16,
        body: Option<String>,
    },
    /// A DNS query for `name` (record type `record`) is answered without error.
    Dns {
        port: u16,
        proto: Proto,
        name: String,
        record: DnsRecord,
    },
    /// A command exits 0 within the timeout.
    Exec { command: Vec<String> },
    /// The OCF agent's `monitor` action returns OCF_SUCCESS.
    OcfMonitor,
}

impl CheckKind {
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::Process => "process",
            CheckKind::Tcp { .. } => "tcp",
            CheckKind::Udp { .. } => "udp",
            CheckKind::Http { .. } => "http",
            CheckKind::Dns { .. } => "dns",
            CheckKind::Exec { .. } => "exec",
            CheckKind::OcfMonitor => "ocf",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsRecord {
    A,
    Aaaa,
    Txt,
    Any,
}

impl DnsRecord {
    /// The record type's number on the wire.
    pub fn number(self) -> u16 {
        match self {
            DnsRecord::A => 1,
            DnsRecord::Txt => 16,
            DnsRecord::Aaaa => 28,
            DnsRecord::Any => 255,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recovery {
    /// Restarts allowed within `window` (0: none, a failure goes straight to escalation).
    pub restarts: u32,
    pub window: Duration,
    /// Delay before the first restart; it doubles for each one within the window.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// When the budget is spent: take the whole address over (true), or leave the service's
    /// traffic with a peer's instance, or nowhere, and report it (false).
    pub escalate: bool,
    /// A recovered instance must stay Normal this long before its traffic comes back
    /// (hysteresis: a flapping service does not ping-pong).
    pub hold: Duration,
}

pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_millis(100);
pub const DEFAULT_FALL: u32 = 2;
pub const DEFAULT_RISE: u32 = 3;
pub const DEFAULT_RESTARTS: u32 = 3;
pub const DEFAULT_RESTART_WINDOW: Duration = Duration::from_secs(60);
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(100);
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(10);
pub const DEFAULT_HOLD: Duration = Duration::from_secs(2);
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_OCF_TIMEOUT: Duration = Duration::from_secs(20);
/// Pacemaker's usual monitor interval for an OCF resource.
pub const DEFAULT_OCF_MONITOR: Duration = Duration::from_secs(10);

// ---- the file as written ----------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    name: Spanned<String>,
    address: Option<Spanned<String>>,
    addresses: Option<Spanned<Vec<Spanned<String>>>>,
    protocol: Spanned<String>,
    port: Option<Spanned<i64>>,
    ports: Option<Spanned<String>>,
    critical: Option<Spanned<bool>>,
    standby: Option<Spanned<String>>,
    filesystem: Option<Spanned<RawFilesystem>>,
    run: Option<Spanned<RawRun>>,
    watch: Option<Spanned<RawWatch>>,
    ocf: Option<Spanned<RawOcf>>,
    #[serde(default)]
    check: Vec<Spanned<RawCheck>>,
    recovery: Option<Spanned<RawRecovery>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    command: Spanned<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    user: Option<Spanned<String>>,
    dir: Option<Spanned<String>>,
    stop_timeout: Option<Spanned<String>>,
    stop_signal: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilesystem {
    device: Spanned<String>,
    mount: Spanned<String>,
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    options: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    pid_file: Option<Spanned<String>>,
    systemd_unit: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOcf {
    agent: Spanned<String>,
    #[serde(default)]
    params: BTreeMap<String, String>,
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    fall: Option<Spanned<i64>>,
    rise: Option<Spanned<i64>>,
    port: Option<Spanned<i64>>,
    // udp
    send: Option<Spanned<String>>,
    expect: Option<Spanned<String>>,
    // http
    path: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    status: Option<Spanned<i64>>,
    body: Option<Spanned<String>>,
    // dns
    query: Option<Spanned<String>>,
    record: Option<Spanned<String>>,
    // exec
    command: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecovery {
    restarts: Option<Spanned<i64>>,
    window: Option<Spanned<String>>,
    backoff: Option<Spanned<String>>,
    max_backoff: Option<Spanned<String>>,
    escalate: Option<Spanned<bool>>,
    hold: Option<Spanned<String>>,
}

/// Which fields each check type takes beyond the common ones.
const CHECK_FIELDS: &[(&str, &[&str])] = &[
    ("process", &[]),
    ("tcp", &["port"]),
    ("udp", &["port", "send", "expect"]),
    ("http", &["port", "path", "host", "status", "body"]),
    ("dns", &["port", "query", "record"]),
    ("exec", &["command"]),
    ("ocf", &[]),
];

impl Check<'_> {
    fn count(&mut self, v: &Option<Spanned<i64>>, key: &str, default: u32, max: u32) -> u32 {
        match v {
            None => default,
            Some(n) if (1..=max as i64).contains(n.get_ref()) => *n.get_ref() as u32,
            Some(n) => {
                self.error(n.span(), key, format!("must be between 1 and {max}"));
                default
            }
        }
    }

    fn port(&mut self, v: &Spanned<i64>, key: &str) -> u16 {
        match u16::try_from(*v.get_ref()) {
            Ok(p) if p != 0 => p,
            _ => {
                self.error(v.span(), key, "must be a port, 1-65535");
                1
            }
        }
    }

    /// `"8000-8010"` or `"53"`.
    fn port_range(&mut self, v: &Spanned<String>, key: &str) -> (u16, u16) {
        let s = v.get_ref();
        let parse = |p: &str| p.trim().parse::<u16>().ok().filter(|&p| p != 0);
        let range = match s.split_once('-') {
            Some((a, b)) => parse(a).zip(parse(b)),
            None => parse(s).map(|p| (p, p)),
        };
        match range {
            Some((a, b)) if a <= b && u32::from(b - a) < MAX_PORTS => (a, b),
            Some((a, b)) if a <= b => {
                self.error(
                    v.span(),
                    key,
                    format!("spans {} ports; at most {MAX_PORTS}", u32::from(b - a) + 1),
                );
                (a, a)
            }
            _ => {
                self.error(
                    v.span(),
                    key,
                    format!(
                        "{s:?} is not a port range such as \"8000-8010\" (first-last, 1-65535)"
                    ),
                );
                (1, 1)
            }
        }
    }

    fn command(&mut self, v: &Spanned<Vec<String>>, key: &str) -> Vec<String> {
        if v.get_ref().first().is_none_or(|p| p.is_empty()) {
            self.error(
                v.span(),
                key,
                "must name a program and its arguments, such as [\"/usr/sbin/nginx\", \"-g\", \"daemon off;\"]",
            );
        }
        v.get_ref().clone()
    }

    fn absolute(&mut self, v: &Spanned<String>, key: &str) -> PathBuf {
        let p = PathBuf::from(v.get_ref());
        if !p.is_absolute() {
            self.error(
                v.span(),
                key,
                format!("{:?} is not an absolute path", v.get_ref()),
            );
        }
        p
    }
}

/// Validates `[[service]]` against the addresses; every problem goes to `c`.
pub(super) fn services(
    c: &mut Check<'_>,
    raw: &[Spanned<RawService>],
    addresses: &[LogicalAddress],
) -> Vec<Service> {
    if raw.len() > MAX_SERVICES {
        c.error(
            raw[MAX_SERVICES].span(),
            "service",
            format!("this version handles at most {MAX_SERVICES} services per cluster"),
        );
    }
    let mut names = BTreeMap::new();
    // (address, protocol, port) -> the service that has it, for overlaps.
    let mut taken: Vec<(IpAddr, Proto, (u16, u16), String)> = Vec::new();
    let mut out = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        let span = s.span();
        let s = s.get_ref();
        let key = format!("service[{i}]");
        let name = s.name.get_ref().clone();
        if c.name(&s.name, &format!("{key}.name"), "service") {
            if let Some(j) = names.insert(name.clone(), i) {
                c.error(
                    s.name.span(),
                    format!("{key}.name"),
                    format!("{name:?} is already service[{j}]: names must be unique"),
                );
            }
        }

        // Where it is reached.
        let written: Vec<&Spanned<String>> = match (&s.address, &s.addresses) {
            (Some(a), None) => vec![a],
            (None, Some(list)) if !list.get_ref().is_empty() => list.get_ref().iter().collect(),
            (Some(a), Some(_)) => {
                c.error(
                    a.span(),
                    format!("{key}.address"),
                    "give address or addresses, not both",
                );
                vec![a]
            }
            _ => {
                c.error(
                    span.clone(),
                    format!("{key}.address"),
                    "missing: the logical address the service is reached at (address = \"10.0.0.100\", or addresses = [...])",
                );
                vec![]
            }
        };
        let mut ips = Vec::new();
        for a in written {
            let found = a
                .get_ref()
                .parse::<IpAddr>()
                .ok()
                .filter(|ip| addresses.iter().any(|l| l.ip == *ip));
            match found {
                Some(ip) if ips.contains(&ip) => c.error(
                    a.span(),
                    format!("{key}.address"),
                    format!("{ip} is listed twice"),
                ),
                Some(ip) => ips.push(ip),
                None => c.error(
                    a.span(),
                    format!("{key}.address"),
                    format!(
                        "{:?} is not the ip of an [[address]]: a service is reached at a logical address (without /prefix)",
                        a.get_ref()
                    ),
                ),
            }
        }

        let proto = match s.protocol.get_ref().as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            other => {
                c.error(
                    s.protocol.span(),
                    format!("{key}.protocol"),
                    format!("{other:?} is not tcp or udp"),
                );
                Proto::Tcp
            }
        };
        let ports = match (&s.port, &s.ports) {
            (Some(p), None) => {
                let p = c.port(p, &format!("{key}.port"));
                (p, p)
            }
            (None, Some(r)) => c.port_range(r, &format!("{key}.ports")),
            (Some(p), Some(_)) => {
                c.error(
                    p.span(),
                    format!("{key}.port"),
                    "give port or ports, not both",
                );
                (1, 1)
            }
            (None, None) => {
                c.error(
                    span.clone(),
                    format!("{key}.port"),
                    "missing: the service's port (port = 80), or range (ports = \"8000-8010\")",
                );
                (1, 1)
            }
        };
        for &ip in &ips {
            if let Some((.., other)) = taken.iter().find(|(tip, tp, (a, b), _)| {
                *tip == ip && *tp == proto && ports.0 <= *b && *a <= ports.1
            }) {
                c.error(
                    s.protocol.span(),
                    format!("{key}.port"),
                    format!(
                        "{ip} {} {}-{} overlaps service {other:?}: one service per address, protocol and port",
                        s.protocol.get_ref(),
                        ports.0,
                        ports.1
                    ),
                );
            }
            taken.push((ip, proto, ports, name.clone()));
        }

        // How it is run or found: exactly one way.
        let ways = [s.run.is_some(), s.watch.is_some(), s.ocf.is_some()];
        let how = if ways.iter().filter(|w| **w).count() != 1 {
            c.error(
                span.clone(),
                format!("{key}.run"),
                "give exactly one of run (the agent starts it), watch (someone else does: pid_file or systemd_unit) or ocf (an OCF resource agent)",
            );
            None
        } else if let Some(r) = &s.run {
            let k = format!("{key}.run");
            let r = r.get_ref();
            Some(Supervision::Run(Run {
                command: c.command(&r.command, &format!("{k}.command")),
                env: r.env.clone(),
                user: r.user.as_ref().map(|u| u.get_ref().clone()),
                dir: r.dir.as_ref().map(|d| c.absolute(d, &format!("{k}.dir"))),
                stop_timeout: c.duration(
                    &r.stop_timeout,
                    &format!("{k}.stop_timeout"),
                    DEFAULT_STOP_TIMEOUT,
                    (Duration::ZERO, Duration::from_secs(600)),
                ),
                stop_signal: match &r.stop_signal {
                    None => libc::SIGTERM,
                    Some(v) => {
                        let name = v.get_ref().trim_start_matches("SIG");
                        match STOP_SIGNALS.iter().find(|(n, _)| *n == name) {
                            Some((_, sig)) => *sig,
                            None => {
                                c.error(
                                    v.span(),
                                    format!("{k}.stop_signal"),
                                    format!(
                                        "{:?} is not one of {}",
                                        v.get_ref(),
                                        STOP_SIGNALS
                                            .iter()
                                            .map(|(n, _)| format!("SIG{n}"))
                                            .collect::<Vec<_>>()
                                            .join(", ")
                                    ),
                                );
                                libc::SIGTERM
                            }
                        }
                    }
                },
            }))
        } else if let Some(w) = &s.watch {
            let k = format!("{key}.watch");
            match (&w.get_ref().pid_file, &w.get_ref().systemd_unit) {
                (Some(p), None) => Some(Supervision::PidFile(
                    c.absolute(p, &format!("{k}.pid_file")),
                )),
                (None, Some(u)) if !u.get_ref().is_empty() && !u.get_ref().contains('/') => {
                    Some(Supervision::SystemdUnit(u.get_ref().clone()))
                }
                (None, Some(u)) => {
                    c.error(
                        u.span(),
                        format!("{k}.systemd_unit"),
                        format!(
                            "{:?} is not a unit name, such as \"nginx.service\"",
                            u.get_ref()
                        ),
                    );
                    None
                }
                _ => {
                    c.error(w.span(), k, "give exactly one of pid_file or systemd_unit");
                    None
                }
            }
        } else {
            let o = s.ocf.as_ref().expect("one way is given");
            let k = format!("{key}.ocf");
            let o = o.get_ref();
            let agent = o.agent.get_ref();
            let valid = |p: &str| {
                !p.is_empty()
                    && p.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            };
            match agent.split_once(':') {
                Some((provider, kind)) if valid(provider) && valid(kind) => {
                    Some(Supervision::Ocf(Ocf {
                        provider: provider.to_string(),
                        kind: kind.to_string(),
                        params: o.params.clone(),
                        timeout: c.duration(
                            &o.timeout,
                            &format!("{k}.timeout"),
                            DEFAULT_OCF_TIMEOUT,
                            (Duration::from_millis(10), Duration::from_secs(3600)),
                        ),
                        env: BTreeMap::new(),
                    }))
                }
                _ => {
                    c.error(
                        o.agent.span(),
                        format!("{k}.agent"),
                        format!("{agent:?} is not provider:type, such as \"heartbeat:nginx\""),
                    );
                    None
                }
            }
        };

        // Checks.
        let mut checks = Vec::new();
        for (j, ch) in s.check.iter().enumerate() {
            if let Some(check) = check(c, ch, &format!("{key}.check[{j}]"), ports.0, proto, &how) {
                checks.push(check);
            }
        }

        let rec = s.recovery.as_ref().map(|r| r.get_ref());
        let k = format!("{key}.recovery");
        let recovery = Recovery {
            restarts: match rec.and_then(|r| r.restarts.as_ref()) {
                None => DEFAULT_RESTARTS,
                Some(n) if (0..=1000).contains(n.get_ref()) => *n.get_ref() as u32,
                Some(n) => {
                    c.error(
                        n.span(),
                        format!("{k}.restarts"),
                        "must be between 0 and 1000",
                    );
                    DEFAULT_RESTARTS
                }
            },
            window: c.duration(
                &rec.and_then(|r| r.window.clone()),
                &format!("{k}.window"),
                DEFAULT_RESTART_WINDOW,
                (Duration::from_millis(1), Duration::from_secs(86_400)),
            ),
            backoff: c.duration(
                &rec.and_then(|r| r.backoff.clone()),
                &format!("{k}.backoff"),
                DEFAULT_BACKOFF,
                (Duration::ZERO, Duration::from_secs(3600)),
            ),
            max_backoff: c.duration(
                &rec.and_then(|r| r.max_backoff.clone()),
                &format!("{k}.max_backoff"),
                DEFAULT_MAX_BACKOFF,
                (Duration::ZERO, Duration::from_secs(3600)),
            ),
            escalate: rec
                .and_then(|r| r.escalate.as_ref())
                .is_some_and(|e| *e.get_ref()),
            hold: c.duration(
                &rec.and_then(|r| r.hold.clone()),
                &format!("{k}.hold"),
                DEFAULT_HOLD,
                (Duration::ZERO, Duration::from_secs(3600)),
            ),
        };
        if recovery.restarts > 0 && !matches!(how, Some(Supervision::Run(_) | Supervision::Ocf(_)))
        {
            if let Some(n) = rec.and_then(|r| r.restarts.as_ref()) {
                c.error(
                    n.span(),
                    format!("{k}.restarts"),
                    "a watched service is restarted by whoever runs it: set restarts = 0, or let the agent run it (run or ocf)",
                );
            }
        }
        if checks.is_empty() && s.check.is_empty() {
            // Without checks of its own a service is watched for what the kernel sees (its
            // process's exit), or by its OCF agent's monitor action.
            checks.push(match how {
                Some(Supervision::Ocf(_)) => HealthCheck {
                    kind: CheckKind::OcfMonitor,
                    interval: DEFAULT_OCF_MONITOR,
                    timeout: DEFAULT_OCF_MONITOR,
                    fall: 1,
                    rise: 1,
                },
                _ => HealthCheck {
                    kind: CheckKind::Process,
                    interval: DEFAULT_CHECK_INTERVAL,
                    timeout: DEFAULT_CHECK_INTERVAL,
                    fall: 1,
                    rise: 1,
                },
            });
        }
        let cold = match s.standby.as_ref().map(|v| (v, v.get_ref().as_str())) {
            None | Some((_, "hot")) => false,
            Some((_, "cold")) => true,
            Some((v, other)) => {
                c.error(
                    v.span(),
                    format!("{key}.standby"),
                    format!("{other:?} is not hot (an instance runs on every node that may serve it) or cold (only where its address is served)"),
                );
                false
            }
        };
        if let (true, Some(standby)) = (cold, &s.standby) {
            if !matches!(how, None | Some(Supervision::Run(_) | Supervision::Ocf(_))) {
                c.error(
                    standby.span(),
                    format!("{key}.standby"),
                    "a cold service is started and stopped by the agent: give run or ocf, not watch",
                );
            }
            if ips.len() > 1 {
                c.error(
                    standby.span(),
                    format!("{key}.address"),
                    "a cold service runs where its address is served: give it one address",
                );
            }
        }
        let filesystem = s.filesystem.as_ref().map(|f| {
            let k = format!("{key}.filesystem");
            if !cold {
                c.error(
                    f.span(),
                    k.clone(),
                    "a file system on shared storage is mounted where the service runs alone: set standby = \"cold\"",
                );
            }
            let f = f.get_ref();
            let kind = f.kind.as_ref().map_or("ext4".to_string(), |t| t.get_ref().clone());
            if let Some(t) = &f.kind {
                if kind.is_empty() || !kind.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '.') {
                    c.error(t.span(), format!("{k}.type"), format!("{kind:?} is not a file system type, such as \"ext4\""));
                }
            }
            Filesystem {
                device: c.absolute(&f.device, &format!("{k}.device")),
                mount: c.absolute(&f.mount, &format!("{k}.mount")),
                kind,
                options: f.options.as_ref().map_or(String::new(), |o| o.get_ref().clone()),
            }
        });
        if let Some(how) = how {
            out.push(Service {
                name,
                addresses: ips,
                proto,
                ports,
                // A watched service with no restarts of its own is the default for watch.
                recovery: if matches!(how, Supervision::Run(_) | Supervision::Ocf(_))
                    || rec.and_then(|r| r.restarts.as_ref()).is_some()
                {
                    recovery
                } else {
                    Recovery {
                        restarts: 0,
                        ..recovery
                    }
                },
                how,
                checks,
                critical: s.critical.as_ref().is_some_and(|v| *v.get_ref()),
                cold,
                filesystem,
            });
        }
    }
    out
}

/// One `[[service.check]]`.
fn check(
    c: &mut Check<'_>,
    raw: &Spanned<RawCheck>,
    key: &str,
    port: u16,
    proto: Proto,
    how: &Option<Supervision>,
) -> Option<HealthCheck> {
    let r = raw.get_ref();
    let kind = r.kind.get_ref().as_str();
    let Some((_, allowed)) = CHECK_FIELDS.iter().find(|(k, _)| *k == kind) else {
        c.error(
            r.kind.span(),
            format!("{key}.type"),
            format!(
                "{kind:?} is not a check type: {}",
                CHECK_FIELDS
                    .iter()
                    .map(|(k, _)| *k)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        return None;
    };
    // A field another type takes is a mistake worth naming.
    let given: [(&str, Option<Range<usize>>); 10] = [
        ("port", r.port.as_ref().map(|v| v.span())),
        ("send", r.send.as_ref().map(|v| v.span())),
        ("expect", r.expect.as_ref().map(|v| v.span())),
        ("path", r.path.as_ref().map(|v| v.span())),
        ("host", r.host.as_ref().map(|v| v.span())),
        ("status", r.status.as_ref().map(|v| v.span())),
        ("body", r.body.as_ref().map(|v| v.span())),
        ("query", r.query.as_ref().map(|v| v.span())),
        ("record", r.record.as_ref().map(|v| v.span())),
        ("command", r.command.as_ref().map(|v| v.span())),
    ];
    let mut wrong = false;
    for (field, span) in given {
        if let Some(span) = span {
            if !allowed.contains(&field) {
                let takes: Vec<&str> = CHECK_FIELDS
                    .iter()
                    .filter(|(_, f)| f.contains(&field))
                    .map(|(k, _)| *k)
                    .collect();
                c.error(
                    span,
                    format!("{key}.{field}"),
                    format!(
                        "a {kind} check takes no {field} (it is for type = {})",
                        takes.join(" or ")
                    ),
                );
                wrong = true;
            }
        }
    }
    let interval = c.duration(
        &r.interval,
        &format!("{key}.interval"),
        DEFAULT_CHECK_INTERVAL,
        (Duration::from_millis(1), Duration::from_secs(3600)),
    );
    let timeout = c.duration(
        &r.timeout,
        &format!("{key}.timeout"),
        interval,
        (Duration::from_micros(100), Duration::from_secs(3600)),
    );
    if timeout > interval {
        if let Some(t) = &r.timeout {
            c.error(
                t.span(),
                format!("{key}.timeout"),
                format!("is longer than the interval ({interval:?}): a check must end before the next one starts"),
            );
        }
    }
    let fall = c.count(&r.fall, &format!("{key}.fall"), DEFAULT_FALL, 1000);
    let rise = c.count(&r.rise, &format!("{key}.rise"), DEFAULT_RISE, 1000);
    let port = r
        .port
        .as_ref()
        .map_or(port, |p| c.port(p, &format!("{key}.port")));
    let kind = match kind {
        "process" => {
            if matches!(how, Some(Supervision::Ocf(_))) {
                c.error(
                    r.kind.span(),
                    format!("{key}.type"),
                    "an OCF agent's process is not known to the agent: use type = \"ocf\" (its monitor action)",
                );
            }
            CheckKind::Process
        }
        "tcp" => CheckKind::Tcp { port },
        "udp" => CheckKind::Udp {
            port,
            send: r
                .send
                .as_ref()
                .map_or_else(Vec::new, |s| s.get_ref().as_bytes().to_vec()),
            expect: r.expect.as_ref().map(|e| e.get_ref().as_bytes().to_vec()),
        },
        "http" => {
            let path = r
                .path
                .as_ref()
                .map_or("/".to_string(), |p| p.get_ref().clone());
            if !path.starts_with('/') || path.contains(char::is_whitespace) {
                if let Some(p) = &r.path {
                    c.error(
                        p.span(),
                        format!("{key}.path"),
                        format!("{path:?} is not a request path such as \"/health\""),
                    );
                }
            }
            let status = match &r.status {
                None => 200,
                Some(s) if (100..=599).contains(s.get_ref()) => *s.get_ref() as u16,
                Some(s) => {
                    c.error(
                        s.span(),
                        format!("{key}.status"),
                        "must be an HTTP status, 100-599",
                    );
                    200
                }
            };
            CheckKind::Http {
                port,
                path,
                host: r.host.as_ref().map(|h| h.get_ref().clone()),
                status,
                body: r.body.as_ref().map(|b| b.get_ref().clone()),
            }
        }
        "dns" => {
            let name = match &r.query {
                Some(q) if valid_dns_name(q.get_ref()) => q.get_ref().clone(),
                Some(q) => {
                    c.error(
                        q.span(),
                        format!("{key}.query"),
                        format!("{:?} is not a domain name", q.get_ref()),
                    );
                    String::new()
                }
                None => {
                    c.error(
                        raw.span(),
                        format!("{key}.query"),
                        "missing: the name to ask for, such as \"www.example.lan\"",
                    );
                    String::new()
                }
            };
            let record = match r
                .record
                .as_ref()
                .map(|v| (v.get_ref().to_ascii_uppercase(), v.span()))
            {
                None => DnsRecord::A,
                Some((t, _)) if t == "A" => DnsRecord::A,
                Some((t, _)) if t == "AAAA" => DnsRecord::Aaaa,
                Some((t, _)) if t == "TXT" => DnsRecord::Txt,
                Some((t, _)) if t == "ANY" => DnsRecord::Any,
                Some((t, span)) => {
                    c.error(
                        span,
                        format!("{key}.record"),
                        format!("{t:?} is not A, AAAA, TXT or ANY"),
                    );
                    DnsRecord::A
                }
            };
            CheckKind::Dns {
                port,
                proto,
                name,
                record,
            }
        }
        "exec" => match &r.command {
            Some(cmd) => CheckKind::Exec {
                command: c.command(cmd, &format!("{key}.command")),
            },
            None => {
                c.error(
                    raw.span(),
                    format!("{key}.command"),
                    "missing: the program to run and its arguments; exit status 0 means healthy",
                );
                return None;
            }
        },
        _ => {
            if !matches!(how, Some(Supervision::Ocf(_))) {
                c.error(
                    r.kind.span(),
                    format!("{key}.type"),
                    "an ocf check runs the service's OCF agent's monitor action: give the service an ocf agent",
                );
            }
            CheckKind::OcfMonitor
        }
    };
    (!wrong).then_some(HealthCheck {
        kind,
        interval,
        timeout,
        fall,
        rise,
    })
}

fn valid_dns_name(n: &str) -> bool {
    let n = n.strip_suffix('.').unwrap_or(n);
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        })
}
