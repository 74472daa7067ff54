//! An HTTP client load: `GET /` on a new TCP connection every millisecond, none waiting for
//! another (nonblocking sockets in one poll loop), and what came back, by whom and when, in
//! the record the UDP load keeps ([`Seen`]; only a `200` reply counts as a reply).
use std::{
    collections::BTreeMap,
    fs::File,
    io::{ErrorKind, Read, Write},
    net::{SocketAddrV4, TcpStream},
    os::fd::{AsRawFd, FromRawFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{
    load::{now_us, Seen},
    Netns,
};

/// A request not answered this long after it was sent is given up (a failure: `timeout`).
const GIVE_UP: Duration = Duration::from_secs(2);
/// After `stop`, how long the requests still open may take to finish: past one SYN
/// retransmission (1 s), so that a request is not lost just because the trial ended.
const DRAIN: Duration = Duration::from_millis(1500);
const REQUEST: &[u8] = b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n";

/// What the client saw: [`Seen`], and why each request that failed failed.
#[derive(Clone, Default)]
pub struct HttpSeen {
    pub seen: Seen,
    /// By sequence number: when it failed (Unix µs) and why (`refused`, `reset`, `timeout`,
    /// `status 502`, …).
    pub failed: BTreeMap<u64, (u64, String)>,
}

impl HttpSeen {
    /// Requests sent in `[from, to)` that failed, counted by reason.
    pub fn failures(&self, from: u64, to: u64) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (seq, (_, why)) in &self.failed {
            if self
                .seen
                .sent
                .get(seq)
                .is_some_and(|s| *s >= from && *s < to)
            {
                *out.entry(why.clone()).or_default() += 1;
            }
        }
        out
    }
}

/// The running load; `stop` ends it and returns what was seen.
pub struct HttpLoad {
    seen: Arc<Mutex<HttpSeen>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl HttpLoad {
    /// `per_second` requests to `target` from namespace `ns`, each on its own connection.
    pub fn start(ns: &Netns, target: SocketAddrV4, per_second: u64) -> Result<Self> {
        let file =
            File::open(ns.path()).with_context(|| format!("opening {}", ns.path().display()))?;
        let seen = Arc::new(Mutex::new(HttpSeen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let period = 1_000_000 / per_second.max(1);
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::Builder::new()
                .name("http-load".into())
                .spawn(move || {
                    // This thread lives in the client's namespace: every socket it opens is
                    // the client's.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(std::io::Error::last_os_error()).context("setns");
                    }
                    drop(file);
                    run(target, period, &seen, &stop)
                })?
        };
        Ok(Self {
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// True once a reply by `who` arrived after `after`.
    pub fn served_by(&self, who: &str, after: u64) -> bool {
        self.seen
            .lock()
            .unwrap()
            .seen
            .first_reply(who, after)
            .is_some()
    }

    /// Stops sending, lets what is open finish (up to [`DRAIN`]) and returns what was seen.
    pub fn stop(mut self) -> Result<HttpSeen> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("the HTTP load panicked"))??;
        }
        Ok(self.seen.lock().unwrap().clone())
    }
}

impl Drop for HttpLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

enum Phase {
    /// The SYN is out; writable once connected (or failed).
    Connecting,
    /// The request is written; the reply so far.
    Reading(Vec<u8>),
}

struct Request {
    seq: u64,
    sent: u64,
    stream: TcpStream,
    phase: Phase,
}

/// What became of a request after a poll.
enum Step {
    Open(Request),
    Done(u64, Result<String, String>),
}

/// The loop: a new connection when one is due (paced on the clock, as the UDP load is),
/// then a poll of all open ones until the next is due.
fn run(target: SocketAddrV4, period: u64, seen: &Mutex<HttpSeen>, stop: &AtomicBool) -> Result<()> {
    let start = now_us();
    let mut next = 0u64;
    let mut open: Vec<Request> = Vec::new();
    let mut drain_until: Option<u64> = None;
    loop {
        let now = now_us();
        if drain_until.is_none() && stop.load(Ordering::Relaxed) {
            drain_until = Some(now + DRAIN.as_micros() as u64);
        }
        match drain_until {
            Some(end) if open.is_empty() || now >= end => break,
            Some(_) => {}
            None => {
                while start + next * period <= now {
                    let sent = now_us();
                    seen.lock().unwrap().seen.sent.insert(next, sent);
                    match connect(target) {
                        Ok(stream) => open.push(Request {
                            seq: next,
                            sent,
                            stream,
                            phase: Phase::Connecting,
                        }),
                        Err(why) => {
                            seen.lock().unwrap().failed.insert(next, (now_us(), why));
                        }
                    }
                    next += 1;
                }
            }
        }
        let mut fds: Vec<libc::pollfd> = open
            .iter()
            .map(|r| libc::pollfd {
                fd: r.stream.as_raw_fd(),
                events: match r.phase {
                    Phase::Connecting => libc::POLLOUT,
                    Phase::Reading(_) => libc::POLLIN,
                },
                revents: 0,
            })
            .collect();
        let due = match drain_until {
            None => start + next * period,
            Some(_) => now_us() + 1000,
        };
        let wait = due.saturating_sub(now_us()).min(1000);
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: (wait * 1000) as libc::c_long,
        };
        let n = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                bail!("ppoll: {e}");
            }
            continue;
        }
        let now = now_us();
        let mut still = Vec::with_capacity(open.len());
        for (r, fd) in open.drain(..).zip(&fds) {
            match step(r, fd.revents, now) {
                Step::Open(r) => still.push(r),
                Step::Done(seq, result) => {
                    let at = now_us();
                    let mut s = seen.lock().unwrap();
                    match result {
                        Ok(body) => drop(s.seen.replies.insert(seq, (at, body))),
                        Err(why) => drop(s.failed.insert(seq, (at, why))),
                    }
                }
            }
        }
        open = still;
    }
    let mut s = seen.lock().unwrap();
    for r in open {
        s.failed.insert(r.seq, (now_us(), "open at the end".into()));
    }
    Ok(())
}

