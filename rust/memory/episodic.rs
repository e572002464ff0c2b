//! Episodic memory: per-agent episodes ranked by importance, decay, recency and frequency.
//!
//! Scores, with `age_h` the hours since an episode was created:
//!
//! * decay (optional): `importance * 0.5^(age_h / half_life_hours)`, else `importance`;
//! * importance policy: `score = decayed importance`;
//! * hybrid policy: `score = decayed importance + recency_weight / (1 + age_h)
//!   + frequency_weight * recall_count / (1 + recall_count)`;
//! * with a query embedding `q` (recall by similarity): `score + similarity_weight * cos(q, e)`,
//!   where `cos` is the cosine between the query and the episode's embedding, and 0 for an
//!   episode without one.
//!
//! Equal scores keep insertion order: the older episode ranks first (a stable sort by
//! descending score).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use crate::errors::{CoreError, CoreResult};

/// Up to this many ids, [`Episodes::mark_recalled`] tells a repeated id by looking back
/// along the list (at most `FEW_IDS**2 / 2` comparisons) rather than sorting a copy.
const FEW_IDS: usize = 16;

/// One remembered event of an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// Store-wide unique id, increasing with insertion.
    pub id: u64,
    /// The agent it belongs to.
    pub agent_id: String,
    /// What happened.
    pub content: String,
    /// How much it matters, in [0, 1].
    pub importance: f64,
    /// Clock time (seconds) it was added.
    pub created_at: f64,
    /// Clock time (seconds) it was last recalled, if ever.
    pub last_recalled_at: Option<f64>,
    /// Times it has been recalled.
    pub recall_count: u64,
    /// Its embedding, L2-normalized (absent from older exports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
}

/// How importance fades with age.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Decay {
    /// Importance halves every `half_life_hours`.
    Exponential {
        /// Hours for importance to halve.
        half_life_hours: f64,
    },
}

/// How recalled episodes are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Recall {
    /// By (decayed) importance.
    Importance,
    /// Importance plus weighted recency and recall frequency.
    Hybrid {
        /// Weight of `1 / (1 + age_hours)`.
        recency_weight: f64,
        /// Weight of `recall_count / (1 + recall_count)`.
        frequency_weight: f64,
    },
}

/// The store's contents and settings (what JSON export carries).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Episodes {
    /// Optional decay of importance.
    pub decay: Option<Decay>,
    /// Ranking policy.
    pub recall: Recall,
    /// Most episodes kept per agent (adding beyond it evicts the lowest-importance older
    /// episode; never the one being added).
    pub per_agent_capacity: Option<usize>,
    /// Next episode id.
    pub next_id: u64,
    /// Episodes per agent, in insertion order (an export naming an agent twice is refused,
    /// rather than one of its two lists dropped). Private: an agent's list may hold evicted
    /// episodes not yet removed, which only [`Agent`]'s methods tell apart.
    #[serde(deserialize_with = "agents_once")]
    by_agent: BTreeMap<String, Agent>,
    /// Weight of the query similarity in recall scores.
    #[serde(default = "default_similarity_weight")]
    pub similarity_weight: f64,
    /// Length shared by every embedding, fixed by the first one; none again once no
    /// episode has one (the store is cleared, say: new embeddings may then have another).
    #[serde(default)]
    pub embedding_dim: Option<usize>,
    /// How many live episodes have an embedding: `embedding_dim` goes when it reaches 0.
    /// Kept by `add` and `clear`, counted again by `validated` (an export does not carry it).
    #[serde(skip)]
    embedded: usize,
}

/// One agent's episodes, with what makes eviction at capacity O(log n).
///
/// Evicting by removing from the `Vec` moved every later episode (a scan found the victim
/// too): O(n) per add at capacity. Instead an ordered index of the older episodes gives the
/// victim, which is only marked dead (its content and embedding freed) and removed with the
/// others in one pass once the dead outnumber the live: O(log n) amortized per add.
///
/// Reads go through [`Agent::live`], [`Agent::len`], [`Agent::get_mut`] or
/// [`Agent::compacted`] (the list itself is read only right after the latter), so no dead
/// episode is ever seen, exported or counted. Serialized as the plain list of its live
/// episodes; the eviction state is not, and is rebuilt when first needed.
#[derive(Debug, Clone, Default)]
struct Agent {
    /// In insertion order (ids increase), dead ones included until compacted.
    episodes: Vec<Episode>,
    /// Ids of evicted episodes still in `episodes`.
    dead: BTreeSet<u64>,
    /// The live episodes by eviction order, `(importance_key(importance), id)`: first goes
    /// first. Built at the agent's first eviction (`None` before: adds below capacity, or
    /// without one, pay nothing), then kept in step with every add.
    index: Option<BTreeSet<(u64, u64)>>,
}

/// `importance` as a `u64` ordered as `f64::total_cmp` orders importances (the order the
/// eviction rule has always used): the sign bit flipped for positives, every bit for
/// negatives. Importances are in [0, 1] with -0.0 made 0.0, where the raw bits would
/// already be in order, but this way the index cannot disagree with `total_cmp` whatever
/// it is given.
fn importance_key(importance: f64) -> u64 {
    let bits = importance.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

impl From<Vec<Episode>> for Agent {
    fn from(episodes: Vec<Episode>) -> Self {
        Self {
            episodes,
            dead: BTreeSet::new(),
            index: None,
        }
    }
}

impl Serialize for Agent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.live())
    }
}

impl<'de> Deserialize<'de> for Agent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<Episode>::deserialize(deserializer).map(Self::from)
    }
}

impl Agent {
    /// Live episodes.
    fn len(&self) -> usize {
        self.episodes.len().saturating_sub(self.dead.len())
    }

    /// The live episodes in insertion order.
    fn live(&self) -> impl Iterator<Item = &Episode> {
        self.episodes
            .iter()
            .filter(|e| self.dead.is_empty() || !self.dead.contains(&e.id))
    }

