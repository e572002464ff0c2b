//! Betweenness centrality (Brandes), unweighted and weighted, exact or from sampled sources.
//!
//! Path counting follows networkx: parallel relationships count once (at their smallest
//! weight), and the normalization is `_rescale`'s. A stop flag, looked at before each
//! source, lets a caller end a long run early.
//!
//! The sources are summed in fixed chunks of [`SOURCES_PER_CHUNK`], each into its own partial
//! row, and the partial rows are added into the total in chunk order ([`OrderedSum`]): float
//! addition is not associative, so this fixed grouping is what makes the scores the same to
//! the last bit from run to run, whatever the thread count. Runs of [`PARALLEL_SOURCES`] or
//! more sources fill their chunks on several threads.

use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Condvar, Mutex, MutexGuard};
use rayon::prelude::*;

use super::algo::PARALLEL_SOURCES;
use super::alloc::{collected, filled, with_capacity};
use super::csr::{Adjacency, Snapshot};
use crate::errors::{interrupted, CoreError, CoreResult};

/// Everything the passes know about one node, packed so one cache line serves a visit.
#[derive(Clone, Copy)]
struct NodeState {
    /// Shortest-path count from the source.
    sigma: f64,
    /// Dependency accumulated in the backward pass.
    delta: f64,
    /// Weighted distance (weighted runs).
    dist: f64,
    /// Hop distance (unweighted runs); in weighted runs [`QUEUED`] or [`SETTLED`] once seen
    /// (a weighted distance may be infinite: finite weights can sum past `f64::MAX`).
    hops: u32,
    /// Weighted runs: the node's place in the order nodes are settled in.
    rank: u32,
}

const UNSEEN: NodeState = NodeState {
    sigma: 0.0,
    delta: 0.0,
    dist: f64::INFINITY,
    hops: u32::MAX,
    rank: u32::MAX,
};

/// `hops` of a node a weighted run has reached but not settled.
const QUEUED: u32 = 1;
/// `hops` of a node a weighted run has settled.
const SETTLED: u32 = 0;

/// Per-thread buffers, reused across sources.
struct Scratch {
    nodes: Vec<NodeState>,
    order: Vec<u32>,
    touched: Vec<u32>,
    /// Shortest-path DAG edges `(parent, child)` in discovery order (unweighted runs).
    dag: Vec<(u32, u32)>,
    heap: BinaryHeap<Item>,
}

#[derive(PartialEq)]
struct Item(f64, u32);

impl Eq for Item {}

impl Ord for Item {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .0
            .total_cmp(&self.0)
            .then_with(|| other.1.cmp(&self.1))
    }
}

impl PartialOrd for Item {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Scratch {
    /// Buffers for a graph of `n` nodes.
    ///
    /// # Errors
    /// [`CoreError::Graph`] when they do not fit in memory.
    fn new(n: usize) -> CoreResult<Scratch> {
        Ok(Scratch {
            nodes: filled(n, UNSEEN, "the betweenness scratch")?,
            order: with_capacity(n, "the betweenness scratch")?,
            touched: Vec::new(),
            dag: Vec::new(),
            heap: BinaryHeap::new(),
        })
    }

    /// Resets only what the last source touched.
    fn reset(&mut self) {
        for &v in self.order.iter().chain(&self.touched) {
            self.nodes[v as usize] = UNSEEN;
        }
        self.order.clear();
        self.touched.clear();
        self.dag.clear();
    }
}

/// One chunk's sums: a row of one slot per node, zero except at the nodes listed, so that
/// adding it into the total (and clearing it for the next chunk) costs what the chunk's
/// sources reached, not the node count, when they reach few nodes.
struct Partial {
    row: Vec<f64>,
    /// The first `listed` entries are the nodes whose slot is not zero, each once; one spare
    /// entry past the `n` a row can list takes the write of a node that is not kept.
    nodes: Vec<u32>,
    listed: usize,
    /// Whether so many nodes are listed that the row will be added whole: the list is no
    /// longer kept up.
    dense: bool,
}

impl Partial {
    /// An all-zero row for a graph of `n` nodes.
    ///
    /// # Errors
    /// [`CoreError::Graph`] when it does not fit in memory.
    fn new(n: usize) -> CoreResult<Partial> {
        Ok(Partial {
            row: filled(n, 0.0, "the betweenness scores")?,
            nodes: filled(n + 1, 0, "the betweenness scores")?,
            listed: 0,
            dense: false,
        })
    }

    /// Adds `delta` to node `w`'s slot.
    #[inline]
    fn add(&mut self, w: u32, delta: f64) {
        let slot = &mut self.row[w as usize];
        if !self.dense {
            // Without a branch, as which nodes get a zero is not predictable: `w` is written
            // past the list and kept when its slot turns non-zero. Dependencies are never
            // negative, so a slot once non-zero stays so, and no node is listed twice.
            let first = (*slot == 0.0) & (delta != 0.0);
            self.nodes[self.listed] = w;
            self.listed += usize::from(first);
        }
        *slot += delta;
    }

    /// Ends a source's additions: a row that lists many nodes stops listing them.
    fn end_source(&mut self) {
        self.dense = self.listed.saturating_mul(DENSE_MERGE) >= self.row.len();
    }

