//! Traversals, shortest paths, reachability, cycles and degrees over a [`Snapshot`].
//!
//! Every function works on dense indices and returns dense indices; the binding maps them to
//! entity ids.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};

use rayon::prelude::*;

use super::alloc::{collected, filled, with_capacity};
use super::community::Check;
use super::csr::{Adjacency, Snapshot};
use crate::errors::{interrupted, CoreError, CoreResult};

/// Sources at or above this count are processed in parallel by the all-sources algorithms.
pub const PARALLEL_SOURCES: usize = 256;

/// Breadth-first order from `start`, at most `max_depth` hops away.
///
/// # Errors
/// [`CoreError::Graph`] when its per-node scratch does not fit in memory (so for all the
/// algorithms here).
pub fn bfs(
    adj: &Adjacency,
    n: usize,
    start: u32,
    max_depth: Option<usize>,
) -> CoreResult<Vec<u32>> {
    let mut depth = filled(n, u32::MAX, "the breadth-first depths")?;
    let mut order = vec![start];
    depth[start as usize] = 0;
    let mut head = 0;
    while head < order.len() {
        let v = order[head];
        head += 1;
        let d = depth[v as usize];
        if max_depth.is_some_and(|m| d as usize >= m) {
            continue;
        }
        for &w in adj.neighbors(v as usize).0 {
            if depth[w as usize] == u32::MAX {
                depth[w as usize] = d + 1;
                order.push(w);
            }
        }
    }
    Ok(order)
}

/// Depth-first preorder from `start`, at most `max_depth` hops away (iterative).
///
/// # Errors
/// As [`bfs`].
pub fn dfs(
    adj: &Adjacency,
    n: usize,
    start: u32,
    max_depth: Option<usize>,
) -> CoreResult<Vec<u32>> {
    let mut visited = filled(n, false, "the depth-first marks")?;
    let mut order = vec![start];
    visited[start as usize] = true;
    // (node, index of the next neighbour to try)
    let mut stack: Vec<(u32, usize)> = vec![(start, 0)];
    loop {
        let depth = stack.len();
        let Some(&mut (v, ref mut next)) = stack.last_mut() else {
            break;
        };
        let neighbors = adj.neighbors(v as usize).0;
        let can_descend = max_depth.is_none_or(|m| depth <= m);
        let mut pushed = None;
        while can_descend && *next < neighbors.len() {
            let w = neighbors[*next];
            *next += 1;
            if !visited[w as usize] {
                visited[w as usize] = true;
                pushed = Some(w);
                break;
            }
        }
        match pushed {
            Some(w) => {
                order.push(w);
                stack.push((w, 0));
            }
            None => {
                stack.pop();
            }
        }
    }
    Ok(order)
}

/// A Dijkstra queue entry: `dist` to `node`, pushed as the queue's `seq`-th entry.
#[derive(Clone, Copy, PartialEq)]
struct HeapItem {
    dist: f64,
    seq: u64,
    node: u32,
}

impl Eq for HeapItem {}

