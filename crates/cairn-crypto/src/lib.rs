//! Authenticated encryption for the cairn repository format.
//!
//! A cairn repository is a restic repository (format version 2), so every
//! encrypted object uses restic's construction:
//!
//! ```text
//! IV (16 bytes) || AES-256-CTR(plaintext) || Poly1305-AES MAC (16 bytes)
//! ```
//!
//! The IV doubles as the Poly1305-AES nonce; the MAC covers the ciphertext
//! only (encrypt-then-MAC). [`Key`] holds the three secrets (AES encryption
//! key, the MAC's AES key `k` and its Poly1305 key `r`). A repository has one
//! master [`Key`]; each password unlocks it through a key file whose secrets
//! come from scrypt ([`KdfParams::derive`]).
//!
//! ```
//! use cairn_crypto::Key;
//! let key = Key::random();
//! let sealed = key.seal(b"hello");
//! assert_eq!(key.open(&sealed).unwrap(), b"hello");
//! ```

use aes::Aes256;
use aes::cipher::{BlockEncrypt, KeyInit, KeyIvInit, StreamCipher};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use poly1305::Poly1305;
use rand::RngCore;
use serde::{Deserialize, Serialize};

type Aes256Ctr = ctr::Ctr128BE<Aes256>;

/// Bytes of IV in front of every encrypted object.
pub const IV_LEN: usize = 16;
/// Bytes of MAC behind every encrypted object.
pub const MAC_LEN: usize = 16;
/// Total size an encrypted object has over its plaintext.
pub const OVERHEAD: usize = IV_LEN + MAC_LEN;

/// Errors from decryption and key derivation.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The MAC did not match: wrong key, or the bytes were altered.
    #[error("ciphertext failed authentication (wrong key, or the data is damaged)")]
    Authentication,
    /// The input is shorter than IV + MAC.
    #[error("ciphertext too short ({0} bytes, need at least {OVERHEAD})")]
    TooShort(usize),
    /// scrypt refused the parameters stored in a key file.
    #[error("invalid scrypt parameters N={n} r={r} p={p}")]
    InvalidKdfParams { n: u64, r: u32, p: u32 },
}

/// The Poly1305-AES MAC key: `k` keys AES (to encrypt the nonce), `r` keys Poly1305.
#[derive(Clone, PartialEq, Eq)]
pub struct MacKey {
    k: [u8; 16],
    r: [u8; 16],
}

/// A complete encryption key: AES-256-CTR key plus Poly1305-AES MAC key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    encrypt: [u8; 32],
    mac: MacKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// Poly1305 clamping, as restic applies it before storing `r`.
const POLY1305_R_MASK: [u8; 16] =
    [0xff, 0xff, 0xff, 0x0f, 0xfc, 0xff, 0xff, 0x0f, 0xfc, 0xff, 0xff, 0x0f, 0xfc, 0xff, 0xff, 0x0f];

fn clamp_r(r: &mut [u8; 16]) {
    for (b, m) in r.iter_mut().zip(POLY1305_R_MASK) {
        *b &= m;
    }
}

impl Key {
    /// A fresh random key (for a new repository's master key).
    pub fn random() -> Self {
        let mut rng = rand::rngs::OsRng;
        let mut encrypt = [0u8; 32];
        let mut k = [0u8; 16];
        let mut r = [0u8; 16];
        rng.fill_bytes(&mut encrypt);
        rng.fill_bytes(&mut k);
        rng.fill_bytes(&mut r);
        clamp_r(&mut r);
        Key { encrypt, mac: MacKey { k, r } }
    }

    /// Builds a key from 64 bytes laid out as `encrypt(32) || k(16) || r(16)`,
    /// which is how restic splits scrypt output.
    pub fn from_kdf_output(bytes: &[u8; 64]) -> Self {
        let mut encrypt = [0u8; 32];
        let mut k = [0u8; 16];
        let mut r = [0u8; 16];
        encrypt.copy_from_slice(&bytes[..32]);
        k.copy_from_slice(&bytes[32..48]);
        r.copy_from_slice(&bytes[48..]);
        clamp_r(&mut r);
        Key { encrypt, mac: MacKey { k, r } }
    }

