use super::*;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn header(seq: u64) -> Header {
    Header {
        sender: "node-a".into(),
        incarnation: 1_700_000_000_000_000_000,
        peer_incarnation: 1_700_000_000_000_000_001,
        seq,
        path: 1,
        sent_at_us: 123_456,
        echo_us: 123_000,
        echo_hold_us: 42,
        exit_commit: commit(&[7; TOKEN_LEN]),
        lan_up: true,
        ready: true,
        restarting: false,
        reads_v3: true,
        reads_v4: true,
        leased: true,
    }
}

fn v2_summary() -> v2::Summary {
    v2::Summary {
        serving: vec![
            ("10.0.0.100".parse().unwrap(), 7),
            ("fd00::100".parse().unwrap(), 8),
        ],
        votes: vec![
            ("10.0.0.100".parse().unwrap(), 0),
            ("fd00::100".parse().unwrap(), 1),
        ],
        overrides: vec![],
    }
}

fn states(n: usize) -> Vec<v3::State> {
    (0..n)
        .map(|i| v3::State {
            serving: (i % 3 == 0).then_some(5),
            vote: Some((i / 100) as u8),
            moved: (i == 7).then_some((1, 2)),
            instance: None,
        })
        .collect()
}

/// Version 4's: the last resources are services, with their instances' states.
fn states_v4(n: usize) -> Vec<v3::State> {
    let mut s = states(n);
    for (i, x) in s.iter_mut().enumerate().skip(n / 2) {
        x.instance = Some([0x04, 0x11, 0x02, 0x19][i % 4]);
    }
    s
}

fn v3_message(seq: u64) -> Vec<u8> {
    let parts = v3::pack(&states(40), V3);
    v3::encode(&header(seq), V3, &[9; 8], 40, &parts[0], KEY)
}

fn v4_message(seq: u64) -> Vec<u8> {
    let parts = v3::pack(&states_v4(40), VERSION);
    v3::encode(&header(seq), VERSION, &[9; 8], 40, &parts[0], KEY)
}

#[test]
fn version_2_round_trip() {
    let h = Header {
        reads_v3: false,
        reads_v4: false,
        ..header(5)
    };
    let got = decode(&v2::encode(&h, &v2_summary(), KEY), KEY).unwrap();
    assert_eq!(got.version, V2);
    assert_eq!(got.header, h);
    assert_eq!(got.body, Body::V2(v2_summary()));
    // An agent of this version says in a version-2 message that it reads versions 3 and 4.
    let got = decode(&v2::encode(&header(5), &v2_summary(), KEY), KEY).unwrap();
    assert!(got.header.reads_v3 && got.header.reads_v4);
}

#[test]
fn the_lease_flag_rides_every_version_and_an_older_agents_heartbeat_has_none() {
    let v2 = Header {
        reads_v3: false,
        reads_v4: false,
        ..header(5)
    };
    for (bytes, leased) in [
        (v2::encode(&v2, &v2_summary(), KEY), true),
        (v3_message(6), true),
        (v4_message(7), true),
        // What an agent before leases writes: the bit clear.
        (
            v2::encode(
                &Header {
                    leased: false,
                    ..v2.clone()
                },
                &v2_summary(),
                KEY,
            ),
            false,
        ),
    ] {
        assert_eq!(decode(&bytes, KEY).unwrap().header.leased, leased);
    }
}

#[test]
fn version_3_round_trip_in_runs() {
    let s = states(40);
    let parts = v3::pack(&s, V3);
    assert_eq!(parts.len(), 1);
    let v3_header = Header {
        reads_v4: false,
        ..header(5)
    };
    let got = decode(
        &v3::encode(&v3_header, V3, &[9; 8], 40, &parts[0], KEY),
        KEY,
    )
    .unwrap();
    assert_eq!(got.version, V3);
    assert_eq!(got.header, v3_header);
    let Body::V3(part) = got.body else {
        panic!("not version 3")
    };
    assert_eq!(part.digest, [9; 8]);
    assert_eq!(part.total, 40);
    let back: Vec<v3::State> = part.states().map(|(_, s)| s).collect();
    assert_eq!(back, s);
}

