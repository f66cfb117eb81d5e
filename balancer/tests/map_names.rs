//! The built object's maps are exactly `maps::names::ALL`. User space finds maps
//! and pins them by these names; a map added to or renamed in the program without
//! its name there would be missed: a failed lookup, or a map left unpinned.

use std::collections::BTreeSet;

use aya_obj::{EbpfSectionKind, Object};
use balancer_common::maps::names;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer"));

#[test]
fn the_objects_maps_are_the_named_ones() {
    let obj = Object::parse(OBJECT).expect("the built object parses");
    // Global data (.rodata, .data, .bss sections) becomes maps too, named by
    // the section: the compiler's, not the program's.
    let built: BTreeSet<&str> = obj
        .maps
        .iter()
        .filter(|(_, m)| {
            matches!(
                m.section_kind(),
                EbpfSectionKind::Maps | EbpfSectionKind::BtfMaps
            )
        })
        .map(|(name, _)| name.as_str())
        .collect();
    let named: BTreeSet<&str> = names::ALL.iter().copied().collect();
    assert_eq!(named.len(), names::ALL.len(), "a name listed twice");
    assert_eq!(built, named);
}
