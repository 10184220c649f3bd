//! AES-256 on x86-64's AES-NI and PCLMULQDQ instructions: the key schedule, GCM
//! (CTR + GHASH) and the block/CTR/CMAC steps of AES-SIV, each compiled with
//! `#[target_feature(enable = "aes,pclmulqdq,avx2")]` so that the whole message is
//! one call with everything inlined. This is the one place fieldcrypt uses
//! `unsafe`: calling those functions from code compiled for baseline x86-64.
//!
//! The soundness argument is a type: [`Ni`] can only be obtained from
//! [`Ni::detect`], which returns it only when the running CPU reports every
//! feature the functions are compiled for; every key type here holds one (it is
//! zero-sized), so holding a key proves the instructions exist. Everything inside
//! the feature functions is safe Rust (the intrinsics are safe there; bytes move
//! in and out through `_mm_set_epi64x` / `_mm_extract_epi64`, not pointers).
//!
//! Same bytes as the RustCrypto crates (the portable path): cross-checked in the
//! tests below on random keys, nonces, associated data and lengths 0..=300, and
//! pinned by the golden vectors in [`super::accel`]'s tests.
#![allow(unsafe_code)]

use core::arch::x86_64::*;

use zeroize::Zeroize;

/// Proof that the CPU has AES-NI, PCLMULQDQ and AVX2 (and so SSSE3 and SSE4.1).
#[derive(Debug, Clone, Copy)]
pub struct Ni(());

impl Ni {
    /// `Some` only when the running CPU has every feature this module's
    /// functions are compiled for.
    pub fn detect() -> Option<Ni> {
        (std::is_x86_feature_detected!("aes")
            && std::is_x86_feature_detected!("pclmulqdq")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("sse4.1")
            && std::is_x86_feature_detected!("ssse3"))
        .then_some(Ni(()))
    }
}

#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn load(b: &[u8]) -> __m128i {
    // Callers pass exactly 16 bytes; a shorter slice is a bug and panics.
    let lo = u64::from_le_bytes(b[..8].try_into().expect("16-byte block"));
    let hi = u64::from_le_bytes(b[8..16].try_into().expect("16-byte block"));
    _mm_set_epi64x(hi as i64, lo as i64)
}

#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn store(v: __m128i) -> [u8; 16] {
    let lo = _mm_extract_epi64::<0>(v) as u64;
    let hi = _mm_extract_epi64::<1>(v) as u64;
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&lo.to_le_bytes());
    out[8..].copy_from_slice(&hi.to_le_bytes());
    out
}

/// Loads up to 16 bytes, zero-padded.
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn load_partial(b: &[u8]) -> __m128i {
    let mut block = [0u8; 16];
    block[..b.len()].copy_from_slice(b);
    load(&block)
}

/// An expanded AES-256 key schedule (15 round keys), zeroized on drop.
#[derive(Clone)]
pub struct Aes256 {
    rk: [__m128i; 15],
    _ni: Ni,
}

impl Drop for Aes256 {
    fn drop(&mut self) {
        self.rk.zeroize();
    }
}

#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn assist_1(t1: __m128i, t2: __m128i) -> __m128i {
    let t2 = _mm_shuffle_epi32::<0xff>(t2);
    let mut t1 = t1;
    let mut t4 = _mm_slli_si128::<4>(t1);
    t1 = _mm_xor_si128(t1, t4);
    t4 = _mm_slli_si128::<4>(t4);
    t1 = _mm_xor_si128(t1, t4);
    t4 = _mm_slli_si128::<4>(t4);
    t1 = _mm_xor_si128(t1, t4);
    _mm_xor_si128(t1, t2)
}

#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn assist_2(t1: __m128i, t3: __m128i) -> __m128i {
    let t2 = _mm_shuffle_epi32::<0xaa>(_mm_aeskeygenassist_si128::<0>(t1));
    let mut t3 = t3;
    let mut t4 = _mm_slli_si128::<4>(t3);
    t3 = _mm_xor_si128(t3, t4);
    t4 = _mm_slli_si128::<4>(t4);
    t3 = _mm_xor_si128(t3, t4);
    t4 = _mm_slli_si128::<4>(t4);
    t3 = _mm_xor_si128(t3, t4);
    _mm_xor_si128(t3, t2)
}

