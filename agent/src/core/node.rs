//! The failover state machine of one node (patent figs 7, 8, 10, 11, 13): who serves each
//! resource, from heartbeats, link events, fencing and durable-write results.
//!
//! Sans-IO, in the manner of quinn-proto. The shell feeds it, always with the time:
//! - `handle_arrivals` (datagrams, in any order: the core sorts them and never lets time go
//!   back), `handle_timeout` when `poll_timeout` is due;
//! - `handle_lan`, `handle_line_carrier` (netlink), `handle_fence`, `handle_persisted`
//!   (completions of the `Fence` and `Persist` actions), `handle_switchover`, `shutdown`;
//!
//! and drains `poll_action` after each call. Time is a `Duration` since an arbitrary start,
//! so tests run it on virtual time. The work is split by concern: `heartbeat` (what is sent
//! and taken), `liveness` (who is alive, probes, exit notices), `election` (who serves what).
//!
//! Safety rules (docs/design.md invariants):
//! - A node opens a resource only if every other node is either alive, readable and not
//!   serving it, or dead and fenced (1), and only once its new epoch is durable.
//! - A node that starts opens nothing until it has heard every peer or waited out the dead
//!   time; gates it finds open (agent restart) stay open unless a peer serves them in a newer
//!   epoch (3).
//! - Only authentic datagrams never taken before change anything, and one older than what
//!   was taken only proves the peer alive (4).
//! - A peer is dead only when every path is silent; one path lost is reported, never acted on
//!   (5). A dark dedicated line to a peer shortens the wait on the LAN, where the peer's
//!   kernel answers probes, if the LAN falls silent with it.
//! - A resource given up to a live peer is forwarded to it for a bounded time, then closed; a
//!   forwarding gate claims nothing (6).
//! - An authentic heartbeat always proves its sender alive; a peer whose configuration
//!   differs is reported, never fenced for it, and freezes every move (7).
mod disk;
mod election;
mod heartbeat;
mod lease;
mod liveness;
mod peer;
mod pill;
mod services;
mod stateful;

use std::{collections::VecDeque, ops::Range, time::Duration};

use super::component::Component;
pub use super::config::{ComponentSpec, CoreConfig, NodeId, ResId, ResourceSpec, ServiceSpec};
pub use super::event::{DeathReason, Event, Gate, Mismatch};
use super::wire::{self, Rejected};
pub use disk::{DiskRead, ReadTimes};
use peer::Peer;
pub use stateful::Step;

/// What the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Set the data plane's gate of a resource.
    SetGate { res: ResId, gate: Gate },
    /// Gratuitous ARP / unsolicited NA for a resource's address (this node serves it).
    Announce { res: ResId },
    /// Run the fence command for this peer and report with `handle_fence`.
    Fence { peer: NodeId },
    /// Record these epochs durably (they are about to be opened in) and report with
    /// `handle_persisted`: nothing opens before its epoch is on record.
    Persist { epochs: Vec<(ResId, u64)> },
    /// Send this datagram to `peer` on `path`. `urgent`: the peer must act on it at once (this
    /// node's summary changed, or it is stopping); otherwise it only says that this node is
    /// alive, and the peer may read it at its own next tick.
    Send {
        peer: NodeId,
        path: usize,
        bytes: Vec<u8>,
        urgent: bool,
    },
    /// Stop what is left of this component's instance and start it again; report with
    /// `handle_restarted`.
    Restart { component: usize },
    /// A stateful resource is this node's in `epoch` (on record): mount its file systems and
    /// start its cold services, told of the epoch (`takeover`: taken from a peer that did
    /// not hand it over); report with `handle_acquired`. Its gate opens once their checks
    /// pass.
    Acquire {
        res: ResId,
        epoch: u64,
        takeover: bool,
    },
    /// Stop a stateful resource's cold services and unmount their file systems (its gate is
    /// closed already); report with `handle_released`. No peer starts them before.
    Release { res: ResId },
    /// Write (`Some(id)`) or withdraw (`None`) a fence order for `peer` in this node's message
    /// slot of the storage area (`pill`); kept written until withdrawn.
    Order { peer: NodeId, id: Option<u64> },
    /// Something happened (for the log, metrics, hooks).
    Event(Event),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceState {
    /// Not needed (alive) or not yet asked for.
    None,
    Pending,
    Fenced,
    /// The fence command failed at this time: nothing is taken from this peer; retried later.
    Failed(Duration),
    /// No fence command: waiting for the peer's lease to lapse (`lease`).
    Waiting,
    /// Proven gone by its lease: lapsed for sure, or closed by its kernel at its agent's exit.
    Lapsed,
}

