//! The bytes of an RDB (or of a `DUMP` payload) as the parser consumes
//! them: pieces arriving in order (from the network, from the repository),
//! a running CRC-64 over everything consumed, and the RDB's length and
//! string encodings, LZF included.
//!
//! Nothing is copied on the way: a string is handed to a [`ByteSink`] in
//! the slices it arrived in, so a 100 MiB value never sits in memory whole
//! (an LZF-compressed one is decompressed through its 8 KiB window).

use bytes::Bytes;

use super::RdbError;
use crate::crc64::Crc64;

/// Where the parser's bytes come from, in order.
pub trait Pieces {
    /// The next piece; `None` at the end; `Err` names why the source failed.
    fn next_piece(&mut self) -> Result<Option<Bytes>, String>;
}

/// One buffer, whole (a `DUMP` payload).
pub struct Whole(pub Option<Bytes>);

impl Pieces for Whole {
    fn next_piece(&mut self) -> Result<Option<Bytes>, String> {
        Ok(self.0.take())
    }
}

/// Pieces sent over a channel by another thread (the backup's network
/// task, the restore's reader); the channel closing is the end.
pub struct Received(pub flume::Receiver<Bytes>);

impl Pieces for Received {
    fn next_piece(&mut self) -> Result<Option<Bytes>, String> {
        Ok(self.0.recv().ok())
    }
}

/// Takes a string's bytes: its decoded length first, then the bytes in pieces.
pub trait ByteSink {
    fn begin(&mut self, len: u64);
    fn bytes(&mut self, data: &[u8]);
}

/// Collects small strings (keys, listpacks) whole.
impl ByteSink for Vec<u8> {
    fn begin(&mut self, len: u64) {
        self.reserve(len.min(64 << 20) as usize);
    }

    fn bytes(&mut self, data: &[u8]) {
        self.extend_from_slice(data);
    }
}

/// An RDB length, or the marker of a specially encoded string.
enum Length {
    Plain(u64),
    Encoded(u8),
}

/// LZF back references reach at most this far back.
const LZF_WINDOW: usize = 8192;
/// Decompressed bytes are handed on once this many are held.
const LZF_FLUSH: usize = 64 << 10;

/// The parser's input.
pub struct Input<P: Pieces> {
    pieces: P,
    cur: Bytes,
    pos: usize,
    /// Where in `cur` the bytes not yet in `crc` start.
    crc_from: usize,
    crc: Crc64,
    /// Bytes of the pieces before `cur`.
    before: u64,
    /// While recording, every byte consumed is also kept here (a value's
    /// bytes as they are, for a `DUMP` payload).
    record: Option<Vec<u8>>,
}

impl<P: Pieces> Input<P> {
    pub fn new(pieces: P) -> Input<P> {
        Input { pieces, cur: Bytes::new(), pos: 0, crc_from: 0, crc: Crc64::new(), before: 0, record: None }
    }

    /// Starts keeping every byte consumed (see [`Input::take_recording`]).
    pub fn start_recording(&mut self) {
        self.record = Some(Vec::new());
    }

    /// The bytes consumed since [`Input::start_recording`]; recording stops.
    pub fn take_recording(&mut self) -> Vec<u8> {
        self.record.take().unwrap_or_default()
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.before + self.pos as u64
    }

    pub fn corrupt(&self, what: impl Into<String>) -> RdbError {
        RdbError::Corrupt { offset: self.offset(), what: what.into() }
    }

    /// Moves to the next non-empty piece; `cur` must be consumed.
    fn fill(&mut self) -> Result<(), RdbError> {
        if self.next()? { Ok(()) } else { Err(RdbError::Truncated { offset: self.offset() }) }
    }

    fn next(&mut self) -> Result<bool, RdbError> {
        debug_assert_eq!(self.pos, self.cur.len());
        loop {
            self.crc.update(&self.cur[self.crc_from..]);
            self.before += self.cur.len() as u64;
            self.cur = Bytes::new();
            self.pos = 0;
            self.crc_from = 0;
            match self.pieces.next_piece().map_err(RdbError::Source)? {
                Some(piece) if piece.is_empty() => continue,
                Some(piece) => {
                    self.cur = piece;
                    return Ok(true);
                }
                None => return Ok(false),
            }
        }
    }

    pub fn u8(&mut self) -> Result<u8, RdbError> {
        if self.pos == self.cur.len() {
            self.fill()?;
        }
        let b = self.cur[self.pos];
        self.pos += 1;
        if let Some(r) = &mut self.record {
            r.push(b);
        }
        Ok(b)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], RdbError> {
        let mut out = [0u8; N];
        if self.cur.len() - self.pos >= N {
            out.copy_from_slice(&self.cur[self.pos..self.pos + N]);
            self.pos += N;
            if let Some(r) = &mut self.record {
                r.extend_from_slice(&out);
            }
        } else {
            for b in &mut out {
                *b = self.u8()?;
            }
        }
        Ok(out)
    }