#[test]
fn version_4_carries_the_instances_and_version_3_of_the_same_summary_leaves_them_out() {
    // Packed for `version` in one part, encoded, decoded: the header and the states read.
    let round_trip = |s: &[v3::State], version: u8| {
        let parts = v3::pack(s, version);
        let got = decode(
            &v3::encode(&header(5), version, &[9; 8], 40, &parts[0], KEY),
            KEY,
        )
        .unwrap();
        assert_eq!(got.version, version);
        let Body::V3(part) = got.body else {
            panic!("not version {version}")
        };
        (
            got.header,
            part.states().map(|(_, s)| s).collect::<Vec<_>>(),
        )
    };
    let s = states_v4(40);
    let (h, back) = round_trip(&s, VERSION);
    assert!(h.reads_v3 && h.reads_v4);
    assert_eq!(back, s);
    // The same summary for a version-3 peer: everything but the instances, which a
    // version-3 reader would refuse.
    let (_, back) = round_trip(&s, V3);
    let without: Vec<v3::State> = s
        .iter()
        .map(|x| v3::State {
            instance: None,
            ..*x
        })
        .collect();
    assert_eq!(back, without);
    // Version 3 with an instance in it (a version-4 body under a version-3 byte) is refused,
    // and so is an instance state with bits nobody defined.
    let mut mislabelled = v4_message(7);
    mislabelled.truncate(mislabelled.len() - TAG_LEN);
    mislabelled[4] = V3;
    assert_eq!(decode(&resign(mislabelled), KEY), Err(Rejected::Malformed));
    let mut odd = states_v4(2);
    odd[1].instance = Some(0x80);
    let p = v3::pack(&odd, VERSION);
    let bytes = v3::encode(&header(8), VERSION, &[9; 8], 2, &p[0], KEY);
    assert_eq!(decode(&bytes, KEY), Err(Rejected::Malformed));
}

#[test]
fn thousands_of_resources_fit_in_few_parts_and_read_back_whole() {
    // One owner's resources opened together: a handful of runs, one datagram.
    let uniform: Vec<v3::State> = (0..10_000)
        .map(|i| v3::State {
            serving: (i < 5_000).then_some(3),
            vote: Some(u8::from(i >= 5_000)),
            moved: None,
            instance: None,
        })
        .collect();
    assert_eq!(v3::pack(&uniform, VERSION).len(), 1);
    // The worst case: every resource unlike its neighbour.
    let mixed: Vec<v3::State> = (0..1_000)
        .map(|i| v3::State {
            serving: Some(i as u64),
            vote: Some((i % 2) as u8),
            moved: Some((1, i as u64)),
            instance: Some((i % 20) as u8),
        })
        .collect();
    let parts = v3::pack(&mixed, VERSION);
    assert!(parts.len() > 1 && parts.len() <= 20, "{}", parts.len());
    let mut back = vec![None; mixed.len()];
    for (i, p) in parts.iter().enumerate() {
        let bytes = v3::encode(&header(i as u64 + 1), VERSION, &[1; 8], 1_000, p, KEY);
        assert!(bytes.len() <= MAX_MESSAGE, "{}", bytes.len());
        let Body::V3(part) = decode(&bytes, KEY).unwrap().body else {
            panic!()
        };
        for (r, s) in part.states() {
            assert!(back[r].is_none(), "resource {r} in two parts");
            back[r] = Some(s);
        }
    }
    assert_eq!(back, mixed.into_iter().map(Some).collect::<Vec<_>>());
}

#[test]
fn a_full_version_2_heartbeat_fits_one_datagram() {
    let s = v2::Summary {
        serving: vec![("fd00::1".parse().unwrap(), u64::MAX); v2::MAX_SERVED],
        votes: vec![("fd00::1".parse().unwrap(), 3); v2::MAX_SERVED],
        overrides: vec![("fd00::1".parse().unwrap(), 3, u64::MAX); v2::MAX_SERVED],
    };
    let h = Header {
        sender: "x".repeat(MAX_NAME),
        ..header(1)
    };
    let bytes = v2::encode(&h, &s, KEY);
    assert!(bytes.len() <= MAX_MESSAGE, "{}", bytes.len());
    assert_eq!(decode(&bytes, KEY).unwrap().body, Body::V2(s));
}

