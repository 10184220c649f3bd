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

/// Each 32-bit word XORed with every word before it (w0, w0^w1, w0^w1^w2, ...):
/// the running XOR of the key schedule's word recurrence.
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn prefix_xor(x: __m128i) -> __m128i {
    let x = _mm_xor_si128(x, _mm_slli_si128::<4>(x));
    _mm_xor_si128(x, _mm_slli_si128::<8>(x))
}

/// The even round key: the previous even one's prefix XOR with
/// SubWord(RotWord(last word of the odd key)) ^ rcon, from `aeskeygenassist`.
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn assist_1(t1: __m128i, t2: __m128i) -> __m128i {
    _mm_xor_si128(prefix_xor(t1), _mm_shuffle_epi32::<0xff>(t2))
}

/// The odd round key: the previous odd one's prefix XOR with SubWord(last word
/// of the new even key).
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn assist_2(t1: __m128i, t3: __m128i) -> __m128i {
    let t2 = _mm_shuffle_epi32::<0xaa>(_mm_aeskeygenassist_si128::<0>(t1));
    _mm_xor_si128(prefix_xor(t3), t2)
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
            t3 = assist_2(t1, t3);
            rk[$i + 1] = t3;
        };
    }
    round!(2, 0x01);
    round!(4, 0x02);
    round!(6, 0x04);
    round!(8, 0x08);
    round!(10, 0x10);
    round!(12, 0x20);
    // The last round key has no odd partner.
    rk[14] = assist_1(t1, _mm_aeskeygenassist_si128::<0x40>(t3));
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

/// The 256-bit carry-less product of two byte-reversed field elements (lo, hi),
/// not yet reduced: four multiplies, no Karatsuba.
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn clmul(a: __m128i, b: __m128i) -> (__m128i, __m128i) {
    let lo = _mm_clmulepi64_si128::<0x00>(a, b);
    let mid = _mm_xor_si128(
        _mm_clmulepi64_si128::<0x10>(a, b),
        _mm_clmulepi64_si128::<0x01>(a, b),
    );
    let hi = _mm_clmulepi64_si128::<0x11>(a, b);
    (
        _mm_xor_si128(lo, _mm_slli_si128::<8>(mid)),
        _mm_xor_si128(hi, _mm_srli_si128::<8>(mid)),
    )
}

/// Reduces a 256-bit product to a field element (Gueron and Kounavis, "Intel
/// Carry-Less Multiplication Instruction and its Usage for Computing the GCM
/// Mode", algorithm 5: shift left by one bit for GHASH's reflected bit order,
/// then reduce modulo x^128 + x^7 + x^2 + x + 1). Both steps are linear, so a
/// sum of products can be reduced once (aggregated reduction, [`Ghash::flush`]).
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn reduce(lo: __m128i, hi: __m128i) -> __m128i {
    let (mut t3, mut t6) = (lo, hi);
    // Shift the 256-bit product left by one bit.
    let mut t7 = _mm_srli_epi32::<31>(t3);
    let mut t8 = _mm_srli_epi32::<31>(t6);
    t3 = _mm_slli_epi32::<1>(t3);
    t6 = _mm_slli_epi32::<1>(t6);
    let t9 = _mm_srli_si128::<12>(t7);
    t8 = _mm_slli_si128::<4>(t8);
    t7 = _mm_slli_si128::<4>(t7);
    t3 = _mm_or_si128(t3, t7);
    t6 = _mm_or_si128(t6, t8);
    t6 = _mm_or_si128(t6, t9);
    // Reduce.
    t7 = _mm_slli_epi32::<31>(t3);
    t8 = _mm_slli_epi32::<30>(t3);
    let t9 = _mm_slli_epi32::<25>(t3);
    t7 = _mm_xor_si128(t7, t8);
    t7 = _mm_xor_si128(t7, t9);
    t8 = _mm_srli_si128::<4>(t7);
    t7 = _mm_slli_si128::<12>(t7);
    t3 = _mm_xor_si128(t3, t7);
    let mut t2 = _mm_srli_epi32::<1>(t3);
    let t4 = _mm_srli_epi32::<2>(t3);
    let t5 = _mm_srli_epi32::<7>(t3);
    t2 = _mm_xor_si128(t2, t4);
    t2 = _mm_xor_si128(t2, t5);
    t2 = _mm_xor_si128(t2, t8);
    t3 = _mm_xor_si128(t3, t2);
    _mm_xor_si128(t6, t3)
}

