//! Failure stories of the core on virtual time, then randomized fault schedules that check
//! docs/design.md's invariants. A failing schedule prints its seed and the end of its trace.
use std::time::Duration;

use super::super::sim::{self, Rng, Sim, DEDICATED, LAN};
use super::*;

pub(super) const MS: Duration = Duration::from_millis(1);

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Two nodes, 1 ms heartbeats, 5 misses, preempt after 100 ms; settled.
fn pair(preempt: Option<Duration>) -> Sim {
    let mut s = Sim::new(2, MS, preempt, 1);
    let t = s.now + ms(50);
    s.run_until(t);
    s
}

pub(super) fn after(s: &mut Sim, d: Duration) {
    let t = s.now + d;
    s.run_until(t);
}

/// Runs until `cond` holds (checked every 100 us) and returns how long that took.
pub(super) fn time_until(
    s: &mut Sim,
    limit: Duration,
    mut cond: impl FnMut(&Sim) -> bool,
) -> Duration {
    let start = s.now;
    while !cond(s) {
        assert!(s.now - start < limit, "not within {limit:?}:\n{}", s.tail());
        after(s, Duration::from_micros(100));
    }
    s.now - start
}

#[test]
fn each_owner_serves_its_address_once_started() {
    let s = pair(Some(ms(100)));
    assert_eq!(s.servers(0), vec![0]);
    assert_eq!(s.servers(1), vec![1]);
    assert_eq!(s.fences_requested, 0);
}

#[test]
fn crash_of_the_active_is_fenced_then_taken_over() {
    let mut s = pair(Some(ms(100)));
    s.crash(0);
    let took = time_until(&mut s, ms(100), |s| s.servers(0) == vec![1]);
    // Dead after 5 silent intervals, then the fence (2 ms here), then open.
    assert!(took >= ms(5) && took <= ms(9), "{took:?}");
    assert_eq!(s.fences_requested, 1);
    assert_eq!(s.servers(1), vec![1], "its own address stays");
}

#[test]
fn silent_death_is_detected_like_a_crash() {
    let mut s = pair(None);
    s.nodes[0].mute = true;
    let took = time_until(&mut s, ms(100), |s| s.servers(0) == vec![1]);
    assert!(took <= ms(9), "{took:?}");
    assert!(
        !s.nodes[0].powered,
        "the fence powered the silent node off first"
    );
}

#[test]
fn lan_down_on_the_active_moves_its_address_without_waiting_for_timeouts() {
    let mut s = pair(Some(ms(100)));
    s.set_lan(0, false);
    let took = time_until(&mut s, ms(100), |s| s.servers(0) == vec![1]);
    // Told over the dedicated line at once: one delivery, not five missed heartbeats.
    assert!(took < MS, "{took:?}");
    assert_eq!(
        s.fences_requested, 0,
        "the active is alive and closed its gate itself"
    );
    // Its LAN is down: nothing to forward through.
    assert!(s.tail().contains("n0 closes a0"), "{}", s.tail());
    assert_eq!(s.nodes[0].core.as_ref().unwrap().forwarding(0), None);
    // Back up: after the preempt delay the address goes home, never open on both.
    s.set_lan(0, true);
    after(&mut s, ms(50));
    assert_eq!(s.servers(0), vec![1], "not before the preempt delay");
    time_until(&mut s, ms(200), |s| s.servers(0) == vec![0]);
}

#[test]
fn losing_the_dedicated_line_alone_changes_nothing() {
    for carrier in [false, true] {
        let mut s = pair(Some(ms(100)));
        let changes = s.gate_changes;
        s.set_dedicated(0, 1, false, carrier);
        after(&mut s, ms(2000));
        assert_eq!(
            (s.gate_changes, s.fences_requested),
            (changes, 0),
            "carrier {carrier}:\n{}",
            s.tail()
        );
        assert!(s.nodes[1].core.as_ref().unwrap().peer_alive(0));
    }
}

#[test]
fn losing_the_lan_path_alone_changes_nothing() {
    let mut s = pair(Some(ms(100)));
    let changes = s.gate_changes;
    // The switch drops the heartbeats between the two, but both LAN links are up.
    s.cut[0][1][LAN] = true;
    s.cut[1][0][LAN] = true;
    after(&mut s, ms(2000));
    assert_eq!((s.gate_changes, s.fences_requested), (changes, 0));
}

#[test]
fn a_cut_dedicated_line_shortens_the_wait_when_the_lan_confirms() {
    let mut s = pair(None);
    // The peer dies and its end of the cable goes dark: its kernel stops answering the probes
    // on the LAN, and one interval of that silence confirms (not the five of the dead time).
    s.set_dedicated(0, 1, false, true);
    s.crash(0);
    let took = time_until(&mut s, ms(100), |s| s.servers(0) == vec![1]);
    // One interval, then the fence (2 ms here), then open.
    assert!(took <= ms(4), "{took:?}\n{}", s.tail());
    assert!(
        took >= ms(3),
        "{took:?}: faster than confirmation and fence allow"
    );
}

