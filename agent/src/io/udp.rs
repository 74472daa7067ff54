//! Batched UDP for the heartbeat loop: what waits on a socket is read with one `recvmmsg`,
//! what a tick sends on a socket goes with one `sendmmsg`, and the loop sleeps in one `epoll_pwait2`
//! with a nanosecond timeout (no timer descriptor to re-arm). At 1 ms heartbeats the agent's
//! cost is its system calls; this is about half as many as a reactor takes for the same work.
use std::{
    io,
    mem::MaybeUninit,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::{Duration, SystemTime},
};

use socket2::SockAddr;

/// Datagrams read per `recvmmsg`.
const BATCH: usize = 8;

/// Room for one datagram's control data: its receive time (`SCM_TIMESTAMPNS`).
const CONTROL: usize = 64;

/// Receive buffers for one socket's batch.
pub struct RecvBufs {
    bufs: Vec<Vec<u8>>,
    /// u64s: control messages must be aligned.
    control: [[u64; CONTROL / 8]; BATCH],
}

impl RecvBufs {
    /// Room for datagrams of up to `max` bytes (a longer one is seen truncated).
    pub fn new(max: usize) -> Self {
        Self {
            bufs: (0..BATCH).map(|_| vec![0u8; max]).collect(),
            control: [[0; CONTROL / 8]; BATCH],
        }
    }
}

/// Makes the kernel stamp each datagram `sock` receives with the time it arrived, so that one
/// read later than its arrival still counts from when it came.
pub fn stamp_arrivals(sock: &UdpSocket) -> io::Result<()> {
    let on: libc::c_int = 1;
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as _,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads every datagram waiting on `sock` (without blocking) and hands each to `each` with
/// its sender and, if the socket stamps arrivals, when it arrived (wall clock).
pub fn recv_all(
    sock: &UdpSocket,
    bufs: &mut RecvBufs,
    mut each: impl FnMut(&[u8], SocketAddr, Option<SystemTime>),
) -> io::Result<usize> {
    let mut total = 0;
    loop {
        let mut names: [MaybeUninit<libc::sockaddr_storage>; BATCH] =
            [MaybeUninit::zeroed(); BATCH];
        // On the stack: a wake-up allocates nothing.
        let mut iovs: [libc::iovec; BATCH] = std::array::from_fn(|i| libc::iovec {
            iov_base: bufs.bufs[i].as_mut_ptr().cast(),
            iov_len: bufs.bufs[i].len(),
        });
        let control = &mut bufs.control;
        let mut msgs: [libc::mmsghdr; BATCH] = std::array::from_fn(|i| {
            let mut h = header(
                names[i].as_mut_ptr().cast(),
                std::mem::size_of::<libc::sockaddr_storage>() as _,
                &mut iovs[i],
            );
            h.msg_hdr.msg_control = control[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = CONTROL as _;
            h
        });
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as _,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(total),
                _ if total > 0 => Ok(total),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for (i, m) in msgs.iter().enumerate().take(n) {
            // SAFETY: zeroed, then the kernel wrote the sender's address into names[i].
            let from = socket_addr(unsafe { &names[i].assume_init() });
            if let Some(from) = from {
                each(
                    &bufs.bufs[i][..m.msg_len as usize],
                    from,
                    arrival(&m.msg_hdr),
                );
            }
        }
        total += n;
        if n < BATCH {
            return Ok(total);
        }
    }
}

/// One datagram's header for `recvmmsg`/`sendmmsg`: its address and its one buffer.
fn header(
    name: *mut libc::c_void,
    namelen: libc::socklen_t,
    iov: &mut libc::iovec,
) -> libc::mmsghdr {
    // SAFETY: an all-zero msghdr is valid (no control data, no flags).
    let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
    h.msg_name = name;
    h.msg_namelen = namelen;
    h.msg_iov = iov;
    h.msg_iovlen = 1;
    libc::mmsghdr {
        msg_hdr: h,
        msg_len: 0,
    }
}

/// The `SCM_TIMESTAMPNS` control message of a received datagram, if there is one.
fn arrival(h: &libc::msghdr) -> Option<SystemTime> {
    // SAFETY: the kernel filled msg_control (msg_controllen bytes) with well-formed cmsgs.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                return Some(
                    SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
                );
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// The sender's address as `recvmmsg` wrote it.
fn socket_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says which structure it is; storage is large enough for any.
            let a = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::from((
                u32::from_be(a.sin_addr.s_addr).to_be_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above.
            let a = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Sends each `(to, bytes)` on `sock` with as few `sendmmsg` calls as errors allow; a
/// datagram that cannot go (no route, a full queue) is skipped, as a lost heartbeat is.
pub fn send_all(sock: &UdpSocket, out: &[(SocketAddr, Vec<u8>)]) {
    let names: Vec<SockAddr> = out.iter().map(|(to, _)| SockAddr::from(*to)).collect();
    let mut iovs: Vec<libc::iovec> = out
        .iter()
        .map(|(_, b)| libc::iovec {
            iov_base: b.as_ptr() as *mut _,
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = names
        .iter()
        .zip(iovs.iter_mut())
        .map(|(name, iov)| header(name.as_ptr() as *mut _, name.len(), iov))
        .collect();
    let mut i = 0;
    while i < msgs.len() {
        let n = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                msgs[i..].as_mut_ptr(),
                (msgs.len() - i) as _,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        // The first datagram failed: skip it, send the rest.
        i += if n <= 0 { 1 } else { n as usize };
    }
}

/// The loop's descriptors in one epoll set, registered once (a `poll` registers and tears
/// down a wait on each at every call), waited on with a nanosecond timeout (`epoll_pwait2`).
pub struct Poller {
    epoll: OwnedFd,
    count: usize,
}

impl Poller {
    pub fn new(fds: &[RawFd]) -> io::Result<Self> {
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just made and owned by nothing else.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        for (i, &fd) in fds.iter().enumerate() {
            // Level-triggered: what a wake-up leaves unread wakes the next wait at once.
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Self {
            epoll,
            count: fds.len(),
        })
    }

    /// Also wakes the wait when `fd` is readable (it reports nothing in `ready`: the caller
    /// checks what it added after every wake-up).
    pub fn add(&self, fd: RawFd) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: u64::MAX,
        };
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops watching a descriptor given to `add`.
    pub fn remove(&self, fd: RawFd) {
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
    }

    /// Waits until a descriptor is readable or `timeout` has passed; `ready[i]` says whether
    /// the `i`th (in the order given to `new`) is.
    pub fn wait(&self, timeout: Duration, ready: &mut Vec<bool>) -> io::Result<()> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        let n = unsafe {
            libc::epoll_pwait2(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as _,
                &ts,
                std::ptr::null(),
            )
        };
        ready.clear();
        ready.resize(self.count, false);
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        for ev in &events[..n as usize] {
            if let Some(r) = ready.get_mut(ev.u64 as usize) {
                *r = true;
            }
        }
        Ok(())
    }
}
