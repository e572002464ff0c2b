//! Fallible allocation of the buffers the graph's algorithms size by the graph (one slot per
//! entity or per relationship).
//!
//! Rust's infallible allocations (`vec![x; n]`, `Vec::with_capacity`, `collect`) abort the
//! whole interpreter when memory runs out, as it does under a container's memory limit or
//! `RLIMIT_AS`. These return a [`CoreError::Graph`] "out of memory" instead, which reaches
//! Python as `GraphError`, the class every caller of the graph catches. Buffers that grow
//! with what a search finds (a traversal's output) grow as usual.

use crate::errors::{try_filled_for, try_reserve_for, CoreError, CoreResult};

/// `len` copies of `value`.
///
/// # Errors
/// [`CoreError::Graph`] "out of memory" when it cannot be allocated.
pub fn filled<T: Clone>(len: usize, value: T, what: &str) -> CoreResult<Vec<T>> {
    try_filled_for(CoreError::Graph, len, value, what)
}

/// An empty vector with room for `capacity` items.
///
/// # Errors
/// [`CoreError::Graph`] "out of memory" when it cannot be allocated.
pub fn with_capacity<T>(capacity: usize, what: &str) -> CoreResult<Vec<T>> {
    let mut values = Vec::new();
    reserve(&mut values, capacity, what)?;
    Ok(values)
}

/// Room for `extra` more items in `values`.
///
/// # Errors
/// [`CoreError::Graph`] "out of memory" when it cannot be allocated.
pub fn reserve<T>(values: &mut Vec<T>, extra: usize, what: &str) -> CoreResult<()> {
    try_reserve_for(CoreError::Graph, values, extra, what)
}

/// The items of `items`, collected into a vector allocated once, at their exact count.
///
/// # Errors
/// [`CoreError::Graph`] "out of memory" when it cannot be allocated.
pub fn collected<T>(items: impl ExactSizeIterator<Item = T>, what: &str) -> CoreResult<Vec<T>> {
    let mut values = with_capacity(items.len(), what)?;
    values.extend(items);
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_that_do_not_fit_are_graph_errors() {
        let too_many = usize::MAX / 4;
        for err in [
            filled(too_many, 0u64, "dist").err(),
            with_capacity::<u64>(too_many, "dist").err(),
            collected(0..too_many, "order").err(),
        ] {
            assert!(
                matches!(err, Some(CoreError::Graph(ref m)) if m.starts_with("out of memory: ")),
                "{err:?}"
            );
        }
        assert_eq!(filled(3, 1u8, "x").unwrap(), vec![1, 1, 1]);
        assert_eq!(collected(0..4u32, "x").unwrap(), vec![0, 1, 2, 3]);
        let v: Vec<u8> = with_capacity(5, "x").unwrap();
        assert!(v.is_empty() && v.capacity() >= 5);
    }
}