#[test]
fn a_lan_falling_silent_soon_after_the_line_still_confirms_a_crash() {
    let mut s = pair(None);
    // A crash seldom takes both links in the same microsecond: here the LAN goes 2 ms after
    // the line. Silence that begins within the dead time of the line going dark confirms.
    s.set_dedicated(0, 1, false, true);
    after(&mut s, ms(2));
    s.crash(0);
    let took = time_until(&mut s, ms(100), |s| s.servers(0) == vec![1]);
    assert!(took <= ms(4), "{took:?}\n{}", s.tail());
}

#[test]
fn with_the_line_long_dark_a_lan_stall_shorter_than_the_dead_time_moves_nothing() {
    let mut s = pair(None);
    s.set_dedicated(0, 1, false, true);
    after(&mut s, ms(20));
    let changes = s.gate_changes;
    // The LAN, the one path left, stalls for three intervals both ways: longer than the
    // short confirmation, shorter than the dead time. The peer was heard long after the line
    // went dark, so this is not the crash the dark line hinted at.
    s.cut[0][1][LAN] = true;
    s.cut[1][0][LAN] = true;
    after(&mut s, ms(3));
    s.cut[0][1][LAN] = false;
    s.cut[1][0][LAN] = false;
    after(&mut s, ms(50));
    assert_eq!(
        (s.gate_changes, s.fences_requested),
        (changes, 0),
        "{}",
        s.tail()
    );
    // The same stall 1 ms after the cable is pulled would be taken for a crash (and fenced):
    // the exposure the short confirmation costs, limited to the moments after a carrier drop.
}

#[test]
fn with_the_line_dark_a_stalled_agent_whose_kernel_answers_is_not_taken_over() {
    let mut s = pair(None);
    s.set_dedicated(0, 1, false, true);
    after(&mut s, ms(5));
    // n0's agent does not run for 4 ms (longer than the confirmation window, shorter than
    // the 5 ms dead time): no heartbeats, but its data plane answers n1's probes.
    s.freeze_agent(0, true);
    after(&mut s, ms(4));
    s.freeze_agent(0, false);
    after(&mut s, ms(50));
    assert_eq!(s.servers(0), vec![0], "{}", s.tail());
    assert_eq!(s.fences_requested, 0, "{}", s.tail());
}

#[test]
fn probe_answers_that_are_forged_or_replayed_change_nothing() {
    let mut s = pair(None);
    s.set_dedicated(0, 1, false, true);
    // The simulation keeps a sample of what crosses the wire: wait for an answer in it.
    let answer_seen = |s: &Sim| {
        s.captured
            .iter()
            .any(|(_, _, b)| wire::probe_answer(b).is_some())
    };
    time_until(&mut s, ms(500), answer_seen);
    let answers: Vec<_> = s
        .captured
        .iter()
        .filter_map(|(_, _, b)| wire::probe_answer(b))
        .collect();
    let mut forged = answers[0].clone();
    forged[20] ^= 1;
    for bytes in [forged, answers[0].clone()] {
        let (r, before, after) = s.inject(1, LAN, &bytes).unwrap();
        assert!(r.is_err(), "{r:?}");
        assert_eq!(before, after);
    }
}

#[test]
fn failback_waits_for_the_preempt_delay_and_never_overlaps() {
    let mut s = pair(Some(ms(100)));
    s.crash(0);
    time_until(&mut s, ms(100), |s| s.servers(0) == vec![1]);
    s.boot(0);
    after(&mut s, ms(60));
    assert_eq!(s.servers(0), vec![1], "n0 is back but not settled");
    // Its gate receives only once n1 is about to hand over: until then, closed.
    assert_eq!(s.nodes[0].receiving(0), None, "{}", s.tail());
    let took = time_until(&mut s, ms(300), |s| s.servers(0) == vec![0]);
    assert!(took <= ms(60), "{took:?}");
    // n0 received from n1 before n1 let go: nothing n1 forwarded met a closed gate.
    let tail = s.tail();
    let at = |what: &str| tail.find(what).unwrap_or_else(|| panic!("{what}\n{tail}"));
    assert!(
        at("n0 receives a0 from n1") < at("n1 forwards a0 to n0"),
        "{tail}"
    );
    assert!(!s.black_hole, "{tail}");
}

