//! Several equivalent endpoints used one at a time: registry replicas for a sidecar, etcd
//! members for a registry.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Endpoints tried in turn: requests go to the one that answered last, and move on to the
/// next when it fails. Cheap to clone; clones share which endpoint is in use.
#[derive(Clone, Debug)]
pub struct Rotation<T> {
    items: Arc<[T]>,
    /// Index in `items` of the one in use.
    current: Arc<AtomicUsize>,
}

// === impl Rotation ===

impl<T> Rotation<T> {
    /// Starts with the first of `items`, which must not be empty.
    pub fn new(items: Vec<T>) -> Self {
        assert!(!items.is_empty(), "a rotation needs at least one endpoint");
        Rotation {
            items: items.into(),
            current: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How many endpoints there are: the most a request is tried.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Never true: a rotation holds at least one endpoint.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The endpoint in use, with its position (for [`Rotation::fail_over`]).
    pub fn current(&self) -> (usize, &T) {
        let at = self.current.load(Ordering::Relaxed) % self.items.len();
        (at, &self.items[at])
    }

    /// Moves on from the endpoint at `failed` to the next, unless another request that saw
    /// it fail already did: concurrent failures move on once, not once each.
    pub fn fail_over(&self, failed: usize) {
        let next = (failed + 1) % self.items.len();
        let _ = self
            .current
            .compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_move_on_once_and_wrap_around() {
        let r = Rotation::new(vec!["a", "b", "c"]);
        assert_eq!(r.current(), (0, &"a"));
        let clone = r.clone();
        // Two requests saw "a" fail: the second finds the rotation already moved.
        r.fail_over(0);
        clone.fail_over(0);
        assert_eq!(r.current(), (1, &"b"));
        r.fail_over(1);
        r.fail_over(2);
        assert_eq!(clone.current(), (0, &"a"));
    }
}
