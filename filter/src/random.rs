//! Uniform 64-bit draws for random role selection.
//!
//! Entropy comes from the host (`getrandom` → WASI `random_get`), fetched
//! 512 bytes at a time so that a request costs no host call most of the time.

const BATCH: usize = 512;

#[derive(Debug)]
pub(crate) struct RandomPool {
    buf: [u8; BATCH],
    used: usize,
}

impl Default for RandomPool {
    fn default() -> Self {
        RandomPool {
            buf: [0; BATCH],
            used: BATCH,
        }
    }
}

impl RandomPool {
    /// The next uniformly random `u64`, or `None` when the host has no
    /// entropy to give (the caller then fails safe to the baseline).
    pub(crate) fn next_u64(&mut self) -> Option<u64> {
        if self.used + 8 > BATCH {
            getrandom::fill(&mut self.buf).ok()?;
            self.used = 0;
        }
        let chunk: [u8; 8] = self.buf.get(self.used..self.used + 8)?.try_into().ok()?;
        self.used += 8;
        Some(u64::from_le_bytes(chunk))
    }
}
