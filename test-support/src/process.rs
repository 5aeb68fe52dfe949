//! Child processes that a failed test must not leave behind.

use std::ops::{Deref, DerefMut};
use std::process::Child;

/// A child process, killed (SIGKILL) and reaped when the guard is dropped: at the end of
/// the test, or when an assertion fails midway.
pub struct ChildGuard(Child);

// === impl ChildGuard ===

impl ChildGuard {
    pub fn new(child: Child) -> Self {
        ChildGuard(child)
    }

    /// Kills and reaps it now (a crash, as the test sees it): no graceful shutdown.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl From<Child> for ChildGuard {
    fn from(child: Child) -> Self {
        ChildGuard(child)
    }
}

impl Deref for ChildGuard {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}