#[test]
fn a_switchover_moves_an_address_at_once_and_for_good() {
    let mut s = pair(Some(ms(100)));
    let fences = s.fences_requested;
    // Ordered on the standby, about the owner's address.
    s.switchover(1, 0, 1);
    let took = time_until(&mut s, ms(50), |s| s.servers(0) == vec![1]);
    assert!(took < ms(2), "{took:?}: a handoff, not a timeout");
    // Handed to a live peer: the old server forwards what still reaches it.
    assert!(s.tail().contains("n0 forwards a0 to n1"), "{}", s.tail());
    assert_eq!(s.nodes[0].core.as_ref().unwrap().forwarding(0), Some(1));
    // Preempt does not pull it back: the order stands.
    after(&mut s, ms(500));
    assert_eq!(s.servers(0), vec![1]);
    // Back home, ordered on the other node this time.
    s.switchover(0, 0, 0);
    time_until(&mut s, ms(50), |s| s.servers(0) == vec![0]);
    assert_eq!(s.fences_requested, fences, "nobody was fenced");
    // The order survives an agent restart of the node it names... and of the other.
    // Ordered on the server this time: it lets go only once n1 receives.
    s.switchover(0, 0, 1);
    time_until(&mut s, ms(50), |s| s.servers(0) == vec![1]);
    // Each time the new server received before the old one let go.
    assert!(!s.black_hole, "{}", s.tail());
    // Urgent and periodic heartbeats cross (two sockets, read at different moments): every
    // one is still taken, none refused as a replay.
    for n in &s.nodes {
        let refused = &n.core.as_ref().unwrap().rejected().0;
        assert_eq!(refused.get("replayed"), None, "{refused:?}");
    }
    s.stop_agent(0);
    after(&mut s, ms(20));
    s.start_agent(0);
    after(&mut s, ms(500));
    assert_eq!(s.servers(0), vec![1], "{}", s.tail());
}

#[test]
fn without_preempt_an_address_stays_where_it_went() {
    let mut s = pair(None);
    s.crash(0);
    time_until(&mut s, ms(100), |s| s.servers(0) == vec![1]);
    s.boot(0);
    after(&mut s, ms(1000));
    assert_eq!(s.servers(0), vec![1]);
}

#[test]
fn a_failed_fence_stops_the_takeover() {
    let mut s = pair(None);
    s.fence_works = false;
    s.nodes[0].mute = true;
    after(&mut s, ms(3000));
    assert_eq!(
        s.servers(0),
        vec![0],
        "n0 may still serve: nobody else opens"
    );
    assert!(s.fences_requested >= 2, "retried");
    assert!(matches!(
        s.fence_state(1, 0),
        Some(FenceState::Failed(_) | FenceState::Pending)
    ));
}

/// Like `pair`, with `agent_exit = "wait"`: a crashed agent gets the restart grace.
fn pair_waiting_for_crashed_agents(preempt: Option<Duration>) -> Sim {
    let mut cfg = sim::config(2, 0, MS, preempt);
    cfg.exit_takes_over = false;
    let mut s = Sim::with_config(cfg, 1);
    after(&mut s, ms(50));
    s
}

#[test]
fn a_crashed_agent_is_reported_by_its_kernel_and_taken_over_within_an_interval() {
    let mut s = pair(Some(ms(100)));
    s.kill_agent(0);
    let took = time_until(&mut s, ms(100), |s| s.servers(0) == vec![1]);
    // The next heartbeat n1 sends is answered with the exit notice (under an interval and a
    // round trip), then the fence (2 ms here): well under the 5 ms dead time.
    assert!(took <= ms(4), "{took:?}\n{}", s.tail());
    assert!(!s.nodes[0].powered, "fenced first: its gates were open");
    assert!(s.tail().contains("its kernel reports"), "{}", s.tail());
}

#[test]
fn with_agent_exit_wait_a_crashed_agent_restarted_within_the_grace_keeps_its_gates() {
    let mut s = pair_waiting_for_crashed_agents(Some(ms(100)));
    let changes = s.gate_changes;
    s.kill_agent(0);
    // Far longer than the dead time (5 ms), within the restart grace (500 ms).
    after(&mut s, ms(200));
    s.start_agent(0);
    after(&mut s, ms(500));
    assert_eq!(
        s.gate_changes,
        changes,
        "no gate closed or opened:\n{}",
        s.tail()
    );
    assert_eq!(s.servers(0), vec![0]);
    assert_eq!(s.fences_requested, 0);
}

#[test]
fn with_agent_exit_wait_a_crashed_agent_never_restarted_is_fenced_after_the_grace() {
    let mut s = pair_waiting_for_crashed_agents(None);
    s.kill_agent(0);
    after(&mut s, ms(400));
    assert_eq!(s.servers(0), vec![0], "still within the restart grace");
    time_until(&mut s, ms(300), |s| s.servers(0) == vec![1]);
    assert!(!s.nodes[0].powered);
}

#[test]
fn a_forged_or_stale_exit_notice_changes_nothing() {
    let mut s = pair(None);
    let inc = s.nodes[0].incarnation;
    // A token nobody committed to, for the right incarnation and for an old one.
    for (i, token) in [
        (inc, [0xab; wire::TOKEN_LEN]),
        (inc - 1, [0; wire::TOKEN_LEN]),
    ] {
        let (r, before, after) = s.inject(1, LAN, &wire::encode_notice(i, &token)).unwrap();
        assert_eq!(r, Err(wire::Rejected::UnknownNotice));
        assert_eq!(before, after);
    }
    // The real notice of n0's previous incarnation, after a planned restart: stale.
    s.stop_agent(0);
    s.start_agent(0);
    after(&mut s, ms(20));
    let stale = wire::encode_notice(inc, &Sim::token(0, inc));
    let (r, before, after) = s.inject(1, LAN, &stale).unwrap();
    assert_eq!(r, Err(wire::Rejected::UnknownNotice));
    assert_eq!(before, after);
    assert_eq!(s.servers(0), vec![0]);
}

