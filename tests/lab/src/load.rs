//! A client load: one UDP request every millisecond, and what came back, by whom and when.
use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, SystemTime},
};

use crate::udp::Client;

/// Microseconds since the Unix epoch: the agents log in the same clock.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// What the client saw: when each request went out, and who answered it when.
#[derive(Clone, Default)]
pub struct Seen {
    pub sent: BTreeMap<u64, u64>,
    pub replies: BTreeMap<u64, (u64, String)>,
}

impl Seen {
    /// The first reply by `who` after `after` (Unix µs).
    pub fn first_reply(&self, who: &str, after: u64) -> Option<u64> {
        self.replies
            .values()
            .filter(|(t, w)| *t > after && w == who)
            .map(|(t, _)| *t)
            .min()
    }

    /// Requests sent in `[from, to)` that got no reply.
    pub fn lost(&self, from: u64, to: u64) -> usize {
        self.sent
            .iter()
            .filter(|(s, t)| **t >= from && **t < to && !self.replies.contains_key(s))
            .count()
    }

    /// The longest silence the client saw between two replies, for replies after `from`.
    pub fn longest_gap(&self, from: u64, to: u64) -> Duration {
        self.longest_gap_at(from, to).0
    }

    /// The longest silence between replies received in `[from, to)` and when it began (µs).
    pub fn longest_gap_at(&self, from: u64, to: u64) -> (Duration, u64) {
        let mut times: Vec<u64> = self
            .replies
            .values()
            .map(|(t, _)| *t)
            .filter(|t| *t >= from && *t < to)
            .collect();
        times.sort_unstable();
        let (gap, at) = times
            .windows(2)
            .map(|w| (w[1] - w[0], w[0]))
            .max()
            .unwrap_or((0, from));
        (Duration::from_micros(gap), at)
    }
}

/// The running load; `stop` ends it and returns what was seen.
pub struct Load {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(client: Arc<Client>, per_second: u64) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(0));
        let period = 1_000_000 / per_second.max(1);
        let sender = {
            let (client, seen, stop, next) =
                (client.clone(), seen.clone(), stop.clone(), next.clone());
            std::thread::spawn(move || {
                let start = now_us();
                while !stop.load(Ordering::Relaxed) {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    seen.lock().unwrap().sent.insert(seq, now_us());
                    let _ = client.send(seq);
                    // Paced on the clock, not on sleeps: the rate holds on average.
                    let due = start + (seq + 1) * period;
                    let now = now_us();
                    if due > now {
                        std::thread::sleep(Duration::from_micros(due - now));
                    }
                }
            })
        };
        let receiver = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(Some((tag, seq))) = client.recv(Duration::from_millis(20)) {
                        seen.lock().unwrap().replies.insert(seq, (now_us(), tag));
                    }
                }
            })
        };
        Self {
            seen,
            stop,
            threads: vec![sender, receiver],
        }
    }

    /// True once a reply by `who` arrived after `after`.
    pub fn served_by(&self, who: &str, after: u64) -> bool {
        self.seen.lock().unwrap().first_reply(who, after).is_some()
    }

    pub fn stop(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
