//! The compact containers Redis stores small values in, each carried in an
//! RDB as one string: listpacks (Redis 7), ziplists (before 7), intsets
//! and zipmaps (before 2.6). Each decoder hands out the elements in order
//! and checks every length against the container's bounds, so a damaged
//! container is an error, never a read past its end.

/// One element: a string or an integer (which stands for its decimal text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem<'a> {
    Str(&'a [u8]),
    Int(i64),
}

impl Elem<'_> {
    /// Calls `f` with the element's bytes (an integer's decimal text).
    pub fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match self {
            Elem::Str(s) => f(s),
            Elem::Int(v) => f(v.to_string().as_bytes()),
        }
    }
}

/// A container decoder: hands each element to the callback, returns the count.
pub type Decoder = for<'a> fn(&'a [u8], &mut dyn FnMut(Elem<'a>)) -> Result<u64, String>;

fn slice(data: &[u8], at: usize, len: usize) -> Result<&[u8], String> {
    at.checked_add(len).and_then(|end| data.get(at..end)).ok_or_else(|| {
        format!("an element of {len} bytes at {at} runs past the container's {} bytes", data.len())
    })
}

fn le<const N: usize>(data: &[u8], at: usize) -> Result<[u8; N], String> {
    Ok(slice(data, at, N)?.try_into().expect("N bytes"))
}

/// A listpack: `u32 total bytes, u16 count`, entries, `0xff`. Each entry is
/// an encoding byte (with a string's length or an integer), its data, and
/// the entry's length again, backwards, for reverse walks.
pub fn listpack<'a>(data: &'a [u8], f: &mut dyn FnMut(Elem<'a>)) -> Result<u64, String> {
    if data.len() < 7 {
        return Err(format!("a listpack of {} bytes is too short", data.len()));
    }
    let total = u32::from_le_bytes(le(data, 0)?) as usize;
    if total != data.len() {
        return Err(format!("a listpack says it has {total} bytes but has {}", data.len()));
    }
    let recorded = u16::from_le_bytes(le(data, 4)?);
    let mut p = 6;
    let mut count = 0u64;
    loop {
        let b = *data.get(p).ok_or("a listpack has no end marker")?;
        if b == 0xff {
            if p + 1 != data.len() {
                return Err("a listpack has bytes after its end marker".into());
            }
            break;
        }
        let (elem, size) = if b & 0x80 == 0 {
            (Elem::Int(i64::from(b & 0x7f)), 1)
        } else if b & 0xc0 == 0x80 {
            let n = usize::from(b & 0x3f);
            (Elem::Str(slice(data, p + 1, n)?), 1 + n)
        } else if b & 0xe0 == 0xc0 {
            let v = (i64::from(b & 0x1f) << 8) | i64::from(*data.get(p + 1).ok_or("a listpack ends early")?);
            (Elem::Int(if v >= 1 << 12 { v - (1 << 13) } else { v }), 2)
        } else if b & 0xf0 == 0xe0 {
            let n =
                (usize::from(b & 0x0f) << 8) | usize::from(*data.get(p + 1).ok_or("a listpack ends early")?);
            (Elem::Str(slice(data, p + 2, n)?), 2 + n)
        } else {
            match b {
                0xf0 => {
                    let n = u32::from_le_bytes(le(data, p + 1)?) as usize;
                    (Elem::Str(slice(data, p + 5, n)?), 5 + n)
                }
                0xf1 => (Elem::Int(i64::from(i16::from_le_bytes(le(data, p + 1)?))), 3),
                0xf2 => {
                    let [x, y, z] = le::<3>(data, p + 1)?;
                    (Elem::Int(i64::from(i32::from_le_bytes([0, x, y, z]) >> 8)), 4)
                }
                0xf3 => (Elem::Int(i64::from(i32::from_le_bytes(le(data, p + 1)?))), 5),
                0xf4 => (Elem::Int(i64::from_le_bytes(le(data, p + 1)?)), 9),
                _ => return Err(format!("unknown listpack entry encoding {b:#04x}")),
            }
        };
        let backlen = match size {
            0..=127 => 1,
            128..16383 => 2,
            16383..2097151 => 3,
            2097151..268435455 => 4,
            _ => 5,
        };
        p += size + backlen;
        if p > data.len() {
            return Err("a listpack entry runs past the end".into());
        }
        count += 1;
        f(elem);
    }
    if recorded != u16::MAX && u64::from(recorded) != count {
        return Err(format!("a listpack says it holds {recorded} entries but holds {count}"));
    }
    Ok(count)
}

/// A ziplist: `u32 total bytes, u32 offset of the last entry, u16 count`,
/// entries, `0xff`. Each entry is the previous entry's length (1 or 5
/// bytes), an encoding (a string's length, or an integer's width, or a
/// small integer itself) and its data.
pub fn ziplist<'a>(data: &'a [u8], f: &mut dyn FnMut(Elem<'a>)) -> Result<u64, String> {
    if data.len() < 11 {
        return Err(format!("a ziplist of {} bytes is too short", data.len()));
    }
    let total = u32::from_le_bytes(le(data, 0)?) as usize;
    if total != data.len() {
        return Err(format!("a ziplist says it has {total} bytes but has {}", data.len()));
    }
    let recorded = u16::from_le_bytes(le(data, 8)?);
    let mut p = 10;
    let mut count = 0u64;
    loop {
        let b = *data.get(p).ok_or("a ziplist has no end marker")?;
        if b == 0xff {
            if p + 1 != data.len() {
                return Err("a ziplist has bytes after its end marker".into());
            }
            break;
        }
        p += match b {
            0..=253 => 1,
            254 => 5,
            255 => unreachable!("the end marker"),
        };
        let enc = *data.get(p).ok_or("a ziplist ends early")?;
        let (elem, size) = match enc >> 6 {
            0 => {
                let n = usize::from(enc & 0x3f);
                (Elem::Str(slice(data, p + 1, n)?), 1 + n)
            }
            1 => {
                let n = (usize::from(enc & 0x3f) << 8)
                    | usize::from(*data.get(p + 1).ok_or("a ziplist ends early")?);
                (Elem::Str(slice(data, p + 2, n)?), 2 + n)
            }
            2 if enc == 0x80 => {
                let n = u32::from_be_bytes(le(data, p + 1)?) as usize;
                (Elem::Str(slice(data, p + 5, n)?), 5 + n)
            }
            2 => return Err(format!("unknown ziplist string encoding {enc:#04x}")),
            _ => match enc {
                0xc0 => (Elem::Int(i64::from(i16::from_le_bytes(le(data, p + 1)?))), 3),
                0xd0 => (Elem::Int(i64::from(i32::from_le_bytes(le(data, p + 1)?))), 5),
                0xe0 => (Elem::Int(i64::from_le_bytes(le(data, p + 1)?)), 9),
                0xf0 => {
                    let [x, y, z] = le::<3>(data, p + 1)?;
                    (Elem::Int(i64::from(i32::from_le_bytes([0, x, y, z]) >> 8)), 4)
                }
                0xfe => (Elem::Int(i64::from(le::<1>(data, p + 1)?[0] as i8)), 2),
                0xf1..=0xfd => (Elem::Int(i64::from(enc & 0x0f) - 1), 1),
                _ => return Err(format!("unknown ziplist integer encoding {enc:#04x}")),
            },
        };
        p += size;
        if p > data.len() {
            return Err("a ziplist entry runs past the end".into());
        }
        count += 1;
        f(elem);
    }
    if recorded != u16::MAX && u64::from(recorded) != count {
        return Err(format!("a ziplist says it holds {recorded} entries but holds {count}"));
    }
    Ok(count)
}

/// An intset: `u32 width (2, 4 or 8), u32 count`, then the integers, little-endian.
pub fn intset<'a>(data: &'a [u8], f: &mut dyn FnMut(Elem<'a>)) -> Result<u64, String> {
    let width = u32::from_le_bytes(le(data, 0)?) as usize;
    let count = u32::from_le_bytes(le(data, 4)?) as usize;
    if !matches!(width, 2 | 4 | 8) || data.len() != 8 + width * count {
        return Err(format!(
            "an intset of {} bytes cannot hold {count} integers of {width} bytes",
            data.len()
        ));
    }
    for v in data[8..].chunks_exact(width) {
        f(Elem::Int(match width {
            2 => i64::from(i16::from_le_bytes(v.try_into().expect("2"))),
            4 => i64::from(i32::from_le_bytes(v.try_into().expect("4"))),
            _ => i64::from_le_bytes(v.try_into().expect("8")),
        }));
    }
    Ok(count as u64)
}

/// A zipmap (hashes before Redis 2.6): a count byte, then per pair the
/// key's length and bytes, the value's length, a count of free bytes, the
/// value and the free bytes; `0xff` at the end. Lengths are one byte, or
/// 254 and four bytes. Hands out key, value, key, value, ...; returns the pairs.
pub fn zipmap<'a>(data: &'a [u8], f: &mut dyn FnMut(Elem<'a>)) -> Result<u64, String> {
    let length = |p: usize| -> Result<(usize, usize), String> {
        match *data.get(p).ok_or("a zipmap ends early")? {
            n @ 0..=253 => Ok((usize::from(n), 1)),
            254 => Ok((u32::from_le_bytes(le(data, p + 1)?) as usize, 5)),
            _ => Err("a zipmap length is missing".into()),
        }
    };
    let mut p = 1;
    let mut pairs = 0u64;
    while *data.get(p).ok_or("a zipmap has no end marker")? != 0xff {
        let (klen, w) = length(p)?;
        let key = slice(data, p + w, klen)?;
        p += w + klen;
        let (vlen, w) = length(p)?;
        let free = usize::from(*data.get(p + w).ok_or("a zipmap ends early")?);
        let value = slice(data, p + w + 1, vlen)?;
        p += w + 1 + vlen + free;
        f(Elem::Str(key));
        f(Elem::Str(value));
        pairs += 1;
    }
    if p + 1 != data.len() {
        return Err("a zipmap has bytes after its end marker".into());
    }
    Ok(pairs)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn collect(decode: Decoder, data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        decode(data, &mut |e| out.push(e.with_bytes(|b| String::from_utf8_lossy(b).into_owned()))).unwrap();
        out
    }

    /// A listpack of `entries`, encoded as Redis encodes them (strings and integers).
    pub(crate) fn make_listpack(entries: &[Elem<'_>]) -> Vec<u8> {
        let mut body = Vec::new();
        for e in entries {
            let mut entry = Vec::new();
            match *e {
                Elem::Int(v) if (0..128).contains(&v) => entry.push(v as u8),
                Elem::Int(v) if (-4096..4096).contains(&v) => {
                    let u = (v & 0x1fff) as u16;
                    entry.extend_from_slice(&[0xc0 | (u >> 8) as u8, u as u8]);
                }
                Elem::Int(v) if i16::try_from(v).is_ok() => {
                    entry.push(0xf1);
                    entry.extend_from_slice(&(v as i16).to_le_bytes());
                }
                Elem::Int(v) if (-(1 << 23)..(1 << 23)).contains(&v) => {
                    entry.push(0xf2);
                    entry.extend_from_slice(&(v as i32).to_le_bytes()[..3]);
                }
                Elem::Int(v) if i32::try_from(v).is_ok() => {
                    entry.push(0xf3);
                    entry.extend_from_slice(&(v as i32).to_le_bytes());
                }
                Elem::Int(v) => {
                    entry.push(0xf4);
                    entry.extend_from_slice(&v.to_le_bytes());
                }
                Elem::Str(s) if s.len() < 64 => {
                    entry.push(0x80 | s.len() as u8);
                    entry.extend_from_slice(s);
                }
                Elem::Str(s) if s.len() < 4096 => {
                    entry.extend_from_slice(&[0xe0 | (s.len() >> 8) as u8, s.len() as u8]);
                    entry.extend_from_slice(s);
                }
                Elem::Str(s) => {
                    entry.push(0xf0);
                    entry.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    entry.extend_from_slice(s);
                }
            }
            let l = entry.len();
            match l {
                0..=127 => entry.push(l as u8),
                _ => entry.extend_from_slice(&[(l >> 7) as u8, (l & 127) as u8 | 128]),
            }
            body.extend_from_slice(&entry);
        }
        let mut lp = ((body.len() + 7) as u32).to_le_bytes().to_vec();
        lp.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        lp.extend_from_slice(&body);
        lp.push(0xff);
        lp
    }

    /// A ziplist of `entries` (prevlen always one byte: entries stay short).
    pub(crate) fn make_ziplist(entries: &[Elem<'_>]) -> Vec<u8> {
        let mut body = Vec::new();
        let mut prev = 0usize;
        for e in entries {
            let mut entry = vec![prev as u8];
            match *e {
                Elem::Int(v) if (0..=12).contains(&v) => entry.push(0xf1 + v as u8),
                Elem::Int(v) if i8::try_from(v).is_ok() => entry.extend_from_slice(&[0xfe, v as i8 as u8]),
                Elem::Int(v) if i16::try_from(v).is_ok() => {
                    entry.push(0xc0);
                    entry.extend_from_slice(&(v as i16).to_le_bytes());
                }
                Elem::Int(v) if (-(1 << 23)..(1 << 23)).contains(&v) => {
                    entry.push(0xf0);
                    entry.extend_from_slice(&(v as i32).to_le_bytes()[..3]);
                }
                Elem::Int(v) if i32::try_from(v).is_ok() => {
                    entry.push(0xd0);
                    entry.extend_from_slice(&(v as i32).to_le_bytes());
                }
                Elem::Int(v) => {
                    entry.push(0xe0);
                    entry.extend_from_slice(&v.to_le_bytes());
                }
                Elem::Str(s) => {
                    assert!(s.len() < 64, "test ziplists hold short strings");
                    entry.push(s.len() as u8);
                    entry.extend_from_slice(s);
                }
            }
            prev = entry.len();
            assert!(prev < 254);
            body.extend_from_slice(&entry);
        }
        let mut zl = ((body.len() + 11) as u32).to_le_bytes().to_vec();
        zl.extend_from_slice(&0u32.to_le_bytes());
        zl.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        zl.extend_from_slice(&body);
        zl.push(0xff);
        zl
    }

    fn sample() -> Vec<Elem<'static>> {
        let long: &'static [u8] = Box::leak(vec![b'q'; 300].into_boxed_slice());
        vec![
            Elem::Str(b"field"),
            Elem::Int(7),
            Elem::Int(-3),
            Elem::Int(-4096),
            Elem::Int(30000),
            Elem::Int(-5_000_000),
            Elem::Int(2_000_000_000),
            Elem::Int(i64::MIN),
            Elem::Str(b""),
            Elem::Str(long),
        ]
    }

    fn texts(entries: &[Elem<'_>]) -> Vec<String> {
        entries.iter().map(|e| e.with_bytes(|b| String::from_utf8_lossy(b).into_owned())).collect()
    }

    #[test]
    fn listpacks_decode_every_encoding() {
        let entries = sample();
        let lp = make_listpack(&entries);
        assert_eq!(collect(listpack, &lp), texts(&entries));
        let mut short = lp.clone();
        short.truncate(lp.len() - 1);
        assert!(listpack(&short, &mut |_| {}).is_err(), "a listpack without its end marker");
        let mut wrong_count = lp.clone();
        wrong_count[4] = 3;
        assert!(listpack(&wrong_count, &mut |_| {}).is_err());
    }

    #[test]
    fn ziplists_decode_every_encoding() {
        let mut entries = sample();
        entries.pop();
        entries.extend([Elem::Int(0), Elem::Int(12), Elem::Int(13), Elem::Int(-100)]);
        let zl = make_ziplist(&entries);
        assert_eq!(collect(ziplist, &zl), texts(&entries));
        let mut bad = zl.clone();
        bad[11] = 0x45; // the first entry's encoding claims a string far longer than the ziplist
        assert!(ziplist(&bad, &mut |_| {}).is_err());
    }

    #[test]
    fn intsets_and_zipmaps() {
        let mut is = 4u32.to_le_bytes().to_vec();
        is.extend_from_slice(&2u32.to_le_bytes());
        is.extend_from_slice(&(-1i32).to_le_bytes());
        is.extend_from_slice(&70000i32.to_le_bytes());
        assert_eq!(collect(intset, &is), ["-1", "70000"]);
        assert!(intset(&is[..is.len() - 1], &mut |_| {}).is_err());
        let zm = [2, 1, b'a', 2, 1, b'x', b'y', 0, 1, b'b', 0, 0, 0xff];
        assert_eq!(collect(zipmap, &zm), ["a", "xy", "b", ""]);
        assert!(zipmap(&zm[..6], &mut |_| {}).is_err());
    }
}