#[test]
fn a_planned_agent_restart_longer_than_the_dead_time_moves_nothing() {
    let mut s = pair(Some(ms(100)));
    let changes = s.gate_changes;
    s.stop_agent(0);
    // Far longer than the dead time (5 ms), well within the restart grace (500 ms).
    after(&mut s, ms(200));
    s.start_agent(0);
    after(&mut s, ms(500));
    assert_eq!(
        (s.gate_changes, s.fences_requested),
        (changes, 0),
        "{}",
        s.tail()
    );
    assert_eq!(s.servers(0), vec![0]);
}

#[test]
fn an_agent_that_said_it_restarts_but_never_returns_is_fenced_after_the_grace() {
    let mut s = pair(None);
    s.stop_agent(0);
    after(&mut s, ms(400));
    assert_eq!(s.servers(0), vec![0], "still within the restart grace");
    time_until(&mut s, ms(300), |s| s.servers(0) == vec![1]);
    assert!(!s.nodes[0].powered);
}

#[test]
fn an_agent_dead_longer_than_the_dead_time_is_fenced_before_its_address_moves() {
    let mut s = pair(None);
    s.kill_agent(0);
    time_until(&mut s, ms(100), |s| s.servers(0) == vec![1]);
    assert!(
        !s.nodes[0].powered,
        "its gates were still open: it had to be fenced"
    );
}

#[test]
fn a_restarted_node_opens_nothing_a_live_peer_serves() {
    let mut s = pair(None);
    s.crash(0);
    time_until(&mut s, ms(100), |s| s.servers(0) == vec![1]);
    s.boot(0);
    after(&mut s, ms(500));
    assert_eq!(s.servers(0), vec![1]);
    assert_eq!(s.servers(1), vec![1]);
}

#[test]
fn a_late_wakeup_does_not_count_the_silence_it_slept_through() {
    let mut s = pair(None);
    let now = s.now;
    let core = s.nodes[1].core.as_mut().unwrap();
    // Nothing was heard for 50 ms because this node was not running, not the peer.
    core.handle_timeout(now + ms(50));
    assert!(core.peer_alive(0));
}

#[test]
fn forged_replayed_and_malformed_datagrams_change_nothing() {
    let mut s = pair(None);
    let real = s.captured.last().cloned().expect("something was captured");
    let mut rng = Rng::new(7);
    let mut forged = Vec::new();
    for i in 0..200 {
        let mut b = real.2.clone();
        let at = rng.below(b.len() as u64) as usize;
        b[at] ^= 1 << (i % 8);
        forged.push(b);
    }
    forged.push(vec![]);
    forged.push(b"TKOV".to_vec());
    forged.push(real.2[..real.2.len() - 1].to_vec());
    for f in &forged {
        let (r, before, after) = s.inject(1, LAN, f).unwrap();
        assert!(r.is_err(), "a forged datagram was accepted");
        assert_eq!(before, after, "a refused datagram changed the state");
    }
    // Replays of what was on the wire earlier.
    for (to, path, bytes) in s.captured.clone() {
        let (r, before, after) = s.inject(to, path, &bytes).unwrap();
        assert_eq!(r, Err(wire::Rejected::Replayed));
        assert_eq!(before, after);
    }
    let counts = &s.nodes[1].core.as_ref().unwrap().rejected().0;
    assert!(
        counts.get("bad_tag").copied().unwrap_or(0) > 0,
        "{counts:?}"
    );
    assert!(
        counts.get("replayed").copied().unwrap_or(0) > 0,
        "{counts:?}"
    );
}

// ---- randomized schedules ---------------------------------------------------------------