#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn gfmul(a: __m128i, b: __m128i) -> __m128i {
    let (lo, hi) = clmul(a, b);
    reduce(lo, hi)
}

/// Blocks GHASH takes before one aggregated reduction.
const AGG: usize = 8;

/// GHASH over a stream of byte segments, each zero-padded to whole blocks by
/// [`pad`](Self::pad); up to [`AGG`] blocks are multiplied by H^k..H^1 side by
/// side and reduced once, instead of one dependent multiply per block.
struct Ghash<'a> {
    /// H^1 ..= H^AGG, byte-reversed.
    hp: &'a [__m128i; AGG],
    y: __m128i,
    pending: [__m128i; AGG],
    n: usize,
    partial: [u8; 16],
    plen: usize,
}

impl<'a> Ghash<'a> {
    #[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
    fn new(hp: &'a [__m128i; AGG]) -> Self {
        Ghash {
            hp,
            y: _mm_setzero_si128(),
            pending: [_mm_setzero_si128(); AGG],
            n: 0,
            partial: [0u8; 16],
            plen: 0,
        }
    }

    /// One block, already byte-reversed.
    #[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
    fn block(&mut self, x: __m128i) {
        self.pending[self.n] = x;
        self.n += 1;
        if self.n == AGG {
            self.flush();
        }
    }

    /// Y = (Y ^ X1)·H^k ^ X2·H^(k-1) ^ ... ^ Xk·H, reduced once.
    #[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
    fn flush(&mut self) {
        let k = self.n;
        if k == 0 {
            return;
        }
        let first = _mm_xor_si128(self.pending[0], self.y);
        let (mut lo, mut hi) = clmul(first, self.hp[k - 1]);
        for i in 1..k {
            let (l, h) = clmul(self.pending[i], self.hp[k - 1 - i]);
            lo = _mm_xor_si128(lo, l);
            hi = _mm_xor_si128(hi, h);
        }
        self.y = reduce(lo, hi);
        self.n = 0;
    }

    /// Appends bytes to the current segment.
    #[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
    fn bytes(&mut self, mut data: &[u8]) {
        if self.plen > 0 {
            let take = (16 - self.plen).min(data.len());
            self.partial[self.plen..self.plen + take].copy_from_slice(&data[..take]);
            self.plen += take;
            data = &data[take..];
            if self.plen < 16 {
                return;
            }
            self.block(bswap(load(&self.partial)));
            self.plen = 0;
        }
        let mut chunks = data.chunks_exact(16);
        for c in &mut chunks {
            self.block(bswap(load(c)));
        }
        let rest = chunks.remainder();
        self.partial[..rest.len()].copy_from_slice(rest);
        self.plen = rest.len();
    }

    /// Ends a segment: its last partial block, zero-padded.
    #[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
    fn pad(&mut self) {
        if self.plen > 0 {
            self.partial[self.plen..].fill(0);
            self.block(bswap(load(&self.partial)));
            self.plen = 0;
        }
    }

    /// The lengths block, and the hash.
    #[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
    fn finish(mut self, ad_len: usize, ct_len: usize) -> __m128i {
        self.pad();
        self.block(_mm_set_epi64x(
            (ad_len as u64 * 8) as i64,
            (ct_len as u64 * 8) as i64,
        ));
        self.flush();
        self.partial.zeroize();
        bswap(self.y)
    }
}

