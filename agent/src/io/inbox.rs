//! Messages to the heartbeat loop from the runtime's thread (link events, the control socket,
//! fence results, signals), with an eventfd that the loop polls beside its sockets: it
//! blocks in one system call for all of them.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{mpsc, Arc},
};

pub fn inbox<T>() -> io::Result<(Mailbox<T>, Inbox<T>)> {
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just made and owned by nothing else.
    let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
    let (tx, rx) = mpsc::channel();
    Ok((Mailbox { tx, fd: fd.clone() }, Inbox { rx, fd }))
}

/// The sending end; any thread.
pub struct Mailbox<T> {
    tx: mpsc::Sender<T>,
    fd: Arc<OwnedFd>,
}

impl<T> Clone for Mailbox<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            fd: self.fd.clone(),
        }
    }
}

impl<T> Mailbox<T> {
    /// Delivers `msg` and wakes the loop; false once the loop has gone.
    pub fn send(&self, msg: T) -> bool {
        if self.tx.send(msg).is_err() {
            return false;
        }
        let one = 1u64;
        // The counter cannot overflow in practice (2^64 - 2 undrained wake-ups).
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        true
    }
}

/// The loop's end.
pub struct Inbox<T> {
    rx: mpsc::Receiver<T>,
    fd: Arc<OwnedFd>,
}

impl<T> Inbox<T> {
    /// Readable when something was delivered.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Everything delivered so far. The eventfd is reset first: a message that arrives
    /// meanwhile is either taken now or wakes the loop again.
    pub fn drain(&self) -> Vec<T> {
        let mut n = 0u64;
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
        self.rx.try_iter().collect()
    }
}
