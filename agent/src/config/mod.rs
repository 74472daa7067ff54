//! The agent's configuration: a TOML file, the same on every node but for `[node]`.
//!
//! Parsing is pure (`parse` takes the text); every error names its key and line, and all of
//! them are reported at once, so `takeover check-config` fixes a file in one pass. What the
//! file names on the machine (the fence program, the key file) is checked apart, in `files`.
mod duration;
pub mod files;
mod logical;
pub mod service;

use std::{
    collections::BTreeSet, fmt, net::IpAddr, net::SocketAddr, ops::Range, path::PathBuf,
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

pub use duration::parse_duration;
pub use logical::{check_logical, NotLogical};
pub use service::Service;

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub node: Node,
    pub peers: Vec<Peer>,
    pub addresses: Vec<LogicalAddress>,
    /// Services on the addresses, monitored as components of their own.
    pub services: Vec<Service>,
    pub heartbeat: Heartbeat,
    pub preempt: Preempt,
    /// `command` empty: none (allowed only with leases).
    pub fence: Fence,
    pub lease: Lease,
    /// The shared storage area, if the nodes have one.
    pub storage: Option<Storage>,
    pub announce: Announce,
    pub key_file: PathBuf,
}

/// The shared storage area (docs/design.md, "shared storage"): each node writes its disk
/// heartbeat there, so that a peer silent on every network path but still writing is known
/// to be alive behind a partition and keeps what it serves.
#[derive(Clone, Debug, PartialEq)]
pub struct Storage {
    /// The block device (or file) every node reaches, formatted by `takeover storage init`.
    pub device: PathBuf,
    /// How often this node writes its disk heartbeat and reads the peers'.
    pub interval: Duration,
    /// A peer's disk heartbeat that did not move for this long (by this node's clock, read
    /// after read) is stale: the peer is gone, or cut off its storage.
    pub timeout: Duration,
    /// What this node does when it cannot write its own disk heartbeat.
    pub on_lost: OnStorageLost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnStorageLost {
    /// Keep serving (the network still tells the peers it is alive); report it.
    Stay,
    /// Hand what it serves to a peer that has its storage.
    HandOver,
}

impl Config {
    /// Every node's name: this node's first, then its peers' in the file's order.
    pub fn node_names(&self) -> Vec<String> {
        std::iter::once(self.node.name.clone())
            .chain(self.peers.iter().map(|p| p.name.clone()))
            .collect()
    }
}

/// Gates as leases (docs/design.md, "gates are leases"): the data plane serves this node's
/// gates only while the agent renews them, so a dead, hung or frozen agent's host stops
/// serving by itself, and peers can take over with no fence command. On by default.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lease {
    pub enabled: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    /// The LAN interface that carries the logical addresses.
    pub lan: String,
    pub xdp_mode: XdpMode,
    /// Local address of each path, in the same order as every peer's `paths`.
    pub listen: Vec<SocketAddr>,
    /// Switch the heartbeat interfaces to threaded NAPI with real-time kernel threads (only
    /// when the agent runs at real-time priority itself): heartbeats are received on time
    /// under load, and on veth the receive no longer runs in the sender's context. On by
    /// default.
    pub threaded_napi: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    Auto,
    Driver,
    Generic,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    pub name: String,
    /// One address per path: the dedicated line first, the LAN second.
    pub paths: Vec<SocketAddr>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LogicalAddress {
    pub ip: IpAddr,
    pub prefix: u8,
    /// Preferred owner first, then the standbys in order of preference.
    pub preference: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Heartbeat {
    pub interval: Duration,
    /// A peer is dead when every path has been silent for `misses` intervals.
    pub misses: u32,
    /// While both paths carry heartbeats both ways they take turns: the LAN carries one in
    /// this many, the line the others (1: both carry all of them).
    pub lan_every: u32,
    /// How long a starting agent waits to hear its peers before it fences the silent ones.
    pub startup_grace: Duration,
    /// How long the peers wait for an agent that stopped to be restarted (SIGTERM).
    pub restart_grace: Duration,
    /// What the peers do when this node's kernel reports that its agent died unannounced.
    pub agent_exit: AgentExit,
}

/// What an unannounced exit of a peer's agent (crash, SIGKILL, OOM killer), reported by
/// that peer's kernel, means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentExit {
    /// The node is dead: fence it and take its addresses at once (fastest detection of a
    /// node whose processes were killed, e.g. by a panic or the OOM killer).
    Takeover,
    /// A supervisor will restart the agent: wait `restart_grace` first, as for a planned
    /// restart (a crash of the agent alone then moves nothing).
    Wait,
}

impl Heartbeat {
    pub fn dead_after(&self) -> Duration {
        self.interval * self.misses
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preempt {
    /// Give an address back to a node that prefers it when it recovers.
    pub enabled: bool,
    /// How long that node must be healthy first (hysteresis against flapping).
    pub delay: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Fence {
    /// argv; `{peer}` in an argument becomes the peer's name, else the name is appended.
    /// Exit status 0 means the peer is fenced.
    pub command: Vec<String>,
    pub timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Announce {
    pub count: u32,
    pub interval: Duration,
    /// After a planned handover (failback, switchover) the old server forwards what still
    /// reaches it for this long, then closes; the new server repeats its announcements
    /// within it, so that every client has moved before it ends.
    pub forward_for: Duration,
}

/// One problem in a configuration file, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub line: usize,
    pub column: usize,
    /// The key, as a dotted path (`peer[1].paths`), or empty for a syntax error.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(
                f,
                "line {}, column {}: {}",
                self.line, self.column, self.message
            )
        } else {
            write!(
                f,
                "line {}, column {}: {}: {}",
                self.line, self.column, self.key, self.message
            )
        }
    }
}

// ---- the file as written ----------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    node: Spanned<RawNode>,
    #[serde(default)]
    peer: Vec<Spanned<RawPeer>>,
    #[serde(default)]
    address: Vec<Spanned<RawAddress>>,
    #[serde(default)]
    service: Vec<Spanned<service::RawService>>,
    heartbeat: Option<Spanned<RawHeartbeat>>,
    preempt: Option<Spanned<RawPreempt>>,
    fence: Option<Spanned<RawFence>>,
    lease: Option<Spanned<RawLease>>,
    storage: Option<Spanned<RawStorage>>,
    announce: Option<Spanned<RawAnnounce>>,
    auth: Spanned<RawAuth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Spanned<String>,
    lan: Spanned<String>,
    xdp_mode: Option<Spanned<String>>,
    listen: Spanned<Vec<Spanned<String>>>,
    threaded_napi: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: Spanned<String>,
    paths: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAddress {
    ip: Spanned<String>,
    owner: Spanned<String>,
    #[serde(default)]
    standbys: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeartbeat {
    interval: Option<Spanned<String>>,
    misses: Option<Spanned<i64>>,
    lan_every: Option<Spanned<i64>>,
    startup_grace: Option<Spanned<String>>,
    restart_grace: Option<Spanned<String>>,
    agent_exit: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreempt {
    enabled: Option<Spanned<bool>>,
    delay: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLease {
    enabled: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    device: Spanned<String>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    on_lost: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFence {
    command: Spanned<Vec<String>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnnounce {
    count: Option<Spanned<i64>>,
    interval: Option<Spanned<String>>,
    forward_for: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    key_file: Spanned<String>,
}

/// Defaults, chosen for the targets of docs/design.md (detection in a few milliseconds).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(1);
/// A crash is detected by the line's carrier and the peer's kernel, an agent's death by its
/// kernel's exit notice: the dead time only decides for a peer silent with its kernel up
/// and its agent alive, i.e. stalled. Eight intervals leave room for the multi-millisecond
/// stalls of a loaded virtual machine (silences of 5 ms were seen under four CPU hogs).
pub const DEFAULT_MISSES: u32 = 8;
pub const DEFAULT_LAN_EVERY: u32 = 2;
pub const DEFAULT_STARTUP_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_RESTART_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_PREEMPT_DELAY: Duration = Duration::from_secs(2);
pub const DEFAULT_FENCE_TIMEOUT: Duration = Duration::from_secs(5);
/// A 4 KiB write and a few reads every 50 ms cost nothing on any storage that can hold a
/// database; a node cut off every network path is judged on its disk within half a second.
pub const DEFAULT_STORAGE_INTERVAL: Duration = Duration::from_millis(50);
pub const DEFAULT_STORAGE_TIMEOUT: Duration = Duration::from_millis(500);
pub const DEFAULT_ANNOUNCE_COUNT: u32 = 3;
/// Long enough for every client to hear the new server's repeated announcements (and for
/// requests in flight to drain), short enough that a stale ARP entry is not served for long.
pub const DEFAULT_FORWARD_FOR: Duration = Duration::from_secs(3);
/// Resources a cluster may have: all of them flipped within milliseconds, and their
/// heartbeat summary a few datagrams at worst.
pub const MAX_RESOURCES: usize = 10_000;
pub const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_millis(10);

/// Collects errors against the text they are about.
struct Check<'a> {
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Check<'_> {
    fn at(&self, span: Range<usize>) -> (usize, usize) {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    fn error(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let (line, column) = self.at(span);
        self.errors.push(ConfigError {
            line,
            column,
            key: key.into(),
            message: message.into(),
        });
    }

    fn duration(
        &mut self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
        range: (Duration, Duration),
    ) -> Duration {
        let Some(v) = v else { return default };
        match parse_duration(v.get_ref()) {
            Ok(d) if d >= range.0 && d <= range.1 => d,
            Ok(_) => {
                self.error(
                    v.span(),
                    key,
                    format!("must be between {:?} and {:?}", range.0, range.1),
                );
                default
            }
            Err(e) => {
                self.error(v.span(), key, e);
                default
            }
        }
    }

    fn socket(&mut self, v: &Spanned<String>, key: &str) -> Option<SocketAddr> {
        match v.get_ref().parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 => Some(a),
            _ => {
                self.error(v.span(), key, format!("{:?} is not an address with a port, such as 10.0.0.1:7400 or [fd00::1]:7400", v.get_ref()));
                None
            }
        }
    }

    /// A peer's path `j` is another host, reached from node.listen[j] in the same family.
    fn path_against_listen(
        &mut self,
        span: Range<usize>,
        key: &str,
        j: usize,
        path: SocketAddr,
        listen_at: &[Option<SocketAddr>],
    ) {
        let key = format!("{key}.paths");
        if let Some(i) = listen_at
            .iter()
            .position(|l| l.is_some_and(|l| l.ip() == path.ip()))
        {
            self.error(
                span,
                key,
                format!(
                    "{} is this node's own address (node.listen[{i}]): a peer is another host",
                    path.ip()
                ),
            );
            return;
        }
        if let Some(Some(local)) = listen_at.get(j) {
            if local.is_ipv4() != path.is_ipv4() {
                let family = |a: &SocketAddr| if a.is_ipv4() { "IPv4" } else { "IPv6" };
                self.error(
                    span,
                    key,
                    format!(
                        "{path} is {} but node.listen[{j}] ({local}) is {}: both ends of a path need the same family",
                        family(&path),
                        family(local)
                    ),
                );
            }
        }
    }

    /// A logical address moves between nodes; a path address must stay put (and a closed
    /// gate would drop the heartbeats sent to it).
    fn not_a_path_address(
        &mut self,
        span: Range<usize>,
        key: &str,
        ip: IpAddr,
        listen: &[SocketAddr],
        peers: &[Peer],
    ) {
        let owner = listen
            .iter()
            .enumerate()
            .find(|(_, l)| l.ip() == ip)
            .map(|(i, _)| format!("node.listen[{i}]"))
            .or_else(|| {
                peers.iter().enumerate().find_map(|(p, peer)| {
                    let j = peer.paths.iter().position(|a| a.ip() == ip)?;
                    Some(format!("peer[{p}].paths[{j}]"))
                })
            });
        if let Some(owner) = owner {
            self.error(
                span,
                key,
                format!("{ip} is also {owner}: a logical address moves between nodes, a path address must not; give the logical address an IP of its own"),
            );
        }
    }

    /// A node's or service's name (`what`): whether it is one, with the error if not.
    fn name(&mut self, v: &Spanned<String>, key: &str, what: &str) -> bool {
        let n = v.get_ref();
        let ok = !n.is_empty()
            && n.len() <= 32
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !ok {
            self.error(
                v.span(),
                key,
                format!("{n:?} is not a {what} name (1-32 of a-z, A-Z, 0-9, '-', '_', '.')"),
            );
        }
        ok
    }
}

/// Parses and validates a configuration; on failure, every problem found.
pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    let mut c = Check {
        text,
        errors: Vec::new(),
    };
    let raw: Raw = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let message = match e.message().trim() {
                "duplicate key" => format!(
                    "duplicate key {}: give each key once",
                    duplicate_key_name(text, span.clone())
                ),
                other => other.to_string(),
            };
            c.error(span, "", message);
            return Err(c.errors);
        }
    };

    // [node]
    let node = raw.node.get_ref();
    c.name(&node.name, "node.name", "node");
    let name = node.name.get_ref().clone();
    let lan = node.lan.get_ref().clone();
    if lan.is_empty() || lan.len() > 15 || lan.contains('/') || lan.contains(char::is_whitespace) {
        c.error(
            node.lan.span(),
            "node.lan",
            format!("{lan:?} is not an interface name"),
        );
    }
    let xdp_mode = match node
        .xdp_mode
        .as_ref()
        .map(|m| (m.get_ref().as_str(), m.span()))
    {
        None | Some(("auto", _)) => XdpMode::Auto,
        Some(("driver", _)) => XdpMode::Driver,
        Some(("generic", _)) => XdpMode::Generic,
        Some((other, span)) => {
            c.error(
                span,
                "node.xdp_mode",
                format!("{other:?} is not auto, driver or generic"),
            );
            XdpMode::Auto
        }
    };
    // By position, unparsable ones as None, for the checks against the peers' paths.
    let listen_at: Vec<Option<SocketAddr>> = node
        .listen
        .get_ref()
        .iter()
        .map(|l| c.socket(l, "node.listen"))
        .collect();
    let listen: Vec<SocketAddr> = listen_at.iter().flatten().copied().collect();
    let npaths = node.listen.get_ref().len();
    if !(1..=2).contains(&npaths) {
        c.error(
            node.listen.span(),
            "node.listen",
            "give one local address per path: the dedicated line first, the LAN second (1 or 2)",
        );
    }

    // [[peer]]
    let mut names = BTreeSet::from([name.clone()]);
    let mut peers = Vec::new();
    if raw.peer.is_empty() {
        c.error(
            raw.node.span(),
            "peer",
            "no [[peer]]: a takeover needs at least one other node",
        );
    }
    for (i, p) in raw.peer.iter().enumerate() {
        let p = p.get_ref();
        let key = format!("peer[{i}]");
        c.name(&p.name, &format!("{key}.name"), "node");
        let pname = p.name.get_ref().clone();
        if !names.insert(pname.clone()) {
            c.error(
                p.name.span(),
                format!("{key}.name"),
                format!("{pname:?} is already a node (names must be unique, this node's too)"),
            );
        }
        let mut paths = Vec::new();
        for (j, a) in p.paths.get_ref().iter().enumerate() {
            let Some(path) = c.socket(a, &format!("{key}.paths")) else {
                continue;
            };
            c.path_against_listen(a.span(), &key, j, path, &listen_at);
            paths.push(path);
        }
        if p.paths.get_ref().len() != npaths {
            c.error(p.paths.span(), format!("{key}.paths"), format!("has {} paths but node.listen has {npaths}: one address per path, in the same order", p.paths.get_ref().len()));
        }
        peers.push(Peer { name: pname, paths });
    }

    // [[address]]
    let mut addresses = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, a) in raw.address.iter().enumerate() {
        let a = a.get_ref();
        let key = format!("address[{i}]");
        let (ip, prefix) = match parse_cidr(a.ip.get_ref()) {
            Ok(v) => v,
            Err(e) => {
                c.error(a.ip.span(), format!("{key}.ip"), e);
                continue;
            }
        };
        c.not_a_path_address(a.ip.span(), &format!("{key}.ip"), ip, &listen, &peers);
        if !seen.insert(ip) {
            c.error(
                a.ip.span(),
                format!("{key}.ip"),
                format!("{ip} is listed twice"),
            );
        }
        let mut preference = vec![a.owner.get_ref().clone()];
        preference.extend(a.standbys.iter().map(|s| s.get_ref().clone()));
        for (j, n) in std::iter::once(&a.owner)
            .chain(a.standbys.iter())
            .enumerate()
        {
            let k = if j == 0 {
                format!("{key}.owner")
            } else {
                format!("{key}.standbys")
            };
            if !names.contains(n.get_ref()) {
                c.error(
                    n.span(),
                    k,
                    format!("{:?} is neither this node nor a [[peer]]", n.get_ref()),
                );
            } else if preference[..j].contains(n.get_ref()) {
                c.error(n.span(), k, format!("{:?} is listed twice", n.get_ref()));
            }
        }
        addresses.push(LogicalAddress {
            ip,
            prefix,
            preference,
        });
    }
    if raw.address.len() > MAX_RESOURCES {
        c.error(
            raw.address[MAX_RESOURCES].span(),
            "address",
            format!("this version handles at most {MAX_RESOURCES} logical addresses per cluster"),
        );
    }
    if raw.address.is_empty() {
        c.error(
            raw.node.span(),
            "address",
            "no [[address]]: nothing to take over",
        );
    }

    // [[service]]
    let services = service::services(&mut c, &raw.service, &addresses);

    // [heartbeat], [preempt], [fence], [announce], [auth]
    let hb = raw.heartbeat.as_ref().map(|h| h.get_ref());
    let interval = c.duration(
        &hb.and_then(|h| h.interval.clone()),
        "heartbeat.interval",
        DEFAULT_HEARTBEAT_INTERVAL,
        (Duration::from_micros(100), Duration::from_secs(10)),
    );
    let startup_grace = c.duration(
        &hb.and_then(|h| h.startup_grace.clone()),
        "heartbeat.startup_grace",
        DEFAULT_STARTUP_GRACE,
        (Duration::ZERO, Duration::from_secs(3600)),
    );
    let restart_grace = c.duration(
        &hb.and_then(|h| h.restart_grace.clone()),
        "heartbeat.restart_grace",
        DEFAULT_RESTART_GRACE,
        (Duration::ZERO, Duration::from_secs(3600)),
    );
    let agent_exit = match hb
        .and_then(|h| h.agent_exit.as_ref())
        .map(|m| (m.get_ref().as_str(), m.span()))
    {
        None | Some(("takeover", _)) => AgentExit::Takeover,
        Some(("wait", _)) => AgentExit::Wait,
        Some((other, span)) => {
            c.error(
                span,
                "heartbeat.agent_exit",
                format!("{other:?} is not takeover or wait"),
            );
            AgentExit::Takeover
        }
    };
    let misses = match hb.and_then(|h| h.misses.as_ref()) {
        None => DEFAULT_MISSES,
        Some(m) if (2..=1000).contains(m.get_ref()) => *m.get_ref() as u32,
        Some(m) => {
            c.error(m.span(), "heartbeat.misses", "must be between 2 and 1000");
            DEFAULT_MISSES
        }
    };
    // The LAN alone must still be heard well within the dead time if the line fails without
    // losing carrier: at least two intervals of the dead time are left for stalls.
    let lan_every = match hb.and_then(|h| h.lan_every.as_ref()) {
        None => DEFAULT_LAN_EVERY.min(misses.saturating_sub(2)).max(1),
        Some(k) if (1..=misses.saturating_sub(2).max(1) as i64).contains(k.get_ref()) => {
            *k.get_ref() as u32
        }
        Some(k) => {
            c.error(
                k.span(),
                "heartbeat.lan_every",
                format!(
                    "must be between 1 and misses - 2 ({}): the LAN alone must be heard within the dead time, with room to spare",
                    misses.saturating_sub(2).max(1)
                ),
            );
            1
        }
    };
    let pre = raw.preempt.as_ref().map(|p| p.get_ref());
    let preempt = Preempt {
        enabled: pre
            .and_then(|p| p.enabled.as_ref())
            .is_none_or(|e| *e.get_ref()),
        delay: c.duration(
            &pre.and_then(|p| p.delay.clone()),
            "preempt.delay",
            DEFAULT_PREEMPT_DELAY,
            (Duration::ZERO, Duration::from_secs(3600)),
        ),
    };
    let lease = Lease {
        enabled: raw
            .lease
            .as_ref()
            .and_then(|l| l.get_ref().enabled.as_ref())
            .is_none_or(|e| *e.get_ref()),
    };
    let storage = raw.storage.as_ref().map(|st| {
        let st = st.get_ref();
        let device = PathBuf::from(st.device.get_ref());
        if !device.is_absolute() {
            c.error(
                st.device.span(),
                "storage.device",
                "must be an absolute path (a block device every node reaches, formatted by `takeover storage init`)",
            );
        }
        let interval = c.duration(
            &st.interval,
            "storage.interval",
            DEFAULT_STORAGE_INTERVAL,
            (Duration::from_millis(1), Duration::from_secs(10)),
        );
        let timeout = c.duration(
            &st.timeout,
            "storage.timeout",
            DEFAULT_STORAGE_TIMEOUT.max(interval * 4),
            (Duration::from_millis(4), Duration::from_secs(600)),
        );
        if let Some(t) = &st.timeout {
            if timeout < interval * 3 {
                c.error(
                    t.span(),
                    "storage.timeout",
                    format!("must be at least 3 intervals ({:?}): one late write must not make a live node stale", interval * 3),
                );
            }
        }
        let on_lost = match st.on_lost.as_ref().map(|o| (o.get_ref().as_str(), o.span())) {
            None | Some(("stay", _)) => OnStorageLost::Stay,
            Some(("hand_over", _)) => OnStorageLost::HandOver,
            Some((other, span)) => {
                c.error(span, "storage.on_lost", format!("{other:?} is not stay or hand_over"));
                OnStorageLost::Stay
            }
        };
        Storage {
            device,
            interval,
            timeout,
            on_lost,
        }
    });
    let fence = match &raw.fence {
        // The leases prove a dead, hung or frozen peer gone; a fence command may still prove
        // it sooner, or where its lease cannot (a peer of a release without leases).
        None if lease.enabled => Fence {
            command: vec![],
            timeout: DEFAULT_FENCE_TIMEOUT,
        },
        None => {
            c.error(0..0, "fence.command", "missing: with lease.enabled = false, nothing else proves a dead peer gone, and a takeover can leave two hosts serving one address; give a command that powers the peer off or cuts it off the LAN (the peer's name replaces {peer} in it, or is appended), or turn the leases back on");
            Fence {
                command: vec![],
                timeout: DEFAULT_FENCE_TIMEOUT,
            }
        }
        Some(f) => {
            let f = f.get_ref();
            if f.command.get_ref().is_empty() || f.command.get_ref()[0].is_empty() {
                c.error(
                    f.command.span(),
                    "fence.command",
                    "must name a program, such as [\"/usr/local/sbin/fence-node\"]",
                );
            }
            Fence {
                command: f.command.get_ref().clone(),
                timeout: c.duration(
                    &f.timeout,
                    "fence.timeout",
                    DEFAULT_FENCE_TIMEOUT,
                    (Duration::from_millis(1), Duration::from_secs(600)),
                ),
            }
        }
    };
    let ann = raw.announce.as_ref().map(|a| a.get_ref());
    let announce = Announce {
        count: match ann.and_then(|a| a.count.as_ref()) {
            None => DEFAULT_ANNOUNCE_COUNT,
            Some(n) if (1..=100).contains(n.get_ref()) => *n.get_ref() as u32,
            Some(n) => {
                c.error(n.span(), "announce.count", "must be between 1 and 100");
                DEFAULT_ANNOUNCE_COUNT
            }
        },
        interval: c.duration(
            &ann.and_then(|a| a.interval.clone()),
            "announce.interval",
            DEFAULT_ANNOUNCE_INTERVAL,
            (Duration::ZERO, Duration::from_secs(10)),
        ),
        forward_for: c.duration(
            &ann.and_then(|a| a.forward_for.clone()),
            "announce.forward_for",
            DEFAULT_FORWARD_FOR,
            (Duration::from_millis(100), Duration::from_secs(600)),
        ),
    };
    let key_file = PathBuf::from(raw.auth.get_ref().key_file.get_ref());
    if key_file.as_os_str().is_empty() {
        c.error(
            raw.auth.get_ref().key_file.span(),
            "auth.key_file",
            "must be a path",
        );
    }

    if !c.errors.is_empty() {
        c.errors.sort_by_key(|e| (e.line, e.column));
        return Err(c.errors);
    }
    Ok(Config {
        node: Node {
            name,
            lan,
            xdp_mode,
            listen,
            threaded_napi: node.threaded_napi.as_ref().is_none_or(|t| *t.get_ref()),
        },
        peers,
        addresses,
        services,
        heartbeat: Heartbeat {
            interval,
            misses,
            lan_every,
            startup_grace,
            restart_grace,
            agent_exit,
        },
        preempt,
        lease,
        storage,
        fence,
        announce,
        key_file,
    })
}

/// The dotted name of the duplicate key at `span` (toml says only "duplicate key"):
/// `node.name`, `peer[1].paths`, or a table header's own name.
fn duplicate_key_name(text: &str, span: Range<usize>) -> String {
    let (start, end) = (span.start.min(text.len()), span.end.min(text.len()));
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let before = text[line_start..start].trim_start();
    let key = text[start..end].trim_matches('"');
    if before.starts_with('[') {
        // A table defined twice: the header names it.
        return text[line_start..end]
            .trim_start_matches(['[', ' '])
            .replace('"', "");
    }
    // Within an inline table only the key itself is known for sure.
    let dotted = if before.contains(['=', '{']) {
        key.to_string()
    } else {
        format!("{}{key}", before.replace(['"', ' '], ""))
    };
    match table_at(&text[..line_start]) {
        Some(table) => format!("{table}.{dotted}"),
        None => dotted,
    }
}

/// The table the end of `text` is in: `node`, `peer[1]` (counting `[[peer]]` headers).
fn table_at(text: &str) -> Option<String> {
    let header = |l: &str| {
        let l = l.trim_start();
        let array = l.starts_with("[[");
        let name = l
            .trim_start_matches('[')
            .split(']')
            .next()?
            .trim()
            .to_string();
        l.starts_with('[').then_some((array, name))
    };
    let (array, name) = text.lines().rev().find_map(header)?;
    if !array {
        return Some(name);
    }
    let index = text
        .lines()
        .filter_map(header)
        .filter(|h| *h == (true, name.clone()))
        .count()
        - 1;
    Some(format!("{name}[{index}]"))
}

/// `10.0.0.100`, `10.0.0.100/24`, `fd00::100/64` (default prefix: /32 or /128).
fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 or IPv6 address (with an optional /prefix)"))?;
    if let Err(why) = check_logical(ip) {
        return Err(format!("{ip} cannot be a logical address: it is {why}"));
    }
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| (1..=max).contains(p))
            .ok_or_else(|| format!("prefix /{p} must be 1-{max}"))?,
    };
    if let IpAddr::V4(v4) = ip {
        if logical::subnet_broadcast(v4, prefix) == Some(v4) {
            return Err(format!(
                "{ip} cannot be a logical address: it is the broadcast address of its /{prefix}"
            ));
        }
    }
    Ok((ip, prefix))
}

#[cfg(test)]
mod tests;