/// The counter block for 32-bit big-endian counter `ctr` after `nonce`.
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn counter(nonce: &[u8; 12], ctr: u32) -> __m128i {
    let mut b = [0u8; 16];
    b[..12].copy_from_slice(nonce);
    b[12..].copy_from_slice(&ctr.to_be_bytes());
    load(&b)
}

/// XORs keystream blocks `ks` into `buf` (at most `ks.len()` blocks of it).
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn xor_blocks(buf: &mut [u8], ks: &[__m128i]) {
    for (b, k) in buf.chunks_mut(16).zip(ks) {
        if b.len() == 16 {
            let x = store(_mm_xor_si128(load(b), *k));
            b.copy_from_slice(&x);
        } else {
            for (x, y) in b.iter_mut().zip(store(*k)) {
                *x ^= y;
            }
        }
    }
}

/// XORs GCM's CTR keystream from 32-bit counter `ctr0` on (inc32: only the last
/// four bytes of the counter block count, wrapping) into `buf`.
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn ctr32_xor(rk: &[__m128i; 15], nonce: &[u8; 12], ctr0: u32, buf: &mut [u8]) {
    let mut ctr = ctr0;
    for c in buf.chunks_mut(64) {
        let mut ks = encrypt4(
            rk,
            [
                counter(nonce, ctr),
                counter(nonce, ctr.wrapping_add(1)),
                counter(nonce, ctr.wrapping_add(2)),
                counter(nonce, ctr.wrapping_add(3)),
            ],
        );
        ctr = ctr.wrapping_add(4);
        xor_blocks(c, &ks);
        // Keystream XOR ciphertext is the plaintext: leave none on the stack.
        ks.zeroize();
    }
}

/// Most bytes one GCM message may hold (NIST SP 800-38D: 2^39 - 256 bits).
pub const GCM_MAX_PLAINTEXT: u64 = (1 << 36) - 32;

/// An AES-256-GCM key: the schedule and the powers of the hash key H
/// (byte-reversed), all zeroized on drop.
#[derive(Clone)]
pub struct Gcm {
    aes: Aes256,
    hp: [__m128i; AGG],
}

impl Drop for Gcm {
    fn drop(&mut self) {
        self.hp.zeroize();
    }
}

#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn gcm_powers(rk: &[__m128i; 15]) -> [__m128i; AGG] {
    let h = bswap(encrypt1(rk, _mm_setzero_si128()));
    let mut hp = [h; AGG];
    for i in 1..AGG {
        hp[i] = gfmul(hp[i - 1], h);
    }
    hp
}

/// The first AES batch of a message: the tag mask E(J0) and the keystream for
/// its first three blocks, side by side (a field is rarely longer).
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn gcm_head(rk: &[__m128i; 15], nonce: &[u8; 12]) -> [__m128i; 4] {
    encrypt4(
        rk,
        [
            counter(nonce, 1),
            counter(nonce, 2),
            counter(nonce, 3),
            counter(nonce, 4),
        ],
    )
}

#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn gcm_hash(g: &Gcm, ad: &[&[u8]], ct: &[u8]) -> __m128i {
    let mut gh = Ghash::new(&g.hp);
    let mut ad_len = 0;
    for part in ad {
        gh.bytes(part);
        ad_len += part.len();
    }
    gh.pad();
    gh.bytes(ct);
    gh.finish(ad_len, ct.len())
}

#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn gcm_seal(g: &Gcm, nonce: &[u8; 12], ad: &[&[u8]], buf: &mut [u8]) -> [u8; 16] {
    let rk = &g.aes.rk;
    let mut head = gcm_head(rk, nonce);
    let first = buf.len().min(48);
    xor_blocks(&mut buf[..first], &head[1..]);
    if buf.len() > 48 {
        ctr32_xor(rk, nonce, 5, &mut buf[48..]);
    }
    let tag = store(_mm_xor_si128(gcm_hash(g, ad, buf), head[0]));
    head.zeroize();
    tag
}

