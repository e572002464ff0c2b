//! The graph's mutable storage: entities and relationships, with no Python types.
//!
//! Entities live in a dense vector (index = position) with an id -> index map; removing an
//! entity swap-removes it, so indices stay dense and the adjacency snapshot needs no remapping.
//! Relationships are kept in insertion order, which fixes the neighbour order of every
//! traversal (the same order networkx uses for a graph built from the same edges).
//!
//! Ids and labels are `CompactString`s: up to 24 bytes they live inline, so building a graph
//! of short ids allocates nothing per entity, and properties are boxed (8 bytes when absent):
//! a bulk build touches about half the memory it would with `String`s and inline `Value`s.

use std::borrow::Cow;
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};

use compact_str::{CompactString, ToCompactString};
use rustc_hash::{FxBuildHasher, FxHashMap};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::map::Entry;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::alloc::{collected, filled, reserve, with_capacity};
use super::props::{within_max_depth, MAX_DEPTH};
use crate::errors::{CoreError, CoreResult};

/// JSON-compatible properties; none (null) costs one pointer.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(into = "Value")]
pub struct Properties(Option<Box<Value>>);

/// A JSON value read from a document, refused when an object in it names a key twice:
/// `Value` keeps the last of repeated keys, silently dropping the other values (as
/// `add_entity` never does, a dict naming each key once).
struct UniqueKeys(Value);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(UniqueKeysVisitor)
            .map(UniqueKeys)
    }
}

/// Builds a [`UniqueKeys`] value as `Value`'s own visitor does, but for repeated keys.
struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // JSON text has no NaN or infinity; null as `Value` makes one, should one come.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        UniqueKeys::deserialize(deserializer).map(|UniqueKeys(v)| v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueKeys(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let UniqueKeys(value) = map.next_value()?;
            match object.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                Entry::Occupied(slot) => {
                    return Err(de::Error::custom(format!(
                        "the key {:?} appears twice in one object",
                        slot.key()
                    )));
                }
            }
        }
        Ok(Value::Object(object))
    }
}

static NO_PROPERTIES: Value = Value::Null;

impl Properties {
    /// The properties as a JSON value (null when none).
    pub fn value(&self) -> &Value {
        self.0.as_deref().unwrap_or(&NO_PROPERTIES)
    }
}

impl From<Value> for Properties {
    fn from(value: Value) -> Self {
        Self((!value.is_null()).then(|| Box::new(value)))
    }
}

impl From<Properties> for Value {
    fn from(properties: Properties) -> Self {
        properties.0.map_or(Value::Null, |boxed| *boxed)
    }
}

/// A node of the knowledge graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entity {
    /// Unique id chosen by the caller.
    pub id: CompactString,
    /// Free-form type label (e.g. "person").
    pub label: CompactString,
    /// JSON-compatible properties (an object, or null when none).
    pub properties: Properties,
}

/// A directed, weighted, typed edge between two entities (by dense index).
#[derive(Debug, Clone, PartialEq)]
pub struct Relationship {
    /// Index of the source entity.
    pub from: u32,
    /// Index of the target entity.
    pub to: u32,
    /// Relationship type (e.g. "knows"), interned: an index into the store's kind table.
    pub kind: u32,
    /// Finite weight; algorithms that need it non-negative check it.
    pub weight: f64,
    /// JSON-compatible properties (an object, or null when none).
    pub properties: Properties,
}

impl Relationship {
    /// A relationship without properties.
    pub fn new(from: u32, to: u32, kind: u32, weight: f64) -> Self {
        Self {
            from,
            to,
            kind,
            weight,
            properties: Properties::default(),
        }
    }
}

/// Serialized form of a relationship: endpoints by entity id.
#[derive(Debug, Clone, Serialize)]
pub struct RelationshipRecord {
    /// Source entity id.
    pub from: String,
    /// Target entity id.
    pub to: String,
    /// Relationship type.
    pub kind: String,
    /// Weight.
    pub weight: f64,
    /// Properties (null when none).
    pub properties: Value,
}

/// The JSON document of a whole graph.
#[derive(Debug, Serialize)]
struct GraphDocument {
    format: String,
    version: u32,
    entities: Vec<Entity>,
    relationships: Vec<RelationshipRecord>,
}

/// [`GraphDocument`] as read: each properties value left as its text, to be read with the
/// document's positions in its errors (see [`document_properties`]).
#[derive(Deserialize)]
struct DocumentIn<'a> {
    format: String,
    version: u32,
    #[serde(borrow)]
    entities: Vec<EntityIn<'a>>,
    #[serde(borrow)]
    relationships: Vec<RelationshipIn<'a>>,
}

/// An entity as read (see [`DocumentIn`]).
#[derive(Deserialize)]
struct EntityIn<'a> {
    id: CompactString,
    #[serde(default)]
    label: CompactString,
    #[serde(default, borrow)]
    properties: Option<&'a RawValue>,
}

/// A relationship as read (see [`DocumentIn`]).
#[derive(Deserialize)]
struct RelationshipIn<'a> {
    from: String,
    to: String,
    kind: String,
    weight: f64,
    #[serde(default, borrow)]
    properties: Option<&'a RawValue>,
}

/// A byte buffer that grows fallibly: a write that does not fit in memory fails (keeping
/// the error) instead of aborting the process.
#[derive(Default)]
struct FallibleBuffer {
    bytes: Vec<u8>,
    out_of_memory: Option<CoreError>,
}

impl std::io::Write for FallibleBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Doubling, as a Vec grows, so that writing stays linear.
        if self.bytes.capacity() - self.bytes.len() < buf.len() {
            let extra = buf.len().max(self.bytes.capacity());
            if let Err(error) = reserve(&mut self.bytes, extra, "the JSON document") {
                self.out_of_memory = Some(error);
                return Err(std::io::ErrorKind::OutOfMemory.into());
            }
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const FORMAT: &str = "llm-agent-runtime/graph";
const VERSION: u32 = 1;

/// Read access to entity ids by dense index, for [`IdIndex`] lookups.
pub trait IdList {
    /// The id of the entity at `index`.
    fn id_at(&self, index: u32) -> &str;
}

impl IdList for [Entity] {
    #[inline]
    fn id_at(&self, index: u32) -> &str {
        &self[index as usize].id
    }
}

/// Id -> dense index, over an [`IdList`] that holds the ids.
///
/// Entities `0..numbered` have the ids "0", "1", ... (their own index in decimal, as
/// `from_edge_list` makes them): they are found by reading the id as a number, so a graph of
/// integer nodes hashes nothing and its index costs nothing to build or copy. The others are
/// kept in a hash table that stores only their indices (the ids are read from the list), 4
/// bytes a slot instead of a copy of every id.
#[derive(Debug, Default, Clone)]
pub struct IdIndex {
    numbered: u32,
    table: hashbrown::HashTable<u32>,
}

fn hash_id(id: &str) -> u64 {
    FxBuildHasher.hash_one(id)
}

/// The number `id` spells in canonical decimal ("0", "17"; not "017", "+1" or "-1"), if any
/// that fits in a `u32`.
#[inline]
fn decimal(id: &str) -> Option<u32> {
    let bytes = id.as_bytes();
    if bytes.is_empty() || bytes.len() > 10 || (bytes[0] == b'0' && bytes.len() > 1) {
        return None;
    }
    let mut value = 0u64;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u64::from(b - b'0');
    }
    u32::try_from(value).ok()
}

impl IdIndex {
    /// How many entities, from index 0, have their index as id ("0", "1", ...).
    pub fn numbered(&self) -> u32 {
        self.numbered
    }

    /// The index of `id` among `ids`, if present.
    #[inline]
    pub fn get(&self, ids: &(impl IdList + ?Sized), id: &str) -> Option<u32> {
        if let Some(i) = decimal(id).filter(|&i| i < self.numbered) {
            return Some(i);
        }
        if self.table.is_empty() {
            return None;
        }
        let found = self.table.find(hash_id(id), |&i| ids.id_at(i) == id);
        found.copied()
    }

    /// Makes room in the table for `extra` more hashed ids, or fails with "out of memory"
    /// (hashbrown's own growth aborts the process when the allocation fails).
    fn reserve(&mut self, ids: &(impl IdList + ?Sized), extra: usize) -> CoreResult<()> {
        self.table
            .try_reserve(extra, |&i| hash_id(ids.id_at(i)))
            .map_err(|_| CoreError::Graph("out of memory: the id index cannot grow".into()))
    }

