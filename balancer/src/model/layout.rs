//! Writing a configuration back into the file it came from without losing
//! the operator's comments and layout: the new values are merged into the
//! file's own document (toml_edit) item by item, so only what changed is
//! rewritten, and a service, backend or block keeps its comments as long as
//! it stays (matched by its VIP, address or CIDR, not its position).

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, Value};

use super::Config;

/// `next` as the text of the file that holds `old` now; `None` when `old`
/// is not a TOML document (the caller writes `next` afresh).
pub fn merged(old: &str, next: &Config) -> Option<String> {
    let mut doc: DocumentMut = old.parse().ok()?;
    // What the file meant, as this version writes it: a value that did not
    // change keeps the operator's spelling (`"90s"` stays, not `"1m 30s"`),
    // and a default the file left out stays left out.
    let was: DocumentMut = Config::parse(old).ok()?.to_toml().parse().ok()?;
    let new: DocumentMut = next
        .to_toml()
        .parse()
        .expect("the configuration's own TOML parses");
    merge_table(doc.as_table_mut(), new.as_table(), Some(was.as_table()));
    let text = doc.to_string();
    // The merge keeps what the file had; this keeps it honest: a document
    // that does not read back as `next` is not written.
    match toml::from_str::<Config>(&text) {
        Ok(c) if c == *next => Some(text),
        _ => None,
    }
}

fn merge_table(old: &mut Table, new: &Table, was: Option<&Table>) {
    let gone: Vec<String> = old
        .iter()
        .map(|(k, _)| k.to_string())
        .filter(|k| !new.contains_key(k))
        .collect();
    for k in gone {
        old.remove(&k);
    }
    for (k, n) in new.iter() {
        let w = was.and_then(|w| w.get(k));
        match old.get_mut(k) {
            Some(o) => merge_item(o, n, w),
            // Left out of the file and unchanged: a default, left out.
            None if w.is_some_and(|w| same_item(w, n)) => {}
            None => {
                old.insert(k, n.clone());
            }
        }
    }
}

fn merge_item(old: &mut Item, new: &Item, was: Option<&Item>) {
    if was.is_some_and(|w| same_item(w, new)) {
        return;
    }
    match (old, new) {
        (Item::Table(o), Item::Table(n)) => merge_table(o, n, was.and_then(Item::as_table)),
        (Item::ArrayOfTables(o), Item::ArrayOfTables(n)) => {
            merge_array(o, n, was.and_then(Item::as_array_of_tables))
        }
        (Item::Value(o), Item::Value(n)) => {
            let decor = o.decor().clone();
            *o = n.clone();
            *o.decor_mut() = decor;
        }
        (o, n) => *o = n.clone(),
    }
}

/// Whether two items say the same, whatever their spacing and comments.
fn same_item(a: &Item, b: &Item) -> bool {
    match (a, b) {
        (Item::Value(a), Item::Value(b)) => bare(a) == bare(b),
        (Item::Table(a), Item::Table(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, v)| b.get(k).is_some_and(|w| same_item(v, w)))
        }
        (Item::ArrayOfTables(a), Item::ArrayOfTables(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b.iter())
                    .all(|(x, y)| same_item(&Item::Table(x.clone()), &Item::Table(y.clone())))
        }
        (Item::None, Item::None) => true,
        _ => false,
    }
}

fn bare(v: &Value) -> String {
    let mut v = v.clone();
    v.decor_mut().clear();
    v.to_string()
}

/// The key a table of an array is known by.
fn key(t: &Table) -> Option<(String, String)> {
    ["vip", "address", "cidr"].iter().find_map(|k| {
        t.get(k)
            .and_then(|v| v.as_value())
            .map(|v| (k.to_string(), bare(v)))
    })
}

/// `[[service]]`, `[[service.backend]]`, `[[block]]`: each new table merged
/// into the old one with the same key, in the new order.
fn merge_array(old: &mut ArrayOfTables, new: &ArrayOfTables, was: Option<&ArrayOfTables>) {
    let mut out = ArrayOfTables::new();
    for n in new.iter() {
        let k = key(n);
        let found = k
            .as_ref()
            .and_then(|k| old.iter().find(|o| key(o).as_ref() == Some(k)));
        let w = k
            .as_ref()
            .and_then(|k| was.and_then(|w| w.iter().find(|o| key(o).as_ref() == Some(k))));
        match found {
            Some(o) => {
                let mut t = o.clone();
                merge_table(&mut t, n, w);
                out.push(t);
            }
            None => out.push(n.clone()),
        }
    }
    *old = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"# The lab's balancer.
interfaces = ["eth0"]   # client side

# Our Asterisk farm.
[[service]]
vip = "10.0.0.10:5060"

# rack 1
[[service.backend]]
address = "10.0.2.11:5060"
weight = 2   # the big one

# rack 2
[[service.backend]]
address = "10.0.2.12:5060"

[health]
interval = "1m30s"  # slow on purpose
"#;

    #[test]
    fn comments_and_layout_stay_through_changes() {
        let mut c = Config::parse(FILE).unwrap();
        // The first backend goes, a third comes, the second changes weight.
        let s = &mut c.services[0];
        s.backends.remove(0);
        s.backends[0].weight = 5;
        let mut third = s.backends[0].clone();
        third.address = "10.0.2.13:5060".parse().unwrap();
        third.weight = 1;
        s.backends.push(third);
        let text = merged(FILE, &c).unwrap();
        assert_eq!(Config::parse(&text).unwrap(), c);
        for kept in [
            "# The lab's balancer.",
            "interfaces = [\"eth0\"]   # client side",
            "# Our Asterisk farm.",
            "# rack 2",
            "interval = \"1m30s\"  # slow on purpose",
        ] {
            assert!(text.contains(kept), "lost {kept:?}:\n{text}");
        }
        assert!(
            !text.contains("# rack 1") && !text.contains("the big one"),
            "{text}"
        );
        assert!(
            text.contains("weight = 5") && text.contains("10.0.2.13:5060"),
            "{text}"
        );
        // Defaults the file left out stay out.
        assert!(!text.contains("algorithm"), "{text}");
        // Unchanged: byte for byte.
        let same = Config::parse(FILE).unwrap();
        assert_eq!(merged(FILE, &same).unwrap(), FILE);
    }
}
