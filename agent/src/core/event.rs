//! What the core reports: typed events, one per thing that happened, for the log, the
//! tests, and (next) metrics and notify hooks. `describe` gives the sentence a person reads;
//! `kind` and `fields` the stable names scripts use.
use std::time::Duration;

use super::config::{CoreConfig, NodeId, ResId};

/// A gate's state, as the core asks the data plane to hold it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Gate {
    /// Another host serves it, or nobody: nothing passes, nothing is claimed.
    #[default]
    Closed,
    /// This host serves it.
    Open,
    /// Handed over to this live peer: what still arrives goes on to it; nothing is claimed.
    Forward(NodeId),
    /// About to be handed over by this live peer: only what it forwards passes.
    Receive(NodeId),
}

/// Why a peer was declared dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeathReason {
    /// Every path was silent for the dead time.
    Silent,
    /// Its dedicated line went dark and neither its agent nor its kernel answered on the LAN.
    LineDarkLanSilent,
    /// Its kernel reported that its agent exited unannounced.
    AgentExited,
    /// It said it was restarting and no new agent came within the restart grace.
    RestartTimedOut,
}

/// Why a peer's summaries cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// Its configuration's digest differs from this node's.
    Digest,
    /// It names an address or a node this configuration does not have (version 2 carries no
    /// digest).
    Unknown,
    /// It speaks only version 2, which cannot express this configuration (services, or more
    /// addresses than version 2 carries).
    Inexpressible,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    PeerAlive {
        peer: NodeId,
    },
    PeerDead {
        peer: NodeId,
        reason: DeathReason,
    },
    /// Its kernel reports that its agent exited; this node waits for a new one.
    AgentExitWaiting {
        peer: NodeId,
        grace: Duration,
    },
    PathLost {
        peer: NodeId,
        path: usize,
    },
    PathBack {
        peer: NodeId,
        path: usize,
    },
    LanLink {
        up: bool,
    },
    LineCarrier {
        peer: NodeId,
        up: bool,
    },
    GateChanged {
        res: ResId,
        gate: Gate,
    },
    FenceStarted {
        peer: NodeId,
    },
    Fenced {
        peer: NodeId,
    },
    FenceFailed {
        peer: NodeId,
    },
    /// Dead peer proven gone by its lease: lapsed for sure, or closed by its kernel at its
    /// agent's exit (`by_kernel`), with no fence.
    LeaseLapsed {
        peer: NodeId,
        by_kernel: bool,
    },
    /// No fence command: this node waits for dead peer's lease to lapse before it takes
    /// anything of it (`leased` false: the peer does not lease its gates, so it never will).
    LeaseWait {
        peer: NodeId,
        leased: bool,
    },
    /// Dead peer's disk heartbeat still moves: it is alive behind a partition of every
    /// network path, and keeps what it serves; nothing is taken from it, no fence is used.
    DiskAlive {
        peer: NodeId,
    },
    /// Dead peer's disk heartbeat stopped moving for the storage timeout: gone (or cut off
    /// its storage too); the usual proofs (lease, fence) now decide.
    DiskStale {
        peer: NodeId,
    },
    /// This node could not write its disk heartbeat (`lost`), or can again.
    Storage {
        lost: bool,
        error: String,
    },
    /// This node opened the resource (a takeover, a failback, a first start).
    Takeover {
        res: ResId,
        epoch: u64,
    },
    /// This node handed the resource over to a live peer.
    Handover {
        res: ResId,
        to: NodeId,
    },
    /// The forwarding window after a handover ended: the gate is closed.
    ForwardEnded {
        res: ResId,
        to: NodeId,
    },
    Switchover {
        res: ResId,
        to: NodeId,
        order: u64,
    },
    /// The peer's summaries cannot be read: it is alive, never fenced for this, and nothing
    /// moves while it lasts.
    ConfigMismatch {
        peer: NodeId,
        why: Mismatch,
    },
    ConfigAgrees {
        peer: NodeId,
    },
    /// The version this node writes to the peer changed.
    WireVersion {
        peer: NodeId,
        version: u8,
    },
    /// A durable write of epochs failed: the resources it was for stay closed; retried.
    PersistFailed {
        resources: usize,
    },
    /// This node's instance of a service changed state.
    Component {
        component: usize,
        state: crate::core::component::State,
        fault: Option<crate::core::component::Fault>,
    },
    /// A component could not recover (or is critical): its addresses go over as a whole.
    Escalated {
        component: usize,
    },
    /// This node's instance of a service failed and no peer's can serve: its traffic stays.
    NoInstance {
        res: ResId,
    },
    /// A stateful resource is this node's in `epoch`: its file systems are being mounted and
    /// its cold services started (`takeover`: taken from a peer, not handed over).
    Acquiring {
        res: ResId,
        epoch: u64,
        takeover: bool,
    },
    /// Mounting or starting failed: what was done is undone, and the address goes to a peer.
    AcquireFailed {
        res: ResId,
    },
    /// A stateful resource is being given up: its gate is closed, its services stop, its file
    /// systems are unmounted; it stays claimed until that is done.
    Releasing {
        res: ResId,
    },
    /// Stopping or unmounting failed: it stays claimed (nobody else may start it) and closed;
    /// retried.
    ReleaseFailed {
        res: ResId,
    },
    /// Dead peer's disk heartbeat moves and says its LAN is down: ordered fenced through the
    /// storage area (the poison pill).
    PillSent {
        peer: NodeId,
    },
    /// The peer obeyed this node's order (nothing of it runs): proven gone, as by a fence.
    PillObeyed {
        peer: NodeId,
    },
    /// The peer is heard again: its order is withdrawn (it may serve again).
    PillWithdrawn {
        peer: NodeId,
    },
    /// A peer's order fences this node (`fenced`): it closes, stops, and reopens nothing; or
    /// the order was withdrawn.
    Ordered {
        by: NodeId,
        fenced: bool,
    },
    /// A dead peer is proven gone by its lease only, and a stateful resource of it needs a
    /// fence (its lease closed its gates, not its writes): nothing is taken without one.
    FenceRequired {
        peer: NodeId,
        res: ResId,
    },
}