    /// Points `id` at `index` (the next index, one past every entity) unless `id` is taken;
    /// returns whether it was free. One hash at most, none while the ids are the indices.
    ///
    /// # Errors
    /// [`CoreError::Graph`] "out of memory" when the table cannot grow (nothing changed).
    fn insert(&mut self, ids: &(impl IdList + ?Sized), id: &str, index: u32) -> CoreResult<bool> {
        let number = decimal(id);
        // Every entity so far is numbered (none is hashed), and this one continues the run.
        if index == self.numbered && number == Some(index) {
            self.numbered += 1;
            return Ok(true);
        }
        if number.is_some_and(|i| i < self.numbered) {
            return Ok(false);
        }
        self.reserve(ids, 1)?;
        let entry = self.table.entry(
            hash_id(id),
            |&i| ids.id_at(i) == id,
            |&i| hash_id(ids.id_at(i)),
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(_) => Ok(false),
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(index);
                Ok(true)
            }
        }
    }

    /// Makes room for what [`IdIndex::swap_remove`] of `removed` hashes (the numbered
    /// entities after it), before the removal changes anything.
    ///
    /// # Errors
    /// [`CoreError::Graph`] "out of memory" when the table cannot grow.
    fn reserve_for_removal(&mut self, entities: &[Entity], removed: u32) -> CoreResult<()> {
        let rehashed = self.numbered.saturating_sub(removed.saturating_add(1));
        self.reserve(entities, rehashed as usize)
    }

    /// Forgets entity `removed` ahead of `entities.swap_remove(removed)`, and points the id
    /// of the last entity (which moves into the gap) at `removed`. Grows the table only as
    /// far as [`IdIndex::reserve_for_removal`] made room for.
    fn swap_remove(&mut self, entities: &[Entity], removed: u32) {
        let last = (entities.len() - 1) as u32;
        if removed < self.numbered {
            // The numbered run now ends at `removed`: the entities after it are hashed.
            for i in removed + 1..self.numbered {
                self.table
                    .insert_unique(hash_id(entities.id_at(i)), i, |&j| {
                        hash_id(entities.id_at(j))
                    });
            }
            self.numbered = removed;
        }
        let id = entities.id_at(removed);
        if let Ok(entry) = self.table.find_entry(hash_id(id), |&i| i == removed) {
            entry.remove();
        }
        if removed != last {
            let moved = entities.id_at(last);
            if let Ok(entry) = self.table.find_entry(hash_id(moved), |&i| i == last) {
                *entry.into_mut() = removed;
            }
        }
    }
}

/// The decimal text of `v`, written at the end of `buf`.
fn decimal_text(mut v: u32, buf: &mut [u8; 10]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).unwrap_or_default()
}

/// A read-only copy of a store's entity ids and id index, for a snapshot. The ids of the
/// numbered run (see [`IdIndex`]) are not copied: they follow from the index, so a graph of
/// integer nodes copies none.
#[derive(Debug, Default)]
pub struct IdTable {
    len: u32,
    index: IdIndex,
    /// The ids of entities `index.numbered()..len`.
    named: Vec<CompactString>,
}

/// The copied ids of an [`IdTable`], by entity index (hashed entities only, which are
/// never in the numbered run).
struct NamedIds<'a> {
    numbered: u32,
    named: &'a [CompactString],
}

impl IdList for NamedIds<'_> {
    #[inline]
    fn id_at(&self, index: u32) -> &str {
        &self.named[(index - self.numbered) as usize]
    }
}

impl IdTable {
    /// The ids of `store`'s entities.
    ///
    /// # Errors
    /// [`CoreError::Graph`] when the copy of the ids does not fit in memory.
    pub fn of(store: &Store) -> CoreResult<IdTable> {
        let index = store.id_index().clone();
        let stored = store.stored_ids_from(index.numbered());
        let mut named: Vec<CompactString> = Vec::new();
        reserve(&mut named, stored.len(), "the snapshot's ids")?;
        named.extend(stored.cloned());
        Ok(IdTable {
            // The numbered run and the stored rest are every entity (see `Store`).
            len: index.numbered() + named.len() as u32,
            index,
            named,
        })
    }

    /// Number of entities.
    pub fn entity_count(&self) -> usize {
        self.len as usize
    }

    /// The index of entity `id`, if any.
    pub fn get(&self, id: &str) -> Option<u32> {
        let named = NamedIds {
            numbered: self.index.numbered(),
            named: &self.named,
        };
        self.index.get(&named, id)
    }

    /// `f` of the id of entity `v`, or `None` when there is no such entity.
    #[inline]
    pub fn with_id<R>(&self, v: u32, f: impl FnOnce(&str) -> R) -> Option<R> {
        let numbered = self.index.numbered();
        if v < numbered {
            return Some(f(decimal_text(v, &mut [0; 10])));
        }
        let id = self.named.get((v - numbered) as usize)?;
        Some(f(id))
    }
}

/// Entities and relationships of a directed multigraph.
///
/// A graph built from integer edges (`add_numbered_entities` on an empty store) stores no
/// entity at first: entities "0".."n-1" with no label and no properties are implied by their
/// count, and read through [`Store::entity`] and [`Store::id_at`]. The first change to an
/// entity stores them all.
#[derive(Debug, Default, Clone)]
pub struct Store {
    entities: Vec<Entity>,
    /// Entities implied but not stored; when nonzero, `entities` is empty.
    unstored: u32,
    index: IdIndex,
    relationships: Vec<Relationship>,
    /// Relationships that came as a plain list and are not stored yet; when set,
    /// `relationships` is empty.
    plain: Option<PlainRelationships>,
    kinds: Kinds,
    /// The relationships leaving each entity, for per-entity queries (built on first use).
    out_links: LazyLinks,
    /// The relationships reaching each entity, for undirected per-entity queries (built on
    /// first use).
    in_links: LazyLinks,
}

/// The interned relationship kinds, with how many relationships use each. A kind that no
/// relationship uses any more is forgotten and its id reused: the table holds the kinds in
/// use (and free slots up to the most ever in use at once), not every kind ever seen.
#[derive(Debug, Default, Clone)]
struct Kinds {
    /// Name by id (empty for a free id).
    names: Vec<CompactString>,
    index: FxHashMap<CompactString, u32>,
    /// Relationships using each id.
    uses: Vec<usize>,
    /// Ids no relationship uses, for the next new kind.
    free: Vec<u32>,
}

impl Kinds {
    fn intern(&mut self, kind: &str) -> u32 {
        if let Some(&k) = self.index.get(kind) {
            return k;
        }
        let name = CompactString::from(kind);
        let k = match self.free.pop() {
            Some(k) => {
                self.names[k as usize] = name.clone();
                k
            }
            None => {
                self.names.push(name.clone());
                self.uses.push(0);
                (self.names.len() - 1) as u32
            }
        };
        self.index.insert(name, k);
        k
    }

    fn name(&self, kind: u32) -> &str {
        self.names
            .get(kind as usize)
            .map_or("", CompactString::as_str)
    }

    fn id(&self, kind: &str) -> Option<u32> {
        self.index.get(kind).copied()
    }

    /// Counts `count` more relationships of `kind`.
    fn hold(&mut self, kind: u32, count: usize) {
        if let Some(uses) = self.uses.get_mut(kind as usize) {
            *uses += count;
        }
    }

    /// Counts one relationship of `kind` fewer; the kind is forgotten when none is left.
    fn release(&mut self, kind: u32) {
        let Some(uses) = self.uses.get_mut(kind as usize) else {
            return;
        };
        *uses = uses.saturating_sub(1);
        if *uses == 0 {
            let name = std::mem::take(&mut self.names[kind as usize]);
            self.index.remove(name.as_str());
            self.free.push(kind);
        }
    }

    /// The kinds in use, by id.
    fn in_use(&self) -> impl Iterator<Item = (u32, &str)> {
        self.uses
            .iter()
            .zip(&self.names)
            .enumerate()
            .filter(|(_, (&uses, _))| uses > 0)
            .map(|(k, (_, name))| (k as u32, name.as_str()))
    }
}

/// No relationship (the end of a list in [`Links`]).
const NONE: u32 = u32::MAX;

/// A removed entity's new index, in [`Store::remove_entities`].
const REMOVED: u32 = u32::MAX;

