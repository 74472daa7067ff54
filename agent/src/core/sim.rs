//! A simulated cluster for the core's tests: several nodes, a network with two paths per pair
//! (dedicated line and LAN), virtual time, and faults (crashes, agent restarts, path cuts,
//! LAN failures, losses, duplicates, reordering, forged and replayed datagrams). It checks
//! docs/design.md's invariants after every step.
use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use super::{
    component::Policy,
    event::Event,
    node::{
        Action, Arrival, ComponentSpec, Core, CoreConfig, DiskRead, FenceState, Gate, NodeId,
        ReadTimes, ResourceSpec, ServiceSpec,
    },
    wire,
};

pub const DEDICATED: usize = 0;
pub const LAN: usize = 1;

/// Small, seedable, good enough for schedules (xorshift64*).
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
}

impl SimNode {
    pub fn is_open(&self, a: usize) -> bool {
        self.gates[a] == Gate::Open
    }

    /// Do its gates serve at `now`, as far as its lease goes (`leased`: the configuration's)?
    fn lease_runs(&self, leased: bool, now: Duration) -> bool {
        !leased || now < self.lease
    }

    /// The node this one's gate for `a` receives from, if it does.
    pub fn receiving(&self, a: usize) -> Option<NodeId> {
        match self.gates[a] {
            Gate::Receive(from) => Some(from),
            _ => None,
        }
    }
}

pub struct SimNode {
    /// The agent; `None` while it is not running.
    pub core: Option<Core>,
    /// The machine is on (a crash or a fence turns it off).
    pub powered: bool,
    /// The data plane's gates, which outlive the agent (pinned).
    pub gates: Vec<Gate>,
    /// Epochs of open gates, as the agent would persist them beside the pins.
    pub epochs: Vec<u64>,
    pub incarnation: u64,
    pub lan_up: bool,
    /// Nothing this node sends leaves it (silent death: carrier up, nothing out).
    pub mute: bool,
    /// The agent died unannounced: the data plane answers heartbeats with its exit notice.
    pub exited: bool,
    /// Periodic heartbeats waiting on the agent's listen sockets, with when they arrived:
    /// as the shell does, the agent reads them at its next wake-up, by arrival time.
    pub waiting: Vec<(Duration, usize, Vec<u8>)>,
    /// Per component: its instance on this machine.
    pub instances: Vec<Instance>,
    /// The data plane's lease (with `CoreConfig::lease`): leased gates serve until then.
    pub lease: Duration,
    /// The agent while it is frozen (SIGSTOP): it runs nothing, its gates stay, its kernel
    /// answers probes (and no exit notice: the process lives).
    pub frozen: Option<Core>,
    /// Per stateful resource: its file system is mounted on this machine (acquired, and not
    /// yet released; outlives the agent, not the machine).
    pub mounted: Vec<bool>,
}

/// A service's instance on a simulated machine (outlives its agent, not the machine).
#[derive(Clone, Debug, Default)]
pub struct Instance {
    pub running: bool,
    /// Stopped (SIGSTOP): running, but it answers no check.
    pub hung: bool,
    /// Every start of it fails (a broken installation).
    pub broken: bool,
    /// Since when it cannot serve (for the forwarding invariant).
    pub down_since: Option<Duration>,
}