/// A datagram as the shell read it: when it arrived, on which path, where its bytes are in
/// the shell's buffer, and whatever the shell wants back with the outcome (its source).
#[derive(Clone, Debug)]
pub struct Arrival<T> {
    pub at: Duration,
    pub path: usize,
    pub bytes: Range<usize>,
    pub tag: T,
}

/// This node's state of one resource.
#[derive(Clone, Debug, Default)]
struct Res {
    open: bool,
    epoch: u64,
    /// The highest epoch seen for this resource anywhere.
    max_epoch: u64,
    /// An operator's switchover: the node, and the order's version (the newest wins).
    moved_to: Option<(NodeId, u64)>,
    /// When this node last gave it up (`sent_at_us` of the heartbeat that said so): it may
    /// open it again only on votes cast after the peers heard that.
    released_us: u64,
    /// Handed over to this live peer: the gate forwards to it, until `forward_until`.
    forwarding: Option<NodeId>,
    forward_until: Duration,
    /// About to be handed over by this live peer: the gate passes what it forwards.
    receiving: Option<NodeId>,
    /// When this node's vote for it last changed (`sent_at_us` of the heartbeat that said
    /// so): a handover to the node voted for waits for a heartbeat of it that heard this one.
    voted_us: u64,
    /// About to be opened in this epoch, once it is on record (`Persist` under way).
    opening: Option<u64>,
    /// Announcements still to repeat after opening: the next one's time, and how many.
    reannounce: Option<(Duration, u32)>,
    /// `sent_at_us` of the heartbeat that said this node opened it.
    opened_us: u64,
    /// A service's gate, as derived (`services`).
    derived: Gate,
    /// A service whose instance here failed with no peer's able to take it.
    stranded: bool,
    /// A stateful resource's step here (`stateful`).
    step: Step,
    /// A stateful resource's `Acquire` failed at this time: its cold services stay failed
    /// here (the address goes to a peer) until a peer claims it or a while has passed.
    acquire_failed: Option<Duration>,
    /// When a stateful resource was last taken from a peer that did not hand it over.
    taken: bool,
    /// Claimed only while it is released (what a previous agent left): not once done.
    unclaim: bool,
}

/// Counts of datagrams refused, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RejectCounts(pub std::collections::BTreeMap<&'static str, u64>);

/// Announcements repeated within the forwarding window after an opening.
const REANNOUNCE: u32 = 3;