    /// Adds the row into `total` and clears it. Either loop adds the same values in the same
    /// order into each slot of `total` (an unlisted slot adds zero, which changes nothing),
    /// so the choice between them does not change the result.
    fn add_into(&mut self, total: &mut [f64]) {
        if self.dense {
            for (sum, x) in total.iter_mut().zip(&mut self.row) {
                *sum += *x;
                *x = 0.0;
            }
        } else {
            for &w in &self.nodes[..self.listed] {
                let x = &mut self.row[w as usize];
                total[w as usize] += *x;
                *x = 0.0;
            }
        }
        self.listed = 0;
        self.dense = false;
    }

    /// Slots a copy of the row takes (see [`Partial::copy_out`]).
    fn copy_size(&self) -> usize {
        if self.dense {
            self.row.len()
        } else {
            self.listed
        }
    }

    /// A copy of the row's sums, which then clears the row.
    ///
    /// # Errors
    /// [`CoreError::Graph`] when the copy does not fit in memory.
    fn copy_out(&mut self) -> CoreResult<Waiting> {
        const WHAT: &str = "a betweenness chunk's sums";
        let copy = if self.dense {
            let mut values = with_capacity(self.row.len(), WHAT)?;
            values.extend_from_slice(&self.row);
            self.row.fill(0.0);
            Waiting::Whole(values)
        } else {
            let nodes = &self.nodes[..self.listed];
            let mut listed = with_capacity(nodes.len(), WHAT)?;
            listed.extend_from_slice(nodes);
            let mut values = with_capacity(nodes.len(), WHAT)?;
            for &w in nodes {
                values.push(std::mem::take(&mut self.row[w as usize]));
            }
            Waiting::Listed(listed, values)
        };
        self.listed = 0;
        self.dense = false;
        Ok(copy)
    }
}

/// A complete chunk's sums, waiting for the chunks ahead of it to be added in. Each form
/// adds the same values into the same slots of the total.
enum Waiting {
    /// The row itself, given up by its worker.
    Row(Partial),
    /// A copy of the row's non-zero slots: the nodes and their values.
    Listed(Vec<u32>, Vec<f64>),
    /// A copy of the whole row.
    Whole(Vec<f64>),
}

impl Waiting {
    /// Adds the sums into `total`.
    fn add_into(&mut self, total: &mut [f64]) {
        match self {
            Waiting::Row(partial) => partial.add_into(total),
            Waiting::Listed(nodes, values) => {
                for (&w, &x) in nodes.iter().zip(values.iter()) {
                    total[w as usize] += x;
                }
            }
            Waiting::Whole(values) => {
                for (sum, &x) in total.iter_mut().zip(values.iter()) {
                    *sum += x;
                }
            }
        }
    }
}

/// Slots of the copies of complete chunks that wait for one ahead of them (12 MiB at most):
/// enough for many chunks of sources that reach few nodes, so that a worker whose thread
/// the system pauses does not soon hold the others up. Beyond them a chunk waits with its
/// row.
const WAITING_COPY_SLOTS: usize = 1 << 20;

/// A partial row touched at one node in this many or more is added by a sequential pass over
/// the whole row, which streams faster than that many scattered adds.
const DENSE_MERGE: usize = 4;

/// Sources summed into one partial row. The chunks depend on the sources alone (never on the
/// thread count), which is what fixes the order of the float additions. Small enough that
/// the chunks spread evenly over the threads and the last ones end together; large enough
/// that taking a chunk and adding its row in (a lock or two, and work in proportion to
/// what it reached) stays small against its sources' passes.
const SOURCES_PER_CHUNK: usize = 8;

/// How far an [`OrderedSum`] has got, and the sums no worker holds.
struct Progress {
    /// Chunks handed to a worker so far (chunks are handed out in order).
    claimed: usize,
    /// Chunks added into the total so far (in order).
    merged: usize,
    /// Complete chunks that wait for one ahead of them: entry `i` is chunk `merged + i`.
    waiting: VecDeque<Option<Waiting>>,
    /// Slots the copies in `waiting` take (each counts one more, so that their number is
    /// bounded too).
    copied: usize,
    /// Cleared rows, free for the next chunk.
    spare: Vec<Partial>,
    /// Rows allocated so far.
    rows: usize,
    /// Whether a worker failed: the others stop taking chunks.
    failed: bool,
}

/// Sums per-source dependencies chunk by chunk, and adds each chunk's partial row into the
/// total in chunk order, whichever worker completes it and whenever.
///
/// Workers take chunks in order, each with a partial row. The worker that completes the
/// next chunk to be added in adds it, and then the complete chunks that waited behind it. A
/// chunk completed before the ones ahead of it waits as a copy of its sums (while the
/// copies stay within [`WAITING_COPY_SLOTS`]), or else with its row, its worker then taking
/// a spare row (or a new one) for its next chunk. The rows are limited to two per worker:
/// a worker that finds none free waits for the total to catch up.
struct OrderedSum<'a, P> {
    n: usize,
    sources: &'a [u32],
    chunks: usize,
    /// The most partial rows allocated at once.
    row_limit: usize,
    /// The most slots the copies of waiting chunks take ([`WAITING_COPY_SLOTS`]).
    copy_limit: usize,
    /// Adds one source's dependencies to a partial row.
    pass: &'a P,
    stop: &'a AtomicBool,
    progress: Mutex<Progress>,
    /// Signalled when rows become spare, or a worker fails.
    advanced: Condvar,
    total: Mutex<Vec<f64>>,
}