impl Instance {
    pub fn serves(&self) -> bool {
        self.running && !self.hung
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Delivery {
    at: Duration,
    order: u64,
    from: NodeId,
    to: NodeId,
    path: usize,
    bytes: Vec<u8>,
    /// To the agent's wake socket (read at once) rather than its listen socket (read at its
    /// next wake-up).
    urgent: bool,
}

pub struct Sim {
    pub now: Duration,
    pub cfg: CoreConfig,
    pub nodes: Vec<SimNode>,
    in_flight: BinaryHeap<Reverse<Delivery>>,
    /// `cut[from][to][path]`: that direction of that path carries nothing.
    pub cut: Vec<Vec<Vec<bool>>>,
    pub loss: f64,
    pub duplicate: f64,
    pub jitter: Duration,
    pub base_delay: Duration,
    /// Whether fence commands succeed (they power the peer off).
    pub fence_works: bool,
    pub fence_delay: Duration,
    fences: Vec<(Duration, NodeId, NodeId)>,
    order: u64,
    pub rng: Rng,
    /// Datagrams seen on the wire, for replay attacks.
    pub captured: Vec<(NodeId, usize, Vec<u8>)>,
    /// A gate forwarded an address to a powered node whose gate neither served it nor
    /// received it from the forwarder: what the clients sent there was dropped.
    pub black_hole: bool,
    /// Datagrams sent, by (from, to, path).
    pub sent: std::collections::BTreeMap<(NodeId, NodeId, usize), u64>,
    pub fences_requested: u64,
    pub gate_changes: u64,
    pub trace: Vec<String>,
    /// Announcements made: when, by whom, for which resource.
    pub announced: Vec<(Duration, NodeId, usize)>,
    /// Every event the cores reported, with when and by whom.
    pub events: Vec<(Duration, NodeId, Event)>,
    /// Per node, a configuration of its own (used at its agent's next start).
    pub node_configs: Vec<Option<CoreConfig>>,
    /// Whether durable writes succeed.
    pub persist_works: bool,
    /// Mounting and starting a stateful resource works (else every `Acquire` fails).
    pub acquire_works: bool,
    /// Per node and resource: since when its gate forwards (checked against the window).
    forward_since: Vec<Vec<Option<Duration>>>,
    /// How often the services' instances are checked, and the next check.
    pub check_every: Duration,
    next_check: Duration,
    /// Restarts under way: when each ends, on which node, of which component.
    restarts: Vec<(Duration, NodeId, usize)>,
    pub restart_takes: Duration,
    /// The shared storage area, if the nodes have one (`cfg.disk_timeout`).
    pub disk: Option<SimDisk>,
    /// Per node: how fast its monotonic clock runs against true time, in parts per million
    /// (the core's `CLOCK_RATE_PPM` bounds the difference between two nodes).
    pub clock_ppm: Vec<i64>,
}

/// The shared storage area: each node's disk heartbeat generation, written and read every
/// interval by each running agent that reaches it.
pub struct SimDisk {
    pub interval: Duration,
    pub next: Duration,
    pub gens: Vec<u64>,
    /// Per node: its last write was its agent's before a planned restart.
    pub restarting: Vec<bool>,
    /// Per node: cut off the storage (its writes fail, its reads find nothing).
    pub cut: Vec<bool>,
    /// Per node, as its last write said: its LAN, and per sender the order it obeyed.
    pub lan_up: Vec<bool>,
    pub obeyed: Vec<Vec<u64>>,
    /// Per node, its fence orders per target: as its agent wants them, and as its message
    /// slot holds them (written at its next round that reaches the storage).
    pub orders: Vec<Vec<Option<u64>>>,
    pub written_orders: Vec<Vec<Option<u64>>>,
}

/// A policy for the simulation's services: one check, fall 2, rise 2, a short hold.
pub fn service_policy(restarts: u32, escalate: bool, critical: bool) -> Policy {
    Policy {
        checks: vec![(2, 2)],
        restarts,
        window: Duration::from_secs(10),
        backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(40),
        escalate,
        critical,
        hold: Duration::from_millis(30),
    }
}

/// `config`, with `per_address` services on every address (each a component of its own,
/// served by every node), with `policy`.
pub fn config_with_services(
    nodes: usize,
    interval: Duration,
    preempt: Option<Duration>,
    per_address: usize,
    policy: Policy,
) -> CoreConfig {
    let mut cfg = config(nodes, 0, interval, preempt);
    let addresses = cfg.resources.len();
    for a in 0..addresses {
        for k in 0..per_address {
            let component = cfg.components.len();
            cfg.components.push(ComponentSpec {
                name: format!("s{a}.{k}"),
                policy: policy.clone(),
                here: true,
                cold: false,
            });
            let port = 80 + k as u16;
            cfg.resources.push(ResourceSpec {
                service: Some(ServiceSpec {
                    proto: 6,
                    first_port: port,
                    last_port: port,
                    address: a,
                    component,
                }),
                ..cfg.resources[a].clone()
            });
        }
    }
    cfg.digest = cfg.digest_of();
    cfg
}

/// `config_with_services` with one cold service per address (run only where its address is
/// served, as on a shared file system): every address stateful.
pub fn config_stateful(nodes: usize, preempt: Option<Duration>, fence: bool) -> CoreConfig {
    let mut cfg = config_with_services(
        nodes,
        Duration::from_millis(1),
        preempt,
        1,
        service_policy(2, true, false),
    );
    for c in &mut cfg.components {
        c.cold = true;
    }
    for r in cfg.resources.iter_mut().filter(|r| r.service.is_none()) {
        r.stateful = true;
    }
    cfg.lease = true;
    cfg.fence = fence;
    cfg.digest = cfg.digest_of();
    cfg
}

pub fn config(
    nodes: usize,
    me: NodeId,
    interval: Duration,
    preempt: Option<Duration>,
) -> CoreConfig {
    // Address i is owned by node i % nodes; the others stand by in order.
    let resources = (0..nodes)
        .map(|i| ResourceSpec {
            ip: IpAddr::V4(Ipv4Addr::new(10, 77, 0, 100 + i as u8)),
            prefix: 32,
            service: None,
            stateful: false,
            preference: (0..nodes).map(|k| (i + k) % nodes).collect(),
        })
        .collect();
    let mut cfg = CoreConfig {
        nodes: (0..nodes).map(|i| format!("n{i}")).collect(),
        me,
        paths: 2,
        resources,
        interval,
        misses: 5,
        lan_every: 2,
        preempt,
        fence_retry: Duration::from_millis(50),
        fence: true,
        lease: false,
        disk_timeout: None,
        storage_hand_over: false,
        startup_grace: interval * 5,
        restart_grace: Duration::from_millis(500),
        exit_takes_over: true,
        probe_interval: interval / 2,
        probe_confirm: interval,
        forward_for: Duration::from_millis(300),
        digest: [0; 8],
        emulate_v2: false,
        emulate_v3: false,
        components: Vec::new(),
        key: b"simulation key, 32 bytes long!!".to_vec(),
    };
    cfg.digest = cfg.digest_of();
    cfg
}

impl Sim {
    pub fn new(nodes: usize, interval: Duration, preempt: Option<Duration>, seed: u64) -> Self {
        Self::with_config(config(nodes, 0, interval, preempt), seed)
    }

    /// A cluster of `cfg.nodes.len()` nodes, each with `cfg` (but its own `me`).
    pub fn with_config(cfg: CoreConfig, seed: u64) -> Self {
        let nodes = cfg.nodes.len();
        let addrs = cfg.resources.len();
        let mut sim = Sim {
            now: Duration::from_secs(1),
            nodes: Vec::new(),
            in_flight: BinaryHeap::new(),
            cut: vec![vec![vec![false; 2]; nodes]; nodes],
            loss: 0.0,
            duplicate: 0.0,
            jitter: Duration::ZERO,
            base_delay: Duration::from_micros(50),
            fence_works: true,
            fence_delay: Duration::from_millis(2),
            fences: Vec::new(),
            order: 0,
            rng: Rng::new(seed),
            captured: Vec::new(),
            sent: Default::default(),
            black_hole: false,
            fences_requested: 0,
            gate_changes: 0,
            trace: Vec::new(),
            events: Vec::new(),
            announced: Vec::new(),
            node_configs: vec![None; nodes],
            persist_works: true,
            acquire_works: true,
            forward_since: vec![vec![None; addrs]; nodes],
            check_every: Duration::from_millis(2),
            next_check: Duration::from_secs(1),
            restarts: Vec::new(),
            restart_takes: Duration::from_millis(3),
            clock_ppm: vec![0; nodes],
            disk: cfg.disk_timeout.map(|t| SimDisk {
                interval: t / 10,
                next: Duration::from_secs(1),
                gens: vec![0; nodes],
                restarting: vec![false; nodes],
                cut: vec![false; nodes],
                lan_up: vec![true; nodes],
                obeyed: vec![vec![0; nodes]; nodes],
                orders: vec![vec![None; nodes]; nodes],
                written_orders: vec![vec![None; nodes]; nodes],
            }),
            cfg,
        };
        for _ in 0..nodes {
            sim.nodes.push(SimNode {
                // Hot ones start with the machine; cold ones when acquired.
                instances: sim
                    .cfg
                    .components
                    .iter()
                    .map(|c| Instance {
                        running: !c.cold,
                        ..Instance::default()
                    })
                    .collect(),
                core: None,
                powered: true,
                gates: vec![Gate::Closed; addrs],
                waiting: Vec::new(),
                epochs: vec![0; addrs],
                incarnation: 0,
                lan_up: true,
                mute: false,
                exited: false,
                lease: Duration::ZERO,
                frozen: None,
                mounted: vec![false; addrs],
            });
        }
        // Every machine exists before any agent starts (a starting agent may send at once).
        for n in 0..nodes {
            sim.start_agent(n);
        }
        sim
    }

    /// True time `t` on node `n`'s clock (the clocks agree at the simulation's start).
    pub fn local(&self, n: NodeId, t: Duration) -> Duration {
        let base = Duration::from_secs(1);
        let ppm = self.clock_ppm[n];
        if ppm == 0 || t <= base {
            return t;
        }
        let d = (t - base).as_nanos() as i128;
        base + Duration::from_nanos((d + d * ppm as i128 / 1_000_000) as u64)
    }

    /// Node `n`'s clock reading `l` in true time, rounded up (the first instant at which
    /// its clock has reached `l`).
    pub fn global(&self, n: NodeId, l: Duration) -> Duration {
        let base = Duration::from_secs(1);
        let ppm = self.clock_ppm[n];
        if ppm == 0 || l <= base {
            return l;
        }
        let d = (l - base).as_nanos() as i128;
        let scale = 1_000_000 + ppm as i128;
        base + Duration::from_nanos(((d * 1_000_000 + scale - 1) / scale) as u64)
    }

    /// Now on node `n`'s clock.
    fn at(&self, n: NodeId) -> Duration {
        self.local(n, self.now)
    }

    /// Node `n`'s configuration: its own if a test gave it one (a mismatch, an old version),
    /// else the cluster's.
    fn node_cfg(&self, n: NodeId) -> CoreConfig {
        let mut cfg = self.node_configs[n]
            .clone()
            .unwrap_or_else(|| self.cfg.clone());
        cfg.me = n;
        cfg
    }

    /// Starts (or restarts) node `n`'s agent; gates it finds open stay as they are.
    pub fn start_agent(&mut self, n: NodeId) {
        let cfg = self.node_cfg(n);
        let at = self.at(n);
        let now = self.now;
        // A new agent's message slot holds no order (it withdraws what the last one left).
        if let Some(d) = self.disk.as_mut() {
            d.orders[n] = vec![None; d.orders.len()];
        }
        let node = &mut self.nodes[n];
        // As the real one's: the wall clock at its start (nanoseconds), always growing.
        node.incarnation = (node.incarnation + 1).max(now.as_nanos() as u64);
        // As the shell: gates found open serve on under the lease the last agent left, if it
        // still runs; a lapsed one's (an agent killed or stalled) are not revived.
        let open: Vec<(usize, u64)> = (0..node.gates.len())
            .filter(|&a| node.is_open(a) && node.lease_runs(cfg.lease, now))
            .map(|a| (a, node.epochs[a]))
            .collect();
        let mut core = Core::new(cfg, node.incarnation, at, &open);
        node.exited = false;
        core.set_exit_commit(wire::commit(&Self::token(n, node.incarnation)));
        if !node.lan_up {
            core.handle_lan(at, false);
        }
        self.nodes[n].core = Some(core);
        self.trace.push(format!("{:?} n{n} agent starts", self.now));
        self.drain(n);
    }

    /// The exit token of an incarnation (deterministic: the simulation needs no secrecy).
    pub fn token(n: NodeId, incarnation: u64) -> [u8; wire::TOKEN_LEN] {
        let mut t = [n as u8; wire::TOKEN_LEN];
        t[8..].copy_from_slice(&incarnation.to_be_bytes());
        t
    }

    /// An operator on node `on` moves address `a` to node `to`.
    pub fn switchover(&mut self, on: NodeId, a: usize, to: NodeId) {
        let now = self.now;
        let at = self.at(on);
        self.feed_waiting(on);
        if let Some(c) = self.nodes[on].core.as_mut() {
            c.handle_switchover(at, a, to);
        }
        self.trace
            .push(format!("{now:?} switchover a{a} to n{to} (on n{on})"));
        self.drain(on);
    }

    /// The agent stops for a restart (SIGTERM): it tells the peers, then exits.
    pub fn stop_agent(&mut self, n: NodeId) {
        let now = self.now;
        if self.nodes[n].core.is_none() {
            // No agent runs (killed, frozen: SIGTERM waits for SIGCONT): nothing to stop.
            return;
        }
        self.feed_waiting(n);
        // As the shell: the peers told and the core's last gate changes applied first.
        let at = self.at(n);
        if let Some(c) = self.nodes[n].core.as_mut() {
            c.shutdown(at);
        }
        self.drain(n);
        // Then, with storage, a last disk heartbeat says it restarts (if it can be written:
        // else the gates are not extended, a peer judging by the disk could not know).
        let told_disk = match self.disk.as_mut() {
            Some(d) if d.cut[n] => false,
            Some(d) => {
                d.gens[n] += 1;
                d.restarting[n] = true;
                true
            }
            None => true,
        };
        // The gates serve on over the restart, only if the lease still runs.
        if self.cfg.lease && told_disk && self.nodes[n].lease > now {
            let over = self.global(
                n,
                self.at(n)
                    + self
                        .cfg
                        .restart_grace
                        .max(self.cfg.interval * self.cfg.misses),
            );
            self.nodes[n].lease = self.nodes[n].lease.max(over);
        }
        self.nodes[n].core = None;
        self.nodes[n].waiting.clear();
        self.trace
            .push(format!("{now:?} n{n} agent stops for a restart"));
    }

    /// The agent process dies (SIGKILL); the machine and its gates stay.
    pub fn kill_agent(&mut self, n: NodeId) {
        self.nodes[n].core = None;
        // A stopped process dies of SIGKILL too.
        self.nodes[n].frozen = None;
        self.nodes[n].waiting.clear();
        self.nodes[n].exited = true;
        // Its kernel ends the lease at the exit.
        self.nodes[n].lease = Duration::ZERO;
        self.trace.push(format!("{:?} n{n} agent killed", self.now));
    }

    /// The agent is frozen (SIGSTOP) or thawed (SIGCONT); a thawed agent reads what waited.
    pub fn freeze_agent(&mut self, n: NodeId, frozen: bool) {
        let node = &mut self.nodes[n];
        if frozen {
            node.frozen = node.core.take();
            node.waiting.clear();
            self.trace.push(format!("{:?} n{n} agent frozen", self.now));
        } else if let Some(c) = node.frozen.take() {
            node.core = Some(c);
            self.trace.push(format!("{:?} n{n} agent thawed", self.now));
            // The link events it slept through reach it now (netlink queues them).
            let (at, lan_up) = (self.at(n), self.nodes[n].lan_up);
            if let Some(c) = self.nodes[n].core.as_mut() {
                c.handle_lan(at, lan_up);
                c.handle_timeout(at);
            }
            self.drain(n);
        }
    }

    /// The machine goes down: agent gone, gates gone.
    pub fn crash(&mut self, n: NodeId) {
        let node = &mut self.nodes[n];
        node.powered = false;
        node.core = None;
        node.frozen = None;
        node.waiting.clear();
        node.exited = false;
        node.gates.iter_mut().for_each(|g| *g = Gate::Closed);
        node.mounted.iter_mut().for_each(|m| *m = false);
        let now = self.now;
        for i in &mut node.instances {
            i.running = false;
            i.down_since = i.down_since.or(Some(now));
        }
        self.trace.push(format!("{:?} n{n} crashes", self.now));
    }

    /// The machine comes back (a reboot clears the pinned gates).
    pub fn boot(&mut self, n: NodeId) {
        if self.nodes[n].powered {
            return;
        }
        self.nodes[n].powered = true;
        self.nodes[n].mute = false;
        for (c, i) in self.nodes[n].instances.iter_mut().enumerate() {
            // Started with the machine (unless broken), if hot.
            i.running = !i.broken && !self.cfg.components[c].cold;
            i.hung = false;
            i.down_since = if i.running { None } else { i.down_since };
        }
        self.trace.push(format!("{:?} n{n} boots", self.now));
        self.start_agent(n);
    }

    /// Component `c`'s instance on node `n` is killed: its agent hears at once.
    pub fn kill_service(&mut self, n: NodeId, c: usize) {
        let now = self.now;
        let i = &mut self.nodes[n].instances[c];
        i.running = false;
        i.down_since = i.down_since.or(Some(now));
        self.trace.push(format!("{now:?} n{n} service s{c} killed"));
        self.feed_waiting(n);
        let at = self.at(n);
        if let Some(core) = self.nodes[n].core.as_mut() {
            core.handle_exited(at, c);
        }
        self.drain(n);
    }

    /// Component `c`'s instance on node `n` stops answering (SIGSTOP) or answers again.
    pub fn hang_service(&mut self, n: NodeId, c: usize, hung: bool) {
        let now = self.now;
        let i = &mut self.nodes[n].instances[c];
        i.hung = hung;
        i.down_since = if i.serves() {
            None
        } else {
            i.down_since.or(Some(now))
        };
        self.trace.push(format!(
            "{now:?} n{n} service s{c} {}",
            if hung { "hangs" } else { "answers again" }
        ));
    }

    /// Someone (an operator, another supervisor) starts component `c` on node `n` again.
    pub fn revive_service(&mut self, n: NodeId, c: usize) {
        let i = &mut self.nodes[n].instances[c];
        i.running = true;
        i.hung = false;
        i.down_since = None;
        self.trace
            .push(format!("{:?} n{n} service s{c} started by hand", self.now));
    }

    /// Every start of component `c` on node `n` fails (or works again).
    pub fn break_service(&mut self, n: NodeId, c: usize, broken: bool) {
        self.nodes[n].instances[c].broken = broken;
    }

    /// Checks every running agent's instances (one check each), as the shell's timers do.
    fn run_checks(&mut self) {
        let now = self.now;
        for n in 0..self.nodes.len() {
            if !self.nodes[n].powered || self.nodes[n].core.is_none() {
                continue;
            }
            self.feed_waiting(n);
            let at = self.local(n, now);
            for c in 0..self.nodes[n].instances.len() {
                let pass = self.nodes[n].instances[c].serves();
                let core = self.nodes[n].core.as_mut().unwrap();
                if core.config().components[c].here {
                    core.handle_check(at, c, 0, pass);
                }
            }
            self.drain(n);
        }
    }

    /// Restarts whose time has come: the instance runs again, unless it is broken.
    fn finish_restarts(&mut self) {
        let now = self.now;
        let due: Vec<(Duration, NodeId, usize)> = self
            .restarts
            .iter()
            .copied()
            .filter(|r| r.0 <= now)
            .collect();
        self.restarts.retain(|r| r.0 > now);
        for (_, n, c) in due {
            if !self.nodes[n].powered {
                continue;
            }
            let i = &mut self.nodes[n].instances[c];
            let ok = !i.broken;
            i.running = ok;
            i.hung = false;
            i.down_since = if ok { None } else { i.down_since.or(Some(now)) };
            self.trace.push(format!(
                "{now:?} n{n} service s{c} {}",
                if ok { "restarted" } else { "failed to start" }
            ));
            self.feed_waiting(n);
            let at = self.at(n);
            if let Some(core) = self.nodes[n].core.as_mut() {
                core.handle_restarted(at, c, ok);
            }
            self.drain(n);
        }
    }

    pub fn set_lan(&mut self, n: NodeId, up: bool) {
        self.nodes[n].lan_up = up;
        self.trace.push(format!(
            "{:?} n{n} LAN {}",
            self.now,
            if up { "up" } else { "down" }
        ));
        self.feed_waiting(n);
        let at = self.at(n);
        if let Some(c) = self.nodes[n].core.as_mut() {
            c.handle_lan(at, up);
        }
        self.drain(n);
    }

    /// Cuts or heals the dedicated line between `a` and `b`; `carrier` says whether the ends
    /// see it (a cable pulled) or not (a box in the middle died).
    pub fn set_dedicated(&mut self, a: NodeId, b: NodeId, up: bool, carrier: bool) {
        self.cut[a][b][DEDICATED] = !up;
        self.cut[b][a][DEDICATED] = !up;
        self.trace.push(format!(
            "{:?} line n{a}-n{b} {}",
            self.now,
            if up { "up" } else { "cut" }
        ));
        if carrier {
            for n in [a, b] {
                self.feed_waiting(n);
                let other = if n == a { b } else { a };
                let at = self.at(n);
                if let Some(c) = self.nodes[n].core.as_mut() {
                    c.handle_line_carrier(at, other, up);
                }
                self.drain(n);
            }
        }
    }

    /// Hands a datagram to node `to` as if it came off the wire, bypassing the network.
    pub fn inject(
        &mut self,
        to: NodeId,
        path: usize,
        bytes: &[u8],
    ) -> Option<(Result<(), super::wire::Rejected>, String, String)> {
        let at = self.at(to);
        let core = self.nodes[to].core.as_mut()?;
        let before = core.digest();
        let r = core.handle_datagram(at, path, bytes);
        let after = core.digest();
        self.drain(to);
        Some((r, before, after))
    }

    fn drain(&mut self, n: NodeId) {
        // As the shell sends them: queued per socket, the urgent ones first (so an urgent
        // heartbeat may leave before an older periodic one).
        let mut sends: [Vec<(NodeId, usize, Vec<u8>)>; 2] = Default::default();
        while let Some(action) = self.nodes[n].core.as_mut().and_then(|c| c.poll_action()) {
            match action {
                Action::SetGate { res, gate } => self.set_gate(n, res, gate),
                Action::Announce { res } => self.announced.push((self.now, n, res)),
                Action::Persist { epochs } => {
                    // Durable at once (or not at all): the record the next agent finds.
                    let ok = self.persist_works;
                    if ok {
                        for (a, e) in epochs {
                            self.nodes[n].epochs[a] = e;
                        }
                    }
                    let at = self.at(n);
                    self.nodes[n]
                        .core
                        .as_mut()
                        .unwrap()
                        .handle_persisted(at, ok);
                }
                Action::Event(e) => {
                    let cfg = self.nodes[n].core.as_ref().unwrap().config();
                    self.trace
                        .push(format!("{:?} n{n}: {}", self.now, e.describe(cfg)));
                    self.events.push((self.now, n, e));
                }
                Action::Restart { component } => {
                    // What is left is stopped at once; the new one runs a little later.
                    let i = &mut self.nodes[n].instances[component];
                    i.running = false;
                    i.down_since = i.down_since.or(Some(self.now));
                    self.restarts
                        .push((self.now + self.restart_takes, n, component));
                    self.trace
                        .push(format!("{:?} n{n} restarts s{component}", self.now));
                }
                Action::Acquire { res, .. } => self.acquire(n, res),
                Action::Order { peer, id } => {
                    self.trace.push(format!(
                        "{:?} n{n} {} n{peer}",
                        self.now,
                        if id.is_some() {
                            "orders a fence of"
                        } else {
                            "withdraws its order for"
                        }
                    ));
                    if let Some(d) = self.disk.as_mut() {
                        d.orders[n][peer] = id;
                    }
                }
                Action::Release { res } => {
                    for c in self.cold_of(res) {
                        self.nodes[n].instances[c].running = false;
                    }
                    self.nodes[n].mounted[res] = false;
                    self.trace
                        .push(format!("{:?} n{n} releases a{res}", self.now));
                    let at = self.at(n);
                    self.nodes[n]
                        .core
                        .as_mut()
                        .unwrap()
                        .handle_released(at, res, true);
                }
                Action::Fence { peer } => {
                    self.fences_requested += 1;
                    self.trace
                        .push(format!("{:?} n{n} fences n{peer}", self.now));
                    self.fences.push((self.now + self.fence_delay, n, peer));
                }
                Action::Send {
                    peer,
                    path,
                    bytes,
                    urgent,
                } => sends[usize::from(!urgent)].push((peer, path, bytes)),
            }
        }
        for (kind, queued) in sends.into_iter().enumerate() {
            for (peer, path, bytes) in queued {
                self.send(n, peer, path, bytes, kind == 0);
            }
        }
        // As the shell after every wake-up: the lease extended as far as the core allows.
        let at = self.at(n);
        let first = self.nodes[n].core.as_ref().is_some_and(|c| c.lease_first());
        if let Some(until) = self.nodes[n].core.as_mut().and_then(|c| c.lease_until(at)) {
            // The data plane's lease runs on the node's own clock; a new agent's first
            // renewal replaces what it found.
            let until = self.global(n, until);
            let lease = &mut self.nodes[n].lease;
            let new = if first { until } else { (*lease).max(until) };
            *lease = new;
        }
        self.check_invariant_1();
        self.check_black_holes();
        self.check_forward_window();
        self.check_service_forwarding();
    }

    /// A service is forwarded only to a peer whose instance can serve: one that cannot is
    /// forwarded to no longer than it takes to learn so (its exit at once, a hang once its
    /// checks have fallen), plus the heartbeats that say so.
    fn check_service_forwarding(&self) {
        let bound = self.check_every * 4 + self.cfg.interval * 3 + self.cfg.forward_for;
        for (s, r) in self.cfg.resources.iter().enumerate() {
            let Some(sv) = r.service else {
                continue;
            };
            for (f, node) in self.nodes.iter().enumerate() {
                let Gate::Forward(to) = node.gates[s] else {
                    continue;
                };
                // Only a partial takeover (the forwarder serves the address): a service
                // forwarded with its whole address goes wherever the address went.
                if !node.powered
                    || node.core.is_none()
                    || !self.nodes[to].powered
                    || node.gates[sv.address] != Gate::Open
                {
                    continue;
                }
                if let Some(since) = self.nodes[to].instances[sv.component].down_since {
                    assert!(
                        self.now <= since + bound,
                        "n{f} forwards a{s} to n{to}, whose instance is down since {since:?}, at {:?}\n{}",
                        self.now,
                        self.tail()
                    );
                }
            }
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, path: usize, bytes: Vec<u8>, urgent: bool) {
        *self.sent.entry((from, to, path)).or_default() += 1;
        // A sample of the heartbeats, and every probe (they are few: only while a line is dark).
        let probe = wire::probe_answer(&bytes).is_some();
        if self.captured.len() < 4096 && (probe || self.rng.chance(0.05)) {
            self.captured.push((to, path, bytes.clone()));
        }
        let lan_ok = path != LAN || (self.nodes[from].lan_up && self.nodes[to].lan_up);
        if self.nodes[from].mute
            || self.cut[from][to][path]
            || !lan_ok
            || self.rng.chance(self.loss)
        {
            return;
        }
        let copies = if self.rng.chance(self.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter = Duration::from_nanos(self.rng.below(self.jitter.as_nanos() as u64 + 1));
            self.order += 1;
            self.in_flight.push(Reverse(Delivery {
                at: self.now + self.base_delay + jitter,
                order: self.order,
                from,
                to,
                path,
                bytes: bytes.clone(),
                urgent,
            }));
        }
    }

    /// Invariant 1: for each address, at most one powered node has its gate open (a fenced
    /// node is powered off, so it counts no more).
    /// Sets a gate and traces it; a change counts when it opens or stops serving (a gate
    /// closed again, or turned from closed to receiving, is no change to who serves).
    fn set_gate(&mut self, n: NodeId, a: usize, gate: Gate) {
        let was_open = self.nodes[n].is_open(a);
        let now = self.now;
        let line = match gate {
            Gate::Open => Some(format!("{now:?} n{n} opens a{a}")),
            Gate::Forward(to) => Some(format!("{now:?} n{n} forwards a{a} to n{to}")),
            Gate::Receive(from) => Some(format!("{now:?} n{n} receives a{a} from n{from}")),
            Gate::Closed => was_open.then(|| format!("{now:?} n{n} closes a{a}")),
        };
        self.trace.extend(line);
        if gate == Gate::Open || was_open {
            self.gate_changes += 1;
        }
        self.nodes[n].gates[a] = gate;
        self.forward_since[n][a] = match gate {
            Gate::Forward(_) => self.forward_since[n][a].or(Some(now)),
            _ => None,
        };
    }

    /// The cold components on stateful address `a`.
    fn cold_of(&self, a: usize) -> Vec<usize> {
        self.cfg
            .resources
            .iter()
            .filter_map(|r| r.service)
            .filter(|sv| sv.address == a && self.cfg.components[sv.component].cold)
            .map(|sv| sv.component)
            .collect()
    }

    /// Node `n` mounts stateful address `a`'s file system and starts its cold services (a
    /// broken one fails it, undone). Nowhere else may it be mounted: two hosts writing one
    /// file system is the worst a takeover can do.
    fn acquire(&mut self, n: NodeId, a: usize) {
        let others: Vec<NodeId> = (0..self.nodes.len())
            .filter(|&m| m != n && self.nodes[m].powered && self.nodes[m].mounted[a])
            .collect();
        assert!(
            others.is_empty(),
            "n{n} mounts a{a} while {others:?} still has it mounted\n{}",
            self.tail()
        );
        let cold = self.cold_of(a);
        let ok = self.acquire_works && cold.iter().all(|&c| !self.nodes[n].instances[c].broken);
        for c in cold {
            let i = &mut self.nodes[n].instances[c];
            i.running = ok;
            i.hung = false;
            i.down_since = None;
        }
        self.nodes[n].mounted[a] = ok;
        self.trace.push(format!(
            "{:?} n{n} {} a{a}",
            self.now,
            if ok { "acquires" } else { "fails to acquire" }
        ));
        let at = self.at(n);
        self.nodes[n]
            .core
            .as_mut()
            .unwrap()
            .handle_acquired(at, a, ok);
    }

    /// Invariant 6's bound: a running agent forwards what it handed over for its window, then
    /// closes (a killed agent's gates stay as they are: that is the leases' business).
    fn check_forward_window(&self) {
        let slack = self.cfg.interval * 2;
        for (n, node) in self.nodes.iter().enumerate() {
            if !node.powered || node.core.is_none() {
                continue;
            }
            let window = self.node_cfg(n).forward_for;
            for (a, since) in self.forward_since[n].iter().enumerate() {
                if self.cfg.resources[a].service.is_some() {
                    // A service forwarded to a peer's instance lasts while its own is down
                    // (`check_service_forwarding`).
                    continue;
                }
                if let (Gate::Forward(_), Some(since)) = (node.gates[a], since) {
                    assert!(
                        self.now <= *since + window + slack,
                        "n{n} still forwards a{a} at {:?}, since {since:?}\n{}",
                        self.now,
                        self.tail()
                    );
                }
            }
        }
    }

    fn check_black_holes(&mut self) {
        for a in 0..self.cfg.resources.len() {
            for f in 0..self.nodes.len() {
                let Gate::Forward(n) = self.nodes[f].gates[a] else {
                    continue;
                };
                if !self.nodes[f].powered {
                    continue;
                }
                let to = &self.nodes[n];
                if to.powered && !to.is_open(a) && to.receiving(a) != Some(f) {
                    self.black_hole = true;
                    self.trace.push(format!(
                        "{:?} n{f} forwards a{a} into n{n}'s closed gate",
                        self.now
                    ));
                }
            }
        }
    }

    /// At most one powered node serves each address: its gate is open, or it receives what
    /// a powered node forwards to it (a handover under way).
    fn check_invariant_1(&self) {
        for a in 0..self.cfg.resources.len() {
            let on = |n: NodeId| {
                self.nodes[n].powered && self.nodes[n].lease_runs(self.cfg.lease, self.now)
            };
            let open: Vec<NodeId> = (0..self.nodes.len())
                .filter(|&n| {
                    on(n)
                        && (self.nodes[n].is_open(a)
                            || self.nodes[n].receiving(a).is_some_and(|f| {
                                on(f) && self.nodes[f].gates[a] == Gate::Forward(n)
                            }))
                })
                .collect();
            assert!(
                open.len() <= 1,
                "invariant 1 broken at {:?}: a{a} served by {open:?} (leases {:?}, gates {:?})\n{}",
                self.now,
                self.nodes.iter().map(|n| n.lease).collect::<Vec<_>>(),
                self.nodes.iter().map(|n| n.gates[a]).collect::<Vec<_>>(),
                self.tail()
            );
        }
    }

    pub fn tail(&self) -> String {
        self.trace
            .iter()
            .rev()
            .take(
                std::env::var("TAKEOVER_SIM_TAIL")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(40),
            )
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Runs until `until`, processing deliveries, timers and fence completions in time order.
    pub fn run_until(&mut self, until: Duration) {
        let mut stuck = 0u32;
        loop {
            let before = self.now;
            let mut next = until;
            if let Some(Reverse(d)) = self.in_flight.peek() {
                next = next.min(d.at);
            }
            for (at, _, _) in &self.fences {
                next = next.min(*at);
            }
            for (at, _, _) in &self.restarts {
                next = next.min(*at);
            }
            if !self.cfg.components.is_empty() {
                next = next.min(self.next_check.max(self.now));
            }
            if let Some(d) = &self.disk {
                next = next.min(d.next.max(self.now));
            }
            for (n, node) in self.nodes.iter().enumerate() {
                if let Some(c) = &node.core {
                    next = next.min(self.global(n, c.poll_timeout()).max(self.now));
                }
            }
            if next >= until && self.now >= until {
                break;
            }
            self.now = next.max(self.now);
            if self.now >= until {
                self.now = until;
            }
            self.step();
            if self.now >= until {
                break;
            }
            // Time must move on: a core asking to be woken at an instant already handled
            // would spin the real agent's loop too.
            stuck = if self.now == before { stuck + 1 } else { 0 };
            assert!(
                stuck < 10_000,
                "no progress at {:?}: a core keeps asking to be woken now\n{}",
                self.now,
                self.tail()
            );
        }
    }

    fn step(&mut self) {
        let now = self.now;
        while let Some(Reverse(d)) = self.in_flight.peek() {
            if d.at > now {
                break;
            }
            let Reverse(d) = self.in_flight.pop().unwrap();
            if !self.nodes[d.to].powered {
                continue;
            }
            if let Some(answer) = wire::probe_answer(&d.bytes) {
                // The data plane answers probes while an agent is registered as running,
                // however stalled (frozen); not for one stopping or stopped, nor dead.
                let node = &self.nodes[d.to];
                if node.core.is_some() || node.frozen.is_some() {
                    self.send(d.to, d.from, d.path, answer, true);
                }
            } else if self.nodes[d.to].core.is_some() {
                if d.urgent {
                    // A wake-up: what waited on the listen sockets is read too.
                    self.nodes[d.to].waiting.push((now, d.path, d.bytes));
                    self.feed_waiting(d.to);
                } else {
                    self.nodes[d.to].waiting.push((now, d.path, d.bytes));
                }
            } else if self.nodes[d.to].exited && !wire::is_notice(&d.bytes) {
                // The data plane of a node whose agent died answers in its name.
                let inc = self.nodes[d.to].incarnation;
                let notice = wire::encode_notice(inc, &Self::token(d.to, inc));
                self.send(d.to, d.from, d.path, notice.to_vec(), true);
            }
            self.drain(d.to);
        }
        let due: Vec<(Duration, NodeId, NodeId)> =
            self.fences.iter().copied().filter(|f| f.0 <= now).collect();
        self.fences.retain(|f| f.0 > now);
        for (_, by, peer) in due {
            let ok = self.fence_works;
            if ok {
                self.trace.push(format!("{now:?} fence powers n{peer} off"));
                self.crash(peer);
            }
            self.feed_waiting(by);
            let at = self.at(by);
            if let Some(c) = self.nodes[by].core.as_mut() {
                c.handle_fence(at, peer, ok);
            }
            self.drain(by);
        }
        self.finish_restarts();
        if self.disk.as_ref().is_some_and(|d| now >= d.next) {
            self.disk_round();
        }
        if !self.cfg.components.is_empty() && now >= self.next_check {
            self.next_check = now + self.check_every;
            self.run_checks();
        }
        for n in 0..self.nodes.len() {
            let at = self.local(n, now);
            let due = self.nodes[n]
                .core
                .as_ref()
                .is_some_and(|c| c.poll_timeout() <= at);
            if due {
                self.feed_waiting(n);
                let c = self.nodes[n].core.as_mut().unwrap();
                c.handle_timeout(at);
                self.drain(n);
            }
        }
    }

    /// A round of every running agent's disk heartbeat thread: write its own, read the others'.
    fn disk_round(&mut self) {
        let now = self.now;
        let Some(d) = self.disk.as_mut() else {
            return;
        };
        d.next = now + d.interval;
        let running: Vec<NodeId> = (0..self.nodes.len())
            .filter(|&n| self.nodes[n].powered && self.nodes[n].core.is_some())
            .collect();
        for &n in &running {
            if !d.cut[n] {
                d.gens[n] += 1;
                d.restarting[n] = false;
                let core = self.nodes[n].core.as_ref().unwrap();
                d.lan_up[n] = core.lan_link();
                d.obeyed[n] = vec![0; self.nodes.len()];
                for (p, id) in core.obeyed() {
                    d.obeyed[n][p] = id;
                }
                d.written_orders[n] = d.orders[n].clone();
            }
        }
        let d = self.disk.as_ref().unwrap();
        let (gens, cut) = (d.gens.clone(), d.cut.clone());
        let restarting = d.restarting.clone();
        let read_by = |n: NodeId| -> Vec<DiskRead> {
            (0..gens.len())
                .map(|p| DiskRead {
                    peer: p,
                    generation: gens[p],
                    restarting: restarting[p],
                    serving: (0..self.nodes[p].gates.len())
                        .filter(|&a| self.nodes[p].is_open(a))
                        .map(|a| (a, self.nodes[p].epochs[a]))
                        .collect(),
                    lan_up: d.lan_up[p],
                    obeyed: d.obeyed[p][n],
                    order: d.written_orders[p][n],
                })
                .collect()
        };
        let reads: Vec<Vec<DiskRead>> = (0..gens.len()).map(read_by).collect();
        for n in running {
            let all = &reads[n];
            self.feed_waiting(n);
            let at = self.local(n, now);
            let c = self.nodes[n].core.as_mut().unwrap();
            c.handle_storage(at, at, !cut[n], "cut off");
            if !cut[n] {
                c.handle_disk(
                    at,
                    ReadTimes {
                        began: at,
                        ended: at,
                    },
                    all,
                );
            }
            self.drain(n);
        }
    }

    /// Heals every fault (links, cuts, mutes, frozen agents, storage, lossy or failing
    /// parts), boots every node and starts every agent, until all stay up (a fence still in
    /// flight may power one off again).
    pub fn heal_all(&mut self) {
        let nodes = self.nodes.len();
        self.persist_works = true;
        self.acquire_works = true;
        self.loss = 0.0;
        self.duplicate = 0.0;
        self.fence_works = true;
        for n in 0..nodes {
            self.freeze_agent(n, false);
            if self.disk.is_some() {
                self.set_storage(n, true);
            }
            self.nodes[n].mute = false;
            for m in 0..nodes {
                self.cut[n][m] = vec![false, false];
            }
        }
        for n in 0..nodes {
            for m in 0..nodes {
                if n != m {
                    self.set_dedicated(n, m, true, true);
                }
            }
            if !self.nodes[n].lan_up {
                self.set_lan(n, true);
            }
        }
        for _ in 0..10 {
            for n in 0..nodes {
                self.boot(n);
                if self.nodes[n].core.is_none() {
                    self.start_agent(n);
                }
            }
            let t = self.now + Duration::from_millis(150);
            self.run_until(t);
            if self.nodes.iter().all(|n| n.powered) {
                break;
            }
        }
    }

    /// Cuts node `n` off the storage area, or heals it.
    pub fn set_storage(&mut self, n: NodeId, up: bool) {
        if let Some(d) = self.disk.as_mut() {
            d.cut[n] = !up;
        }
        self.trace.push(format!(
            "{:?} n{n} storage {}",
            self.now,
            if up { "back" } else { "cut" }
        ));
    }

    /// Hands node `n`'s agent what waits on its sockets, as the shell does at a wake-up: the
    /// core sorts it by arrival.
    fn feed_waiting(&mut self, n: NodeId) {
        let now = self.at(n);
        let arrived: Vec<Duration> = self.nodes[n]
            .waiting
            .iter()
            .map(|w| self.local(n, w.0))
            .collect();
        let node = &mut self.nodes[n];
        let Some(c) = node.core.as_mut() else {
            node.waiting.clear();
            return;
        };
        let mut buf = Vec::new();
        let mut list: Vec<Arrival<()>> = node
            .waiting
            .drain(..)
            .zip(arrived)
            .map(|((_, path, bytes), at)| {
                let start = buf.len();
                buf.extend_from_slice(&bytes);
                Arrival {
                    at,
                    path,
                    bytes: start..buf.len(),
                    tag: (),
                }
            })
            .collect();
        c.handle_arrivals(now, &mut list, &buf, |_, _| {});
    }

    /// The events node `n` reported that match `f`.
    pub fn events_of(&self, n: NodeId, f: impl Fn(&Event) -> bool) -> usize {
        self.events
            .iter()
            .filter(|(_, m, e)| *m == n && f(e))
            .count()
    }

    /// Which powered nodes have address `a` open.
    pub fn servers(&self, a: usize) -> Vec<NodeId> {
        (0..self.nodes.len())
            .filter(|&n| {
                self.nodes[n].powered
                    && self.nodes[n].is_open(a)
                    && self.nodes[n].lease_runs(self.cfg.lease, self.now)
            })
            .collect()
    }

    pub fn fence_state(&self, by: NodeId, peer: NodeId) -> Option<FenceState> {
        self.nodes[by].core.as_ref().map(|c| c.fence_state(peer))
    }
}
