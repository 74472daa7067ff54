//! The area on a scratch file: slots, copies, torn and garbage records, the journal ring, and
//! `init`'s refusals.
use std::path::PathBuf;

use super::{
    admin::{self, Sizes},
    layout::{Slot, BLOCK},
    payloads::{Change, Claim, Heartbeat, JournalEntry, Ownership},
    record::RecordError,
    Area, Device,
};

/// A scratch file of `bytes`, removed when dropped (also when a test fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(bytes: u64) -> Scratch {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "takeover-storage-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::File::create(&path)
            .unwrap()
            .set_len(bytes)
            .unwrap();
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const SMALL: Sizes = Sizes {
    ownership_blocks: 2,
    handoff_blocks: 2,
    journal_blocks: 4,
};

fn nodes() -> Vec<String> {
    vec!["a".into(), "b".into()]
}

fn formatted() -> (Scratch, Area) {
    let s = Scratch::new(1 << 20);
    let area = admin::init(&s.0, &nodes(), SMALL, false).unwrap();
    (s, area)
}

fn hb(ms: u64) -> Heartbeat {
    Heartbeat {
        written_unix_ms: ms,
        interval_ms: 100,
        ..Default::default()
    }
}

/// Overwrites `len` bytes at byte `at` of the file behind `area`, as a torn write or a
/// stray writer would.
fn scribble(area: &Area, block: u64, at: usize, bytes: &[u8]) {
    let mut buf = area.dev.read(block, 1).unwrap();
    buf[at..at + bytes.len()].copy_from_slice(bytes);
    area.dev.write(block, &buf).unwrap();
}

#[test]
fn slots_read_back_the_newest_write_and_alternate_copies() {
    let (_s, mut area) = formatted();
    assert_eq!(
        area.read::<Heartbeat>(0, Slot::Heartbeat)
            .unwrap()
            .value
            .unwrap_err(),
        RecordError::Blank
    );
    for ms in 1..=5 {
        assert_eq!(area.write(0, Slot::Heartbeat, &hb(ms)).unwrap(), ms);
    }
    let read = area.read::<Heartbeat>(0, Slot::Heartbeat).unwrap();
    assert_eq!(read.value.unwrap(), (5, hb(5)));
    assert!(read.damage.is_none());
    // b's slot is b's: untouched.
    assert!(area
        .read::<Heartbeat>(1, Slot::Heartbeat)
        .unwrap()
        .value
        .is_err());
    // Another process (a restarted agent) continues the generations, into the older copy.
    let mut again = Area::open(Device::open(&area.dev.path).unwrap()).unwrap();
    assert_eq!(again.write(0, Slot::Heartbeat, &hb(6)).unwrap(), 6);
    let (g0, _) = area.geo.slot(0, Slot::Heartbeat, 0);
    let (g1, _) = area.geo.slot(0, Slot::Heartbeat, 1);
    let gens: Vec<u64> = [g0, g1]
        .iter()
        .map(|b| {
            let buf = area.dev.read(*b, 1).unwrap();
            super::record::decode(&buf, super::record::Kind::Heartbeat, 0)
                .unwrap()
                .generation
        })
        .collect();
    assert_eq!(gens.iter().max(), Some(&6));
    assert_eq!(gens.iter().min(), Some(&5));
}

#[test]
fn a_torn_or_garbage_copy_in_every_slot_kind_falls_back_to_the_last_good_one() {
    let (_s, mut area) = formatted();
    let claims = |epoch| Ownership {
        claims: [(
            "10.0.0.1".to_string(),
            Claim {
                epoch,
                held: true,
                since_unix_ms: 0,
            },
        )]
        .into(),
    };
    for slot in Slot::ALL {
        for gen in 1..=2u64 {
            match slot {
                Slot::Ownership => area.write(1, slot, &claims(gen)),
                Slot::Heartbeat => area.write(1, slot, &hb(gen)),
                Slot::Message => area.write(1, slot, &super::payloads::Message::default()),
                Slot::Handoff => area.write(1, slot, &super::payloads::Handoff::default()),
            }
            .unwrap();
        }
        // Find the copy holding generation 2 and tear it: its second sector is of another write.
        let newest = (0..2)
            .find(|c| {
                let (b, n) = area.geo.slot(1, slot, *c);
                let buf = area.dev.read(b, n).unwrap();
                super::record::decode(&buf, slot.kind(), 1)
                    .unwrap()
                    .generation
                    == 2
            })
            .unwrap();
        let (block, _) = area.geo.slot(1, slot, newest);
        scribble(&area, block, 40, &[0xAA; 16]);
        let read = area.read::<serde_json::Value>(1, slot).unwrap();
        assert_eq!(
            read.value.unwrap().0,
            1,
            "{slot:?}: the previous generation"
        );
        assert_eq!(read.damage, Some(RecordError::BadChecksum), "{slot:?}");
        // Garbage over the other copy too: an error to report, not a panic.
        let (other, _) = area.geo.slot(1, slot, 1 - newest);
        scribble(&area, other, 0, &[0x5A; 64]);
        let read = area.read::<serde_json::Value>(1, slot).unwrap();
        assert!(read.value.is_err(), "{slot:?}");
    }
    // The next write of a slot with no good copy starts over past what it could see, and
    // reads back.
    let mut again = Area::open(Device::open(&area.dev.path).unwrap()).unwrap();
    again.write(1, Slot::Ownership, &claims(9)).unwrap();
    let read = again.read::<Ownership>(1, Slot::Ownership).unwrap();
    assert_eq!(read.value.unwrap().1, claims(9));
    // And `show` reports the damage, not a failure.
    let report = admin::inspect(&again).unwrap();
    assert!(report.damaged >= 4, "{}", report.damaged);
}