pub struct Core {
    cfg: CoreConfig,
    incarnation: u64,
    started: Duration,
    ready: bool,
    /// Fit to serve, as told to the peers: the LAN link up, and the storage written unless
    /// its loss hands over (`disk`).
    lan_up: bool,
    lan_link: bool,
    storage_ok: bool,
    /// When the last successful disk heartbeat write of this node's began (`disk`).
    disk_written_at: Option<Duration>,
    /// The latest lease end `lease_until` gave, and whether this agent stalled (slept through
    /// wake-ups) since it last ran (`lease`).
    lease_granted: Option<Duration>,
    stalled: bool,
    /// The stamp of the heartbeat that first said this node is fit (ready, LAN up, storage):
    /// a peer's vote for it counts only once the peer has heard that (`safe_to_open`).
    fit_us: u64,
    peers: Vec<Peer>,
    res: Vec<Res>,
    /// Per path: the last sequence number used.
    seq: Vec<u64>,
    /// `sent_at_us` of the last round sent: every round's is greater than the one before, so
    /// a periodic round and an urgent one sent at the same instant are told apart.
    last_stamp: u64,
    next_heartbeat: Duration,
    /// Periodic heartbeat rounds sent (the LAN's share is counted by it).
    rounds: u64,
    last_tick: Option<Duration>,
    /// When this node last ran (a timeout or datagrams), for the late wake-up credit.
    last_awake: Option<Duration>,
    /// The latest time fed: time given later is never before it.
    fed: Duration,
    actions: VecDeque<Action>,
    rejected: RejectCounts,
    /// This node's vote per resource, as last decided.
    votes: Vec<Option<NodeId>>,
    restarting: bool,
    /// The next probe of the peers whose line is dark, and the last probe's number.
    next_probe: Duration,
    probe_seq: u64,
    /// A `Persist` is under way; one that failed, when (openings wait `fence_retry`).
    persisting: bool,
    persist_failed: Option<Duration>,
    /// Sent in every heartbeat: the hash of the token this node's data plane reveals if the
    /// agent dies (zeros: no kernel assistance).
    exit_commit: [u8; wire::TOKEN_LEN],
    /// This node's instance of each service.
    components: Vec<Component>,
    /// What the peers were last told of each (`Health::code`; `None`: no instance here).
    told: Vec<Option<u8>>,
    /// The last fence order's id this node sent (`pill`).
    order_seq: u64,
    /// Per address resource, its services' resources; and every service's resource.
    services_of: Vec<Vec<ResId>>,
    service_res: Vec<ResId>,
}

impl Core {
    /// A core starting at `now`. `open` lists the gates found open in the data plane (an agent
    /// restart) with their epochs; every other resource's gate is closed first thing.
    pub fn new(cfg: CoreConfig, incarnation: u64, now: Duration, open: &[(ResId, u64)]) -> Self {
        // Votes name nodes by index: every node must index them alike.
        assert!(
            cfg.nodes.windows(2).all(|w| w[0] < w[1]),
            "node names must be sorted and unique"
        );
        assert!(cfg.nodes.len() <= u8::MAX as usize, "at most 255 nodes");
        let peer = Peer::new(&cfg, now);
        let mut res = vec![Res::default(); cfg.resources.len()];
        for &(a, epoch) in open {
            res[a] = if cfg.resources[a].service.is_some() {
                // A service's gate found open stays so until derived (with its address's).
                Res {
                    derived: Gate::Open,
                    ..Res::default()
                }
            } else {
                Res {
                    open: true,
                    epoch,
                    max_epoch: epoch,
                    // Its services run on (a restarted agent adopts them) and its file
                    // systems stay mounted.
                    step: if cfg.resources[a].stateful {
                        Step::Serving
                    } else {
                        Step::Idle
                    },
                    ..Res::default()
                }
            };
        }
        let mut services_of = vec![Vec::new(); cfg.resources.len()];
        let mut service_res = Vec::new();
        for (s, r) in cfg.resources.iter().enumerate() {
            if let Some(sv) = r.service {
                services_of[sv.address].push(s);
                service_res.push(s);
            }
        }
        let components: Vec<Component> = cfg
            .components
            .iter()
            .enumerate()
            .map(|(i, c)| {
                // A cold one runs only where its address is served (found open here).
                let found = || {
                    cfg.resources.iter().any(|r| {
                        r.service.is_some_and(|s| s.component == i)
                            && open
                                .iter()
                                .any(|&(o, _)| r.service.is_some_and(|s| s.address == o))
                    })
                };
                if c.here && (!c.cold || found()) {
                    Component::new(c.policy.clone(), now)
                } else {
                    Component::standby(c.policy.clone(), now)
                }
            })
            .collect();
        let told = cfg
            .components
            .iter()
            .zip(&components)
            .map(|(spec, c)| spec.here.then(|| c.health(now).code()))
            .collect();
        let n = cfg.nodes.len();
        let mut core = Core {
            incarnation,
            started: now,
            ready: false,
            lan_up: true,
            lan_link: true,
            storage_ok: true,
            disk_written_at: None,
            lease_granted: None,
            stalled: false,
            fit_us: 0,
            peers: vec![peer; n],
            seq: vec![0; cfg.paths],
            last_stamp: 0,
            next_heartbeat: now,
            rounds: 0,
            last_tick: None,
            last_awake: None,
            fed: now,
            actions: VecDeque::new(),
            rejected: RejectCounts::default(),
            votes: vec![None; res.len()],
            restarting: false,
            exit_commit: [0; wire::TOKEN_LEN],
            next_probe: now,
            probe_seq: 0,
            persisting: false,
            persist_failed: None,
            order_seq: 0,
            res,
            components,
            told,
            services_of,
            service_res,
            cfg,
        };
        core.startup_releases();
        for a in 0..core.res.len() {
            // Claimed only while what a previous agent left is released: closed, never
            // announced.
            let leftover = core.res[a].unclaim;
            if (!core.res[a].open || leftover) && core.res[a].derived != Gate::Open {
                // Not an event: nothing changed, the gate is made to say what it must.
                core.actions.push_back(Action::SetGate {
                    res: a,
                    gate: Gate::Closed,
                });
            } else if core.res[a].open {
                // Served on from the previous agent, which may have stopped before it could
                // announce an opening: said again, harmless if the clients knew.
                core.actions.push_back(Action::Announce { res: a });
            }
        }
        core
    }