#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn gcm_open(g: &Gcm, nonce: &[u8; 12], ad: &[&[u8]], buf: &mut [u8], tag: &[u8; 16]) -> bool {
    let rk = &g.aes.rk;
    let mut head = gcm_head(rk, nonce);
    let want = _mm_xor_si128(gcm_hash(g, ad, buf), head[0]);
    // Constant time: compare all 16 bytes at once.
    let diff = _mm_xor_si128(want, load(tag));
    if _mm_testz_si128(diff, diff) == 0 {
        head.zeroize();
        return false;
    }
    let first = buf.len().min(48);
    xor_blocks(&mut buf[..first], &head[1..]);
    if buf.len() > 48 {
        ctr32_xor(rk, nonce, 5, &mut buf[48..]);
    }
    head.zeroize();
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
        let hp = unsafe { gcm_powers(&aes.rk) };
        Gcm { aes, hp }
    }

    fn check(ad: &[&[u8]], buf: &[u8]) -> Result<(), GcmError> {
        let ad_len: u64 = ad.iter().map(|p| p.len() as u64).sum();
        if buf.len() as u64 > GCM_MAX_PLAINTEXT || ad_len > GCM_MAX_PLAINTEXT {
            return Err(GcmError::TooLong);
        }
        Ok(())
    }

    /// Encrypts `buf` in place and returns the tag; the associated data is the
    /// concatenation of the `ad` parts.
    pub fn seal(
        &self,
        nonce: &[u8; 12],
        ad: &[&[u8]],
        buf: &mut [u8],
    ) -> Result<[u8; 16], GcmError> {
        Gcm::check(ad, buf)?;
        // SAFETY: `self.aes` holds the `Ni` proof of the CPU features.
        Ok(unsafe { gcm_seal(self, nonce, ad, buf) })
    }

    /// Checks the tag, then decrypts `buf` in place; on failure `buf` is unchanged.
    pub fn open(
        &self,
        nonce: &[u8; 12],
        ad: &[&[u8]],
        buf: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), GcmError> {
        Gcm::check(ad, buf)?;
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

/// CMAC of `msg` continued from chaining value `x` (zero for a whole message):
/// every block but the last is chained; the last is completed with K1, or
/// padded and completed with K2.
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn cmac_from(s: &Siv, mut x: __m128i, msg: &[u8]) -> __m128i {
    let rk = &s.mac.rk;
    let full = msg.len().saturating_sub(1) / 16;
    for b in msg[..full * 16].chunks_exact(16) {
        x = encrypt1(rk, _mm_xor_si128(x, load(b)));
    }
    let rest = &msg[full * 16..];
    let mut last = [0u8; 16];
    last[..rest.len()].copy_from_slice(rest);
    let last = if rest.len() == 16 {
        _mm_xor_si128(load(&last), s.k1)
    } else {
        last[rest.len()] = 0x80;
        _mm_xor_si128(load(&last), s.k2)
    };
    encrypt1(rk, _mm_xor_si128(x, last))
}

#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn cmac(s: &Siv, msg: &[u8]) -> __m128i {
    cmac_from(s, _mm_setzero_si128(), msg)
}

/// CMAC of `msg` (at least 16 bytes) with `d` XORed into its last 16 bytes
/// (S2V's `xorend`): the blocks before the one where those bytes start are
/// chained as they are, the rest (16 to 31 bytes) is copied, XORed and finished.
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn cmac_xorend(s: &Siv, msg: &[u8], d: &[u8; 16]) -> __m128i {
    let rk = &s.mac.rk;
    let n = msg.len();
    let split = (n - 16) / 16 * 16;
    let mut x = _mm_setzero_si128();
    for b in msg[..split].chunks_exact(16) {
        x = encrypt1(rk, _mm_xor_si128(x, load(b)));
    }
    let mut rest = [0u8; 32];
    let r = n - split;
    rest[..r].copy_from_slice(&msg[split..]);
    for (v, t) in rest[r - 16..r].iter_mut().zip(d) {
        *v ^= t;
    }
    let mac = cmac_from(s, x, &rest[..r]);
    rest.zeroize();
    mac
}

