//! Reading and writing one interface's gate table, its counters and its redirect targets.
//! Only the agent writes these maps (the data plane only reads the table and bumps counters).
use anyhow::{bail, Context, Result};
use aya::{
    maps::{DevMapHash, HashMap, Map, MapData, MapError, PerCpuHashMap},
    Ebpf,
};
use takeover_common::{
    Action, Counters, GateKey, GateValue, ACTION_NONE, COUNTERS_MAP, FLAG_LEASED, FLAG_SERVICES,
    GATES_MAP, REDIRECT_MAP,
};

use super::{pins::PinDir, target::Target};

/// One gate entry as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub target: Target,
    /// `None` if the table holds a byte this `takeover` does not know (written by another).
    pub action: Option<Action>,
    pub value: GateValue,
    /// Summed over all CPUs.
    pub counters: Counters,
}

/// Handles on the maps of one attached gate.
pub struct Gates {
    gates: HashMap<MapData, GateKey, GateValue>,
    counters: PerCpuHashMap<MapData, GateKey, Counters>,
    redirect: DevMapHash<MapData>,
}

fn pinned(pins: &PinDir, name: &str) -> Result<Map> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Map::from_map_data(data)?)
}

impl Gates {
    /// Opens the pinned maps of an attached interface.
    pub fn open(pins: &PinDir) -> Result<Self> {
        if !pins.is_attached() {
            bail!(
                "no gate is attached to {} in this network namespace; run `takeover attach --iface {}` first",
                pins.iface,
                pins.iface
            );
        }
        Ok(Self {
            gates: pinned(pins, GATES_MAP)?.try_into()?,
            counters: pinned(pins, COUNTERS_MAP)?.try_into()?,
            redirect: pinned(pins, REDIRECT_MAP)?.try_into()?,
        })
    }

    /// Takes the maps out of a loaded object (tests that run the programs unattached).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("no map {name} in the object"))
        };
        Ok(Self {
            gates: take(GATES_MAP)?.try_into()?,
            counters: take(COUNTERS_MAP)?.try_into()?,
            redirect: take(REDIRECT_MAP)?.try_into()?,
        })
    }

    /// Sets the gate of `target`. Counters of an existing entry are kept.
    ///
    /// Keeps the table's invariant (see `FLAG_SERVICES`): a service entry is written before its
    /// address entry is flagged, so the data plane never looks for a service that is not there.
    pub fn set(&mut self, target: &Target, mut value: GateValue) -> Result<()> {
        let addr_key = target.key().address();
        let existing = self.raw(&addr_key)?;
        // The caller says whether it is leased; the table says whether it has services.
        value.flags &= FLAG_LEASED;
        if target.service.is_none() {
            // An address verdict keeps the address's service flag.
            value.flags |= existing.map_or(0, |e| e.flags & FLAG_SERVICES);
            return self.write(target, &addr_key, value);
        }
        self.write(target, &target.key(), value)?;
        match existing {
            Some(e) if e.has_services() => Ok(()),
            Some(mut e) => {
                e.flags |= FLAG_SERVICES;
                self.write(target, &addr_key, e)
            }
            None => self.write(target, &addr_key, GateValue::services_only()),
        }
    }

    fn write(&mut self, target: &Target, key: &GateKey, value: GateValue) -> Result<()> {
        self.gates
            .insert(key, value, 0)
            .with_context(|| format!("cannot write the gate of {target} (table full?)"))
    }

    fn raw(&self, key: &GateKey) -> Result<Option<GateValue>> {
        match self.gates.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn delete(&mut self, target: &Target, key: &GateKey) -> Result<()> {
        self.gates
            .remove(key)
            .with_context(|| format!("cannot remove the gate of {target}"))?;
        self.drop_counters(target, key)
    }

    /// The data plane may not have counted anything yet: no counters entry is fine.
    fn drop_counters(&mut self, target: &Target, key: &GateKey) -> Result<()> {
        if self.counters.get(key, 0).is_ok() {
            self.counters
                .remove(key)
                .with_context(|| format!("cannot remove the counters of {target}"))?;
        }
        Ok(())
    }

    /// Removes the gate of `target` and its counters; `false` if there was none.
    pub fn remove(&mut self, target: &Target) -> Result<bool> {
        let key = target.key();
        let addr_key = key.address();
        let Some(addr) = self.raw(&addr_key)? else {
            return Ok(false);
        };
        if target.service.is_none() {
            if addr.action == ACTION_NONE {
                return Ok(false);
            }
            if addr.has_services() {
                // The services stay; the address goes back to having no verdict of its own.
                self.write(target, &addr_key, GateValue::services_only())?;
                self.drop_counters(target, &addr_key)?;
                return Ok(true);
            }
            self.delete(target, &addr_key)?;
            return Ok(true);
        }
        if self.raw(&key)?.is_none() {
            return Ok(false);
        }
        let last = !self
            .raw_keys()?
            .iter()
            .any(|k| k.address() == addr_key && *k != addr_key && *k != key);
        if last {
            // Unflag first: from then on the data plane no longer looks for this service.
            if addr.action == ACTION_NONE {
                self.delete(target, &addr_key)?;
            } else {
                let mut a = addr;
                a.flags &= !FLAG_SERVICES;
                self.write(target, &addr_key, a)?;
            }
        }
        self.delete(target, &key)?;
        Ok(true)
    }

    fn raw_keys(&self) -> Result<Vec<GateKey>> {
        Ok(self.gates.keys().collect::<Result<Vec<_>, _>>()?)
    }

    /// Number of raw table entries, placeholders included (for tests of the bookkeeping).
    pub fn raw_len(&self) -> Result<usize> {
        Ok(self.raw_keys()?.len())
    }

    /// Lets `Forward` entries leave through interface `ifindex` (XDP_REDIRECT needs it in
    /// the device map).
    pub fn allow_redirect(&mut self, ifindex: u32) -> Result<()> {
        self.redirect
            .insert(ifindex, ifindex, None, 0)
            .with_context(|| format!("cannot add interface {ifindex} to the redirect map"))
    }

    /// Interfaces `Forward` entries may redirect to.
    pub fn redirect_targets(&self) -> Result<Vec<u32>> {
        let mut out = self.redirect.keys().collect::<Result<Vec<_>, _>>()?;
        out.sort_unstable();
        Ok(out)
    }

    /// The entry of `target`, if it has a verdict (placeholders do not count).
    pub fn get(&self, target: &Target) -> Result<Option<Entry>> {
        match self.raw(&target.key())? {
            Some(v) if v.action != ACTION_NONE => Ok(Some(self.entry(*target, v)?)),
            _ => Ok(None),
        }
    }

    pub fn counters(&self, target: &Target) -> Result<Counters> {
        let mut sum = Counters::default();
        match self.counters.get(&target.key(), 0) {
            Ok(per_cpu) => per_cpu.iter().for_each(|c| sum.add(c)),
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(sum)
    }

    fn entry(&self, target: Target, value: GateValue) -> Result<Entry> {
        Ok(Entry {
            target,
            action: Action::from_u8(value.action),
            value,
            counters: self.counters(&target)?,
        })
    }

    /// Every entry, sorted by address then service (the address-wide entry first).
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for item in self.gates.iter() {
            let (key, value) = item?;
            if value.action == ACTION_NONE {
                continue;
            }
            // Keys no takeover writes are skipped rather than shown wrongly.
            if let Some(target) = Target::from_key(&key) {
                out.push(self.entry(target, value)?);
            }
        }
        out.sort_by_key(|e| e.target);
        Ok(out)
    }
}
