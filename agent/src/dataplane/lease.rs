//! The agent's lease on its gates (docs/design.md invariant 1, "gates are leases"): the
//! namespace's `LEASE` map, memory-mapped, so that renewing it at every wake-up is one store,
//! not a system call. Gates written leased (`FLAG_LEASED`) serve only while it runs; the kernel
//! zeroes it when the agent dies unannounced.
//!
//! aya 0.14 maps ring buffers but not arrays, hence the `mmap` here.
use std::{
    os::fd::{AsFd, AsRawFd},
    path::Path,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{Map, MapData};

/// The mapped lease: a `u64` end (CLOCK_MONOTONIC ns) shared with the data plane.
pub struct Lease {
    slot: NonNull<AtomicU64>,
    len: usize,
    /// Holds the map while it is mapped.
    _map: MapData,
}

// SAFETY: the mapping is process-wide shared memory, read and written through an atomic.
unsafe impl Send for Lease {}

impl Lease {
    /// Maps the `LEASE` map of a loaded object (`Map::Array`).
    pub fn new(map: Map) -> Result<Self> {
        let Map::Array(data) = map else {
            bail!("the LEASE map is not an array");
        };
        Self::map(data)
    }

    /// Maps the lease pinned at `path` (to read it: `map show`, `status`, tests).
    pub fn open(path: &Path) -> Result<Self> {
        let data =
            MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
        Self::map(data)
    }

    fn map(data: MapData) -> Result<Self> {
        // SAFETY: no pointers in; a page size.
        let len = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: a new shared mapping of the map's first page (the array's one u64 value),
        // unmapped in Drop; the kernel refuses a map created without BPF_F_MMAPABLE.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(anyhow!(std::io::Error::last_os_error())).context(
                "memory-mapping the LEASE map (a gate attached by a release before leases?)",
            );
        }
        Ok(Self {
            slot: NonNull::new(ptr.cast()).context("mmap returned null")?,
            len,
            _map: data,
        })
    }

    fn slot(&self) -> &AtomicU64 {
        // SAFETY: mapped for as long as self lives, aligned (page start).
        unsafe { self.slot.as_ref() }
    }

    /// Until when the gates serve (CLOCK_MONOTONIC ns; 0: lapsed).
    pub fn until_ns(&self) -> u64 {
        self.slot().load(Ordering::Acquire)
    }

    /// Extends the lease to `until_ns`; never shortens it (what was granted stays granted:
    /// the peers count on its bound, not on its being cut short). Returns the end before.
    pub fn extend(&self, until_ns: u64) -> u64 {
        self.slot().fetch_max(until_ns, Ordering::AcqRel)
    }

    /// Sets the lease to `until_ns`, shorter or longer (a new agent's first renewal: the
    /// previous agent's extension over its restart ends). Returns the end before.
    pub fn replace(&self, until_ns: u64) -> u64 {
        self.slot().swap(until_ns, Ordering::AcqRel)
    }

    /// Ends the lease now (gates leased close).
    pub fn lapse(&self) {
        self.slot().store(0, Ordering::Release);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe {
            libc::munmap(self.slot.as_ptr().cast(), self.len);
        }
    }
}