    /// Commits this incarnation to an exit token (see `wire::commit`): the peers will take the
    /// token, from this node's data plane, as proof that the agent died.
    pub fn set_exit_commit(&mut self, commit: [u8; wire::TOKEN_LEN]) {
        self.exit_commit = commit;
    }

    fn others(&self) -> impl Iterator<Item = NodeId> + '_ {
        let me = self.cfg.me;
        (0..self.cfg.nodes.len()).filter(move |&p| p != me)
    }

    fn others_vec(&self) -> Vec<NodeId> {
        self.others().collect()
    }

    fn event(&mut self, e: Event) {
        self.actions.push_back(Action::Event(e));
    }

    /// Sets a gate and reports it.
    fn set_gate(&mut self, res: ResId, gate: Gate) {
        self.actions.push_back(Action::SetGate { res, gate });
        self.event(Event::GateChanged { res, gate });
    }

    /// The stamp the next round of heartbeats will carry: its time in microseconds, and later
    /// than the last round's.
    fn next_stamp(&self, now: Duration) -> u64 {
        (now.as_micros() as u64).max(self.last_stamp + 1)
    }

    /// The time of an input: never before the last one (the shell's clocks and arrival stamps
    /// may disagree by a little; the core's time only goes forward).
    fn clock(&mut self, t: Duration) -> Duration {
        self.fed = self.fed.max(t);
        self.fed
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Duration {
        // Only instants after the last tick: one already handled must not wake us again
        // (a past deadline would spin the shell's loop).
        let floor = self.last_tick.unwrap_or(self.started);
        let mut t = self.next_heartbeat;
        let mut consider = |at: Duration| {
            if at > floor {
                t = t.min(at);
            }
        };
        for p in self.others() {
            if let Some(deadline) = self.death_deadline(p) {
                consider(deadline);
            }
            let peer = &self.peers[p];
            if let FenceState::Failed(at) = peer.fence {
                consider(at + self.cfg.fence_retry);
            }
            if let Some(at) = self.lease_deadline(p) {
                consider(at);
            }
            if let (Some(since), Some(delay)) = (peer.eligible_since, self.cfg.preempt) {
                consider(since + delay);
            }
            if let Some(lost) = self.path_loss_deadline(p) {
                consider(lost);
            }
        }
        if !self.ready {
            consider(self.started + self.cfg.startup_grace);
        }
        if self.probing(floor) {
            consider(self.next_probe);
        }
        if let Some(at) = self.persist_failed {
            consider(at + self.cfg.fence_retry);
        }
        if let Some(at) = self.components_deadline(self.fed) {
            consider(at);
        }
        if let Some(at) = self.stateful_deadline(floor) {
            consider(at);
        }
        for r in &self.res {
            if r.forwarding.is_some() {
                consider(r.forward_until);
            }
            if let Some((at, _)) = r.reannounce {
                consider(at);
            }
        }
        t
    }

    /// Datagrams read at `now`: fed oldest first, each at its arrival time (never before what
    /// the core was last given), since a peer's urgent and periodic heartbeats come by two
    /// sockets but number their sequence together, and one taken after a newer one only
    /// proves the peer alive. `outcome` hears what became of each.
    pub fn handle_arrivals<T>(
        &mut self,
        now: Duration,
        list: &mut [Arrival<T>],
        buf: &[u8],
        mut outcome: impl FnMut(&Arrival<T>, Result<(), Rejected>),
    ) {
        if list.is_empty() {
            return;
        }
        list.sort_by_key(|a| a.at);
        for a in list.iter() {
            let r = self.handle_datagram(a.at, a.path, &buf[a.bytes.clone()]);
            outcome(a, r);
        }
        let now = self.clock(now);
        self.heard(now);
    }

    /// One datagram arrived on `path` at `now`. Returns why it was refused, if it was.
    pub fn handle_datagram(
        &mut self,
        now: Duration,
        path: usize,
        bytes: &[u8],
    ) -> Result<(), Rejected> {
        let now = self.clock(now);
        self.awake(now);
        let result = if wire::is_notice(bytes) {
            self.accept_notice(now, bytes)
        } else if wire::is_probe_answer(bytes) {
            self.accept_probe_answer(now, path, bytes)
        } else {
            self.accept_heartbeat(now, path, bytes)
        };
        if let Err(r) = result {
            *self.rejected.0.entry(r.as_str()).or_default() += 1;
        }
        result
    }

    /// Datagrams were just handled (a wake-up the shell had anyway: it reads periodic
    /// heartbeats at this node's own tick, and wakes early only for urgent ones). If this
    /// node's next heartbeat is due within half an interval, it goes now, and the next one a
    /// little over an interval later: one wake-up instead of two. Two heartbeats are never
    /// more than 1⅛ intervals apart.
    pub fn heard(&mut self, now: Duration) {
        let now = self.clock(now);
        if now + self.cfg.interval / 2 >= self.next_heartbeat && now < self.next_heartbeat {
            // The tick, early: everything periodic happens as if the timer had fired.
            self.next_heartbeat = now;
            self.handle_timeout(now);
            self.next_heartbeat += self.cfg.interval / 8;
        } else {
            self.awake(now);
        }
    }

    pub fn handle_timeout(&mut self, now: Duration) {
        let now = self.clock(now);
        self.awake(now);
        self.last_tick = Some(now);
        self.check_deaths(now);
        self.check_paths(now);
        if !self.ready
            && (self.others().all(|p| self.peers[p].alive)
                || now >= self.started + self.cfg.startup_grace)
        {
            self.ready = true;
            self.fit_us = self.next_stamp(now);
        }
        if now >= self.next_heartbeat {
            self.send_heartbeats(now, false);
        }
        if self.probing(now) && now >= self.next_probe {
            self.send_probes(now);
        }
        self.reannounce(now);
        self.stateful_tick(now);
        self.decide(now);
        self.components_tick(now);
    }

    /// Repeats the announcements of what this node opened, spread over the forwarding window
    /// of the node that handed it over, so that every client has moved before that ends.
    fn reannounce(&mut self, now: Duration) {
        let step = self.cfg.forward_for / (REANNOUNCE + 1);
        for a in 0..self.res.len() {
            let Some((at, left)) = self.res[a].reannounce else {
                continue;
            };
            if !self.res[a].open {
                self.res[a].reannounce = None;
            } else if now >= at {
                self.actions.push_back(Action::Announce { res: a });
                self.res[a].reannounce = (left > 1).then_some((now + step, left - 1));
            }
        }
    }

    /// An operator moves resource `a` to node `to` (maintenance). The order spreads with the
    /// heartbeats; the current server releases, then `to` opens, as in a failback.
    pub fn handle_switchover(&mut self, now: Duration, a: ResId, to: NodeId) {
        let now = self.clock(now);
        let order = self.res[a].moved_to.map_or(0, |(_, v)| v) + 1;
        self.res[a].moved_to = Some((to, order));
        self.event(Event::Switchover { res: a, to, order });
        self.decide(now);
        self.send_heartbeats(now, true);
    }

    /// Our LAN interface's carrier/operational state changed (netlink).
    pub fn handle_lan(&mut self, now: Duration, up: bool) {
        let now = self.clock(now);
        if self.lan_link == up {
            return;
        }
        self.lan_link = up;
        self.event(Event::LanLink { up });
        self.refit(now);
    }

    /// The LAN link or the storage changed: whether this node is fit to serve, and if that
    /// changed, what follows, told to the peers at once (on the paths that still work), not
    /// at the next heartbeat.
    fn refit(&mut self, now: Duration) {
        let fit = self.lan_link
            && (self.storage_ok || !self.cfg.storage_hand_over)
            && !self.ordered_off();
        if fit == self.lan_up {
            return;
        }
        self.lan_up = fit;
        if fit {
            self.fit_us = self.next_stamp(now);
        }
        self.decide(now);
        self.send_heartbeats(now, true);
    }

    /// The fence command for `peer` finished.
    pub fn handle_fence(&mut self, now: Duration, peer: NodeId, ok: bool) {
        let now = self.clock(now);
        if self.peers[peer].fence != FenceState::Pending {
            // A fence for a stateful resource of a peer its lease proved gone.
            if self.peers[peer].state_fence == FenceState::Pending {
                let p = &mut self.peers[peer];
                if ok {
                    p.fence = FenceState::Fenced;
                    p.state_fence = FenceState::None;
                } else {
                    p.state_fence = FenceState::Failed(now);
                }
                self.event(if ok {
                    Event::Fenced { peer }
                } else {
                    Event::FenceFailed { peer }
                });
                self.decide(now);
            }
            return;
        }
        self.peers[peer].fence = if ok {
            FenceState::Fenced
        } else {
            FenceState::Failed(now)
        };
        self.event(if ok {
            Event::Fenced { peer }
        } else {
            Event::FenceFailed { peer }
        });
        self.decide(now);
    }

    /// The last `Persist` finished: what it was for opens now if that is still right (the
    /// shell may complete it later than it was asked), or stays closed if it failed.
    pub fn handle_persisted(&mut self, now: Duration, ok: bool) {
        let now = self.clock(now);
        if !self.persisting {
            return;
        }
        self.persisting = false;
        let waiting: Vec<ResId> = (0..self.res.len())
            .filter(|&a| self.res[a].opening.is_some())
            .collect();
        if !ok {
            for &a in &waiting {
                self.res[a].opening = None;
            }
            self.persist_failed = Some(now);
            self.event(Event::PersistFailed {
                resources: waiting.len(),
            });
            return;
        }
        self.persist_failed = None;
        let me = self.cfg.me;
        let mut opened = false;
        for a in waiting {
            let epoch = self.res[a].opening.take().unwrap();
            if self.target(now, a) != Some(me) || !self.safe_to_open(now, a) {
                continue;
            }
            self.open(now, a, epoch);
            opened = true;
        }
        if opened {
            self.send_heartbeats(now, true);
        }
        self.decide(now);
    }

    /// The agent is stopping to be restarted: tell the peers (one heartbeat flagged
    /// `restarting` on every path) so that they wait for it instead of fencing it. The gates
    /// stay as they are; the next agent finds them.
    pub fn shutdown(&mut self, now: Duration) {
        let now = self.clock(now);
        self.restarting = true;
        self.send_heartbeats(now, true);
    }

    // ---- read-only views for status and tests ----

    pub fn is_open(&self, a: ResId) -> bool {
        self.res[a].open
    }

    /// Does this node serve anything (an open gate, or one receiving a handover)?
    pub fn serves_any(&self) -> bool {
        (0..self.res.len()).any(|a| matches!(self.gate(a), Gate::Open | Gate::Receive(_)))
    }

    /// The gate of `a` as this node holds it.
    pub fn gate(&self, a: ResId) -> Gate {
        let r = &self.res[a];
        if self.is_service(a) {
            return r.derived;
        }
        match (r.open, r.forwarding, r.receiving) {
            (true, _, _) if self.serving(a) => Gate::Open,
            (true, _, _) => Gate::Closed,
            (false, Some(n), _) => Gate::Forward(n),
            (false, None, Some(n)) => Gate::Receive(n),
            (false, None, None) => Gate::Closed,
        }
    }

    /// The live peer this node forwards resource `a` to (handed over), if any.
    pub fn forwarding(&self, a: ResId) -> Option<NodeId> {
        self.res[a].forwarding
    }

    /// The live peer this node's gate for `a` receives from (a handover under way).
    pub fn receiving(&self, a: ResId) -> Option<NodeId> {
        self.res[a].receiving
    }

    pub fn epoch(&self, a: ResId) -> u64 {
        self.res[a].epoch
    }

    /// This node's LAN link (fit to serve also needs its storage, if its loss hands over).
    pub fn lan_link(&self) -> bool {
        self.lan_link
    }

    /// Who serves `a` as far as this node knows (itself included).
    pub fn server(&self, a: ResId) -> Option<NodeId> {
        self.current(a).map(|(n, _)| n)
    }

    /// Since when peer `p` has been alive or dead (the last change), if it ever changed.
    pub fn peer_since(&self, p: NodeId) -> Option<Duration> {
        self.peers[p].since
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    pub fn peer_alive(&self, p: NodeId) -> bool {
        self.peers[p].alive
    }

    /// Peer `p`'s LAN link as its latest authentic heartbeat said (None: never heard).
    pub fn peer_lan_up(&self, p: NodeId) -> Option<bool> {
        (self.peers[p].header_sent_us != 0).then_some(self.peers[p].lan_up)
    }

    /// Whether peer `p` is ready as its latest authentic heartbeat said (None: never heard).
    pub fn peer_ready(&self, p: NodeId) -> Option<bool> {
        (self.peers[p].header_sent_us != 0).then_some(self.peers[p].ready)
    }

    /// Could `p` serve resources now (alive, readable, ready, its LAN up)?
    pub fn peer_eligible(&self, p: NodeId) -> bool {
        self.eligible(p)
    }

    /// Why peer `p`'s summaries cannot be read, if they cannot.
    pub fn peer_mismatch(&self, p: NodeId) -> Option<Mismatch> {
        self.peers[p].mismatch
    }

    /// The wire version this node writes to peer `p`.
    pub fn peer_wire_version(&self, p: NodeId) -> u8 {
        self.writes_to(p)
    }

    pub fn fence_state(&self, p: NodeId) -> FenceState {
        self.peers[p].fence
    }

    /// Per path: when the peer was last heard, and the round-trip time.
    pub fn path_status(&self, p: NodeId) -> Vec<(Option<Duration>, Option<Duration>)> {
        self.peers[p]
            .last_heard
            .iter()
            .copied()
            .zip(self.peers[p].rtt.iter().copied())
            .collect()
    }

    /// Whether the dedicated line to `p` is dark (its carrier is down).
    pub fn line_dark(&self, p: NodeId) -> bool {
        self.peers[p].dark_since.is_some()
    }

    pub fn rejected(&self) -> &RejectCounts {
        &self.rejected
    }

    /// What a failing simulation prints of this node.
    #[cfg(test)]
    pub fn explain(&self, a: ResId) -> String {
        let peers: Vec<String> = self
            .others()
            .map(|p| {
                let q = &self.peers[p];
                format!(
                    "n{p}: alive {} known {} mismatch {:?} lan {} ready {} fence {:?} res {:?}",
                    q.alive, q.known, q.mismatch, q.lan_up, q.ready, q.fence, q.res[a]
                )
            })
            .collect();
        format!(
            "ready {} lan {} persisting {} failed {:?} vote {:?} res {:?}\n{}",
            self.ready,
            self.lan_up,
            self.persisting,
            self.persist_failed,
            self.votes[a],
            self.res[a],
            peers.join("\n")
        )
    }

    /// Everything that decides behaviour, for checking that a refused datagram changed nothing.
    pub fn digest(&self) -> String {
        format!(
            "{:?}|{}|{}|{:?}",
            self.res
                .iter()
                .map(|a| (a.open, a.epoch, a.max_epoch, a.moved_to))
                .collect::<Vec<_>>(),
            self.ready,
            self.lan_up,
            self.peers.iter().map(Peer::digest).collect::<Vec<_>>()
        )
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_disk;
#[cfg(test)]
mod tests_lease;
#[cfg(test)]
mod tests_services;
#[cfg(test)]
mod tests_stateful;
