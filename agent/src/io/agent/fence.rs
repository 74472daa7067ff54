//! The fence command: started from the heartbeat loop's thread, its exit watched in the
//! loop's epoll set (a pidfd), so a takeover waits on it with no hand-off to another thread.
use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Instant,
};

use super::Shell;
use crate::{core::node::NodeId, io::udp};

/// A running fence command.
pub(super) struct Fencing {
    peer: NodeId,
    child: std::process::Child,
    /// Readable when the command has exited.
    pidfd: Option<OwnedFd>,
    pub deadline: Instant,
}

impl Fencing {
    pub fn has_pidfd(&self) -> bool {
        self.pidfd.is_some()
    }
}

impl Shell {
    /// Starts the fence command for `peer`; a command that cannot start is a failed fence.
    pub(super) fn start_fence(&mut self, poller: &udp::Poller, peer: NodeId) {
        let name = self.core_cfg.nodes[peer].clone();
        let argv = fence_argv(&self.cfg.fence.command, &name);
        log::info!("fencing {name}: {}", argv.join(" "));
        let spawned = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                log::error!("cannot run the fence command for {name}: {e}");
                self.core.handle_fence(self.now(), peer, false);
                return;
            }
        };
        // Without a pidfd (a kernel before 5.3) the loop still checks at every wake-up, and
        // wakes at least every millisecond while a fence runs.
        let pidfd = pidfd_open(child.id()).ok();
        if let Some(fd) = &pidfd {
            if let Err(e) = poller.add(fd.as_raw_fd()) {
                log::warn!("watching the fence command: {e}");
            }
        }
        let deadline = Instant::now() + self.cfg.fence.timeout;
        // A fence that exited at once is reaped at the next wake-up, which comes at once (its
        // pidfd is readable).
        let _ = child.try_wait();
        self.fencing.push(Fencing {
            peer,
            child,
            pidfd,
            deadline,
        });
    }

    /// Reports every fence command that finished (or ran out of time, and is killed).
    pub(super) fn reap_fences(&mut self, poller: &udp::Poller) {
        let mut i = 0;
        while i < self.fencing.len() {
            let f = &mut self.fencing[i];
            let name = &self.core_cfg.nodes[f.peer];
            let ok = match f.child.try_wait() {
                Ok(Some(status)) if status.success() => true,
                Ok(Some(status)) => {
                    log::error!("fence command for {name} failed: {status}");
                    false
                }
                Ok(None) if Instant::now() >= f.deadline => {
                    let _ = f.child.kill();
                    let _ = f.child.wait();
                    log::error!(
                        "fence command for {name} timed out after {:?}",
                        self.cfg.fence.timeout
                    );
                    false
                }
                Ok(None) => {
                    i += 1;
                    continue;
                }
                Err(e) => {
                    log::error!("fence command for {name}: {e}");
                    false
                }
            };
            let f = self.fencing.swap_remove(i);
            if let Some(fd) = &f.pidfd {
                poller.remove(fd.as_raw_fd());
            }
            self.core.handle_fence(self.now(), f.peer, ok);
        }
    }
}

/// The fence command's argv for `peer`: `{peer}` in an argument is replaced by the peer's
/// name; without any, the name is appended.
pub fn fence_argv(argv: &[String], peer: &str) -> Vec<String> {
    if argv.iter().any(|a| a.contains("{peer}")) {
        argv.iter().map(|a| a.replace("{peer}", peer)).collect()
    } else {
        argv.iter().cloned().chain([peer.to_string()]).collect()
    }
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor just made and owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::fence_argv;

    #[test]
    fn the_fence_command_gets_the_peer_in_place_or_at_the_end() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(fence_argv(&v(&["fence"]), "b"), v(&["fence", "b"]));
        assert_eq!(
            fence_argv(&v(&["ipmitool", "-H", "{peer}-bmc", "power", "off"]), "b"),
            v(&["ipmitool", "-H", "b-bmc", "power", "off"])
        );
    }
}