impl<'a, P> OrderedSum<'a, P>
where
    P: Fn(&mut Scratch, &mut Partial, u32) + Sync,
{
    /// A sum over `sources` in a graph of `n` nodes, for `workers` workers.
    ///
    /// # Errors
    /// [`CoreError::Graph`] when the total does not fit in memory.
    fn new(
        n: usize,
        sources: &'a [u32],
        pass: &'a P,
        stop: &'a AtomicBool,
        workers: usize,
    ) -> CoreResult<Self> {
        let row_limit = 2 * workers.max(1);
        Ok(OrderedSum {
            n,
            sources,
            chunks: sources.len().div_ceil(SOURCES_PER_CHUNK),
            row_limit,
            copy_limit: WAITING_COPY_SLOTS,
            pass,
            stop,
            progress: Mutex::new(Progress {
                claimed: 0,
                merged: 0,
                waiting: VecDeque::new(),
                copied: 0,
                spare: with_capacity(row_limit, "the betweenness rows")?,
                rows: 0,
                failed: false,
            }),
            advanced: Condvar::new(),
            total: Mutex::new(filled(n, 0.0, "the betweenness scores")?),
        })
    }

    /// The total, summed on the calling thread.
    ///
    /// # Errors
    /// As [`stoppable_betweenness`].
    fn here(self) -> CoreResult<Vec<f64>> {
        self.work()?;
        Ok(self.total.into_inner())
    }

    /// The total, summed by `workers` workers on the current rayon pool (the one `new` was
    /// sized for).
    ///
    /// # Errors
    /// As [`stoppable_betweenness`].
    fn on_pool(self, workers: usize) -> CoreResult<Vec<f64>> {
        (0..workers).into_par_iter().try_for_each(|_| self.work())?;
        Ok(self.total.into_inner())
    }

    /// Takes chunks until none is left (or a worker failed), filling and adding in each.
    ///
    /// # Errors
    /// [`CoreError::Graph`] when the worker's buffers do not fit in memory; [`interrupted`]
    /// when `stop` was set.
    fn work(&self) -> CoreResult<()> {
        let _unwind = FailOnUnwind(self);
        // A run stopped before it starts allocates nothing more.
        self.failing(self.stopped())?;
        let Some((mut chunk, mut partial)) = self.failing(self.claim(None))? else {
            return Ok(()); // the others took every chunk: no scratch needed
        };
        let mut scratch = self.failing(Scratch::new(self.n))?;
        loop {
            self.failing(self.fill(chunk, &mut scratch, &mut partial))?;
            let kept = self.failing(self.complete(chunk, partial))?;
            match self.failing(self.claim(kept))? {
                Some(next) => (chunk, partial) = next,
                None => return Ok(()),
            }
        }
    }

    /// The next chunk and a row for it: `held` if the worker kept one, else a spare or a new
    /// one, once one is free. `None` when every chunk is taken or a worker failed.
    ///
    /// # Errors
    /// [`CoreError::Graph`] when a new row does not fit in memory.
    fn claim(&self, mut held: Option<Partial>) -> CoreResult<Option<(usize, Partial)>> {
        let mut progress = self.progress.lock();
        loop {
            if progress.failed || progress.claimed == self.chunks {
                return Ok(None);
            }
            if held.is_none() {
                held = progress.spare.pop();
            }
            if held.is_none() && progress.rows < self.row_limit {
                progress.rows += 1;
                // Zeroed without the lock; then the state is looked at afresh.
                held = Some(MutexGuard::unlocked(&mut progress, || {
                    Partial::new(self.n)
                })?);
                continue;
            }
            if let Some(partial) = held.take() {
                progress.claimed += 1;
                return Ok(Some((progress.claimed - 1, partial)));
            }
            self.advanced.wait(&mut progress);
        }
    }

    /// Sums chunk `chunk`'s sources into `partial`.
    ///
    /// # Errors
    /// [`interrupted`] when `stop` was set.
    fn fill(&self, chunk: usize, scratch: &mut Scratch, partial: &mut Partial) -> CoreResult<()> {
        let start = chunk * SOURCES_PER_CHUNK;
        let end = self.sources.len().min(start + SOURCES_PER_CHUNK);
        for &s in &self.sources[start..end] {
            // A source's passes are short: looking before each one is soon enough.
            self.stopped()?;
            (self.pass)(scratch, partial, s);
            partial.end_source();
        }
        Ok(())
    }

    /// Hands in complete chunk `chunk`: adds it into the total if it is next (then every
    /// waiting chunk next in order), else leaves it waiting. The worker keeps its row (now
    /// clear) unless the chunk waits with it (`None`).
    ///
    /// # Errors
    /// [`CoreError::Graph`] when a copy does not fit in memory.
    fn complete(&self, chunk: usize, mut partial: Partial) -> CoreResult<Option<Partial>> {
        let mut progress = self.progress.lock();
        if chunk != progress.merged {
            let size = partial.copy_size() + 1;
            if progress.copied + size > self.copy_limit {
                Self::wait_in_line(&mut progress, chunk, Waiting::Row(partial));
                return Ok(None);
            }
            progress.copied += size;
            let mut copy = MutexGuard::unlocked(&mut progress, || partial.copy_out())?;
            progress.copied -= size;
            if chunk != progress.merged {
                progress.copied += size;
                Self::wait_in_line(&mut progress, chunk, copy);
                return Ok(Some(partial));
            }
            // The chunks ahead were added in while it was copied: it is next after all.
            self.add_in_order(&mut progress, &mut copy);
            return Ok(Some(partial));
        }
        let mut own = Waiting::Row(partial);
        self.add_in_order(&mut progress, &mut own);
        Ok(match own {
            Waiting::Row(partial) => Some(partial),
            Waiting::Listed(..) | Waiting::Whole(_) => None,
        })
    }

    /// Puts complete chunk `chunk` (behind chunk `merged`) in line.
    fn wait_in_line(progress: &mut Progress, chunk: usize, sums: Waiting) {
        let place = chunk - progress.merged;
        if progress.waiting.len() <= place {
            progress.waiting.resize_with(place + 1, || None);
        }
        progress.waiting[place] = Some(sums);
    }

    /// Adds `next` (chunk `merged`, this worker's) into the total, then every waiting chunk
    /// next in order.
    fn add_in_order(&self, progress: &mut MutexGuard<'_, Progress>, next: &mut Waiting) {
        // Until `merged` passes it, the chunk being added in is this worker's: any other
        // completed meanwhile is behind it, so waits, and no two workers add in at once.
        MutexGuard::unlocked(progress, || next.add_into(&mut self.total.lock()));
        progress.waiting.pop_front();
        progress.merged += 1;
        let mut freed = false;
        while !progress.failed {
            let Some(Some(mut sums)) = progress.waiting.front_mut().map(Option::take) else {
                break;
            };
            MutexGuard::unlocked(progress, || sums.add_into(&mut self.total.lock()));
            progress.waiting.pop_front();
            progress.merged += 1;
            match sums {
                Waiting::Row(partial) => {
                    progress.spare.push(partial);
                    freed = true;
                }
                Waiting::Listed(nodes, _) => progress.copied -= nodes.len() + 1,
                Waiting::Whole(values) => progress.copied -= values.len() + 1,
            }
        }
        if freed {
            self.advanced.notify_all();
        }
    }

    /// [`interrupted`] once `stop` is set.
    fn stopped(&self) -> CoreResult<()> {
        if self.stop.load(Ordering::Relaxed) {
            Err(interrupted())
        } else {
            Ok(())
        }
    }

    /// `result`, after telling the other workers to stop when it is an error.
    fn failing<T>(&self, result: CoreResult<T>) -> CoreResult<T> {
        if result.is_err() {
            self.fail();
        }
        result
    }

    /// Tells the other workers to stop taking chunks, and wakes those waiting for a row.
    fn fail(&self) {
        self.progress.lock().failed = true;
        self.advanced.notify_all();
    }
}

