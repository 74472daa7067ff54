//! The disk heartbeat on virtual time: a partition of every network path moves nothing while
//! the disk heartbeats move (no fence, one server each); a crashed host is taken over once
//! its disk heartbeat is stale; a node that cannot read the area takes nothing from a peer it
//! cannot hear; a node cut off its storage hands over if told to.
use std::time::Duration;

use super::super::sim::{self, Sim};
use super::tests::{after, ms, time_until, MS};
use super::*;

/// Two nodes, 1 ms heartbeats, leases on, a fence command that works, a storage area with a
/// 50 ms timeout (written every 5 ms); settled.
fn pair_with_disk(hand_over: bool) -> Sim {
    pair_with(hand_over, true)
}

fn pair_with(hand_over: bool, fence: bool) -> Sim {
    let mut cfg = sim::config(2, 0, MS, None);
    cfg.lease = true;
    cfg.fence = fence;
    cfg.disk_timeout = Some(ms(50));
    cfg.storage_hand_over = hand_over;
    let mut s = Sim::with_config(cfg, 3);
    after(&mut s, ms(100));
    assert_eq!((s.servers(0), s.servers(1)), (vec![0], vec![1]));
    s
}

/// Every network path between n0 and n1 cut both ways, with no carrier lost (a switch in the
/// middle died).
fn partition(s: &mut Sim) {
    for (a, b) in [(0, 1), (1, 0)] {
        s.cut[a][b] = vec![true, true];
    }
}

fn held(s: &Sim, by: NodeId) -> usize {
    s.events_of(by, |e| matches!(e, Event::DiskAlive { .. }))
}

#[test]
fn a_partition_of_every_network_path_moves_nothing_while_the_disk_heartbeats_move() {
    let mut s = pair_with_disk(false);
    partition(&mut s);
    // Every 100 us: no gap either while each notices the other gone (its disk heartbeat,
    // not the echoes it stopped getting, bounds its lease).
    for _ in 0..10_000 {
        after(&mut s, Duration::from_micros(100));
        assert_eq!(
            (s.servers(0), s.servers(1)),
            (vec![0], vec![1]),
            "{}",
            s.tail()
        );
    }
    assert_eq!(s.fences_requested, 0, "{}", s.tail());
    assert_eq!((held(&s, 0), held(&s, 1)), (1, 1), "{}", s.tail());
    // Both can serve (their disk heartbeats say their LANs are up): no order either way.
    assert_eq!(pills(&s, 0) + pills(&s, 1), 0, "{}", s.tail());
    // Healed: each hears the other again, nothing moved.
    for (a, b) in [(0, 1), (1, 0)] {
        s.cut[a][b] = vec![false, false];
    }
    after(&mut s, ms(50));
    assert!(s.nodes[1].core.as_ref().unwrap().peer_alive(0));
    assert_eq!((s.servers(0), s.servers(1)), (vec![0], vec![1]));
}

#[test]
fn without_the_disk_the_same_partition_makes_the_standby_fence_the_owner() {
    // What the disk heartbeat changes: the same story with no storage ends in a fence.
    let mut cfg = sim::config(2, 0, MS, None);
    cfg.lease = true;
    let mut s = Sim::with_config(cfg, 3);
    after(&mut s, ms(100));
    partition(&mut s);
    after(&mut s, ms(200));
    assert!(s.fences_requested > 0, "{}", s.tail());
}

#[test]
fn a_crashed_host_is_taken_over_once_its_disk_heartbeat_is_stale() {
    let mut s = pair_with_disk(false);
    s.crash(0);
    let t0 = s.now;
    time_until(&mut s, ms(200), |s| s.servers(0) == vec![1]);
    let took = s.now - t0;
    // Not before the timeout (its last write may have been just before the crash), and
    // within the timeout and two write intervals (5 ms each) after it.
    assert!(took >= ms(45) && took <= ms(61), "{took:?}\n{}", s.tail());
    assert_eq!(
        s.events_of(1, |e| matches!(e, Event::DiskStale { peer: 0 })),
        1
    );
}

#[test]
fn a_frozen_agent_stops_its_disk_heartbeat_and_is_taken_over_without_a_fence() {
    let mut s = pair_with_disk(false);
    s.fence_works = false;
    s.freeze_agent(0, true);
    time_until(&mut s, ms(200), |s| s.servers(0) == vec![1]);
    assert!(s.nodes[0].powered);
    // Thawed: it serves nothing of what it lost.
    s.freeze_agent(0, false);
    after(&mut s, ms(100));
    assert_eq!(s.servers(0), vec![1], "{}", s.tail());
}