impl Ord for HeapItem {
    fn cmp(&self, other: &Self) -> Ordering {
        // Min-heap on distance (never NaN: weights are finite and non-negative, so a sum is at
        // worst +inf), ties to the entry pushed first. networkx's queue holds (distance, push
        // count, node) the same way, so among equal-cost paths both settle nodes, and so pick
        // paths, alike.
        other
            .dist
            .total_cmp(&self.dist)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for HeapItem {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn refuse_negative(snapshot: &Snapshot) -> CoreResult<()> {
    if snapshot.has_negative_weight {
        Err(CoreError::Graph(
            "Dijkstra needs non-negative weights; the graph has a negative one".into(),
        ))
    } else {
        Ok(())
    }
}

/// The predecessor of a node Dijkstra did not reach.
pub const UNREACHED: u32 = u32::MAX;

/// Dijkstra from `source`: distance and predecessor of every node. An unreached node has the
/// predecessor [`UNREACHED`] (and distance `f64::INFINITY`); the source is its own
/// predecessor. A reached node's distance may be infinite too: finite weights can sum past
/// `f64::MAX` (networkx then reports the path, at cost inf). Stops early once `target` is
/// settled. Among equal-cost paths, the one networkx's `dijkstra_path` returns.
pub fn dijkstra(
    snapshot: &Snapshot,
    directed: bool,
    source: u32,
    target: Option<u32>,
) -> CoreResult<(Vec<f64>, Vec<u32>)> {
    refuse_negative(snapshot)?;
    let adj = snapshot.view(directed)?;
    let n = snapshot.n;
    let mut dist = filled(n, f64::INFINITY, "the shortest-path distances")?;
    let mut pred = filled(n, UNREACHED, "the shortest-path predecessors")?;
    let mut done = filled(n, false, "the shortest-path marks")?;
    let mut heap = BinaryHeap::with_capacity(n.min(1 << 16));
    let mut pushed = 0u64;
    let mut push = |heap: &mut BinaryHeap<HeapItem>, dist: f64, node: u32| {
        heap.push(HeapItem {
            dist,
            seq: pushed,
            node,
        });
        pushed += 1;
    };
    dist[source as usize] = 0.0;
    pred[source as usize] = source;
    push(&mut heap, 0.0, source);
    while let Some(HeapItem {
        dist: d, node: v, ..
    }) = heap.pop()
    {
        if done[v as usize] {
            continue;
        }
        done[v as usize] = true;
        if Some(v) == target {
            break;
        }
        let (targets, weights) = adj.neighbors(v as usize);
        for (&w, &weight) in targets.iter().zip(weights) {
            let candidate = d + weight;
            // The first path found stands until a strictly cheaper one (networkx's rule).
            let wi = w as usize;
            if pred[wi] == UNREACHED || candidate < dist[wi] {
                dist[wi] = candidate;
                pred[wi] = v;
                push(&mut heap, candidate, w);
            }
        }
    }
    Ok((dist, pred))
}

/// Cheapest path `source -> target` and its cost, or None when unreachable.
pub fn shortest_path(
    snapshot: &Snapshot,
    directed: bool,
    source: u32,
    target: u32,
) -> CoreResult<Option<(Vec<u32>, f64)>> {
    let (dist, pred) = dijkstra(snapshot, directed, source, Some(target))?;
    if pred[target as usize] == UNREACHED {
        return Ok(None);
    }
    let mut path = vec![target];
    let mut v = target;
    while v != source {
        v = pred[v as usize];
        path.push(v);
    }
    path.reverse();
    Ok(Some((path, dist[target as usize])))
}

/// Nodes reachable from `source` in one or more hops, sorted: `source` itself only when it
/// lies on a cycle. Directed, that is a directed cycle (a self-loop counts). Undirected, a
/// cycle of the multigraph whose edges are the relationships: a self-loop, two relationships
/// between `source` and one neighbour, or a path between two of its neighbours that avoids
/// it; one relationship walked there and back is no cycle. One search, O(n + m).
///
/// # Errors
/// As [`bfs`].
pub fn reachable(snapshot: &Snapshot, directed: bool, source: u32) -> CoreResult<Vec<u32>> {
    let n = snapshot.n;
    let s = source as usize;
    let mut found = Vec::new();
    if directed {
        // One breadth-first search seeded with every out-neighbour: the source is found
        // exactly when some path leads back to it.
        let adj = snapshot.out()?;
        let mut seen = filled(n, false, "the reachability marks")?;
        for &w in adj.neighbors(s).0 {
            if !std::mem::replace(&mut seen[w as usize], true) {
                found.push(w);
            }
        }
        let mut head = 0;
        while head < found.len() {
            let v = found[head];
            head += 1;
            for &w in adj.neighbors(v as usize).0 {
                if !std::mem::replace(&mut seen[w as usize], true) {
                    found.push(w);
                }
            }
        }
        found.sort_unstable();
        return Ok(found);
    }
    let adj = snapshot.undirected()?;
    let neighbors = adj.neighbors(s).0;
    // A self-loop, or more relationships touching the source than distinct neighbours (two
    // to one neighbour, a 2-cycle).
    let mut on_cycle =
        neighbors.contains(&source) || snapshot.relationships_touching(s) > neighbors.len();
    // One search from all the neighbours at once, never entering the source; `root[v]` is the
    // neighbour whose part of the search reached `v`. An edge between two parts closes a cycle
    // through the source (neighbour, ..., other neighbour, source).
    let mut root = filled(n, u32::MAX, "the reachability roots")?;
    for &w in neighbors {
        if w != source {
            root[w as usize] = w;
            found.push(w);
        }
    }
    let mut head = 0;
    while head < found.len() {
        let v = found[head];
        head += 1;
        let r = root[v as usize];
        for &w in adj.neighbors(v as usize).0 {
            if w == source {
                continue;
            }
            match root[w as usize] {
                u32::MAX => {
                    root[w as usize] = r;
                    found.push(w);
                }
                other => on_cycle |= other != r,
            }
        }
    }
    if on_cycle {
        found.push(source);
    }
    found.sort_unstable();
    Ok(found)
}

/// For every node, the nodes reachable from it in one or more hops (so a node is in its own
/// set only when it lies on a cycle), each list sorted by `rank` (a node's place in the
/// order wanted, one distinct value per node). Parallel over sources on large graphs; stops
/// before the next source once `stop` is set.
///
/// # Errors
/// As [`bfs`]; [`interrupted`] when stopped; [`CoreError::Runtime`] when `rank` does not
/// have one value per node (an internal error).
pub fn transitive_closure(
    snapshot: &Snapshot,
    rank: &[u32],
    stop: &AtomicBool,
) -> CoreResult<Vec<Vec<u32>>> {
    let adj = snapshot.out()?;
    let n = snapshot.n;
    if rank.len() != n {
        return Err(CoreError::Runtime(format!(
            "internal error: {} ranks for the closure of {n} nodes",
            rank.len()
        )));
    }
    let one = |s: usize| -> CoreResult<Vec<u32>> {
        if stop.load(AtomicOrdering::Relaxed) {
            return Err(interrupted());
        }
        let mut seen = filled(n, false, "the closure's marks")?;
        let mut queue: VecDeque<u32> = adj.neighbors(s).0.iter().copied().collect();
        for &w in &queue {
            seen[w as usize] = true;
        }
        let mut out = Vec::new();
        while let Some(v) = queue.pop_front() {
            out.push(v);
            for &w in adj.neighbors(v as usize).0 {
                if !seen[w as usize] {
                    seen[w as usize] = true;
                    queue.push_back(w);
                }
            }
        }
        out.sort_unstable_by_key(|&v| rank[v as usize]);
        Ok(out)
    };
    let mut closure: Vec<Vec<u32>> = filled(n, Vec::new(), "the transitive closure")?;
    let fill = |(s, row): (usize, &mut Vec<u32>)| -> CoreResult<()> {
        *row = one(s)?;
        Ok(())
    };
    if n >= PARALLEL_SOURCES {
        // Without a pool (threads cannot be spawned), the closure is filled here.
        let rows = &mut closure;
        match crate::sync::parallel(|_| rows.par_iter_mut().enumerate().try_for_each(fill)) {
            Some(done) => done?,
            None => closure.iter_mut().enumerate().try_for_each(fill)?,
        }
    } else {
        closure.iter_mut().enumerate().try_for_each(fill)?;
    }
    Ok(closure)
}

/// Whether the directed graph has a cycle (a self-loop counts).
///
/// # Errors
/// As [`bfs`].
pub fn has_cycle(snapshot: &Snapshot) -> CoreResult<bool> {
    // Kahn's algorithm: a cycle exists iff some node never reaches in-degree zero.
    let n = snapshot.n;
    let (out, incoming) = (snapshot.out()?, snapshot.incoming()?);
    let mut indegree = collected((0..n).map(|v| incoming.degree(v) as u32), "the in-degrees")?;
    let mut queue = with_capacity(n, "the cycle check's queue")?;
    queue.extend((0..n as u32).filter(|&v| indegree[v as usize] == 0));
    let mut removed = 0;
    while let Some(v) = queue.pop() {
        removed += 1;
        for &w in out.neighbors(v as usize).0 {
            indegree[w as usize] -= 1;
            if indegree[w as usize] == 0 {
                queue.push(w);
            }
        }
    }
    Ok(removed < n)
}

/// Steps of the cycle search between two calls of its check: a step is a few nanoseconds,
/// a check's look at the clock more.
const CYCLE_STEPS_PER_CHECK: u32 = 1 << 12;

/// Elementary directed cycles (Johnson's algorithm, iterative), at most `cap` of them. Each
/// cycle starts at its smallest node index and is listed once.
///
/// `check` is called every few thousand steps (a graph can hold more cycles than any run
/// can list: the search for many may take minutes); when it fails, so does the search.
///
/// # Errors
/// As [`bfs`]; the error of `check` when it fails.
pub fn cycles(snapshot: &Snapshot, cap: usize, check: Check<'_>) -> CoreResult<Vec<Vec<u32>>> {
    let n = snapshot.n;
    let mut steps: u32 = 0;
    let adj = snapshot.out()?;
    let mut found = Vec::new();
    let mut in_component = filled(n, false, "the cycle search's marks")?;
    let mut blocked = filled(n, false, "the cycle search's marks")?;
    let mut blockers: Vec<Vec<u32>> = filled(n, Vec::new(), "the cycle search's blockers")?;
    let (component_of, component_size) = strongly_connected(snapshot)?;
    let mut members: Vec<Vec<u32>> =
        filled(component_size.len(), Vec::new(), "the components' members")?;
    for v in 0..n as u32 {
        members[component_of[v as usize] as usize].push(v); // ascending
    }
    let self_loop = |v: u32| adj.neighbors(v as usize).0.contains(&v);
    // Nodes on no cycle among the nodes from the current start on. Removing nodes only
    // splits components, so a node found on none stays on none: it is never looked at again
    // (a large component with few cycles costs a few passes, not one per node).
    let mut dead = filled(n, false, "the cycle search's marks")?;
    for s in 0..n as u32 {
        if found.len() >= cap {
            break;
        }
        if dead[s as usize] {
            continue;
        }
        let global = component_of[s as usize];
        if component_size[global as usize] == 1 && !self_loop(s) {
            continue; // on no cycle at all
        }
        // The strongly connected components of `s`'s component among its live nodes >= s.
        let live: Vec<u32> = members[global as usize]
            .iter()
            .copied()
            .filter(|&w| w >= s && !dead[w as usize])
            .collect();
        let (sub_of, sub_size) = components_among(snapshot, &live, |w| {
            w >= s && !dead[w as usize] && component_of[w as usize] == global
        })?;
        for &v in &live {
            if sub_size[sub_of[&v] as usize] == 1 && !self_loop(v) {
                dead[v as usize] = true;
            }
        }
        if dead[s as usize] {
            continue;
        }
        let component: Vec<u32> = live
            .iter()
            .copied()
            .filter(|v| sub_of[v] == sub_of[&s])
            .collect();
        for &v in &component {
            in_component[v as usize] = true;
            blocked[v as usize] = false;
            blockers[v as usize].clear();
        }
        let mut path = vec![s];
        let mut closes = vec![false];
        let mut next = vec![0usize];
        blocked[s as usize] = true;
        while let Some(&v) = path.last() {
            steps = steps.wrapping_add(1);
            if steps.is_multiple_of(CYCLE_STEPS_PER_CHECK) {
                check()?;
            }
            let depth = path.len() - 1;
            let neighbors = adj.neighbors(v as usize).0;
            if next[depth] < neighbors.len() {
                let w = neighbors[next[depth]];
                next[depth] += 1;
                if w < s || !in_component[w as usize] {
                    continue;
                }
                if w == s {
                    found.push(path.clone());
                    closes[depth] = true;
                    if found.len() >= cap {
                        break;
                    }
                } else if !blocked[w as usize] {
                    blocked[w as usize] = true;
                    path.push(w);
                    closes.push(false);
                    next.push(0);
                }
                continue;
            }
            // Done with `v`: unblock it if it closed a cycle, else wait on its neighbours.
            if closes[depth] {
                unblock(v, &mut blocked, &mut blockers);
            } else {
                for &w in neighbors {
                    if w >= s && in_component[w as usize] && !blockers[w as usize].contains(&v) {
                        blockers[w as usize].push(v);
                    }
                }
            }
            path.pop();
            let closed = closes.pop().unwrap_or(false);
            next.pop();
            if let Some(parent) = closes.last_mut() {
                *parent |= closed;
            }
        }
        for &v in &component {
            in_component[v as usize] = false;
        }
    }
    Ok(found)
}

/// Strongly connected components (Kosaraju, iterative): the component of each node and the
/// size of each component.
///
/// # Errors
/// As [`bfs`].
pub fn strongly_connected(snapshot: &Snapshot) -> CoreResult<(Vec<u32>, Vec<usize>)> {
    let n = snapshot.n;
    let (out, incoming) = (snapshot.out()?, snapshot.incoming()?);
    // Pass 1: nodes in order of DFS completion on the forward graph.
    let mut visited = filled(n, false, "the component search's marks")?;
    let mut finished = with_capacity(n, "the component search's order")?;
    for root in 0..n {
        if visited[root] {
            continue;
        }
        visited[root] = true;
        let mut stack = vec![(root as u32, 0usize)];
        while let Some(&mut (v, ref mut next)) = stack.last_mut() {
            let neighbors = out.neighbors(v as usize).0;
            if *next < neighbors.len() {
                let w = neighbors[*next];
                *next += 1;
                if !visited[w as usize] {
                    visited[w as usize] = true;
                    stack.push((w, 0));
                }
            } else {
                finished.push(v);
                stack.pop();
            }
        }
    }
    // Pass 2: collect components on the reverse graph in reverse completion order.
    let mut component = filled(n, u32::MAX, "the components")?;
    let mut sizes = Vec::new();
    for &root in finished.iter().rev() {
        if component[root as usize] != u32::MAX {
            continue;
        }
        let id = sizes.len() as u32;
        component[root as usize] = id;
        let mut size = 0;
        let mut stack = vec![root];
        while let Some(v) = stack.pop() {
            size += 1;
            for &w in incoming.neighbors(v as usize).0 {
                if component[w as usize] == u32::MAX {
                    component[w as usize] = id;
                    stack.push(w);
                }
            }
        }
        sizes.push(size);
    }
    Ok((component, sizes))
}

/// Strongly connected components (Kosaraju) of the subgraph induced by `nodes`, the nodes
/// `keep` accepts: each node's component and each component's size. Its cost is the
/// subgraph's size, not the graph's.
///
/// # Errors
/// As [`bfs`].
fn components_among(
    snapshot: &Snapshot,
    nodes: &[u32],
    keep: impl Fn(u32) -> bool,
) -> CoreResult<(rustc_hash::FxHashMap<u32, u32>, Vec<usize>)> {
    let (out, incoming) = (snapshot.out()?, snapshot.incoming()?);
    let mut visited = rustc_hash::FxHashSet::default();
    let mut finished = Vec::with_capacity(nodes.len());
    for &root in nodes {
        if !visited.insert(root) {
            continue;
        }
        let mut stack = vec![(root, 0usize)];
        while let Some(&mut (v, ref mut next)) = stack.last_mut() {
            let neighbors = out.neighbors(v as usize).0;
            if *next < neighbors.len() {
                let w = neighbors[*next];
                *next += 1;
                if keep(w) && visited.insert(w) {
                    stack.push((w, 0));
                }
            } else {
                finished.push(v);
                stack.pop();
            }
        }
    }
    let mut component = rustc_hash::FxHashMap::default();
    let mut sizes = Vec::new();
    for &root in finished.iter().rev() {
        if component.contains_key(&root) {
            continue;
        }
        let id = sizes.len() as u32;
        component.insert(root, id);
        let mut size = 0;
        let mut stack = vec![root];
        while let Some(v) = stack.pop() {
            size += 1;
            for &w in incoming.neighbors(v as usize).0 {
                if keep(w) && !component.contains_key(&w) {
                    component.insert(w, id);
                    stack.push(w);
                }
            }
        }
        sizes.push(size);
    }
    Ok((component, sizes))
}

fn unblock(start: u32, blocked: &mut [bool], blockers: &mut [Vec<u32>]) {
    let mut stack = vec![start];
    while let Some(v) = stack.pop() {
        if blocked[v as usize] {
            blocked[v as usize] = false;
            stack.append(&mut blockers[v as usize]);
        }
    }
}

/// Which degree a centrality counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DegreeMode {
    /// Incoming relationships.
    In,
    /// Outgoing relationships.
    Out,
    /// Both (a self-loop counts twice).
    Total,
}

/// Degree of each node counting every relationship (parallel ones included), optionally
/// divided by `n - 1` as networkx does (a graph of one node gets 1.0).
///
/// # Errors
/// As [`bfs`].
pub fn degree_centrality(
    n: usize,
    relationships: impl Iterator<Item = (u32, u32)>,
    mode: DegreeMode,
    normalized: bool,
) -> CoreResult<Vec<f64>> {
    let mut degree = filled(n, 0f64, "the degrees")?;
    for (from, to) in relationships {
        if mode != DegreeMode::In {
            degree[from as usize] += 1.0;
        }
        if mode != DegreeMode::Out {
            degree[to as usize] += 1.0;
        }
    }
    if normalized {
        if n <= 1 {
            return Ok(vec![1.0; n]);
        }
        let scale = 1.0 / (n - 1) as f64;
        degree.iter_mut().for_each(|d| *d *= scale);
    }
    Ok(degree)
}

/// Nodes within `hops` of `start` (following direction when `directed`), in BFS order.
///
/// # Errors
/// As [`bfs`].
pub fn neighborhood(
    snapshot: &Snapshot,
    directed: bool,
    start: u32,
    hops: usize,
) -> CoreResult<Vec<u32>> {
    bfs(snapshot.view(directed)?, snapshot.n, start, Some(hops))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::store::Store;
    use serde_json::Value;

    fn graph(n: usize, edges: &[(u32, u32, f64)]) -> Snapshot {
        let mut s = Store::default();
        for i in 0..n {
            s.add_entity(i.to_string(), String::new(), Value::Null)
                .unwrap();
        }
        for &(a, b, w) in edges {
            let k = s.intern("k");
            s.push_relationship(a, b, k, w);
        }
        Snapshot::build(&s).unwrap()
    }

    #[test]
    fn traversals_follow_insertion_order_and_depth() {
        let g = graph(5, &[(0, 2, 1.0), (0, 1, 1.0), (1, 3, 1.0), (2, 4, 1.0)]);
        assert_eq!(
            bfs(g.out().unwrap(), 5, 0, None).unwrap(),
            vec![0, 2, 1, 4, 3]
        );
        assert_eq!(bfs(g.out().unwrap(), 5, 0, Some(1)).unwrap(), vec![0, 2, 1]);
        assert_eq!(
            dfs(g.out().unwrap(), 5, 0, None).unwrap(),
            vec![0, 2, 4, 1, 3]
        );
        assert_eq!(dfs(g.out().unwrap(), 5, 0, Some(1)).unwrap(), vec![0, 2, 1]);
    }

    #[test]
    fn dijkstra_finds_the_cheapest_path_and_refuses_negative_weights() {
        let g = graph(4, &[(0, 1, 4.0), (0, 2, 1.0), (2, 1, 1.0), (1, 3, 1.0)]);
        let (path, cost) = shortest_path(&g, true, 0, 3).unwrap().unwrap();
        assert_eq!((path, cost), (vec![0, 2, 1, 3], 3.0));
        assert!(shortest_path(&g, true, 3, 0).unwrap().is_none());
        let negative = graph(2, &[(0, 1, -1.0)]);
        assert!(dijkstra(&negative, true, 0, None).is_err());
    }

    #[test]
    fn paths_whose_cost_overflows_to_inf_are_still_found() {
        // Finite weights that sum past f64::MAX: c is reachable, at cost inf (networkx's
        // answer), not "unreachable".
        let g = graph(4, &[(0, 1, 1e308), (1, 2, 1e308), (2, 3, 0.0)]);
        let (path, cost) = shortest_path(&g, true, 0, 3).unwrap().unwrap();
        assert_eq!((path, cost), (vec![0, 1, 2, 3], f64::INFINITY));
        let (dist, pred) = dijkstra(&g, true, 0, None).unwrap();
        assert_eq!(dist, vec![0.0, 1e308, f64::INFINITY, f64::INFINITY]);
        assert_eq!(pred, vec![0, 0, 1, 2]);
        let (_, pred) = dijkstra(&g, true, 3, None).unwrap();
        assert_eq!(pred, vec![UNREACHED, UNREACHED, UNREACHED, 3]);
        assert!(shortest_path(&g, true, 3, 0).unwrap().is_none());
    }

    #[test]
    fn equal_cost_paths_are_the_first_pushed_as_in_networkx() {
        // s=0, b=1, a=2, t=3: s->a is added before s->b, so networkx pops a first and goes
        // s->a->t, although b has the smaller index.
        let g = graph(4, &[(0, 2, 1.0), (0, 1, 1.0), (2, 3, 1.0), (1, 3, 1.0)]);
        let (path, cost) = shortest_path(&g, true, 0, 3).unwrap().unwrap();
        assert_eq!((path, cost), (vec![0, 2, 3], 2.0));
        let g = graph(4, &[(0, 1, 1.0), (0, 2, 1.0), (2, 3, 1.0), (1, 3, 1.0)]);
        assert_eq!(
            shortest_path(&g, true, 0, 3).unwrap().unwrap().0,
            vec![0, 1, 3]
        );
    }

    #[test]
    fn reachable_lists_the_source_only_on_a_cycle() {
        let one_edge = graph(2, &[(0, 1, 1.0)]);
        assert_eq!(reachable(&one_edge, true, 0).unwrap(), vec![1]);
        assert_eq!(reachable(&one_edge, false, 0).unwrap(), vec![1]); // 0-1-0 walks one edge twice
        assert_eq!(reachable(&one_edge, false, 1).unwrap(), vec![0]);
        let both_ways = graph(2, &[(0, 1, 1.0), (1, 0, 1.0)]);
        assert_eq!(reachable(&both_ways, true, 0).unwrap(), vec![0, 1]);
        assert_eq!(reachable(&both_ways, false, 0).unwrap(), vec![0, 1]); // two relationships: a cycle
        let parallel = graph(2, &[(0, 1, 1.0), (0, 1, 2.0)]);
        assert_eq!(reachable(&parallel, true, 0).unwrap(), vec![1]);
        assert_eq!(reachable(&parallel, false, 1).unwrap(), vec![0, 1]);
        let self_loop = graph(2, &[(0, 0, 1.0), (0, 1, 1.0)]);
        assert_eq!(reachable(&self_loop, true, 0).unwrap(), vec![0, 1]);
        assert_eq!(reachable(&self_loop, false, 0).unwrap(), vec![0, 1]);
        assert_eq!(reachable(&self_loop, false, 1).unwrap(), vec![0]);
        // A triangle hanging off a path: 0-1, 1-2, 2-3, 3-1.
        let g = graph(4, &[(0, 1, 1.0), (1, 2, 1.0), (2, 3, 1.0), (3, 1, 1.0)]);
        assert_eq!(reachable(&g, false, 0).unwrap(), vec![1, 2, 3]);
        assert_eq!(reachable(&g, false, 1).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(reachable(&g, false, 3).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(reachable(&g, true, 0).unwrap(), vec![1, 2, 3]);
        assert_eq!(reachable(&g, true, 2).unwrap(), vec![1, 2, 3]);
        // A star: no cycle anywhere.
        let star = graph(5, &[(0, 1, 1.0), (2, 0, 1.0), (0, 3, 1.0), (4, 0, 1.0)]);
        assert_eq!(reachable(&star, false, 0).unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(reachable(&star, false, 1).unwrap(), vec![0, 2, 3, 4]);
        assert_eq!(reachable(&star, true, 0).unwrap(), vec![1, 3]);
        assert_eq!(
            reachable(&graph(1, &[]), false, 0).unwrap(),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn cycles_are_found_once_each() {
        let g = graph(
            4,
            &[
                (0, 1, 1.0),
                (1, 0, 1.0),
                (1, 2, 1.0),
                (2, 0, 1.0),
                (3, 3, 1.0),
            ],
        );
        assert!(has_cycle(&g).unwrap());
        let mut all = cycles(&g, 100, &mut || Ok(())).unwrap();
        all.sort();
        assert_eq!(all, vec![vec![0, 1], vec![0, 1, 2], vec![3]]);
        assert_eq!(cycles(&g, 1, &mut || Ok(())).unwrap().len(), 1);
        assert!(!has_cycle(&graph(3, &[(0, 1, 1.0), (1, 2, 1.0), (0, 2, 1.0)])).unwrap());
    }

    #[test]
    fn a_failing_check_stops_the_cycle_search() {
        // Complete on 8 nodes: far more cycles than steps between two checks.
        let edges: Vec<(u32, u32, f64)> = (0..8)
            .flat_map(|a| (0..8).filter(move |&b| b != a).map(move |b| (a, b, 1.0)))
            .collect();
        let g = graph(8, &edges);
        let mut checks = 0;
        let stopped = cycles(&g, usize::MAX, &mut || {
            checks += 1;
            Err(interrupted())
        });
        assert_eq!(stopped, Err(interrupted()));
        assert_eq!(checks, 1);
        let mut checks = 0;
        let all = cycles(&g, usize::MAX, &mut || {
            checks += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(all.len(), 16_064); // sum over k of C(8, k) (k - 1)!
        assert!(checks > 1);
    }

    /// A graph whose per-node buffers cannot be allocated: every algorithm returns a
    /// `CoreError::Graph` "out of memory" instead of aborting the process.
    #[test]
    fn buffers_sized_by_a_graph_too_large_for_memory_are_graph_errors() {
        let n = usize::MAX / 16;
        let mut huge = Snapshot::default();
        huge.n = n;
        let out_of_memory = |result: CoreResult<()>, what: &str| match result {
            Err(CoreError::Graph(m)) => assert!(m.starts_with("out of memory: "), "{what}: {m}"),
            other => panic!("{what}: {other:?}"),
        };
        let empty = Adjacency::default();
        out_of_memory(bfs(&empty, n, 0, None).map(drop), "bfs");
        out_of_memory(dfs(&empty, n, 0, None).map(drop), "dfs");
        out_of_memory(huge.out().map(drop), "out view");
        out_of_memory(huge.out().map(drop), "out view, again"); // no half-built view kept
        out_of_memory(huge.undirected().map(drop), "undirected view");
        out_of_memory(dijkstra(&huge, true, 0, None).map(drop), "dijkstra");
        out_of_memory(reachable(&huge, false, 0).map(drop), "reachable");
        let never = AtomicBool::new(false);
        out_of_memory(transitive_closure(&huge, &[], &never).map(drop), "closure");
        out_of_memory(has_cycle(&huge).map(drop), "has_cycle");
        out_of_memory(cycles(&huge, 1, &mut || Ok(())).map(drop), "cycles");
        out_of_memory(strongly_connected(&huge).map(drop), "components");
        out_of_memory(neighborhood(&huge, true, 0, 1).map(drop), "neighborhood");
        let degrees = degree_centrality(n, std::iter::empty(), DegreeMode::Total, true);
        out_of_memory(degrees.map(drop), "degrees");
        let betweenness = crate::graph::betweenness::betweenness(&huge, true, false, true, None);
        out_of_memory(betweenness.map(drop), "betweenness");
        use crate::graph::community;
        out_of_memory(
            community::louvain(n, &[], 1.0, 0, &mut || Ok(())).map(drop),
            "louvain",
        );
        out_of_memory(
            community::label_propagation(n, &[], 0, 1, &mut || Ok(())).map(drop),
            "label propagation",
        );
        out_of_memory(
            community::modularity(n, &[], &[], 1.0).map(drop),
            "modularity",
        );
    }

    #[test]
    fn closure_and_degrees() {
        let g = graph(3, &[(0, 1, 1.0), (1, 2, 1.0)]);
        let never = AtomicBool::new(false);
        assert_eq!(
            transitive_closure(&g, &[0, 1, 2], &never).unwrap(),
            vec![vec![1, 2], vec![2], vec![]]
        );
        // Each list in the order of the ranks given.
        assert_eq!(
            transitive_closure(&g, &[2, 1, 0], &never).unwrap(),
            vec![vec![2, 1], vec![2], vec![]]
        );
        // Stopped: no source is searched.
        let stop = AtomicBool::new(true);
        assert_eq!(
            transitive_closure(&g, &[0, 1, 2], &stop),
            Err(interrupted())
        );
        assert!(matches!(
            transitive_closure(&g, &[0, 1], &never),
            Err(CoreError::Runtime(_))
        ));
        let d =
            degree_centrality(3, [(0, 1), (1, 2)].into_iter(), DegreeMode::Total, true).unwrap();
        assert_eq!(d, vec![0.5, 1.0, 0.5]);
        assert_eq!(
            degree_centrality(1, std::iter::empty(), DegreeMode::In, true).unwrap(),
            vec![1.0]
        );
    }
}
