//! Keyed FastCDC content-defined chunking.
//!
//! File contents are cut into variable-size chunks at positions chosen by the data itself, so that an
//! insertion or deletion only changes the chunks around it and everything else still deduplicates.
//! The algorithm is FastCDC's (Xia et al.): a gear rolling hash, no cut points considered in the
//! first `min` bytes of a chunk, and two bytes rolled per step. It deliberately leaves out FastCDC's
//! *normalized chunking* (a stricter test before the average size, a looser one after): that makes
//! whether a position is a cut depend on where the chunk started, so after an edit the boundaries
//! take several chunks to fall back into step. On the benchmark's "next night" (1 MiB overwrites,
//! an insertion, appends) it stored about 25% more new data than this position-independent test,
//! which cuts wherever the hash's top bits fall below a threshold chosen so that chunks average
//! `avg` bytes: `min` plus a geometric gap of mean `avg - min`, as restic's Rabin chunker does.
//!
//! The gear table is derived from a per-repository seed. With a public table, the sizes of the stored
//! (encrypted) chunks would reveal whether a repository holds a known file; restic guards against
//! that with a random Rabin polynomial, and a keyed gear table does the same job here.
//!
//! [`Chunker::next_cut`] works on a slice; [`chunk_reader`] drives it over any [`std::io::Read`].

use std::io::{self, Read};

/// Chunk size bounds, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerParams {
    /// No chunk except the last one of a stream is shorter than this.
    pub min: usize,
    /// The size the cut-point masks are tuned for; a power of two.
    pub avg: usize,
    /// No chunk is longer than this.
    pub max: usize,
}

impl ChunkerParams {
    /// restic-like sizes for files: 512 KiB min, 1 MiB average, 8 MiB max.
    pub const FILES: ChunkerParams = ChunkerParams { min: 512 << 10, avg: 1 << 20, max: 8 << 20 };

    /// Checked constructor.
    ///
    /// # Panics
    ///
    /// Unless `64 <= min <= avg <= max`, `avg` is a power of two and `avg <= 2^48`.
    pub fn new(min: usize, avg: usize, max: usize) -> ChunkerParams {
        let params = ChunkerParams { min, avg, max };
        params.validate();
        params
    }

    fn validate(&self) {
        let ChunkerParams { min, avg, max } = *self;
        assert!(min >= WINDOW, "chunker min size {min} is below {WINDOW} bytes");
        assert!(
            min <= avg && avg <= max,
            "chunker sizes must satisfy min <= avg <= max, got {min}/{avg}/{max}"
        );
        assert!(avg.is_power_of_two(), "chunker average size {avg} is not a power of two");
        // The strict mask needs log2(avg) + 2 bits below bit 63 of the hash.
        assert!(avg.trailing_zeros() <= 48, "chunker average size {avg} is too large");
    }
}

/// Bytes of history the 64-bit gear hash depends on: each step shifts older bytes out by one bit.
const WINDOW: usize = 64;

/// A keyed FastCDC chunker. Immutable once built, so one instance can serve many threads by reference.
#[derive(Clone)]
pub struct Chunker {
    gear: [u64; 256],
    /// `gear[b] << 1`, so two bytes can be rolled with one shift (FastCDC 2020 "rolling two bytes").
    gear_shifted: [u64; 256],
    /// A position is a cut point when bits 62..31 of the hash, as a
    /// number, fall below this (see [`Chunker::is_cut`]).
    threshold: u32,
    params: ChunkerParams,
}