/// Fails its sum when dropped by a panic, so that no worker waits for a chunk that will
/// never be added in.
struct FailOnUnwind<'s, 'a, P>(&'s OrderedSum<'a, P>)
where
    P: Fn(&mut Scratch, &mut Partial, u32) + Sync;

impl<P> Drop for FailOnUnwind<'_, '_, P>
where
    P: Fn(&mut Scratch, &mut Partial, u32) + Sync,
{
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail();
        }
    }
}

/// Adds source `s`'s dependencies to `scores` (unweighted: BFS path counting).
///
/// The forward pass records the shortest-path DAG's edges in discovery order; walking that
/// list backwards meets every child's edges before its parents', so each dependency is final
/// when it is passed on, and no neighbour list is scanned twice.
#[inline(never)] // its own registers: inlined into the chunk loop, it spills more
fn accumulate_unweighted(fwd: &Adjacency, s: u32, sc: &mut Scratch, scores: &mut Partial) {
    sc.reset();
    let nodes = &mut sc.nodes;
    nodes[s as usize].hops = 0;
    nodes[s as usize].sigma = 1.0;
    sc.order.push(s);
    let mut head = 0;
    while head < sc.order.len() {
        let v = sc.order[head];
        head += 1;
        let NodeState { hops, sigma, .. } = nodes[v as usize];
        let next = hops + 1;
        for &w in fwd.neighbors(v as usize).0 {
            let node = &mut nodes[w as usize];
            if node.hops == u32::MAX {
                node.hops = next;
                sc.order.push(w);
            }
            if node.hops == next {
                node.sigma += sigma;
                sc.dag.push((v, w));
            }
        }
    }
    for &(v, w) in sc.dag.iter().rev() {
        let child = nodes[w as usize];
        let parent = &mut nodes[v as usize];
        parent.delta += parent.sigma * ((1.0 + child.delta) / child.sigma);
    }
    for &w in &sc.order[1..] {
        scores.add(w, nodes[w as usize].delta);
    }
}