#[test]
fn the_journal_replays_in_order_through_wraps_and_reports_a_torn_end() {
    let (_s, mut area) = formatted();
    let entry = |epoch| JournalEntry {
        unix_ms: 0,
        change: Change::Owned {
            resource: "r".into(),
            epoch,
        },
    };
    // Init wrote seq 1; 9 more wrap the ring of 4 twice.
    for e in 2..=10 {
        assert_eq!(area.append(0, entry(e)).unwrap(), e);
    }
    let r = area.replay(0).unwrap();
    assert_eq!(r.end, 10);
    let seqs: Vec<u64> = r.entries.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [7, 8, 9, 10]);
    assert!(r.damaged.is_empty());
    // The 11th append is torn (its checksum fails): the end stays 10, the damage is named.
    let mut fresh = Area::open(Device::open(&area.dev.path).unwrap()).unwrap();
    assert_eq!(fresh.append(0, entry(11)).unwrap(), 11);
    scribble(&fresh, fresh.geo.journal(0, 2), 100, b"torn");
    let r = fresh.replay(0).unwrap();
    assert_eq!(r.end, 10);
    assert_eq!(r.damaged.len(), 1);
    assert_eq!(r.damaged[0].1, RecordError::BadChecksum);
    // A record copied into another node's ring is refused there (misplaced).
    let from_a = fresh.dev.read(fresh.geo.journal(0, 0), 1).unwrap();
    fresh.dev.write(fresh.geo.journal(1, 1), &from_a).unwrap();
    let rb = fresh.replay(1).unwrap();
    assert!(
        matches!(rb.damaged[..], [(_, RecordError::Misplaced { .. })]),
        "{rb:?}"
    );
    assert_eq!(rb.end, 1);
}

#[test]
fn init_refuses_what_is_not_blank_unless_forced_and_a_live_area_even_then() {
    let s = Scratch::new(1 << 20);
    // Something else's data: refused, and left as it was.
    std::fs::write(&s.0, vec![0xEFu8; 1 << 20]).unwrap();
    let err = admin::init(&s.0, &nodes(), SMALL, false).unwrap_err();
    assert!(format!("{err:#}").contains("--force"), "{err:#}");
    assert!(std::fs::read(&s.0).unwrap().iter().all(|b| *b == 0xEF));
    let area = admin::init(&s.0, &nodes(), SMALL, true).unwrap();
    let id = area.sb.area_id.clone();
    // Formatted: refused without --force.
    let err = admin::init(&s.0, &nodes(), SMALL, false).unwrap_err();
    assert!(format!("{err:#}").contains("already"), "{err:#}");
    // A node writing its heartbeat: refused even with --force.
    let path = s.0.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut area = Area::open(Device::open(&path).unwrap()).unwrap();
            let mut ms = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                ms += 1;
                area.write(1, Slot::Heartbeat, &hb(ms)).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    let err = admin::init(&s.0, &nodes(), SMALL, true).unwrap_err();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        format!("{err:#}").contains("node b's agent is writing"),
        "{err:#}"
    );
    let still = Area::open(Device::open(&s.0).unwrap()).unwrap();
    assert_eq!(still.sb.area_id, id, "a refused init changed the area");
    // Stopped: --force formats it anew.
    let again = admin::init(&s.0, &nodes(), SMALL, true).unwrap();
    assert_ne!(again.sb.area_id, id);
    // Bad requests change nothing.
    for bad in [
        vec![],
        vec!["a".to_string(), "a".to_string()],
        vec![String::new()],
    ] {
        assert!(admin::init(&s.0, &bad, SMALL, true).is_err(), "{bad:?}");
    }
    let tiny = Scratch::new(4 * BLOCK as u64);
    let err = admin::init(&tiny.0, &nodes(), SMALL, false).unwrap_err();
    assert!(format!("{err:#}").contains("needs"), "{err:#}");
}

#[test]
fn init_refuses_a_file_system_that_starts_with_zeros_and_an_area_written_lately() {
    // btrfs keeps its superblock at 64 KiB, ZFS pads its label: blocks 0 and 1 blank, data
    // further on. Refused without --force, and left as it was.
    let s = Scratch::new(1 << 20);
    let mut data = vec![0u8; 1 << 20];
    data[64 << 10..(64 << 10) + 8].copy_from_slice(b"_BHRfS_M");
    std::fs::write(&s.0, &data).unwrap();
    let err = admin::init(&s.0, &nodes(), SMALL, false).unwrap_err();
    assert!(format!("{err:#}").contains("offset 65536"), "{err:#}");
    assert_eq!(std::fs::read(&s.0).unwrap(), data);
    // An area whose heartbeat was written a moment ago (by the wall clock) may be in use by
    // an agent that writes less often than init watches: refused even with --force.
    let mut area = admin::init(&s.0, &nodes(), SMALL, true).unwrap();
    let now = super::area::unix_ms();
    area.write(0, Slot::Heartbeat, &hb(now)).unwrap();
    let err = admin::init(&s.0, &nodes(), SMALL, true).unwrap_err();
    assert!(
        format!("{err:#}").contains("node a wrote its disk heartbeat"),
        "{err:#}"
    );
}
