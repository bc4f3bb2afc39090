//! Pools on ring memory that no kernel reads, driven by the kernel model instead. Feature
//! `model`.

use std::sync::Arc;

use super::{Backend, Feed, Incremental, Pool, PoolBuilder};
use crate::error::{Error, Result};
use crate::mem::Mmap;
use crate::model::ModelRing;

impl PoolBuilder {
    /// Builds the pool on a ring that is registered with no kernel, and returns it with the
    /// handle a [`KernelModel`](crate::model::KernelModel) plays the kernel's part through.
    /// Everything else (buffers, posting, completions, bundles, recycling) is the ordinary
    /// pool. `Incremental::Auto` means kernel incremental consumption here; the legacy
    /// backend has no ring and is refused.
    pub fn build_detached(self) -> Result<(Pool, ModelRing)> {
        self.build_detached_at(0)
    }

    /// [`build_detached`](Self::build_detached) with the ring's tail (and the model's head)
    /// starting at `start` instead of 0, to reach the 16-bit wrap of tail and head quickly.
    pub fn build_detached_at(self, start: u16) -> Result<(Pool, ModelRing)> {
        self.validate()?;
        if self.backend == Backend::Legacy {
            return Err(Error::config(
                "backend",
                "a detached pool needs a buffer ring, not legacy buffers",
            ));
        }
        let mode = match self.incremental {
            Incremental::Auto => Incremental::Kernel,
            m => m,
        };
        let region = Mmap::anonymous(self.count * self.buf_len, self.huge_pages)?;
        let (ring, view) = self
            .ring_builder(mode == Incremental::Kernel)
            .detached(start)?;
        let (entries, incremental, min_left) =
            (ring.entries(), ring.is_incremental(), ring.min_left());
        let pool = self.build_on(region, Feed::Ring(ring), mode);
        let model = ModelRing::new(
            view,
            entries,
            start,
            incremental,
            min_left,
            Arc::clone(&pool.shared),
            pool.count(),
        );
        Ok((pool, model))
    }
}
