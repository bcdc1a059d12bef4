//! An answer's body collected chunk by chunk as Envoy passes it on: nothing
//! is held back from the user, and no more than the limit is ever kept.

/// Why an answer is not read (counted per role, never a `bad_output`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// The body is larger than `max_body_bytes`.
    TooLarge,
    /// The body is compressed (a `content-encoding` other than identity).
    Encoded,
}

impl Skip {
    pub const ALL: [Skip; 2] = [Skip::TooLarge, Skip::Encoded];

    pub fn as_str(self) -> &'static str {
        match self {
            Skip::TooLarge => "too_large",
            Skip::Encoded => "encoded",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Skip::TooLarge => 0,
            Skip::Encoded => 1,
        }
    }
}

/// A body being collected.
#[derive(Debug)]
pub struct BodyCollector {
    limit: usize,
    bytes: Vec<u8>,
    over: bool,
}

/// Where collecting stands after a chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Collected {
    /// More is to come.
    Partial,
    /// The whole body.
    Done(Vec<u8>),
    /// The body grew past the limit; what was kept is dropped.
    Skipped(Skip),
}

impl BodyCollector {
    /// Whether a response is read, from its headers: only a 2xx (`Err(None)`
    /// otherwise), not compressed, not announced larger than `limit` (each
    /// `Err(Some(skip))`, counted).
    pub fn for_response(
        status: Option<&[u8]>,
        content_encoding: Option<&[u8]>,
        content_length: Option<&[u8]>,
        limit: usize,
    ) -> Result<BodyCollector, Option<Skip>> {
        let is_2xx = status.is_some_and(|s| s.len() == 3 && s.first() == Some(&b'2'));
        if !is_2xx {
            return Err(None);
        }
        let identity = |e: &[u8]| {
            let e = e.trim_ascii();
            e.is_empty() || e.eq_ignore_ascii_case(b"identity")
        };
        if content_encoding.is_some_and(|e| !identity(e)) {
            return Err(Some(Skip::Encoded));
        }
        let announced = content_length
            .and_then(|l| std::str::from_utf8(l).ok())
            .and_then(|l| l.trim().parse::<u64>().ok());
        if announced.is_some_and(|n| n > limit as u64) {
            return Err(Some(Skip::TooLarge));
        }
        Ok(BodyCollector::new(limit))
    }

    pub fn new(limit: usize) -> BodyCollector {
        BodyCollector {
            limit,
            bytes: Vec::new(),
            over: false,
        }
    }

    /// Whether a chunk of `len` bytes is still wanted (a host call to copy
    /// it is made only then).
    pub fn wants(&self, len: usize) -> bool {
        !self.over && len > 0
    }

    /// Takes in the next chunk (`None`: not copied); `end` after the last.
    pub fn push(&mut self, chunk: Option<&[u8]>, len: usize, end: bool) -> Collected {
        if !self.over {
            if self.bytes.len().saturating_add(len) > self.limit {
                self.over = true;
                self.bytes = Vec::new();
            } else if let Some(c) = chunk {
                self.bytes.extend_from_slice(c);
            }
        }
        match (end, self.over) {
            (false, _) => Collected::Partial,
            (true, true) => Collected::Skipped(Skip::TooLarge),
            (true, false) => Collected::Done(std::mem::take(&mut self.bytes)),
        }
    }
}
