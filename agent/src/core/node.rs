//! The failover state machine of one node (patent figs 7, 8, 10, 11, 13): who serves each
//! logical address, from heartbeats, link events and fencing results.
//!
//! Sans-IO, in the manner of quinn-proto: the shell feeds it (`handle_datagram`,
//! `handle_link`, `handle_fence`, `handle_timeout`) with the time, and drains what it decided
//! (`poll_action`) and when it next wants to be woken (`poll_timeout`). Time is a `Duration`
//! since an arbitrary start, so tests run it on virtual time.
//!
//! Safety rules (DESIGN.md invariants):
//! - A node opens an address only if every other node is either alive and not serving it, or
//!   dead and fenced (invariant 1). A dead peer is fenced before anything is taken from it.
//! - A node that starts opens nothing until it has heard every peer or waited out the dead
//!   time; gates it finds open (agent restart) stay open unless a peer serves them in a newer
//!   epoch (invariant 3).
//! - Only authentic datagrams never taken before change anything, and one older than what
//!   was taken only proves the peer alive (invariant 4).
//! - A peer is dead only when every path is silent; one path lost is reported, never acted on
//!   (invariant 5). A dedicated line whose carrier drops shortens the wait on the LAN, where
//!   the peer's kernel answers probes, if the LAN falls silent with it (a crash takes both at
//!   once; a cable pulled from a live peer does not). A peer's kernel may also report its
//!   agent's death (exit notice), proven by a token its signed heartbeats committed to.
//! - An address given up to a live peer is forwarded to it, not closed (clients with a stale
//!   ARP entry); one given up is opened again only on votes cast after the peers heard that.
use std::{collections::VecDeque, net::IpAddr, time::Duration};

use super::wire::{self, Heartbeat, Rejected, ReplayGuard};

pub type NodeId = usize;
pub type AddrId = usize;

/// What the core needs of the configuration (see `config::Config`).
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Every node's name; `me` indexes it.
    pub nodes: Vec<String>,
    pub me: NodeId,
    /// Paths to every peer: 0 is the dedicated line (if there are two), the last the LAN.
    pub paths: usize,
    pub addresses: Vec<AddrSpec>,
    pub interval: Duration,
    pub misses: u32,
    /// While both paths carry heartbeats both ways, they take turns: the LAN carries one
    /// periodic heartbeat in this many, the line the others (1: both carry every one). A
    /// path that is dark or silent either way makes the other carry every one.
    pub lan_every: u32,
    pub preempt: Option<Duration>,
    /// After a failed fence, ask again this much later.
    pub fence_retry: Duration,
    /// How long a starting node waits to hear its peers before it treats the silent ones as
    /// dead (and fences them). At least the dead time; longer in practice, since agents are
    /// rarely started within milliseconds of each other.
    pub startup_grace: Duration,
    /// How long the peers wait for an agent that said it is restarting.
    pub restart_grace: Duration,
    /// While the dedicated line's carrier is down, probe each peer's data plane on the LAN
    /// this often; its kernel answers whatever its agent is doing.
    pub probe_interval: Duration,
    /// A peer whose kernel has not answered (nor its agent sent) for this long, from a moment
    /// within the dead time of the line going dark, is dead: the LAN confirms what the dark
    /// line suggested.
    pub probe_confirm: Duration,
    /// A peer whose kernel reports that its agent died unannounced is dead at once (true),
    /// or is given `restart_grace` for a new agent, as for a planned restart (false).
    pub exit_takes_over: bool,
    pub key: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct AddrSpec {
    pub ip: IpAddr,
    /// Preferred owner first.
    pub preference: Vec<NodeId>,
}

