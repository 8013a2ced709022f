//! An object's `namespace/name` as a hash map key, stored in the map's own
//! slot when it is short, as nearly all are.
//!
//! The watcher looks every pod change up twice by name (its tracker, the
//! normaliser's pod state), over maps of up to a hundred thousand pods, and
//! [`super::Interner`] keeps its names in these keys. With
//! the text behind a pointer each lookup read one more cold cache line just
//! to compare the key; profiling showed those compares as the largest cost
//! left in a watch event. Keys are looked up by their bytes (`&[u8]`), which
//! lets the inline form be borrowed without any `unsafe` conversion.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

/// Longest key kept inline: the enum is then 48 bytes.
const INLINE: usize = 46;

/// A `namespace/name` (or any string) key; look it up with `s.as_bytes()`.
#[derive(Clone)]
pub(crate) enum Key {
    /// Up to [`INLINE`] bytes, in place.
    Inline { len: u8, bytes: [u8; INLINE] },
    /// Longer keys.
    Heap(Box<[u8]>),
}

impl Key {
    /// A key holding `s`.
    pub(crate) fn new(s: &str) -> Self {
        let b = s.as_bytes();
        match u8::try_from(b.len()) {
            Ok(len) if b.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..b.len()].copy_from_slice(b);
                Key::Inline { len, bytes }
            }
            _ => Key::Heap(b.into()),
        }
    }

    /// The key's bytes, the text it was made from.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Heap(b) => b,
        }
    }

    /// The key as text (made from a `&str`, so always valid UTF-8).
    pub(crate) fn to_text(&self) -> String {
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }

    /// Heap bytes held beyond the key itself.
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Key::Inline { .. } => 0,
            Key::Heap(b) => b.len(),
        }
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

// Hash and equality are those of the bytes, as `Borrow` requires.
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*String::from_utf8_lossy(self.as_bytes()), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustc_hash::FxHashMap;

    #[test]
    fn short_and_long_keys_are_found_by_their_bytes() {
        let short = "shop/web-5d8f7-abcde";
        let long = "a-namespace-with-a-long-name/a-pod-whose-name-is-long-too-7d9c5b8f4-abcde";
        assert!(matches!(Key::new(short), Key::Inline { .. }));
        assert!(matches!(Key::new(long), Key::Heap(_)));
        assert!(matches!(Key::new(&"x".repeat(INLINE)), Key::Inline { .. }));
        assert!(matches!(Key::new(&"x".repeat(INLINE + 1)), Key::Heap(_)));
        let mut m = FxHashMap::default();
        for (i, k) in [short, long, "", &"x".repeat(INLINE)].iter().enumerate() {
            m.insert(Key::new(k), i);
        }
        assert_eq!(m.get(short.as_bytes()), Some(&0));
        assert_eq!(m.get(long.as_bytes()), Some(&1));
        assert_eq!(m.get("".as_bytes()), Some(&2));
        assert_eq!(m.get("shop/web".as_bytes()), None);
        assert_eq!(Key::new(long).to_text(), long);
        assert_eq!(Key::new(short).to_text(), short);
        assert_eq!(Key::new(long).heap_bytes(), long.len());
        assert_eq!(std::mem::size_of::<Key>(), 48);
    }
}