/// A nonblocking connection to `target`, its SYN sent.
fn connect(target: SocketAddrV4) -> Result<TcpStream, String> {
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // Owned from here: closed on every path.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: target.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*target.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let rc = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(reason(&e));
        }
    }
    Ok(stream)
}

fn step(mut r: Request, revents: libc::c_short, now: u64) -> Step {
    if revents == 0 {
        if now.saturating_sub(r.sent) > GIVE_UP.as_micros() as u64 {
            return Step::Done(r.seq, Err("timeout".into()));
        }
        return Step::Open(r);
    }
    match r.phase {
        Phase::Connecting => {
            match r.stream.take_error() {
                Ok(Some(e)) | Err(e) => return Step::Done(r.seq, Err(reason(&e))),
                Ok(None) => {}
            }
            // A fresh socket's send buffer takes the whole request at once.
            match r.stream.write(REQUEST) {
                Ok(n) if n == REQUEST.len() => {
                    r.phase = Phase::Reading(Vec::new());
                    Step::Open(r)
                }
                Ok(_) => Step::Done(r.seq, Err("short write".into())),
                Err(e) if e.kind() == ErrorKind::WouldBlock => Step::Open(r),
                Err(e) => Step::Done(r.seq, Err(reason(&e))),
            }
        }
        Phase::Reading(ref mut buf) => {
            let mut chunk = [0u8; 1024];
            loop {
                match r.stream.read(&mut chunk) {
                    Ok(0) => return Step::Done(r.seq, judge(buf)),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Open(r),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Step::Done(r.seq, Err(reason(&e))),
                }
            }
        }
    }
}

/// The body of a `200` reply, trimmed (the host's name), or why it is not one.
fn judge(reply: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(reply);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(if reply.is_empty() {
            "closed without a reply".into()
        } else {
            "truncated reply".into()
        });
    };
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        return Err(format!("status {status}"));
    }
    Ok(body.trim().to_string())
}

fn reason(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "refused".into(),
        ErrorKind::ConnectionReset => "reset".into(),
        ErrorKind::TimedOut => "timeout".into(),
        _ => match e.raw_os_error() {
            Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) => "unreachable".into(),
            Some(libc::EPIPE) => "reset".into(),
            _ => e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_200_reply_is_a_reply() {
        assert_eq!(
            judge(b"HTTP/1.1 200 OK\r\nServer: nginx\r\n\r\nb\n"),
            Ok("b".into())
        );
        assert_eq!(
            judge(b"HTTP/1.1 502 Bad Gateway\r\n\r\n"),
            Err("status 502".into())
        );
        assert_eq!(judge(b""), Err("closed without a reply".into()));
        assert_eq!(judge(b"HTTP/1.1 200 OK\r\n"), Err("truncated reply".into()));
    }
}
