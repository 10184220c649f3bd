//! Avro object container files, read and written as blocks of raw datum bytes, so
//! records stream through the byte-level transform without being decoded. Hides the
//! header layout, sync markers and codecs (apache-avro's: null, deflate, snappy,
//! zstandard).

use std::io::{self, Read, Write};

use apache_avro::Codec;
use thiserror::Error;

use super::binary::write_long;

const MAGIC: &[u8; 4] = b"Obj\x01";
/// Largest compressed block we accept; real writers use kilobytes to a few MiB.
pub const MAX_BLOCK_BYTES: u64 = 1 << 30;
/// Largest decompressed block we accept, so a small hostile block cannot claim
/// gigabytes of memory (a decompression bomb).
pub const MAX_DECOMPRESSED_BYTES: usize = 256 << 20;

/// Container-level problems. Record-level problems are the transform's.
#[derive(Debug, Error)]
pub enum ContainerError {
    #[error("not an Avro object container file (it does not start with \"Obj\\x01\")")]
    NotAvro,
    #[error("file header is damaged: {0}")]
    BadHeader(String),
    #[error("block {block} is truncated: the file ends inside it")]
    Truncated { block: u64 },
    #[error("block {block} is damaged: {msg}")]
    BadBlock { block: u64, msg: String },
    #[error("codec \"{0}\" is not supported (supported: null, deflate, snappy, zstandard)")]
    Codec(String),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Reads a zig-zag long from a stream; `Ok(None)` on a clean end of stream.
fn read_long_opt<R: Read>(r: &mut R) -> io::Result<Option<i64>> {
    let mut value: u64 = 0;
    let mut shift = 0;
    let mut byte = [0u8; 1];
    loop {
        if r.read(&mut byte)? == 0 {
            if shift == 0 {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        value |= u64::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            return Ok(Some(((value >> 1) as i64) ^ -((value & 1) as i64)));
        }
        shift += 7;
        if shift > 63 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed varint",
            ));
        }
    }
}

fn read_long<R: Read>(r: &mut R) -> io::Result<i64> {
    read_long_opt(r)?.ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
}

fn read_len_bytes<R: Read>(r: &mut R, what: &str) -> Result<Vec<u8>, ContainerError> {
    let n = read_long(r).map_err(|e| ContainerError::BadHeader(format!("{what}: {e}")))?;
    if !(0..=(64 << 20)).contains(&n) {
        return Err(ContainerError::BadHeader(format!(
            "{what} has implausible length {n}"
        )));
    }
    let mut buf = Vec::new();
    r.take(n as u64).read_to_end(&mut buf)?;
    if buf.len() as i64 != n {
        return Err(ContainerError::BadHeader(format!(
            "file ends inside {what}"
        )));
    }
    Ok(buf)
}

/// One decompressed block.
#[derive(Debug)]
pub struct Block {
    /// Records in the block.
    pub count: u64,
    /// The records' concatenated datums.
    pub data: Vec<u8>,
}

/// Reads a container file block by block.
pub struct ContainerReader<R: Read> {
    r: R,
    /// `avro.schema`, as text.
    pub schema: String,
    /// `avro.codec`, as written (`null` when absent).
    pub codec_name: String,
    codec: Codec,
    /// Every metadata entry in file order, `avro.*` included.
    pub metadata: Vec<(String, Vec<u8>)>,
    sync: [u8; 16],
    blocks: u64,
}