/// The relationships at one end of each entity (leaving it, or reaching it), as a linked
/// list through relationship indices (in insertion order): 8 bytes per entity and 4 per
/// relationship, and O(1) to extend.
#[derive(Debug, Default)]
pub struct Links {
    /// The first and the last relationship of each entity ([`NONE`] when none).
    first: Vec<u32>,
    last: Vec<u32>,
    /// By relationship index: the next relationship of the same entity.
    next: Vec<u32>,
}

impl Links {
    /// The links of `n` entities and `count` relationships, whose ends (sources, or targets)
    /// are `ends` in order.
    ///
    /// # Errors
    /// [`CoreError::Graph`] when they do not fit in memory.
    fn build(n: usize, count: usize, ends: impl Iterator<Item = u32>) -> CoreResult<Links> {
        let mut links = Links {
            first: filled(n, NONE, "the relationships' links")?,
            last: filled(n, NONE, "the relationships' links")?,
            next: Vec::new(),
        };
        reserve(&mut links.next, count, "the relationships' links")?;
        for end in ends {
            links.push(end);
        }
        Ok(links)
    }

    /// Links the next relationship (index `next.len()`), whose end is `end`.
    fn push(&mut self, end: u32) {
        let i = self.next.len() as u32;
        self.next.push(NONE);
        match self.last.get(end as usize).copied() {
            Some(NONE) => self.first[end as usize] = i,
            Some(last) => self.next[last as usize] = i,
            None => return, // not an entity: never the case for a stored relationship
        }
        self.last[end as usize] = i;
    }

    /// Makes room for `count` more entities.
    fn add_entities(&mut self, count: usize) {
        self.first.extend(std::iter::repeat_n(NONE, count));
        self.last.extend(std::iter::repeat_n(NONE, count));
    }

    /// The indices of the relationships of `v` (leaving it, or reaching it), in insertion
    /// order.
    pub fn of(&self, v: u32) -> impl Iterator<Item = u32> + '_ {
        let first = self.first.get(v as usize).copied().unwrap_or(NONE);
        std::iter::successors((first != NONE).then_some(first), |&i| {
            self.next.get(i as usize).copied().filter(|&j| j != NONE)
        })
    }
}

/// [`Links`] built on first use and extended by additions; a removal (O(n + m) itself)
/// drops them, and a copy of the store starts without them.
#[derive(Debug, Default)]
struct LazyLinks(OnceLock<Links>);

impl Clone for LazyLinks {
    fn clone(&self) -> Self {
        LazyLinks::default()
    }
}

impl LazyLinks {
    /// The links, when built.
    fn get_mut(&mut self) -> Option<&mut Links> {
        self.0.get_mut()
    }

    fn reset(&mut self) {
        self.0 = OnceLock::new();
    }
}

/// `(from, to, weight)` relationships, shared between a store and its snapshots.
pub type EdgeList = Arc<Vec<(u32, u32, f64)>>;

/// Relationships that came as a plain list (`from_edge_list`: one kind, no properties),
/// shared with the graph's snapshot rather than copied. They are made [`Relationship`]s
/// when first read as such, and stored before any change to the relationships.
#[derive(Debug, Clone)]
struct PlainRelationships {
    kind: u32,
    edges: EdgeList,
    as_relationships: OnceLock<Vec<Relationship>>,
}

impl PlainRelationships {
    fn relationships(&self) -> &[Relationship] {
        self.as_relationships
            .get_or_init(|| relationships_of(self.kind, &self.edges))
    }

    fn into_relationships(self) -> Vec<Relationship> {
        let PlainRelationships {
            kind,
            edges,
            as_relationships,
        } = self;
        as_relationships
            .into_inner()
            .unwrap_or_else(|| relationships_of(kind, &edges))
    }
}

fn relationships_of(kind: u32, edges: &[(u32, u32, f64)]) -> Vec<Relationship> {
    let relationship =
        |&(from, to, weight): &(u32, u32, f64)| Relationship::new(from, to, kind, weight);
    edges.iter().map(relationship).collect()
}

pub(crate) fn check_weight(weight: f64) -> CoreResult<()> {
    if weight.is_finite() {
        Ok(())
    } else {
        Err(CoreError::Graph(format!(
            "relationship weight must be finite, got {weight}"
        )))
    }
}

impl Store {
    /// Number of entities.
    pub fn entity_count(&self) -> usize {
        self.entities.len() + self.unstored as usize
    }

    /// Number of relationships.
    pub fn relationship_count(&self) -> usize {
        match &self.plain {
            Some(plain) => plain.edges.len(),
            None => self.relationships.len(),
        }
    }