impl Gate {
    pub fn describe(&self, cfg: &CoreConfig) -> String {
        match self {
            Gate::Closed => "closed".into(),
            Gate::Open => "open".into(),
            Gate::Forward(n) => format!("forward to {}", cfg.nodes[*n]),
            Gate::Receive(n) => format!("receive from {}", cfg.nodes[*n]),
        }
    }
}

impl DeathReason {
    /// Its stable name (the `reason` field of the JSON log).
    pub fn kind(self) -> &'static str {
        match self {
            DeathReason::Silent => "silent",
            DeathReason::LineDarkLanSilent => "line_dark_lan_silent",
            DeathReason::AgentExited => "agent_exited",
            DeathReason::RestartTimedOut => "restart_timed_out",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Silent => "every path silent",
            DeathReason::LineDarkLanSilent => {
                "its dedicated line is dark and neither its agent nor its kernel answers on the LAN"
            }
            DeathReason::AgentExited => "its kernel reports that its agent exited",
            DeathReason::RestartTimedOut => "its agent said it was restarting and did not return",
        }
    }
}

impl Mismatch {
    /// Its stable name (the `why` field of the JSON log).
    pub fn kind(self) -> &'static str {
        match self {
            Mismatch::Digest => "digest",
            Mismatch::Unknown => "unknown",
            Mismatch::Inexpressible => "inexpressible",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mismatch::Digest => "its configuration digest differs from this node's",
            Mismatch::Unknown => "it names an address or node this configuration lacks",
            Mismatch::Inexpressible => {
                "it speaks only wire version 2, which cannot express this configuration"
            }
        }
    }
}

