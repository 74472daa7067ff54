//! Block I/O on the shared storage area: whole blocks, written through to the device.
//!
//! A block device (or a file on a file system that has it) is opened with `O_DIRECT | O_DSYNC`:
//! no page cache, so what a node reads is what the device holds, not a stale cached copy
//! of what the other node wrote; each write has reached the device when it returns. A file
//! on a file system without `O_DIRECT` (tmpfs) is opened with `O_DSYNC` alone; reads then
//! go through this host's cache, which is only right when every node runs on this host
//! (tests, the demo). `direct` says which.
use std::{
    alloc::{self, Layout},
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use super::layout::BLOCK;

#[derive(Debug)]
pub struct Device {
    file: File,
    pub path: PathBuf,
    /// Opened with `O_DIRECT`.
    pub direct: bool,
    /// Size in bytes.
    pub size: u64,
}

impl Device {
    pub fn open(path: &Path) -> Result<Device> {
        let open = |flags| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(flags)
                .open(path)
        };
        let (file, direct) = match open(libc::O_DIRECT | libc::O_DSYNC) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (open(libc::O_DSYNC)?, false),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("opening the storage area {}", path.display()))
            }
        };
        let size = size_of(&file).with_context(|| format!("sizing {}", path.display()))?;
        Ok(Device {
            file,
            path: path.to_path_buf(),
            direct,
            size,
        })
    }

    /// Reads `blocks` blocks from block `first`.
    pub fn read(&self, first: u64, blocks: u64) -> Result<Vec<u8>> {
        let mut buf = Aligned::new(blocks as usize * BLOCK);
        self.file
            .read_exact_at(buf.as_mut(), first * BLOCK as u64)
            .with_context(|| format!("reading block {first} of {}", self.path.display()))?;
        Ok(buf.as_ref().to_vec())
    }

    /// Writes `data` (whole blocks) at block `first`; returns once the device has it.
    pub fn write(&self, first: u64, data: &[u8]) -> Result<()> {
        if data.is_empty() || !data.len().is_multiple_of(BLOCK) {
            bail!("a write of {} bytes is not whole blocks", data.len());
        }
        let mut buf = Aligned::new(data.len());
        buf.as_mut().copy_from_slice(data);
        self.file
            .write_all_at(buf.as_ref(), first * BLOCK as u64)
            .with_context(|| format!("writing block {first} of {}", self.path.display()))
    }
}

/// A block device's size from the kernel, a file's from its metadata.
fn size_of(file: &File) -> io::Result<u64> {
    use std::os::unix::fs::FileTypeExt;
    if file.metadata()?.file_type().is_block_device() {
        use std::os::fd::AsRawFd;
        let mut size = 0u64;
        // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
        const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
        // SAFETY: the ioctl writes one u64 into `size`.
        if unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) } != 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(size);
    }
    Ok(file.metadata()?.len())
}

/// A block-aligned buffer, as `O_DIRECT` needs.
struct Aligned {
    ptr: *mut u8,
    layout: Layout,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = Layout::from_size_align(len.max(BLOCK), BLOCK).expect("block layout");
        // SAFETY: a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            alloc::handle_alloc_error(layout);
        }
        Aligned { ptr, layout }
    }

    fn as_ref(&self) -> &[u8] {
        // SAFETY: allocated with this size, initialised (zeroed).
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and borrowed mutably once.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { alloc::dealloc(self.ptr, self.layout) }
    }
}