#[test]
fn a_node_cut_off_its_storage_and_every_network_path_takes_nothing_and_stops_serving() {
    // No fence command. n1 cannot read the area, so it cannot tell a partition from a crash:
    // it takes nothing of n0's. It cannot write either, so while n0 is dead to it its lease
    // runs out at its last write plus the timeout, and n0, seeing n1's heartbeat stale, takes
    // n1's address: one server each, at every step.
    let mut s = pair_with(false, false);
    s.set_storage(1, false);
    partition(&mut s);
    after(&mut s, ms(500));
    assert_eq!(
        (s.servers(0), s.servers(1)),
        (vec![0], vec![0]),
        "{}",
        s.tail()
    );
    assert_eq!(
        s.events_of(1, |e| matches!(e, Event::Storage { lost: true, .. })),
        1
    );
    assert_eq!(s.fences_requested, 0);
    // With a fence command, n1 fences as it would without storage.
    let mut s = pair_with(false, true);
    s.set_storage(1, false);
    partition(&mut s);
    after(&mut s, ms(500));
    assert!(s.fences_requested >= 1, "{}", s.tail());
}

#[test]
fn a_host_cut_off_every_network_path_and_its_storage_stops_serving_before_the_peer_takes_over() {
    // n0 loses everything but keeps running: its lease, bounded by its last disk write while
    // n1 is dead to it, runs out; n1 sees the disk heartbeat stale and takes over. The
    // simulation checks after every step that no two serve.
    let mut s = pair_with(false, false);
    partition(&mut s);
    s.set_storage(0, false);
    time_until(&mut s, ms(300), |s| s.servers(0) == vec![1]);
    assert!(s.nodes[0].powered && s.nodes[0].core.is_some());
    assert!(s.servers(1) == vec![1]);
}

#[test]
fn a_node_cut_off_its_storage_hands_over_when_told_to_and_takes_back_once_healed() {
    let mut s = pair_with_disk(true);
    s.set_storage(0, false);
    time_until(&mut s, ms(200), |s| s.servers(0) == vec![1]);
    assert_eq!(
        s.fences_requested,
        0,
        "a live peer was fenced:\n{}",
        s.tail()
    );
    s.set_storage(0, true);
    // Preempt is off in this cluster: it stays with n1; n0 is fit again.
    after(&mut s, ms(100));
    assert_eq!(s.servers(0), vec![1]);
    assert!(s.nodes[1].core.as_ref().unwrap().peer_eligible(0));
}

#[test]
fn a_node_cut_off_its_storage_stays_by_default() {
    let mut s = pair_with_disk(false);
    s.set_storage(0, false);
    after(&mut s, ms(300));
    assert_eq!(
        (s.servers(0), s.servers(1)),
        (vec![0], vec![1]),
        "{}",
        s.tail()
    );
}

// ---- randomized schedules with leases, storage and clock-rate error ------------------------

/// One random schedule with leased gates: crashes, killed, stopped and frozen agents, links,
/// one-way cuts and whole partitions, storage cut off, clocks running up to 500 ppm fast or
/// slow (1000 ppm apart at most, the core's bound); with or without a fence command and a
/// storage area. Invariant 1 is checked after every step inside the simulation (a node serves
/// only while its lease runs, on its own clock); at the end everything heals and every address
/// is served by exactly one node.
fn pills(s: &Sim, by: NodeId) -> usize {
    s.events_of(by, |e| matches!(e, Event::PillSent { .. }))
}

/// n0 loses its LAN and, with it, every path to n1 (its dedicated line dead too, no carrier
/// lost): it cannot serve, and cannot tell n1, whose only news of it is its disk heartbeat.
fn owner_lan_down_line_dead(s: &mut Sim) {
    s.cut[0][1][0] = true;
    s.cut[1][0][0] = true;
    s.set_lan(0, false);
}

#[test]
fn an_owner_cut_off_every_path_with_its_lan_down_obeys_a_fence_order_and_is_taken_over() {
    // No fence command: the storage area is the only way to tell n0 to let go.
    let mut s = pair_with(false, false);
    owner_lan_down_line_dead(&mut s);
    time_until(&mut s, ms(400), |s| s.servers(0) == vec![1]);
    let ordered = |s: &Sim, fenced: bool| {
        s.events_of(
            0,
            |e| matches!(e, Event::Ordered { by: 1, fenced: f } if *f == fenced),
        )
    };
    assert_eq!(pills(&s, 1), 1, "{}", s.tail());
    assert_eq!(ordered(&s, true), 1);
    assert_eq!(
        s.events_of(1, |e| matches!(e, Event::PillObeyed { peer: 0 })),
        1
    );
    assert_eq!(s.fences_requested, 0);
    // n0 obeyed after it closed everything; it reopens nothing while the order stands, even
    // with its LAN back (n1 still cannot hear it).
    assert!(
        first_line(&s, "n0 closes a0") < first_line(&s, "n1 opens a0"),
        "{}",
        s.tail()
    );
    s.set_lan(0, true);
    after(&mut s, ms(200));
    assert_eq!(
        (s.servers(0), s.servers(1)),
        (vec![1], vec![1]),
        "{}",
        s.tail()
    );
    // The line back: n1 hears n0 and withdraws; n0 may serve again (its own address comes
    // back to it, first in preference, once n1 lets go of it).
    s.cut[0][1][0] = false;
    s.cut[1][0][0] = false;
    time_until(&mut s, ms(400), |s| ordered(s, false) == 1);
    assert_eq!(
        s.events_of(1, |e| matches!(e, Event::PillWithdrawn { peer: 0 })),
        1
    );
    assert_eq!(s.servers(1), vec![1]);
}

