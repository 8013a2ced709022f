//! What the watchers remember between lists: for each kind, the key and
//! resource version of every object last seen, and nothing else.
//!
//! That is enough to turn a relist (after a 410 Gone, a dropped connection,
//! or at start) into the smallest set of changes that brings a consumer from
//! its last state to the current one: objects that changed are applied again,
//! objects that did not are skipped, and objects that are gone are deleted.

use std::hash::{Hash, Hasher};

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::intern::Key;

/// What to do with an object listed during a relist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listed {
    /// New or changed since last seen: forward it.
    Changed,
    /// Seen before with the same resource version: the consumer has it.
    Unchanged,
}

/// Known objects of one kind.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Key (`namespace/name` or `name`) to a hash of its resource version.
    /// Keys are short strings stored in the table itself: every watch event
    /// looks one up.
    known: HashMap<Key, u64>,
    /// Keys listed since the last `Init`, while a list is in progress.
    listing: Option<HashSet<Key>>,
}

/// A 64-bit summary of a resource version: the version itself is an opaque
/// string of any length, and only equality matters here. The API server's
/// versions are decimal numbers, which are kept exactly (below 2^60) instead
/// of hashed; anything else is hashed into values with the top bit set, so
/// the two never meet.
fn version_hash(rv: &str) -> u64 {
    const MAX_DIGITS: usize = 18;
    let b = rv.as_bytes();
    // No leading zero: "01" and "1" are different versions.
    if !b.is_empty()
        && b.len() <= MAX_DIGITS
        && b.iter().all(u8::is_ascii_digit)
        && (b[0] != b'0' || b.len() == 1)
    {
        return b.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    rv.hash(&mut h);
    h.finish() | (1 << 63)
}

impl Tracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Objects known now.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether no object is known.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Whether `key` is known.
    pub fn contains(&self, key: &str) -> bool {
        self.known.contains_key(key.as_bytes())
    }

    /// A list starts.
    pub fn init(&mut self) {
        self.listing = Some(HashSet::default());
    }

    /// An object arrived in the list.
    pub fn listed(&mut self, key: &str, resource_version: &str) -> Listed {
        if let Some(l) = self.listing.as_mut() {
            l.insert(Key::new(key));
        }
        self.remember(key, resource_version)
    }

    /// Records `key` at `resource_version`; says whether that changed it.
    fn remember(&mut self, key: &str, resource_version: &str) -> Listed {
        let h = version_hash(resource_version);
        // Known objects are updated in place: allocating the key again for
        // every change would dominate the cost of a watch event.
        match self.known.get_mut(key.as_bytes()) {
            Some(old) if *old == h => Listed::Unchanged,
            Some(old) => {
                *old = h;
                Listed::Changed
            }
            None => {
                self.known.insert(Key::new(key), h);
                Listed::Changed
            }
        }
    }

    /// The list is complete. Returns the keys that were known before but
    /// not listed: they were deleted while nobody was watching.
    pub fn init_done(&mut self) -> Vec<String> {
        let Some(listed) = self.listing.take() else {
            return Vec::new();
        };
        let mut gone: Vec<String> = self
            .known
            .keys()
            .filter(|k| !listed.contains(k.as_bytes()))
            .map(Key::to_text)
            .collect();
        gone.sort();
        for k in &gone {
            self.known.remove(k.as_bytes());
        }
        self.known.shrink_to_fit();
        gone
    }

    /// An object was added or changed during a watch. Returns
    /// [`Listed::Unchanged`] when this exact version was already seen (a
    /// watch restarted from an older version repeats events).
    pub fn applied(&mut self, key: &str, resource_version: &str) -> Listed {
        self.remember(key, resource_version)
    }

    /// An object was deleted during a watch. Returns whether it was known.
    pub fn deleted(&mut self, key: &str) -> bool {
        self.known.remove(key.as_bytes()).is_some()
    }

    /// Bytes this tracker holds on the heap, approximately: table slots plus
    /// the keys too long to be stored in them.
    pub fn heap_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(Key, u64)>() + 1;
        self.known.capacity() * slot + self.known.keys().map(Key::heap_bytes).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relist_reports_only_changes_and_deletes() {
        let mut t = Tracker::new();
        t.init();
        assert_eq!(t.listed("a", "1"), Listed::Changed);
        assert_eq!(t.listed("b", "2"), Listed::Changed);
        assert_eq!(t.listed("c", "3"), Listed::Changed);
        assert!(t.init_done().is_empty());

        // Relist: a unchanged, b changed, c gone, d new.
        t.init();
        assert_eq!(t.listed("a", "1"), Listed::Unchanged);
        assert_eq!(t.listed("b", "7"), Listed::Changed);
        assert_eq!(t.listed("d", "8"), Listed::Changed);
        assert_eq!(t.init_done(), vec!["c".to_string()]);
        assert_eq!(t.len(), 3);
        assert!(!t.contains("c"));
    }

    #[test]
    fn versions_are_told_apart_exactly() {
        let vs = [
            "",
            "0",
            "1",
            "01",
            "10",
            "999999999999999999",
            "1000000000000000000",
            "abc",
        ];
        for (i, a) in vs.iter().enumerate() {
            for (j, b) in vs.iter().enumerate() {
                assert_eq!(version_hash(a) == version_hash(b), i == j, "{a:?} vs {b:?}");
            }
        }
        assert_eq!(version_hash("42"), 42);
    }

    #[test]
    fn watch_events_update_what_is_known() {
        let mut t = Tracker::new();
        assert_eq!(t.applied("a", "1"), Listed::Changed);
        assert_eq!(t.applied("a", "1"), Listed::Unchanged);
        assert_eq!(t.applied("a", "2"), Listed::Changed);
        assert!(t.deleted("a"));
        assert!(!t.deleted("a"));
        assert!(t.is_empty());
        // init_done without init deletes nothing.
        t.applied("b", "1");
        assert!(t.init_done().is_empty());
    }
}