impl std::fmt::Debug for Chunker {
    // The gear table is key material derived from the repository's seed; keep it out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker").field("params", &self.params).finish_non_exhaustive()
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Chunker {
    /// A chunker whose cut points are determined by `seed`: the same seed and parameters always cut
    /// the same data at the same places.
    ///
    /// # Panics
    ///
    /// If `params` breaks the rules of [`ChunkerParams::new`] (the fields are public, so a literal
    /// could bypass that check).
    pub fn new(seed: u64, params: ChunkerParams) -> Chunker {
        params.validate();
        // Domain-separate the table from any other use of the same seed.
        let mut state = seed ^ 0x6361_6972_6e2d_6364; // "cairn-cd"
        let mut gear = [0u64; 256];
        for entry in &mut gear {
            *entry = splitmix64(&mut state);
        }
        let gear_shifted = gear.map(|g| g << 1);
        // Each candidate is a cut with probability threshold / 2^32, so the
        // gap after `min` averages 2^32 / threshold = avg - min bytes.
        let gap = (params.avg - params.min).max(1) as u64;
        let threshold = ((1u64 << 32) / gap).min(u64::from(u32::MAX)) as u32;
        Chunker { gear, gear_shifted, threshold, params }
    }

    /// The size bounds this chunker was built with.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Returns the length of the next chunk at the start of `data`.
    ///
    /// The result is `data.len()` if that is at most `min`, and never more than
    /// `min(max, data.len())`. When `data.len() < max` and no cut point is found, the result is
    /// `data.len()`: the chunker cannot tell "end of input" from "more to come", so a streaming
    /// caller must pass at least `max` bytes unless it really is at the end of its input, or the
    /// chunk boundaries will depend on how the input was buffered. [`chunk_reader`] does this.
    pub fn next_cut(&self, data: &[u8]) -> usize {
        let ChunkerParams { min, max, .. } = self.params;
        if data.len() <= min {
            return data.len();
        }
        let limit = data.len().min(max);
        // Prime the hash with the window before the first candidate, so whether a position is a cut
        // candidate depends only on the bytes around it, never on where the chunk started.
        let mut hash = 0u64;
        for &b in &data[min - WINDOW..min - 1] {
            hash = (hash << 1).wrapping_add(self.gear[usize::from(b)]);
        }
        // A cut after the byte at index `i` yields a chunk of `i + 1` bytes.
        self.scan(&data[..limit], min - 1, hash).unwrap_or(limit)
    }

    /// The cut test on a true hash value. Bit 63 is left out so the test
    /// can also run on the hash shifted left by one (the two-byte step).
    #[inline(always)]
    fn is_cut(&self, hash: u64) -> bool {
        (((hash << 1) >> 32) as u32) < self.threshold
    }

    /// Rolls the hash over `data[from..]` and returns the chunk length at the first cut point.
    #[inline(always)]
    fn scan(&self, data: &[u8], from: usize, mut h: u64) -> Option<usize> {
        let region = &data[from..];
        let mut pairs = region.chunks_exact(2);
        let mut pos = from;
        for pair in &mut pairs {
            // After the first step `h` is the true hash shifted left by one, whose top 32 bits are
            // exactly the bits `is_cut` tests; adding the second byte's plain gear value then
            // completes the true hash.
            h = (h << 2).wrapping_add(self.gear_shifted[usize::from(pair[0])]);
            if ((h >> 32) as u32) < self.threshold {
                return Some(pos + 1);
            }
            h = h.wrapping_add(self.gear[usize::from(pair[1])]);
            if self.is_cut(h) {
                return Some(pos + 2);
            }
            pos += 2;
        }
        for &b in pairs.remainder() {
            h = (h << 1).wrapping_add(self.gear[usize::from(b)]);
            if self.is_cut(h) {
                return Some(pos + 1);
            }
            pos += 1;
        }
        None
    }
}

/// Splits everything read from `reader` into chunks, calling `f` with each chunk in order.
///
/// The chunks are exactly those [`Chunker::next_cut`] would produce over the whole input at once,
/// however the reader splits its reads. `buf` is grown once to `2 * max` bytes and reused across
/// calls: a reader thread handling thousands of small files must not allocate (and zero) a
/// max-sized buffer per file. Reads interrupted by a signal are retried; any other error, from the
/// reader or from `f`, stops chunking and is returned.
///
/// Returns the total number of bytes read.
pub fn chunk_reader<R: Read>(
    chunker: &Chunker,
    buf: &mut Vec<u8>,
    mut reader: R,
    mut f: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let max = chunker.params.max;
    if buf.len() < 2 * max {
        buf.resize(2 * max, 0);
    }
    let mut start = 0;
    let mut end = 0;
    let mut eof = false;
    let mut total = 0u64;
    loop {
        // A cut is only final once `max` bytes are in view (or the input has ended).
        while !eof && end - start < max {
            if start + max > buf.len() {
                // Too little room left behind the pending bytes: slide them to the front. At most
                // `max` bytes move, and only after at least `max` bytes were consumed.
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            }
            match reader.read(&mut buf[end..]) {
                Ok(0) => eof = true,
                Ok(n) => {
                    end += n;
                    total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if start == end {
            return Ok(total);
        }
        let len = chunker.next_cut(&buf[start..end]);
        f(&buf[start..start + len])?;
        start += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: good enough to stand in for incompressible file contents.
    struct TestRng(u64);

    impl TestRng {
        fn new(seed: u64) -> TestRng {
            TestRng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
        }

        fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            let mut out = Vec::with_capacity(len + 8);
            while out.len() < len {
                out.extend_from_slice(&self.next_u64().to_le_bytes());
            }
            out.truncate(len);
            out
        }
    }

    const SMALL: ChunkerParams = ChunkerParams { min: 16 << 10, avg: 64 << 10, max: 256 << 10 };
    const MIB: usize = 1 << 20;

    fn chunk_lengths(chunker: &Chunker, mut data: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let len = chunker.next_cut(data);
            assert!(len > 0);
            out.push(len);
            data = &data[len..];
        }
        out
    }

    /// The chunks as (offset, length) pairs, for comparing chunkings of different buffers.
    fn chunks<'a>(data: &'a [u8], lengths: &[usize]) -> Vec<&'a [u8]> {
        let mut offset = 0;
        lengths
            .iter()
            .map(|&len| {
                offset += len;
                &data[offset - len..offset]
            })
            .collect()
    }

    #[test]
    fn params_constructor_accepts_valid_sizes() {
        assert_eq!(ChunkerParams::new(512 << 10, 1 << 20, 8 << 20), ChunkerParams::FILES);
        assert_eq!(ChunkerParams::new(64, 64, 64), ChunkerParams { min: 64, avg: 64, max: 64 });
    }

    #[test]
    #[should_panic(expected = "power of two")]
    fn params_reject_non_power_of_two_average() {
        ChunkerParams::new(1000, 3000, 9000);
    }

    #[test]
    #[should_panic(expected = "min <= avg <= max")]
    fn params_reject_unordered_sizes() {
        ChunkerParams::new(4096, 2048, 8192);
    }

    #[test]
    #[should_panic(expected = "below 64")]
    fn params_reject_tiny_minimum() {
        ChunkerParams::new(32, 64, 128);
    }

    #[test]
    fn short_inputs_are_one_chunk() {
        let chunker = Chunker::new(1, SMALL);
        assert_eq!(chunker.next_cut(&[]), 0);
        let data = TestRng::new(1).bytes(SMALL.min);
        assert_eq!(chunker.next_cut(&data), SMALL.min);
        assert_eq!(chunker.next_cut(&data[..10]), 10);
    }

    #[test]
    fn zeros_cut_at_max() {
        // No content variation means no cut point; the max bound has to do the work.
        let chunker = Chunker::new(7, SMALL);
        let data = vec![0u8; 3 * SMALL.max + 5];
        let lengths = chunk_lengths(&chunker, &data);
        assert_eq!(lengths, [SMALL.max, SMALL.max, SMALL.max, 5]);
    }

    #[test]
    fn same_seed_same_cuts() {
        let data = TestRng::new(2).bytes(8 * MIB);
        let a = chunk_lengths(&Chunker::new(42, SMALL), &data);
        let b = chunk_lengths(&Chunker::new(42, SMALL), &data);
        assert!(a.len() > 50);
        assert_eq!(a, b);
    }

    #[test]
    fn different_seeds_cut_differently() {
        let data = TestRng::new(3).bytes(8 * MIB);
        let a = chunk_lengths(&Chunker::new(1, SMALL), &data);
        let b = chunk_lengths(&Chunker::new(2, SMALL), &data);
        let offsets = |lengths: &[usize]| {
            lengths
                .iter()
                .scan(0, |at, len| {
                    *at += len;
                    Some(*at)
                })
                .collect::<std::collections::HashSet<usize>>()
        };
        let (a, b) = (offsets(&a), offsets(&b));
        // Only the end of the data is a guaranteed common boundary; chance agreements are rare.
        let shared = a.intersection(&b).count();
        assert!(shared * 10 < a.len().min(b.len()), "{shared} of {} cut points shared", a.len());
    }

    #[test]
    fn chunks_respect_bounds_and_reassemble() {
        for (seed, params) in [(5, SMALL), (6, ChunkerParams::FILES), (7, ChunkerParams::new(64, 256, 1024))]
        {
            let data = TestRng::new(seed).bytes(24 * MIB + 12345);
            let chunker = Chunker::new(seed, params);
            let lengths = chunk_lengths(&chunker, &data);
            let (last, rest) = lengths.split_last().unwrap();
            for &len in rest {
                assert!((params.min..=params.max).contains(&len), "{len} outside {params:?}");
            }
            assert!(*last <= params.max);
            assert_eq!(chunks(&data, &lengths).concat(), data);
        }
    }

    fn assert_mean_near_avg(params: ChunkerParams) {
        let data = TestRng::new(8).bytes(64 * MIB);
        let lengths = chunk_lengths(&Chunker::new(0x5eed, params), &data);
        let mean = data.len() as f64 / lengths.len() as f64;
        let ratio = mean / params.avg as f64;
        assert!((0.75..=1.25).contains(&ratio), "mean chunk {mean:.0} is {ratio:.3} x avg for {params:?}");
    }

    #[test]
    fn mean_size_near_average_for_files() {
        assert_mean_near_avg(ChunkerParams::FILES);
    }

    #[test]
    fn mean_size_near_average_for_small_config() {
        assert_mean_near_avg(SMALL);
    }

    /// Fraction of `b`'s bytes that lie in chunks also present in `a`.
    fn shared_fraction(a: &[u8], b: &[u8], chunker: &Chunker) -> f64 {
        let old: std::collections::HashSet<&[u8]> =
            chunks(a, &chunk_lengths(chunker, a)).into_iter().collect();
        let new = chunks(b, &chunk_lengths(chunker, b));
        let shared: usize = new.iter().filter(|c| old.contains(*c)).map(|c| c.len()).sum();
        shared as f64 / b.len() as f64
    }

    #[test]
    fn insertion_only_disturbs_nearby_chunks() {
        let mut rng = TestRng::new(9);
        let data = rng.bytes(32 * MIB);
        let mut edited = data.clone();
        let middle = data.len() / 2 + 777;
        edited.splice(middle..middle, rng.bytes(100));
        for params in [SMALL, ChunkerParams::FILES] {
            let fraction = shared_fraction(&data, &edited, &Chunker::new(10, params));
            assert!(fraction >= 0.9, "only {fraction:.3} of bytes still shared for {params:?}");
        }
    }

    #[test]
    fn deletion_only_disturbs_nearby_chunks() {
        let data = TestRng::new(11).bytes(32 * MIB);
        let mut edited = data.clone();
        edited.drain(data.len() / 3..data.len() / 3 + 100);
        let fraction = shared_fraction(&data, &edited, &Chunker::new(12, SMALL));
        assert!(fraction >= 0.9, "only {fraction:.3} of bytes still shared");
    }

    /// Hands out between 1 and 4096 bytes per read, with an occasional `Interrupted`.
    struct StutteringReader<'a> {
        data: &'a [u8],
        rng: TestRng,
    }