/// Adds source `s`'s dependencies to `scores` (weighted: Dijkstra path counting, with
/// networkx's rule that two paths tie only when their float lengths are exactly equal).
///
/// A node's shortest-path predecessors are the nodes settled before it whose distance plus
/// the weight between them equals its own: exactly the ones whose counts its `sigma` summed
/// (a distance is compared as a float, so a weight lost to rounding, or two paths that both
/// overflow to inf, do not make a node its own descendant's predecessor). `back` is the
/// reverse of `fwd`.
#[inline(never)] // as `accumulate_unweighted`
fn accumulate_weighted(
    fwd: &Adjacency,
    back: &Adjacency,
    s: u32,
    sc: &mut Scratch,
    scores: &mut Partial,
) {
    sc.reset();
    let nodes = &mut sc.nodes;
    nodes[s as usize].dist = 0.0;
    nodes[s as usize].sigma = 1.0;
    nodes[s as usize].hops = QUEUED;
    sc.touched.push(s);
    sc.heap.push(Item(0.0, s));
    while let Some(Item(d, v)) = sc.heap.pop() {
        let vi = v as usize;
        if nodes[vi].hops == SETTLED {
            continue; // settled already (a stale heap entry)
        }
        nodes[vi].hops = SETTLED;
        nodes[vi].rank = sc.order.len() as u32;
        sc.order.push(v);
        let sigma = nodes[vi].sigma;
        let (targets, weights) = fwd.neighbors(vi);
        for (&w, &weight) in targets.iter().zip(weights) {
            let node = &mut nodes[w as usize];
            if node.hops == SETTLED {
                continue;
            }
            let candidate = d + weight;
            // Seen is tracked apart from the distance: a path of cost inf is still a path.
            let unseen = node.hops == u32::MAX;
            if unseen || candidate < node.dist {
                if unseen {
                    node.hops = QUEUED;
                    sc.touched.push(w);
                }
                node.dist = candidate;
                node.sigma = sigma;
                sc.heap.push(Item(candidate, w));
            } else if candidate == node.dist {
                node.sigma += sigma;
            }
        }
    }
    for &w in sc.order.iter().rev() {
        if w == s {
            continue;
        }
        let NodeState {
            sigma,
            delta,
            dist,
            rank,
            ..
        } = nodes[w as usize];
        let coefficient = (1.0 + delta) / sigma;
        let (sources, weights) = back.neighbors(w as usize);
        for (&v, &weight) in sources.iter().zip(weights) {
            let node = &mut nodes[v as usize];
            if node.hops == SETTLED && node.rank < rank && node.dist + weight == dist {
                node.delta += node.sigma * coefficient;
            }
        }
        scores.add(w, delta);
    }
}

/// Runs with fewer steps than this (sources times nodes and relationships) end soon enough
/// that a way to stop them early would cost more than it saves.
const STOPPABLE_STEPS: usize = 1 << 20;

/// Whether a run from `sources` sources over `g` is long enough to be worth making stoppable
/// (see [`stoppable_betweenness`]).
pub fn worth_stopping(g: &Snapshot, sources: usize) -> bool {
    sources.saturating_mul(g.n.saturating_add(g.edges().len())) >= STOPPABLE_STEPS
}

/// Betweenness of every node: [`stoppable_betweenness`] run to its end.
///
/// # Errors
/// As [`stoppable_betweenness`], never interrupted.
pub fn betweenness(
    g: &Snapshot,
    directed: bool,
    weighted: bool,
    normalized: bool,
    sources: Option<&[u32]>,
) -> CoreResult<Vec<f64>> {
    let never = AtomicBool::new(false);
    stoppable_betweenness(g, directed, weighted, normalized, sources, &never)
}

/// Betweenness of every node, stopping before the next source once `stop` is set.
///
/// `sources` restricts the sum to those sources (a sample of at least one) and rescales the
/// estimate as networkx's `k=` does. The sources must be distinct, as networkx's sample is
/// (the caller checks): a repeated one would be summed twice but rescaled as two sources.
/// Weighted runs refuse non-positive weights. The result is the same to the last bit from
/// run to run, whatever the number of threads (see the module docs).
///
/// # Errors
/// [`CoreError::Graph`] when `sources` is an empty sample, a weighted run meets a
/// non-positive weight, or the buffers (the total, and per thread a scratch and up to two
/// partial rows, each of one slot per node) do not fit in memory; [`interrupted`] when `stop`
/// was set before the last source was done.
pub fn stoppable_betweenness(
    g: &Snapshot,
    directed: bool,
    weighted: bool,
    normalized: bool,
    sources: Option<&[u32]>,
    stop: &AtomicBool,
) -> CoreResult<Vec<f64>> {
    betweenness_with_pool(g, directed, weighted, normalized, sources, stop, |sum| {
        crate::sync::parallel(sum)
    })
}

