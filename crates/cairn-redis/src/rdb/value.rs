//! One value of an RDB (or a `DUMP` payload), decoded into its canonical
//! digest ([`super::digest`]) whatever its encoding: every value type of
//! RDB versions 1 to 12 except the pre-release module format.

use super::RdbError;
use super::digest::{Canon, KeyKind, Unordered, ValueDigest};
use super::encodings::{self, Decoder, Elem};
use super::input::{Input, Pieces};

/// RDB value type codes (`RDB_TYPE_*` in Redis).
pub mod types {
    pub const STRING: u8 = 0;
    pub const LIST: u8 = 1;
    pub const SET: u8 = 2;
    pub const ZSET: u8 = 3;
    pub const HASH: u8 = 4;
    pub const ZSET_2: u8 = 5;
    pub const MODULE_PRE_GA: u8 = 6;
    pub const MODULE_2: u8 = 7;
    pub const HASH_ZIPMAP: u8 = 9;
    pub const LIST_ZIPLIST: u8 = 10;
    pub const SET_INTSET: u8 = 11;
    pub const ZSET_ZIPLIST: u8 = 12;
    pub const HASH_ZIPLIST: u8 = 13;
    pub const LIST_QUICKLIST: u8 = 14;
    pub const STREAM_LISTPACKS: u8 = 15;
    pub const HASH_LISTPACK: u8 = 16;
    pub const ZSET_LISTPACK: u8 = 17;
    pub const LIST_QUICKLIST_2: u8 = 18;
    pub const STREAM_LISTPACKS_2: u8 = 19;
    pub const SET_LISTPACK: u8 = 20;
    pub const STREAM_LISTPACKS_3: u8 = 21;
}

/// Whether `t` is a value type (anything else at a key's place is an opcode).
pub fn is_value_type(t: u8) -> bool {
    t <= types::STREAM_LISTPACKS_3 && t != 8
}

/// The kind of key a value type is.
pub fn kind_of(t: u8) -> Option<KeyKind> {
    use types::*;
    Some(match t {
        STRING => KeyKind::String,
        LIST | LIST_ZIPLIST | LIST_QUICKLIST | LIST_QUICKLIST_2 => KeyKind::List,
        SET | SET_INTSET | SET_LISTPACK => KeyKind::Set,
        ZSET | ZSET_2 | ZSET_ZIPLIST | ZSET_LISTPACK => KeyKind::Zset,
        HASH | HASH_ZIPMAP | HASH_ZIPLIST | HASH_LISTPACK => KeyKind::Hash,
        STREAM_LISTPACKS | STREAM_LISTPACKS_2 | STREAM_LISTPACKS_3 => KeyKind::Stream,
        MODULE_PRE_GA | MODULE_2 => KeyKind::Module,
        _ => return None,
    })
}

/// Quicklist node containers (`QUICKLIST_NODE_CONTAINER_*`).
const CONTAINER_PLAIN: u64 = 1;
const CONTAINER_PACKED: u64 = 2;

