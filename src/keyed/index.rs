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

/// The keys one worker holds, each with a dense index. Indices of forgotten keys
/// ([`KeyIndex::remove`], live runs with `state_ttl_ms`) are handed out again, so every
/// per-index buffer of the processor stays as long as the most keys held at once.
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
        /// Freed indices.
        free: Vec<u32>,
    },
    /// String keys.
    Str {
        /// Indices, hashed by key.
        table: HashTable<u32>,
        /// Every key's bytes, back to back (and the bytes of forgotten keys until the
        /// buffer is compacted).
        bytes: Vec<u8>,
        /// Key `i` is `bytes[starts[i]..starts[i] + lens[i]]`.
        starts: Vec<u64>,
        /// Length of key `i`.
        lens: Vec<u32>,
        /// Freed indices.
        free: Vec<u32>,
        /// Bytes of `bytes` that belong to forgotten keys.
        garbage: usize,
    },
}

#[inline]
fn str_at<'a>(bytes: &'a [u8], starts: &[u64], lens: &[u32], i: usize) -> &'a [u8] {
    let start = starts[i] as usize;
    &bytes[start..start + lens[i] as usize]
}

/// Only whole `&str`s are appended, so every stored key is valid UTF-8.
#[inline]
fn as_str(b: &[u8]) -> &str {
    std::str::from_utf8(b).expect("keys are stored from &str")
}

/// What [`KeyIndex::index`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// A key already held, at this index.
    Held(u32),
    /// A new key, given this index (a fresh one, or a forgotten key's).
    New(u32),
    /// A new key, refused: the index already holds its limit.
    Full,
    /// A key of the other kind (an integer among strings, or the reverse): refused. Only
    /// a run whose processes each decided the key kind from their own first line can
    /// send one (a Kafka topic with both kinds).
    WrongKind,
}

impl KeyIndex {
    /// An empty index: integer keys, string keys, or (`None`) whichever comes first.
    pub fn new(int_keys: Option<bool>) -> KeyIndex {
        match int_keys {
            Some(true) => KeyIndex::Int {
                table: HashTable::new(),
                keys: Vec::new(),
                free: Vec::new(),
            },
            Some(false) => KeyIndex::Str {
                table: HashTable::new(),
                bytes: Vec::new(),
                starts: Vec::new(),
                lens: Vec::new(),
                free: Vec::new(),
                garbage: 0,
            },
            None => KeyIndex::Unset,
        }
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        match self {
            KeyIndex::Unset => 0,
            KeyIndex::Int { table, .. } | KeyIndex::Str { table, .. } => table.len(),
        }
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Indices handed out so far, held or freed: every index is below this.
    pub fn slots(&self) -> usize {
        match self {
            KeyIndex::Unset => 0,
            KeyIndex::Int { keys, .. } => keys.len(),
            KeyIndex::Str { starts, .. } => starts.len(),
        }
    }

    /// The index of `k`, inserting it when new, unless `limit` keys are held already.
    /// Keys of one run are all of one kind (the plan checks files; live readers reject the
    /// other kind), so a mismatch is a bug.
    #[inline]
    pub fn index(&mut self, k: KeyRef<'_>, limit: usize) -> Lookup {
        if let KeyIndex::Unset = self {
            *self = KeyIndex::new(Some(matches!(k, KeyRef::Int(_))));
        }
        let h = table_hash(k);
        match (self, k) {
            (KeyIndex::Int { table, keys, free }, KeyRef::Int(i)) => {
                if let Some(&x) = table.find(h, |&x| keys[x as usize] == i) {
                    return Lookup::Held(x);
                }
                if table.len() >= limit {
                    return Lookup::Full;
                }
                let x = match free.pop() {
                    Some(x) => {
                        keys[x as usize] = i;
                        x
                    }
                    None => {
                        keys.push(i);
                        (keys.len() - 1) as u32
                    }
                };
                table.insert_unique(h, x, |&y| table_hash(KeyRef::Int(keys[y as usize])));
                Lookup::New(x)
            }
            (
                KeyIndex::Str {
                    table,
                    bytes,
                    starts,
                    lens,
                    free,
                    ..
                },
                KeyRef::Str(s),
            ) => {
                let s = s.as_bytes();
                if let Some(&x) = table.find(h, |&x| str_at(bytes, starts, lens, x as usize) == s) {
                    return Lookup::Held(x);
                }
                if table.len() >= limit {
                    return Lookup::Full;
                }
                let start = bytes.len() as u64;
                bytes.extend_from_slice(s);
                let x = match free.pop() {
                    Some(x) => {
                        starts[x as usize] = start;
                        lens[x as usize] = s.len() as u32;
                        x
                    }
                    None => {
                        starts.push(start);
                        lens.push(s.len() as u32);
                        (starts.len() - 1) as u32
                    }
                };
                table.insert_unique(h, x, |&y| {
                    table_hash(KeyRef::Str(as_str(str_at(bytes, starts, lens, y as usize))))
                });
                Lookup::New(x)
            }
            _ => Lookup::WrongKind,
        }
    }

    /// Forgets the key at index `i` (held): its index will be handed to a new key. The
    /// bytes of forgotten string keys are reclaimed once they are half the buffer.
    pub fn remove(&mut self, i: u32) {
        let h = table_hash(self.get(i));
        match self {
            KeyIndex::Unset => unreachable!("no key has an index yet"),
            KeyIndex::Int { table, free, .. } => {
                if let Ok(e) = table.find_entry(h, |&x| x == i) {
                    e.remove();
                    free.push(i);
                }
            }
            KeyIndex::Str {
                table,
                bytes,
                starts,
                lens,
                free,
                garbage,
            } => {
                if let Ok(e) = table.find_entry(h, |&x| x == i) {
                    e.remove();
                    free.push(i);
                    *garbage += lens[i as usize] as usize;
                    lens[i as usize] = 0;
                }
                if *garbage > 4096 && *garbage * 2 > bytes.len() {
                    // Keys held are exactly the table's entries; copy them to a new buffer.
                    let mut kept = Vec::with_capacity(bytes.len() - *garbage);
                    for &x in table.iter() {
                        let x = x as usize;
                        let (a, n) = (starts[x] as usize, lens[x] as usize);
                        starts[x] = kept.len() as u64;
                        kept.extend_from_slice(&bytes[a..a + n]);
                    }
                    *bytes = kept;
                    *garbage = 0;
                }
            }
        }
    }

    /// The key with index `i`.
    pub fn get(&self, i: u32) -> KeyRef<'_> {
        match self {
            KeyIndex::Unset => unreachable!("no key has an index yet"),
            KeyIndex::Int { keys, .. } => KeyRef::Int(keys[i as usize]),
            KeyIndex::Str {
                bytes, starts, lens, ..
            } => KeyRef::Str(as_str(str_at(bytes, starts, lens, i as usize))),
        }
    }

