//! What a node knows of one peer: liveness per path, and its summary per resource.
use std::time::Duration;

use super::{CoreConfig, FenceState, Mismatch, NodeId, ResId};
use crate::core::wire::{ReplayGuard, TOKEN_LEN};

#[derive(Clone, Debug)]
pub(super) struct Peer {
    pub last_heard: Vec<Option<Duration>>,
    /// Per path, as last reported (lost after the dead time of silence on it).
    pub path_up: Vec<bool>,
    pub guard: ReplayGuard,
    pub alive: bool,
    /// Since when the peer has been eligible without a break (preempt hysteresis).
    pub eligible_since: Option<Duration>,
    pub fence: FenceState,
    /// When `alive` last changed.
    pub since: Option<Duration>,
    /// The peer's agent said it is restarting: its silence counts only after this.
    pub restart_until: Option<Duration>,
    /// The peer's newest incarnation seen, addressed in what this node sends it.
    pub heard_incarnation: u64,
    pub rtt: Vec<Option<Duration>>,
    /// Per path: the last `sent_at_us` heard and when, to echo it back.
    pub echo: Vec<Option<(u64, Duration)>>,
    /// The incarnation last heard and the hash of its exit token (kernel-assisted liveness).
    pub exit_commit: Option<(u64, [u8; TOKEN_LEN])>,
    /// When the peer's data plane last answered a probe, and the newest probe it answered.
    pub probe_answered: Option<Duration>,
    pub probe_answered_seq: u64,
    /// Per path: the peer's last heartbeat there said it had heard this node's there lately.
    pub hears_us: Vec<bool>,
    /// Since when the dedicated line to it is dark; from when its silence on the LAN counts
    /// towards the short confirmation (a late wake-up restarts it).
    pub dark_since: Option<Duration>,
    pub confirm_from: Duration,
    /// The peer reads version 3 (it wrote it, or said so in version 2).
    pub reads_v3: bool,
    /// The peer reads version 4 (it wrote it, or said so in an older one).
    pub reads_v4: bool,
    /// Header of the newest heartbeat: its LAN, whether it is ready, when it was written,
    /// and the incarnation its summary is from.
    pub lan_up: bool,
    pub ready: bool,
    pub header_sent_us: u64,
    pub summary_incarnation: u64,
    /// A summary was read (its configuration agrees); `mismatch` says why not, if not.
    pub known: bool,
    pub mismatch: Option<Mismatch>,
    pub res: Vec<PeerRes>,
    /// Its heartbeats say its gates are leases (`lease`).
    pub leased: bool,
    /// The newest of this node's stamps it echoed (this node's lease extends from it).
    pub acked_us: u64,
    /// By when its lease has lapsed for sure, from what was heard of it (this node's clock).
    pub lapsed_by: Option<Duration>,
    /// Its kernel's exit notice came while its gates were leased: they closed at its exit.
    pub kernel_closed: bool,
    /// Its disk heartbeat's newest generation read, and when (this node's clock) it was
    /// first read at that generation (`disk`).
    pub disk_gen: u64,
    pub disk_moved_at: Option<Duration>,
    /// Dead, but its disk heartbeat held its resources back (said once).
    pub disk_held: bool,
    /// Its disk heartbeat was seen moving: it writes one, so it bounds its lease by it.
    pub disk_moving: bool,
    /// Its newest disk heartbeat is its agent's last before a planned restart.
    pub disk_restarting: bool,
    /// When its slot was last read (the read's beginning): unread slots go stale for nobody.
    pub disk_read_at: Option<Duration>,
    /// Dead: when its data plane first answered a probe since (its kernel and both
    /// directions of the LAN work while its agent is silent).
    pub kernel_since: Option<Duration>,
    /// Dead, proven gone by its lease only, with no fence to stop its writes: a stateful
    /// resource of it waits (said once).
    pub fence_wanted: bool,
    /// What its disk heartbeat last said of its LAN (`pill`).
    pub disk_lan_up: bool,
    /// This node's standing fence order for it, and its order fencing this node (`pill`).
    pub pill: Option<u64>,
    pub order_to_me: Option<u64>,
    /// Its `Fenced` came from obeying this node's order, which holds it only while this node
    /// is seen writing (`pill`).
    pub pill_proof: bool,
    /// A fence run for a stateful resource of a peer already proven gone by its lease
    /// (`fence` stays `Lapsed` meanwhile, which its stateless resources take): `Pending`,
    /// `Failed`, or `None`.
    pub state_fence: FenceState,
    /// What its disk heartbeat says it serves (a stateful resource it may hold).
    pub disk_serving: Vec<ResId>,
}

/// What a peer said of one resource, and when.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct PeerRes {
    pub serving: Option<u64>,
    /// Whom it thinks should serve it (none before it is ready).
    pub vote: Option<NodeId>,
    /// Its instance of this service (`component::Health::code`), if it has one.
    pub instance: Option<u8>,
    /// `sent_at_us` of the heartbeat this came from: an older one arriving later (by another
    /// path) must not replace it.
    pub sent_us: u64,
    /// The newest of this node's heartbeats the peer had heard when it wrote this: its vote
    /// takes into account what this node said until then.
    pub acked_us: u64,
}

impl Peer {
    pub fn new(cfg: &CoreConfig, now: Duration) -> Self {
        Peer {
            last_heard: vec![None; cfg.paths],
            path_up: vec![false; cfg.paths],
            guard: ReplayGuard::default(),
            alive: false,
            eligible_since: None,
            fence: FenceState::None,
            since: None,
            restart_until: None,
            heard_incarnation: 0,
            rtt: vec![None; cfg.paths],
            echo: vec![None; cfg.paths],
            exit_commit: None,
            probe_answered: None,
            probe_answered_seq: 0,
            hears_us: vec![false; cfg.paths],
            dark_since: None,
            confirm_from: now,
            reads_v3: false,
            reads_v4: false,
            lan_up: false,
            ready: false,
            header_sent_us: 0,
            summary_incarnation: 0,
            known: false,
            mismatch: None,
            res: vec![PeerRes::default(); cfg.resources.len()],
            leased: false,
            acked_us: 0,
            lapsed_by: None,
            kernel_closed: false,
            disk_gen: 0,
            disk_moved_at: None,
            disk_held: false,
            disk_moving: false,
            disk_restarting: false,
            disk_read_at: None,
            kernel_since: None,
            fence_wanted: false,
            disk_lan_up: true,
            pill: None,
            order_to_me: None,
            pill_proof: false,
            state_fence: FenceState::None,
            disk_serving: Vec::new(),
        }
    }

    /// Forgets its summary: what it serves and votes is unknown from now on.
    pub fn forget_summary(&mut self) {
        self.known = false;
        self.res.iter_mut().for_each(|r| *r = PeerRes::default());
    }

    pub fn digest(&self) -> String {
        format!(
            "{}|{:?}|{}|{:?}|{:?}|{:?}|{:?}|{}{}|{}{}{:?}{}|{}{:?}{}{}{:?}",
            self.alive,
            self.last_heard,
            self.known,
            self.res,
            self.fence,
            self.guard,
            self.exit_commit,
            self.lan_up,
            self.ready,
            self.leased,
            self.acked_us,
            self.lapsed_by,
            self.kernel_closed,
            self.disk_gen,
            self.disk_moved_at,
            self.disk_held,
            self.disk_moving,
            self.kernel_since
        )
    }
}
