//! A timer with microsecond precision for the agent's loop. tokio's timer wheel has 1 ms
//! granularity: at 1 ms heartbeats every wake-up could come up to a whole interval late, and
//! a late detector both sends late and (rightly) refuses to count the silence it slept
//! through, which delays every detection. A timerfd wakes when asked.
use std::{
    cell::Cell,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Instant,
};

use tokio::io::unix::AsyncFd;

pub struct Timer {
    fd: AsyncFd<OwnedFd>,
    /// The deadline the timerfd is armed for and has not yet reported: the loop asks for the
    /// same one after every datagram, and re-arming costs a system call.
    armed: Cell<Option<Instant>>,
}

impl Timer {
    pub fn new() -> io::Result<Self> {
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: an OwnedFd keeps its descriptor open and unchanged for the AsyncFd's life.
        let fd = unsafe { AsyncFd::register(OwnedFd::from_raw_fd(fd)) }.map_err(io::Error::from)?;
        Ok(Self {
            fd,
            armed: Cell::new(None),
        })
    }

    /// Waits until `deadline` (returns at once if it has passed).
    pub async fn sleep_until(&self, deadline: Instant) -> io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        if self.armed.get() != Some(deadline) {
            self.arm(left)?;
            self.armed.set(Some(deadline));
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = 0u64;
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    (&mut expirations as *mut u64).cast(),
                    8,
                )
            };
            if n == 8 {
                self.armed.set(None);
                return Ok(());
            }
            guard.clear_ready();
        }
    }

    fn arm(&self, left: std::time::Duration) -> io::Result<()> {
        // Relative arming: Instant's clock is CLOCK_MONOTONIC, but not exposed as a timespec.
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: left.as_secs() as _,
                tv_nsec: left.subsec_nanos() as _,
            },
        };
        if unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) }
            != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