    /// Hands the next `n` bytes to `f`, in the slices they arrived in.
    pub fn each(&mut self, mut n: u64, mut f: impl FnMut(&[u8])) -> Result<(), RdbError> {
        while n > 0 {
            if self.pos == self.cur.len() {
                self.fill()?;
            }
            let take = (self.cur.len() - self.pos).min(usize::try_from(n).unwrap_or(usize::MAX));
            let piece = &self.cur[self.pos..self.pos + take];
            if let Some(r) = &mut self.record {
                r.extend_from_slice(piece);
            }
            f(piece);
            self.pos += take;
            n -= take as u64;
        }
        Ok(())
    }

    /// The CRC-64 of everything consumed so far.
    pub fn checksum(&mut self) -> u64 {
        self.crc.update(&self.cur[self.crc_from..self.pos]);
        self.crc_from = self.pos;
        self.crc.value()
    }

    /// Whether every byte has been consumed and the source has ended.
    pub fn at_end(&mut self) -> Result<bool, RdbError> {
        if self.pos < self.cur.len() {
            return Ok(false);
        }
        Ok(!self.next()?)
    }

    fn length(&mut self) -> Result<Length, RdbError> {
        let b = self.u8()?;
        Ok(match b >> 6 {
            0 => Length::Plain(u64::from(b & 0x3f)),
            1 => Length::Plain((u64::from(b & 0x3f) << 8) | u64::from(self.u8()?)),
            2 => match b {
                0x80 => Length::Plain(u64::from(u32::from_be_bytes(self.array()?))),
                0x81 => Length::Plain(u64::from_be_bytes(self.array()?)),
                _ => return Err(self.corrupt(format!("unknown length encoding {b:#04x}"))),
            },
            _ => Length::Encoded(b & 0x3f),
        })
    }

    /// A length-encoded number (a count, a length, a database number, an id).
    pub fn number(&mut self) -> Result<u64, RdbError> {
        match self.length()? {
            Length::Plain(n) => Ok(n),
            Length::Encoded(e) => {
                Err(self.corrupt(format!("a length was expected, found string encoding {e}")))
            }
        }
    }

    /// An RDB string, decoded (integers as their decimal text, LZF
    /// decompressed), into `sink`.
    pub fn string(&mut self, sink: &mut impl ByteSink) -> Result<(), RdbError> {
        match self.length()? {
            Length::Plain(n) => {
                sink.begin(n);
                self.each(n, |piece| sink.bytes(piece))
            }
            Length::Encoded(width @ 0..=2) => {
                let v = match width {
                    0 => i64::from(self.u8()? as i8),
                    1 => i64::from(i16::from_le_bytes(self.array()?)),
                    _ => i64::from(i32::from_le_bytes(self.array()?)),
                };
                decimal(v, sink);
                Ok(())
            }
            Length::Encoded(3) => {
                let compressed = self.number()?;
                let len = self.number()?;
                self.lzf(compressed, len, sink)
            }
            Length::Encoded(e) => Err(self.corrupt(format!("unknown string encoding {e}"))),
        }
    }

    /// A string whole (keys, listpacks and other small containers).
    pub fn string_vec(&mut self) -> Result<Vec<u8>, RdbError> {
        let mut v = Vec::new();
        self.string(&mut v)?;
        Ok(v)
    }

    /// LZF: a control byte below 32 starts a run of that many plus one
    /// literal bytes; any other is a back reference of `(ctrl >> 5) + 2`
    /// bytes (7 meaning "plus the next byte") at distance
    /// `((ctrl & 31) << 8 | next byte) + 1`.
    fn lzf(&mut self, compressed: u64, len: u64, sink: &mut impl ByteSink) -> Result<(), RdbError> {
        sink.begin(len);
        let mut window: Vec<u8> = Vec::with_capacity((len as usize).min(LZF_FLUSH + LZF_WINDOW + 264));
        let mut flushed = 0u64;
        let mut left = compressed;
        let take = |left: &mut u64, input: &mut Self| -> Result<u8, RdbError> {
            if *left == 0 {
                return Err(input.corrupt("an LZF string ends inside a back reference"));
            }
            *left -= 1;
            input.u8()
        };
        while left > 0 {
            let ctrl = take(&mut left, self)?;
            if ctrl < 32 {
                let run = u64::from(ctrl) + 1;
                if run > left {
                    return Err(self.corrupt("an LZF literal run goes past the compressed string"));
                }
                self.each(run, |piece| window.extend_from_slice(piece))?;
                left -= run;
            } else {
                let mut n = usize::from(ctrl >> 5);
                if n == 7 {
                    n += usize::from(take(&mut left, self)?);
                }
                n += 2;
                let distance = (usize::from(ctrl & 0x1f) << 8 | usize::from(take(&mut left, self)?)) + 1;
                if distance > window.len() {
                    return Err(self.corrupt("an LZF back reference points before the string"));
                }
                let start = window.len() - distance;
                for i in 0..n {
                    window.push(window[start + i]);
                }
            }
            if flushed + window.len() as u64 > len {
                return Err(self.corrupt("an LZF string decompresses to more than its recorded length"));
            }
            if window.len() >= LZF_FLUSH + LZF_WINDOW {
                let out = window.len() - LZF_WINDOW;
                sink.bytes(&window[..out]);
                flushed += out as u64;
                window.drain(..out);
            }
        }
        sink.bytes(&window);
        flushed += window.len() as u64;
        if flushed != len {
            return Err(self.corrupt(format!(
                "an LZF string decompresses to {flushed} bytes, its recorded length is {len}"
            )));
        }
        Ok(())
    }
}

