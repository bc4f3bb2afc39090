//! The buffer policy's arithmetic, apart from any ring so that property tests can drive it:
//! how many buffers a pool keeps posted (elastic posting), and how much a receiver may hold
//! (its quota).

/// Elastic posting for one pool: keep posted what the traffic needs. Grow at once when the
/// kernel ran dry or the entries it has not used yet run low; shrink slowly, once per window,
/// by part of the slack the window never touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Elastic {
    /// Never fewer than this posted.
    pub(crate) min: u32,
    /// The pool's buffers.
    pub(crate) max: u32,
    pub(crate) target: u32,
    /// The fewest unused entries seen after a batch in the current window.
    window_low: u32,
}

impl Elastic {
    pub(crate) fn new(min: u32, max: u32, start: u32) -> Self {
        let min = min.clamp(1, max);
        Elastic {
            min,
            max,
            target: start.clamp(min, max),
            window_low: u32::MAX,
        }
    }

    /// Entries left unused below which the target grows.
    pub(crate) fn low_water(&self) -> u32 {
        (self.target / 4).max(2)
    }

    /// After a batch of completions: `available` entries the kernel has not used yet, and
    /// whether a receive found none (`starved`). Returns the new target if it changed.
    pub(crate) fn on_batch(&mut self, available: u32, starved: bool) -> Option<u32> {
        self.window_low = self.window_low.min(available);
        let old = self.target;
        if starved {
            self.target = self.target.saturating_mul(2).min(self.max);
        } else if available < self.low_water() {
            self.target = (self.target + (self.target / 2).max(2)).min(self.max);
        }
        (self.target != old).then_some(self.target)
    }

    /// Once per window (a second): give back half of the slack no batch of the window used.
    pub(crate) fn on_window(&mut self) -> Option<u32> {
        let low = std::mem::replace(&mut self.window_low, u32::MAX);
        let keep = 2 * self.low_water();
        let old = self.target;
        if low != u32::MAX && low > keep {
            self.target = self.target.saturating_sub((low - keep) / 2).max(self.min);
        }
        (self.target != old).then_some(self.target)
    }
}

/// The bytes one receiver may hold in its queue before its receive pauses: a fair share of the
/// pool among its receivers, at least `floor`, at most `ceiling`.
pub(crate) fn quota(pool_bytes: u64, receivers: usize, floor: usize, ceiling: usize) -> usize {
    let share = pool_bytes / receivers.max(1) as u64;
    (share.min(ceiling as u64) as usize).max(floor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Batch { used: u32, starved: bool },
        Window,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u32..64, any::<bool>()).prop_map(|(used, starved)| Step::Batch { used, starved }),
            1 => Just(Step::Window),
        ]
    }

    proptest! {
        /// Against a model of a ring: the target stays within [min, max]; a starved batch always
        /// grows it (unless at max); running low never shrinks it; a window only shrinks it, by
        /// at most half the slack, and never below `min`.
        #[test]
        fn elastic_target_follows_the_rules(
            min in 1u32..8, max in 1u32..512, start in 1u32..512,
            steps in proptest::collection::vec(step(), 1..200),
        ) {
            let mut e = Elastic::new(min, max, start);
            let min = e.min;
            for s in steps {
                let before = e.target;
                match s {
                    Step::Batch { used, starved } => {
                        // The model: the kernel holds `target` entries and used some of them.
                        let available = if starved { 0 } else { before.saturating_sub(used) };
                        let low = e.low_water();
                        e.on_batch(available, starved);
                        if starved || available < low {
                            prop_assert!(e.target > before || e.target == max);
                        } else {
                            prop_assert_eq!(e.target, before);
                        }
                    }
                    Step::Window => {
                        e.on_window();
                        prop_assert!(e.target <= before);
                        prop_assert!(e.target >= min.min(before));
                    }
                }
                prop_assert!(e.target >= min && e.target <= max);
            }
        }

        /// Steady demand converges: with `need` entries used per batch and a window after every
        /// few batches, the target ends within reach of the need (no runaway growth, no
        /// starvation), whatever it started at.
        #[test]
        fn elastic_target_converges_to_the_need(need in 1u32..200, start in 1u32..1024) {
            let mut e = Elastic::new(2, 1024, start);
            for _ in 0..200 {
                for _ in 0..4 {
                    let available = e.target.saturating_sub(need);
                    e.on_batch(available, available == 0);
                }
                e.on_window();
            }
            prop_assert!(e.target > need, "target {} for a need of {}", e.target, need);
            prop_assert!(e.target <= 2 * need + 16, "target {} for a need of {}", e.target, need);
        }

        /// Quotas are a fair share within their bounds, and all receivers' quotas together
        /// never exceed the pool unless the floor says so.
        #[test]
        fn quota_is_a_bounded_fair_share(
            pool in 1u64..(1 << 32), receivers in 1usize..10_000,
            floor in 1usize..(1 << 20), extra in 0usize..(1 << 24),
        ) {
            let ceiling = floor + extra;
            let q = quota(pool, receivers, floor, ceiling);
            prop_assert!(q >= floor && q <= ceiling);
            if q > floor {
                prop_assert!(q as u64 * receivers as u64 <= pool);
            }
        }
    }
}