/// S2V's running value after the associated-data components (before the
/// plaintext): the same for every message with the same components, so callers
/// that seal many messages under one context compute it once.
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn s2v_headers(s: &Siv, headers: &[&[u8]]) -> [u8; 16] {
    let mut d = s.d0;
    for h in headers {
        d = dbl(d);
        let c = store(cmac(s, h));
        for (x, y) in d.iter_mut().zip(c) {
            *x ^= y;
        }
    }
    d
}

/// S2V's last step: the synthetic IV from the running value `d` and the plaintext.
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn s2v_final(s: &Siv, d: &[u8; 16], pt: &[u8]) -> [u8; 16] {
    if pt.len() >= 16 {
        store(cmac_xorend(s, pt, d))
    } else {
        let mut t = dbl(*d);
        for (x, y) in t.iter_mut().zip(pt) {
            *x ^= y;
        }
        // `dbl(D) xor pad(Sn)` is CMAC'd as one complete block.
        t[pt.len()] ^= 0x80;
        let iv = store(cmac(s, &t));
        t.zeroize();
        iv
    }
}

/// CTR over the whole 128-bit counter block `iv` with bits 63 and 31 cleared,
/// four blocks at a time.
#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn siv_ctr(s: &Siv, iv: &[u8; 16], buf: &mut [u8]) {
    let mut q = *iv;
    q[8] &= 0x7f;
    q[12] &= 0x7f;
    let base = u128::from_be_bytes(q);
    let block = |i: u128| load(&base.wrapping_add(i).to_be_bytes());
    let rk = &s.ctr.rk;
    let mut i = 0u128;
    for c in buf.chunks_mut(64) {
        let mut ks = encrypt4(rk, [block(i), block(i + 1), block(i + 2), block(i + 3)]);
        i += 4;
        xor_blocks(c, &ks);
        ks.zeroize();
    }
}

#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn siv_seal(s: &Siv, d: &[u8; 16], buf: &mut [u8]) -> [u8; 16] {
    let iv = s2v_final(s, d, buf);
    siv_ctr(s, &iv, buf);
    iv
}

#[target_feature(enable = "aes,pclmulqdq,avx2,sse4.1,ssse3")]
fn siv_open(s: &Siv, d: &[u8; 16], buf: &mut [u8], iv: &[u8; 16]) -> bool {
    siv_ctr(s, iv, buf);
    let want = load(&s2v_final(s, d, buf));
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
        let d0 = unsafe { store(cmac(&siv, &zero)) };
        zero.zeroize();
        siv.d0 = d0;
        siv
    }

    /// S2V's value after `headers` (see [`s2v_headers`]).
    pub fn prefix(&self, headers: &[&[u8]]) -> [u8; 16] {
        // SAFETY: `self.mac` holds the `Ni` proof of the CPU features.
        unsafe { s2v_headers(self, headers) }
    }

    /// Encrypts `buf` in place after the headers that gave `prefix`; returns
    /// the synthetic IV.
    pub fn seal(&self, prefix: &[u8; 16], buf: &mut [u8]) -> [u8; 16] {
        // SAFETY: `self.mac` holds the `Ni` proof of the CPU features.
        unsafe { siv_seal(self, prefix, buf) }
    }

    /// Decrypts `buf` in place and checks the IV; on failure `buf` is unchanged.
    pub fn open(&self, prefix: &[u8; 16], buf: &mut [u8], iv: &[u8; 16]) -> bool {
        // SAFETY: `self.mac` holds the `Ni` proof of the CPU features.
        unsafe { siv_open(self, prefix, buf, iv) }
    }
}

impl std::fmt::Debug for Aes256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("aesni::Aes256(..)")
    }
}