    /// The entity at `index` (below `entity_count()`).
    pub fn entity(&self, index: u32) -> Cow<'_, Entity> {
        match self.entities.get(index as usize) {
            Some(entity) => Cow::Borrowed(entity),
            None => Cow::Owned(Entity {
                id: index.to_compact_string(),
                label: CompactString::default(),
                properties: Properties::default(),
            }),
        }
    }

    /// The ids of the stored entities from index `start` on (none when `start` is past them;
    /// an implied entity, see [`Store`], has the id of its index).
    fn stored_ids_from(&self, start: u32) -> impl ExactSizeIterator<Item = &CompactString> {
        let stored = self.entities.get(start as usize..).unwrap_or_default();
        stored.iter().map(|e| &e.id)
    }

    /// Stores the implied entities (before any change to the entities).
    fn store_entities(&mut self) -> CoreResult<()> {
        if self.unstored == 0 {
            return Ok(());
        }
        let n = self.unstored;
        reserve(&mut self.entities, n as usize, "graph entities")?;
        self.entities.extend((0..n).map(|i| Entity {
            id: i.to_compact_string(),
            label: CompactString::default(),
            properties: Properties::default(),
        }));
        self.unstored = 0;
        Ok(())
    }

    /// Relationships, in insertion order.
    pub fn relationships(&self) -> &[Relationship] {
        match &self.plain {
            Some(plain) => plain.relationships(),
            None => &self.relationships,
        }
    }

    /// The target of relationship `i` (read from the plain list when the relationships came
    /// as one: see [`Store::add_plain_relationships`]), if there is such a relationship.
    pub fn target_of(&self, i: u32) -> Option<u32> {
        match &self.plain {
            Some(plain) => plain.edges.get(i as usize).map(|e| e.1),
            None => self.relationships.get(i as usize).map(|r| r.to),
        }
    }

    /// The source of relationship `i` (as [`Store::target_of`]), if there is such a
    /// relationship.
    pub fn source_of(&self, i: u32) -> Option<u32> {
        match &self.plain {
            Some(plain) => plain.edges.get(i as usize).map(|e| e.0),
            None => self.relationships.get(i as usize).map(|r| r.from),
        }
    }

    /// Relationship `i`, made from the plain list (not all of them made, as
    /// [`Store::relationships`] does) when the relationships came as one.
    pub fn relationship_at(&self, i: u32) -> Option<Cow<'_, Relationship>> {
        match &self.plain {
            Some(plain) => plain.edges.get(i as usize).map(|&(from, to, weight)| {
                Cow::Owned(Relationship::new(from, to, plain.kind, weight))
            }),
            None => self.relationships.get(i as usize).map(Cow::Borrowed),
        }
    }

    /// `(from, to)` of every relationship, in order, read from the plain list when the
    /// relationships came as one.
    fn endpoints(&self) -> Box<dyn Iterator<Item = (u32, u32)> + '_> {
        match &self.plain {
            Some(plain) => Box::new(plain.edges.iter().map(|e| (e.0, e.1))),
            None => Box::new(self.relationships.iter().map(|r| (r.from, r.to))),
        }
    }

    /// Whether some entities are implied, not stored (see [`Store`]): the next change to an
    /// entity stores them all, in O(n).
    pub fn has_implied_entities(&self) -> bool {
        self.unstored > 0
    }

    /// The relationships as a plain list shared with snapshots, when they came as one and
    /// have not changed since (see [`Store::add_plain_relationships`]).
    pub fn plain_edges(&self) -> Option<&EdgeList> {
        self.plain.as_ref().map(|plain| &plain.edges)
    }

    /// Adds relationships `(from, to, weight)` of kind `kind`, indices and weights already
    /// checked (bulk loading). Into a store without relationships, the list is shared with
    /// the snapshots rather than copied.
    pub fn add_plain_relationships(&mut self, kind: u32, edges: EdgeList) {
        let plain = PlainRelationships {
            kind,
            edges,
            as_relationships: OnceLock::new(),
        };
        self.kinds.hold(kind, plain.edges.len());
        for &(from, to, _) in plain.edges.iter() {
            self.link(from, to);
        }
        if self.relationship_count() == 0 {
            self.plain = Some(plain);
        } else {
            self.store_relationships();
            self.relationships.append(&mut plain.into_relationships());
        }
    }

    /// Stores plain relationships as [`Relationship`]s (before any change to them).
    fn store_relationships(&mut self) {
        if let Some(plain) = self.plain.take() {
            self.relationships = plain.into_relationships();
        }
    }

    /// Dense index of `id`, or a `GraphError` naming it. (The index reads ids from the stored
    /// entities only for hashed ones, and those are always stored.)
    pub fn index_of(&self, id: &str) -> CoreResult<u32> {
        self.index
            .get(self.entities.as_slice(), id)
            .ok_or_else(|| CoreError::Graph(format!("unknown entity {id:?}")))
    }

    /// The id -> index map (a copy is O(1) for numbered ids, one table copy otherwise).
    fn id_index(&self) -> &IdIndex {
        &self.index
    }

    /// The interned id of relationship kind `kind`, adding it when new.
    pub fn intern(&mut self, kind: &str) -> u32 {
        self.kinds.intern(kind)
    }

    /// The name of an interned kind ("" for an id no relationship uses).
    pub fn kind_name(&self, kind: u32) -> &str {
        self.kinds.name(kind)
    }

    /// The interned id of `kind`, if a relationship uses it.
    pub fn kind_id(&self, kind: &str) -> Option<u32> {
        self.kinds.id(kind)
    }

    /// The names of the kinds some relationship uses, in no particular order.
    pub fn kinds_in_use(&self) -> impl Iterator<Item = &str> {
        self.kinds.in_use().map(|(_, name)| name)
    }

    /// The size of the kind table (kinds in use and free slots), for tests.
    #[cfg(test)]
    fn kind_slots(&self) -> usize {
        self.kinds.names.len()
    }

    /// The relationships leaving each entity, built on first use (O(n + m)).
    ///
    /// # Errors
    /// [`CoreError::Graph`] when they do not fit in memory.
    pub fn out_links(&self) -> CoreResult<&Links> {
        self.links(&self.out_links, |(from, _)| from)
    }

    /// The relationships reaching each entity, built on first use (O(n + m)).
    ///
    /// # Errors
    /// As [`Store::out_links`].
    pub fn in_links(&self) -> CoreResult<&Links> {
        self.links(&self.in_links, |(_, to)| to)
    }

    /// The links in `cell`, built on first use from the end `end` picks of each relationship.
    fn links<'a>(
        &'a self,
        cell: &'a LazyLinks,
        end: fn((u32, u32)) -> u32,
    ) -> CoreResult<&'a Links> {
        if let Some(links) = cell.0.get() {
            return Ok(links);
        }
        // Read from the plain list when there is one: the relationships are not made for this.
        let (n, count) = (self.entity_count(), self.relationship_count());
        let built = Links::build(n, count, self.endpoints().map(end))?;
        // Another reader may have set them first: the same links, either way.
        Ok(cell.0.get_or_init(|| built))
    }

    /// Links the next relationship, `from -> to`, in the links that are built.
    fn link(&mut self, from: u32, to: u32) {
        if let Some(links) = self.out_links.get_mut() {
            links.push(from);
        }
        if let Some(links) = self.in_links.get_mut() {
            links.push(to);
        }
    }

    /// Links relationship `relationships().len() - 1` (just added), when the links are built.
    fn link_last(&mut self) {
        if let Some((from, to)) = self.relationships.last().map(|r| (r.from, r.to)) {
            self.link(from, to);
        }
    }

    /// Drops the links (after a removal renumbers or drops relationships).
    fn unlink_all(&mut self) {
        self.out_links.reset();
        self.in_links.reset();
    }

    /// `v` and then its distinct neighbours (successors when `directed`, else entities
    /// related either way) in the order a walk of depth 1 visits them: that of their first
    /// relationship with `v`, as in the snapshot's views. Reads `v`'s own links, not the
    /// whole graph.
    ///
    /// # Errors
    /// [`CoreError::Graph`] when the links (built on first use) do not fit in memory.
    pub fn first_hop(&self, v: u32, directed: bool) -> CoreResult<Vec<u32>> {
        let mut order = vec![v];
        let mut seen = rustc_hash::FxHashSet::default();
        seen.insert(v);
        let mut visit = |i: u32, end: Option<u32>| {
            let w = end.ok_or_else(|| {
                CoreError::Graph(format!(
                    "internal error: relationship {i} is outside the store ({} relationships)",
                    self.relationship_count()
                ))
            })?;
            if seen.insert(w) {
                order.push(w);
            }
            Ok::<(), CoreError>(())
        };
        let mut leaving = self.out_links()?.of(v).peekable();
        if directed {
            for i in leaving {
                visit(i, self.target_of(i))?;
            }
            return Ok(order);
        }
        // Both lists are in relationship order: merged, they give the undirected view's.
        let mut reaching = self.in_links()?.of(v).peekable();
        loop {
            match (leaving.peek().copied(), reaching.peek().copied()) {
                (Some(o), r) if r.is_none_or(|r| o <= r) => {
                    leaving.next();
                    if r == Some(o) {
                        reaching.next(); // a self-loop, in both lists
                    }
                    visit(o, self.target_of(o))?;
                }
                (_, Some(r)) => {
                    reaching.next();
                    visit(r, self.source_of(r))?;
                }
                _ => break, // both lists done
            }
        }
        Ok(order)
    }

    /// Whether `id` is an entity.
    pub fn contains(&self, id: &str) -> bool {
        self.index.get(self.entities.as_slice(), id).is_some()
    }

    /// Id of the entity at `index` (below `entity_count()`).
    pub fn id_at(&self, index: u32) -> Cow<'_, str> {
        match self.entities.get(index as usize) {
            Some(entity) => Cow::Borrowed(&entity.id),
            None => Cow::Owned(index.to_string()),
        }
    }

    /// Adds an entity; an id already present is an error.
    pub fn add_entity(
        &mut self,
        id: impl Into<CompactString>,
        label: impl Into<CompactString>,
        properties: Value,
    ) -> CoreResult<u32> {
        self.store_entities()?;
        let index = u32::try_from(self.entities.len())
            .map_err(|_| CoreError::Graph("too many entities (limit 2^32)".into()))?;
        // Room for it first: a failure then leaves the index and the entities as they were.
        reserve(&mut self.entities, 1, "graph entities")?;
        let id = id.into();
        if !self.index.insert(self.entities.as_slice(), &id, index)? {
            return Err(CoreError::Graph(format!("entity {id:?} already exists")));
        }
        self.entities.push(Entity {
            id,
            label: label.into(),
            properties: properties.into(),
        });
        for links in [self.out_links.get_mut(), self.in_links.get_mut()]
            .into_iter()
            .flatten()
        {
            links.add_entities(1);
        }
        Ok(index)
    }

    /// Adds `id` unless present (bulk loading).
    pub fn ensure_entity(&mut self, id: &str) -> CoreResult<u32> {
        if let Some(index) = self.index.get(self.entities.as_slice(), id) {
            return Ok(index);
        }
        self.add_entity(id, "", Value::Null)
    }

    /// Replaces the label and/or properties of an entity.
    pub fn update_entity(
        &mut self,
        id: &str,
        label: Option<String>,
        properties: Option<Value>,
    ) -> CoreResult<()> {
        let index = self.index_of(id)? as usize;
        self.store_entities()?;
        let entity = &mut self.entities[index];
        if let Some(label) = label {
            entity.label = label.into();
        }
        if let Some(properties) = properties {
            entity.properties = properties.into();
        }
        Ok(())
    }

    /// Removes entity `id` and every relationship touching it (see
    /// [`Store::remove_entities`]).
    ///
    /// # Errors
    /// As [`Store::remove_entities`].
    pub fn remove_entity(&mut self, id: &str) -> CoreResult<()> {
        self.remove_entities(&[id])
    }

    /// Removes entities `ids`, and every relationship touching them, in one pass over the
    /// relationships: the store is the one removing them one at a time, in this order,
    /// leaves (each removal moves the last entity into the freed slot).
    ///
    /// # Errors
    /// [`CoreError::Graph`] for an unknown id, or one named twice, and "out of memory" when
    /// the removal's buffers do not fit: all checked before anything changes, so a failed
    /// call removes nothing.
    pub fn remove_entities<S: AsRef<str>>(&mut self, ids: &[S]) -> CoreResult<()> {
        let mut order = with_capacity(ids.len(), "the entities to remove")?;
        let mut removed = rustc_hash::FxHashSet::default();
        removed
            .try_reserve(ids.len())
            .map_err(|_| CoreError::Graph("out of memory: the entities to remove".into()))?;
        for id in ids {
            let id = id.as_ref();
            let i = self.index_of(id)?;
            if !removed.insert(i) {
                return Err(CoreError::Graph(format!(
                    "entity {id:?} is named twice among those to remove"
                )));
            }
            order.push(i);
        }
        let Some(&lowest) = order.iter().min() else {
            return Ok(());
        };
        self.store_entities()?;
        self.index.reserve_for_removal(&self.entities, lowest)?;
        // The original index of the entity in each slot that a removal refilled, and the
        // slot of each entity a removal moved, by original index: at most one a removal.
        let mut occupant: FxHashMap<u32, u32> = FxHashMap::default();
        let mut slot_of: FxHashMap<u32, u32> = FxHashMap::default();
        for map in [&mut occupant, &mut slot_of] {
            map.try_reserve(order.len())
                .map_err(|_| CoreError::Graph("out of memory: the entities to remove".into()))?;
        }
        // One removal moves the last entity into its slot, and no other: the relationships
        // are re-pointed by comparison. Several are mapped through where each entity ends
        // up (`REMOVED` for those removed).
        let last = (self.entities.len() - 1) as u32;
        let single = (order.len() == 1).then_some((lowest, last));
        let mut new_index = if single.is_none() && self.relationship_count() > 0 {
            collected(0..self.entities.len() as u32, "the entities' new indices")?
        } else {
            Vec::new()
        };
        // Nothing fails past this point.
        self.store_relationships();
        self.unlink_all();
        for &r in &order {
            let slot = slot_of.remove(&r).unwrap_or(r);
            let last = (self.entities.len() - 1) as u32;
            let moved = occupant.remove(&last).unwrap_or(last);
            self.index.swap_remove(&self.entities, slot);
            self.entities.swap_remove(slot as usize);
            if slot != last {
                slot_of.insert(moved, slot);
                occupant.insert(slot, moved);
            }
        }
        if self.relationships.is_empty() {
            return Ok(());
        }
        for (&original, &slot) in &slot_of {
            if let Some(at) = new_index.get_mut(original as usize) {
                *at = slot;
            }
        }
        for &r in &order {
            if let Some(at) = new_index.get_mut(r as usize) {
                *at = REMOVED;
            }
        }
        let kinds = &mut self.kinds;
        let moved_to = |i: u32| match single {
            Some((removed, _)) if i == removed => REMOVED,
            Some((removed, last)) if i == last => removed,
            Some(_) => i,
            None => new_index.get(i as usize).copied().unwrap_or(REMOVED),
        };
        self.relationships.retain_mut(|r| {
            let (from, to) = (moved_to(r.from), moved_to(r.to));
            if from == REMOVED || to == REMOVED {
                kinds.release(r.kind);
                return false;
            }
            (r.from, r.to) = (from, to);
            true
        });
        Ok(())
    }

    /// Adds a relationship between existing entities (parallel edges allowed).
    pub fn add_relationship(
        &mut self,
        from: &str,
        to: &str,
        kind: &str,
        weight: f64,
        properties: Value,
    ) -> CoreResult<()> {
        check_weight(weight)?;
        let from = self.index_of(from)?;
        let to = self.index_of(to)?;
        let kind = self.intern(kind);
        self.store_relationships();
        self.kinds.hold(kind, 1);
        self.relationships.push(Relationship {
            from,
            to,
            kind,
            weight,
            properties: properties.into(),
        });
        self.link_last();
        Ok(())
    }

    /// Adds a relationship by dense indices (bulk loading; indices already checked).
    pub fn push_relationship(&mut self, from: u32, to: u32, kind: u32, weight: f64) {
        self.store_relationships();
        self.kinds.hold(kind, 1);
        self.relationships
            .push(Relationship::new(from, to, kind, weight));
        self.link_last();
    }

    /// Adds relationships whose indices and kinds are already checked (bulk loading).
    pub fn append_relationships(&mut self, mut relationships: Vec<Relationship>) {
        self.store_relationships();
        for r in &relationships {
            self.kinds.hold(r.kind, 1);
            self.link(r.from, r.to);
        }
        if self.relationships.is_empty() {
            self.relationships = relationships; // no copy
        } else {
            self.relationships.append(&mut relationships);
        }
    }

    /// Adds entities "0", "1", ... "n-1" (bulk loading from integer edges). O(1) on an empty
    /// store (see [`Store`]).
    ///
    /// # Errors
    /// [`CoreError::Graph`] when one of those ids exists already.
    pub fn add_numbered_entities(&mut self, n: u32) -> CoreResult<()> {
        if self.entity_count() == 0 {
            self.unstored = n;
            self.index.numbered = n;
            self.unlink_all();
            return Ok(());
        }
        reserve(&mut self.entities, n as usize, "graph entities")?;
        for i in 0..n {
            self.add_entity(i.to_compact_string(), "", Value::Null)?;
        }
        Ok(())
    }

    /// Updates the weight and/or properties of every `from -> to` relationship of `kind`;
    /// returns how many matched.
    pub fn update_relationship(
        &mut self,
        from: &str,
        to: &str,
        kind: &str,
        weight: Option<f64>,
        properties: Option<Value>,
    ) -> CoreResult<usize> {
        if let Some(w) = weight {
            check_weight(w)?;
        }
        let (from, to) = (self.index_of(from)?, self.index_of(to)?);
        let Some(kind) = self.kind_id(kind) else {
            return Ok(0);
        };
        // `from`'s own relationships, not the whole graph's (an update keeps the links).
        let leaving: Vec<u32> = self.out_links()?.of(from).collect();
        let mut count = 0;
        self.store_relationships();
        for i in leaving {
            let Some(r) = self.relationships.get_mut(i as usize) else {
                continue;
            };
            if r.to == to && r.kind == kind {
                if let Some(w) = weight {
                    r.weight = w;
                }
                if let Some(p) = &properties {
                    r.properties = p.clone().into();
                }
                count += 1;
            }
        }
        Ok(count)
    }

    /// Removes every `from -> to` relationship (of `kind` when given); returns how many.
    pub fn remove_relationship(
        &mut self,
        from: &str,
        to: &str,
        kind: Option<&str>,
    ) -> CoreResult<usize> {
        let (from, to) = (self.index_of(from)?, self.index_of(to)?);
        let kind = match kind {
            None => None,
            Some(name) => match self.kind_id(name) {
                Some(k) => Some(k),
                None => return Ok(0),
            },
        };
        let matches =
            |r: &Relationship| r.from == from && r.to == to && kind.is_none_or(|k| r.kind == k);
        // None to remove is told from `from`'s own relationships: no scan, and the links stay.
        let any = {
            let links = self.out_links()?;
            let mut leaving = links.of(from);
            leaving.any(|i| self.relationship_at(i).is_some_and(|r| matches(&r)))
        };
        if !any {
            return Ok(0);
        }
        self.store_relationships();
        let before = self.relationships.len();
        let kinds = &mut self.kinds;
        self.relationships.retain(|r| {
            let keep = !matches(r);
            if !keep {
                kinds.release(r.kind);
            }
            keep
        });
        let removed = before - self.relationships.len();
        if removed > 0 {
            self.unlink_all();
        }
        Ok(removed)
    }

    /// Relationship with endpoints as ids.
    pub fn record(&self, r: &Relationship) -> RelationshipRecord {
        RelationshipRecord {
            from: self.id_at(r.from).into_owned(),
            to: self.id_at(r.to).into_owned(),
            kind: self.kind_name(r.kind).to_owned(),
            weight: r.weight,
            properties: r.properties.value().clone(),
        }
    }

    /// A new store with the entities whose indices are `keep` (distinct, in that order) and
    /// the relationships among them (in their order here), with only the kinds those use.
    ///
    /// A few entities of a large graph cost time in proportion to their own relationships:
    /// their rows of [`Store::out_links`] are walked, not every relationship, and
    /// relationships that came as a plain list are read from it, not all made at once.
    ///
    /// # Errors
    /// [`CoreError::Graph`] when its tables (of the kept entities, or of every entity when
    /// they are many) do not fit in memory.
    pub fn induced(&self, keep: &[u32]) -> CoreResult<Store> {
        let mut out = Store::default();
        reserve(&mut out.entities, keep.len(), "the subgraph's entities")?;
        for (position, &old) in keep.iter().enumerate() {
            let entity = self.entity(old).into_owned();
            out.index
                .insert(out.entities.as_slice(), &entity.id, position as u32)?;
            out.entities.push(entity);
        }
        // (old relationship index, new from, new to), in relationship order.
        let mut kept: Vec<(u32, u32, u32)> = Vec::new();
        if keep.len().saturating_mul(8) < self.entity_count() {
            // A few entities: a hash table of their new indices, and their own rows.
            let mut new_index = FxHashMap::default();
            new_index
                .try_reserve(keep.len())
                .map_err(|_| CoreError::Graph("out of memory for the subgraph's index".into()))?;
            new_index.extend(keep.iter().enumerate().map(|(p, &old)| (old, p as u32)));
            let links = self.out_links()?;
            for (position, &old) in keep.iter().enumerate() {
                for i in links.of(old) {
                    let Some(to) = self.target_of(i) else {
                        continue;
                    };
                    if let Some(&t) = new_index.get(&to) {
                        kept.push((i, position as u32, t));
                    }
                }
            }
            kept.sort_unstable_by_key(|&(i, _, _)| i);
        } else {
            let mut new_index =
                filled(self.entity_count(), u32::MAX, "the subgraph's index table")?;
            for (position, &old) in keep.iter().enumerate() {
                new_index[old as usize] = position as u32;
            }
            for (i, (from, to)) in self.endpoints().enumerate() {
                let (f, t) = (new_index[from as usize], new_index[to as usize]);
                if f != u32::MAX && t != u32::MAX {
                    kept.push((i as u32, f, t));
                }
            }
        }
        reserve(
            &mut out.relationships,
            kept.len(),
            "the subgraph's relationships",
        )?;
        let mut kinds: FxHashMap<u32, u32> = FxHashMap::default();
        for (i, from, to) in kept {
            let Some(r) = self.relationship_at(i) else {
                continue;
            };
            let kind = match kinds.get(&r.kind) {
                Some(&k) => k,
                None => {
                    let k = out.kinds.intern(self.kinds.name(r.kind));
                    kinds.insert(r.kind, k);
                    k
                }
            };
            out.kinds.hold(kind, 1);
            out.relationships.push(Relationship {
                from,
                to,
                kind,
                weight: r.weight,
                properties: r.properties.clone(),
            });
        }
        Ok(out)
    }

    /// An independent copy, whose kind table holds only the kinds in use (numbered afresh
    /// when some ids were free).
    pub fn copy(&self) -> Store {
        let mut out = self.clone();
        if out.kinds.free.is_empty() {
            return out;
        }
        let mut kinds = Kinds::default();
        let mut renumber = vec![NONE; out.kinds.names.len()];
        for (old, name) in out.kinds.in_use() {
            let new = kinds.intern(name);
            kinds.hold(new, out.kinds.uses[old as usize]);
            renumber[old as usize] = new;
        }
        let new_kind = |k: u32| renumber.get(k as usize).copied().unwrap_or(NONE);
        for r in &mut out.relationships {
            r.kind = new_kind(r.kind);
        }
        if let Some(plain) = out.plain.take() {
            out.plain = Some(PlainRelationships {
                kind: new_kind(plain.kind),
                edges: plain.edges,
                as_relationships: OnceLock::new(),
            });
        }
        out.kinds = kinds;
        out
    }

    /// The whole graph as a versioned JSON document.
    ///
    /// # Errors
    /// [`CoreError::Graph`] "out of memory" when the document (or its parts) does not fit.
    pub fn to_json(&self) -> CoreResult<String> {
        let entities = collected(
            (0..self.entity_count() as u32).map(|i| self.entity(i).into_owned()),
            "the entities of the JSON document",
        )?;
        let relationships = collected(
            self.relationships().iter().map(|r| self.record(r)),
            "the relationships of the JSON document",
        )?;
        let doc = GraphDocument {
            format: FORMAT.into(),
            version: VERSION,
            entities,
            relationships,
        };
        let mut text = FallibleBuffer::default();
        if let Err(e) = serde_json::to_writer(&mut text, &doc) {
            return Err(match text.out_of_memory {
                Some(error) => error,
                None => CoreError::Graph(format!("graph to JSON: {e}")),
            });
        }
        // serde_json writes valid UTF-8 only.
        String::from_utf8(text.bytes).map_err(|e| CoreError::Graph(format!("graph to JSON: {e}")))
    }

    /// Rebuilds a graph from `to_json` output; bad documents (another format, a version
    /// other than 1 to [`VERSION`], bad entities or relationships) are a `GraphError`.
    pub fn from_json(text: &str) -> CoreResult<Store> {
        let doc: DocumentIn<'_> = serde_json::from_str(text)
            .map_err(|e| CoreError::Graph(format!("not a graph document: {e}")))?;
        if doc.format != FORMAT {
            return Err(CoreError::Graph(format!(
                "not a graph document (format {:?})",
                doc.format
            )));
        }
        if doc.version == 0 {
            // Versions start at 1: no release wrote version 0.
            return Err(CoreError::Graph(
                "not a graph document: version 0 does not exist (versions start at 1)".into(),
            ));
        }
        if doc.version > VERSION {
            return Err(CoreError::Graph(format!(
                "graph document version {} is newer than this library reads ({VERSION})",
                doc.version
            )));
        }
        let mut store = Store::default();
        for e in doc.entities {
            let whose = || format!("entity {:?}", e.id);
            let properties = document_properties(text, e.properties, whose)?;
            object_or_null(&properties, whose)?;
            store.add_entity(e.id, e.label, properties)?;
        }
        for r in doc.relationships {
            let whose = || format!("relationship {:?} -> {:?}", r.from, r.to);
            let properties = document_properties(text, r.properties, whose)?;
            object_or_null(&properties, whose)?;
            store.add_relationship(&r.from, &r.to, &r.kind, r.weight, properties)?;
        }
        Ok(store)
    }
}

