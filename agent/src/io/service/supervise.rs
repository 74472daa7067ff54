//! One service instance on this node, as the shell runs or finds it: the agent's own (`run`:
//! spawned in a session of its own, its pid and start time kept in a pid file so that a
//! restarted agent adopts the instance instead of starting a second one), someone else's (a
//! pid file, a systemd unit: watched, never stopped), or an OCF agent's (started and stopped
//! by its script, no pid). Exits are seen at once through a pidfd, for children and
//! strangers alike, without polling.
use std::{
    ffi::CString,
    fs, io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::{
    io::{unix::AsyncFd, Interest},
    time::Instant,
};

use super::ocf::{self, Action, OCF_NOT_RUNNING, OCF_SUCCESS};
use crate::config::service::{Ocf, Run, Service, Supervision};

/// How long a watched pid file may be missing or name a dead process before the start gives
/// up: whoever runs the service may still be writing it.
const PID_FILE_WAIT: Duration = Duration::from_secs(2);
const PID_FILE_RETRY: Duration = Duration::from_millis(100);
/// A stuck D-Bus must not hold a start forever.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(5);
/// After SIGKILL, how long before a process is reported as unkillable (stuck in the kernel).
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often what is left of a process group is looked at once its leader has exited (there
/// is no pidfd for a group).
const GROUP_POLL: Duration = Duration::from_millis(20);

/// One instance as this node runs or watches it. Dropping it leaves the process running (an
/// agent that restarts adopts it); only `stop` ends it.
pub struct Instance {
    name: String,
    how: How,
    /// None: the pid is unknown (OCF).
    process: Option<Process>,
}

enum How {
    /// Ours: stopped through its process group; the pid file lets a restarted agent adopt it.
    Run {
        stop_timeout: Duration,
        stop_signal: libc::c_int,
        pid_file: PathBuf,
    },
    /// Someone else's: watched, never stopped, never reaped.
    Watched,
    Ocf(Ocf),
}

impl Instance {
    /// Starts the instance or finds it. Errors say what failed, for the status table.
    ///
    /// - `Run`: adopts the process `state_dir/<name>.pid` names if it is alive with the start
    ///   time recorded there (the agent was restarted, the instance survived); otherwise
    ///   spawns `command` (no shell) with `env` added, in `dir`, as `user` (with the user's
    ///   groups), in a session of its own (a signal to the agent's process group does not
    ///   reach it), stdin null, stdout and stderr the agent's, and records it.
    /// - `PidFile`: the process the file names, waiting up to 2 s for the file to name a live
    ///   one.
    /// - `SystemdUnit`: the unit's main pid (none: an error).
    /// - `Ocf`: the agent's `start`, which must return OCF_SUCCESS; the pid stays unknown.
    pub async fn start(svc: &Service, state_dir: &Path) -> Result<Instance, String> {
        let (how, process) = match &svc.how {
            Supervision::Run(run) => {
                let pid_file = state_dir.join(format!("{}.pid", svc.name));
                let process = match adopt(&pid_file) {
                    Some(p) => {
                        log::info!(
                            "service {}: adopted pid {} (still running from before)",
                            svc.name,
                            p.pid
                        );
                        p
                    }
                    None => spawn(run, state_dir, &pid_file)?,
                };
                let how = How::Run {
                    stop_timeout: run.stop_timeout,
                    stop_signal: run.stop_signal,
                    pid_file,
                };
                (how, Some(process))
            }
            Supervision::PidFile(path) => (How::Watched, Some(from_pid_file(path).await?)),
            Supervision::SystemdUnit(unit) => (How::Watched, Some(from_unit(unit).await?)),
            Supervision::Ocf(agent) => {
                match ocf::run(agent, &svc.name, Action::Start).await? {
                    OCF_SUCCESS => {}
                    rc => {
                        return Err(format!(
                            "{} start returned {rc} ({})",
                            agent.script().display(),
                            ocf::meaning(rc)
                        ))
                    }
                }
                (How::Ocf(agent.clone()), None)
            }
        };
        Ok(Instance {
            name: svc.name.clone(),
            how,
            process,
        })
    }

    /// What an earlier agent left running of a service it started (its pid file names a
    /// live process; an OCF agent's stop is harmless on a stopped resource), to be stopped.
    pub fn leftover(svc: &Service, state_dir: &Path) -> Option<Instance> {
        let (how, process) = match &svc.how {
            Supervision::Run(run) => {
                let pid_file = state_dir.join(format!("{}.pid", svc.name));
                let process = adopt(&pid_file)?;
                let how = How::Run {
                    stop_timeout: run.stop_timeout,
                    stop_signal: run.stop_signal,
                    pid_file,
                };
                (how, Some(process))
            }
            Supervision::Ocf(agent) => (How::Ocf(agent.clone()), None),
            _ => return None,
        };
        Some(Instance {
            name: svc.name.clone(),
            how,
            process,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid)
    }

    /// Resolves once the process has exited (at once if it already has); never without a
    /// pid. Our own child is reaped here. Cancel-safe.
    pub async fn exited(&mut self) {
        let reap = matches!(self.how, How::Run { .. });
        match self.process.as_mut() {
            Some(p) => p.exited(reap).await,
            None => std::future::pending().await,
        }
    }

    /// After its process exited: SIGKILL to what is left of its process group (`Run`; an
    /// nginx worker outlives its master and goes on answering on the port). What is left of
    /// an instance that died is not shut down gracefully: it is in the way of the restart.
    pub fn kill_remains(&self) {
        if let (How::Run { .. }, Some(p)) = (&self.how, self.process.as_ref()) {
            p.signal_group(libc::SIGKILL);
        }
    }

    /// Stops the instance. `Run`: SIGTERM to its process group; SIGKILL to the group if the
    /// leader or others of the group are still there `stop_timeout` later; then the pid file
    /// goes. `Ocf`: the agent's `stop`. Watched ones are someone else's: nothing is stopped.
    ///
    /// An error says what went wrong: having to use SIGKILL is one (the instance is stopped
    /// then, but not cleanly); the process is gone after an error unless it says otherwise.
    pub async fn stop(mut self) -> Result<(), String> {
        match &self.how {
            How::Watched => Ok(()),
            How::Ocf(agent) => match ocf::run(agent, &self.name, Action::Stop).await? {
                // Not running is what a stop is for (some agents say so instead of success).
                OCF_SUCCESS | OCF_NOT_RUNNING => Ok(()),
                rc => Err(format!(
                    "{} stop returned {rc} ({})",
                    agent.script().display(),
                    ocf::meaning(rc)
                )),
            },
            How::Run {
                stop_timeout,
                stop_signal,
                pid_file,
            } => {
                let (stop_timeout, sig, pid_file) = (*stop_timeout, *stop_signal, pid_file.clone());
                let Some(p) = self.process.as_mut() else {
                    return Ok(());
                };
                let result = p.stop_group(stop_timeout, sig).await;
                if !p.gone {
                    // Still running: the pid file stays, so that it is adopted, not doubled.
                    return result;
                }
                match fs::remove_file(&pid_file) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(match result {
                        Ok(()) => format!("removing {}: {e}", pid_file.display()),
                        Err(why) => format!("{why}; removing {}: {e}", pid_file.display()),
                    }),
                    _ => result,
                }
            }
        }
    }
}

/// A process held by a pidfd: the fd names that process only, even once its pid is reused.
struct Process {
    pid: u32,
    /// Its start time, where the group is ours to signal (`Run`): tells a reused pid.
    start: Option<u64>,
    fd: AsyncFd<OwnedFd>,
    /// Its exit has been seen (and, if it was our child, it has been reaped).
    gone: bool,
}

impl Process {
    fn open(pid: u32) -> io::Result<Self> {
        let fd = pidfd_open(pid)?;
        // SAFETY: the descriptor is owned by the AsyncFd and never swapped (`fd` is private,
        // only read through `get_ref`).
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(Self {
            pid,
            start: None,
            fd,
            gone: false,
        })
    }

    /// A pidfd polls readable once its process has exited (a zombie has).
    fn has_exited(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.fd.get_ref().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd, no waiting.
            let n = unsafe { libc::poll(&mut p, 1, 0) };
            if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return n > 0 && p.revents & libc::POLLIN != 0;
            }
        }
    }

    async fn exited(&mut self, reap: bool) {
        while !self.gone {
            let Ok(mut ready) = self.fd.readable().await else {
                // The runtime is going away: nothing will tell any more.
                return std::future::pending().await;
            };
            if self.has_exited() {
                if reap {
                    self.reap();
                }
                self.gone = true;
            } else {
                ready.clear_ready();
            }
        }
    }

    /// Reaps it if it is our child (an adopted one is not: ECHILD). By pidfd, not pid: never
    /// another child that got the pid since.
    fn reap(&self) {
        // SAFETY: a zeroed siginfo_t is valid; waitid only writes to it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: a valid pidfd and a siginfo_t to fill.
        unsafe {
            libc::waitid(
                libc::P_PIDFD,
                self.fd.get_ref().as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
    }

    /// `sig` (SIGTERM unless configured), then SIGKILL for whatever of the group is left at
    /// `stop_timeout`.
    async fn stop_group(&mut self, stop_timeout: Duration, sig: libc::c_int) -> Result<(), String> {
        let pid = self.pid;
        let deadline = Instant::now() + stop_timeout;
        self.signal_group(sig);
        let leader = tokio::time::timeout_at(deadline, self.exited(true))
            .await
            .is_ok();
        // The leader exiting is not enough: a worker it left behind may still hold the port.
        if leader && group_empties_by(pid, deadline).await {
            return Ok(());
        }
        self.signal_group(libc::SIGKILL);
        let kill_deadline = Instant::now() + KILL_WAIT;
        if tokio::time::timeout_at(kill_deadline, self.exited(true))
            .await
            .is_err()
        {
            return Err(format!(
                "process {pid} is still running {KILL_WAIT:?} after SIGKILL"
            ));
        }
        // A SIGKILLed worker dies when next scheduled, not at once: the instance is stopped
        // (its port free for a restart) only once its group is empty.
        if !group_empties_by(pid, kill_deadline).await {
            return Err(format!(
                "others of process {pid}'s group are still running {KILL_WAIT:?} after SIGKILL"
            ));
        }
        Err(if leader {
            format!(
                "process {pid} exited on its stop signal, but others of its process group were still running {stop_timeout:?} later: killed (SIGKILL)"
            )
        } else {
            format!(
                "process {pid} did not stop within {stop_timeout:?} of its stop signal: killed (SIGKILL)"
            )
        })
    }

    /// Signals the process group it leads (its own session, so the group's id is its pid).
    /// While the leader lives (or is our unreaped zombie) the id is ours; once it is gone, a
    /// process now at that pid with another start time means the id was reused: left alone.
    fn signal_group(&self, sig: libc::c_int) {
        if self.has_exited() {
            if let (Some(now), Some(ours)) = (stat(self.pid), self.start) {
                if now.start != ours {
                    return;
                }
            }
        }
        // SAFETY: no pointers. ESRCH (nobody left) is fine.
        unsafe { libc::kill(-(self.pid as libc::pid_t), sig) };
    }
}

/// Whether anyone of process group `pgid` still runs. Zombies do not count: what the
/// leader left behind is reparented to init, which (in a container, say) may be slow to
/// reap it, and a zombie holds no port.
fn group_runs(pgid: u32) -> bool {
    // SAFETY: no pointers; signal 0 only asks whether anyone is there.
    if unsafe { libc::kill(-(pgid as libc::pid_t), 0) } < 0
        && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    {
        return false;
    }
    let Ok(dir) = fs::read_dir("/proc") else {
        return true;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .any(|st| {
            // After the command's closing parenthesis: state, ppid, pgrp.
            let mut f = st
                .rsplit_once(')')
                .map_or("", |(_, r)| r)
                .split_whitespace();
            let state = f.next();
            let pgrp = f.nth(1).and_then(|g| g.parse::<u32>().ok());
            pgrp == Some(pgid) && state != Some("Z")
        })
}

/// Whether the process group `pgid` is empty (or only zombies) by `deadline`.
async fn group_empties_by(pgid: u32, deadline: Instant) -> bool {
    loop {
        if !group_runs(pgid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(GROUP_POLL).await;
    }
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: no pointers; a new descriptor (close-on-exec) or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// What /proc/PID/stat says of a process that matters here.
struct Stat {
    state: char,
    /// Field 22: clock ticks after boot; with the pid, it names one process for good.
    start: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let (_, rest) = s.rsplit_once(')')?;
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let start = f.nth(18)?.parse().ok()?;
    Some(Stat { state, start })
}

fn write_pid_file(path: &Path, pid: u32, start: u64) -> io::Result<()> {
    // Renamed into place: a crash never leaves half a file to misread.
    let tmp = path.with_extension("pid.tmp");
    fs::write(&tmp, format!("{pid} {start}\n"))?;
    fs::rename(&tmp, path)
}

/// The surviving instance our pid file names, if it is still that process.
fn adopt(pid_file: &Path) -> Option<Process> {
    let text = fs::read_to_string(pid_file).ok()?;
    let mut words = text.split_whitespace();
    let pid: u32 = words.next()?.parse().ok()?;
    let start: u64 = words.next()?.parse().ok()?;
    // The pidfd first, the start time then, the pidfd's liveness last: a process alive after
    // the start time was read held the pid while it was, so the fd is the process checked.
    let mut p = Process::open(pid).ok()?;
    let s = stat(pid)?;
    p.start = Some(start);
    (s.start == start && s.state != 'Z' && !p.has_exited()).then_some(p)
}

/// A user to run as, looked up before the fork (NSS is not safe between fork and exec).
struct User {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

fn lookup_user(name: &str) -> Result<User, String> {
    let c = CString::new(name).map_err(|_| format!("user {name:?} contains a NUL byte"))?;
    // SAFETY: a zeroed passwd is valid; getpwnam_r fills it.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    loop {
        // SAFETY: all pointers valid for the sizes given; strings land in `buf`.
        let rc = unsafe {
            libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut found)
        };
        match rc {
            0 => break,
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            rc => {
                return Err(format!(
                    "looking up user {name:?}: {}",
                    io::Error::from_raw_os_error(rc)
                ))
            }
        }
    }
    if found.is_null() {
        return Err(format!("user {name:?} does not exist"));
    }
    let (uid, gid) = (pw.pw_uid, pw.pw_gid);
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: `groups` holds `n` entries; getgrouplist writes at most that many.
        let rc = unsafe { libc::getgrouplist(c.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n.max(0) as usize);
            break;
        }
        // Too small: `n` is now the count needed.
        if n as usize <= groups.len() || n > 65536 {
            return Err(format!("looking up the groups of user {name:?}"));
        }
        groups.resize(n as usize, 0);
    }
    Ok(User { uid, gid, groups })
}

fn spawn(run: &Run, state_dir: &Path, pid_file: &Path) -> Result<Process, String> {
    let (program, args) = run.command.split_first().ok_or("no command to run")?;
    let mut what = format!("starting {program}");
    let user = match &run.user {
        Some(u) => {
            what += &format!(" as {u}");
            Some(lookup_user(u)?)
        }
        None => None,
    };
    let dir = match &run.dir {
        Some(d) => {
            what += &format!(" in {}", d.display());
            if !d.is_dir() {
                return Err(format!("{what}: {} is not a directory", d.display()));
            }
            Some(CString::new(d.as_os_str().as_bytes()).map_err(|_| format!("{what}: NUL"))?)
        }
        None => None,
    };
    // Before the spawn: an instance that could not be recorded would be doubled later.
    fs::create_dir_all(state_dir).map_err(|e| format!("creating {}: {e}", state_dir.display()))?;

    let mut cmd = std::process::Command::new(program);
    cmd.args(args).envs(&run.env).stdin(Stdio::null());
    let child_setup = move || -> io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY (all): plain syscalls on memory prepared before the fork.
        check(unsafe { libc::setsid() })?;
        // Nothing the agent inherited (a lock its starter held, say) goes on to the
        // service, which outlives the agent: every descriptor past stderr closes at exec.
        crate::sys::inherit_nothing()?;
        if let Some(u) = &user {
            // Groups and gid before the uid: after it, they could not be changed.
            check(unsafe { libc::setgroups(u.groups.len(), u.groups.as_ptr()) })?;
            check(unsafe { libc::setgid(u.gid) })?;
            check(unsafe { libc::setuid(u.uid) })?;
        }
        // After setuid: the directory is entered with the user's rights, not root's.
        if let Some(d) = &dir {
            check(unsafe { libc::chdir(d.as_ptr()) })?;
        }
        Ok(())
    };
    // SAFETY: between fork and exec the closure makes async-signal-safe calls only, and
    // allocates nothing.
    unsafe { cmd.pre_exec(child_setup) };
    let child = cmd.spawn().map_err(|e| format!("{what}: {e}"))?;
    let pid = child.id();
    // std's Child neither kills nor reaps when dropped: `exited` reaps, by pidfd.
    drop(child);

    let recorded = Process::open(pid)
        .map_err(|e| format!("{what}: a pidfd for {pid}: {e}"))
        .and_then(|mut p| {
            // Our unreaped child: its stat stays readable even if it has already exited.
            let start = stat(pid)
                .ok_or_else(|| format!("{what}: reading /proc/{pid}/stat"))?
                .start;
            write_pid_file(pid_file, pid, start)
                .map_err(|e| format!("{what}: writing {}: {e}", pid_file.display()))?;
            p.start = Some(start);
            Ok(p)
        });
    if recorded.is_err() {
        // Unrecorded, it would be neither stopped nor adopted: ended now.
        // SAFETY: no pointers; the group is the one it made (setsid ran before exec).
        unsafe {
            libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
            libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
        }
    }
    recorded
}

/// The first word of a pid file.
fn read_pid(path: &Path) -> Result<u32, String> {
    let text = fs::read_to_string(path).map_err(|e| e.to_string())?;
    let word = text.split_whitespace().next().unwrap_or("");
    word.parse()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("{word:?} is not a pid"))
}

async fn from_pid_file(path: &Path) -> Result<Process, String> {
    let deadline = Instant::now() + PID_FILE_WAIT;
    loop {
        let why = match read_pid(path) {
            Ok(pid) => match Process::open(pid) {
                Ok(p) if !p.has_exited() => return Ok(p),
                Ok(_) => format!("names process {pid}, which has exited"),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                    format!("names process {pid}, which is not running")
                }
                Err(e) => format!("names process {pid}: {e}"),
            },
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            return Err(format!("pid file {}: {why}", path.display()));
        }
        tokio::time::sleep(PID_FILE_RETRY).await;
    }
}