/// One random schedule: faults of every kind, checked continuously for invariant 1 (inside
/// the simulation) and 4 (at each injection); at the end, everything heals and each address
/// must be served by exactly one node, its owner when preempt is on.
fn random_schedule(seed: u64) {
    let mut rng = Rng::new(seed);
    let nodes = if rng.chance(0.3) { 3 } else { 2 };
    let preempt = if rng.chance(0.5) {
        Some(ms(20 + rng.below(80)))
    } else {
        None
    };
    let mut cfg = sim::config(nodes, 0, MS, preempt);
    cfg.exit_takes_over = rng.chance(0.7);
    let mut s = Sim::with_config(cfg, seed);
    // A rolling upgrade: one node of the previous wire version, for good.
    if rng.chance(0.25) {
        let n = rng.below(nodes as u64) as usize;
        let mut old = s.cfg.clone();
        old.emulate_v2 = true;
        s.node_configs[n] = Some(old);
        s.stop_agent(n);
        s.start_agent(n);
    }
    let upgraded = s.node_configs.clone();
    s.loss = [0.0, 0.01, 0.05, 0.2][rng.below(4) as usize];
    s.duplicate = [0.0, 0.05][rng.below(2) as usize];
    s.jitter = Duration::from_micros(rng.below(400));
    s.fence_works = rng.chance(0.85);
    after(&mut s, ms(20));
    // Addresses moved by a switchover end where the newest order says, not with the owner.
    let mut switched = vec![false; nodes];
    for _ in 0..12 {
        let n = rng.below(nodes as u64) as usize;
        let m = (n + 1 + rng.below(nodes as u64 - 1) as usize) % nodes;
        match rng.below(10) {
            0 => s.crash(n),
            1 => s.boot(n),
            2 if rng.chance(0.5) => s.kill_agent(n),
            2 => s.stop_agent(n),
            3 => {
                if s.nodes[n].powered && s.nodes[n].core.is_none() {
                    s.start_agent(n)
                }
            }
            4 => s.set_lan(n, !s.nodes[n].lan_up),
            5 => {
                let up = s.cut[n][m][DEDICATED];
                let carrier = rng.chance(0.5);
                s.set_dedicated(n, m, up, carrier)
            }
            6 if rng.chance(0.3) => {
                let a = rng.below(nodes as u64) as usize;
                switched[a] = true;
                s.switchover(n, a, m)
            }
            6 => s.nodes[n].mute = !s.nodes[n].mute,
            7 if rng.chance(0.2) => {
                // A configuration change rolled out to one node only (for now).
                let mut other = s.cfg.clone();
                other.misses += 1;
                other.digest = other.digest_of();
                s.node_configs[n] = Some(other);
                if s.nodes[n].powered {
                    s.stop_agent(n);
                    s.start_agent(n);
                }
            }
            7 if rng.chance(0.2) => s.persist_works = !s.persist_works,
            7 => {
                s.cut[n][m][LAN] = !s.cut[n][m][LAN];
            }
            _ => {
                // An attacker: a replay of anything captured, or a corrupted copy.
                if let Some((to, path, bytes)) = s
                    .captured
                    .get(rng.below(s.captured.len() as u64) as usize)
                    .cloned()
                {
                    let mut b = bytes;
                    if rng.chance(0.5) {
                        let at = rng.below(b.len() as u64) as usize;
                        b[at] ^= 0x40;
                    }
                    if let Some((r, before, after)) = s.inject(to, path, &b) {
                        if r.is_err() {
                            assert_eq!(
                                before, after,
                                "seed {seed}: a refused datagram changed the state"
                            );
                        }
                    }
                }
            }
        }
        after(&mut s, Duration::from_micros(200 + rng.below(40_000)));
    }
    // Heal everything and let it settle (the configuration rolled out everywhere, or back).
    s.persist_works = true;
    for (n, upgraded) in upgraded.into_iter().enumerate() {
        if s.node_configs[n]
            .as_ref()
            .is_some_and(|c| c.digest != s.cfg.digest)
        {
            s.node_configs[n] = upgraded;
            if s.nodes[n].core.is_some() {
                s.stop_agent(n);
                s.start_agent(n);
            }
        }
    }
    s.heal_all();
    after(&mut s, ms(400));
    for (a, &moved) in switched.iter().enumerate() {
        let servers = s.servers(a);
        assert_eq!(
            servers.len(),
            1,
            "seed {seed}: a{a} served by {servers:?} after healing\n{}\n{}",
            s.tail(),
            (0..nodes)
                .map(|n| s.nodes[n]
                    .core
                    .as_ref()
                    .map(|c| c.explain(a))
                    .unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n--\n")
        );
        if preempt.is_some() && !moved {
            assert_eq!(
                servers,
                vec![a],
                "seed {seed}: a{a} not back with its owner\n{}\n{}\n{}",
                s.tail(),
                s.nodes[0]
                    .core
                    .as_ref()
                    .map(|c| c.digest())
                    .unwrap_or_default(),
                s.nodes[1]
                    .core
                    .as_ref()
                    .map(|c| c.digest())
                    .unwrap_or_default()
            );
        }
    }
}

#[test]
fn random_fault_schedules_keep_the_invariants() {
    run_schedules(0x5eed, 2000, random_schedule);
}

/// Runs `count` schedules from seed `base` (or `TAKEOVER_SIM_SEED`, `TAKEOVER_SIM_SCHEDULES`);
/// a failing one prints how to run it alone.
pub(super) fn run_schedules(base: u64, count: u64, schedule: fn(u64)) {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (base, count) = (
        env("TAKEOVER_SIM_SEED", base),
        env("TAKEOVER_SIM_SCHEDULES", count),
    );
    for i in 0..count {
        let seed = base + i;
        let r = std::panic::catch_unwind(|| schedule(seed));
        if let Err(e) = r {
            eprintln!("failing schedule: TAKEOVER_SIM_SEED={seed} TAKEOVER_SIM_SCHEDULES=1");
            std::panic::resume_unwind(e);
        }
    }
}

#[test]
fn the_paths_take_turns_while_both_work_both_ways_and_not_when_one_fails_silently() {
    let mut s = pair(None);
    let changes = s.gate_changes;
    let count = |s: &Sim, path| s.sent.get(&(0, 1, path)).copied().unwrap_or(0);
    let window = |s: &mut Sim, d| {
        let (line, lan) = (count(s, DEDICATED), count(s, LAN));
        after(s, d);
        (count(s, DEDICATED) - line, count(s, LAN) - lan)
    };
    // One periodic heartbeat per interval in all, the LAN carrying one in lan_every (2).
    let (line, lan) = window(&mut s, ms(100));
    assert!(
        line + lan <= 101 && line.abs_diff(50) <= 1 && lan.abs_diff(50) <= 1,
        "{line} {lan}"
    );
    // Each way each path fails silently (carrier up), in turn: the other path carries every
    // heartbeat again, whichever side notices (its own silence, or the other's stale echo).
    for (from, path) in [(0, DEDICATED), (1, DEDICATED), (0, LAN), (1, LAN)] {
        s.cut[from][1 - from][path] = true;
        after(&mut s, ms(10));
        let (line, lan) = window(&mut s, ms(100));
        let other = if path == DEDICATED { lan } else { line };
        assert!(
            other >= 99,
            "cut {from} -> {} on path {path}: {line} {lan}",
            1 - from
        );
        s.cut[from][1 - from][path] = false;
        after(&mut s, ms(10));
        let (line, lan) = window(&mut s, ms(100));
        assert!(line + lan <= 101, "turns again: {line} {lan}");
    }
    assert_eq!(
        (s.gate_changes, s.fences_requested),
        (changes, 0),
        "{}",
        s.tail()
    );
}

/// Invariant 5 over random schedules: one path at a time fails (cut, with or without
/// carrier, or the LAN dropping heartbeats) while the other works; nothing may move.
#[test]
fn random_single_path_losses_never_cause_a_takeover() {
    for seed in 0..300u64 {
        let mut rng = Rng::new(seed);
        let mut s = Sim::new(2, MS, Some(ms(50)), seed);
        s.jitter = Duration::from_micros(rng.below(300));
        after(&mut s, ms(30));
        let changes = s.gate_changes;
        for _ in 0..6 {
            let path = rng.below(2) as usize;
            // A line may also fail one way only, without losing carrier (a broken fibre of
            // a pair): the LAN, resting while the line worked, must wake up in time.
            let one_way = (path == DEDICATED && rng.chance(0.3)).then(|| rng.below(2) as usize);
            let carrier = path == DEDICATED && one_way.is_none() && rng.chance(0.5);
            // The surviving path may lose a little, unless a dark cable shortens the wait.
            s.loss = if carrier { 0.0 } else { 0.01 };
            let set = |s: &mut Sim, up: bool| match (path, one_way) {
                (DEDICATED, Some(from)) => s.cut[from][1 - from][DEDICATED] = !up,
                (DEDICATED, None) => s.set_dedicated(0, 1, up, carrier),
                _ => {
                    s.cut[0][1][LAN] = !up;
                    s.cut[1][0][LAN] = !up;
                }
            };
            set(&mut s, false);
            after(&mut s, ms(50 + rng.below(300)));
            set(&mut s, true);
            after(&mut s, ms(20));
        }
        assert_eq!(
            (s.gate_changes, s.fences_requested),
            (changes, 0),
            "seed {seed}\n{}",
            s.tail()
        );
    }
}

// ---- resources, configuration mismatches, wire versions, persistence, invariant 6 ----

/// A pair whose node 1 runs with a configuration of its own (restarted with it).
fn restart_with(s: &mut Sim, n: usize, cfg: Option<CoreConfig>) {
    s.node_configs[n] = cfg;
    s.stop_agent(n);
    s.start_agent(n);
}

fn other_config(s: &Sim) -> CoreConfig {
    // Another dead time: the same resources, but the nodes would judge liveness apart.
    let mut cfg = s.cfg.clone();
    cfg.misses += 1;
    cfg.digest = cfg.digest_of();
    cfg
}

#[test]
fn a_peer_with_another_configuration_is_reported_never_fenced_and_nothing_moves() {
    let mut s = pair(Some(ms(100)));
    let changes = s.gate_changes;
    let other = other_config(&s);
    restart_with(&mut s, 1, Some(other));
    after(&mut s, ms(500));
    let mismatch = |e: &Event| {
        matches!(
            e,
            Event::ConfigMismatch {
                why: Mismatch::Digest,
                ..
            }
        )
    };
    assert_eq!(s.events_of(0, mismatch), 1, "{}", s.tail());
    assert_eq!(s.events_of(1, mismatch), 1, "{}", s.tail());
    assert_eq!(
        (s.fences_requested, s.gate_changes),
        (0, changes),
        "{}",
        s.tail()
    );
    let c0 = s.nodes[0].core.as_ref().unwrap();
    assert!(c0.peer_alive(1) && c0.peer_mismatch(1) == Some(Mismatch::Digest));
    // What would move an address moves nothing while the configurations differ.
    s.set_lan(0, false);
    after(&mut s, ms(300));
    assert_eq!(
        (s.servers(0), s.servers(1)),
        (vec![0], vec![1]),
        "{}",
        s.tail()
    );
    assert_eq!(s.fences_requested, 0);
    // The same configuration again: reported, and the move happens.
    restart_with(&mut s, 1, None);
    time_until(&mut s, ms(300), |s| s.servers(0) == vec![1]);
    assert_eq!(
        s.events_of(0, |e| matches!(e, Event::ConfigAgrees { .. })),
        1
    );
    assert_eq!(s.fences_requested, 0);
}

#[test]
fn a_peer_with_another_configuration_that_dies_is_fenced_and_taken_over() {
    let mut s = pair(None);
    let other = other_config(&s);
    restart_with(&mut s, 1, Some(other));
    after(&mut s, ms(100));
    s.crash(1);
    time_until(&mut s, ms(200), |s| s.servers(1) == vec![0]);
    assert_eq!(s.fences_requested, 1);
}

/// Node 1 runs the cluster's configuration made `older` (an earlier wire version, `spoken`),
/// node 0 this one: each takes over from the other, a switchover goes both ways, and once
/// node 1 is upgraded the newest version is spoken between them again.
fn an_older_peer_and_this_version_fail_over_both_ways(older: fn(&mut CoreConfig), spoken: u8) {
    let mut s = pair(Some(ms(100)));
    let mut old = s.cfg.clone();
    older(&mut old);
    restart_with(&mut s, 1, Some(old));
    after(&mut s, ms(50));
    let c0 = s.nodes[0].core.as_ref().unwrap();
    assert_eq!(c0.peer_wire_version(1), spoken, "{}", s.tail());
    assert!(c0.peer_alive(1) && c0.peer_mismatch(1).is_none());
    assert_eq!((s.servers(0), s.servers(1)), (vec![0], vec![1]));
    // The new node crashes: the old one takes over; it comes back: failback.
    s.crash(0);
    time_until(&mut s, ms(100), |s| s.servers(0) == vec![1]);
    s.boot(0);
    time_until(&mut s, ms(400), |s| s.servers(0) == vec![0]);
    // The old node crashes: the new one takes over; back again.
    s.crash(1);
    time_until(&mut s, ms(100), |s| s.servers(1) == vec![0]);
    s.boot(1);
    time_until(&mut s, ms(400), |s| s.servers(1) == vec![1]);
    assert!(!s.black_hole, "{}", s.tail());
    // A planned move between them, both ways.
    s.switchover(0, 0, 1);
    time_until(&mut s, ms(100), |s| s.servers(0) == vec![1]);
    s.switchover(1, 0, 0);
    time_until(&mut s, ms(100), |s| s.servers(0) == vec![0]);
    assert!(!s.black_hole, "{}", s.tail());
    // Upgraded: the newest version between them again.
    restart_with(&mut s, 1, None);
    after(&mut s, ms(50));
    assert_eq!(
        s.nodes[0].core.as_ref().unwrap().peer_wire_version(1),
        wire::VERSION
    );
}

#[test]
fn a_version_2_peer_and_this_version_fail_over_both_ways() {
    an_older_peer_and_this_version_fail_over_both_ways(|c| c.emulate_v2 = true, wire::V2);
}

#[test]
fn a_version_3_peer_and_this_version_fail_over_both_ways() {
    an_older_peer_and_this_version_fail_over_both_ways(|c| c.emulate_v3 = true, wire::V3);
}

#[test]
fn a_configuration_version_2_cannot_express_is_a_mismatch_with_a_version_2_peer() {
    // 30 resources: more than version 2 carries.
    let mut cfg = sim::config(2, 0, MS, None);
    cfg.resources = (0..30)
        .map(|i| ResourceSpec {
            ip: format!("10.77.1.{i}").parse().unwrap(),
            prefix: 32,
            service: None,
            stateful: false,
            preference: vec![i % 2, 1 - i % 2],
        })
        .collect();
    cfg.digest = cfg.digest_of();
    let mut s = Sim::with_config(cfg.clone(), 3);
    let old = CoreConfig {
        emulate_v2: true,
        emulate_v3: false,
        components: Vec::new(),
        resources: cfg.resources[..18].to_vec(),
        ..cfg
    };
    // The old node has the first 18 only: it hears nothing it can read and neither does the
    // new one; both live, nothing is fenced.
    s.node_configs[1] = Some(old);
    s.stop_agent(1);
    s.start_agent(1);
    after(&mut s, ms(300));
    assert_eq!(s.fences_requested, 0, "{}", s.tail());
    let c0 = s.nodes[0].core.as_ref().unwrap();
    assert!(c0.peer_alive(1));
    assert_eq!(c0.peer_mismatch(1), Some(Mismatch::Inexpressible));
}

#[test]
fn a_thousand_resources_in_parts_fail_over_together() {
    let mut cfg = sim::config(2, 0, MS, Some(ms(50)));
    // Owners alternate: every resource unlike its neighbour, the longest summary.
    cfg.resources = (0..1000)
        .map(|i| ResourceSpec {
            ip: std::net::IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i as u16)),
            prefix: 128,
            service: None,
            stateful: false,
            preference: vec![i % 2, 1 - i % 2],
        })
        .collect();
    cfg.digest = cfg.digest_of();
    let mut s = Sim::with_config(cfg, 7);
    after(&mut s, ms(50));
    for a in 0..1000 {
        assert_eq!(s.servers(a), vec![a % 2], "a{a}");
    }
    let sent = |s: &Sim| s.sent.get(&(0, 1, LAN)).copied().unwrap_or(0);
    let before = sent(&s);
    after(&mut s, ms(10));
    // Several parts per round (the LAN carries every other round).
    assert!(sent(&s) - before >= 5 * 2, "{}", sent(&s) - before);
    s.crash(0);
    time_until(&mut s, ms(100), |s| {
        (0..1000).all(|a| s.servers(a) == vec![1])
    });
    s.boot(0);
    time_until(&mut s, ms(500), |s| {
        (0..1000).all(|a| s.servers(a) == vec![a % 2])
    });
    assert!(!s.black_hole, "{}", s.tail());
}