#[test]
fn a_fence_order_lapses_with_its_sender_and_the_fenced_node_takes_over_once_it_can() {
    let mut s = pair_with(false, false);
    owner_lan_down_line_dead(&mut s);
    time_until(&mut s, ms(400), |s| s.servers(0) == vec![1]);
    // The sender dies with its order standing: once its disk heartbeat is stale the order
    // no longer holds n0, which takes everything once its LAN is back.
    s.crash(1);
    s.set_lan(0, true);
    time_until(&mut s, ms(1000), |s| {
        s.servers(0) == vec![0] && s.servers(1) == vec![0]
    });
    assert_eq!(
        s.events_of(0, |e| matches!(
            e,
            Event::Ordered {
                by: 1,
                fenced: false
            }
        )),
        1,
        "{}",
        s.tail()
    );
}

/// The position of the first trace line containing `what`.
fn first_line(s: &Sim, what: &str) -> usize {
    s.trace
        .iter()
        .position(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no {what:?} in the trace\n{}", s.tail()))
}

fn random_leased_schedule(seed: u64) {
    use super::super::sim::Rng;
    let mut rng = Rng::new(seed);
    let nodes = if rng.chance(0.3) { 3 } else { 2 };
    let mut cfg = sim::config(nodes, 0, MS, None);
    cfg.lease = true;
    cfg.fence = rng.chance(0.5);
    if rng.chance(0.6) {
        cfg.disk_timeout = Some(ms(20 + rng.below(40)));
        cfg.storage_hand_over = rng.chance(0.3);
    }
    cfg.exit_takes_over = rng.chance(0.8);
    cfg.digest = cfg.digest_of();
    let mut s = Sim::with_config(cfg, seed);
    for n in 0..nodes {
        s.clock_ppm[n] = rng.below(1001) as i64 - 500;
    }
    s.loss = [0.0, 0.01, 0.05][rng.below(3) as usize];
    s.jitter = Duration::from_micros(rng.below(300));
    s.fence_works = rng.chance(0.85);
    after(&mut s, ms(30));
    for _ in 0..12 {
        let n = rng.below(nodes as u64) as usize;
        let m = (n + 1 + rng.below(nodes as u64 - 1) as usize) % nodes;
        match rng.below(9) {
            0 => s.crash(n),
            1 => s.boot(n),
            2 if rng.chance(0.5) => s.kill_agent(n),
            2 => s.stop_agent(n),
            3 => {
                if s.nodes[n].powered && s.nodes[n].core.is_none() && s.nodes[n].frozen.is_none() {
                    s.start_agent(n)
                }
            }
            4 => {
                let frozen = s.nodes[n].frozen.is_none() && s.nodes[n].core.is_some();
                s.freeze_agent(n, frozen)
            }
            5 => s.set_lan(n, !s.nodes[n].lan_up),
            6 => {
                let up = s.cut[n][m][0];
                s.set_dedicated(n, m, up, rng.chance(0.5))
            }
            7 if rng.chance(0.5) => {
                // A whole partition between n and m, both ways, no carrier lost.
                let cut = !s.cut[n][m][1];
                s.cut[n][m] = vec![cut, cut];
                s.cut[m][n] = vec![cut, cut];
            }
            7 => s.cut[n][m][1] = !s.cut[n][m][1],
            _ => {
                let up = s.disk.as_ref().is_some_and(|d| d.cut[n]);
                s.set_storage(n, up)
            }
        }
        after(&mut s, Duration::from_micros(200 + rng.below(60_000)));
    }
    // Heal everything and let it settle.
    s.heal_all();
    after(&mut s, ms(400));
    for a in 0..nodes {
        let servers = s.servers(a);
        assert_eq!(
            servers.len(),
            1,
            "seed {seed}: a{a} served by {servers:?} after healing\n{}",
            s.tail()
        );
    }
}

#[test]
fn random_schedules_with_leases_storage_and_clock_error_keep_one_server() {
    super::tests::run_schedules(0x1ea5e, 600, random_leased_schedule);
}