    /// The indices of the keys held, in no particular order.
    pub fn held(&self) -> Vec<u32> {
        match self {
            KeyIndex::Unset => Vec::new(),
            KeyIndex::Int { table, .. } | KeyIndex::Str { table, .. } => table.iter().copied().collect(),
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
            KeyIndex::Int { table, keys, free } => {
                table.capacity() * 5 + keys.capacity() * 8 + free.capacity() * 4
            }
            KeyIndex::Str {
                table,
                bytes,
                starts,
                lens,
                free,
                ..
            } => {
                table.capacity() * 5
                    + bytes.capacity()
                    + starts.capacity() * 8
                    + lens.capacity() * 4
                    + free.capacity() * 4
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
            assert_eq!(ix.index(KeyRef::Str(k), usize::MAX), Lookup::New(i as u32));
        }
        for (i, k) in keys.iter().enumerate().rev() {
            assert_eq!(ix.index(KeyRef::Str(k), usize::MAX), Lookup::Held(i as u32));
            assert_eq!(ix.get(i as u32), KeyRef::Str(k));
        }
        let mut ints = KeyIndex::new(Some(true));
        assert_eq!(ints.index(KeyRef::Int(-3), usize::MAX), Lookup::New(0));
        assert_eq!(ints.index(KeyRef::Int(-3), usize::MAX), Lookup::Held(0));
        // The other kind is refused, never a panic.
        assert_eq!(ints.index(KeyRef::Str("a7"), usize::MAX), Lookup::WrongKind);
        assert_eq!(ints.get(0), KeyRef::Int(-3));
    }

    /// Random inserts and removals against a map: held keys keep their index and bytes
    /// through compactions, forgotten indices are reused, the limit refuses new keys only.
    #[test]
    fn removal_reuses_indices_and_compaction_keeps_keys() {
        use std::collections::HashMap;
        let mut rng = crate::vocab::SplitMix::new(7);
        for int_keys in [false, true] {
            let mut ix = KeyIndex::new(Some(int_keys));
            let mut model: HashMap<u64, u32> = HashMap::new();
            let mut max_slots = 0;
            let limit = 300;
            for step in 0..40_000 {
                let id = rng.next_u64() % 1000;
                let name = format!("key-{id}-{}", "x".repeat((id % 50) as usize));
                let k = if int_keys {
                    KeyRef::Int(id as i64)
                } else {
                    KeyRef::Str(&name)
                };
                if step % 3 == 0 && !model.is_empty() {
                    // Forget a held key.
                    let (&gone, &i) = model.iter().next().expect("non-empty");
                    ix.remove(i);
                    model.remove(&gone);
                    continue;
                }
                match ix.index(k, limit) {
                    Lookup::Held(i) => assert_eq!(model.get(&id), Some(&i), "step {step}"),
                    Lookup::New(i) => {
                        assert!(!model.contains_key(&id) && model.len() < limit);
                        assert!(!model.values().any(|&j| j == i), "index {i} handed out twice");
                        model.insert(id, i);
                    }
                    Lookup::Full => assert!(!model.contains_key(&id) && model.len() == limit),
                    Lookup::WrongKind => panic!("one kind of key only"),
                }
                assert_eq!(ix.len(), model.len());
                max_slots = max_slots.max(ix.slots());
                for (&id, &i) in model.iter().filter(|_| step % 97 == 0) {
                    let name = format!("key-{id}-{}", "x".repeat((id % 50) as usize));
                    let want = if int_keys {
                        KeyRef::Int(id as i64)
                    } else {
                        KeyRef::Str(&name)
                    };
                    assert_eq!(ix.get(i), want);
                }
            }
            assert!(max_slots <= limit, "{max_slots} slots for at most {limit} keys");
            if let KeyIndex::Str { bytes, garbage, .. } = &ix {
                assert!(
                    bytes.len() <= 2 * (bytes.len() - garbage) + 4096 + 100,
                    "compaction"
                );
            }
        }
    }
}
