//! Shared storage for the lab: a loop device over a scratch file (what a SAN LUN is to real
//! nodes), detached and removed when dropped, also when a test fails.
use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result};

use crate::run;

pub struct LoopDevice {
    /// `/dev/loopN`.
    pub dev: String,
    file: PathBuf,
}

impl LoopDevice {
    /// A loop device of `mib` MiB, zeroed, with direct I/O on (as a block device behaves).
    pub fn new(role: &str, mib: u64) -> Result<Self> {
        let file = std::env::temp_dir().join(format!(
            "takeover-{role}-{}-{}.img",
            std::process::id(),
            crate::unique()
        ));
        std::fs::File::create(&file)?
            .set_len(mib << 20)
            .with_context(|| format!("sizing {}", file.display()))?;
        let dev = run(Command::new("losetup")
            .args(["-f", "--show", "--direct-io=on"])
            .arg(&file));
        let dev = match dev {
            Ok(d) => d.trim().to_string(),
            Err(e) => {
                let _ = std::fs::remove_file(&file);
                return Err(e);
            }
        };
        Ok(Self { dev, file })
    }

    /// `storage = ...` lines for an agent's configuration: this device, written every
    /// `interval`, stale after `timeout`.
    pub fn config(&self, interval: &str, timeout: &str) -> String {
        format!(
            "\n[storage]\ndevice = \"{}\"\ninterval = \"{interval}\"\ntimeout = \"{timeout}\"\n",
            self.dev
        )
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = std::fs::remove_file(&self.file);
    }
}
