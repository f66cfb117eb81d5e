//! What a pin directory must hold before a start adopts it: the version of what
//! the pins mean, and maps of exactly the layouts the object declares.
//!
//! The loader takes any map found at a pin path as it is: a map of another
//! layout would be misread silently (or refused by the verifier with a log
//! that names no map). So every pinned map is checked first, and a mismatch is
//! one line that names the map and says what to do.

use std::path::{Path, PathBuf};

use aya::maps::{Array, Map, MapData, MapError};
use aya_obj::generated::bpf_map_type;
use aya_obj::Object;
use balancer_common::maps::names;

/// The version of what pinned maps mean. Bump it when a change makes the pins
/// of an earlier build unfit to adopt although the sizes still match: a field
/// whose meaning changed, flag bits reused, a table laid out differently, a map
/// whose contents a new build reads otherwise. A change of a map's type, key or
/// value size, max entries or flags is found map by map without a bump.
pub const ABI: u32 = 1;

/// The one-entry array beside the maps that holds [`ABI`].
pub const ABI_PIN: &str = "ABI";

/// Why pins cannot be adopted.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "pinned map {map} ({}) has {what} {found} where this balancer's program has {expected}: \
         the pins are from an incompatible build; run `balancer --instance {instance} detach` \
         (it removes the data plane: traffic stops until the next start) and start again",
        path.display()
    )]
    Layout {
        map: String,
        path: PathBuf,
        instance: String,
        what: &'static str,
        found: String,
        expected: String,
    },
    #[error(
        "the pins in {} are of version {found}, this balancer's are of version {ABI}: \
         run `balancer --instance {instance} detach` (it removes the data plane: traffic stops \
         until the next start) and start again",
        dir.display()
    )]
    Version {
        dir: PathBuf,
        instance: String,
        found: u32,
    },
    #[error(
        "pinned map {map} ({}) holds {what}: it was not written by this balancer; \
         run `balancer --instance {instance} detach` (it removes the data plane: traffic \
         stops until the next start) and start again",
        path.display()
    )]
    Contents {
        map: String,
        path: PathBuf,
        instance: String,
        what: String,
    },
    #[error("reading the pinned map {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: MapError,
    },
}

