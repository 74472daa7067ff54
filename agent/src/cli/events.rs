//! `takeover log`: the data plane's rare events (aya-log), followed until interrupted.
//!
//! The programs log only what an operator must hear about (a forward to an interface that is
//! gone, a full counters table), at most once a second per CPU; never per packet.
use std::{
    io::Write as _,
    os::fd::AsRawFd,
    sync::atomic::{AtomicBool, Ordering},
    time::SystemTime,
};

use anyhow::{anyhow, bail, Context, Result};
use aya::programs::links::{FdLink, PinnedLink};
use aya_log::EbpfLogger;
use takeover::dataplane::PinDir;

/// Prints each record as one line: UTC time, level, message.
struct Printer;

/// Set by the printer when stdout's reader has gone: `follow` stops.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

impl log::Log for Printer {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let mut out = std::io::stdout().lock();
        let written = writeln!(out, "{} {:<5} {}", utc_now(), record.level(), record.args())
            .and_then(|()| out.flush());
        if written.is_err_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
        }
    }

    fn flush(&self) {}
}

fn utc_now() -> String {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}.{:03}Z", d.subsec_millis())
}

pub fn follow(iface: &str) -> Result<()> {
    let pins = PinDir::for_iface(iface)?;
    if !pins.is_attached() {
        bail!(
            "no gate is attached to {iface} in this network namespace; run `takeover attach --iface {iface}` first"
        );
    }
    let link = PinnedLink::from_pin(pins.xdp_link())
        .map_err(|e| anyhow!("cannot open the pinned XDP link of {iface}: {e}"))?;
    let program = FdLink::from(link).info()?.program_id();
    let mut logger = EbpfLogger::init_from_id_with_logger(program, Printer)
        .with_context(|| format!("cannot read the log of program {program}"))?;
    eprintln!("following the data plane's events on {iface} (Ctrl-C to stop)");
    let fd = logger.as_raw_fd();
    loop {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let rc = unsafe { libc::poll(&mut pfd, 1, 1000) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).context("waiting for events");
            }
        }
        logger.flush();
        if STDOUT_CLOSED.load(Ordering::Relaxed) {
            return Err(super::StdoutClosed.into());
        }
    }
}