/// A sum of every source's dependencies by the given number of workers, on the rayon pool it
/// is called in.
type PoolSum<'a> = dyn Fn(usize) -> CoreResult<Vec<f64>> + Sync + 'a;

/// [`stoppable_betweenness`], whose runs of [`PARALLEL_SOURCES`] or more sources hand their
/// sum to `on_pool`, which runs it on a pool (`None`: no pool, the sum runs here).
///
/// # Errors
/// As [`stoppable_betweenness`].
fn betweenness_with_pool(
    g: &Snapshot,
    directed: bool,
    weighted: bool,
    normalized: bool,
    sources: Option<&[u32]>,
    stop: &AtomicBool,
    on_pool: impl FnOnce(&PoolSum<'_>) -> Option<CoreResult<Vec<f64>>>,
) -> CoreResult<Vec<f64>> {
    let n = g.n;
    if sources.is_some_and(<[u32]>::is_empty) {
        // The estimate rescales by the sample size: an empty sample has none to give.
        return Err(CoreError::Graph(
            "betweenness needs at least one source entity, got none".into(),
        ));
    }
    if weighted && g.has_negative_weight {
        return Err(CoreError::Graph(
            "weighted betweenness needs non-negative weights; the graph has a negative one".into(),
        ));
    }
    if weighted && g.edges().iter().any(|&(_, _, w)| w == 0.0) {
        return Err(CoreError::Graph(
            "weighted betweenness needs positive weights; the graph has a zero weight".into(),
        ));
    }
    // Unit weights give the same shortest paths as hop counts, at BFS cost.
    let weighted = weighted && !g.unit_weights;
    let sampled = sources.is_some();
    // The views are built here, once, rather than raced for by the parallel workers.
    let fwd = g.view(directed)?;
    let back = if weighted {
        Some(g.reverse_view(directed)?)
    } else {
        None
    };
    let all: Vec<u32>;
    let sources = match sources {
        Some(s) => s,
        None => {
            all = collected(0..n as u32, "the betweenness sources")?;
            &all
        }
    };
    let pass = |sc: &mut Scratch, scores: &mut Partial, s: u32| match back {
        Some(back) => accumulate_weighted(fwd, back, s, sc, scores),
        None => accumulate_unweighted(fwd, s, sc, scores),
    };
    let sum_on_pool =
        |workers: usize| OrderedSum::new(n, sources, &pass, stop, workers)?.on_pool(workers);
    let summed = if sources.len() >= PARALLEL_SOURCES {
        on_pool(&sum_on_pool)
    } else {
        None
    };
    // Small runs, and any run without a pool (threads cannot be spawned), are summed here,
    // chunk by chunk as on a pool: to the same bits.
    let mut scores = match summed {
        Some(scores) => scores?,
        None => OrderedSum::new(n, sources, &pass, stop, 1)?.here()?,
    };
    rescale(
        &mut scores,
        normalized,
        directed,
        sampled.then_some(sources),
    )?;
    Ok(scores)
}

/// networkx's `_rescale` (3.6, endpoints excluded): exact runs divide by the number of
/// ordered pairs; sampled runs scale source and non-source nodes differently, so that the
/// estimate is unbiased (a single source leaves its own score undefined: NaN, as there).
/// `sample` holds distinct nodes: its length is the `k` of the rescaling.
///
/// # Errors
/// [`CoreError::Graph`] when the marks of the sampled sources do not fit in memory.
fn rescale(
    scores: &mut [f64],
    normalized: bool,
    directed: bool,
    sample: Option<&[u32]>,
) -> CoreResult<()> {
    let n = scores.len();
    if n < 3 {
        return Ok(()); // every score is 0
    }
    let pairs_per_source = (n - 2) as f64; // N - 1 with N = n - 1
    let correction = if directed { 1.0 } else { 2.0 };
    let Some(sample) = sample else {
        let scale = if normalized {
            1.0 / ((n - 1) as f64 * pairs_per_source)
        } else {
            1.0 / correction
        };
        scores.iter_mut().for_each(|x| *x *= scale);
        return Ok(());
    };
    let k = sample.len() as f64;
    let (source_scale, other_scale) = if normalized {
        (
            1.0 / ((k - 1.0) * pairs_per_source),
            1.0 / (k * pairs_per_source),
        )
    } else {
        let big_n = (n - 1) as f64;
        (big_n / ((k - 1.0) * correction), big_n / (k * correction))
    };
    let source_scale = if sample.len() > 1 {
        source_scale
    } else {
        f64::NAN
    };
    let mut is_source = filled(n, false, "the sampled sources' marks")?;
    for &s in sample {
        is_source[s as usize] = true;
    }
    for (x, source) in scores.iter_mut().zip(is_source) {
        *x *= if source { source_scale } else { other_scale };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::community::SplitMix;
    use crate::graph::store::Store;
    use serde_json::Value;

    fn path_graph(n: usize, w: f64) -> Snapshot {
        let mut s = Store::default();
        for i in 0..n {
            s.add_entity(i.to_string(), String::new(), Value::Null)
                .unwrap();
        }
        for i in 0..n - 1 {
            let k = s.intern("k");
            s.push_relationship(i as u32, i as u32 + 1, k, w);
        }
        Snapshot::build(&s).unwrap()
    }

    #[test]
    fn path_graph_matches_the_closed_form() {
        // Undirected path 0-1-2-3: unnormalized scores are 0, 2, 2, 0.
        for weight in [1.0, 2.5] {
            let g = path_graph(4, weight);
            let b = betweenness(&g, false, weight != 1.0, false, None).unwrap();
            assert_eq!(b, vec![0.0, 2.0, 2.0, 0.0]);
            let normalized = betweenness(&g, false, true, true, None).unwrap();
            assert!((normalized[1] - 2.0 / 3.0).abs() < 1e-12);
        }
        let directed = betweenness(&path_graph(4, 1.0), true, false, false, None).unwrap();
        assert_eq!(directed, vec![0.0, 2.0, 2.0, 0.0]);
    }

    #[test]
    fn paths_whose_length_overflows_to_inf_still_count() {
        // 0 -> 1 -> 2 at 1e308 a step: the 0 -> 2 path passes through 1 (networkx: 1.0).
        let mut s = Store::default();
        for i in 0..4 {
            s.add_entity(i.to_string(), String::new(), Value::Null)
                .unwrap();
        }
        let k = s.intern("k");
        s.push_relationship(0, 1, k, 1e308);
        s.push_relationship(1, 2, k, 1e308);
        let g = Snapshot::build(&s).unwrap();
        let b = betweenness(&g, true, true, false, None).unwrap();
        assert_eq!(b, vec![0.0, 1.0, 0.0, 0.0]);
        // Two such paths to 3, through 1 and through 2: each carries half.
        let mut s = Store::default();
        for i in 0..4 {
            s.add_entity(i.to_string(), String::new(), Value::Null)
                .unwrap();
        }
        let k = s.intern("k");
        for (a, b) in [(0, 1), (0, 2), (1, 3), (2, 3)] {
            s.push_relationship(a, b, k, 1e308);
        }
        let g = Snapshot::build(&s).unwrap();
        let b = betweenness(&g, true, true, false, None).unwrap();
        assert_eq!(b, vec![0.0, 0.5, 0.5, 0.0]);
    }

    #[test]
    fn an_empty_sample_is_refused() {
        let g = path_graph(4, 1.0);
        for normalized in [true, false] {
            let err = betweenness(&g, true, false, normalized, Some(&[])).unwrap_err();
            assert!(matches!(err, CoreError::Graph(_)), "{err:?}");
        }
        assert!(betweenness(&g, true, false, true, Some(&[1])).is_ok());
    }

    #[test]
    fn parallel_and_serial_agree() {
        let n = PARALLEL_SOURCES + 50;
        let g = path_graph(n, 1.0);
        let all: Vec<u32> = (0..n as u32).collect();
        let parallel = betweenness(&g, false, false, true, None).unwrap();
        let serial_part = betweenness(&g, false, false, true, Some(&all[..10])).unwrap();
        assert!(parallel.iter().all(|x| x.is_finite()));
        assert!(serial_part.iter().all(|x| x.is_finite()));
        assert!((parallel[n / 2] - 0.5).abs() < 0.01);
    }

    #[test]
    fn a_set_stop_flag_ends_serial_and_parallel_runs() {
        let stop = AtomicBool::new(true);
        for n in [10, PARALLEL_SOURCES + 50] {
            for weighted in [false, true] {
                let g = path_graph(n, if weighted { 2.5 } else { 1.0 });
                let run = |stop| stoppable_betweenness(&g, false, weighted, true, None, stop);
                assert_eq!(run(&stop), Err(interrupted()));
                assert_eq!(
                    run(&AtomicBool::new(false)),
                    betweenness(&g, false, weighted, true, None)
                );
            }
        }
    }

    /// A random graph of `n` nodes and `m` relationships, weights 1 to 9 (all 1 if not
    /// `weighted`).
    fn random_graph(n: usize, m: usize, weighted: bool, seed: u64) -> Snapshot {
        let mut rng = SplitMix::new(seed);
        let mut s = Store::default();
        for i in 0..n {
            s.add_entity(i.to_string(), String::new(), Value::Null)
                .unwrap();
        }
        let k = s.intern("k");
        for _ in 0..m {
            let (a, b) = (rng.below(n) as u32, rng.below(n) as u32);
            let w = if weighted {
                1.0 + rng.below(9) as f64
            } else {
                1.0
            };
            s.push_relationship(a, b, k, w);
        }
        Snapshot::build(&s).unwrap()
    }

    fn bits(scores: &[f64]) -> Vec<u64> {
        scores.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn parallel_runs_give_the_same_bits_whatever_the_thread_count() {
        let never = AtomicBool::new(false);
        let n = PARALLEL_SOURCES + 60;
        let mut sample: Vec<u32> = (0..n as u32).collect();
        SplitMix::new(3).shuffle(&mut sample);
        sample.truncate(PARALLEL_SOURCES + 10);
        for weighted in [false, true] {
            let g = random_graph(n, 3 * n, weighted, 11);
            for directed in [false, true] {
                for sources in [None, Some(&sample[..])] {
                    let run = |on_pool: &dyn Fn(&PoolSum<'_>) -> Option<CoreResult<Vec<f64>>>| {
                        betweenness_with_pool(
                            &g, directed, weighted, true, sources, &never, on_pool,
                        )
                        .unwrap()
                    };
                    // Without a pool the chunks are summed on this thread, in order.
                    let expected = bits(&run(&|_| None));
                    assert!(expected.iter().any(|&x| f64::from_bits(x) > 0.0));
                    for threads in [1, 2, 3, 7] {
                        let pool = rayon::ThreadPoolBuilder::new()
                            .num_threads(threads)
                            .build()
                            .unwrap();
                        for _ in 0..2 {
                            let got = run(&|sum| Some(pool.install(|| sum(threads))));
                            assert_eq!(bits(&got), expected, "{threads} threads");
                        }
                    }
                    let public = betweenness(&g, directed, weighted, true, sources).unwrap();
                    assert_eq!(bits(&public), expected);
                }
            }
        }
    }

    /// The sum by `pass` over `sources` into `n` slots, by `workers` workers whose waiting
    /// chunks' copies take at most `copy_limit` slots.
    fn ordered_sum_of(
        n: usize,
        sources: &[u32],
        workers: usize,
        copy_limit: usize,
        stop: &AtomicBool,
        pass: impl Fn(&mut Scratch, &mut Partial, u32) + Sync,
    ) -> CoreResult<Vec<f64>> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .build()
            .unwrap();
        pool.install(|| {
            let mut sum = OrderedSum::new(n, sources, &pass, stop, workers)?;
            sum.copy_limit = copy_limit;
            sum.on_pool(workers)
        })
    }

    #[test]
    fn chunks_are_added_in_order_whichever_completes_first() {
        let never = AtomicBool::new(false);
        let n = 64;
        let sources: Vec<u32> = (0..40 * SOURCES_PER_CHUNK as u32).collect();
        // Source `s` adds values whose float sum depends on the order of the additions to a
        // few nodes (a chunk's row lists them) or, every fifth, to all (its row is whole).
        let value = |s: u32, w: u32| {
            if (s + w).is_multiple_of(3) {
                1e16
            } else {
                1.0 + f64::from(s) / 7.0
            }
        };
        let targets = |s: u32| {
            if s.is_multiple_of(5) {
                0..n as u32
            } else {
                s % 8..s % 8 + 2
            }
        };
        let mut expected = vec![0.0; n];
        for chunk in sources.chunks(SOURCES_PER_CHUNK) {
            let mut row = vec![0.0; n];
            for &s in chunk {
                for w in targets(s) {
                    row[w as usize] += value(s, w);
                }
            }
            expected.iter_mut().zip(row).for_each(|(x, y)| *x += y);
        }
        let mut in_one = vec![0.0; n];
        for &s in &sources {
            for w in targets(s) {
                in_one[w as usize] += value(s, w);
            }
        }
        assert_ne!(bits(&expected), bits(&in_one), "the order must matter");
        // The first chunks are slow: later ones complete first and wait, as copies or (once
        // the copies may take no more slots) with their rows, for which workers wait.
        let pass = |_: &mut Scratch, partial: &mut Partial, s: u32| {
            if (s as usize) < 2 * SOURCES_PER_CHUNK {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            for w in targets(s) {
                partial.add(w, value(s, w));
            }
        };
        for workers in [1, 2, 4] {
            for copy_limit in [0, 3 * n, WAITING_COPY_SLOTS] {
                let total = ordered_sum_of(n, &sources, workers, copy_limit, &never, pass).unwrap();
                assert_eq!(bits(&total), bits(&expected), "{workers} workers");
            }
        }
    }

    #[test]
    fn a_stop_or_panic_mid_run_ends_every_worker() {
        let sources: Vec<u32> = (0..40 * SOURCES_PER_CHUNK as u32).collect();
        let slow_first = |s: u32| {
            if s == 0 {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        };
        // Workers waiting for the slow first chunk's slot are woken, and the run fails.
        let stop = AtomicBool::new(false);
        let stopping = |_: &mut Scratch, partial: &mut Partial, s: u32| {
            slow_first(s);
            if s == 30 {
                stop.store(true, Ordering::Relaxed);
            }
            partial.add(0, 1.0);
        };
        let result = ordered_sum_of(2, &sources, 4, 0, &stop, stopping);
        assert_eq!(result, Err(interrupted()));
        // A panicking pass reaches the caller rather than leaving the others waiting.
        let never = AtomicBool::new(false);
        let panicking = |_: &mut Scratch, partial: &mut Partial, s: u32| {
            slow_first(s);
            assert_ne!(s, 0, "a failing pass");
            partial.add(0, 1.0);
        };
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ordered_sum_of(2, &sources, 4, 0, &never, panicking)
        }));
        assert!(caught.is_err());
    }

    #[test]
    fn only_long_runs_are_worth_stopping() {
        let g = path_graph(1000, 1.0); // 1000 nodes, 999 relationships
        assert!(!worth_stopping(&g, 10));
        assert!(worth_stopping(&g, 1000));
        assert!(worth_stopping(&g, usize::MAX));
    }
}
