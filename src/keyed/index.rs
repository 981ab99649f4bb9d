//! Key -> dense index, with the reverse mapping for output.
//!
//! String keys live once, back to back in one buffer; the hash table holds only indices and
//! compares through that buffer. About 30 bytes per key instead of ~90 with an allocated
//! `Arc<str>` per key kept in both a map and a list.

use hashbrown::HashTable;

use crate::record::{KeyColumn, KeyRef};

/// The table's hash: the key's stable hash with its halves swapped. A worker owns the keys
/// whose stable hash is `w` modulo the worker count, so the low bits (hashbrown's bucket)
/// would be the same for every key of a worker; the high half is independent of them.
#[inline]
fn table_hash(k: KeyRef<'_>) -> u64 {
    k.stable_hash().rotate_left(32)
}

/// The keys one worker has seen, numbered in order of arrival.
#[derive(Debug)]
pub enum KeyIndex {
    /// Live sources learn the key type from the first key.
    Unset,
    /// Integer keys.
    Int {
        /// Indices, hashed by key.
        table: HashTable<u32>,
        /// Key of each index.
        keys: Vec<i64>,
    },
    /// String keys.
    Str {
        /// Indices, hashed by key.
        table: HashTable<u32>,
        /// Every key's bytes, back to back.
        bytes: Vec<u8>,
        /// Key `i` is `bytes[ends[i-1]..ends[i]]`.
        ends: Vec<u64>,
    },
}

#[inline]
fn str_at<'a>(bytes: &'a [u8], ends: &[u64], i: usize) -> &'a [u8] {
    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
    &bytes[start..ends[i] as usize]
}

/// Only whole `&str`s are appended, so every stored key is valid UTF-8.
#[inline]
fn as_str(b: &[u8]) -> &str {
    std::str::from_utf8(b).expect("keys are stored from &str")
}

impl KeyIndex {
    /// An empty index: integer keys, string keys, or (`None`) whichever comes first.
    pub fn new(int_keys: Option<bool>) -> KeyIndex {
        match int_keys {
            Some(true) => KeyIndex::Int {
                table: HashTable::new(),
                keys: Vec::new(),
            },
            Some(false) => KeyIndex::Str {
                table: HashTable::new(),
                bytes: Vec::new(),
                ends: Vec::new(),
            },
            None => KeyIndex::Unset,
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        match self {
            KeyIndex::Unset => 0,
            KeyIndex::Int { keys, .. } => keys.len(),
            KeyIndex::Str { ends, .. } => ends.len(),
        }
    }

    /// Whether no key was seen.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The index of `k`, and whether it is new. Keys of one run are all of one kind (the
    /// plan checks files; live readers reject the other kind), so a mismatch is a bug.
    #[inline]
    pub fn index(&mut self, k: KeyRef<'_>) -> (u32, bool) {
        if let KeyIndex::Unset = self {
            *self = KeyIndex::new(Some(matches!(k, KeyRef::Int(_))));
        }
        let h = table_hash(k);
        match (self, k) {
            (KeyIndex::Int { table, keys }, KeyRef::Int(i)) => {
                if let Some(&x) = table.find(h, |&x| keys[x as usize] == i) {
                    return (x, false);
                }
                let x = keys.len() as u32;
                keys.push(i);
                table.insert_unique(h, x, |&y| table_hash(KeyRef::Int(keys[y as usize])));
                (x, true)
            }
            (KeyIndex::Str { table, bytes, ends }, KeyRef::Str(s)) => {
                let s = s.as_bytes();
                if let Some(&x) = table.find(h, |&x| str_at(bytes, ends, x as usize) == s) {
                    return (x, false);
                }
                let x = ends.len() as u32;
                bytes.extend_from_slice(s);
                ends.push(bytes.len() as u64);
                table.insert_unique(h, x, |&y| {
                    table_hash(KeyRef::Str(as_str(str_at(bytes, ends, y as usize))))
                });
                (x, true)
            }
            _ => panic!("key kind mismatch"),
        }
    }

    /// The key with index `i`.
    pub fn get(&self, i: u32) -> KeyRef<'_> {
        match self {
            KeyIndex::Unset => unreachable!("no key has an index yet"),
            KeyIndex::Int { keys, .. } => KeyRef::Int(keys[i as usize]),
            KeyIndex::Str { bytes, ends, .. } => KeyRef::Str(as_str(str_at(bytes, ends, i as usize))),
        }
    }

    /// An empty column of this index's key kind.
    pub fn column(&self) -> KeyColumn {
        match self {
            KeyIndex::Int { .. } => KeyColumn::Int(Vec::new()),
            KeyIndex::Str { .. } | KeyIndex::Unset => KeyColumn::empty_str(),
        }
    }

    /// Bytes held by the index.
    pub fn bytes(&self) -> usize {
        match self {
            KeyIndex::Unset => 0,
            KeyIndex::Int { table, keys } => table.capacity() * 5 + keys.capacity() * 8,
            KeyIndex::Str { table, bytes, ends } => {
                table.capacity() * 5 + bytes.capacity() + ends.capacity() * 8
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_dense_and_round_trip() {
        let mut ix = KeyIndex::new(None);
        let keys: Vec<String> = (0..5000).map(|i| format!("s{i:07}")).collect();
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(ix.index(KeyRef::Str(k)), (i as u32, true));
        }
        for (i, k) in keys.iter().enumerate().rev() {
            assert_eq!(ix.index(KeyRef::Str(k)), (i as u32, false));
            assert_eq!(ix.get(i as u32), KeyRef::Str(k));
        }
        let mut ints = KeyIndex::new(Some(true));
        assert_eq!(ints.index(KeyRef::Int(-3)), (0, true));
        assert_eq!(ints.index(KeyRef::Int(-3)), (0, false));
        assert_eq!(ints.get(0), KeyRef::Int(-3));
    }
}
