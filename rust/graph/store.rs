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

use std::hash::BuildHasher;

use compact_str::{CompactString, ToCompactString};
use rustc_hash::{FxBuildHasher, FxHashMap};
use serde::{Deserialize, Serialize};
use serde_json::Value;

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

/// Id -> dense index. Only the indices are stored (the ids are read from the entities), so
/// the table takes 4 bytes a slot instead of a copy of every id.
#[derive(Debug, Default, Clone)]
struct IdIndex(hashbrown::HashTable<u32>);

fn hash_id(id: &str) -> u64 {
    FxBuildHasher.hash_one(id)
}

impl IdIndex {
    fn get(&self, entities: &[Entity], id: &str) -> Option<u32> {
        let found = self.0.find(hash_id(id), |&i| entities[i as usize].id == id);
        found.copied()
    }

    fn reserve(&mut self, entities: &[Entity], additional: usize) {
        self.0
            .reserve(additional, |&i| hash_id(&entities[i as usize].id));
    }

    /// Points `id` at `index` unless `id` is taken; returns whether it was free. One hash.
    fn insert(&mut self, entities: &[Entity], id: &str, index: u32) -> bool {
        let entry = self.0.entry(
            hash_id(id),
            |&i| entities[i as usize].id == id,
            |&i| hash_id(&entities[i as usize].id),
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(_) => false,
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(index);
                true
            }
        }
    }

    /// Re-points `id` from `old` to `new` (`None`: drops it).
    fn repoint(&mut self, id: &str, old: u32, new: Option<u32>) {
        if let Ok(entry) = self.0.find_entry(hash_id(id), |&i| i == old) {
            match new {
                Some(new) => *entry.into_mut() = new,
                None => {
                    entry.remove();
                }
            }
        }
    }
}

/// Entities and relationships of a directed multigraph.
#[derive(Debug, Default, Clone)]
pub struct Store {
    entities: Vec<Entity>,
    index: IdIndex,
    relationships: Vec<Relationship>,
    kinds: Vec<String>,
    kind_index: FxHashMap<String, u32>,
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
        self.entities.len()
    }

    /// Number of relationships.
    pub fn relationship_count(&self) -> usize {
        self.relationships.len()
    }

    /// Entities, by dense index.
    pub fn entities(&self) -> &[Entity] {
        &self.entities
    }

    /// Relationships, in insertion order.
    pub fn relationships(&self) -> &[Relationship] {
        &self.relationships
    }

    /// Dense index of `id`, or a `GraphError` naming it.
    pub fn index_of(&self, id: &str) -> CoreResult<u32> {
        self.index
            .get(&self.entities, id)
            .ok_or_else(|| CoreError::Graph(format!("unknown entity {id:?}")))
    }

    /// Reserves room for `entities` more entities and `relationships` more relationships.
    pub fn reserve(&mut self, entities: usize, relationships: usize) {
        self.entities.reserve(entities);
        self.index.reserve(&self.entities, entities);
        self.relationships.reserve(relationships);
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
        self.index.get(&self.entities, id).is_some()
    }

    /// Id of the entity at `index`.
    pub fn id_at(&self, index: u32) -> &str {
        &self.entities[index as usize].id
    }

    /// Adds an entity; an id already present is an error.
    pub fn add_entity(
        &mut self,
        id: impl Into<CompactString>,
        label: impl Into<CompactString>,
        properties: Value,
    ) -> CoreResult<u32> {
        let index = u32::try_from(self.entities.len())
            .map_err(|_| CoreError::Graph("too many entities (limit 2^32)".into()))?;
        let id = id.into();
        if !self.index.insert(&self.entities, &id, index) {
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
        if let Some(index) = self.index.get(&self.entities, id) {
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
        self.relationships
            .retain(|r| r.from != removed && r.to != removed);
        let last = (self.entities.len() - 1) as u32;
        let entity = self.entities.swap_remove(removed as usize);
        self.index.repoint(&entity.id, removed, None);
        if removed != last {
            // The last entity moved into the freed slot: re-point it and its relationships.
            let moved = &self.entities[removed as usize].id;
            self.index.repoint(moved, last, Some(removed));
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
        self.relationships
            .push(Relationship::new(from, to, kind, weight));
    }

    /// Adds relationships whose indices and kinds are already checked (bulk loading).
    pub fn append_relationships(&mut self, mut relationships: Vec<Relationship>) {
        if self.relationships.is_empty() {
            self.relationships = relationships; // no copy
        } else {
            self.relationships.append(&mut relationships);
        }
    }

    /// Adds entities "0", "1", ... "n-1" (bulk loading from integer edges).
    ///
    /// # Errors
    /// [`CoreError::Graph`] when one of those ids exists already.
    pub fn add_numbered_entities(&mut self, n: u32) -> CoreResult<()> {
        self.reserve(n as usize, 0);
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
        let before = self.relationships.len();
        self.relationships
            .retain(|r| !(r.from == from && r.to == to && kind.is_none_or(|k| r.kind == k)));
        Ok(before - self.relationships.len())
    }

    /// Relationship with endpoints as ids.
    pub fn record(&self, r: &Relationship) -> RelationshipRecord {
        RelationshipRecord {
            from: self.id_at(r.from).to_owned(),
            to: self.id_at(r.to).to_owned(),
            kind: self.kind_name(r.kind).to_owned(),
            weight: r.weight,
            properties: r.properties.value().clone(),
        }
    }

    /// A new store with the entities whose indices are `keep` (in that order) and the
    /// relationships among them.
    pub fn induced(&self, keep: &[u32]) -> Store {
        let mut out = Store {
            kinds: self.kinds.clone(),
            kind_index: self.kind_index.clone(),
            ..Store::default()
        };
        let mut new_index = vec![u32::MAX; self.entities.len()];
        for (position, &old) in keep.iter().enumerate() {
            new_index[old as usize] = position as u32;
            let entity = self.entities[old as usize].clone();
            out.index.insert(&out.entities, &entity.id, position as u32);
            out.entities.push(entity);
        }
        for r in &self.relationships {
            let (f, t) = (new_index[r.from as usize], new_index[r.to as usize]);
            if f != u32::MAX && t != u32::MAX {
                out.relationships.push(Relationship {
                    from: f,
                    to: t,
                    ..r.clone()
                });
            }
        }
        out
    }

    /// The whole graph as a versioned JSON document.
    pub fn to_json(&self) -> CoreResult<String> {
        let doc = GraphDocument {
            format: FORMAT.into(),
            version: VERSION,
            entities: self.entities.clone(),
            relationships: self.relationships.iter().map(|r| self.record(r)).collect(),
        };
        serde_json::to_string(&doc).map_err(|e| CoreError::Graph(format!("graph to JSON: {e}")))
    }

    /// Rebuilds a graph from `to_json` output; bad documents are a `GraphError`.
    pub fn from_json(text: &str) -> CoreResult<Store> {
        let doc: GraphDocument = serde_json::from_str(text)
            .map_err(|e| CoreError::Graph(format!("not a graph document: {e}")))?;
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
        assert_eq!(back.entities(), s.entities());
        assert_eq!(back.relationships(), s.relationships());
        assert!(Store::from_json("{}").is_err());
        let future = s
            .to_json()
            .unwrap()
            .replace("\"version\":1", "\"version\":9");
        assert!(Store::from_json(&future).is_err());
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