impl CoreConfig {
    fn dead_after(&self, misses: u32) -> Duration {
        self.interval * misses
    }
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    OpenGate {
        addr: AddrId,
    },
    CloseGate {
        addr: AddrId,
    },
    /// Hand the address over: this node no longer serves it, and what still reaches it
    /// (clients whose ARP cache is not yet updated) goes on to `to`, the new server.
    ForwardGate {
        addr: AddrId,
        to: NodeId,
    },
    /// This node is about to serve the address, which `from` still serves: pass what `from`
    /// forwards once it lets go (so a request it forwards before this node has heard that it
    /// let go is served, not dropped), and nothing else.
    ReceiveGate {
        addr: AddrId,
        from: NodeId,
    },
    /// Gratuitous ARP / unsolicited NA for an address just opened.
    Announce {
        addr: AddrId,
    },
    /// Run the fence command for this peer and report with `handle_fence`.
    Fence {
        peer: NodeId,
    },
    /// Send this datagram to `peer` on `path`. `urgent`: the peer must act on it at once (this
    /// node's summary changed, or it is stopping); otherwise it only says that this node is
    /// alive, and the peer may read it at its own next tick.
    Send {
        peer: NodeId,
        path: usize,
        bytes: Vec<u8>,
        urgent: bool,
    },
    /// Something an operator should see in the log.
    Notice(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceState {
    /// Not needed (alive) or not yet asked for.
    None,
    Pending,
    Fenced,
    /// The fence command failed at this time: nothing is taken from this peer; retried later.
    Failed(Duration),
}

/// The latest authentic summary from a peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Summary {
    lan_up: bool,
    ready: bool,
    serving: Vec<(AddrId, u64)>,
    /// Whom the peer thinks should serve each address (none before it is ready).
    votes: Vec<(AddrId, NodeId)>,
}

#[derive(Clone, Debug)]
struct Peer {
    last_heard: Vec<Option<Duration>>,
    guard: ReplayGuard,
    summary: Option<Summary>,
    alive: bool,
    /// Since when the peer has been eligible without a break (preempt hysteresis).
    eligible_since: Option<Duration>,
    fence: FenceState,
    /// When `alive` last changed.
    since: Option<Duration>,
    /// The peer's agent said it is restarting: its silence counts only after this.
    restart_until: Option<Duration>,
    /// The peer's newest incarnation seen, addressed in what this node sends it.
    heard_incarnation: u64,
    rtt: Vec<Option<Duration>>,
    /// Per path: the last `sent_at_us` heard and when, to echo it back.
    echo: Vec<Option<(u64, Duration)>>,
    /// The incarnation last heard and the hash of its exit token (kernel-assisted liveness).
    exit_commit: Option<(u64, [u8; wire::TOKEN_LEN])>,
    /// The newest of this node's heartbeats (its `sent_at_us`) the peer had heard when it
    /// last wrote: its summary and votes take into account what this node said until then.
    acked_us: u64,
    /// When the peer's data plane last answered a probe, and the newest probe it answered.
    probe_answered: Option<Duration>,
    probe_answered_seq: u64,
    /// `sent_at_us` of the heartbeat `summary` came from: an older one arriving later on
    /// another path must not replace it.
    summary_sent_us: u64,
    summary_incarnation: u64,
    /// Per path: the peer's last heartbeat there said it had heard this node's there lately
    /// (its echo is fresh).
    hears_us: Vec<bool>,
}

#[derive(Clone, Debug, Default)]
struct Addr {
    open: bool,
    epoch: u64,
    /// The highest epoch seen for this address anywhere.
    max_epoch: u64,
    /// An operator's switchover: the node, and the order's version (the newest wins).
    moved_to: Option<(NodeId, u64)>,
    /// When this node last gave it up (`sent_at_us` of the heartbeat that said so): it may
    /// open it again only on votes cast after the peers heard that.
    released_us: u64,
    /// Handed over to this live peer: the gate forwards to it.
    forwarding: Option<NodeId>,
    /// About to be handed over by this live peer: the gate passes what it forwards.
    receiving: Option<NodeId>,
    /// When this node's vote for the address last changed (`sent_at_us` of the heartbeat
    /// that said so): a handover to the node voted for waits for a heartbeat of it that
    /// heard this one.
    voted_us: u64,
}

/// Counts of datagrams refused, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RejectCounts(pub std::collections::BTreeMap<&'static str, u64>);

pub struct Core {
    cfg: CoreConfig,
    incarnation: u64,
    started: Duration,
    ready: bool,
    lan_up: bool,
    peers: Vec<Peer>,
    addrs: Vec<Addr>,
    seq: Vec<u64>,
    next_heartbeat: Duration,
    /// Periodic heartbeat rounds sent (the LAN's share is counted by it).
    rounds: u64,
    last_tick: Option<Duration>,
    /// When this node last ran (a timeout or datagrams), for the late wake-up credit.
    last_awake: Option<Duration>,
    actions: VecDeque<Action>,
    rejected: RejectCounts,
    /// This node's vote per address, as last decided.
    votes: Vec<Option<NodeId>>,
    restarting: bool,
    /// Since when the dedicated line is dark; from when a peer's silence on the LAN counts
    /// towards the short confirmation (a late wake-up restarts it); the next probe, and the
    /// last probe's number.
    dark_since: Option<Duration>,
    confirm_from: Duration,
    next_probe: Duration,
    probe_seq: u64,
    /// Sent in every heartbeat: the hash of the token this node's data plane reveals if the
    /// agent dies (zeros: no kernel assistance).
    exit_commit: [u8; wire::TOKEN_LEN],
}

impl Core {
    /// A core starting at `now`. `open` lists the gates found open in the data plane (an agent
    /// restart) with their epochs; every other address's gate is closed first thing.
    pub fn new(cfg: CoreConfig, incarnation: u64, now: Duration, open: &[(AddrId, u64)]) -> Self {
        // Votes name nodes by index: every node must index them alike.
        assert!(
            cfg.nodes.windows(2).all(|w| w[0] < w[1]),
            "node names must be sorted and unique"
        );
        assert!(cfg.nodes.len() <= u8::MAX as usize, "at most 255 nodes");
        let n = cfg.nodes.len();
        let peer = Peer {
            last_heard: vec![None; cfg.paths],
            guard: ReplayGuard::default(),
            summary: None,
            alive: false,
            eligible_since: None,
            fence: FenceState::None,
            since: None,
            restart_until: None,
            heard_incarnation: 0,
            rtt: vec![None; cfg.paths],
            echo: vec![None; cfg.paths],
            exit_commit: None,
            acked_us: 0,
            probe_answered: None,
            probe_answered_seq: 0,
            summary_sent_us: 0,
            summary_incarnation: 0,
            hears_us: vec![false; cfg.paths],
        };
        let mut addrs = vec![Addr::default(); cfg.addresses.len()];
        for &(a, epoch) in open {
            addrs[a] = Addr {
                open: true,
                epoch,
                max_epoch: epoch,
                moved_to: None,
                released_us: 0,
                forwarding: None,
                receiving: None,
                voted_us: 0,
            };
        }
        let mut core = Core {
            incarnation,
            started: now,
            ready: false,
            lan_up: true,
            peers: vec![peer; n],
            seq: vec![0; cfg.paths],
            next_heartbeat: now,
            rounds: 0,
            last_tick: None,
            last_awake: None,
            actions: VecDeque::new(),
            rejected: RejectCounts::default(),
            votes: vec![None; addrs.len()],
            restarting: false,
            exit_commit: [0; wire::TOKEN_LEN],
            dark_since: None,
            confirm_from: now,
            next_probe: now,
            probe_seq: 0,
            addrs,
            cfg,
        };
        for a in 0..core.addrs.len() {
            if !core.addrs[a].open {
                core.actions.push_back(Action::CloseGate { addr: a });
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
            if let FenceState::Failed(at) = self.peers[p].fence {
                consider(at + self.cfg.fence_retry);
            }
            if let (Some(since), Some(delay)) = (self.peers[p].eligible_since, self.cfg.preempt) {
                consider(since + delay);
            }
        }
        if !self.ready {
            consider(self.started + self.cfg.startup_grace);
        }
        if self.probing(self.last_tick.unwrap_or(self.started)) {
            consider(self.next_probe);
        }
        t
    }

    /// The peers' data planes are probed on the LAN while a dark dedicated line may still be
    /// the first sign of a crash: from its carrier drop until the short confirmation can no
    /// longer apply.
    fn probing(&self, now: Duration) -> bool {
        self.dark_since.is_some_and(|d| {
            now < d + self.cfg.dead_after(self.cfg.misses) + self.cfg.probe_confirm
        })
    }

    /// The short deadline for peer `p`, if it applies: the line went dark and the peer fell
    /// silent on the LAN (agent and kernel) within the dead time of that, as a crash does.
    /// A peer heard well after the line went dark is alive with one path lost; from then on
    /// only the whole dead time counts (a LAN stall must not become a takeover, invariant 5).
    fn confirm_deadline(&self, p: NodeId) -> Option<Duration> {
        let dark = self.dark_since?;
        let peer = &self.peers[p];
        let last = *peer.last_heard.iter().flatten().max()?;
        let evidence = last
            .max(peer.probe_answered.unwrap_or_default())
            .max(self.confirm_from);
        (evidence < dark + self.cfg.dead_after(self.cfg.misses))
            .then(|| evidence + self.cfg.probe_confirm)
    }

    /// When peer `p` will be declared dead if nothing more is heard.
    fn death_deadline(&self, p: NodeId) -> Option<Duration> {
        let peer = &self.peers[p];
        if !peer.alive {
            return None;
        }
        let last = *peer.last_heard.iter().flatten().max()?;
        // A live kernel is not a live server: an agent silent for the whole dead time is dead
        // even if its kernel answers probes.
        let silent = last + self.cfg.dead_after(self.cfg.misses);
        let deadline = self.confirm_deadline(p).map_or(silent, |c| c.min(silent));
        Some(peer.restart_until.map_or(deadline, |r| r.max(deadline)))
    }

    /// A datagram arrived on `path`. Returns why it was refused, if it was.
    pub fn handle_datagram(
        &mut self,
        now: Duration,
        path: usize,
        bytes: &[u8],
    ) -> Result<(), Rejected> {
        self.awake(now);
        let result = self.accept(now, path, bytes);
        if let Err(r) = result {
            *self.rejected.0.entry(r.as_str()).or_default() += 1;
        }
        result
    }

    fn addr_index(&self, ip: &IpAddr) -> Result<AddrId, Rejected> {
        self.cfg
            .addresses
            .iter()
            .position(|s| s.ip == *ip)
            .ok_or(Rejected::Malformed)
    }

    fn node_index(&self, n: u8) -> Result<NodeId, Rejected> {
        let n = n as NodeId;
        if n < self.cfg.nodes.len() {
            Ok(n)
        } else {
            Err(Rejected::Malformed)
        }
    }

    fn accept(&mut self, now: Duration, path: usize, bytes: &[u8]) -> Result<(), Rejected> {
        if wire::is_notice(bytes) {
            return self.accept_notice(now, bytes);
        }
        if wire::is_probe_answer(bytes) {
            return self.accept_probe_answer(now, path, bytes);
        }
        let hb = wire::decode(bytes, &self.cfg.key)?;
        let p = self
            .cfg
            .nodes
            .iter()
            .position(|n| *n == hb.sender)
            .ok_or(Rejected::Malformed)?;
        if p == self.cfg.me || hb.path as usize != path || path >= self.cfg.paths {
            return Err(Rejected::Malformed);
        }
        // Everything is checked before anything is changed: a bad field refuses it whole.
        let serving = hb
            .serving
            .iter()
            .map(|(ip, e)| Ok((self.addr_index(ip)?, *e)))
            .collect::<Result<Vec<_>, _>>()?;
        let votes = hb
            .votes
            .iter()
            .map(|(ip, n)| Ok((self.addr_index(ip)?, self.node_index(*n)?)))
            .collect::<Result<Vec<_>, _>>()?;
        let overrides = hb
            .overrides
            .iter()
            .map(|(ip, n, v)| Ok((self.addr_index(ip)?, self.node_index(*n)?, *v)))
            .collect::<Result<Vec<_>, Rejected>>()?;
        // Only what is addressed to this incarnation counts; anything else only says which
        // incarnation of the peer to address (the newest wins, so a replay cannot hold it back).
        let peer = &mut self.peers[p];
        if hb.incarnation > peer.heard_incarnation {
            // A new incarnation of the peer: what it echoes is about its new life only.
            peer.heard_incarnation = hb.incarnation;
            peer.echo = vec![None; self.cfg.paths];
        }
        if hb.peer_incarnation != self.incarnation {
            return Err(Rejected::Unaddressed);
        }
        self.peers[p].guard.check(&hb)?;

        let us = now.as_micros() as u64;
        let fresh = self.fresh(path);
        let peer = &mut self.peers[p];
        peer.last_heard[path] = Some(now);
        // A message that crossed a newer one (the guard takes it, once) proves the peer alive,
        // and says nothing newer than what was already taken.
        let latest_here = peer.echo[path].is_none_or(|(sent, _)| hb.sent_at_us >= sent);
        if hb.sent_at_us >= peer.summary_sent_us {
            peer.restart_until = hb.restarting.then_some(now + self.cfg.restart_grace);
        }
        if !latest_here {
            return Ok(());
        }
        peer.hears_us[path] = hb.echo_us != 0 && u128::from(hb.echo_hold_us) <= fresh.as_micros();
        peer.echo[path] = Some((hb.sent_at_us, now));
        if hb.echo_us != 0 && us >= hb.echo_us + hb.echo_hold_us as u64 {
            peer.rtt[path] = Some(Duration::from_micros(
                us - hb.echo_us - hb.echo_hold_us as u64,
            ));
        }
        let mut changed = false;
        if !peer.alive {
            // Decide again even if its summary reads as before it died.
            changed = true;
            peer.alive = true;
            peer.since = Some(now);
            // A peer we hear again (restarted, or back after a fence) needs a new fence if it
            // dies again.
            peer.fence = FenceState::None;
            self.actions.push_back(Action::Notice(format!(
                "peer {} is alive",
                self.cfg.nodes[p]
            )));
        }
        for &(a, epoch) in &serving {
            self.addrs[a].max_epoch = self.addrs[a].max_epoch.max(epoch);
        }
        for (a, node, version) in overrides {
            // Newest order wins; equal versions (two operators at once) by node index.
            if self.addrs[a]
                .moved_to
                .is_none_or(|(n, v)| (version, node) > (v, n))
            {
                self.addrs[a].moved_to = Some((node, version));
                changed = true;
            }
        }
        let summary = Summary {
            lan_up: hb.lan_up,
            ready: hb.ready,
            serving,
            votes,
        };
        let peer = &mut self.peers[p];
        if hb.incarnation != peer.summary_incarnation {
            peer.summary_incarnation = hb.incarnation;
            peer.summary_sent_us = 0;
            peer.acked_us = 0;
        }
        peer.exit_commit =
            (hb.exit_commit != [0; wire::TOKEN_LEN]).then_some((hb.incarnation, hb.exit_commit));
        // A summary written before the one held (it came by a slower path) is not newer.
        let newer = hb.sent_at_us >= peer.summary_sent_us;
        if newer {
            peer.summary_sent_us = hb.sent_at_us;
            peer.acked_us = peer.acked_us.max(hb.echo_us);
            changed |= peer.summary.as_ref() != Some(&summary);
            peer.summary = Some(summary);
        }
        if changed {
            self.decide(now);
        }
        Ok(())
    }

    /// A peer's data plane says its agent died: the token must be the one the peer's current
    /// incarnation committed to in its signed heartbeats. A death announced for a restart
    /// (the peer said so) is no death; one for a peer already dead changes nothing.
    fn accept_notice(&mut self, now: Duration, bytes: &[u8]) -> Result<(), Rejected> {
        let (incarnation, token) = wire::decode_notice(bytes)?;
        let proof = Some((incarnation, wire::commit(&token)));
        let p = self
            .others()
            .find(|&p| self.peers[p].exit_commit == proof)
            .ok_or(Rejected::UnknownNotice)?;
        let peer = &mut self.peers[p];
        if !peer.alive || peer.restart_until.is_some() {
            return Ok(());
        }
        if self.cfg.exit_takes_over {
            self.declare_dead(now, p, "its kernel reports that its agent exited");
            self.decide(now);
        } else {
            peer.restart_until = Some(now + self.cfg.restart_grace);
            self.actions.push_back(Action::Notice(format!(
                "the agent of peer {} exited; waiting {:?} for it to be restarted",
                self.cfg.nodes[p], self.cfg.restart_grace
            )));
        }
        Ok(())
    }

    /// A peer's data plane answered one of this node's probes: its kernel and the LAN work.
    fn accept_probe_answer(
        &mut self,
        now: Duration,
        path: usize,
        bytes: &[u8],
    ) -> Result<(), Rejected> {
        let (incarnation, seq, p) = wire::decode_probe_answer(bytes, &self.cfg.key)?;
        let p = self.node_index(p)?;
        if incarnation != self.incarnation || p == self.cfg.me || path + 1 != self.cfg.paths {
            return Err(Rejected::Malformed);
        }
        let peer = &mut self.peers[p];
        if seq <= peer.probe_answered_seq || seq > self.probe_seq {
            return Err(Rejected::Replayed);
        }
        peer.probe_answered_seq = seq;
        peer.probe_answered = Some(now);
        Ok(())
    }

    /// While the line is dark: a probe to every live peer's data plane, on the LAN.
    fn send_probes(&mut self, now: Duration) {
        let lan = self.cfg.paths - 1;
        for p in self.others().collect::<Vec<_>>() {
            if !self.peers[p].alive {
                continue;
            }
            self.probe_seq += 1;
            let bytes =
                wire::encode_probe(&self.cfg.key, self.incarnation, self.probe_seq, p as u8);
            self.actions.push_back(Action::Send {
                peer: p,
                path: lan,
                bytes: bytes.to_vec(),
                urgent: false,
            });
        }
        self.next_probe = now + self.cfg.probe_interval;
    }

    fn declare_dead(&mut self, now: Duration, p: NodeId, why: &str) {
        let peer = &mut self.peers[p];
        peer.alive = false;
        peer.since = Some(now);
        peer.eligible_since = None;
        self.actions.push_back(Action::Notice(format!(
            "peer {} is dead: {why}",
            self.cfg.nodes[p]
        )));
    }

    /// An operator moves address `a` to node `to` (maintenance). The order spreads with the
    /// heartbeats; the current server releases, then `to` opens, as in a failback.
    pub fn handle_switchover(&mut self, now: Duration, a: AddrId, to: NodeId) {
        let version = self.addrs[a].moved_to.map_or(0, |(_, v)| v) + 1;
        self.addrs[a].moved_to = Some((to, version));
        self.actions.push_back(Action::Notice(format!(
            "switchover of {} to {} (order {version})",
            self.cfg.addresses[a].ip, self.cfg.nodes[to]
        )));
        self.decide(now);
        self.send_heartbeats(now, true);
    }

    /// Our LAN interface's carrier/operational state changed (netlink).
    pub fn handle_lan(&mut self, now: Duration, up: bool) {
        if self.lan_up == up {
            return;
        }
        self.lan_up = up;
        self.actions.push_back(Action::Notice(format!(
            "LAN link {}",
            if up { "up" } else { "down" }
        )));
        self.decide(now);
        // Tell the peers at once (on the paths that still work), not at the next heartbeat.
        self.send_heartbeats(now, true);
    }

    /// Our end of the dedicated line lost or regained carrier.
    pub fn handle_dedicated_carrier(&mut self, now: Duration, up: bool) {
        // Only a change counts (netlink reports a link for other reasons too).
        if self.dark_since.is_none() != up {
            self.dark_since = (!up).then_some(now);
            self.confirm_from = now;
            self.next_probe = now;
            self.actions.push_back(Action::Notice(format!(
                "dedicated line carrier {}",
                if up { "up" } else { "down" }
            )));
            self.handle_timeout(now);
        }
    }

    /// The fence command for `peer` finished.
    pub fn handle_fence(&mut self, now: Duration, peer: NodeId, ok: bool) {
        if self.peers[peer].fence != FenceState::Pending {
            return;
        }
        self.peers[peer].fence = if ok {
            FenceState::Fenced
        } else {
            FenceState::Failed(now)
        };
        let name = &self.cfg.nodes[peer];
        self.actions.push_back(Action::Notice(if ok {
            format!("peer {name} fenced")
        } else {
            format!("fencing peer {name} failed: not taking over its addresses")
        }));
        self.decide(now);
    }

    /// Datagrams were just handled (a wake-up the shell had anyway: the shell reads periodic
    /// heartbeats at this node's own tick, and wakes early only for urgent ones). If this
    /// node's next heartbeat is due within half an interval, it goes now, and the next one a
    /// little over an interval later: one wake-up instead of two. Two heartbeats are never
    /// more than 1⅛ intervals apart.
    pub fn heard(&mut self, now: Duration) {
        if now + self.cfg.interval / 2 >= self.next_heartbeat && now < self.next_heartbeat {
            // The tick, early: everything periodic happens as if the timer had fired.
            self.next_heartbeat = now;
            self.handle_timeout(now);
            self.next_heartbeat += self.cfg.interval / 8;
        } else {
            self.awake(now);
        }
    }

    /// This node runs at `now`. A detector that woke late does not count the silence it
    /// slept through: credit the peers with the time this node was not running.
    fn awake(&mut self, now: Duration) {
        if let Some(last) = self.last_awake {
            let slept = now.saturating_sub(last);
            if slept > self.cfg.interval * 2 {
                let credit = slept - self.cfg.interval;
                for p in self.others().collect::<Vec<_>>() {
                    let peer = &mut self.peers[p];
                    for h in peer
                        .last_heard
                        .iter_mut()
                        .chain([&mut peer.probe_answered])
                        .flatten()
                    {
                        *h = (*h + credit).min(now);
                    }
                }
            }
            // Probe rounds missed while this node did not run: the confirmation (a window
            // shorter than the credit's threshold) starts again, now.
            if slept > self.cfg.probe_interval * 2 {
                self.confirm_from = now;
            }
        }
        self.last_awake = Some(now);
    }

    pub fn handle_timeout(&mut self, now: Duration) {
        self.awake(now);
        self.last_tick = Some(now);
        for p in self.others().collect::<Vec<_>>() {
            if self.death_deadline(p).is_some_and(|d| now >= d) {
                let why = if self.confirm_deadline(p).is_some_and(|d| now >= d) {
                    "the dedicated line is dark and neither its agent nor its kernel answers on the LAN"
                } else {
                    "every path silent"
                };
                self.declare_dead(now, p, why);
            }
        }
        if !self.ready
            && (self.others().all(|p| self.peers[p].alive)
                || now >= self.started + self.cfg.startup_grace)
        {
            self.ready = true;
        }
        if now >= self.next_heartbeat {
            self.send_heartbeats(now, false);
        }
        if self.probing(now) && now >= self.next_probe {
            self.send_probes(now);
        }
        self.decide(now);
    }

    fn eligible(&self, n: NodeId) -> bool {
        if n == self.cfg.me {
            return self.ready && self.lan_up;
        }
        let p = &self.peers[n];
        p.alive && p.summary.as_ref().is_some_and(|s| s.lan_up && s.ready)
    }

    /// Who serves `a` now as far as this node knows, with the epoch: the highest epoch wins
    /// if views briefly overlap (only the newest server keeps it).
    fn current(&self, a: AddrId) -> Option<(NodeId, u64)> {
        let mut best = self.addrs[a]
            .open
            .then_some((self.cfg.me, self.addrs[a].epoch));
        for p in self.others() {
            let Some(s) = self.peers[p]
                .summary
                .as_ref()
                .filter(|_| self.peers[p].alive)
            else {
                continue;
            };
            if let Some(&(_, e)) = s.serving.iter().find(|(x, _)| *x == a) {
                // Newer epoch first; on a tie (never expected) the lower node index.
                if best
                    .is_none_or(|(bn, be)| (e, std::cmp::Reverse(p)) > (be, std::cmp::Reverse(bn)))
                {
                    best = Some((p, e));
                }
            }
        }
        best
    }

    /// Who should serve `a`: the current server while it is eligible, unless a more
    /// preferred node has been eligible for the preempt delay; else the first eligible node.
    fn target(&self, now: Duration, a: AddrId) -> Option<NodeId> {
        // A switchover puts its node first, at once (no preempt delay) and for good (preempt
        // does not pull it back); while that node is not eligible the usual order applies.
        if let Some((n, _)) = self.addrs[a].moved_to {
            if self.eligible(n) {
                return Some(n);
            }
        }
        let pref = &self.cfg.addresses[a].preference;
        let first = pref.iter().copied().find(|&n| self.eligible(n));
        let Some((cur, _)) = self.current(a).filter(|(c, _)| self.eligible(*c)) else {
            return first;
        };
        let Some(delay) = self.cfg.preempt else {
            return Some(cur);
        };
        let rank = |n: NodeId| pref.iter().position(|&x| x == n).unwrap_or(usize::MAX);
        let settled = |n: NodeId| {
            n == self.cfg.me
                || self.peers[n]
                    .eligible_since
                    .is_some_and(|s| now >= s + delay)
        };
        match pref
            .iter()
            .copied()
            .find(|&n| self.eligible(n) && settled(n))
        {
            Some(b) if rank(b) < rank(cur) => Some(b),
            _ => Some(cur),
        }
    }

    /// May this node open `a` now? Every other node must be alive and not serving it, or
    /// dead and fenced. Asks for the fences it still needs.
    fn safe_to_open(&mut self, now: Duration, a: AddrId) -> bool {
        let mut safe = true;
        for p in self.others().collect::<Vec<_>>() {
            let peer = &self.peers[p];
            if peer.alive {
                // A live peer must not serve it and must agree that this node should, knowing
                // that this node gave it up if it did (it may have taken it since).
                let me = self.cfg.me;
                let agrees = peer.acked_us >= self.addrs[a].released_us
                    && peer.summary.as_ref().is_some_and(|s| {
                        !s.serving.iter().any(|(x, _)| *x == a) && s.votes.contains(&(a, me))
                    });
                if !agrees {
                    safe = false;
                }
                continue;
            }
            match peer.fence {
                FenceState::Fenced => {}
                FenceState::Pending => safe = false,
                FenceState::Failed(at) if now < at + self.cfg.fence_retry => safe = false,
                FenceState::None | FenceState::Failed(_) => {
                    self.peers[p].fence = FenceState::Pending;
                    self.actions.push_back(Action::Fence { peer: p });
                    safe = false;
                }
            }
        }
        safe
    }

    /// Does live peer `t` vote to serve `a` itself (so its gate receives what is forwarded)?
    fn votes_for_itself(&self, t: NodeId, a: AddrId) -> bool {
        self.peers[t]
            .summary
            .as_ref()
            .is_some_and(|s| s.votes.contains(&(a, t)))
    }

    /// Opens and closes this node's gates to match the targets.
    fn decide(&mut self, now: Duration) {
        for p in self.others().collect::<Vec<_>>() {
            let e = self.eligible(p);
            let peer = &mut self.peers[p];
            match (e, peer.eligible_since) {
                (true, None) => peer.eligible_since = Some(now),
                (false, Some(_)) => peer.eligible_since = None,
                _ => {}
            }
        }
        let me = self.cfg.me;
        let mut changed = false;
        for a in 0..self.addrs.len() {
            // Before it is ready a node has no opinion and opens nothing.
            let target = if self.ready {
                self.target(now, a)
            } else {
                None
            };
            if self.votes[a] != target {
                self.votes[a] = target;
                // The heartbeat that says so leaves now (`changed`), stamped with this.
                self.addrs[a].voted_us = (now.as_micros() as u64).max(1);
                changed = true;
            }
            if self.addrs[a].open {
                // A peer serving it in a newer epoch wins (e.g. after a partition); otherwise
                // keep it until ready (an agent restart keeps the gates it finds), then follow
                // the target (link down, preempt).
                let newer_elsewhere = self.current(a).is_some_and(|(c, _)| c != me);
                // To a live peer over a working LAN (failback, switchover): forward what
                // still comes here. Otherwise nobody can take it: closed.
                let to = target.filter(|&t| t != me && self.peers[t].alive && self.lan_up);
                // A handover waits until the new server, having heard this node's vote for
                // it, votes for itself: its gate then receives what this one forwards. Until
                // then this node goes on serving.
                let hold = !newer_elsewhere
                    && to.is_some_and(|t| {
                        !(self.votes_for_itself(t, a)
                            && self.peers[t].acked_us >= self.addrs[a].voted_us)
                    });
                if (newer_elsewhere || (self.ready && target != Some(me))) && !hold {
                    self.addrs[a].open = false;
                    // The heartbeat that says so leaves now (`changed`), stamped with this.
                    self.addrs[a].released_us = (now.as_micros() as u64).max(1);
                    self.addrs[a].forwarding = to;
                    self.actions.push_back(match to {
                        Some(to) => Action::ForwardGate { addr: a, to },
                        None => Action::CloseGate { addr: a },
                    });
                    changed = true;
                }
            } else {
                // The peer it was handed to is gone or no longer the one: stop forwarding
                // (opening it here, if that is next, waits for the next decision).
                let stopped = self.addrs[a]
                    .forwarding
                    .is_some_and(|t| target != Some(t) || !self.peers[t].alive || !self.lan_up);
                if stopped {
                    self.addrs[a].forwarding = None;
                }
                if self.addrs[a].forwarding.is_some() {
                    // Still handed over to the right peer: forwarding goes on.
                } else if !stopped && target == Some(me) && self.safe_to_open(now, a) {
                    let epoch = self.addrs[a].max_epoch.max(self.addrs[a].epoch) + 1;
                    self.addrs[a] = Addr {
                        open: true,
                        epoch,
                        max_epoch: epoch,
                        forwarding: None,
                        receiving: None,
                        ..self.addrs[a]
                    };
                    self.actions.push_back(Action::OpenGate { addr: a });
                    self.actions.push_back(Action::Announce { addr: a });
                    changed = true;
                } else {
                    // The live peer that serves it is about to hand it over (it votes for
                    // this node, as this node does): receive what it forwards, and say so at
                    // once (the heartbeat that hears its vote lets it go). Anything else:
                    // closed.
                    let from = self.current(a).map(|(c, _)| c).filter(|&c| {
                        target == Some(me)
                            && c != me
                            && self.peers[c].alive
                            && self.lan_up
                            && self.peers[c]
                                .summary
                                .as_ref()
                                .is_some_and(|s| s.votes.contains(&(a, me)))
                    });
                    if self.addrs[a].receiving != from || stopped {
                        self.addrs[a].receiving = from;
                        self.actions.push_back(match from {
                            Some(from) => Action::ReceiveGate { addr: a, from },
                            None => Action::CloseGate { addr: a },
                        });
                        changed = true;
                    }
                }
            }
        }
        if changed {
            self.send_heartbeats(now, true);
        }
    }

    /// The agent is stopping to be restarted: tell the peers (one heartbeat flagged
    /// `restarting` on every path) so that they wait for it instead of fencing it. The gates
    /// stay as they are; the next agent finds them.
    pub fn shutdown(&mut self, now: Duration) {
        self.restarting = true;
        self.send_heartbeats(now, true);
    }

    /// How recent the last heartbeat on `path` must be for it to count as working: the
    /// longest regular gap while the paths take turns (the line skips one round in
    /// `lan_every`, the LAN carries one), and two intervals for a late wake-up.
    fn fresh(&self, path: usize) -> Duration {
        let gap = if path + 1 == self.cfg.paths {
            self.cfg.lan_every
        } else {
            2
        };
        self.cfg.interval * (gap + 2)
    }

    /// `path` to `p` works both ways: this node heard `p` on it lately, and `p` said it heard
    /// this node there.
    fn works_both_ways(&self, p: NodeId, path: usize, now: Duration) -> bool {
        let peer = &self.peers[p];
        peer.hears_us[path] && peer.last_heard[path].is_some_and(|t| now <= t + self.fresh(path))
    }

    /// May this round's periodic heartbeat to `p` on `path` be left out? While both paths
    /// work both ways they take turns: the LAN carries one round in `lan_every`, the line the
    /// others, so the peer hears this node every interval by one path, and each path is
    /// heard at least every `lan_every` intervals. If a path fails silently (carrier up),
    /// each side sees that within its freshness window (its own silence, or the other's stale
    /// echo), and the other path goes back to every interval; meanwhile it kept its turns,
    /// so the peer's longest gap is `lan_every` intervals (at most `misses - 2`). A dark line
    /// carries nothing, and the LAN every round.
    fn may_rest(&self, p: NodeId, path: usize, now: Duration) -> bool {
        if self.cfg.paths < 2 || self.cfg.lan_every < 2 || self.dark_since.is_some() {
            return false;
        }
        let lan = self.cfg.paths - 1;
        let turn = if self.rounds.is_multiple_of(u64::from(self.cfg.lan_every)) {
            lan
        } else {
            0
        };
        path != turn && self.works_both_ways(p, turn, now) && self.works_both_ways(p, path, now)
    }

    /// A heartbeat to every peer on every working path; `urgent` when it carries news.
    fn send_heartbeats(&mut self, now: Duration, urgent: bool) {
        let serving: Vec<(IpAddr, u64)> = self
            .addrs
            .iter()
            .enumerate()
            .filter(|(_, a)| a.open)
            .map(|(i, a)| (self.cfg.addresses[i].ip, a.epoch))
            .collect();
        let votes: Vec<(IpAddr, u8)> = self
            .votes
            .iter()
            .enumerate()
            .filter_map(|(a, v)| v.map(|n| (self.cfg.addresses[a].ip, n as u8)))
            .collect();
        let overrides: Vec<(IpAddr, u8, u64)> = self
            .addrs
            .iter()
            .enumerate()
            .filter_map(|(a, x)| {
                x.moved_to
                    .map(|(n, v)| (self.cfg.addresses[a].ip, n as u8, v))
            })
            .collect();
        let us = now.as_micros() as u64;
        for path in 0..self.cfg.paths {
            // Nothing goes out on a dedicated line without carrier.
            if path == 0 && self.cfg.paths > 1 && self.dark_since.is_some() {
                continue;
            }
            self.seq[path] += 1;
            for p in self.others().collect::<Vec<_>>() {
                if !urgent && self.may_rest(p, path, now) {
                    continue;
                }
                let (echo_us, echo_hold_us) = match self.peers[p].echo[path] {
                    Some((sent, at)) => (
                        sent,
                        (now.saturating_sub(at)).as_micros().min(u32::MAX as u128) as u32,
                    ),
                    None => (0, 0),
                };
                let hb = Heartbeat {
                    sender: self.cfg.nodes[self.cfg.me].clone(),
                    incarnation: self.incarnation,
                    peer_incarnation: self.peers[p].heard_incarnation,
                    seq: self.seq[path],
                    path: path as u8,
                    sent_at_us: us.max(1),
                    echo_us,
                    echo_hold_us,
                    exit_commit: self.exit_commit,
                    lan_up: self.lan_up,
                    ready: self.ready,
                    restarting: self.restarting,
                    serving: serving.clone(),
                    votes: votes.clone(),
                    overrides: overrides.clone(),
                };
                self.actions.push_back(Action::Send {
                    peer: p,
                    path,
                    bytes: wire::encode(&hb, &self.cfg.key),
                    urgent,
                });
            }
        }
        if !urgent {
            self.rounds += 1;
        }
        self.next_heartbeat = now + self.cfg.interval;
        // Probes due soon go with the heartbeats: one wake-up, not two.
        if self.probing(now) && now + self.cfg.probe_interval / 2 >= self.next_probe {
            self.send_probes(now);
        }
    }

    // ---- read-only views for status and tests ----

    pub fn is_open(&self, a: AddrId) -> bool {
        self.addrs[a].open
    }

    /// The live peer this node forwards address `a` to (handed over), if any.
    pub fn forwarding(&self, a: AddrId) -> Option<NodeId> {
        self.addrs[a].forwarding
    }

    /// The live peer this node's gate for `a` receives from (a handover under way).
    pub fn receiving(&self, a: AddrId) -> Option<NodeId> {
        self.addrs[a].receiving
    }

    pub fn epoch(&self, a: AddrId) -> u64 {
        self.addrs[a].epoch
    }

    pub fn lan_up(&self) -> bool {
        self.lan_up
    }

    /// Who serves `a` as far as this node knows (itself included).
    pub fn server(&self, a: AddrId) -> Option<NodeId> {
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
        self.peers[p].summary.as_ref().map(|s| s.lan_up)
    }

    /// Whether peer `p` is ready as its latest authentic heartbeat said (None: never heard).
    pub fn peer_ready(&self, p: NodeId) -> Option<bool> {
        self.peers[p].summary.as_ref().map(|s| s.ready)
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

    pub fn rejected(&self) -> &RejectCounts {
        &self.rejected
    }

    /// Everything that decides behaviour, for checking that a refused datagram changed nothing.
    pub fn digest(&self) -> String {
        format!(
            "{:?}|{}|{}|{:?}",
            self.addrs
                .iter()
                .map(|a| (a.open, a.epoch, a.max_epoch, a.moved_to))
                .collect::<Vec<_>>(),
            self.ready,
            self.lan_up,
            self.peers
                .iter()
                .map(|p| (
                    p.alive,
                    p.last_heard.clone(),
                    p.summary.clone(),
                    p.fence,
                    p.guard.clone(),
                    p.exit_commit
                ))
                .collect::<Vec<_>>()
        )
    }
}

#[cfg(test)]
mod tests;