#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn expand(key: &[u8; 32]) -> [__m128i; 15] {
    let mut rk = [_mm_setzero_si128(); 15];
    let mut t1 = load(&key[..16]);
    let mut t3 = load(&key[16..]);
    rk[0] = t1;
    rk[1] = t3;
    macro_rules! round {
        ($i:expr, $rcon:expr) => {
            t1 = assist_1(t1, _mm_aeskeygenassist_si128::<$rcon>(t3));
            rk[$i] = t1;
            if $i < 14 {
                t3 = assist_2(t1, t3);
                rk[$i + 1] = t3;
            }
        };
    }
    round!(2, 0x01);
    round!(4, 0x02);
    round!(6, 0x04);
    round!(8, 0x08);
    round!(10, 0x10);
    round!(12, 0x20);
    round!(14, 0x40);
    rk
}

#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn encrypt1(rk: &[__m128i; 15], b: __m128i) -> __m128i {
    let mut x = _mm_xor_si128(b, rk[0]);
    for k in &rk[1..14] {
        x = _mm_aesenc_si128(x, *k);
    }
    _mm_aesenclast_si128(x, rk[14])
}

/// Four blocks interleaved, so the AES unit's pipeline stays full.
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn encrypt4(rk: &[__m128i; 15], b: [__m128i; 4]) -> [__m128i; 4] {
    let mut x = [
        _mm_xor_si128(b[0], rk[0]),
        _mm_xor_si128(b[1], rk[0]),
        _mm_xor_si128(b[2], rk[0]),
        _mm_xor_si128(b[3], rk[0]),
    ];
    for k in &rk[1..14] {
        for v in x.iter_mut() {
            *v = _mm_aesenc_si128(*v, *k);
        }
    }
    for v in x.iter_mut() {
        *v = _mm_aesenclast_si128(*v, rk[14]);
    }
    x
}

impl Aes256 {
    /// Expands a 32-byte key.
    pub fn new(ni: Ni, key: &[u8; 32]) -> Aes256 {
        // SAFETY: `ni` exists only when the CPU has the features `expand` is
        // compiled for (see `Ni::detect`).
        let rk = unsafe { expand(key) };
        Aes256 { rk, _ni: ni }
    }

    /// Encrypts one block in place.
    pub fn encrypt_block(&self, block: &mut [u8; 16]) {
        #[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
        fn go(rk: &[__m128i; 15], block: &mut [u8; 16]) {
            *block = store(encrypt1(rk, load(block)));
        }
        // SAFETY: holding `self._ni` proves the CPU features (see `Ni`).
        unsafe { go(&self.rk, block) }
    }
}

// ---------------------------------------------------------------------------
// GCM

/// Reverses the 16 bytes of a block: GHASH's bit order as PCLMULQDQ wants it.
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn bswap(v: __m128i) -> __m128i {
    let mask = _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    _mm_shuffle_epi8(v, mask)
}

/// Multiplication in GHASH's field on byte-reversed operands (Gueron and Kounavis,
/// "Intel Carry-Less Multiplication Instruction and its Usage for Computing the
/// GCM Mode", algorithm 5: Karatsuba-free 4-multiply product, shift left by one
/// for the reflected bit order, then reduction modulo x^128 + x^7 + x^2 + x + 1).
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn gfmul(a: __m128i, b: __m128i) -> __m128i {
    let mut t3 = _mm_clmulepi64_si128::<0x00>(a, b);
    let mut t4 = _mm_clmulepi64_si128::<0x10>(a, b);
    let mut t5 = _mm_clmulepi64_si128::<0x01>(a, b);
    let mut t6 = _mm_clmulepi64_si128::<0x11>(a, b);
    t4 = _mm_xor_si128(t4, t5);
    t5 = _mm_slli_si128::<8>(t4);
    t4 = _mm_srli_si128::<8>(t4);
    t3 = _mm_xor_si128(t3, t5);
    t6 = _mm_xor_si128(t6, t4);
    // Shift the 256-bit product left by one bit.
    let mut t7 = _mm_srli_epi32::<31>(t3);
    let mut t8 = _mm_srli_epi32::<31>(t6);
    t3 = _mm_slli_epi32::<1>(t3);
    t6 = _mm_slli_epi32::<1>(t6);
    let mut t9 = _mm_srli_si128::<12>(t7);
    t8 = _mm_slli_si128::<4>(t8);
    t7 = _mm_slli_si128::<4>(t7);
    t3 = _mm_or_si128(t3, t7);
    t6 = _mm_or_si128(t6, t8);
    t6 = _mm_or_si128(t6, t9);
    // Reduce.
    t7 = _mm_slli_epi32::<31>(t3);
    t8 = _mm_slli_epi32::<30>(t3);
    t9 = _mm_slli_epi32::<25>(t3);
    t7 = _mm_xor_si128(t7, t8);
    t7 = _mm_xor_si128(t7, t9);
    t8 = _mm_srli_si128::<4>(t7);
    t7 = _mm_slli_si128::<12>(t7);
    t3 = _mm_xor_si128(t3, t7);
    let mut t2 = _mm_srli_epi32::<1>(t3);
    t4 = _mm_srli_epi32::<2>(t3);
    t5 = _mm_srli_epi32::<7>(t3);
    t2 = _mm_xor_si128(t2, t4);
    t2 = _mm_xor_si128(t2, t5);
    t2 = _mm_xor_si128(t2, t8);
    t3 = _mm_xor_si128(t3, t2);
    _mm_xor_si128(t6, t3)
}

