//! Names to small integer ids: the one interner that the planner's cluster
//! view, the baselines, the oracle and the replay simulator all use.
//!
//! Each name is stored once, in a table indexed by id, in its own slot when
//! it is short ([`Key`]); the hash table holds only ids. A lookup therefore
//! reads the dense id table and one name slot, and no string behind a
//! pointer: with a hundred thousand pod names, that pointer was a cache miss
//! on every event. Names that come and go (pods) can be forgotten, and their
//! ids handed to later names, so that the tables stay as large as the set of
//! live names rather than of every name ever seen.

mod key;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;
use std::hash::BuildHasher;

pub(crate) use key::Key;

/// Names ↔ ids. Ids are dense, from 0, in order of first sight; an id given
/// up with [`Interner::release`] is reused by the next new name.
#[derive(Debug)]
pub struct Interner {
    table: HashTable<u32>,
    /// By id; a released id keeps its old name until it is reused.
    names: Vec<Key>,
    free: Vec<u32>,
    /// The id the last [`Interner::intern`] returned, or `NONE`: events come
    /// in runs naming the same node, claim or workload, and comparing one
    /// name that is already in cache is cheaper than hashing and probing.
    last: u32,
}

impl Default for Interner {
    fn default() -> Self {
        Self {
            table: HashTable::default(),
            names: Vec::new(),
            free: Vec::new(),
            last: Self::NONE,
        }
    }
}

impl Interner {
    /// No id: `last` before any `intern`, or after its name was removed.
    const NONE: u32 = u32::MAX;

    fn hash(name: &str) -> u64 {
        FxBuildHasher.hash_one(name.as_bytes())
    }

    /// `last`, when it is the id of `name`.
    fn cached(&self, name: &str) -> Option<u32> {
        self.names
            .get(self.last as usize)
            .is_some_and(|k| k.as_bytes() == name.as_bytes())
            .then_some(self.last)
    }

    /// The id of `name`, interning it on first sight.
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(id) = self.cached(name) {
            return id;
        }
        let id = self.intern_new(name);
        self.last = id;
        id
    }

    /// [`Interner::intern`] past the `last` check.
    fn intern_new(&mut self, name: &str) -> u32 {
        let hash = Self::hash(name);
        let names = &self.names;
        if let Some(&id) = self
            .table
            .find(hash, |&id| names[id as usize].as_bytes() == name.as_bytes())
        {
            return id;
        }
        let key = Key::new(name);
        let id = match self.free.pop() {
            Some(id) => {
                self.names[id as usize] = key;
                id
            }
            None => {
                self.names.push(key);
                (self.names.len() - 1) as u32
            }
        };
        let names = &self.names;
        self.table.insert_unique(hash, id, |&i| {
            FxBuildHasher.hash_one(names[i as usize].as_bytes())
        });
        id
    }

    /// The id of `name`, if it is known.
    pub fn get(&self, name: &str) -> Option<u32> {
        if let Some(id) = self.cached(name) {
            return Some(id);
        }
        let names = &self.names;
        self.table
            .find(Self::hash(name), |&id| {
                names[id as usize].as_bytes() == name.as_bytes()
            })
            .copied()
    }

    /// The name of `id`; empty for an id never handed out.
    pub fn name(&self, id: u32) -> &str {
        self.names
            .get(id as usize)
            .map_or("", |k| std::str::from_utf8(k.as_bytes()).unwrap_or(""))
    }

    /// How the names of `a` and `b` sort. Compared as bytes, which sort
    /// UTF-8 text as `str` does, without the check `name` makes of each:
    /// rankings break ties by name, many times a ranking.
    pub fn cmp_names(&self, a: u32, b: u32) -> std::cmp::Ordering {
        let bytes = |id: u32| self.names.get(id as usize).map_or(&[][..], Key::as_bytes);
        bytes(a).cmp(bytes(b))
    }

    /// Whether `id` is the id of `name`: a comparison, without hashing.
    pub fn is(&self, id: u32, name: &str) -> bool {
        self.names
            .get(id as usize)
            .is_some_and(|k| k.as_bytes() == name.as_bytes())
    }

    /// Forgets `name`, returning its id. The id is not handed out again
    /// before [`Interner::release`], so that the caller can first clear what
    /// it keeps under it.
    pub fn remove(&mut self, name: &str) -> Option<u32> {
        let names = &self.names;
        let entry = self
            .table
            .find_entry(Self::hash(name), |&id| {
                names[id as usize].as_bytes() == name.as_bytes()
            })
            .ok()?;
        let (id, _) = entry.remove();
        if id == self.last {
            self.last = Self::NONE;
        }
        Some(id)
    }

    /// Lets a later new name take `id`, which [`Interner::remove`] returned.
    pub fn release(&mut self, id: u32) {
        self.free.push(id);
    }

    /// How many names are known now.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no name is known.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// One past the largest id handed out: the length an id-indexed table
    /// needs.
    pub fn id_bound(&self) -> usize {
        self.names.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dense_stable_and_reused_only_after_release() {
        let mut i = Interner::default();
        let long = "a-namespace-with-a-long-name/a-pod-whose-name-is-long-too-7d9c5b8f4";
        assert_eq!(i.intern("a"), 0);
        assert_eq!(i.intern(long), 1);
        assert_eq!(i.intern("a"), 0);
        assert_eq!(i.get(long), Some(1));
        assert_eq!(i.name(1), long);
        assert_eq!(i.get("b"), None);
        assert_eq!(i.remove("a"), Some(0));
        assert_eq!(i.remove("a"), None);
        assert_eq!(i.get("a"), None);
        assert_eq!(i.len(), 1);
        // Not reused before release.
        assert_eq!(i.intern("b"), 2);
        i.release(0);
        assert_eq!(i.intern("c"), 0);
        assert_eq!(i.name(0), "c");
        assert_eq!(i.get("c"), Some(0));
        assert_eq!(i.intern("a"), 3);
        assert_eq!(i.id_bound(), 4);
        assert_eq!(i.name(99), "");
    }

    #[test]
    fn the_last_name_is_not_found_once_removed() {
        let mut i = Interner::default();
        assert_eq!(i.intern("a"), 0);
        assert_eq!(i.intern("a"), 0);
        assert_eq!(i.get("a"), Some(0));
        assert_eq!(i.remove("a"), Some(0));
        assert_eq!(i.get("a"), None);
        i.release(0);
        assert_eq!(i.intern("b"), 0);
        assert_eq!(i.get("a"), None);
        assert_eq!(i.intern("a"), 1);
        assert_eq!(i.intern("b"), 0);
        assert_eq!(i.get("a"), Some(1));
    }

    #[test]
    fn many_names_survive_growth() {
        let mut i = Interner::default();
        for n in 0..10_000u32 {
            assert_eq!(i.intern(&format!("ns/pod-{n}")), n);
        }
        for n in (0..10_000u32).step_by(2) {
            assert_eq!(i.remove(&format!("ns/pod-{n}")), Some(n));
        }
        for n in 0..10_000u32 {
            let want = (n % 2 == 1).then_some(n);
            assert_eq!(i.get(&format!("ns/pod-{n}")), want);
        }
    }
}