    fn mac(&self, nonce: &[u8; IV_LEN], ciphertext: &[u8]) -> [u8; MAC_LEN] {
        // Poly1305-AES: tag = Poly1305_r(ciphertext) + AES_k(nonce); the
        // poly1305 crate takes the pair as one 32-byte key `r || s`.
        let mut s = aes::Block::clone_from_slice(nonce);
        aes::Aes128::new(&self.mac.k.into()).encrypt_block(&mut s);
        let mut poly_key = [0u8; 32];
        poly_key[..16].copy_from_slice(&self.mac.r);
        poly_key[16..].copy_from_slice(&s);
        Poly1305::new(&poly_key.into()).compute_unpadded(ciphertext).into()
    }

    /// Encrypts `plaintext` into `IV || ciphertext || MAC` with a fresh random IV.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        self.seal_into(plaintext, &mut out);
        out
    }

    /// Like [`Key::seal`], appending to `out` (lets packers reuse one buffer).
    pub fn seal_into(&self, plaintext: &[u8], out: &mut Vec<u8>) {
        let mut iv = [0u8; IV_LEN];
        rand::rngs::OsRng.fill_bytes(&mut iv);
        out.extend_from_slice(&iv);
        let start = out.len();
        out.extend_from_slice(plaintext);
        Aes256Ctr::new(&self.encrypt.into(), &iv.into()).apply_keystream(&mut out[start..]);
        let tag = self.mac(&iv, &out[start..]);
        out.extend_from_slice(&tag);
    }

    /// Verifies the MAC and decrypts `IV || ciphertext || MAC`.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < OVERHEAD {
            return Err(CryptoError::TooShort(sealed.len()));
        }
        // Authenticate first, then copy only the ciphertext out and decrypt
        // it in place: one copy of the data, not two.
        let iv: [u8; IV_LEN] = sealed[..IV_LEN].try_into().expect("IV_LEN bytes");
        let (body, tag) = sealed[IV_LEN..].split_at(sealed.len() - OVERHEAD);
        if !constant_time_eq(&self.mac(&iv, body), tag) {
            return Err(CryptoError::Authentication);
        }
        let mut out = body.to_vec();
        Aes256Ctr::new(&self.encrypt.into(), &iv.into()).apply_keystream(&mut out);
        Ok(out)
    }

    /// Verifies and decrypts in place; returns the plaintext slice of `buf`.
    pub fn open_in_place<'a>(&self, buf: &'a mut [u8]) -> Result<&'a mut [u8], CryptoError> {
        if buf.len() < OVERHEAD {
            return Err(CryptoError::TooShort(buf.len()));
        }
        let (iv, rest) = buf.split_at_mut(IV_LEN);
        let iv: [u8; IV_LEN] = (&*iv).try_into().expect("IV_LEN bytes");
        let body_len = rest.len() - MAC_LEN;
        let (body, tag) = rest.split_at_mut(body_len);
        let expected = self.mac(&iv, body);
        if !constant_time_eq(&expected, tag) {
            return Err(CryptoError::Authentication);
        }
        Aes256Ctr::new(&self.encrypt.into(), &iv.into()).apply_keystream(body);
        Ok(body)
    }

    /// The JSON form restic stores inside key files (`restic cat masterkey`).
    pub fn to_json(&self) -> MasterKeyJson {
        MasterKeyJson {
            mac: MacKeyJson { k: B64.encode(self.mac.k), r: B64.encode(self.mac.r) },
            encrypt: B64.encode(self.encrypt),
        }
    }

    /// Parses restic's master key JSON form.
    pub fn from_json(json: &MasterKeyJson) -> Option<Self> {
        let encrypt: [u8; 32] = B64.decode(&json.encrypt).ok()?.try_into().ok()?;
        let k: [u8; 16] = B64.decode(&json.mac.k).ok()?.try_into().ok()?;
        let mut r: [u8; 16] = B64.decode(&json.mac.r).ok()?.try_into().ok()?;
        clamp_r(&mut r);
        Some(Key { encrypt, mac: MacKey { k, r } })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The master key as restic serialises it (base64 fields). Its `Debug`
/// output hides the key, as [`Key`]'s does.
#[derive(Clone, Serialize, Deserialize)]
pub struct MasterKeyJson {
    pub mac: MacKeyJson,
    pub encrypt: String,
}

/// The MAC half of [`MasterKeyJson`].
#[derive(Clone, Serialize, Deserialize)]
pub struct MacKeyJson {
    pub k: String,
    pub r: String,
}

impl std::fmt::Debug for MasterKeyJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKeyJson(<redacted>)")
    }
}

