//! The affinity maps and their event ring as the affinity sync uses them:
//! opened from the pin directory, so a thread of their own reads and writes
//! them while the daemon's [`Dataplane`](super::Dataplane) goes on with the
//! rest. Both handles name the same kernel maps.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData, RingBuf};
use balancer_common::maps::{
    names, Affinity, AffinityEvent, AffinityKey, EVENT_CLIENT, EVENT_LEARNED,
};

use super::read::monotonic_ns;
use crate::sync::Map as Which;

type Entries = BpfHashMap<MapData, AffinityKey, Affinity>;

/// `AFFINITY` and `LEARNED`.
pub struct AffinityMaps {
    client: Entries,
    learned: Entries,
}

/// What [`AffinityMaps::put`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    Written,
    /// The map already had that backend for the key: only refreshed if older.
    Same,
    /// The map had another backend for the key, seen more recently here than
    /// the peer's: this balancer's own news wins.
    KeptNewer,
}

fn open(pins: &Path, name: &str) -> Result<MapData> {
    let path = pins.join(name);
    MapData::from_pin(&path).with_context(|| format!("opening the pinned map {}", path.display()))
}

impl AffinityMaps {
    pub fn open(pins: &Path) -> Result<AffinityMaps> {
        let hash = |name| -> Result<Entries> {
            Ok(Entries::try_from(Map::from_map_data(open(pins, name)?)?)?)
        };
        Ok(AffinityMaps {
            client: hash(names::AFFINITY)?,
            learned: hash(names::LEARNED)?,
        })
    }

    fn map(&mut self, which: Which) -> &mut Entries {
        match which {
            Which::Client => &mut self.client,
            Which::Learned => &mut self.learned,
        }
    }

    /// Enters a peer's entry: `key` to `slot`, last seen `age` ago (by the
    /// peer's clock; the kernel's own dates it from there).
    pub fn put(&mut self, which: Which, key: AffinityKey, slot: u32, age: Duration) -> Result<Put> {
        let now = monotonic_ns();
        let seen = now.saturating_sub(age.as_nanos() as u64);
        let map = self.map(which);
        let put = match map.get(&key, 0) {
            Ok(e) if e.slot == slot && e.seen >= seen => return Ok(Put::Same),
            Ok(e) if e.slot == slot => Put::Same,
            // Wrapping, as the program compares: a local entry stamped after
            // `seen` is newer news of the same key.
            Ok(e) if (e.seen.wrapping_sub(seen) as i64) > 0 => return Ok(Put::KeptNewer),
            _ => Put::Written,
        };
        let entry = Affinity {
            slot,
            _pad: 0,
            seen,
        };
        map.insert(key, entry, 0)
            .context("writing a peer's affinity entry")?;
        Ok(put)
    }

    /// Removes `key` if it still points at `slot`; whether it did.
    pub fn remove(&mut self, which: Which, key: AffinityKey, slot: u32) -> Result<bool> {
        let map = self.map(which);
        match map.get(&key, 0) {
            Ok(e) if e.slot == slot => {
                map.remove(&key).context("removing an affinity entry")?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// How many entries each map holds (fresh or not).
    pub fn count(&self) -> (u64, u64) {
        let n = |m: &Entries| m.keys().map_while(|k| k.ok()).count() as u64;
        (n(&self.client), n(&self.learned))
    }

    /// Every entry still fresh by its service's idle time (`idle_s`, `None`
    /// for a service this balancer does not know): what a peer that asks for
    /// everything gets, with how long ago each was last seen.
    pub fn fresh(
        &self,
        idle_s: impl Fn(u32) -> Option<u32>,
    ) -> Vec<(Which, AffinityKey, u32, Duration)> {
        let now = monotonic_ns();
        let mut out = Vec::new();
        for (which, map) in [
            (Which::Client, &self.client),
            (Which::Learned, &self.learned),
        ] {
            // An entry evicted while the keys are walked ends that walk early:
            // the peer asks again and gets the rest then.
            for (key, e) in map.iter().map_while(|r| r.ok()) {
                let Some(idle) = idle_s(key.service) else {
                    continue;
                };
                if e.is_fresh(now, idle) {
                    out.push((which, key, e.slot, Duration::from_nanos(now - e.seen)));
                }
            }
        }
        out
    }
}

/// `AFFINITY_EVENTS`: the entries the program made, in order.
pub struct Events {
    ring: RingBuf<MapData>,
}

impl Events {
    pub fn open(pins: &Path) -> Result<Events> {
        let ring = RingBuf::try_from(Map::from_map_data(open(pins, names::AFFINITY_EVENTS)?)?)?;
        Ok(Events { ring })
    }

    /// Becomes readable when the program queued something.
    pub fn fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// Everything queued so far, at most `max` (the rest stays for the next call).
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(Which, AffinityEvent)) -> usize {
        let mut n = 0;
        while n < max {
            let Some(item) = self.ring.next() else { break };
            if item.len() < std::mem::size_of::<AffinityEvent>() {
                continue;
            }
            // The length was checked; the record may sit at any alignment.
            let e = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<AffinityEvent>()) };
            drop(item);
            let which = match e.map {
                EVENT_CLIENT => Which::Client,
                EVENT_LEARNED => Which::Learned,
                _ => continue,
            };
            f(which, e);
            n += 1;
        }
        n
    }
}