#[test]
fn a_dark_line_between_two_nodes_does_not_make_a_third_probe_or_confirm() {
    let mut s = Sim::new(3, MS, None, 5);
    after(&mut s, ms(50));
    let probes = |s: &Sim, from: usize, to: usize| {
        s.events.len();
        s.sent.get(&(from, to, LAN)).copied().unwrap_or(0)
    };
    let lan_before: Vec<u64> = (0..3).map(|n| probes(&s, 2, n)).collect();
    s.set_dedicated(0, 1, false, true);
    after(&mut s, ms(20));
    // n2's line to both is up: it goes on taking turns, one LAN heartbeat in two, no probes.
    for n in [0, 1] {
        let sent = probes(&s, 2, n) - lan_before[n];
        assert!(sent <= 11, "n2 sent {sent} on the LAN to n{n} in 20 ms");
    }
    let c2 = s.nodes[2].core.as_ref().unwrap();
    assert!(!c2.line_dark(0) && !c2.line_dark(1));
    let c0 = s.nodes[0].core.as_ref().unwrap();
    assert!(c0.line_dark(1) && !c0.line_dark(2));
    // n1 crashes: n0 confirms it by the short path; n2 by the dead time, as it saw no carrier
    // drop.
    s.crash(1);
    after(&mut s, ms(20));
    let short = |e: &Event| {
        matches!(
            e,
            Event::PeerDead {
                peer: 1,
                reason: DeathReason::LineDarkLanSilent
            }
        )
    };
    let silent = |e: &Event| {
        matches!(
            e,
            Event::PeerDead {
                peer: 1,
                reason: DeathReason::Silent
            }
        )
    };
    assert_eq!(s.events_of(2, short), 0, "{}", s.tail());
    assert_eq!(s.events_of(2, silent), 1, "{}", s.tail());
}