/// GHASH over `data` zero-padded to whole blocks, continuing from `y`.
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn ghash(h: __m128i, mut y: __m128i, data: &[u8]) -> __m128i {
    let mut chunks = data.chunks_exact(16);
    for c in &mut chunks {
        y = gfmul(_mm_xor_si128(y, bswap(load(c))), h);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        y = gfmul(_mm_xor_si128(y, bswap(load_partial(rest))), h);
    }
    y
}

/// The counter block for 32-bit big-endian counter `ctr` after `nonce`.
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn counter(nonce: &[u8; 12], ctr: u32) -> __m128i {
    let mut b = [0u8; 16];
    b[..12].copy_from_slice(nonce);
    b[12..].copy_from_slice(&ctr.to_be_bytes());
    load(&b)
}

/// XORs the CTR keystream starting at counter block `ctr0` (GCM's inc32: only
/// the last four bytes count, wrapping) into `buf`. `first` is the counter block
/// as given (SIV's CTR clears two bits of it and counts over the whole block).
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn ctr32_xor(rk: &[__m128i; 15], nonce: &[u8; 12], ctr0: u32, buf: &mut [u8]) {
    let mut ctr = ctr0;
    let mut chunks = buf.chunks_exact_mut(64);
    for c in &mut chunks {
        let ks = encrypt4(
            rk,
            [
                counter(nonce, ctr),
                counter(nonce, ctr.wrapping_add(1)),
                counter(nonce, ctr.wrapping_add(2)),
                counter(nonce, ctr.wrapping_add(3)),
            ],
        );
        ctr = ctr.wrapping_add(4);
        for (b, k) in c.chunks_exact_mut(16).zip(ks) {
            let x = store(_mm_xor_si128(load(b), k));
            b.copy_from_slice(&x);
        }
    }
    for b in chunks.into_remainder().chunks_mut(16) {
        let k = store(encrypt1(rk, counter(nonce, ctr)));
        ctr = ctr.wrapping_add(1);
        for (x, y) in b.iter_mut().zip(k) {
            *x ^= y;
        }
    }
}

/// Most bytes one GCM message may hold (NIST SP 800-38D: 2^39 - 256 bits).
pub const GCM_MAX_PLAINTEXT: u64 = (1 << 36) - 32;

/// An AES-256-GCM key: the schedule and the hash key H (byte-reversed).
#[derive(Clone)]
pub struct Gcm {
    aes: Aes256,
    h: __m128i,
}

impl Drop for Gcm {
    fn drop(&mut self) {
        self.h.zeroize();
    }
}

#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn gcm_h(rk: &[__m128i; 15]) -> __m128i {
    bswap(encrypt1(rk, _mm_setzero_si128()))
}

/// The tag over `ad` and ciphertext `ct` (J0 = nonce || 1).
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn gcm_tag(rk: &[__m128i; 15], h: __m128i, nonce: &[u8; 12], ad: &[u8], ct: &[u8]) -> __m128i {
    let mut y = ghash(h, _mm_setzero_si128(), ad);
    y = ghash(h, y, ct);
    let lens = _mm_set_epi64x((ad.len() as u64 * 8) as i64, (ct.len() as u64 * 8) as i64);
    y = gfmul(_mm_xor_si128(y, lens), h);
    _mm_xor_si128(bswap(y), encrypt1(rk, counter(nonce, 1)))
}

#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn gcm_seal(g: &Gcm, nonce: &[u8; 12], ad: &[u8], buf: &mut [u8]) -> [u8; 16] {
    ctr32_xor(&g.aes.rk, nonce, 2, buf);
    store(gcm_tag(&g.aes.rk, g.h, nonce, ad, buf))
}

#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn gcm_open(g: &Gcm, nonce: &[u8; 12], ad: &[u8], buf: &mut [u8], tag: &[u8; 16]) -> bool {
    let want = gcm_tag(&g.aes.rk, g.h, nonce, ad, buf);
    // Constant time: compare all 16 bytes at once.
    let diff = _mm_xor_si128(want, load(tag));
    if _mm_testz_si128(diff, diff) == 0 {
        return false;
    }
    ctr32_xor(&g.aes.rk, nonce, 2, buf);
    true
}

