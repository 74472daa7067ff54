//! Threaded NAPI: an interface's receive processing in kernel threads of its own, which can
//! be given real-time priority, instead of softirqs that a busy machine defers to ksoftirqd
//! (an ordinary thread). Heartbeats then reach the agent on time under CPU load.
use std::{ffi::CString, path::Path, thread};

use anyhow::{anyhow, bail, Context, Result};

/// Turns on threaded NAPI for `iface` (in this thread's network namespace) and puts its NAPI
/// threads at SCHED_FIFO `priority`. Returns how many threads were found.
pub fn threaded(iface: &str, priority: i32) -> Result<usize> {
    let name = iface.to_string();
    // sysfs shows the network namespace it was mounted in: mount a fresh one in a private
    // mount namespace, on a thread of its own so the agent's other threads keep the host's.
    thread::spawn(move || write_in_own_sysfs(&name))
        .join()
        .map_err(|_| anyhow!("the sysfs thread panicked"))??;
    let threads = napi_threads(iface)?;
    for pid in &threads {
        let param = libc::sched_param {
            sched_priority: priority,
        };
        if unsafe { libc::sched_setscheduler(*pid, libc::SCHED_FIFO, &param) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("SCHED_FIFO for NAPI thread {pid} of {iface}"));
        }
    }
    Ok(threads.len())
}

fn write_in_own_sysfs(iface: &str) -> Result<()> {
    let c = |s: &str| CString::new(s).expect("no NUL");
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNS)");
        }
        // Nothing mounted here may propagate back to the host.
        if libc::mount(
            std::ptr::null(),
            c("/").as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error()).context("making / private");
        }
        if libc::mount(
            c("sysfs").as_ptr(),
            c("/sys").as_ptr(),
            c("sysfs").as_ptr(),
            0,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error()).context("mounting sysfs");
        }
    }
    let path = Path::new("/sys/class/net").join(iface).join("threaded");
    if !path.exists() {
        bail!("{} does not exist", path.display());
    }
    std::fs::write(&path, "1").with_context(|| format!("writing 1 to {}", path.display()))
}

/// The kernel threads of `iface`'s NAPI instances (`napi/<iface>-<id>`). Another network
/// namespace's interface of the same name matches too; such a host runs one agent per
/// namespace, each asking for the same priority.
fn napi_threads(iface: &str) -> Result<Vec<i32>> {
    // A thread's name is cut at 15 bytes.
    let prefix: String = format!("napi/{iface}-").chars().take(15).collect();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")
        .context("reading /proc")?
        .flatten()
    {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(&prefix) {
            out.push(pid);
        }
    }
    Ok(out)
}