    /// The live episodes in insertion order, the dead removed first (one pass, when any).
    fn compacted(&mut self) -> &mut [Episode] {
        let dead: Vec<u64> = std::mem::take(&mut self.dead).into_iter().collect();
        if let [id] = dead[..] {
            // One eviction since the last read (adds and reads taking turns): one move of
            // the later episodes, cheaper than `retain`'s one by one.
            if let Ok(at) = self.episodes.binary_search_by_key(&id, |e| e.id) {
                self.episodes.remove(at);
            }
        } else if !dead.is_empty() {
            // Both in id order: one walk along the dead ids as the list is kept.
            let mut next = 0;
            self.episodes.retain(|e| {
                while dead.get(next).is_some_and(|&d| d < e.id) {
                    next += 1;
                }
                let keep = dead.get(next) != Some(&e.id);
                next += usize::from(!keep);
                keep
            });
        }
        &mut self.episodes
    }

    /// The live episode with this id.
    fn get_mut(&mut self, id: u64) -> Option<&mut Episode> {
        if self.dead.contains(&id) {
            return None;
        }
        let at = self.episodes.binary_search_by_key(&id, |e| e.id).ok()?;
        self.episodes.get_mut(at)
    }

    /// Appends `e` (its id above every other); over `capacity`, evicts the lowest-importance
    /// older episode (the oldest on ties). Returns whether the evicted one had an embedding.
    fn push(&mut self, e: Episode, capacity: Option<usize>) -> bool {
        let full = capacity.is_some_and(|cap| self.len() >= cap);
        if full && self.index.is_none() {
            // Once per agent (and after an import): later adds keep it up to date.
            self.index = Some(
                self.live()
                    .map(|e| (importance_key(e.importance), e.id))
                    .collect(),
            );
        }
        let victim = match &mut self.index {
            Some(index) => {
                // The victim is taken before the new episode is indexed: never the new one.
                let victim = if full { index.pop_first() } else { None };
                index.insert((importance_key(e.importance), e.id));
                victim
            }
            None => None,
        };
        self.episodes.push(e);
        let Some((_, id)) = victim else {
            return false;
        };
        let had_embedding = self.get_mut(id).is_some_and(|v| {
            // Freed now: a dead episode may wait a while for the compaction.
            v.content = String::new();
            v.agent_id = String::new();
            v.embedding.take().is_some()
        });
        self.dead.insert(id);
        if self.dead.len() > self.len() {
            self.compacted();
        }
        had_embedding
    }
}

/// Reads `by_agent`, refusing an agent id given twice: a JSON object keeps the last of
/// duplicate keys, which would drop the episodes listed under the first without a word.
fn agents_once<'de, D>(deserializer: D) -> Result<BTreeMap<String, Agent>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Agents;

    impl<'de> serde::de::Visitor<'de> for Agents {
        type Value = BTreeMap<String, Agent>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map of agent ids to lists of episodes")
        }

        fn visit_map<A>(self, mut map: A) -> Result<Self::Value, A::Error>
        where
            A: serde::de::MapAccess<'de>,
        {
            let mut agents = BTreeMap::new();
            while let Some((agent_id, episodes)) = map.next_entry::<String, Agent>()? {
                if agents.contains_key(&agent_id) {
                    return Err(serde::de::Error::custom(format!(
                        "agent {agent_id:?} is listed twice in by_agent"
                    )));
                }
                agents.insert(agent_id, episodes);
            }
            Ok(agents)
        }
    }

    deserializer.deserialize_map(Agents)
}

fn default_similarity_weight() -> f64 {
    1.0
}

/// `v` scaled to unit length.
///
/// # Errors
/// [`CoreError::Memory`] when `v` has NaN/inf values or is zero.
pub fn normalized(v: &[f32], what: &str) -> CoreResult<Vec<f32>> {
    let mut unit = v.to_vec();
    crate::vector::normalize(&mut unit, what)?;
    Ok(unit)
}

/// Scales an exported embedding to unit length, as `add` stores embeddings; refuses one that
/// is not finite or zero.
///
/// A vector already within float32 rounding of unit length (any that `add` stored) is kept
/// bit for bit, so an export reads back exactly as it was written.
fn unit_length(v: &mut [f32], what: &str) -> CoreResult<()> {
    let norm_sq: f64 = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum();
    // NaN fails this test too, and `normalize` refuses it.
    if (norm_sq - 1.0).abs() <= 1e-6 {
        return Ok(());
    }
    crate::vector::normalize(v, what)
}

/// Validates a decay half-life.
pub fn exponential(half_life_hours: f64) -> CoreResult<Decay> {
    if !(half_life_hours.is_finite() && half_life_hours > 0.0) {
        return Err(CoreError::Memory(format!(
            "half_life_hours must be a positive number, got {half_life_hours}"
        )));
    }
    Ok(Decay::Exponential { half_life_hours })
}

/// Validates hybrid weights.
///
/// # Errors
/// [`CoreError::Memory`] when a weight is negative or not finite.
pub fn hybrid(recency_weight: f64, frequency_weight: f64) -> CoreResult<Recall> {
    for (name, w) in [
        ("recency_weight", recency_weight),
        ("frequency_weight", frequency_weight),
    ] {
        if !(w.is_finite() && w >= 0.0) {
            return Err(CoreError::Memory(format!(
                "{name} must be >= 0 and finite, got {w}"
            )));
        }
    }
    Ok(Recall::Hybrid {
        recency_weight,
        frequency_weight,
    })
}

/// Checks that an importance is in [0, 1] (NaN is not); returns it with -0.0 made 0.0.
///
/// Scores are ordered with `total_cmp`, which puts -0.0 below 0.0: an episode stored with
/// -0.0 would rank (and be evicted) as less important than an equal one.
pub(crate) fn checked_importance(importance: f64) -> CoreResult<f64> {
    if (0.0..=1.0).contains(&importance) {
        Ok(importance + 0.0)
    } else {
        Err(CoreError::Memory(format!(
            "importance must be in [0, 1], got {importance}"
        )))
    }
}

/// Counts a recall of `e` at `now`.
fn recalled(e: &mut Episode, now: f64) {
    e.recall_count = e.recall_count.saturating_add(1);
    e.last_recalled_at = Some(now);
}

