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
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::alloc::{filled, reserve};
use crate::errors::{CoreError, CoreResult};

/// JSON-compatible properties; none (null) costs one pointer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(from = "Value", into = "Value")]
pub struct Properties(Option<Box<Value>>);

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    /// Unique id chosen by the caller.
    pub id: CompactString,
    /// Free-form type label (e.g. "person").
    #[serde(default)]
    pub label: CompactString,
    /// JSON-compatible properties (an object, or null when none).
    #[serde(default)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    #[serde(default)]
    pub properties: Value,
}

/// The JSON document of a whole graph.
#[derive(Debug, Serialize, Deserialize)]
struct GraphDocument {
    format: String,
    version: u32,
    entities: Vec<Entity>,
    relationships: Vec<RelationshipRecord>,
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

    /// Points `id` at `index` (the next index, one past every entity) unless `id` is taken;
    /// returns whether it was free. One hash at most, none while the ids are the indices.
    fn insert(&mut self, ids: &(impl IdList + ?Sized), id: &str, index: u32) -> bool {
        let number = decimal(id);
        // Every entity so far is numbered (none is hashed), and this one continues the run.
        if index == self.numbered && number == Some(index) {
            self.numbered += 1;
            return true;
        }
        if number.is_some_and(|i| i < self.numbered) {
            return false;
        }
        let entry = self.table.entry(
            hash_id(id),
            |&i| ids.id_at(i) == id,
            |&i| hash_id(ids.id_at(i)),
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(_) => false,
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(index);
                true
            }
        }
    }

    /// Forgets entity `removed` ahead of `entities.swap_remove(removed)`, and points the id
    /// of the last entity (which moves into the gap) at `removed`.
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
    kinds: Vec<String>,
    kind_index: FxHashMap<String, u32>,
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
        if let Some(&k) = self.kind_index.get(kind) {
            return k;
        }
        let k = self.kinds.len() as u32;
        self.kinds.push(kind.to_owned());
        self.kind_index.insert(kind.to_owned(), k);
        k
    }

    /// The name of an interned kind.
    pub fn kind_name(&self, kind: u32) -> &str {
        &self.kinds[kind as usize]
    }

    /// The interned id of `kind`, if any relationship ever used it.
    pub fn kind_id(&self, kind: &str) -> Option<u32> {
        self.kind_index.get(kind).copied()
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
        let id = id.into();
        if !self.index.insert(self.entities.as_slice(), &id, index) {
            return Err(CoreError::Graph(format!("entity {id:?} already exists")));
        }
        self.entities.push(Entity {
            id,
            label: label.into(),
            properties: properties.into(),
        });
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

    /// Removes an entity and every relationship touching it. O(entities + relationships).
    pub fn remove_entity(&mut self, id: &str) -> CoreResult<Entity> {
        let removed = self.index_of(id)?;
        self.store_entities()?;
        self.store_relationships();
        self.relationships
            .retain(|r| r.from != removed && r.to != removed);
        let last = (self.entities.len() - 1) as u32;
        self.index.swap_remove(&self.entities, removed);
        let entity = self.entities.swap_remove(removed as usize);
        if removed != last {
            // The last entity moved into the freed slot: re-point its relationships.
            for r in &mut self.relationships {
                if r.from == last {
                    r.from = removed;
                }
                if r.to == last {
                    r.to = removed;
                }
            }
        }
        Ok(entity)
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
        self.relationships.push(Relationship {
            from,
            to,
            kind,
            weight,
            properties: properties.into(),
        });
        Ok(())
    }

    /// Adds a relationship by dense indices (bulk loading; indices already checked).
    pub fn push_relationship(&mut self, from: u32, to: u32, kind: u32, weight: f64) {
        self.store_relationships();
        self.relationships
            .push(Relationship::new(from, to, kind, weight));
    }

    /// Adds relationships whose indices and kinds are already checked (bulk loading).
    pub fn append_relationships(&mut self, mut relationships: Vec<Relationship>) {
        self.store_relationships();
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
        let mut count = 0;
        self.store_relationships();
        for r in &mut self.relationships {
            if r.from == from && r.to == to && r.kind == kind {
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
        self.store_relationships();
        let before = self.relationships.len();
        self.relationships
            .retain(|r| !(r.from == from && r.to == to && kind.is_none_or(|k| r.kind == k)));
        Ok(before - self.relationships.len())
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

    /// A new store with the entities whose indices are `keep` (in that order) and the
    /// relationships among them.
    ///
    /// # Errors
    /// [`CoreError::Graph`] when its table of new indices (one per entity) does not fit in
    /// memory.
    pub fn induced(&self, keep: &[u32]) -> CoreResult<Store> {
        let mut out = Store {
            kinds: self.kinds.clone(),
            kind_index: self.kind_index.clone(),
            ..Store::default()
        };
        let mut new_index = filled(self.entity_count(), u32::MAX, "the subgraph's index table")?;
        for (position, &old) in keep.iter().enumerate() {
            new_index[old as usize] = position as u32;
            let entity = self.entity(old).into_owned();
            out.index
                .insert(out.entities.as_slice(), &entity.id, position as u32);
            out.entities.push(entity);
        }
        for r in self.relationships() {
            let (f, t) = (new_index[r.from as usize], new_index[r.to as usize]);
            if f != u32::MAX && t != u32::MAX {
                out.relationships.push(Relationship {
                    from: f,
                    to: t,
                    ..r.clone()
                });
            }
        }
        Ok(out)
    }

    /// The whole graph as a versioned JSON document.
    pub fn to_json(&self) -> CoreResult<String> {
        let doc = GraphDocument {
            format: FORMAT.into(),
            version: VERSION,
            entities: (0..self.entity_count() as u32)
                .map(|i| self.entity(i).into_owned())
                .collect(),
            relationships: self
                .relationships()
                .iter()
                .map(|r| self.record(r))
                .collect(),
        };
        serde_json::to_string(&doc).map_err(|e| CoreError::Graph(format!("graph to JSON: {e}")))
    }

    /// Rebuilds a graph from `to_json` output; bad documents are a `GraphError`.
    pub fn from_json(text: &str) -> CoreResult<Store> {
        let doc: GraphDocument = serde_json::from_str(text)
            .map_err(|e| CoreError::Graph(format!("not a graph document: {e}")))?;
        check_integers_fit(text)?;
        if doc.format != FORMAT {
            return Err(CoreError::Graph(format!(
                "not a graph document (format {:?})",
                doc.format
            )));
        }
        if doc.version > VERSION {
            return Err(CoreError::Graph(format!(
                "graph document version {} is newer than this library reads ({VERSION})",
                doc.version
            )));
        }
        let mut store = Store::default();
        for e in doc.entities {
            let properties: Value = e.properties.into();
            object_or_null(&properties, || format!("entity {:?}", e.id))?;
            store.add_entity(e.id, e.label, properties)?;
        }
        for r in doc.relationships {
            object_or_null(&r.properties, || {
                format!("relationship {:?} -> {:?}", r.from, r.to)
            })?;
            store.add_relationship(&r.from, &r.to, &r.kind, r.weight, r.properties)?;
        }
        Ok(store)
    }
}

/// Refuses a document with an integer literal a `Value` cannot hold (beyond 64 bits, or
/// `-0`), as `add_entity` refuses such a property: the JSON parser would read it as the
/// nearest float, silently changing it. (`to_json` never writes one.)
fn check_integers_fit(text: &str) -> CoreResult<()> {
    let wide = crate::react::wide_integers(text)
        .and_then(|literals| literals.into_iter().flatten().next());
    match wide {
        Some(literal) => Err(CoreError::Graph(format!(
            "not a graph document: the integer {literal} does not fit in 64 bits"
        ))),
        None => Ok(()),
    }
}

/// Properties read from a document must be what the API accepts: an object, or null.
fn object_or_null(properties: &Value, whose: impl FnOnce() -> String) -> CoreResult<()> {
    if properties.is_object() || properties.is_null() {
        Ok(())
    } else {
        Err(CoreError::Graph(format!(
            "not a graph document: the properties of {} are not an object",
            whose()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