async fn from_unit(unit: &str) -> Result<Process, String> {
    let out = tokio::time::timeout(
        SYSTEMCTL_TIMEOUT,
        tokio::process::Command::new("systemctl")
            .args(["show", "-p", "MainPID", "--value", "--", unit])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("systemctl show {unit}: no answer within {SYSTEMCTL_TIMEOUT:?}"))?
    .map_err(|e| format!("running systemctl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "systemctl show {unit}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let pid: u32 = text.trim().parse().map_err(|_| {
        format!(
            "systemctl show {unit}: MainPID {:?} is not a pid",
            text.trim()
        )
    })?;
    let not_running = || format!("systemd unit {unit} is not running");
    if pid == 0 {
        return Err(not_running());
    }
    match Process::open(pid) {
        Ok(p) if !p.has_exited() => Ok(p),
        Ok(_) => Err(not_running()),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(not_running()),
        Err(e) => Err(format!("systemd unit {unit}: a pidfd for {pid}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::service::{Proto, Recovery};
    use std::{
        collections::BTreeMap,
        sync::{
            atomic::{AtomicU32, Ordering},
            Mutex,
        },
    };
    use tokio::time::timeout;

    /// A correctness bound on things the kernel tells at once, not a speed assertion.
    const BOUND: Duration = Duration::from_secs(5);

    /// A directory for one test and the processes it started: on drop (a failed test too)
    /// each is SIGKILLed by the pid held, if that pid is still the same process, and the
    /// directory goes.
    struct Scratch {
        dir: PathBuf,
        pids: Mutex<Vec<(u32, u64)>>,
    }

    impl Scratch {
        fn new(name: &str) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "takeover-supervise-{name}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self {
                dir,
                pids: Mutex::new(Vec::new()),
            }
        }

        fn hold(&self, pid: u32) -> u32 {
            let start = stat(pid).expect("a process just started").start;
            self.pids.lock().unwrap().push((pid, start));
            pid
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.join(name)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            for &(pid, start) in self.pids.lock().unwrap().iter() {
                if stat(pid).is_some_and(|s| s.start == start) {
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
            }
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn service(name: &str, how: Supervision) -> Service {
        Service {
            name: name.into(),
            addresses: vec![],
            proto: Proto::Tcp,
            ports: (1, 1),
            how,
            checks: vec![],
            recovery: Recovery {
                restarts: 0,
                window: Duration::from_secs(60),
                backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
                escalate: false,
                hold: Duration::from_secs(1),
            },
            critical: false,
            cold: false,
            filesystem: None,
        }
    }

    fn run(command: &[&str], stop_timeout: Duration) -> Run {
        Run {
            command: command.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            user: None,
            dir: None,
            stop_timeout,
            stop_signal: libc::SIGTERM,
        }
    }

    /// Neither running nor a zombie: reaped (or its pid is another process's now).
    fn reaped(pid: u32, start: u64) -> bool {
        stat(pid).is_none_or(|s| s.start != start)
    }

    async fn wait_for_file(path: &Path) -> String {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Ok(s) = fs::read_to_string(path) {
                if s.ends_with('\n') {
                    return s;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} never written",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_run_instance_gets_its_env_and_dir_and_its_death_is_seen_and_reaped() {
        let s = Scratch::new("run");
        let mut r = run(
            &["sh", "-c", "echo \"$FOO $(pwd)\" > out; exec sleep 1000"],
            Duration::from_secs(5),
        );
        r.env.insert("FOO".into(), "bar".into());
        r.dir = Some(s.dir.clone());
        let svc = service("web", Supervision::Run(r));
        let mut i = Instance::start(&svc, &s.path("state")).await.unwrap();
        let pid = s.hold(i.pid().unwrap());
        let start = stat(pid).unwrap().start;

        let out = wait_for_file(&s.path("out")).await;
        let dir = s.dir.canonicalize().unwrap();
        assert_eq!(out, format!("bar {}\n", dir.display()));
        let recorded = fs::read_to_string(s.path("state/web.pid")).unwrap();
        assert_eq!(recorded, format!("{pid} {start}\n"));
        // A session of its own: a signal to the agent's group does not reach it.
        let sid = unsafe { libc::getsid(pid as libc::pid_t) };
        assert_eq!(sid, pid as libc::pid_t);

        // Alive: not resolved (and the cancelled wait leaves the instance usable).
        assert!(timeout(Duration::from_millis(100), i.exited())
            .await
            .is_err());
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        timeout(BOUND, i.exited()).await.expect("exit not seen");
        assert!(reaped(pid, start), "{pid} left a zombie");
        // Once seen, seen for good.
        timeout(BOUND, i.exited()).await.unwrap();
    }

    /// Stops `i` once its shell has had time to set its `trap '' TERM` (the SIGTERM must
    /// meet the trap), and returns the error the forced stop reports.
    async fn stop_after_traps_are_set(i: Instance) -> String {
        tokio::time::sleep(Duration::from_millis(200)).await;
        timeout(BOUND, i.stop())
            .await
            .expect("stop hung")
            .unwrap_err()
    }

    #[tokio::test]
    async fn stop_kills_what_ignores_sigterm_after_the_stop_timeout() {
        let s = Scratch::new("trap");
        let r = run(
            &["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
            Duration::from_millis(200),
        );
        let svc = service("stubborn", Supervision::Run(r));
        let i = Instance::start(&svc, &s.dir).await.unwrap();
        let pid = s.hold(i.pid().unwrap());
        let start = stat(pid).unwrap().start;
        let err = stop_after_traps_are_set(i).await;
        assert!(
            err.contains("did not stop within 200ms of its stop signal") && err.contains("SIGKILL"),
            "{err}"
        );
        assert!(reaped(pid, start));
        assert!(!s.path("stubborn.pid").exists());
    }

    #[tokio::test]
    async fn stop_kills_a_worker_left_behind_by_a_leader_that_exited_on_sigterm() {
        let s = Scratch::new("worker");
        let kid = s.path("kid");
        let script = format!(
            "(trap '' TERM; while :; do sleep 0.1; done) & echo $! > {}; exec sleep 1000",
            kid.display()
        );
        let r = run(&["sh", "-c", &script], Duration::from_millis(300));
        let svc = service("forking", Supervision::Run(r));
        let i = Instance::start(&svc, &s.dir).await.unwrap();
        let pid = s.hold(i.pid().unwrap());
        let worker = wait_for_file(&kid).await.trim().parse().unwrap();
        let worker_start = stat(s.hold(worker)).unwrap().start;
        let err = stop_after_traps_are_set(i).await;
        assert!(
            err.starts_with(&format!(
                "process {pid} exited on its stop signal, but others"
            )),
            "{err}"
        );
        // Killed (perhaps not yet reaped by whoever inherited it).
        assert!(stat(worker).is_none_or(|s| s.start != worker_start || s.state == 'Z'));
    }

    #[tokio::test]
    async fn stop_ends_a_plain_process_with_sigterm() {
        let s = Scratch::new("plain");
        // A stop timeout far beyond the bound: finishing within it means SIGTERM did it.
        let r = run(&["sleep", "1000"], Duration::from_secs(60));
        let svc = service("plain", Supervision::Run(r));
        let i = Instance::start(&svc, &s.dir).await.unwrap();
        let pid = s.hold(i.pid().unwrap());
        let start = stat(pid).unwrap().start;
        assert!(s.path("plain.pid").exists());
        timeout(BOUND, i.stop())
            .await
            .expect("SIGTERM did not stop it")
            .unwrap();
        assert!(reaped(pid, start));
        assert!(!s.path("plain.pid").exists());
    }

    #[tokio::test]
    async fn a_restarted_agent_adopts_the_surviving_instance_and_not_a_stale_one() {
        let s = Scratch::new("adopt");
        let svc = service(
            "db",
            Supervision::Run(run(&["sleep", "1000"], Duration::from_secs(5))),
        );
        let first = Instance::start(&svc, &s.dir).await.unwrap();
        let pid = s.hold(first.pid().unwrap());
        // The agent goes away without stopping it.
        drop(first);
        let again = Instance::start(&svc, &s.dir).await.unwrap();
        assert_eq!(again.pid(), Some(pid));
        timeout(BOUND, again.stop()).await.unwrap().unwrap();

        // A pid file left by an instance that is gone: a new one starts.
        assert!(!s.path("db.pid").exists(), "stop removes the pid file");
        fs::write(s.path("db.pid"), format!("{pid} 1\n")).unwrap();
        let fresh = Instance::start(&svc, &s.dir).await.unwrap();
        let new = s.hold(fresh.pid().unwrap());
        assert_ne!(new, pid);
        timeout(BOUND, fresh.stop()).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_watched_process_that_is_not_our_child_is_seen_to_exit() {
        let s = Scratch::new("pidfile");
        let file = s.path("daemon.pid");
        // Backgrounded by a shell that then exits: the sleep is init's, not ours.
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("sleep 1000 & echo $! > {}", file.display()))
            .status()
            .unwrap();
        assert!(status.success());
        let svc = service("daemon", Supervision::PidFile(file.clone()));
        let mut i = Instance::start(&svc, &s.dir).await.unwrap();
        let pid = s.hold(i.pid().unwrap());
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .unwrap();
        assert_ne!(ppid.trim(), std::process::id().to_string(), "our child");
        assert!(timeout(Duration::from_millis(100), i.exited())
            .await
            .is_err());
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        timeout(BOUND, i.exited()).await.expect("exit not seen");
        // Someone else's: stopping it does nothing (and it is gone anyway).
        i.stop().await.unwrap();
    }

    #[tokio::test]
    async fn a_pid_file_that_never_names_a_live_process_is_an_error_naming_it() {
        let s = Scratch::new("nopid");
        let file = s.path("missing.pid");
        let svc = service("gone", Supervision::PidFile(file.clone()));
        let err = Instance::start(&svc, &s.dir).await.err().unwrap();
        assert!(
            err.starts_with(&format!("pid file {}:", file.display())),
            "{err}"
        );
        fs::write(&file, "999999999\n").unwrap();
        let err = Instance::start(&svc, &s.dir).await.err().unwrap();
        assert!(err.contains("names process 999999999"), "{err}");
    }

    #[tokio::test]
    async fn an_unknown_user_is_named_in_the_error() {
        let s = Scratch::new("user");
        let mut r = run(&["sleep", "1000"], Duration::from_secs(5));
        r.user = Some("takeover-no-such-user".into());
        let svc = service("web", Supervision::Run(r));
        let err = Instance::start(&svc, &s.dir).await.err().unwrap();
        assert_eq!(err, "user \"takeover-no-such-user\" does not exist");
        assert!(!s.path("web.pid").exists());
    }

    #[tokio::test]
    async fn a_user_drops_root_and_roots_groups() {
        // Debian has `nobody`: its absence is a broken machine, not a reason to skip.
        lookup_user("nobody").expect("user nobody");
        let s = Scratch::new("nobody");
        let mut r = run(&["sleep", "1000"], Duration::from_secs(5));
        r.user = Some("nobody".into());
        let svc = service("web", Supervision::Run(r));
        let i = Instance::start(&svc, &s.dir).await.unwrap();
        let pid = s.hold(i.pid().unwrap());
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| -> Vec<String> {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            line.split_whitespace().skip(1).map(String::from).collect()
        };
        let nobody = lookup_user("nobody").unwrap();
        assert!(field("Uid:").iter().all(|u| *u == nobody.uid.to_string()));
        assert!(field("Gid:").iter().all(|g| *g == nobody.gid.to_string()));
        let groups = field("Groups:");
        assert!(!groups.contains(&"0".to_string()), "root's group kept");
        assert!(groups.contains(&nobody.gid.to_string()), "{groups:?}");
        timeout(BOUND, i.stop()).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_command_that_does_not_exist_is_an_error() {
        let s = Scratch::new("nocmd");
        let r = run(
            &["/nonexistent/takeover-daemon", "-f"],
            Duration::from_secs(5),
        );
        let svc = service("web", Supervision::Run(r));
        let err = Instance::start(&svc, &s.dir).await.err().unwrap();
        assert!(
            err.starts_with("starting /nonexistent/takeover-daemon: No such file"),
            "{err}"
        );
        assert!(!s.path("web.pid").exists());
        let mut r = run(&["sleep", "1000"], Duration::from_secs(5));
        r.dir = Some(s.path("nowhere"));
        let svc = service("web", Supervision::Run(r));
        let err = Instance::start(&svc, &s.dir).await.err().unwrap();
        assert!(err.ends_with("nowhere is not a directory"), "{err}");
    }

    #[tokio::test]
    async fn a_unit_that_is_not_running_is_an_error_naming_it() {
        let svc = service(
            "web",
            Supervision::SystemdUnit("takeover-no-such-unit.service".into()),
        );
        // Not running on a systemd machine, systemctl's own error elsewhere.
        let err = Instance::start(&svc, Path::new("/nonexistent"))
            .await
            .err()
            .unwrap();
        assert!(
            err.contains("takeover-no-such-unit.service") || err.contains("systemctl"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_ocf_instance_starts_and_stops_through_its_agent() {
        let agent = Ocf {
            provider: "heartbeat".into(),
            kind: "Dummy".into(),
            params: BTreeMap::new(),
            timeout: Duration::from_secs(20),
            env: BTreeMap::new(),
        };
        // `cargo xtask setup` installs resource-agents.
        assert!(
            agent.script().exists(),
            "{} missing: run cargo xtask setup",
            agent.script().display()
        );
        let s = Scratch::new("ocf");
        let state = s.path("dummy.state");
        let agent = Ocf {
            params: BTreeMap::from([("state".to_string(), state.display().to_string())]),
            ..agent
        };
        let svc = service("dummy", Supervision::Ocf(agent.clone()));
        let mut i = Instance::start(&svc, &s.dir).await.unwrap();
        assert_eq!(i.pid(), None);
        assert!(state.exists(), "Dummy start writes its state file");
        assert_eq!(ocf::monitor(&agent, "dummy", BOUND).await, Ok(()));
        // No pid: nothing to wait for.
        assert!(timeout(Duration::from_millis(50), i.exited())
            .await
            .is_err());
        i.stop().await.unwrap();
        assert!(!state.exists());

        let missing = Ocf {
            kind: "takeover-no-such-agent".into(),
            ..agent
        };
        let svc = service("dummy", Supervision::Ocf(missing));
        let err = Instance::start(&svc, &s.dir).await.err().unwrap();
        assert!(err.contains("takeover-no-such-agent"), "{err}");
    }
}