impl<R: Read> ContainerReader<R> {
    /// Reads and checks the header.
    pub fn open(mut r: R) -> Result<Self, ContainerError> {
        let mut magic = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            let n = r.read(&mut magic[got..])?;
            if n == 0 {
                return Err(ContainerError::NotAvro);
            }
            got += n;
        }
        if &magic != MAGIC {
            return Err(ContainerError::NotAvro);
        }
        let mut metadata = Vec::new();
        loop {
            let mut n = read_long(&mut r).map_err(|e| ContainerError::BadHeader(e.to_string()))?;
            if n == 0 {
                break;
            }
            if n < 0 {
                // A negative count is followed by the block's byte size.
                n = n.checked_neg().ok_or_else(|| {
                    ContainerError::BadHeader("implausible metadata count".into())
                })?;
                read_long(&mut r).map_err(|e| ContainerError::BadHeader(e.to_string()))?;
            }
            if n > 10_000 {
                return Err(ContainerError::BadHeader(format!("{n} metadata entries")));
            }
            for _ in 0..n {
                let k = read_len_bytes(&mut r, "a metadata key")?;
                let k = String::from_utf8(k)
                    .map_err(|_| ContainerError::BadHeader("a metadata key is not UTF-8".into()))?;
                let v = read_len_bytes(&mut r, "a metadata value")?;
                metadata.push((k, v));
            }
        }
        // Readers disagree on which of two equal keys counts (fastavro and Java take
        // the last, others the first), so a file could show one schema to a checker
        // and another to us: refuse it.
        for (i, (k, _)) in metadata.iter().enumerate() {
            if metadata[..i].iter().any(|(p, _)| p == k) {
                let k: String = k.chars().take(64).collect();
                return Err(ContainerError::BadHeader(format!(
                    "metadata key {k:?} appears more than once (readers disagree on which counts)"
                )));
            }
        }
        let mut sync = [0u8; 16];
        r.read_exact(&mut sync)
            .map_err(|_| ContainerError::BadHeader("file ends before the sync marker".into()))?;
        let get = |k: &str| {
            metadata
                .iter()
                .find(|(mk, _)| mk == k)
                .map(|(_, v)| v.clone())
        };
        let schema = get("avro.schema")
            .ok_or_else(|| ContainerError::BadHeader("no avro.schema in the metadata".into()))?;
        let schema = String::from_utf8(schema)
            .map_err(|_| ContainerError::BadHeader("avro.schema is not UTF-8".into()))?;
        let codec_name = get("avro.codec")
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .unwrap_or_else(|| "null".into());
        let codec = parse_codec(&codec_name)?;
        Ok(ContainerReader {
            r,
            schema,
            codec_name,
            codec,
            metadata,
            sync,
            blocks: 0,
        })
    }

    /// The underlying reader.
    pub fn inner_ref(&self) -> &R {
        &self.r
    }

    /// The codec, for writing the output with the same one.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// A user metadata value.
    pub fn meta(&self, key: &str) -> Option<&[u8]> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// The next block, or `None` at the end of the file.
    pub fn next_block(&mut self) -> Result<Option<Block>, ContainerError> {
        let block = self.blocks;
        let truncated = |e: io::Error| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                ContainerError::Truncated { block }
            } else {
                ContainerError::BadBlock {
                    block,
                    msg: e.to_string(),
                }
            }
        };
        let Some(count) = read_long_opt(&mut self.r).map_err(truncated)? else {
            return Ok(None);
        };
        let size = read_long(&mut self.r).map_err(truncated)?;
        if count < 0 || size < 0 || size as u64 > MAX_BLOCK_BYTES {
            return Err(ContainerError::BadBlock {
                block,
                msg: format!("implausible record count {count} or size {size}"),
            });
        }
        let mut data = Vec::new();
        (&mut self.r).take(size as u64).read_to_end(&mut data)?;
        if data.len() as u64 != size as u64 {
            return Err(ContainerError::Truncated { block });
        }
        let mut sync = [0u8; 16];
        self.r.read_exact(&mut sync).map_err(truncated)?;
        if sync != self.sync {
            return Err(ContainerError::BadBlock {
                block,
                msg: "sync marker does not match the header's (corrupt or spliced file)".into(),
            });
        }
        let data = decompress(self.codec, data).map_err(|e| ContainerError::BadBlock {
            block,
            msg: format!("{} decompression failed: {e}", self.codec_name),
        })?;
        self.blocks += 1;
        Ok(Some(Block {
            count: count as u64,
            data,
        }))
    }
}

/// Why a block did not decompress.
#[derive(Debug, thiserror::Error)]
enum DecompressError {
    #[error("the block decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes")]
    TooBig,
    /// The codec's own message: the block is not valid for it.
    #[error("{0}")]
    Corrupt(String),
}

fn corrupt(e: impl std::fmt::Display) -> DecompressError {
    DecompressError::Corrupt(e.to_string())
}