/// Why a GCM call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcmError {
    /// The message is longer than GCM allows under one nonce.
    TooLong,
    /// The tag did not match; the buffer is unchanged.
    Authentication,
}

impl Gcm {
    pub fn new(ni: Ni, key: &[u8; 32]) -> Gcm {
        let aes = Aes256::new(ni, key);
        // SAFETY: `ni` proves the CPU features.
        let h = unsafe { gcm_h(&aes.rk) };
        Gcm { aes, h }
    }

    /// Encrypts `buf` in place and returns the tag.
    pub fn seal(&self, nonce: &[u8; 12], ad: &[u8], buf: &mut [u8]) -> Result<[u8; 16], GcmError> {
        if buf.len() as u64 > GCM_MAX_PLAINTEXT || ad.len() as u64 > GCM_MAX_PLAINTEXT {
            return Err(GcmError::TooLong);
        }
        // SAFETY: `self.aes` holds the `Ni` proof of the CPU features.
        Ok(unsafe { gcm_seal(self, nonce, ad, buf) })
    }

    /// Checks the tag, then decrypts `buf` in place; on failure `buf` is unchanged.
    pub fn open(
        &self,
        nonce: &[u8; 12],
        ad: &[u8],
        buf: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), GcmError> {
        if buf.len() as u64 > GCM_MAX_PLAINTEXT || ad.len() as u64 > GCM_MAX_PLAINTEXT {
            return Err(GcmError::TooLong);
        }
        // SAFETY: `self.aes` holds the `Ni` proof of the CPU features.
        if unsafe { gcm_open(self, nonce, ad, buf, tag) } {
            Ok(())
        } else {
            Err(GcmError::Authentication)
        }
    }
}

// ---------------------------------------------------------------------------
// SIV (RFC 5297): S2V over CMAC, then CTR with the IV as the counter block.

/// S2V's doubling in GF(2^128) (big-endian bit order).
fn dbl(b: [u8; 16]) -> [u8; 16] {
    let x = u128::from_be_bytes(b);
    ((x << 1) ^ if x >> 127 == 1 { 0x87 } else { 0 }).to_be_bytes()
}

/// AES-256-SIV with both schedules and the CMAC subkeys expanded once.
#[derive(Clone)]
pub struct Siv {
    mac: Aes256,
    ctr: Aes256,
    k1: __m128i,
    k2: __m128i,
    /// CMAC(K, 0^128), S2V's first value.
    d0: [u8; 16],
}

impl Drop for Siv {
    fn drop(&mut self) {
        self.k1.zeroize();
        self.k2.zeroize();
        self.d0.zeroize();
    }
}

/// CMAC of `msg`, with `tail` (when given) XORed into its last 16 bytes (S2V's
/// `xorend`; `msg` is then at least 16 bytes long).
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn cmac(s: &Siv, msg: &[u8], tail: Option<&[u8; 16]>) -> __m128i {
    let rk = &s.mac.rk;
    let n = msg.len();
    let full = if n == 0 { 0 } else { (n - 1) / 16 };
    let tail_from = n.saturating_sub(16);
    let tail_v = tail.map(|t| load(t));
    let mut x = _mm_setzero_si128();
    for b in 0..full {
        let mut m = load(&msg[b * 16..b * 16 + 16]);
        if let Some(t) = tail_v {
            // The tail is the last 16 bytes of the message; a full block before
            // the last one overlaps it only when the tail starts inside it.
            if b * 16 + 16 > tail_from {
                let mut tb = [0u8; 16];
                let t = store(t);
                for (j, v) in tb.iter_mut().enumerate() {
                    let i = b * 16 + j;
                    if i >= tail_from {
                        *v = t[i - tail_from];
                    }
                }
                m = _mm_xor_si128(m, load(&tb));
            }
        }
        x = encrypt1(rk, _mm_xor_si128(x, m));
    }
    let rest = &msg[full * 16..];
    let mut last = [0u8; 16];
    last[..rest.len()].copy_from_slice(rest);
    if let Some(t) = tail {
        for (j, v) in last.iter_mut().enumerate().take(rest.len()) {
            let i = full * 16 + j;
            if i >= tail_from {
                *v ^= t[i - tail_from];
            }
        }
    }
    let last = if rest.len() == 16 {
        _mm_xor_si128(load(&last), s.k1)
    } else {
        last[rest.len()] = 0x80;
        _mm_xor_si128(load(&last), s.k2)
    };
    encrypt1(rk, _mm_xor_si128(x, last))
}

