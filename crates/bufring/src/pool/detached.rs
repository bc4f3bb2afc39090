//! Pools on ring memory that no kernel reads, driven by the kernel model instead. Feature
//! `model`.

use std::sync::Arc;

use super::{Pool, PoolBuilder};
use crate::error::Result;
use crate::mem::Mmap;
use crate::model::ModelRing;

impl PoolBuilder {
    /// Builds the pool on a ring that is registered with no kernel, and returns it with the
    /// handle a [`KernelModel`](crate::model::KernelModel) plays the kernel's part through.
    /// Everything else (buffers, posting, completions, recycling) is the ordinary pool.
    pub fn build_detached(self) -> Result<(Pool, ModelRing)> {
        self.build_detached_at(0)
    }

    /// [`build_detached`](Self::build_detached) with the ring's tail (and the model's head)
    /// starting at `start` instead of 0, to reach the 16-bit wrap of tail and head quickly.
    pub fn build_detached_at(self, start: u16) -> Result<(Pool, ModelRing)> {
        self.validate()?;
        let region = Mmap::anonymous(self.count * self.buf_len, self.huge_pages)?;
        let (ring, view) = self.ring_builder().detached(start)?;
        let (entries, incremental, min_left) =
            (ring.entries(), ring.is_incremental(), ring.min_left());
        let pool = self.build_on(region, ring);
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