/// Decompresses a block, refusing to produce more than [`MAX_DECOMPRESSED_BYTES`].
fn decompress(codec: Codec, mut data: Vec<u8>) -> Result<Vec<u8>, DecompressError> {
    match codec {
        Codec::Null => Ok(data),
        Codec::Deflate(_) => {
            miniz_oxide::inflate::decompress_to_vec_with_limit(&data, MAX_DECOMPRESSED_BYTES)
                .map_err(|e| match e.status {
                    miniz_oxide::inflate::TINFLStatus::HasMoreOutput => DecompressError::TooBig,
                    s => DecompressError::Corrupt(format!("{s:?}")),
                })
        }
        Codec::Snappy => {
            // The block is the raw snappy stream plus a 4-byte CRC32 of the output.
            let body = &data[..data.len().saturating_sub(4)];
            let n = snap::raw::decompress_len(body).map_err(corrupt)?;
            if n > MAX_DECOMPRESSED_BYTES {
                return Err(DecompressError::TooBig);
            }
            codec.decompress(&mut data).map_err(corrupt)?;
            Ok(data)
        }
        Codec::Zstandard(_) => {
            let mut out = Vec::new();
            zstd::stream::read::Decoder::new(data.as_slice())
                .map_err(corrupt)?
                .take(MAX_DECOMPRESSED_BYTES as u64 + 1)
                .read_to_end(&mut out)
                .map_err(corrupt)?;
            if out.len() > MAX_DECOMPRESSED_BYTES {
                return Err(DecompressError::TooBig);
            }
            Ok(out)
        }
    }
}

/// Parses an `avro.codec` name.
pub fn parse_codec(name: &str) -> Result<Codec, ContainerError> {
    match name {
        "null" | "" => Ok(Codec::Null),
        "deflate" => Ok(Codec::Deflate(Default::default())),
        "snappy" => Ok(Codec::Snappy),
        "zstandard" => Ok(Codec::Zstandard(Default::default())),
        other => Err(ContainerError::Codec(other.to_string())),
    }
}

/// Writes the container header.
pub fn write_header<W: Write>(
    w: &mut W,
    metadata: &[(String, Vec<u8>)],
    sync: &[u8; 16],
) -> io::Result<()> {
    let mut h = Vec::with_capacity(1024);
    h.extend_from_slice(MAGIC);
    if !metadata.is_empty() {
        write_long(&mut h, metadata.len() as i64);
        for (k, v) in metadata {
            write_long(&mut h, k.len() as i64);
            h.extend_from_slice(k.as_bytes());
            write_long(&mut h, v.len() as i64);
            h.extend_from_slice(v);
        }
    }
    write_long(&mut h, 0);
    h.extend_from_slice(sync);
    w.write_all(&h)
}

/// Writes data blocks (after a header written with the same sync marker).
pub struct BlockWriter<W: Write> {
    w: W,
    codec: Codec,
    sync: [u8; 16],
    head: Vec<u8>,
    pub bytes_written: u64,
}

impl<W: Write> BlockWriter<W> {
    pub fn new(w: W, codec: Codec, sync: [u8; 16]) -> Self {
        BlockWriter {
            w,
            codec,
            sync,
            head: Vec::with_capacity(20),
            bytes_written: 0,
        }
    }

    /// Compresses and writes one block of `count` records; `data` is consumed.
    pub fn write_block(&mut self, count: u64, mut data: Vec<u8>) -> io::Result<()> {
        if count == 0 {
            return Ok(());
        }
        self.codec
            .compress(&mut data)
            .map_err(|e| io::Error::other(format!("compression failed: {e}")))?;
        self.head.clear();
        write_long(&mut self.head, count as i64);
        write_long(&mut self.head, data.len() as i64);
        self.w.write_all(&self.head)?;
        self.w.write_all(&data)?;
        self.w.write_all(&self.sync)?;
        self.bytes_written += (self.head.len() + data.len() + 16) as u64;
        Ok(())
    }