/// An integer's decimal text into `sink`, as Redis shows integer-encoded strings.
pub fn decimal(v: i64, sink: &mut impl ByteSink) {
    let text = v.to_string();
    sink.begin(text.len() as u64);
    sink.bytes(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces of a few bytes each, to cross every boundary.
    struct Split(Vec<Bytes>);

    impl Pieces for Split {
        fn next_piece(&mut self) -> Result<Option<Bytes>, String> {
            Ok(if self.0.is_empty() { None } else { Some(self.0.remove(0)) })
        }
    }

    fn split(data: &[u8], size: usize) -> Input<Split> {
        Input::new(Split(data.chunks(size).map(Bytes::copy_from_slice).collect()))
    }

    #[test]
    fn lengths_and_encoded_strings_decode_across_piece_boundaries() {
        let mut data = vec![0x05, 0x41, 0x2c, 0x80, 0, 1, 0, 0, 0x81, 0, 0, 0, 1, 0, 0, 0, 0];
        data.extend_from_slice(&[
            0x03, b'a', b'b', b'c', 0xc0, 0xfe, 0xc1, 0x39, 0x30, 0xc2, 0x15, 0xcd, 0x5b, 0x07,
        ]);
        for size in [1, 2, 3, 100] {
            let mut input = split(&data, size);
            assert_eq!(input.number().unwrap(), 5);
            assert_eq!(input.number().unwrap(), 0x12c);
            assert_eq!(input.number().unwrap(), 65536);
            assert_eq!(input.number().unwrap(), 1 << 32);
            assert_eq!(input.string_vec().unwrap(), b"abc");
            assert_eq!(input.string_vec().unwrap(), b"-2");
            assert_eq!(input.string_vec().unwrap(), b"12345");
            assert_eq!(input.string_vec().unwrap(), b"123456789");
            assert!(input.at_end().unwrap());
            assert_eq!(input.offset(), data.len() as u64);
        }
    }

    #[test]
    fn lzf_literals_and_overlapping_back_references() {
        // "abc", a back reference of 7 + 0 + 2 bytes at distance 3 (it overlaps
        // what it writes), then a one-byte run "Z".
        let compressed = [0x02, b'a', b'b', b'c', 0xe0, 0x00, 0x02, 0x00, b'Z'];
        let mut data = vec![0xc3, compressed.len() as u8, 13];
        data.extend_from_slice(&compressed);
        for size in [1, 4, 64] {
            let mut input = split(&data, size);
            assert_eq!(input.string_vec().unwrap(), b"abcabcabcabcZ", "pieces of {size}");
        }
        // The same bytes with a wrong recorded length, and with a reference before the start.
        let mut wrong = data.clone();
        wrong[2] = 14;
        assert!(matches!(split(&wrong, 64).string_vec(), Err(RdbError::Corrupt { .. })));
        let bad = [0xc3, 2, 3, 0x20, 0x05];
        assert!(matches!(split(&bad, 64).string_vec(), Err(RdbError::Corrupt { .. })));
    }

    #[test]
    fn long_lzf_strings_stream_through_the_window() {
        // 'x' then one maximal back reference at distance 1, repeated: 1 + n*264 bytes.
        let reps = 1000;
        let mut compressed = vec![0x00, b'x'];
        for _ in 0..reps {
            compressed.extend_from_slice(&[0xe0, 0xff, 0x00]);
        }
        let len = 1 + reps * 264;
        let mut data = vec![0xc3, 0x80];
        data.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
        data.push(0x80);
        data.extend_from_slice(&(len as u32).to_be_bytes());
        data.extend_from_slice(&compressed);
        struct Count(u64, u64, bool);
        impl ByteSink for Count {
            fn begin(&mut self, len: u64) {
                self.0 = len;
            }
            fn bytes(&mut self, data: &[u8]) {
                self.1 += data.len() as u64;
                self.2 &= data.iter().all(|&b| b == b'x');
            }
        }
        let mut sink = Count(0, 0, true);
        split(&data, 1000).string(&mut sink).unwrap();
        assert_eq!((sink.0, sink.1, sink.2), (len as u64, len as u64, true));
    }

    #[test]
    fn the_crc_covers_what_was_consumed() {
        let data = b"REDIS0010 and more".to_vec();
        let mut input = split(&data, 3);
        input.each(9, |_| {}).unwrap();
        assert_eq!(input.checksum(), crate::crc64::crc64(b"REDIS0010"));
        input.each(9, |_| {}).unwrap();
        assert_eq!(input.checksum(), crate::crc64::crc64(&data));
        assert!(matches!(input.u8(), Err(RdbError::Truncated { offset: 18 })));
    }
}
