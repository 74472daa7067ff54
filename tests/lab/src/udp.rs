//! A UDP request/response service and its client, run inside namespaces.
use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::Netns;

/// Answers every datagram with `<tag> <request>`, so the client sees which host replied.
/// Bind it to the address it serves: replies then leave from that address (a wildcard
/// socket would answer from the host's primary address).
pub struct Responder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    pub fn spawn(ns: &Netns, bind: &str, tag: &str) -> Result<Self> {
        let sock = ns.udp(bind)?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let tag = tag.as_bytes().to_vec();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        let mut reply = tag.clone();
                        reply.push(b' ');
                        reply.extend_from_slice(&buf[..n]);
                        let _ = sock.send_to(&reply, from);
                    }
                }
            })
        };
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends numbered requests and reads the replies.
pub struct Client {
    pub sock: UdpSocket,
    pub target: SocketAddr,
}

impl Client {
    pub fn new(ns: &Netns, bind: &str, target: &str) -> Result<Self> {
        let sock = ns.udp(bind)?;
        let target = target
            .parse()
            .with_context(|| format!("bad target {target}"))?;
        Ok(Self { sock, target })
    }

    pub fn send(&self, seq: u64) -> Result<()> {
        self.sock
            .send_to(format!("req {seq}").as_bytes(), self.target)?;
        Ok(())
    }

    /// The next reply from the target within `timeout`, as (tag, seq). A datagram from any
    /// other address (a server answering from its own address) is not a reply.
    pub fn recv(&self, timeout: Duration) -> Result<Option<(String, u64)>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.sock.set_read_timeout(Some(left))?;
            match self.sock.recv_from(&mut buf) {
                Ok((_, from)) if from != self.target => continue,
                Ok((n, _)) => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let mut parts = text.split_whitespace();
                    let tag = parts.next().unwrap_or_default().to_string();
                    let seq = parts
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(u64::MAX);
                    return Ok(Some((tag, seq)));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends `seq` and waits for its reply (skipping late replies to older requests).
    pub fn request(&self, seq: u64, timeout: Duration) -> Result<Option<String>> {
        self.send(seq)?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match self.recv(left)? {
                Some((tag, s)) if s == seq => return Ok(Some(tag)),
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }
}