#[test]
fn a_failed_durable_write_keeps_the_gate_closed_and_is_retried() {
    let mut s = pair(None);
    s.persist_works = false;
    s.crash(0);
    after(&mut s, ms(100));
    assert!(s.servers(0).is_empty(), "{}", s.tail());
    assert!(s.events_of(1, |e| matches!(e, Event::PersistFailed { .. })) >= 1);
    s.persist_works = true;
    time_until(&mut s, ms(1500), |s| s.servers(0) == vec![1]);
    assert_eq!(
        s.nodes[1].epochs[0],
        s.nodes[1].core.as_ref().unwrap().epoch(0)
    );
}

#[test]
fn after_a_handover_the_old_server_forwards_for_its_window_then_closes_and_the_new_one_repeats_its_announcements(
) {
    let mut s = pair(None);
    s.switchover(0, 0, 1);
    time_until(&mut s, ms(50), |s| s.servers(0) == vec![1]);
    let opened = s.now;
    assert!(matches!(s.nodes[0].gates[0], Gate::Forward(1)));
    let window = s.cfg.forward_for;
    after(&mut s, window + ms(5));
    assert_eq!(s.nodes[0].gates[0], Gate::Closed, "{}", s.tail());
    assert_eq!(
        s.events_of(0, |e| matches!(e, Event::ForwardEnded { .. })),
        1
    );
    // Announced at the open and three times more within the window.
    let times: Vec<Duration> = s
        .announced
        .iter()
        .filter(|(t, n, a)| *n == 1 && *a == 0 && *t + ms(5) >= opened)
        .map(|(t, _, _)| *t)
        .collect();
    assert_eq!(times.len(), 4, "{times:?}");
    assert!(times.iter().all(|t| *t < opened + s.cfg.forward_for));
}