#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn s2v(s: &Siv, headers: &[&[u8]], pt: &[u8]) -> [u8; 16] {
    let mut d = s.d0;
    for h in headers {
        d = dbl(d);
        let c = store(cmac(s, h, None));
        for (x, y) in d.iter_mut().zip(c) {
            *x ^= y;
        }
    }
    if pt.len() >= 16 {
        store(cmac(s, pt, Some(&d)))
    } else {
        let mut t = dbl(d);
        for (x, y) in t.iter_mut().zip(pt) {
            *x ^= y;
        }
        // `dbl(D) xor pad(Sn)` is CMAC'd as one complete block.
        t[pt.len()] ^= 0x80;
        store(cmac(s, &t, None))
    }
}

/// CTR over the whole 128-bit counter block `iv` with bits 63 and 31 cleared.
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn siv_ctr(s: &Siv, iv: &[u8; 16], buf: &mut [u8]) {
    let mut q = *iv;
    q[8] &= 0x7f;
    q[12] &= 0x7f;
    let base = u128::from_be_bytes(q);
    let block = |i: u128| load(&base.wrapping_add(i).to_be_bytes());
    let rk = &s.ctr.rk;
    let mut i = 0u128;
    let mut chunks = buf.chunks_exact_mut(64);
    for c in &mut chunks {
        let ks = encrypt4(rk, [block(i), block(i + 1), block(i + 2), block(i + 3)]);
        i += 4;
        for (b, k) in c.chunks_exact_mut(16).zip(ks) {
            let x = store(_mm_xor_si128(load(b), k));
            b.copy_from_slice(&x);
        }
    }
    for b in chunks.into_remainder().chunks_mut(16) {
        let k = store(encrypt1(rk, block(i)));
        i += 1;
        for (x, y) in b.iter_mut().zip(k) {
            *x ^= y;
        }
    }
}

#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn siv_seal(s: &Siv, headers: &[&[u8]], buf: &mut [u8]) -> [u8; 16] {
    let iv = s2v(s, headers, buf);
    siv_ctr(s, &iv, buf);
    iv
}

#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn siv_open(s: &Siv, headers: &[&[u8]], buf: &mut [u8], iv: &[u8; 16]) -> bool {
    siv_ctr(s, iv, buf);
    let want = load(&s2v(s, headers, buf));
    let diff = _mm_xor_si128(want, load(iv));
    if _mm_testz_si128(diff, diff) == 0 {
        // Put the ciphertext back: the caller's buffer is unchanged on failure.
        siv_ctr(s, iv, buf);
        return false;
    }
    true
}

impl Siv {
    /// From a 64-byte key: the first half keys CMAC, the second CTR.
    pub fn new(ni: Ni, key: &[u8; 64]) -> Siv {
        let mac_key: &[u8; 32] = key[..32].try_into().expect("32 bytes");
        let ctr_key: &[u8; 32] = key[32..].try_into().expect("32 bytes");
        let mac = Aes256::new(ni, mac_key);
        let ctr = Aes256::new(ni, ctr_key);
        let mut l = [0u8; 16];
        mac.encrypt_block(&mut l);
        let k1b = dbl(l);
        let k2b = dbl(k1b);
        l.zeroize();
        // SAFETY: `ni` proves the CPU features.
        let (k1, k2) = unsafe { (load(&k1b), load(&k2b)) };
        let mut siv = Siv {
            mac,
            ctr,
            k1,
            k2,
            d0: [0u8; 16],
        };
        let mut zero = [0u8; 16];
        // SAFETY: `ni` proves the CPU features.
        let d0 = unsafe { store(cmac(&siv, &zero, None)) };
        zero.zeroize();
        siv.d0 = d0;
        siv
    }

    /// Encrypts `buf` in place; returns the synthetic IV.
    pub fn seal(&self, headers: &[&[u8]], buf: &mut [u8]) -> [u8; 16] {
        // SAFETY: `self.mac` holds the `Ni` proof of the CPU features.
        unsafe { siv_seal(self, headers, buf) }
    }

    /// Decrypts `buf` in place and checks the IV; on failure `buf` is unchanged.
    pub fn open(&self, headers: &[&[u8]], buf: &mut [u8], iv: &[u8; 16]) -> bool {
        // SAFETY: `self.mac` holds the `Ni` proof of the CPU features.
        unsafe { siv_open(self, headers, buf, iv) }
    }
}

impl std::fmt::Debug for Aes256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("aesni::Aes256(..)")
    }
}