/// The properties `raw` of an entity or relationship (`whose`) of the document `text`, read
/// as [`UniqueKeys`]. Refused when they hold an integer literal a `Value` cannot hold
/// (beyond 64 bits, or `-0`), as `add_entity` refuses such a property: the JSON parser would
/// read it as the nearest float, silently changing it (`to_json` never writes one). Only
/// properties are checked: a weight is a float anyway. Errors name whose properties they
/// are and where in `text`.
fn document_properties(
    text: &str,
    raw: Option<&RawValue>,
    whose: impl Fn() -> String,
) -> CoreResult<Value> {
    let Some(raw) = raw else {
        return Ok(Value::Null);
    };
    let part = raw.get();
    let refused = |what: String, at: (usize, usize)| {
        CoreError::Graph(format!(
            "not a graph document: the properties of {}: {what} at line {} column {}",
            whose(),
            at.0,
            at.1
        ))
    };
    let wide = crate::react::wide_integers(part)
        .and_then(|literals| literals.into_iter().flatten().next());
    if let Some(literal) = wide {
        let at = position(text, offset_in(text, literal));
        return Err(refused(
            format!("the integer {literal} does not fit in 64 bits"),
            at,
        ));
    }
    serde_json::from_str::<UniqueKeys>(part)
        .map(|UniqueKeys(v)| v)
        .map_err(|e| {
            // serde_json's line and column are within `part`: made the document's.
            let message = e.to_string();
            let inner = format!(" at line {} column {}", e.line(), e.column());
            let (line, column) = position(text, offset_in(text, part));
            let at = if e.line() <= 1 {
                (line, column + e.column().saturating_sub(1))
            } else {
                (line + e.line() - 1, e.column())
            };
            refused(message.strip_suffix(&inner).unwrap_or(&message).into(), at)
        })
}