    impl Read for StutteringReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.rng.below(16) == 0 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = (1 + self.rng.below(4096)).min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// Random stretches alternating with runs of zeros. Zeros never produce a cut point, so the runs
    /// force chunks that end at the `max` bound, which only come out right if the reader keeps `max`
    /// bytes in view.
    fn random_and_zero_runs(rng: &mut TestRng, len: usize, max: usize) -> Vec<u8> {
        let mut data = Vec::with_capacity(len);
        while data.len() < len {
            let random_len = rng.below(2 * max);
            data.extend_from_slice(&rng.bytes(random_len));
            data.resize(data.len() + rng.below(3 * max), 0);
        }
        data.truncate(len);
        data
    }

    #[test]
    fn reader_matches_slice_chunking() {
        let mut rng = TestRng::new(13);
        for (params, len) in [(SMALL, 6 * MIB + 321), (ChunkerParams::new(64, 128, 512), 300_000)] {
            let chunker = Chunker::new(14, params);
            let inputs = [rng.bytes(len), random_and_zero_runs(&mut rng, len, params.max)];
            for data in &inputs {
                let expected = chunks(data, &chunk_lengths(&chunker, data));
                let mut got = Vec::new();
                let reader = StutteringReader { data, rng: TestRng::new(15) };
                let total = chunk_reader(&chunker, &mut Vec::new(), reader, |chunk| {
                    got.push(chunk.to_vec());
                    Ok(())
                })
                .unwrap();
                assert_eq!(total, data.len() as u64);
                assert_eq!(got.len(), expected.len());
                assert!(got.iter().zip(&expected).all(|(g, e)| g == e));
            }
        }
    }