impl Event {
    /// The event's stable name (the `event` field of a JSON log line).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::PeerAlive { .. } => "peer_alive",
            Event::PeerDead { .. } => "peer_dead",
            Event::AgentExitWaiting { .. } => "agent_exit_waiting",
            Event::PathLost { .. } => "path_lost",
            Event::PathBack { .. } => "path_back",
            Event::LanLink { .. } => "lan_link",
            Event::LineCarrier { .. } => "line_carrier",
            Event::GateChanged { .. } => "gate_changed",
            Event::FenceStarted { .. } => "fence_started",
            Event::Fenced { .. } => "fenced",
            Event::FenceFailed { .. } => "fence_failed",
            Event::LeaseLapsed { .. } => "lease_lapsed",
            Event::LeaseWait { .. } => "lease_wait",
            Event::DiskAlive { .. } => "disk_alive",
            Event::DiskStale { .. } => "disk_stale",
            Event::Storage { .. } => "storage",
            Event::Takeover { .. } => "takeover",
            Event::Handover { .. } => "handover",
            Event::ForwardEnded { .. } => "forward_ended",
            Event::Switchover { .. } => "switchover",
            Event::ConfigMismatch { .. } => "config_mismatch",
            Event::ConfigAgrees { .. } => "config_agrees",
            Event::WireVersion { .. } => "wire_version",
            Event::PersistFailed { .. } => "persist_failed",
            Event::Component { .. } => "component",
            Event::Escalated { .. } => "escalated",
            Event::NoInstance { .. } => "no_instance",
            Event::Acquiring { .. } => "acquiring",
            Event::AcquireFailed { .. } => "acquire_failed",
            Event::Releasing { .. } => "releasing",
            Event::ReleaseFailed { .. } => "release_failed",
            Event::FenceRequired { .. } => "fence_required",
            Event::PillSent { .. } => "pill_sent",
            Event::PillObeyed { .. } => "pill_obeyed",
            Event::PillWithdrawn { .. } => "pill_withdrawn",
            Event::Ordered { .. } => "ordered",
        }
    }

    /// Gate changes happen by the thousand in a whole-node takeover of many resources: they
    /// are logged at debug level, the takeover itself at info. A service's gate changes
    /// alone (a partial takeover, its traffic back): at info.
    pub fn is_detail(&self, cfg: &CoreConfig) -> bool {
        matches!(self, Event::GateChanged { res, .. } if cfg.resources[*res].service.is_none())
    }

    /// The event's fields by name, for structured logs.
    pub fn fields(&self, cfg: &CoreConfig) -> Vec<(&'static str, String)> {
        let node = |n: &NodeId| cfg.nodes[*n].clone();
        let res = |r: &ResId| resource_name(cfg, *r);
        let path = |p: &usize| path_name(cfg, *p).to_string();
        match self {
            Event::PeerAlive { peer } => vec![("peer", node(peer))],
            Event::PeerDead { peer, reason } => {
                vec![("peer", node(peer)), ("reason", reason.kind().into())]
            }
            Event::AgentExitWaiting { peer, grace } => {
                vec![
                    ("peer", node(peer)),
                    ("grace_ms", grace.as_millis().to_string()),
                ]
            }
            Event::PathLost { peer, path: p } | Event::PathBack { peer, path: p } => {
                vec![("peer", node(peer)), ("path", path(p))]
            }
            Event::LanLink { up } => vec![("up", up.to_string())],
            Event::LineCarrier { peer, up } => vec![("peer", node(peer)), ("up", up.to_string())],
            Event::GateChanged { res: r, gate } => {
                let (state, peer) = match gate {
                    Gate::Closed => ("closed", None),
                    Gate::Open => ("open", None),
                    Gate::Forward(n) => ("forward", Some(node(n))),
                    Gate::Receive(n) => ("receive", Some(node(n))),
                };
                let mut f = vec![("resource", res(r)), ("gate", state.to_string())];
                f.extend(peer.map(|p| ("peer", p)));
                f
            }
            Event::FenceStarted { peer } | Event::Fenced { peer } | Event::FenceFailed { peer } => {
                vec![("peer", node(peer))]
            }
            Event::LeaseLapsed { peer, by_kernel } => {
                vec![("peer", node(peer)), ("by_kernel", by_kernel.to_string())]
            }
            Event::LeaseWait { peer, leased } => {
                vec![("peer", node(peer)), ("leased", leased.to_string())]
            }
            Event::DiskAlive { peer } | Event::DiskStale { peer } => vec![("peer", node(peer))],
            Event::Storage { lost, error } => {
                vec![("lost", lost.to_string()), ("error", error.clone())]
            }
            Event::Takeover { res: r, epoch } => {
                vec![("resource", res(r)), ("epoch", epoch.to_string())]
            }
            Event::Handover { res: r, to } | Event::ForwardEnded { res: r, to } => {
                vec![("resource", res(r)), ("to", node(to))]
            }
            Event::Switchover { res: r, to, order } => vec![
                ("resource", res(r)),
                ("to", node(to)),
                ("order", order.to_string()),
            ],
            Event::ConfigMismatch { peer, why } => {
                vec![("peer", node(peer)), ("why", why.kind().into())]
            }
            Event::ConfigAgrees { peer } => vec![("peer", node(peer))],
            Event::WireVersion { peer, version } => {
                vec![("peer", node(peer)), ("version", version.to_string())]
            }
            Event::PersistFailed { resources } => vec![("resources", resources.to_string())],
            Event::Component {
                component,
                state,
                fault,
            } => {
                let mut f = vec![
                    ("service", cfg.components[*component].name.clone()),
                    ("state", state.name().to_string()),
                ];
                f.extend(fault.map(|x| ("fault", x.kind().to_string())));
                f
            }
            Event::Escalated { component } => {
                vec![("service", cfg.components[*component].name.clone())]
            }
            Event::NoInstance { res: r }
            | Event::AcquireFailed { res: r }
            | Event::Releasing { res: r }
            | Event::ReleaseFailed { res: r } => vec![("resource", res(r))],
            Event::Acquiring {
                res: r,
                epoch,
                takeover,
            } => vec![
                ("resource", res(r)),
                ("epoch", epoch.to_string()),
                ("takeover", takeover.to_string()),
            ],
            Event::FenceRequired { peer, res: r } => {
                vec![("peer", node(peer)), ("resource", res(r))]
            }
            Event::PillSent { peer }
            | Event::PillObeyed { peer }
            | Event::PillWithdrawn { peer } => {
                vec![("peer", node(peer))]
            }
            Event::Ordered { by, fenced } => {
                vec![("by", node(by)), ("fenced", fenced.to_string())]
            }
        }
    }

    /// The sentence a person reads in the log.
    pub fn describe(&self, cfg: &CoreConfig) -> String {
        let node = |n: &NodeId| &cfg.nodes[*n];
        let res = |r: &ResId| resource_name(cfg, *r);
        match self {
            Event::PeerAlive { peer } => format!("peer {} is alive", node(peer)),
            Event::PeerDead { peer, reason } => {
                format!("peer {} is dead: {}", node(peer), reason.as_str())
            }
            Event::AgentExitWaiting { peer, grace } => format!(
                "the agent of peer {} exited; waiting {grace:?} for it to be restarted",
                node(peer)
            ),
            Event::PathLost { peer, path } => format!(
                "path {} to peer {} lost (the other still works: nothing moves)",
                path_name(cfg, *path),
                node(peer)
            ),
            Event::PathBack { peer, path } => {
                format!("path {} to peer {} works again", path_name(cfg, *path), node(peer))
            }
            Event::LanLink { up } => format!("LAN link {}", if *up { "up" } else { "down" }),
            Event::LineCarrier { peer, up } => format!(
                "dedicated line to {} carrier {}",
                node(peer),
                if *up { "up" } else { "down" }
            ),
            Event::GateChanged { res: r, gate } => format!("{} {}", res(r), gate.describe(cfg)),
            Event::FenceStarted { peer } => format!("fencing peer {}", node(peer)),
            Event::Fenced { peer } => format!("peer {} fenced", node(peer)),
            Event::FenceFailed { peer } => format!(
                "fencing peer {} failed: not taking over its resources (retried)",
                node(peer)
            ),
            Event::LeaseLapsed { peer, by_kernel: true } => format!(
                "peer {}'s gates closed at its agent's exit (its kernel said so): gone, no fence needed",
                node(peer)
            ),
            Event::LeaseLapsed { peer, by_kernel: false } => format!(
                "peer {}'s lease has lapsed: its gates are closed, no fence needed",
                node(peer)
            ),
            Event::LeaseWait { peer, leased: true } => format!(
                "no fence command: waiting for peer {}'s lease to lapse before taking its resources",
                node(peer)
            ),
            Event::LeaseWait { peer, leased: false } => format!(
                "no fence command, and peer {} does not lease its gates (an older release): its resources cannot be taken until it is heard again; configure [fence]",
                node(peer)
            ),
            Event::DiskAlive { peer } => format!(
                "peer {} is silent on every network path but its disk heartbeat moves: a partition; it keeps what it serves, nothing is taken from it and it is not fenced",
                node(peer)
            ),
            Event::DiskStale { peer } => format!(
                "peer {}'s disk heartbeat stopped for the storage timeout: gone, or cut off its storage too",
                node(peer)
            ),
            Event::Storage { lost: true, error } => format!(
                "STORAGE LOST: cannot write this node's disk heartbeat ({error}); peers cut off every network path would count it gone"
            ),
            Event::Storage { lost: false, .. } => "storage back: the disk heartbeat is written again".into(),
            Event::Takeover { res: r, epoch } => format!("{} open (epoch {epoch})", res(r)),
            Event::Handover { res: r, to } => format!(
                "{} handed over to {}: forwarding what still arrives here",
                res(r),
                node(to)
            ),
            Event::ForwardEnded { res: r, to } => format!(
                "{} no longer forwarded to {} (the window after the handover ended): closed",
                res(r),
                node(to)
            ),
            Event::Switchover { res: r, to, order } => {
                format!("switchover of {} to {} (order {order})", res(r), node(to))
            }
            Event::ConfigMismatch { peer, why } => format!(
                "CONFIGURATION MISMATCH with peer {}: {}; it is alive and will not be fenced for \
                 this, but nothing moves until the configurations agree",
                node(peer),
                why.as_str()
            ),
            Event::ConfigAgrees { peer } => {
                format!("peer {}'s configuration agrees with this node's", node(peer))
            }
            Event::WireVersion { peer, version } => {
                format!("writing wire version {version} to peer {}", node(peer))
            }
            Event::PersistFailed { resources } => format!(
                "could not record the epochs of {resources} resource(s) durably: they stay closed (retried)"
            ),
            Event::Component {
                component,
                state,
                fault,
            } => {
                let name = &cfg.components[*component].name;
                match fault.filter(|_| *state != crate::core::component::State::Normal) {
                    Some(f) => format!("service {name} {} ({})", state.name(), f.describe()),
                    None => format!("service {name} {}", state.name()),
                }
            }
            Event::Escalated { component } => format!(
                "service {} cannot recover here: its addresses go over as a whole",
                cfg.components[*component].name
            ),
            Event::NoInstance { res: r } => format!(
                "{}: the instance here failed and no peer's can serve: its traffic stays here",
                res(r)
            ),
            Event::Acquiring {
                res: r,
                epoch,
                takeover,
            } => format!(
                "{} is this node's in epoch {epoch}: mounting and starting its services ({}); it opens once their checks pass",
                res(r),
                if *takeover { "a takeover: they recover" } else { "handed over" }
            ),
            Event::AcquireFailed { res: r } => format!(
                "{}: mounting or starting failed: undone, and it goes to a peer",
                res(r)
            ),
            Event::Releasing { res: r } => format!(
                "{}: closed; stopping its services and unmounting before it is handed over",
                res(r)
            ),
            Event::ReleaseFailed { res: r } => format!(
                "{}: stopping or unmounting FAILED: it stays claimed and closed, so that nobody else starts it (retried)",
                res(r)
            ),
            Event::PillSent { peer } => format!(
                "peer {} is silent on every network path, its disk heartbeat moves and says its LAN is down: ordered fenced through the storage area",
                node(peer)
            ),
            Event::PillObeyed { peer } => format!(
                "peer {} obeyed the fence order (nothing of it runs): gone, as if fenced",
                node(peer)
            ),
            Event::PillWithdrawn { peer } => format!(
                "fence order for peer {} withdrawn (heard again, or this node can serve nothing, or its own disk heartbeat stopped): it may serve again",
                node(peer)
            ),
            Event::Ordered { by, fenced: true } => format!(
                "FENCED BY ORDER of peer {} (through the storage area): closing every gate, stopping the cold services, reopening nothing until the order is withdrawn",
                node(by)
            ),
            Event::Ordered { by, fenced: false } => format!(
                "peer {}'s fence order was withdrawn: this node may serve again",
                node(by)
            ),
            Event::FenceRequired { peer, res: r } => format!(
                "peer {}'s lease has lapsed, but {} is stateful and its lease does not stop its writes: not taken without a fence (configure [fence])",
                node(peer),
                res(r)
            ),
        }
    }
}

/// `10.0.0.100`, or `10.0.0.100 tcp/80` for a service.
pub fn resource_name(cfg: &CoreConfig, r: ResId) -> String {
    let spec = &cfg.resources[r];
    match spec.service {
        None => spec.ip.to_string(),
        Some(s) => {
            let proto = match s.proto {
                6 => "tcp".to_string(),
                17 => "udp".to_string(),
                p => format!("proto{p}"),
            };
            if s.first_port == s.last_port {
                format!("{} {proto}/{}", spec.ip, s.first_port)
            } else {
                format!("{} {proto}/{}-{}", spec.ip, s.first_port, s.last_port)
            }
        }
    }
}

pub fn path_name(cfg: &CoreConfig, path: usize) -> &'static str {
    if cfg.paths > 1 && path == 0 {
        "dedicated"
    } else {
        "lan"
    }
}