    pub fn into_inner(self) -> W {
        self.w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value;
    use apache_avro::{Schema, Writer};

    #[test]
    fn reads_what_apache_avro_writes_and_vice_versa() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}"#,
        )
        .unwrap();
        for codec in [
            Codec::Null,
            Codec::Deflate(Default::default()),
            Codec::Snappy,
            Codec::Zstandard(Default::default()),
        ] {
            let mut w = Writer::with_codec(&schema, Vec::new(), codec).unwrap();
            w.add_user_metadata("app.key".into(), b"v").unwrap();
            for i in 0..100i64 {
                w.append_value(Value::Record(vec![("a".into(), Value::Long(i))]))
                    .unwrap();
            }
            let file = w.into_inner().unwrap();
            let mut r = ContainerReader::open(file.as_slice()).unwrap();
            assert_eq!(r.meta("app.key"), Some(&b"v"[..]));
            let mut total = 0;
            let mut out = Vec::new();
            let sync = [7u8; 16];
            write_header(&mut out, &r.metadata.clone(), &sync).unwrap();
            let mut bw = BlockWriter::new(out, r.codec(), sync);
            while let Some(b) = r.next_block().unwrap() {
                total += b.count;
                bw.write_block(b.count, b.data).unwrap();
            }
            assert_eq!(total, 100);
            let bytes = bw.into_inner();
            let back = apache_avro::Reader::new(bytes.as_slice()).unwrap();
            assert_eq!(back.count(), 100);
        }
    }

    #[test]
    fn decompression_bombs_are_refused() {
        let zeros = vec![0u8; MAX_DECOMPRESSED_BYTES + 1];
        let small = miniz_oxide::deflate::compress_to_vec(&zeros, 6);
        assert!(small.len() < 1 << 20);
        let e = decompress(Codec::Deflate(Default::default()), small).unwrap_err();
        assert!(matches!(e, DecompressError::TooBig), "{e}");
        let z = zstd::bulk::compress(&zeros, 1).unwrap();
        let e = decompress(Codec::Zstandard(Default::default()), z).unwrap_err();
        assert!(matches!(e, DecompressError::TooBig), "{e}");
        let mut s = snap::raw::Encoder::new().compress_vec(&zeros).unwrap();
        s.extend_from_slice(&[0, 0, 0, 0]);
        let e = decompress(Codec::Snappy, s).unwrap_err();
        assert!(matches!(e, DecompressError::TooBig), "{e}");
    }

    #[test]
    fn damaged_files_are_named_precisely() {
        assert!(matches!(
            ContainerReader::open(&b"PK\x03\x04"[..]),
            Err(ContainerError::NotAvro)
        ));
        assert!(matches!(
            ContainerReader::open(&b""[..]),
            Err(ContainerError::NotAvro)
        ));
        let schema = Schema::parse_str(r#""long""#).unwrap();
        let mut w = Writer::new(&schema, Vec::new()).unwrap();
        w.append_value(Value::Long(1)).unwrap();
        let file = w.into_inner().unwrap();
        let cut = &file[..file.len() - 5];
        let mut r = ContainerReader::open(cut).unwrap();
        assert!(matches!(
            r.next_block(),
            Err(ContainerError::Truncated { block: 0 })
        ));
        let mut bad = file.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        let mut r = ContainerReader::open(bad.as_slice()).unwrap();
        let e = r.next_block().unwrap_err().to_string();
        assert!(e.contains("sync marker"), "{e}");
    }

    #[test]
    fn a_key_given_twice_is_refused() {
        let mut h = Vec::new();
        let meta = vec![
            ("avro.schema".to_string(), br#""long""#.to_vec()),
            ("avro.schema".to_string(), br#""string""#.to_vec()),
        ];
        write_header(&mut h, &meta, &[7; 16]).unwrap();
        let Err(e) = ContainerReader::open(h.as_slice()) else {
            panic!("a file with two schemas was opened");
        };
        let e = e.to_string();
        assert!(
            e.contains("avro.schema") && e.contains("more than once"),
            "{e}"
        );
    }

    /// Found by fuzzing: a metadata count of i64::MIN overflowed its negation.
    #[test]
    fn the_most_negative_metadata_count_is_an_error() {
        let mut f = b"Obj\x01".to_vec();
        f.extend_from_slice(&[0xff; 9]);
        f.extend_from_slice(&[0x01, 0x00, 0x00]);
        assert!(matches!(
            ContainerReader::open(f.as_slice()),
            Err(ContainerError::BadHeader(_))
        ));
    }
}
