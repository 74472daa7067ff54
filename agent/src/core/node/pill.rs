//! The poison pill (a fence through the shared storage area, as SBD's): for a peer that every
//! network path calls dead while its disk heartbeat moves and says its LAN is down. It is
//! alive but cannot serve, and cannot hear that it should let go: this node writes a fence
//! order for it in its own message slot (`Action::Order`). The peer, reading it, closes its
//! gates, stops and unmounts its cold services, becomes unfit (it reopens nothing while the
//! order stands: no new grant), and once nothing of it runs, says in its disk heartbeat that
//! it obeyed. That proves it gone to this node (a fence), which takes over. Once this node
//! hears the peer on the network again the order is withdrawn: the grant to serve again.
//!
//! A peer whose disk heartbeat says its LAN is up is left alone: behind a partition it keeps
//! what it serves (`disk`).
use super::{Action, Core, Event, FenceState, NodeId, Step};

impl Core {
    /// Dead peer `p` holds its resources by its disk heartbeat: orders it fenced if it cannot
    /// serve them (its LAN is down) and this node can.
    pub(super) fn order_fence(&mut self, p: NodeId) {
        let peer = &self.peers[p];
        if peer.pill.is_some() || peer.disk_lan_up || !self.lan_up || !self.ready {
            return;
        }
        // Above every order this node sent before, in any incarnation (microseconds of the
        // wall clock at its start, then one more each).
        self.order_seq = self.order_seq.max(self.incarnation / 1000) + 1;
        let id = self.order_seq;
        self.peers[p].pill = Some(id);
        self.actions.push_back(Action::Order {
            peer: p,
            id: Some(id),
        });
        self.event(Event::PillSent { peer: p });
    }

    /// A standing order for peer `p` is withdrawn (it is heard on the network again, or this
    /// node can serve nothing, or its obedience no longer proves anything). What its
    /// obedience proved goes with it: the peer may serve again.
    pub(super) fn withdraw_order(&mut self, p: NodeId) {
        let peer = &mut self.peers[p];
        if peer.pill_proof {
            peer.pill_proof = false;
            if peer.fence == FenceState::Fenced {
                peer.fence = FenceState::None;
            }
        }
        if peer.pill.take().is_some() {
            self.actions.push_back(Action::Order { peer: p, id: None });
            self.event(Event::PillWithdrawn { peer: p });
        }
    }

    /// What peer `p`'s disk heartbeat and message slot say of orders: it obeyed this node's
    /// order `obeyed` (the newest id), and orders this node fenced (`order`, its id). True if
    /// something changed that the election must hear.
    pub(super) fn disk_orders(
        &mut self,
        p: NodeId,
        lan_up: bool,
        obeyed: u64,
        order: Option<u64>,
    ) -> bool {
        let peer = &mut self.peers[p];
        peer.disk_lan_up = lan_up;
        let mut changed = false;
        if let Some(id) = peer.pill {
            if obeyed >= id && !peer.alive && peer.fence != FenceState::Fenced {
                peer.fence = FenceState::Fenced;
                peer.pill_proof = true;
                self.event(Event::PillObeyed { peer: p });
                changed = true;
            }
        }
        let peer = &mut self.peers[p];
        if peer.order_to_me != order {
            let was = peer.order_to_me.is_some();
            peer.order_to_me = order;
            if was != order.is_some() {
                self.event(Event::Ordered {
                    by: p,
                    fenced: order.is_some(),
                });
                changed = true;
            }
        }
        changed
    }

    /// This node's disk heartbeat stopped (a failed write, a stall): a fenced peer takes this
    /// node's orders as lapsed once it sees that, and may serve again. What its obedience
    /// proved no longer holds: proven again only by a new `obeyed` read.
    pub(super) fn revoke_pill_proofs(&mut self) {
        for p in self.others_vec() {
            if self.peers[p].pill_proof {
                // Its obedience to this order proves nothing now: a new order, if needed.
                self.withdraw_order(p);
            }
        }
    }

    /// This node cannot serve and holds nothing: its orders are withdrawn (the peers they
    /// fenced may serve what it cannot).
    pub(super) fn withdraw_if_unfit(&mut self) {
        // Every tick: the resources are looked at only with an order standing.
        let standing = self.others().any(|p| self.peers[p].pill.is_some());
        if standing && !self.lan_up && self.holds_nothing() {
            for p in self.others_vec() {
                self.withdraw_order(p);
            }
        }
    }

    /// Nothing is open, claimed, still stopping or forwarded here.
    fn holds_nothing(&self) -> bool {
        self.res
            .iter()
            .all(|r| !r.open && r.step == Step::Idle && r.forwarding.is_none())
    }

    /// Some peer's order fences this node: it serves nothing and reopens nothing.
    pub(super) fn ordered_off(&self) -> bool {
        self.others().any(|p| self.peers[p].order_to_me.is_some())
    }

    /// The orders this node obeyed, for its disk heartbeat: each standing order, once nothing
    /// of what it served is open, claimed or still stopping here.
    pub fn obeyed(&self) -> Vec<(NodeId, u64)> {
        // Asked at every wake-up: the resources are looked at only under an order.
        if !self.ordered_off() {
            return Vec::new();
        }
        if !self.holds_nothing() {
            return Vec::new();
        }
        self.others()
            .filter_map(|p| self.peers[p].order_to_me.map(|id| (p, id)))
            .collect()
    }

    /// For `status`: an order of a peer fences this node.
    pub fn fenced_by_order(&self) -> Option<NodeId> {
        self.others().find(|&p| self.peers[p].order_to_me.is_some())
    }
}