    #[test]
    fn reader_handles_empty_and_tiny_inputs() {
        let chunker = Chunker::new(16, SMALL);
        let mut got = Vec::new();
        let mut collect = |chunk: &[u8]| {
            got.push(chunk.to_vec());
            Ok(())
        };
        assert_eq!(chunk_reader(&chunker, &mut Vec::new(), io::empty(), &mut collect).unwrap(), 0);
        assert_eq!(chunk_reader(&chunker, &mut Vec::new(), &b"hello"[..], &mut collect).unwrap(), 5);
        assert_eq!(got, [b"hello".to_vec()]);
    }

    #[test]
    fn reader_propagates_errors() {
        let chunker = Chunker::new(17, SMALL);
        let data = TestRng::new(18).bytes(2 * MIB);
        let mut seen = 0;
        let err = chunk_reader(&chunker, &mut Vec::new(), &data[..], |_| {
            seen += 1;
            if seen == 3 { Err(io::Error::other("stop")) } else { Ok(()) }
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "stop");
        assert_eq!(seen, 3);

        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::ErrorKind::PermissionDenied.into())
            }
        }
        let err = chunk_reader(&chunker, &mut Vec::new(), Broken, |_| Ok(())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    }

    /// Cut points must be a function of content alone: the two-byte rolling step must agree with
    /// a plain byte-at-a-time reference.
    #[test]
    fn matches_byte_at_a_time_reference() {
        fn reference(c: &Chunker, data: &[u8]) -> usize {
            let ChunkerParams { min, max, .. } = c.params;
            if data.len() <= min {
                return data.len();
            }
            let limit = data.len().min(max);
            let mut h = 0u64;
            for (i, &b) in data[..limit].iter().enumerate().skip(min - WINDOW) {
                h = (h << 1).wrapping_add(c.gear[usize::from(b)]);
                let len = i + 1;
                if len >= min && c.is_cut(h) {
                    return len;
                }
            }
            limit
        }
        let mut rng = TestRng::new(19);
        for params in [
            ChunkerParams::new(64, 64, 64),
            ChunkerParams::new(64, 128, 4096),
            ChunkerParams::new(65, 256, 999),
        ] {
            let chunker = Chunker::new(rng.next_u64(), params);
            for _ in 0..2000 {
                let len = rng.below(2 * params.max + 2);
                let data = rng.bytes(len);
                assert_eq!(chunker.next_cut(&data), reference(&chunker, &data), "{params:?} len {len}");
            }
        }
    }

    #[test]
    fn reader_buffer_reused_across_inputs_gives_the_same_chunks() {
        let chunker = Chunker::new(9, ChunkerParams::new(1 << 10, 4 << 10, 16 << 10));
        let first = TestRng::new(1).bytes(100_000);
        let second = TestRng::new(2).bytes(50_000);
        let collect = |buf: &mut Vec<u8>, data: &[u8]| {
            let mut out = Vec::new();
            chunk_reader(&chunker, buf, data, |c| {
                out.push(c.to_vec());
                Ok(())
            })
            .unwrap();
            out
        };
        let mut shared = Vec::new();
        let _ = collect(&mut shared, &first);
        assert_eq!(collect(&mut shared, &second), collect(&mut Vec::new(), &second));
    }
}
