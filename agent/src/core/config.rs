//! What the core needs of the configuration, and the digest that peers compare.
use std::{net::IpAddr, time::Duration};

use sha2::{Digest as _, Sha256};

use super::wire::{v2, v3::Digest};

pub type NodeId = usize;
/// A resource by its index in the configuration (the same on every node whose digest agrees).
pub type ResId = usize;

/// The core's configuration (see `config::Config`, which the shell translates).
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Every node's name, sorted; `me` indexes it.
    pub nodes: Vec<String>,
    pub me: NodeId,
    /// Paths to every peer: 0 is the dedicated line (if there are two), the last the LAN.
    pub paths: usize,
    pub resources: Vec<ResourceSpec>,
    pub interval: Duration,
    pub misses: u32,
    /// While both paths carry heartbeats both ways, they take turns: the LAN carries one
    /// periodic heartbeat in this many, the line the others (1: both carry every one). A
    /// path that is dark or silent either way makes the other carry every one.
    pub lan_every: u32,
    pub preempt: Option<Duration>,
    /// After a failed fence (or a failed durable write), try again this much later.
    pub fence_retry: Duration,
    /// A fence command is configured: a dead peer is fenced before its resources are taken
    /// (with leases, whichever proves it gone first wins).
    pub fence: bool,
    /// This node's gates are leases (`node::lease`), renewed as the peers allow; peers that
    /// say theirs are can be proven gone by them, without a fence.
    pub lease: bool,
    /// The nodes share a storage area (`node::disk`): a peer whose disk heartbeat did not
    /// move for this long, read after read, is stale; until then a peer silent on every
    /// network path is alive behind a partition and keeps what it serves.
    pub disk_timeout: Option<Duration>,
    /// This node hands what it serves to a peer while it cannot write its disk heartbeat
    /// (else it stays, and says so).
    pub storage_hand_over: bool,
    /// How long a starting node waits to hear its peers before it treats the silent ones as
    /// dead (and fences them). At least the dead time; longer in practice, since agents are
    /// rarely started within milliseconds of each other.
    pub startup_grace: Duration,
    /// How long the peers wait for an agent that said it is restarting.
    pub restart_grace: Duration,
    /// While a peer's dedicated line is dark, probe its data plane on the LAN this often;
    /// its kernel answers whatever its agent is doing.
    pub probe_interval: Duration,
    /// A peer whose kernel has not answered (nor its agent sent) for this long, from a moment
    /// within the dead time of its line going dark, is dead: the LAN confirms what the dark
    /// line suggested.
    pub probe_confirm: Duration,
    /// A peer whose kernel reports that its agent died unannounced is dead at once (true),
    /// or is given `restart_grace` for a new agent, as for a planned restart (false).
    pub exit_takes_over: bool,
    /// After a handover to a live peer, forward what still arrives for this long, then close
    /// (docs/design.md invariant 6: a forwarding host claims nothing, and not for ever). The new
    /// server repeats its announcements within it.
    pub forward_for: Duration,
    /// Digest of what every node must agree on ([`CoreConfig::digest_of`]).
    pub digest: Digest,
    /// Behave as a version-2 agent on the wire (write only version 2, read no version 3):
    /// for the simulation's mixed clusters.
    pub emulate_v2: bool,
    /// Behave as a version-3 agent on the wire (write and read nothing newer).
    pub emulate_v3: bool,
    /// The services' instances on this node (the components of `ServiceSpec::component`).
    pub components: Vec<ComponentSpec>,
    pub key: Vec<u8>,
}

/// A resource: a logical address, or one service on it (the patent's components).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResourceSpec {
    pub ip: IpAddr,
    pub prefix: u8,
    pub service: Option<ServiceSpec>,
    /// An address with cold services (run only where it is served, e.g. on a shared file
    /// system): taken over and given back in steps (`node::stateful`), and taken from a dead
    /// peer only once it is fenced (its lease proves its gates closed, not its writes).
    pub stateful: bool,
    /// Preferred owner first.
    pub preference: Vec<NodeId>,
}

/// Protocol and ports of a service on an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceSpec {
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    pub first_port: u16,
    pub last_port: u16,
    /// The address's own resource: whoever serves it serves this, unless its instance
    /// fails and a peer's can serve (a partial takeover).
    pub address: ResId,
    /// The component (service) whose instances serve it.
    pub component: usize,
}

/// One service as a component of this node.
#[derive(Clone, Debug, PartialEq)]
pub struct ComponentSpec {
    pub name: String,
    pub policy: crate::core::component::Policy,
    /// This node runs an instance (it may serve one of the service's addresses); else the
    /// component stays in Standby and says nothing.
    pub here: bool,
    /// Runs only where its address is served (started by `Acquire`, stopped by `Release`):
    /// in Standby elsewhere.
    pub cold: bool,
}

impl CoreConfig {
    pub(super) fn dead_after(&self, misses: u32) -> Duration {
        self.interval * misses
    }

    /// The digest of the shared part of a configuration: the nodes, the resources with their
    /// preferences, and the settings that decide liveness and failback. Two nodes whose
    /// digests differ cannot read each other's summaries (resources and votes are indices).
    pub fn digest_of(&self) -> Digest {
        let mut h = Sha256::new();
        h.update(b"takeover config digest 1\n");
        for n in &self.nodes {
            h.update(format!("node {n}\n"));
        }
        for r in &self.resources {
            h.update(format!(
                "resource {}/{} {:?} {:?}\n",
                r.ip, r.prefix, r.service, r.preference
            ));
            // Only when set: the digests of configurations without it stay as they were
            // (older agents compute them so).
            if r.stateful {
                h.update("stateful\n");
            }
        }
        for c in &self.components {
            h.update(format!("service {}\n", c.name));
        }
        h.update(format!(
            "paths {} interval {:?} misses {} lan_every {} preempt {:?} exit {} restart {:?} forward {:?}\n",
            self.paths,
            self.interval,
            self.misses,
            self.lan_every,
            self.preempt,
            self.exit_takes_over,
            self.restart_grace,
            self.forward_for,
        ));
        h.finalize()[..8].try_into().unwrap()
    }

    /// Whether this configuration can be spoken in version 2 (whole addresses only, few).
    pub fn fits_v2(&self) -> bool {
        self.resources.len() <= v2::MAX_SERVED && self.resources.iter().all(|r| r.service.is_none())
    }

    /// The resource a version-2 message means by `ip` (whole addresses only).
    pub fn resource_of(&self, ip: &IpAddr) -> Option<ResId> {
        self.resources
            .iter()
            .position(|r| r.ip == *ip && r.service.is_none())
    }
}