/// Checks that a clock time is finite: a NaN or infinite time would poison every score and
/// export as `null`, which no store can read back.
fn check_time(now: f64) -> CoreResult<()> {
    if now.is_finite() {
        Ok(())
    } else {
        Err(CoreError::Memory(format!(
            "the clock returned {now}: times must be finite numbers of seconds"
        )))
    }
}

impl Episodes {
    /// An empty store.
    ///
    /// # Errors
    /// [`CoreError::Memory`] when `per_agent_capacity` is 0.
    pub fn new(
        decay: Option<Decay>,
        recall: Recall,
        per_agent_capacity: Option<usize>,
    ) -> CoreResult<Self> {
        if per_agent_capacity == Some(0) {
            return Err(CoreError::Memory(
                "per_agent_capacity must be at least 1".into(),
            ));
        }
        Ok(Self {
            decay,
            recall,
            per_agent_capacity,
            next_id: 0,
            by_agent: BTreeMap::new(),
            similarity_weight: default_similarity_weight(),
            embedding_dim: None,
            embedded: 0,
        })
    }

    /// Sets the weight of query similarity in recall scores.
    ///
    /// # Errors
    /// [`CoreError::Memory`] when `weight` is negative or not finite.
    pub fn with_similarity_weight(mut self, weight: f64) -> CoreResult<Self> {
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(CoreError::Memory(format!(
                "similarity_weight must be >= 0 and finite, got {weight}"
            )));
        }
        self.similarity_weight = weight;
        Ok(self)
    }

    /// Checks a store read from an export against everything the constructor and `add`
    /// enforce, so a hand-edited or foreign document cannot make a store that scores NaN,
    /// never stores, or compares vectors of different lengths. An export from before
    /// `embedding_dim` existed gets it from its embeddings.
    ///
    /// An agent listed with no episodes is dropped: the store never holds one (an agent's
    /// last episode goes only with `clear`, which forgets the agent), so it never exports
    /// one, and counts of agents agree with `agents_with_episodes`.
    ///
    /// # Errors
    /// [`CoreError::Memory`] naming the first problem: `per_agent_capacity` 0, an
    /// `embedding_dim` of 0 (no embedding has length 0), a half-life that is not a positive
    /// number, a negative or non-finite weight, an agent over its capacity, an episode filed
    /// under another agent, ids not increasing within an agent, not below `next_id` or shared
    /// by two episodes, importance outside [0, 1], a non-finite time, or an embedding that
    /// is not finite, zero, or of another length than the others (or `embedding_dim`).
    /// Other embeddings are scaled to unit length, as `add` stores them.
    pub fn validated(mut self) -> CoreResult<Self> {
        if self.per_agent_capacity == Some(0) {
            return Err(CoreError::Memory(
                "per_agent_capacity must be at least 1".into(),
            ));
        }
        if self.embedding_dim == Some(0) {
            // A store fixed at length 0 would refuse every embedding, as `add` refuses an
            // empty one: the dimension comes from the first embedding, which has one.
            return Err(CoreError::Memory(
                "embedding_dim must be at least 1 (or absent), got 0".into(),
            ));
        }
        self.by_agent.retain(|_, agent| agent.len() > 0);
        if let Some(Decay::Exponential { half_life_hours }) = self.decay {
            exponential(half_life_hours)?;
        }
        if let Recall::Hybrid {
            recency_weight,
            frequency_weight,
        } = self.recall
        {
            hybrid(recency_weight, frequency_weight)?;
        }
        let weight = self.similarity_weight;
        self = self.with_similarity_weight(weight)?;
        // The embeddings' length is theirs: an export whose episodes have none (it was
        // cleared) names none, whatever it says.
        let declared = self.embedding_dim;
        let mut dim = None;
        let mut embedded = 0;
        let mut ids = HashSet::new();
        for (agent_id, agent) in &mut self.by_agent {
            // Importances may change below (-0.0 made 0.0): the index is rebuilt from them.
            agent.index = None;
            let episodes = agent.compacted();
            if let Some(cap) = self.per_agent_capacity {
                if episodes.len() > cap {
                    return Err(CoreError::Memory(format!(
                        "agent {agent_id:?} has {} episodes, over per_agent_capacity {cap}",
                        episodes.len()
                    )));
                }
            }
            let mut previous_id: Option<u64> = None;
            for e in episodes.iter_mut() {
                let id = e.id;
                let bad = |what: String| {
                    CoreError::Memory(format!("episode {id} of agent {agent_id:?}: {what}"))
                };
                if e.agent_id != *agent_id {
                    return Err(bad(format!("filed under another agent ({:?})", e.agent_id)));
                }
                // An agent's episodes are kept in insertion order, so their ids increase.
                if id >= self.next_id || previous_id.is_some_and(|p| p >= id) {
                    return Err(bad(format!(
                        "ids must increase within an agent and stay below next_id ({})",
                        self.next_id
                    )));
                }
                if !ids.insert(id) {
                    return Err(bad("its id is another episode's: ids are store-wide".into()));
                }
                previous_id = Some(id);
                e.importance =
                    checked_importance(e.importance).map_err(|err| bad(err.to_string()))?;
                check_time(e.created_at).map_err(|err| bad(err.to_string()))?;
                if let Some(t) = e.last_recalled_at {
                    check_time(t).map_err(|err| bad(err.to_string()))?;
                }
                if let Some(v) = &mut e.embedding {
                    if v.iter().any(|x| !x.is_finite()) {
                        return Err(bad(format!("embedding {}", crate::vector::NOT_FINITE)));
                    }
                    match dim.or(declared) {
                        Some(d) if d != v.len() => {
                            return Err(bad(format!(
                                "embedding has dimension {}, the store's embeddings have {d}",
                                v.len()
                            )));
                        }
                        _ => dim = Some(v.len()),
                    }
                    unit_length(v, "embedding").map_err(|err| bad(err.to_string()))?;
                    embedded += 1;
                }
            }
        }
        self.embedding_dim = dim;
        self.embedded = embedded;
        Ok(self)
    }

    /// Normalizes `v` and checks its length against the store's embeddings.
    fn check_embedding(&self, v: &[f32], what: &str) -> CoreResult<Vec<f32>> {
        if let Some(dim) = self.embedding_dim {
            if v.len() != dim {
                return Err(CoreError::Memory(format!(
                    "{what} has dimension {}, the store's embeddings have {dim}",
                    v.len()
                )));
            }
        }
        normalized(v, what)
    }

    /// Adds an episode (with an optional embedding) and returns its id, which is always
    /// stored: when the agent goes over capacity, the lowest-importance episode among the
    /// *older* ones (the oldest on ties) is evicted, whatever the new one's importance.
    ///
    /// # Errors
    /// [`CoreError::Memory`] when `importance` is outside [0, 1], `now` is not finite, the
    /// embedding is not finite, zero, or of another length than the store's embeddings, or
    /// the ids are exhausted (`next_id` is `u64::MAX`).
    pub fn add(
        &mut self,
        agent_id: &str,
        content: &str,
        importance: f64,
        now: f64,
        embedding: Option<&[f32]>,
    ) -> CoreResult<u64> {
        let importance = checked_importance(importance)?;
        check_time(now)?;
        // Checked before anything changes: a wrapped id would repeat an existing one.
        let next_id = self.next_id.checked_add(1).ok_or_else(|| {
            CoreError::Memory(format!(
                "episode ids are exhausted (next_id is {}, the largest)",
                self.next_id
            ))
        })?;
        let embedding = embedding
            .map(|v| self.check_embedding(v, "embedding"))
            .transpose()?;
        if let Some(v) = &embedding {
            self.embedding_dim = Some(v.len());
            self.embedded += 1;
        }
        let id = self.next_id;
        self.next_id = next_id;
        let agent = self.by_agent.entry(agent_id.to_owned()).or_default();
        let evicted_embedding = agent.push(
            Episode {
                id,
                agent_id: agent_id.to_owned(),
                content: content.to_owned(),
                importance,
                created_at: now,
                last_recalled_at: None,
                recall_count: 0,
                embedding,
            },
            self.per_agent_capacity,
        );
        if evicted_embedding {
            self.forget_embeddings(1);
        }
        Ok(id)
    }

    /// Counts `gone` embedded episodes out; forgets the embeddings' length once no episode
    /// has an embedding (new ones may then have another).
    fn forget_embeddings(&mut self, gone: usize) {
        self.embedded = self.embedded.saturating_sub(gone);
        if self.embedded == 0 {
            self.embedding_dim = None;
        }
    }

    /// The ranking score of `e` at time `now`.
    pub fn score(&self, e: &Episode, now: f64) -> f64 {
        let age_h = ((now - e.created_at) / 3600.0).max(0.0);
        let importance = match self.decay {
            Some(Decay::Exponential { half_life_hours }) => {
                e.importance * 0.5_f64.powf(age_h / half_life_hours)
            }
            None => e.importance,
        };
        match self.recall {
            Recall::Importance => importance,
            Recall::Hybrid {
                recency_weight,
                frequency_weight,
            } => {
                let n = e.recall_count as f64;
                importance + recency_weight / (1.0 + age_h) + frequency_weight * n / (1.0 + n)
            }
        }
    }

    /// The score of `e` blended with its similarity to the normalized `query`.
    pub fn blended_score(&self, e: &Episode, now: f64, query: Option<&[f32]>) -> f64 {
        let base = self.score(e, now);
        match (query, &e.embedding) {
            (Some(q), Some(v)) => {
                let cos: f32 = q.iter().zip(v).map(|(a, b)| a * b).sum();
                base + self.similarity_weight * f64::from(cos)
            }
            _ => base,
        }
    }

    /// The agent's top `limit` episodes at time `now`, best first (equal scores in insertion
    /// order, oldest first), blending in similarity to `query` when given; with `counted`,
    /// they are recalled (see [`Episodes::mark_recalled`]).
    ///
    /// # Errors
    /// [`CoreError::Memory`] when `now` is not finite, or `query` is not finite, zero, or of
    /// another length than the store's embeddings.
    pub fn recall(
        &mut self,
        agent_id: &str,
        limit: usize,
        now: f64,
        query: Option<&[f32]>,
        counted: bool,
    ) -> CoreResult<Vec<Episode>> {
        let query = self.recall_query(now, query)?;
        let Some(agent) = self.by_agent.get_mut(agent_id) else {
            return Ok(Vec::new());
        };
        // Compacted first: the positions ranked below are those of the live episodes.
        agent.compacted();
        let Some(episodes) = self.by_agent.get(agent_id).map(|agent| &agent.episodes) else {
            return Ok(Vec::new());
        };
        let mut ranked: Vec<(f64, usize)> = episodes
            .iter()
            .enumerate()
            .map(|(i, e)| (self.blended_score(e, now, query.as_deref()), i))
            .collect();
        // Best first: higher score, then older (earlier in insertion order), as a stable sort
        // by descending score would give.
        let better = |a: &(f64, usize), b: &(f64, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let limit = limit.min(ranked.len());
        if limit == 0 {
            return Ok(Vec::new());
        }
        if limit < ranked.len() {
            ranked.select_nth_unstable_by(limit - 1, better);
            ranked.truncate(limit);
        }
        ranked.sort_unstable_by(better);
        let Some(episodes) = self.by_agent.get_mut(agent_id).map(Agent::compacted) else {
            return Ok(Vec::new());
        };
        Ok(ranked
            .into_iter()
            .filter_map(|(_, i)| {
                let e = episodes.get_mut(i)?;
                if counted {
                    recalled(e, now);
                }
                Some(e.clone())
            })
            .collect())
    }

    /// Marks the agent's episodes of `ids` recalled at `now`: their recall counts go up
    /// (saturating at `u64::MAX`). Returns how many it found (an id may be gone since); an
    /// id given twice marks its episode once.
    ///
    /// Each id is looked up by binary search: an agent's episodes are in insertion order, so
    /// their ids increase (`add` hands them out in order, `validated` refuses any other
    /// order): O(k log k + k log n) for k ids among n episodes, where a scan of the episodes
    /// per id took O(k n).
    ///
    /// # Errors
    /// [`CoreError::Memory`] when `now` is not finite.
    pub fn mark_recalled(&mut self, agent_id: &str, ids: &[u64], now: f64) -> CoreResult<usize> {
        check_time(now)?;
        let Some(agent) = self.by_agent.get_mut(agent_id) else {
            return Ok(0);
        };
        // No compaction: a dead episode is not found, and marking stays O(k log n).
        let mut mark = |id: u64| -> usize {
            agent.get_mut(id).map_or(0, |e| {
                recalled(e, now);
                1
            })
        };
        // The runtime marks a few ids (a prompt's recalled episodes): repeats are told by
        // looking back, with no allocation; a long list is sorted and deduplicated.
        if ids.len() <= FEW_IDS {
            let found = ids
                .iter()
                .enumerate()
                .filter(|&(at, id)| !ids[..at].contains(id))
                .map(|(_, &id)| mark(id))
                .sum();
            return Ok(found);
        }
        let mut distinct = ids.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        Ok(distinct.into_iter().map(mark).sum())
    }

    /// Checks the arguments of [`Episodes::recall`] (whatever the agent): returns the query
    /// normalized.
    ///
    /// # Errors
    /// As [`Episodes::recall`].
    pub fn recall_query(&self, now: f64, query: Option<&[f32]>) -> CoreResult<Option<Vec<f32>>> {
        check_time(now)?;
        query
            .map(|q| self.check_embedding(q, "query embedding"))
            .transpose()
    }

    /// The agent's episodes in insertion order (`&mut`: evicted episodes are removed first).
    pub fn episodes(&mut self, agent_id: &str) -> &[Episode] {
        match self.by_agent.get_mut(agent_id) {
            Some(agent) => agent.compacted(),
            None => &[],
        }
    }

    /// How many episodes the agent has.
    pub fn agent_len(&self, agent_id: &str) -> usize {
        self.by_agent.get(agent_id).map_or(0, Agent::len)
    }

    /// Ids of the agents with episodes, sorted.
    pub fn agent_ids(&self) -> impl Iterator<Item = &str> {
        self.by_agent
            .iter()
            .filter(|(_, agent)| agent.len() > 0)
            .map(|(id, _)| id.as_str())
    }

    /// Removes the agent's episodes (every agent's when `None`), their eviction state with
    /// them; returns how many.
    pub fn clear(&mut self, agent_id: Option<&str>) -> usize {
        let (removed, embedded) = match agent_id {
            Some(a) => self.by_agent.remove(a).map_or((0, 0), |agent| {
                let embedded = agent.live().filter(|e| e.embedding.is_some()).count();
                (agent.len(), embedded)
            }),
            None => {
                let n = self.len();
                self.by_agent.clear();
                (n, self.embedded)
            }
        };
        self.forget_embeddings(embedded);
        removed
    }

    /// Total episodes.
    pub fn len(&self) -> usize {
        self.by_agent.values().map(Agent::len).sum()
    }

    /// Whether there are no episodes.
    pub fn is_empty(&self) -> bool {
        self.by_agent.values().all(|agent| agent.len() == 0)
    }
}