#[test]
fn exit_notice_round_trip_and_refusals() {
    let token = [9u8; TOKEN_LEN];
    let n = encode_notice(42, &token);
    assert!(is_notice(&n) && !is_notice(&v3_message(1)));
    assert_eq!(decode_notice(&n), Ok((42, token)));
    // Written as version 2 (agents of every version read it); later ones are read too.
    assert_eq!(n[4], V2);
    for v in [V3, VERSION] {
        let mut later = n;
        later[4] = v;
        assert_eq!(decode_notice(&later), Ok((42, token)));
    }
    // The data plane answers with the whole heartbeat frame: the tail is ignored.
    let mut long = n.to_vec();
    long.extend_from_slice(&[0xee; 60]);
    assert_eq!(decode_notice(&long), Ok((42, token)));
    for cut in 0..NOTICE_LEN {
        assert_eq!(decode_notice(&n[..cut]), Err(Rejected::Truncated));
    }
    let mut bad = n;
    bad[4] = VERSION + 1;
    assert_eq!(decode_notice(&bad), Err(Rejected::ForeignVersion));
    let mut bad = n;
    bad[6] = 1;
    assert_eq!(decode_notice(&bad), Err(Rejected::Malformed));
    // The commitment binds the token: any other token has another hash.
    let mut other = token;
    other[0] ^= 1;
    assert_ne!(commit(&token), commit(&other));
}

#[test]
fn probe_answers_are_checked_by_their_nonce() {
    let p = encode_probe(KEY, 9, 3, 1);
    let answer = probe_answer(&p).unwrap();
    assert!(is_probe_answer(&answer) && !is_probe_answer(&p));
    assert_eq!(decode_probe_answer(&answer, KEY), Ok((9, 3, 1)));
    // Another key, or any changed field, and the nonce no longer matches.
    assert_eq!(
        decode_probe_answer(&answer, b"another key"),
        Err(Rejected::BadTag)
    );
    for at in [6, 8, 16, 24] {
        let mut bad = answer.clone();
        bad[at] ^= 1;
        assert_eq!(
            decode_probe_answer(&bad, KEY),
            Err(Rejected::BadTag),
            "{at}"
        );
    }
    assert_eq!(decode_probe_answer(&p, KEY), Err(Rejected::Malformed));
    assert_eq!(
        decode_probe_answer(&answer[..31], KEY),
        Err(Rejected::Truncated)
    );
}

#[test]
fn every_flipped_bit_is_rejected_in_every_version() {
    for bytes in [
        v4_message(5),
        v3_message(5),
        v2::encode(&header(5), &v2_summary(), KEY),
    ] {
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            let r = decode(&b, KEY);
            let expected = match i / 8 {
                0..=3 => Rejected::BadMagic,
                // 2 <-> 3 is the one flip of the version that lands on a known version.
                4 if (V2..=VERSION).contains(&b[4]) => Rejected::BadTag,
                4 => Rejected::ForeignVersion,
                _ => Rejected::BadTag,
            };
            assert_eq!(r, Err(expected), "bit {i}");
        }
    }
}

#[test]
fn another_key_is_a_forgery() {
    let parts = v3::pack(&states(3), V3);
    let bytes = v3::encode(
        &header(5),
        V3,
        &[9; 8],
        3,
        &parts[0],
        b"another key entirely",
    );
    assert_eq!(decode(&bytes, KEY), Err(Rejected::BadTag));
}

#[test]
fn every_truncation_is_rejected() {
    for bytes in [
        v4_message(5),
        v3_message(5),
        v2::encode(&header(5), &v2_summary(), KEY),
    ] {
        for len in 0..bytes.len() {
            let r = decode(&bytes[..len], KEY);
            assert!(
                matches!(r, Err(Rejected::Truncated) | Err(Rejected::BadTag)),
                "len {len}: {r:?}"
            );
        }
    }
}

/// Re-signs a body with a bad field: the sender has the key but a bug.
fn resign(mut body: Vec<u8>) -> Vec<u8> {
    sign(&mut body, KEY);
    body
}

