//! Gates as leases on virtual time: a frozen or killed agent is taken over with no fence
//! command, never before its gates have closed (the simulation counts a node as serving only
//! while its lease runs, and checks invariant 1 after every step); a thawed agent does not
//! serve again; a peer that cannot be proven gone is never taken over.
use std::time::Duration;

use super::super::sim::{self, Sim};
use super::tests::{after, ms, time_until, MS};
use super::*;

/// Two nodes, 1 ms heartbeats, 5 misses (a 5 ms lease), leases on, no fence command; settled.
fn leased_pair() -> Sim {
    let mut cfg = sim::config(2, 0, MS, None);
    cfg.lease = true;
    cfg.fence = false;
    let mut s = Sim::with_config(cfg, 1);
    after(&mut s, ms(50));
    s
}

fn lapsed(s: &Sim, peer: NodeId, kernel: bool) -> usize {
    s.events_of(1, |e| {
        matches!(e, Event::LeaseLapsed { peer: p, by_kernel } if *p == peer && *by_kernel == kernel)
    })
}

#[test]
fn the_lease_runs_ahead_of_now_by_at_most_the_dead_time_while_the_peers_echo() {
    let mut s = leased_pair();
    for _ in 0..50 {
        after(&mut s, Duration::from_micros(370));
        let ahead = s.nodes[0].lease.saturating_sub(s.now);
        assert!(ahead > Duration::ZERO && ahead <= ms(5), "{ahead:?}");
    }
}

#[test]
fn a_frozen_agent_is_taken_over_without_a_fence_once_its_lease_has_lapsed() {
    let mut s = leased_pair();
    assert_eq!(s.servers(0), vec![0]);
    s.freeze_agent(0, true);
    let took = time_until(&mut s, ms(100), |s| s.nodes[1].is_open(0));
    // Dead after 5 silent intervals; its kernel answers n1's first probe within half an
    // interval; stuck (not cut off) once the dead time and an interval have passed since,
    // plus the clock margin: about 2D + 1.5 intervals = 11.5 ms.
    assert!(took >= ms(10) && took <= ms(13), "{took:?}\n{}", s.tail());
    assert!(s.now >= s.nodes[0].lease, "n1 opened while n0's lease ran");
    assert_eq!(s.fences_requested, 0);
    assert_eq!(lapsed(&s, 0, false), 1, "{}", s.tail());
    assert!(s.nodes[0].powered, "nobody powered it off");
    // Thawed, it does not serve again: it hears that n1 serves in a newer epoch.
    s.freeze_agent(0, false);
    after(&mut s, ms(50));
    assert_eq!(s.servers(0), vec![1], "{}", s.tail());
    assert!(!s.nodes[0].is_open(0));
}

#[test]
fn a_killed_agent_is_taken_over_on_its_kernels_word_without_a_fence() {
    let mut s = leased_pair();
    s.kill_agent(0);
    let took = time_until(&mut s, ms(100), |s| s.servers(0) == vec![1]);
    // The exit notice comes back on n1's next heartbeat: well under the dead time.
    assert!(took <= ms(3), "{took:?}\n{}", s.tail());
    assert_eq!(s.fences_requested, 0);
    assert_eq!(lapsed(&s, 0, true), 1, "{}", s.tail());
}

#[test]
fn a_peer_that_does_not_lease_its_gates_is_never_taken_over_without_a_fence() {
    let mut s = leased_pair();
    // n0 runs a release before leases: its heartbeats do not say it leases its gates.
    let mut old = s.cfg.clone();
    old.lease = false;
    old.fence = true;
    s.node_configs[0] = Some(old);
    s.stop_agent(0);
    s.start_agent(0);
    after(&mut s, ms(50));
    s.freeze_agent(0, true);
    after(&mut s, ms(200));
    assert_eq!(s.servers(0), vec![0], "{}", s.tail());
    assert!(!s.nodes[1].is_open(0));
    assert_eq!(
        s.events_of(1, |e| matches!(e, Event::LeaseWait { leased: false, .. })),
        1
    );
}

#[test]
fn with_a_fence_command_too_the_first_proof_wins_and_one_server_at_every_step() {
    for (fence_takes, lease_first) in [(ms(2), false), (ms(30), true)] {
        let mut cfg = sim::config(2, 0, MS, None);
        cfg.lease = true;
        let mut s = Sim::with_config(cfg, 7);
        s.fence_delay = fence_takes;
        after(&mut s, ms(50));
        s.freeze_agent(0, true);
        time_until(&mut s, ms(100), |s| s.servers(0) == vec![1]);
        assert_eq!(s.fences_requested, 1);
        assert_eq!(lapsed(&s, 0, false), lease_first as usize, "{}", s.tail());
        assert_eq!(s.nodes[0].powered, lease_first, "{}", s.tail());
    }
}

#[test]
fn silence_alone_never_proves_a_lease_lapsed_a_partitioned_peer_renews_on() {
    // Every path cut both ways, no carrier lost, no fence command, no storage: n1 cannot tell
    // a partition from a crash, and n0 (which sees n1 dead) renews alone. n1 must not open.
    let mut s = leased_pair();
    for (a, b) in [(0, 1), (1, 0)] {
        s.cut[a][b] = vec![true, true];
    }
    for _ in 0..50 {
        after(&mut s, ms(10));
        assert_eq!(
            (s.servers(0), s.servers(1)),
            (vec![0], vec![1]),
            "{}",
            s.tail()
        );
    }
    assert_eq!(lapsed(&s, 0, false), 0, "{}", s.tail());
    assert!(
        s.nodes[0].lease > s.now,
        "n0's own lease ran out in the partition"
    );
}

#[test]
fn a_late_exit_notice_of_an_earlier_life_proves_nothing_of_the_agent_that_runs_now() {
    // The peers wait for a restarted agent (they do not count an exit as a death).
    let mut cfg = sim::config(2, 0, MS, None);
    cfg.lease = true;
    cfg.fence = false;
    cfg.exit_takes_over = false;
    let mut s = Sim::with_config(cfg, 1);
    after(&mut s, ms(50));
    let old = s.nodes[0].incarnation;
    s.kill_agent(0);
    after(&mut s, ms(2));
    s.start_agent(0);
    // Node 1 has just heard the new agent's first heartbeat (addressed to nobody yet: the
    // new agent has not heard node 1), so it still holds the old life's exit commitment.
    after(&mut s, Duration::from_micros(100));
    // The old life's notice, arriving now (late, or replayed by someone on the path): refused,
    // and nothing changes; were it taken, node 1 would later count node 0's gates closed by
    // its kernel and take them while the new agent serves.
    let notice = crate::core::wire::encode_notice(old, &Sim::token(0, old));
    let (result, before, after_) = s.inject(1, 1, &notice).unwrap();
    assert_eq!(result, Err(crate::core::wire::Rejected::Replayed));
    assert_eq!(before, after_);
    after(&mut s, ms(50));
    assert_eq!(s.servers(0), vec![0], "{}", s.tail());
}