impl std::fmt::Debug for MacKeyJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKeyJson(<redacted>)")
    }
}

/// scrypt parameters as stored in a key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// CPU/memory cost; a power of two.
    pub n: u64,
    pub r: u32,
    pub p: u32,
}

impl KdfParams {
    /// Parameters for new keys: 2^15 costs ~32 MiB and ~0.1 s here, the same
    /// order as restic's calibrated defaults.
    pub const DEFAULT: KdfParams = KdfParams { n: 1 << 15, r: 8, p: 1 };

    /// Derives the key that unlocks a key file's `data`.
    pub fn derive(&self, password: &[u8], salt: &[u8]) -> Result<Key, CryptoError> {
        let invalid = CryptoError::InvalidKdfParams { n: self.n, r: self.r, p: self.p };
        if !self.n.is_power_of_two() || self.n < 2 {
            return Err(invalid);
        }
        let log_n = self.n.trailing_zeros() as u8;
        let params = scrypt::Params::new(log_n, self.r, self.p, 64).map_err(|_| invalid)?;
        let mut out = [0u8; 64];
        scrypt::scrypt(password, salt, &params, &mut out).map_err(|_| CryptoError::InvalidKdfParams {
            n: self.n,
            r: self.r,
            p: self.p,
        })?;
        Ok(Key::from_kdf_output(&out))
    }
}

/// Random salt for a new key file (restic uses 64 bytes).
pub fn random_salt() -> Vec<u8> {
    let mut salt = vec![0u8; 64];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    salt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_round_trips() {
        let key = Key::random();
        for len in [0usize, 1, 15, 16, 17, 1000, 65536] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let sealed = key.seal(&data);
            assert_eq!(sealed.len(), len + OVERHEAD);
            assert_eq!(key.open(&sealed).unwrap(), data);
        }
    }

    #[test]
    fn any_flipped_bit_fails_authentication() {
        let key = Key::random();
        let sealed = key.seal(b"some secret bytes");
        for i in 0..sealed.len() {
            let mut damaged = sealed.clone();
            damaged[i] ^= 0x01;
            assert!(matches!(key.open(&damaged), Err(CryptoError::Authentication)), "byte {i}");
        }
    }

    #[test]
    fn wrong_key_fails() {
        let sealed = Key::random().seal(b"x");
        assert!(Key::random().open(&sealed).is_err());
    }

    #[test]
    fn master_key_json_round_trips() {
        let key = Key::random();
        let json = serde_json::to_string(&key.to_json()).unwrap();
        let back: MasterKeyJson = serde_json::from_str(&json).unwrap();
        assert_eq!(Key::from_json(&back).unwrap(), key);
    }

    #[test]
    fn debug_output_hides_key_material() {
        let key = Key::random();
        let json = key.to_json();
        let shown = format!("{key:?} {json:?} {:?}", json.mac);
        for secret in [&json.encrypt, &json.mac.k, &json.mac.r] {
            assert!(!shown.contains(secret.as_str()), "{shown}");
        }
        assert!(shown.contains("redacted"), "{shown}");
    }

    /// Poly1305-AES test vectors from Bernstein's paper
    /// (<https://cr.yp.to/mac/poly1305-20050329.pdf>, appendix B).
    #[test]
    fn poly1305_aes_matches_paper_vectors() {
        let vectors: [(&[u8], &str, &str, &str, &str); 2] = [
            (
                &[0xf3, 0xf6],
                "851fc40c3467ac0be05cc20404f3f700",
                "ec074c835580741701425b623235add6",
                "fb447350c4e868c52ac3275cf9d4327e",
                "f4c633c3044fc145f84f335cb81953de",
            ),
            (
                &[],
                "a0f3080000f46400d0c7e9076c834403",
                "75deaa25c09f208e1dc4ce6b5cad3fbf",
                "61ee09218d29b0aaed7e154a2c5509cc",
                "dd3fab2251f11ac759f0887129cc2ee7",
            ),
        ];
        for (msg, r, k, nonce, tag) in vectors {
            let mut r = hex16(r);
            clamp_r(&mut r);
            let key = Key { encrypt: [0u8; 32], mac: MacKey { k: hex16(k), r } };
            assert_eq!(key.mac(&hex16(nonce), msg), hex16(tag));
        }
    }

    fn hex16(s: &str) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }
}