/// Content strings of `episodes` by descending importance (ties keep insertion order,
/// oldest first, as `recall` ranks them).
pub fn by_importance(episodes: &[Episode]) -> Vec<String> {
    let mut sorted: Vec<&Episode> = episodes.iter().collect();
    sorted.sort_by(|a, b| b.importance.total_cmp(&a.importance));
    sorted.into_iter().map(|e| e.content.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's list as stored, dead episodes included (to break it on purpose).
    fn raw<'a>(s: &'a mut Episodes, agent_id: &str) -> &'a mut Vec<Episode> {
        &mut s.by_agent.get_mut(agent_id).unwrap().episodes
    }

    #[test]
    fn importance_ranking_and_recall_counts() {
        let mut s = Episodes::new(None, Recall::Importance, None).unwrap();
        s.add("a", "low", 0.1, 0.0, None).unwrap();
        s.add("a", "high", 0.9, 0.0, None).unwrap();
        s.add("a", "mid", 0.5, 0.0, None).unwrap();
        let top: Vec<_> = s
            .recall("a", 2, 0.0, None, true)
            .unwrap()
            .into_iter()
            .map(|e| e.content)
            .collect();
        assert_eq!(top, ["high", "mid"]);
        assert_eq!(s.episodes("a")[1].recall_count, 1);
        assert!(s.recall("nobody", 3, 0.0, None, true).unwrap().is_empty());
        assert!(s.add("a", "bad", 1.5, 0.0, None).is_err());
    }

    #[test]
    fn decay_halves_per_half_life() {
        let s = Episodes::new(Some(exponential(1.0).unwrap()), Recall::Importance, None).unwrap();
        let e = Episode {
            id: 0,
            agent_id: "a".into(),
            content: String::new(),
            importance: 0.8,
            created_at: 0.0,
            last_recalled_at: None,
            recall_count: 0,
            embedding: None,
        };
        assert!((s.score(&e, 3600.0) - 0.4).abs() < 1e-12);
        assert!(exponential(0.0).is_err());
    }

    #[test]
    fn capacity_evicts_lowest_importance() {
        let mut s = Episodes::new(None, Recall::Importance, Some(2)).unwrap();
        s.add("a", "x", 0.5, 0.0, None).unwrap();
        s.add("a", "y", 0.2, 0.0, None).unwrap();
        s.add("a", "z", 0.9, 0.0, None).unwrap();
        let kept: Vec<_> = s.episodes("a").iter().map(|e| e.content.as_str()).collect();
        assert_eq!(kept, ["x", "z"]);
        // The new episode is kept even when it matters least: an older one makes room.
        let id = s.add("a", "new-low", 0.1, 0.0, None).unwrap();
        let kept: Vec<_> = s
            .episodes("a")
            .iter()
            .map(|e| (e.id, e.content.as_str()))
            .collect();
        assert_eq!(kept, [(2, "z"), (id, "new-low")]);
    }

    #[test]
    fn equal_scores_recall_in_insertion_order() {
        let mut s = Episodes::new(None, Recall::Importance, None).unwrap();
        for c in ["first", "second", "third", "fourth"] {
            s.add("a", c, 0.5, 0.0, None).unwrap();
        }
        let order = |s: &mut Episodes, limit| -> Vec<String> {
            s.recall("a", limit, 0.0, None, true)
                .unwrap()
                .into_iter()
                .map(|e| e.content)
                .collect()
        };
        assert_eq!(order(&mut s, 4), ["first", "second", "third", "fourth"]);
        assert_eq!(order(&mut s, 2), ["first", "second"]);
        assert_eq!(
            by_importance(s.episodes("a")),
            ["first", "second", "third", "fourth"]
        );
    }

    #[test]
    fn non_finite_times_are_refused() {
        let mut s = Episodes::new(None, Recall::Importance, None).unwrap();
        assert!(s.add("a", "x", 0.5, f64::NAN, None).is_err());
        assert!(s.add("a", "x", 0.5, f64::INFINITY, None).is_err());
        assert!(s.is_empty());
        s.add("a", "x", 0.5, 0.0, None).unwrap();
        assert!(s.recall("a", 1, f64::NAN, None, true).is_err());
        assert_eq!(s.episodes("a")[0].recall_count, 0);
    }

    #[test]
    fn validated_enforces_the_rules_of_add_and_new() {
        let mut good = Episodes::new(None, Recall::Importance, Some(2)).unwrap();
        good.add("a", "x", 0.5, 1.0, Some(&[1.0, 0.0])).unwrap();
        good.add("a", "y", 0.7, 2.0, None).unwrap();
        assert!(good.clone().validated().is_ok());
        let broken: Vec<fn(&mut Episodes)> = vec![
            |s| s.per_agent_capacity = Some(0),
            |s| s.per_agent_capacity = Some(1),
            |s| {
                s.decay = Some(Decay::Exponential {
                    half_life_hours: 0.0,
                })
            },
            |s| {
                s.decay = Some(Decay::Exponential {
                    half_life_hours: f64::NAN,
                })
            },
            |s| {
                s.recall = Recall::Hybrid {
                    recency_weight: -1.0,
                    frequency_weight: 0.0,
                }
            },
            |s| s.similarity_weight = -0.5,
            |s| raw(s, "a")[0].importance = 7.5,
            |s| raw(s, "a")[0].importance = f64::NAN,
            |s| raw(s, "a")[0].created_at = f64::INFINITY,
            |s| raw(s, "a")[1].last_recalled_at = Some(f64::NAN),
            |s| raw(s, "a")[1].embedding = Some(vec![1.0, 0.0, 0.0]),
            |s| raw(s, "a")[1].embedding = Some(vec![f32::NAN, 0.0]),
            |s| raw(s, "a")[1].embedding = Some(vec![0.0, 0.0]),
            |s| {
                let mut other = raw(s, "a")[0].clone();
                other.agent_id = "b".into();
                s.by_agent.insert("b".into(), Agent::from(vec![other]));
            },
            |s| raw(s, "a")[1].agent_id = "b".into(),
            |s| raw(s, "a")[1].id = 0,
            |s| s.next_id = 1,
        ];
        for (i, breaks) in broken.into_iter().enumerate() {
            let mut s = good.clone();
            breaks(&mut s);
            assert!(s.validated().is_err(), "case {i} was accepted");
        }
        // An export from before `embedding_dim` gets it from its embeddings.
        let mut old = good.clone();
        old.embedding_dim = None;
        assert_eq!(old.validated().unwrap().embedding_dim, Some(2));
        // Embeddings are stored at unit length; one already there is kept bit for bit.
        let mut long = good.clone();
        raw(&mut long, "a")[1].embedding = Some(vec![0.0, 50.0]);
        let mut long = long.validated().unwrap();
        assert_eq!(long.episodes("a")[1].embedding, Some(vec![0.0, 1.0]));
        let unit = good.episodes("a")[0].embedding.clone();
        assert_eq!(long.episodes("a")[0].embedding, unit);
    }

    #[test]
    fn validated_refuses_a_zero_dimension_and_drops_agents_without_episodes() {
        let mut zero = Episodes::new(None, Recall::Importance, None).unwrap();
        zero.embedding_dim = Some(0);
        let err = zero.validated().unwrap_err();
        assert!(
            matches!(err, CoreError::Memory(ref m) if m.contains("embedding_dim")),
            "{err:?}"
        );
        let mut ghost = Episodes::new(None, Recall::Importance, None).unwrap();
        ghost.add("a", "x", 0.5, 0.0, None).unwrap();
        ghost.by_agent.insert("ghost".into(), Agent::default());
        let ghost = ghost.validated().unwrap();
        assert_eq!(ghost.by_agent.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(ghost.len(), 1);
        // The store itself never keeps an agent without episodes: eviction keeps the new
        // one, and `clear` forgets the agent.
        let mut s = Episodes::new(None, Recall::Importance, Some(1)).unwrap();
        s.add("a", "x", 0.5, 0.0, None).unwrap();
        s.add("a", "y", 0.1, 0.0, None).unwrap();
        s.add("b", "z", 0.1, 0.0, None).unwrap();
        assert_eq!(s.clear(Some("b")), 1);
        assert!(s.by_agent.values().all(|v| v.len() > 0));
        assert_eq!(s.by_agent.len(), 1);
    }

    #[test]
    fn ids_never_wrap_and_recall_counts_saturate() {
        let mut s = Episodes::new(None, Recall::Importance, None).unwrap();
        s.next_id = u64::MAX - 1;
        assert_eq!(s.add("a", "x", 0.5, 0.0, None).unwrap(), u64::MAX - 1);
        assert!(s.add("a", "y", 0.5, 0.0, None).is_err());
        assert_eq!((s.len(), s.next_id), (1, u64::MAX));
        raw(&mut s, "a")[0].recall_count = u64::MAX;
        assert_eq!(
            s.recall("a", 1, 0.0, None, true).unwrap()[0].recall_count,
            u64::MAX
        );
    }

    #[test]
    fn an_uncounted_recall_counts_only_what_is_marked() {
        let mut s = Episodes::new(None, Recall::Importance, None).unwrap();
        let a = s.add("a", "x", 0.9, 0.0, None).unwrap();
        let b = s.add("a", "y", 0.5, 0.0, None).unwrap();
        let found = s.recall("a", 2, 1.0, None, false).unwrap();
        assert_eq!(found.iter().map(|e| e.recall_count).sum::<u64>(), 0);
        assert_eq!(s.mark_recalled("a", &[b, 999], 2.0).unwrap(), 1);
        let counts: Vec<_> = s
            .episodes("a")
            .iter()
            .map(|e| (e.id, e.recall_count, e.last_recalled_at))
            .collect();
        assert_eq!(counts, vec![(a, 0, None), (b, 1, Some(2.0))]);
        assert_eq!(s.mark_recalled("nobody", &[a], 2.0).unwrap(), 0);
        assert!(s.mark_recalled("a", &[a], f64::NAN).is_err());
    }

    /// `mark_recalled` as it was written first: a scan of the episodes, each marked when
    /// its id is among `ids` (so once, however often it is given).
    fn mark_by_scan(s: &mut Episodes, agent_id: &str, ids: &[u64], now: f64) -> usize {
        let Some(episodes) = s.by_agent.get_mut(agent_id).map(Agent::compacted) else {
            return 0;
        };
        let mut found = 0;
        for e in episodes.iter_mut().filter(|e| ids.contains(&e.id)) {
            recalled(e, now);
            found += 1;
        }
        found
    }

    #[test]
    fn mark_recalled_matches_a_scan_of_the_episodes_for_few_and_many_ids() {
        // Two agents interleaved (their ids have gaps) and a capacity that evicts: an
        // agent's ids increase but are not contiguous.
        let mut s = Episodes::new(None, Recall::Importance, Some(400)).unwrap();
        for i in 0..1500u64 {
            let agent = if i % 3 == 0 { "b" } else { "a" };
            s.add(agent, "x", ((i * 37) % 100) as f64 / 100.0, 0.0, None)
                .unwrap();
        }
        let a_ids: Vec<u64> = s.episodes("a").iter().map(|e| e.id).collect();
        assert!(a_ids.windows(2).all(|w| w[0] < w[1]));
        assert!(a_ids.windows(2).any(|w| w[1] - w[0] > 1));
        let mut lists: Vec<Vec<u64>> = vec![
            vec![],
            vec![a_ids[0]],
            vec![a_ids[3], a_ids[3], a_ids[3]],
            vec![a_ids[399], 0, u64::MAX, a_ids[1]],
            // Ids of the other agent, evicted ones and repeats, past the few-ids bound.
            (0..3000).step_by(7).collect(),
            (0..3000).rev().step_by(3).chain(0..200).collect(),
        ];
        lists.push(a_ids.iter().rev().chain(&a_ids).copied().collect());
        for (at, ids) in lists.iter().enumerate() {
            let mut scanned = s.clone();
            let now = at as f64 + 1.0;
            let expected = mark_by_scan(&mut scanned, "a", ids, now);
            assert_eq!(
                s.mark_recalled("a", ids, now).unwrap(),
                expected,
                "list {at}"
            );
            assert_eq!(s.episodes("a"), scanned.episodes("a"), "list {at}");
            assert_eq!(s.episodes("b"), scanned.episodes("b"), "list {at}");
        }
        assert_eq!(s.mark_recalled("a", &a_ids, 9.0).unwrap(), 400);
        assert_eq!(s.mark_recalled("nobody", &a_ids, 9.0).unwrap(), 0);
    }

    #[test]
    fn similarity_blends_into_the_score() {
        let mut s = Episodes::new(None, Recall::Importance, None)
            .unwrap()
            .with_similarity_weight(0.5)
            .unwrap();
        s.add("a", "east", 0.5, 0.0, Some(&[1.0, 0.0])).unwrap();
        s.add("a", "north", 0.6, 0.0, Some(&[0.0, 2.0])).unwrap();
        s.add("a", "plain", 0.55, 0.0, None).unwrap();
        let order = |s: &mut Episodes, q: Option<&[f32]>| -> Vec<String> {
            s.recall("a", 3, 0.0, q, true)
                .unwrap()
                .into_iter()
                .map(|e| e.content)
                .collect()
        };
        assert_eq!(order(&mut s, None), ["north", "plain", "east"]);
        // east: 0.5 + 0.5 * 1 = 1.0; north: 0.6 + 0; plain: 0.55.
        assert_eq!(order(&mut s, Some(&[3.0, 0.0])), ["east", "north", "plain"]);
        assert!(s.recall("a", 1, 0.0, Some(&[1.0]), true).is_err());
        assert!(s.recall("a", 1, 0.0, Some(&[0.0, 0.0]), true).is_err());
        assert!(s.add("a", "bad", 0.1, 0.0, Some(&[1.0, 2.0, 3.0])).is_err());
        assert!(Episodes::new(None, Recall::Importance, None)
            .unwrap()
            .with_similarity_weight(-1.0)
            .is_err());
    }

    /// A small deterministic generator (xorshift64*), so the test needs no crate.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    /// The eviction rule as first written: a scan for the lowest importance among the older
    /// episodes (the first of equals), removed from the list.
    fn add_to_model(model: &mut Vec<Episode>, e: Episode, cap: usize) {
        model.push(e);
        if model.len() > cap {
            let older = model.len() - 1;
            let victim = (0..older)
                .min_by(|&a, &b| model[a].importance.total_cmp(&model[b].importance))
                .unwrap();
            model.remove(victim);
        }
    }

    #[test]
    fn eviction_matches_a_scan_of_the_older_episodes() {
        let agents = ["a", "b", "c"];
        let levels = [0.0, 0.25, 0.5, 1.0];
        for seed in 1..=60u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let cap = 1 + (seed % 6) as usize;
            let mut s = Episodes::new(None, Recall::Importance, Some(cap)).unwrap();
            let mut model: BTreeMap<&str, Vec<Episode>> = BTreeMap::new();
            for step in 0..400u32 {
                let agent = agents[rng.below(3) as usize];
                let now = f64::from(step);
                match rng.below(20) {
                    // Mostly adds, with many ties (and 0.0, 1.0), some with an embedding.
                    0..=12 => {
                        let importance = if rng.below(4) == 0 {
                            rng.below(1000) as f64 / 999.0
                        } else {
                            levels[rng.below(4) as usize]
                        };
                        let embedding = (rng.below(3) == 0).then_some([1.0f32, 2.0]);
                        let id = s
                            .add(
                                agent,
                                &format!("e{step}"),
                                importance,
                                now,
                                embedding.as_ref().map(|v| &v[..]),
                            )
                            .unwrap();
                        let e = Episode {
                            id,
                            agent_id: agent.into(),
                            content: format!("e{step}"),
                            importance,
                            created_at: now,
                            last_recalled_at: None,
                            recall_count: 0,
                            embedding: embedding.map(|v| normalized(&v, "e").unwrap()),
                        };
                        add_to_model(model.entry(agent).or_default(), e, cap);
                    }
                    13 | 14 => {
                        // Ids of live, evicted and unknown episodes, some twice.
                        let ids: Vec<u64> = (0..4).map(|_| rng.below(s.next_id + 2)).collect();
                        let list = model.entry(agent).or_default();
                        let mut expected = 0;
                        for e in list.iter_mut().filter(|e| ids.contains(&e.id)) {
                            recalled(e, now);
                            expected += 1;
                        }
                        assert_eq!(s.mark_recalled(agent, &ids, now).unwrap(), expected);
                    }
                    15 => {
                        let limit = rng.below(4) as usize;
                        let list = model.entry(agent).or_default();
                        let mut order: Vec<usize> = (0..list.len()).collect();
                        order.sort_by(|&x, &y| list[y].importance.total_cmp(&list[x].importance));
                        order.truncate(limit);
                        for &i in &order {
                            recalled(&mut list[i], now);
                        }
                        let want: Vec<u64> = order.iter().map(|&i| list[i].id).collect();
                        let got: Vec<u64> = s
                            .recall(agent, limit, now, None, true)
                            .unwrap()
                            .iter()
                            .map(|e| e.id)
                            .collect();
                        assert_eq!(got, want, "seed {seed} step {step}");
                    }
                    16 if rng.below(8) == 0 => {
                        let expected = model.values().map(Vec::len).sum::<usize>();
                        model.clear();
                        assert_eq!(s.clear(None), expected);
                    }
                    16 => {
                        let expected = model.remove(agent).map_or(0, |v| v.len());
                        assert_eq!(s.clear(Some(agent)), expected);
                    }
                    17 => {
                        let text = serde_json::to_string(&s).unwrap();
                        s = serde_json::from_str::<Episodes>(&text)
                            .unwrap()
                            .validated()
                            .unwrap();
                    }
                    _ => {
                        let list = model.get(agent).map_or(&[][..], Vec::as_slice);
                        assert_eq!(s.episodes(agent), list, "seed {seed} step {step}");
                    }
                }
                model.retain(|_, v| !v.is_empty());
                // Compared without compacting: the export, counts and agents skip the dead.
                let exported = serde_json::to_value(&s).unwrap();
                assert_eq!(
                    exported["by_agent"],
                    serde_json::to_value(&model).unwrap(),
                    "seed {seed} step {step}"
                );
                let embedded = model
                    .values()
                    .flatten()
                    .filter(|e| e.embedding.is_some())
                    .count();
                assert_eq!(s.embedded, embedded, "seed {seed} step {step}");
                assert_eq!(s.embedding_dim, (embedded > 0).then_some(2));
                assert_eq!(s.len(), model.values().map(Vec::len).sum::<usize>());
                assert_eq!(s.is_empty(), model.is_empty());
                assert!(s.agent_ids().eq(model.keys().copied()));
                for agent in agents {
                    assert_eq!(s.agent_len(agent), model.get(agent).map_or(0, Vec::len));
                }
            }
        }
    }

    #[test]
    fn evicted_episodes_wait_freed_then_go_in_one_pass() {
        let mut s = Episodes::new(None, Recall::Importance, Some(3)).unwrap();
        for i in 0..3 {
            s.add("a", "kept", 0.9, 0.0, Some(&[1.0, 0.0])).unwrap();
            s.add("b", &format!("b{i}"), 0.5, 0.0, None).unwrap();
        }
        s.add("a", "new", 1.0, 0.0, None).unwrap();
        // The victim (the oldest of the equal 0.9s) waits in the list, its contents freed.
        let agent = &s.by_agent["a"];
        assert_eq!((agent.episodes.len(), agent.len()), (4, 3));
        assert_eq!(agent.dead.iter().copied().collect::<Vec<_>>(), [0]);
        assert_eq!(
            (
                agent.episodes[0].content.as_str(),
                &agent.episodes[0].embedding
            ),
            ("", &None)
        );
        assert_eq!(s.mark_recalled("a", &[0], 1.0).unwrap(), 0);
        // Up to as many dead as live, then one pass removes them; the last embedding gone,
        // its length is forgotten.
        for _ in 0..3 {
            s.add("a", "newer", 1.0, 0.0, None).unwrap();
        }
        assert_eq!(s.by_agent["a"].episodes.len(), 3);
        assert_eq!(s.embedding_dim, None);
        let ids: Vec<u64> = s.episodes("a").iter().map(|e| e.id).collect();
        assert_eq!(ids, [7, 8, 9]);
        assert_eq!(s.by_agent["b"].episodes.len(), 3);
    }

    #[test]
    fn importance_keys_order_as_total_cmp() {
        let values = [
            -1.0,
            -0.0,
            0.0,
            f64::MIN_POSITIVE,
            1e-300,
            0.25,
            0.5,
            1.0,
            2.0,
        ];
        for a in values {
            for b in values {
                assert_eq!(
                    importance_key(a).cmp(&importance_key(b)),
                    a.total_cmp(&b),
                    "{a} {b}"
                );
            }
        }
    }
}