/// The instance a pin directory belongs to (its last component), for messages.
pub(super) fn instance_of(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// Checks the version pin and every map pinned in `dir` against the object.
/// A directory without a version pin but with maps is from a build before
/// versions were pinned: its maps are checked one by one all the same.
pub(super) fn check(dir: &Path, object: &[u8]) -> Result<(), Box<PinError>> {
    let instance = instance_of(dir);
    if let Some(found) = read_version(dir)? {
        if found != ABI {
            return Err(Box::new(PinError::Version {
                dir: dir.to_path_buf(),
                instance,
                found,
            }));
        }
    }
    let obj = Object::parse(object).map_err(|e| PinError::Contents {
        map: "(object)".into(),
        path: PathBuf::new(),
        instance: instance.clone(),
        what: format!("an object that does not parse: {e}"),
    })?;
    for name in names::pinned() {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let Some(declared) = obj.maps.get(name) else {
            continue;
        };
        let info = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .map_err(|source| PinError::Read {
                path: path.clone(),
                source,
            })?;
        let found = Layout {
            map_type: info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        };
        let expected = Layout {
            map_type: declared.map_type(),
            key_size: declared.key_size(),
            value_size: declared.value_size(),
            max_entries: declared.max_entries(),
            flags: declared.map_flags(),
        };
        if let Some((what, f, e)) = found.differs(&expected, name) {
            return Err(Box::new(PinError::Layout {
                map: name.to_string(),
                path,
                instance,
                what,
                found: f,
                expected: e,
            }));
        }
    }
    Ok(())
}

/// Pins the version beside the maps, once they were adopted or created.
pub(super) fn write_version(dir: &Path) -> Result<(), anyhow::Error> {
    let path = dir.join(ABI_PIN);
    if path.exists() {
        return Ok(());
    }
    let mut m: Array<MapData, u32> = Array::create(1, 0)?;
    m.set(0, ABI, 0)?;
    m.pin(&path)?;
    Ok(())
}

fn read_version(dir: &Path) -> Result<Option<u32>, Box<PinError>> {
    let path = dir.join(ABI_PIN);
    if !path.exists() {
        return Ok(None);
    }
    let read = || -> Result<u32, MapError> {
        let m: Array<MapData, u32> = Map::Array(MapData::from_pin(&path)?).try_into()?;
        m.get(&0, 0)
    };
    read().map(Some).map_err(|e| {
        Box::new(PinError::Contents {
            map: ABI_PIN.to_string(),
            path: path.clone(),
            instance: instance_of(dir),
            what: format!("no version this balancer can read ({e})"),
        })
    })
}

/// BPF_F_RDONLY_PROG.
const RDONLY_PROG: u32 = 1 << 7;

/// What the kernel says about a map, and what the object declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

impl Layout {
    /// The first field that differs, as (field, found, expected). What the
    /// loader decides rather than the object is not compared: a devmap's value
    /// size (by the kernel's features), a ring buffer's size (rounded to pages)
    /// and the affinity map's size (set by configuration; a pinned one keeps
    /// its own).
    fn differs(&self, want: &Layout, name: &str) -> Option<(&'static str, String, String)> {
        use bpf_map_type::*;
        let t = want.map_type;
        let loader_value = [
            BPF_MAP_TYPE_DEVMAP as u32,
            BPF_MAP_TYPE_DEVMAP_HASH as u32,
            BPF_MAP_TYPE_CPUMAP as u32,
            BPF_MAP_TYPE_RINGBUF as u32,
        ]
        .contains(&t);
        let loader_size = t == BPF_MAP_TYPE_RINGBUF as u32 || name == names::AFFINITY;
        // The kernel makes devmaps read-only to programs (BPF_F_RDONLY_PROG)
        // whatever the object asked.
        let kernel_flags =
            if [BPF_MAP_TYPE_DEVMAP as u32, BPF_MAP_TYPE_DEVMAP_HASH as u32].contains(&t) {
                RDONLY_PROG
            } else {
                0
            };
        let checks = [
            ("type", self.map_type, want.map_type, true),
            ("key size", self.key_size, want.key_size, true),
            (
                "value size",
                self.value_size,
                want.value_size,
                !loader_value,
            ),
            (
                "max entries",
                self.max_entries,
                want.max_entries,
                !loader_size,
            ),
            ("flags", self.flags & !kernel_flags, want.flags, true),
        ];
        checks
            .into_iter()
            .find(|(_, f, e, checked)| *checked && f != e)
            .map(|(what, f, e, _)| {
                let show = |v: u32| match what {
                    "type" => type_name(v),
                    "flags" => format!("{v:#x}"),
                    _ => v.to_string(),
                };
                (what, show(f), show(e))
            })
    }
}

fn type_name(t: u32) -> String {
    use bpf_map_type::*;
    let known = [
        (BPF_MAP_TYPE_HASH, "hash"),
        (BPF_MAP_TYPE_ARRAY, "array"),
        (BPF_MAP_TYPE_PERCPU_HASH, "per-CPU hash"),
        (BPF_MAP_TYPE_PERCPU_ARRAY, "per-CPU array"),
        (BPF_MAP_TYPE_LRU_HASH, "LRU hash"),
        (BPF_MAP_TYPE_LRU_PERCPU_HASH, "per-CPU LRU hash"),
        (BPF_MAP_TYPE_LPM_TRIE, "LPM trie"),
        (BPF_MAP_TYPE_DEVMAP_HASH, "devmap hash"),
        (BPF_MAP_TYPE_RINGBUF, "ring buffer"),
    ];
    known
        .iter()
        .find(|(k, _)| *k as u32 == t)
        .map(|(_, n)| format!("type {n}"))
        .unwrap_or_else(|| format!("type {t}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(value_size: u32) -> Layout {
        Layout {
            map_type: bpf_map_type::BPF_MAP_TYPE_HASH as u32,
            key_size: 24,
            value_size,
            max_entries: 64,
            flags: 0,
        }
    }

    #[test]
    fn the_first_differing_field_is_named() {
        assert_eq!(hash(48).differs(&hash(48), names::SERVICES), None);
        assert_eq!(
            hash(40).differs(&hash(48), names::SERVICES),
            Some(("value size", "40".into(), "48".into()))
        );
        let lru = Layout {
            map_type: bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32,
            ..hash(48)
        };
        assert_eq!(
            lru.differs(&hash(48), names::SERVICES),
            Some(("type", "type LRU hash".into(), "type hash".into()))
        );
        let flagged = Layout {
            flags: 1,
            ..hash(48)
        };
        assert_eq!(
            flagged.differs(&hash(48), names::SERVICES).unwrap().0,
            "flags"
        );
    }

    /// The affinity map's size is the configuration's: a pinned one keeps its
    /// own, so only its size may differ.
    #[test]
    fn the_affinity_size_is_not_the_objects() {
        let small = Layout {
            max_entries: 8,
            ..hash(48)
        };
        assert_eq!(small.differs(&hash(48), names::AFFINITY), None);
        assert_eq!(
            small.differs(&hash(48), names::LEARNED).unwrap().0,
            "max entries"
        );
    }

    #[test]
    fn flags_the_kernel_adds_to_a_devmap_are_not_a_mismatch() {
        let devmap = Layout {
            map_type: bpf_map_type::BPF_MAP_TYPE_DEVMAP_HASH as u32,
            ..hash(4)
        };
        let read_only = Layout {
            flags: RDONLY_PROG,
            ..devmap
        };
        assert_eq!(read_only.differs(&devmap, names::TX_PORTS), None);
        let other = Layout {
            flags: RDONLY_PROG,
            ..hash(4)
        };
        assert_eq!(other.differs(&hash(4), names::SERVICES).unwrap().0, "flags");
    }

    #[test]
    fn the_message_names_the_map_and_what_to_do() {
        let e = PinError::Layout {
            map: "BACKENDS".into(),
            path: "/sys/fs/bpf/balancer/x/BACKENDS".into(),
            instance: "x".into(),
            what: "value size",
            found: "8".into(),
            expected: "20".into(),
        };
        let s = e.to_string();
        assert!(s.contains("BACKENDS") && s.contains("value size 8"), "{s}");
        assert!(s.contains("`balancer --instance x detach`"), "{s}");
        assert!(!s.contains('\n'), "one line: {s}");
    }
}