/// The byte offset in `text` of `part`, a slice of it (0 if it is not one).
fn offset_in(text: &str, part: &str) -> usize {
    (part.as_ptr() as usize)
        .checked_sub(text.as_ptr() as usize)
        .filter(|&at| at <= text.len())
        .unwrap_or(0)
}

/// The line and column (1-based, the column in bytes as serde_json counts it) of byte
/// `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = text.as_bytes().get(..offset).unwrap_or_default();
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = offset
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1)
        + 1;
    (line, column)
}

/// Properties read from a document must be what the API accepts: an object, or null, nested
/// no deeper than `add_entity` and `add_relationship` accept ([`MAX_DEPTH`] levels).
fn object_or_null(properties: &Value, whose: impl FnOnce() -> String) -> CoreResult<()> {
    if !(properties.is_object() || properties.is_null()) {
        return Err(CoreError::Graph(format!(
            "not a graph document: the properties of {} are not an object",
            whose()
        )));
    }
    if !within_max_depth(properties) {
        return Err(CoreError::Graph(format!(
            "not a graph document: the properties of {} nest deeper than {MAX_DEPTH} levels",
            whose()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::community::SplitMix;

    fn abc() -> Store {
        let mut s = Store::default();
        for id in ["a", "b", "c"] {
            s.add_entity(id, "", Value::Null).unwrap();
        }
        s.add_relationship("a", "b", "x", 1.0, Value::Null).unwrap();
        s.add_relationship("b", "c", "y", 2.0, Value::Null).unwrap();
        s.add_relationship("c", "a", "x", 3.0, Value::Null).unwrap();
        s
    }

    #[test]
    fn removing_an_entity_keeps_indices_dense_and_edges_right() {
        let mut s = abc();
        s.remove_entity("a").unwrap();
        assert_eq!(s.entity_count(), 2);
        assert_eq!(s.relationship_count(), 1);
        let r = s.record(&s.relationships()[0]);
        assert_eq!((r.from.as_str(), r.to.as_str()), ("b", "c"));
        assert_eq!(s.index_of("c").unwrap(), 0);
    }

    #[test]
    fn json_round_trip_and_bad_documents() {
        let s = abc();
        let back = Store::from_json(&s.to_json().unwrap()).unwrap();
        let all = |s: &Store| -> Vec<Entity> {
            (0..s.entity_count() as u32)
                .map(|i| s.entity(i).into_owned())
                .collect()
        };
        assert_eq!(all(&back), all(&s));
        assert_eq!(back.relationships(), s.relationships());
        assert!(Store::from_json("{}").is_err());
        let future = s
            .to_json()
            .unwrap()
            .replace("\"version\":1", "\"version\":9");
        assert!(Store::from_json(&future).is_err());
    }

    #[test]
    fn json_integers_beyond_64_bits_are_refused_not_rounded() {
        let doc = |value: &str| {
            format!(
                r#"{{"format":"llm-agent-runtime/graph","version":1,"entities":[{{"id":"a\"18446744073709551616","label":"","properties":{{"n":{value}}}}}],"relationships":[]}}"#
            )
        };
        for fits in [
            "-9223372036854775808",
            "18446744073709551615",
            "1e30",
            "-0.5",
        ] {
            assert!(Store::from_json(&doc(fits)).is_ok(), "{fits}");
        }
        for big in ["18446744073709551616", "-9223372036854775809"] {
            let err = Store::from_json(&doc(big)).err().map(|e| e.to_string());
            assert!(err.is_some_and(|e| e.contains(big)), "{big}");
        }
    }

    #[test]
    fn json_properties_nest_no_deeper_than_add_entity_accepts() {
        let nested = |levels: usize| {
            let mut v = Value::from(0);
            for _ in 0..levels {
                v = Value::Array(vec![v]);
            }
            serde_json::json!({ "deep": v })
        };
        let doc = |properties: &Value| {
            format!(
                r#"{{"format":"llm-agent-runtime/graph","version":1,"entities":[{{"id":"a","label":"","properties":{properties}}},{{"id":"b"}}],"relationships":[{{"from":"a","to":"b","kind":"k","weight":1.0,"properties":{properties}}}]}}"#
            )
        };
        // {"deep": [...[0]...]}: the object is level 0, "deep" level 1, the 0 level 64.
        assert!(Store::from_json(&doc(&nested(MAX_DEPTH - 1))).is_ok());
        let err = Store::from_json(&doc(&nested(MAX_DEPTH))).err();
        assert!(err.is_some_and(|e| e.to_string().contains("deeper than 64 levels")));
        let mut s = abc();
        s.add_relationship("a", "b", "x", 1.0, nested(MAX_DEPTH - 1))
            .unwrap();
        assert!(Store::from_json(&s.to_json().unwrap()).is_ok());
    }

    #[test]
    fn json_properties_naming_a_key_twice_are_refused() {
        let doc = |entity: &str, relationship: &str| {
            format!(
                r#"{{"format":"llm-agent-runtime/graph","version":1,"entities":[{{"id":"a","properties":{entity}}}],"relationships":[{{"from":"a","to":"a","kind":"k","weight":1.0,"properties":{relationship}}}]}}"#
            )
        };
        for (entity, relationship) in [
            (r#"{"x":1,"x":2}"#, "null"),
            (r#"{"x":[{"y":1,"y":1}]}"#, "null"),
            ("null", r#"{"w":{"z":0,"z":0}}"#),
        ] {
            let err = Store::from_json(&doc(entity, relationship)).err();
            assert!(
                err.is_some_and(|e| e.to_string().contains("appears twice")),
                "{entity} {relationship}"
            );
        }
        let fine = doc(r#"{"x":{"k":1},"y":{"k":2}}"#, r#"{"k":[{"k":1}]}"#);
        assert!(Store::from_json(&fine).is_ok());
    }

    #[test]
    fn json_round_trip_keeps_every_float_bit() {
        // Values the default (fast, not always exact) float parser reads one ulp off.
        let mut s = Store::default();
        s.add_entity("a", "", serde_json::json!({"w": 95.89784328838307}))
            .unwrap();
        s.add_relationship("a", "a", "k", 0.42451918914251396, Value::Null)
            .unwrap();
        let text = s.to_json().unwrap();
        let back = Store::from_json(&text).unwrap();
        assert_eq!(
            back.relationships()[0].weight.to_bits(),
            0.42451918914251396_f64.to_bits()
        );
        assert_eq!(back.to_json().unwrap(), text);
    }

    fn ids(s: &Store) -> Vec<String> {
        (0..s.entity_count() as u32)
            .map(|i| s.id_at(i).into_owned())
            .collect()
    }

    #[test]
    fn numbered_ids_are_found_without_hashing_and_survive_removals() {
        let mut s = Store::default();
        for id in ["0", "1", "2", "3", "x", "5", "4"] {
            s.add_entity(id, "", Value::Null).unwrap();
        }
        assert_eq!(s.id_index().numbered(), 4); // "x" ends the run; "5" and "4" are hashed
        for (id, index) in [("0", 0), ("3", 3), ("x", 4), ("5", 5), ("4", 6)] {
            assert_eq!(s.index_of(id).unwrap(), index, "{id}");
        }
        for id in ["00", "01", "+1", "-0", " 1", "1 ", "", "4294967296", "7"] {
            assert!(!s.contains(id), "{id:?}");
        }
        assert!(s.add_entity("2", "", Value::Null).is_err());
        assert!(s.add_entity("5", "", Value::Null).is_err());
        // Removing inside the run moves the last entity ("4") into the gap.
        s.remove_entity("1").unwrap();
        assert_eq!(ids(&s), ["0", "4", "2", "3", "x", "5"]);
        for (i, id) in ids(&s).iter().enumerate() {
            assert_eq!(s.index_of(id).unwrap(), i as u32, "{id}");
        }
        assert!(!s.contains("1"));
        s.add_entity("1", "", Value::Null).unwrap();
        assert_eq!(s.index_of("1").unwrap(), 6);
        // Removing the last entity of a pure run keeps it a run.
        let mut run = Store::default();
        run.add_numbered_entities(3).unwrap();
        run.remove_entity("2").unwrap();
        assert_eq!(run.id_index().numbered(), 2);
        run.add_entity("2", "", Value::Null).unwrap();
        assert_eq!(
            (run.id_index().numbered(), run.index_of("2").unwrap()),
            (3, 2)
        );
    }

    #[test]
    fn implied_entities_and_plain_relationships_read_as_stored_ones() {
        let mut bulk = Store::default();
        let k = bulk.intern("k");
        bulk.add_numbered_entities(4).unwrap();
        bulk.add_plain_relationships(k, Arc::new(vec![(0, 1, 1.0), (3, 3, 2.5), (2, 0, 4.0)]));
        let mut one_by_one = Store::default();
        for i in 0..4 {
            one_by_one
                .add_entity(i.to_string(), "", Value::Null)
                .unwrap();
        }
        for (a, b, w) in [("0", "1", 1.0), ("3", "3", 2.5), ("2", "0", 4.0)] {
            one_by_one
                .add_relationship(a, b, "k", w, Value::Null)
                .unwrap();
        }
        assert_eq!(bulk.to_json().unwrap(), one_by_one.to_json().unwrap());
        assert_eq!(
            bulk.entity(2).into_owned(),
            one_by_one.entity(2).into_owned()
        );
        assert_eq!(bulk.relationship_count(), 3);
        assert!(bulk.plain_edges().is_some());
        let sub = bulk.induced(&[2, 0]).unwrap();
        assert_eq!(ids(&sub), ["2", "0"]);
        assert_eq!(sub.relationship_count(), 1);
        // Every kind of change stores them first, and behaves as on stored ones.
        type Change = fn(&mut Store) -> CoreResult<()>;
        let changes: [Change; 5] = [
            |s| s.update_entity("1", Some("l".into()), None),
            |s| s.remove_entity("0").map(|_| ()),
            |s| s.add_relationship("1", "2", "j", 1.0, Value::Null),
            |s| s.remove_relationship("3", "3", None).map(|_| ()),
            |s| s.add_entity("4", "", Value::Null).map(|_| ()),
        ];
        for change in changes {
            let (mut a, mut b) = (bulk.clone(), one_by_one.clone());
            change(&mut a).unwrap();
            change(&mut b).unwrap();
            assert_eq!(a.to_json().unwrap(), b.to_json().unwrap());
            assert!(a.plain_edges().is_none() || a.relationships() == b.relationships());
        }
    }

    /// `induced` as it was: every relationship scanned, in order.
    fn naive_induced(s: &Store, keep: &[u32]) -> Vec<(u32, u32, String, f64)> {
        let position = |v: u32| keep.iter().position(|&k| k == v).map(|p| p as u32);
        s.relationships()
            .iter()
            .filter_map(|r| {
                let (f, t) = (position(r.from)?, position(r.to)?);
                Some((f, t, s.kind_name(r.kind).to_owned(), r.weight))
            })
            .collect()
    }

    fn listed(s: &Store) -> Vec<(u32, u32, String, f64)> {
        s.relationships()
            .iter()
            .map(|r| (r.from, r.to, s.kind_name(r.kind).to_owned(), r.weight))
            .collect()
    }

    #[test]
    fn out_links_kinds_and_induced_follow_every_change() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        for round in 0..40 {
            let mut s = Store::default();
            if round % 2 == 0 {
                let k = s.intern("plain");
                s.add_numbered_entities(5).unwrap();
                s.add_plain_relationships(k, Arc::new(vec![(0, 1, 1.0), (1, 1, 2.0), (4, 0, 3.0)]));
            }
            for step in 0..120 {
                let n = s.entity_count() as u64;
                let kind = format!("k{}", next(4));
                match next(9) {
                    0 | 1 => {
                        s.add_entity(format!("e{round}-{step}"), "", Value::Null)
                            .unwrap();
                    }
                    2..=4 if n > 0 => {
                        let (a, b) = (s.id_at(next(n) as u32), s.id_at(next(n) as u32));
                        let (a, b) = (a.into_owned(), b.into_owned());
                        s.add_relationship(&a, &b, &kind, step as f64, Value::Null)
                            .unwrap();
                    }
                    5 if n > 0 => {
                        let k = s.intern(&kind);
                        s.push_relationship(next(n) as u32, next(n) as u32, k, 0.5);
                    }
                    6 if n > 0 => {
                        let (a, b) = (s.id_at(next(n) as u32), s.id_at(next(n) as u32));
                        let (a, b) = (a.into_owned(), b.into_owned());
                        let only = (next(2) == 0).then_some(kind.as_str());
                        s.remove_relationship(&a, &b, only).unwrap();
                    }
                    7 if n > 0 => {
                        let id = s.id_at(next(n) as u32).into_owned();
                        s.remove_entity(&id).unwrap();
                    }
                    _ => {
                        // Reading builds the links, which later changes then keep up to date.
                        s.out_links().unwrap();
                    }
                }
                let n = s.entity_count() as u32;
                let links = s.out_links().unwrap();
                let snapshot = crate::graph::csr::Snapshot::build(&s).unwrap();
                for v in 0..n {
                    let expected: Vec<u32> = (0..s.relationship_count() as u32)
                        .filter(|&i| s.relationships()[i as usize].from == v)
                        .collect();
                    assert_eq!(links.of(v).collect::<Vec<_>>(), expected);
                    let reaching: Vec<u32> = (0..s.relationship_count() as u32)
                        .filter(|&i| s.relationships()[i as usize].to == v)
                        .collect();
                    assert_eq!(s.in_links().unwrap().of(v).collect::<Vec<_>>(), reaching);
                    // One hop from the links is the snapshot's walk of depth 1.
                    for directed in [true, false] {
                        let view = snapshot.view(directed).unwrap();
                        let walk = crate::graph::algo::bfs(view, n as usize, v, Some(1)).unwrap();
                        assert_eq!(s.first_hop(v, directed).unwrap(), walk);
                    }
                }
                let mut in_use: Vec<&str> = s.kinds_in_use().collect();
                in_use.sort_unstable();
                let mut expected: Vec<&str> = s
                    .relationships()
                    .iter()
                    .map(|r| s.kind_name(r.kind))
                    .collect();
                expected.sort_unstable();
                expected.dedup();
                assert_eq!(in_use, expected);
                // A few entities (rows walked) and many (every relationship scanned).
                for size in [1, 2, n as usize] {
                    let mut keep: Vec<u32> = (0..n).collect();
                    SplitMix::new(next(1 << 40)).shuffle(&mut keep);
                    keep.truncate(size);
                    let sub = s.induced(&keep).unwrap();
                    assert_eq!(listed(&sub), naive_induced(&s, &keep));
                    assert!(sub.kind_slots() <= s.kinds_in_use().count());
                }
                let copy = s.copy();
                assert_eq!(listed(&copy), listed(&s));
                assert_eq!(copy.kind_slots(), s.kinds_in_use().count());
            }
        }
    }

    #[test]
    fn kinds_no_relationship_uses_are_forgotten() {
        let mut s = abc();
        for i in 0..1000 {
            let kind = format!("observed-{i}");
            s.add_relationship("a", "b", &kind, 1.0, Value::Null)
                .unwrap();
            assert_eq!(s.remove_relationship("a", "b", Some(&kind)).unwrap(), 1);
        }
        // "x", "y" and one slot that every observed kind used in turn.
        assert_eq!(s.kind_slots(), 3);
        assert_eq!(s.kind_id("observed-999"), None);
        assert_eq!(
            s.update_relationship("a", "b", "observed-1", Some(2.0), None)
                .unwrap(),
            0
        );
        s.remove_entity("b").unwrap(); // the "y" relationship goes with it
        let mut kinds: Vec<&str> = s.kinds_in_use().collect();
        kinds.sort_unstable();
        assert_eq!(kinds, ["x"]);
        assert_eq!(s.copy().kind_slots(), 1);
        assert_eq!(s.induced(&[0]).unwrap().kind_slots(), 0);
        let sub = s.induced(&[1, 0]).unwrap();
        assert_eq!(sub.kind_slots(), 1);
        assert_eq!(sub.kind_name(sub.relationships()[0].kind), "x");
    }

    #[test]
    fn errors_name_the_problem() {
        let mut s = abc();
        assert!(s.add_entity("a", "", Value::Null).is_err());
        assert!(s
            .add_relationship("a", "zz", "k", 1.0, Value::Null)
            .is_err());
        assert!(s
            .add_relationship("a", "b", "k", f64::NAN, Value::Null)
            .is_err());
        assert_eq!(s.remove_relationship("a", "b", Some("nope")).unwrap(), 0);
        assert_eq!(s.remove_relationship("a", "b", None).unwrap(), 1);
    }
}