#[test]
fn authentic_but_malformed_is_rejected() {
    let good = v2::encode(&header(5), &v2_summary(), KEY);
    let body = good[..good.len() - TAG_LEN].to_vec();
    let mut kind = body.clone();
    kind[5] = 9;
    assert_eq!(decode(&resign(kind), KEY), Err(Rejected::Malformed));
    let mut trailing = body.clone();
    trailing.push(0);
    assert_eq!(decode(&resign(trailing), KEY), Err(Rejected::Malformed));
    let short = body[..body.len() - 3].to_vec();
    assert_eq!(decode(&resign(short), KEY), Err(Rejected::Malformed));
    let mut family = body.clone();
    // The family byte of the first served address, counted from the end: the (empty)
    // overrides' count, two votes (v6, v4), their count, then the two served entries.
    let at = body.len() - 2 - (1 + 16 + 1) - (1 + 4 + 1) - 2 - (1 + 16 + 8) - (1 + 4 + 8);
    family[at] = 5;
    assert_eq!(decode(&resign(family), KEY), Err(Rejected::Malformed));

    // Version 3: runs past the sender's own count, an empty run, an unknown state bit.
    let v3 = v3_message(5);
    let body = v3[..v3.len() - TAG_LEN].to_vec();
    let total_at = MAX_HEADER - MAX_NAME + "node-a".len() + v3::DIGEST_LEN;
    let mut over = body.clone();
    over[total_at..total_at + 4].copy_from_slice(&39u32.to_be_bytes());
    assert_eq!(decode(&resign(over), KEY), Err(Rejected::Malformed));
    let first_run = total_at + 4 + 4 + 2;
    let mut empty = body.clone();
    empty[first_run..first_run + 2].copy_from_slice(&0u16.to_be_bytes());
    assert_eq!(decode(&resign(empty), KEY), Err(Rejected::Malformed));
    let mut flags = body.clone();
    flags[first_run + 2] |= 0x80;
    assert_eq!(decode(&resign(flags), KEY), Err(Rejected::Malformed));
}

#[test]
fn foreign_and_garbage_datagrams_never_panic() {
    let mut rng = super::super::sim::Rng::new(0x2545_f491_4f6c_dd1d);
    for i in 0..20_000 {
        let len = i % 200;
        let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if i % 3 == 0 && len >= 5 {
            b[..4].copy_from_slice(&MAGIC);
            b[4] = [V2, V3, VERSION][(i / 3) % 3];
        }
        assert!(decode(&b, KEY).is_err());
    }
}

#[test]
fn replayed_and_too_old_messages_are_refused() {
    let mut g = ReplayGuard::default();
    let h = header;
    assert_eq!(g.check(&h(1)), Ok(()));
    assert_eq!(g.check(&h(2)), Ok(()));
    assert_eq!(g.check(&h(2)), Err(Rejected::Replayed), "duplicate");
    assert_eq!(g.check(&h(1)), Err(Rejected::Replayed), "older, seen");
    assert_eq!(g.check(&h(10)), Ok(()), "a gap is fine (losses)");
    // Late but never seen (crossed another): taken once.
    assert_eq!(g.check(&h(7)), Ok(()), "late");
    assert_eq!(g.check(&h(7)), Err(Rejected::Replayed), "late, again");
    assert_eq!(g.check(&h(100)), Ok(()));
    assert_eq!(
        g.check(&h(100 - REPLAY_WINDOW + 1)),
        Ok(()),
        "last in the window"
    );
    assert_eq!(
        g.check(&h(100 - REPLAY_WINDOW)),
        Err(Rejected::Replayed),
        "older than the window"
    );
    // A jump beyond the window forgets the old bits, not the old numbers.
    assert_eq!(g.check(&h(100 + 3 * REPLAY_WINDOW)), Ok(()));
    assert_eq!(g.check(&h(100)), Err(Rejected::Replayed));
    // Paths count separately.
    assert_eq!(g.check(&Header { path: 0, ..h(3) }), Ok(()));
    // A restart: a newer incarnation starts over; the old one is dead for good.
    let restarted = Header {
        incarnation: h(1).incarnation + 1,
        ..h(1)
    };
    assert_eq!(g.check(&restarted), Ok(()));
    assert_eq!(g.check(&h(11)), Err(Rejected::Replayed), "old incarnation");
}