/// A member's canonical hash from element bytes.
fn member(parts: &[Elem<'_>]) -> Canon {
    let mut c = Canon::new();
    for p in parts {
        p.with_bytes(|b| c.elem(b));
    }
    c
}

/// A sorted-set score, canonical whatever its encoding (text, integer or binary).
fn score_bits(score: f64) -> [u8; 8] {
    score.to_bits().to_le_bytes()
}

fn parse_score(text: &[u8]) -> Option<f64> {
    std::str::from_utf8(text).ok()?.trim().parse::<f64>().ok()
}

/// Decodes the value of type `t` at the input's position.
pub fn value<P: Pieces>(input: &mut Input<P>, t: u8) -> Result<ValueDigest, RdbError> {
    use types::*;
    let kind = kind_of(t).ok_or_else(|| input.corrupt(format!("unknown value type {t}")))?;
    match t {
        STRING => {
            let mut c = Canon::new();
            input.string(&mut c)?;
            Ok(ValueDigest::new(kind, 1, &c.finish()))
        }
        LIST => {
            let mut c = Canon::new();
            for _ in 0..input.number()? {
                input.string(&mut c)?;
            }
            Ok(ValueDigest::new(kind, c.count, &c.finish()))
        }
        LIST_ZIPLIST => {
            let mut c = Canon::new();
            container(input, encodings::ziplist, |e| e.with_bytes(|b| c.elem(b)))?;
            Ok(ValueDigest::new(kind, c.count, &c.finish()))
        }
        LIST_QUICKLIST | LIST_QUICKLIST_2 => {
            let mut c = Canon::new();
            for _ in 0..input.number()? {
                let container_kind = if t == LIST_QUICKLIST { CONTAINER_PACKED } else { input.number()? };
                match container_kind {
                    // One big element, stored as itself.
                    CONTAINER_PLAIN => input.string(&mut c)?,
                    CONTAINER_PACKED if t == LIST_QUICKLIST => {
                        container(input, encodings::ziplist, |e| e.with_bytes(|b| c.elem(b)))?
                    }
                    CONTAINER_PACKED => {
                        container(input, encodings::listpack, |e| e.with_bytes(|b| c.elem(b)))?
                    }
                    other => return Err(input.corrupt(format!("unknown quicklist container {other}"))),
                }
            }
            Ok(ValueDigest::new(kind, c.count, &c.finish()))
        }
        SET => {
            let mut u = Unordered::default();
            for _ in 0..input.number()? {
                let mut m = Canon::new();
                input.string(&mut m)?;
                u.add(m);
            }
            Ok(ValueDigest::new(kind, u.count, &u.bytes()))
        }
        SET_INTSET | SET_LISTPACK => {
            let mut u = Unordered::default();
            let decode = if t == SET_INTSET { encodings::intset } else { encodings::listpack };
            container(input, decode, |e| u.add(member(&[e])))?;
            Ok(ValueDigest::new(kind, u.count, &u.bytes()))
        }
        HASH => {
            let mut u = Unordered::default();
            for _ in 0..input.number()? {
                let mut m = Canon::new();
                input.string(&mut m)?;
                input.string(&mut m)?;
                u.add(m);
            }
            Ok(ValueDigest::new(kind, u.count, &u.bytes()))
        }
        HASH_ZIPMAP | HASH_ZIPLIST | HASH_LISTPACK => {
            let decode = match t {
                HASH_ZIPMAP => encodings::zipmap,
                HASH_ZIPLIST => encodings::ziplist,
                _ => encodings::listpack,
            };
            let u = pairs(input, decode, |field, value| Ok(member(&[field, value])))?;
            Ok(ValueDigest::new(kind, u.count, &u.bytes()))
        }
        ZSET | ZSET_2 => {
            let mut u = Unordered::default();
            for _ in 0..input.number()? {
                let mut m = Canon::new();
                input.string(&mut m)?;
                let score = if t == ZSET_2 {
                    f64::from_le_bytes(input.array()?)
                } else {
                    // A length byte, or 253 NaN, 254 +inf, 255 -inf.
                    match input.u8()? {
                        253 => f64::NAN,
                        254 => f64::INFINITY,
                        255 => f64::NEG_INFINITY,
                        n => {
                            let mut text = Vec::with_capacity(usize::from(n));
                            input.each(u64::from(n), |b| text.extend_from_slice(b))?;
                            parse_score(&text)
                                .ok_or_else(|| input.corrupt("a sorted-set score is not a number"))?
                        }
                    }
                };
                m.elem(&score_bits(score));
                u.add(m);
            }
            Ok(ValueDigest::new(kind, u.count, &u.bytes()))
        }
        ZSET_ZIPLIST | ZSET_LISTPACK => {
            let decode = if t == ZSET_ZIPLIST { encodings::ziplist } else { encodings::listpack };
            let u = pairs(input, decode, |m, score| {
                let score = match score {
                    Elem::Int(v) => v as f64,
                    Elem::Str(s) => parse_score(s).ok_or("a sorted-set score is not a number")?,
                };
                let mut c = member(&[m]);
                c.elem(&score_bits(score));
                Ok(c)
            })?;
            Ok(ValueDigest::new(kind, u.count, &u.bytes()))
        }
        STREAM_LISTPACKS | STREAM_LISTPACKS_2 | STREAM_LISTPACKS_3 => stream(input, t),
        MODULE_2 => {
            let mut c = Canon::new();
            c.num(input.number()?);
            module_values(input, &mut c)?;
            Ok(ValueDigest::new(kind, 1, &c.finish()))
        }
        _ => Err(RdbError::Unsupported {
            offset: input.offset(),
            what: "a module value in the format of Redis 4.0 release candidates".into(),
        }),
    }
}

/// A container string (listpack, ziplist, intset, zipmap), decoded.
fn container<P: Pieces>(
    input: &mut Input<P>,
    decode: Decoder,
    mut f: impl FnMut(Elem<'_>),
) -> Result<(), RdbError> {
    let at = input.offset();
    let data = input.string_vec()?;
    decode(&data, &mut |e| f(e)).map(|_| ()).map_err(|what| RdbError::Corrupt { offset: at, what })
}

/// A container of alternating fields and values (or members and scores),
/// each pair hashed by `pair` and summed.
fn pairs<P: Pieces>(
    input: &mut Input<P>,
    decode: Decoder,
    mut pair: impl FnMut(Elem<'_>, Elem<'_>) -> Result<Canon, &'static str>,
) -> Result<Unordered, RdbError> {
    let at = input.offset();
    let data = input.string_vec()?;
    let mut u = Unordered::default();
    let mut first: Option<Elem<'_>> = None;
    let mut problem = None;
    let mut all: Vec<Elem<'_>> = Vec::new();
    decode(&data, &mut |e| all.push(e)).map_err(|what| RdbError::Corrupt { offset: at, what })?;
    for e in all {
        match first.take() {
            None => first = Some(e),
            Some(f) => match pair(f, e) {
                Ok(c) => u.add(c),
                Err(p) => problem = problem.or(Some(p)),
            },
        }
    }
    if let Some(what) = problem {
        return Err(RdbError::Corrupt { offset: at, what: what.into() });
    }
    if first.is_some() {
        return Err(RdbError::Corrupt {
            offset: at,
            what: "a container of pairs holds an odd number of entries".into(),
        });
    }
    Ok(u)
}

/// A stream: its listpacks (hashed as stored: a server keeps them as they
/// were loaded), its length and ids, and every consumer group with its
/// pending entries and consumers.
fn stream<P: Pieces>(input: &mut Input<P>, t: u8) -> Result<ValueDigest, RdbError> {
    let mut c = Canon::new();
    let nodes = input.number()?;
    c.num(nodes);
    for _ in 0..nodes {
        input.string(&mut c)?; // the node's master entry id
        input.string(&mut c)?; // its listpack
    }
    let length = input.number()?;
    c.num(length);
    let id_fields = if t >= types::STREAM_LISTPACKS_2 { 7 } else { 2 };
    for _ in 0..id_fields {
        // last id; then first id, largest deleted id, entries added
        c.num(input.number()?);
    }
    let groups = input.number()?;
    c.num(groups);
    for _ in 0..groups {
        input.string(&mut c)?; // name
        c.num(input.number()?); // last delivered id
        c.num(input.number()?);
        if t >= types::STREAM_LISTPACKS_2 {
            c.num(input.number()?); // entries read
        }
        let pending = input.number()?;
        c.num(pending);
        for _ in 0..pending {
            c.elem(&input.array::<16>()?); // entry id
            c.elem(&input.array::<8>()?); // delivery time
            c.num(input.number()?); // delivery count
        }
        let consumers = input.number()?;
        c.num(consumers);
        for _ in 0..consumers {
            input.string(&mut c)?; // name
            c.elem(&input.array::<8>()?); // seen time
            if t >= types::STREAM_LISTPACKS_3 {
                c.elem(&input.array::<8>()?); // active time
            }
            let owned = input.number()?;
            c.num(owned);
            for _ in 0..owned {
                c.elem(&input.array::<16>()?);
            }
        }
    }
    let inner = c.finish();
    Ok(ValueDigest::new(KeyKind::Stream, length, &inner))
}

/// Module data: typed values until the end opcode, into `c`.
pub fn module_values<P: Pieces>(input: &mut Input<P>, c: &mut Canon) -> Result<(), RdbError> {
    loop {
        match input.number()? {
            0 => return Ok(()),
            1 | 2 => c.num(input.number()?),
            3 => c.elem(&input.array::<4>()?),
            4 => c.elem(&input.array::<8>()?),
            5 => input.string(c)?,
            op => return Err(input.corrupt(format!("unknown module data opcode {op}"))),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::encodings::tests::{make_listpack, make_ziplist};
    use super::super::input::Whole;
    use super::*;

    /// An RDB string of `bytes` (plain length encoding).
    pub(crate) fn rdb_string(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match bytes.len() {
            n if n < 64 => out.push(n as u8),
            n if n < 16384 => out.extend_from_slice(&[0x40 | (n >> 8) as u8, n as u8]),
            n => {
                out.push(0x80);
                out.extend_from_slice(&(n as u32).to_be_bytes());
            }
        }
        out.extend_from_slice(bytes);
        out
    }

    fn decode(t: u8, body: Vec<u8>) -> ValueDigest {
        let mut input = Input::new(Whole(Some(body.into())));
        let v = value(&mut input, t).unwrap();
        assert!(input.at_end().unwrap(), "type {t} left bytes unread");
        v
    }

    #[test]
    fn every_encoding_of_a_hash_gives_the_same_digest() {
        let pairs: [(&[u8], &[u8]); 3] = [(b"a", b"1"), (b"name", b"cairn"), (b"n", b"-70000")];
        // A hash table, in some order.
        let mut table = vec![3];
        for (f, v) in [pairs[2], pairs[0], pairs[1]] {
            table.extend(rdb_string(f));
            table.extend(rdb_string(v));
        }
        let table = decode(types::HASH, table);
        // A listpack with integers where Redis would encode them.
        let lp = make_listpack(&[
            Elem::Str(b"a"),
            Elem::Int(1),
            Elem::Str(b"name"),
            Elem::Str(b"cairn"),
            Elem::Str(b"n"),
            Elem::Int(-70000),
        ]);
        let listpack = decode(types::HASH_LISTPACK, rdb_string(&lp));
        let zl = make_ziplist(&[
            Elem::Str(b"n"),
            Elem::Int(-70000),
            Elem::Str(b"name"),
            Elem::Str(b"cairn"),
            Elem::Str(b"a"),
            Elem::Int(1),
        ]);
        let ziplist = decode(types::HASH_ZIPLIST, rdb_string(&zl));
        assert_eq!(table, listpack);
        assert_eq!(table, ziplist);
        assert_eq!((table.kind, table.count), (KeyKind::Hash, 3));
        // A different value differs.
        let other = make_listpack(&[
            Elem::Str(b"a"),
            Elem::Int(2),
            Elem::Str(b"name"),
            Elem::Str(b"cairn"),
            Elem::Str(b"n"),
            Elem::Int(-70000),
        ]);
        assert_ne!(decode(types::HASH_LISTPACK, rdb_string(&other)), table);
    }

    #[test]
    fn sets_sorted_sets_and_lists_agree_across_encodings() {
        let mut is = 2u32.to_le_bytes().to_vec();
        is.extend_from_slice(&3u32.to_le_bytes());
        for v in [-5i16, 10, 300] {
            is.extend_from_slice(&v.to_le_bytes());
        }
        let intset = decode(types::SET_INTSET, rdb_string(&is));
        let mut table = vec![3];
        for m in [b"300".as_slice(), b"-5", b"10"] {
            table.extend(rdb_string(m));
        }
        assert_eq!(intset, decode(types::SET, table));

        // Scores: binary doubles, text, integers in a listpack.
        let mut skiplist = vec![2];
        for (m, s) in [(b"x".as_slice(), 1.5f64), (b"y", 3.0)] {
            skiplist.extend(rdb_string(m));
            skiplist.extend_from_slice(&s.to_le_bytes());
        }
        let mut old = vec![2];
        for (m, s) in [(b"y".as_slice(), b"3".as_slice()), (b"x", b"1.5")] {
            old.extend(rdb_string(m));
            old.push(s.len() as u8);
            old.extend_from_slice(s);
        }
        let lp = make_listpack(&[Elem::Str(b"x"), Elem::Str(b"1.5"), Elem::Str(b"y"), Elem::Int(3)]);
        let z = decode(types::ZSET_2, skiplist);
        assert_eq!(z, decode(types::ZSET, old));
        assert_eq!(z, decode(types::ZSET_LISTPACK, rdb_string(&lp)));

        // A list as a linked list, a quicklist of ziplists and a quicklist of listpacks and a plain node.
        let items: [&[u8]; 3] = [b"one", b"2", b"three"];
        let mut linked = vec![3];
        for i in items {
            linked.extend(rdb_string(i));
        }
        let mut quick = vec![2];
        quick.extend(rdb_string(&make_ziplist(&[Elem::Str(b"one"), Elem::Int(2)])));
        quick.extend(rdb_string(&make_ziplist(&[Elem::Str(b"three")])));
        let mut quick2 = vec![2, 2];
        quick2.extend(rdb_string(&make_listpack(&[Elem::Str(b"one"), Elem::Int(2)])));
        quick2.push(1);
        quick2.extend(rdb_string(b"three"));
        let l = decode(types::LIST, linked);
        assert_eq!(l, decode(types::LIST_QUICKLIST, quick));
        assert_eq!(l, decode(types::LIST_QUICKLIST_2, quick2));
        assert_eq!(l.count, 3);
        // Order matters for lists.
        let mut reversed = vec![3];
        for i in items.iter().rev() {
            reversed.extend(rdb_string(i));
        }
        assert_ne!(decode(types::LIST, reversed), l);
    }

    #[test]
    fn integer_encoded_strings_equal_their_text() {
        assert_eq!(
            decode(types::STRING, vec![0xc1, 0x39, 0x30]),
            decode(types::STRING, rdb_string(b"12345"))
        );
    }

    #[test]
    fn damaged_containers_are_errors() {
        let mut lp = make_listpack(&[Elem::Str(b"a"), Elem::Int(1)]);
        lp[6] = 0x8f; // the first string now claims 15 bytes
        let mut input = Input::new(Whole(Some(rdb_string(&lp).into())));
        assert!(matches!(value(&mut input, types::HASH_LISTPACK), Err(RdbError::Corrupt { .. })));
        let odd = make_listpack(&[Elem::Str(b"a")]);
        let mut input = Input::new(Whole(Some(rdb_string(&odd).into())));
        assert!(matches!(value(&mut input, types::HASH_LISTPACK), Err(RdbError::Corrupt { .. })));
    }
}
