//! A bounded least-recently-used map with O(1) get, insert and remove.
//!
//! Entries live in one slab (`Vec`) linked into a recency list by indices, with a hash map
//! from key to slot. Removal swaps the last slot into the hole, so the slab stays dense.

use rustc_hash::FxHashMap;

use crate::errors::{CoreError, CoreResult};

const NIL: u32 = u32::MAX;
/// The largest capacity: slots are numbered in 32 bits, one value marking "none".
pub const MAX_CAPACITY: usize = NIL as usize - 1;

#[derive(Debug)]
struct Node<V> {
    key: Box<str>,
    value: V,
    prev: u32,
    next: u32,
}

/// A bounded LRU map from string keys to `V`.
#[derive(Debug)]
pub struct Lru<V> {
    map: FxHashMap<Box<str>, u32>,
    nodes: Vec<Node<V>>,
    /// Most recently used slot.
    head: u32,
    /// Least recently used slot (evicted first).
    tail: u32,
    capacity: usize,
}

impl<V> Lru<V> {
    /// An empty map holding at most `capacity` entries.
    ///
    /// # Errors
    /// [`CoreError::Memory`] when `capacity` is 0 or does not fit the slot index.
    pub fn new(capacity: usize) -> CoreResult<Self> {
        if capacity == 0 {
            return Err(CoreError::Memory(
                "WorkingMemory capacity must be at least 1".into(),
            ));
        }
        if capacity > MAX_CAPACITY {
            return Err(CoreError::Memory(format!(
                "WorkingMemory capacity {capacity} is too large (max {MAX_CAPACITY})"
            )));
        }
        Ok(Self {
            map: FxHashMap::default(),
            nodes: Vec::new(),
            head: NIL,
            tail: NIL,
            capacity,
        })
    }

    /// Maximum number of entries.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let n = &self.nodes[i as usize];
            (n.prev, n.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.nodes[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.nodes[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, i: u32) {
        let old_head = self.head;
        {
            let n = &mut self.nodes[i as usize];
            n.prev = NIL;
            n.next = old_head;
        }
        match old_head {
            NIL => self.tail = i,
            h => self.nodes[h as usize].prev = i,
        }
        self.head = i;
    }

    fn touch(&mut self, i: u32) {
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    /// Returns the value of `key` and marks it most recently used.
    pub fn get(&mut self, key: &str) -> Option<&V> {
        let i = *self.map.get(key)?;
        self.touch(i);
        Some(&self.nodes[i as usize].value)
    }

    /// Returns the value of `key` without changing recency.
    pub fn peek(&self, key: &str) -> Option<&V> {
        self.map.get(key).map(|&i| &self.nodes[i as usize].value)
    }

    /// Whether `key` is present (recency unchanged).
    pub fn contains(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// Sets `key` to `value` as the most recently used entry. Returns the value it displaced:
    /// the key's previous value, or the evicted least recently used entry's value.
    pub fn insert(&mut self, key: &str, value: V) -> Option<V> {
        if let Some(&i) = self.map.get(key) {
            self.touch(i);
            return Some(std::mem::replace(&mut self.nodes[i as usize].value, value));
        }
        if self.nodes.len() >= self.capacity {
            // Reuse the least recently used slot for the new entry.
            let i = self.tail;
            self.unlink(i);
            let node = &mut self.nodes[i as usize];
            let old_key = std::mem::replace(&mut node.key, key.into());
            let old_value = std::mem::replace(&mut node.value, value);
            self.map.remove(&old_key);
            self.map.insert(key.into(), i);
            self.push_front(i);
            return Some(old_value);
        }
        let i = self.nodes.len() as u32;
        self.nodes.push(Node {
            key: key.into(),
            value,
            prev: NIL,
            next: NIL,
        });
        self.map.insert(key.into(), i);
        self.push_front(i);
        None
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let i = self.map.remove(key)?;
        self.unlink(i);
        let last = (self.nodes.len() - 1) as u32;
        if i != last {
            // Move the last slot into the hole and repoint everything that referred to it.
            self.nodes.swap(i as usize, last as usize);
            let (prev, next) = {
                let n = &self.nodes[i as usize];
                (n.prev, n.next)
            };
            match prev {
                NIL => self.head = i,
                p => self.nodes[p as usize].next = i,
            }
            match next {
                NIL => self.tail = i,
                n => self.nodes[n as usize].prev = i,
            }
            if let Some(slot) = self.map.get_mut(&*self.nodes[i as usize].key) {
                *slot = i;
            }
        }
        self.nodes.pop().map(|n| n.value)
    }

    /// Removes every entry, returning the values.
    pub fn clear(&mut self) -> Vec<V> {
        self.map.clear();
        self.head = NIL;
        self.tail = NIL;
        self.nodes.drain(..).map(|n| n.value).collect()
    }

    /// Entries from most to least recently used.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        let mut at = self.head;
        std::iter::from_fn(move || {
            let node = self.nodes.get(at as usize)?;
            at = node.next;
            Some((&*node.key, &node.value))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(lru: &Lru<i32>) -> Vec<String> {
        lru.iter().map(|(k, _)| k.to_owned()).collect()
    }

    #[test]
    fn evicts_least_recently_used() {
        let mut lru = Lru::new(2).unwrap();
        lru.insert("a", 1);
        lru.insert("b", 2);
        assert_eq!(lru.get("a"), Some(&1));
        assert_eq!(lru.insert("c", 3), Some(2)); // b was least recent
        assert_eq!(keys(&lru), ["c", "a"]);
        assert!(!lru.contains("b"));
    }

    #[test]
    fn replace_and_remove_keep_links_consistent() {
        let mut lru = Lru::new(4).unwrap();
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            lru.insert(k, i as i32);
        }
        assert_eq!(lru.insert("b", 10), Some(1));
        assert_eq!(lru.remove("a"), Some(0));
        assert_eq!(lru.remove("zz"), None);
        assert_eq!(keys(&lru), ["b", "d", "c"]);
        assert_eq!(lru.remove("c"), Some(2));
        assert_eq!(keys(&lru), ["b", "d"]);
        lru.insert("e", 5);
        assert_eq!(keys(&lru), ["e", "b", "d"]);
        assert_eq!(lru.peek("d"), Some(&3));
        let mut values = lru.clear();
        values.sort_unstable();
        assert_eq!(values, vec![3, 5, 10]);
        assert!(lru.is_empty() && lru.iter().next().is_none());
    }

    #[test]
    fn zero_capacity_is_an_error() {
        assert!(matches!(Lru::<i32>::new(0), Err(CoreError::Memory(_))));
    }
}
