//! File mode: encrypt or decrypt an Avro object container file with no Kafka. The
//! writer schema comes from the file; the output carries the derived schema, the
//! input's codec and user metadata, and (encrypting) the wrapped DEKs in its
//! metadata. Records stream block by block in bounded memory. Output is written
//! to a [`staged::Staged`] file (unnamed on Linux) that gets its name only on
//! success, so an error, SIGINT/SIGTERM ([`interrupt`]) or even SIGKILL leaves
//! nothing readable behind.
//!
//! Metadata written (docs/ENCRYPTION.md, "Container files"):
//! `fieldcrypt.format` = `1`; `fieldcrypt.deks` = JSON
//! `{"v":1,"deks":[{"id","scope","kek","wrapped"}]}`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::avro::binary::Cursor;
use crate::avro::container::{write_header, BlockWriter, ContainerError, ContainerReader};
use crate::crypto::format::KeyId;
use crate::engine::{EncryptFailure, Engine, EngineError};
use crate::keys::{WrappedDek, WrappedKey};
use crate::schema::parse_schema_json;
use crate::schema::plan::is_encrypted_schema;
use crate::transform::decrypt::DekSet;
use crate::transform::{Counts, TransformError};

pub mod staged;

use staged::Staged;
use tokio_util::sync::CancellationToken;

/// A cancelled token (SIGINT/SIGTERM in the CLI; the pipeline's type) stops a
/// file command at its next block with [`FileError::Interrupted`], and its output
/// never appears.
fn check_interrupted(output: &Path, cancel: &CancellationToken) -> Result<(), FileError> {
    if cancel.is_cancelled() {
        return Err(FileError::Interrupted {
            path: output.to_path_buf(),
        });
    }
    Ok(())
}

/// Metadata key: format version of fieldcrypt's file metadata.
pub const META_FORMAT: &str = "fieldcrypt.format";
/// Metadata key: the wrapped DEKs used in the file.
pub const META_DEKS: &str = "fieldcrypt.deks";
/// DEK scope for file mode.
pub const FILE_SCOPE: &str = "file";

/// What went wrong, and where.
#[derive(Debug, Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Container {
        path: PathBuf,
        source: ContainerError,
    },
    #[error("{path}: record {index} (block {block}): {source}")]
    Record {
        path: PathBuf,
        index: u64,
        block: u64,
        source: TransformError,
    },
    #[error("{path}: {source}")]
    Engine {
        path: PathBuf,
        source: Box<EngineError>,
    },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("interrupted: {path} was not written")]
    Interrupted { path: PathBuf },
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct FileReport {
    pub records: u64,
    pub blocks: u64,
    pub fields: Counts,
    /// Data keys used (encrypt) or unwrapped (decrypt).
    pub deks: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub elapsed: Duration,
}

impl FileReport {
    pub fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Progress callback: (input bytes read, records so far).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DekMeta {
    v: u32,
    deks: Vec<DekEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DekEntry {
    id: String,
    scope: String,
    kek: String,
    wrapped: String,
}

impl DekMeta {
    /// The entry for each DEK a file's records used, in id order.
    fn of<'a>(used: impl Iterator<Item = &'a WrappedDek>) -> DekMeta {
        let mut deks: Vec<&WrappedDek> = used.collect();
        deks.sort_by_key(|d| d.id);
        DekMeta {
            v: 1,
            deks: deks
                .into_iter()
                .map(|d| DekEntry {
                    id: hex::encode(d.id),
                    scope: d.scope.clone(),
                    kek: d.wrapped.kek.clone(),
                    wrapped: base64::engine::general_purpose::STANDARD.encode(&d.wrapped.blob),
                })
                .collect(),
        }
    }
}

impl DekEntry {
    /// The wrapped DEK this entry describes; `None` when its id or blob is damaged.
    fn wrapped_dek(&self) -> Option<WrappedDek> {
        let id: KeyId = hex::decode(&self.id).ok()?.try_into().ok()?;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(&self.wrapped)
            .ok()?;
        Some(WrappedDek {
            id,
            scope: self.scope.clone(),
            wrapped: WrappedKey {
                kek: self.kek.clone(),
                blob,
            },
        })
    }
}

/// Counts bytes read, for progress.
struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn open_input(path: &Path) -> Result<ContainerReader<Counting<BufReader<File>>>, FileError> {
    let f = File::open(path).map_err(io_err(path))?;
    ContainerReader::open(Counting {
        inner: BufReader::with_capacity(1 << 20, f),
        n: 0,
    })
    .map_err(|source| FileError::Container {
        path: path.to_path_buf(),
        source,
    })
}

/// An engine failure (schema, plan, KMS) about the file at `path`.
fn engine_err<E: Into<EngineError>>(path: &Path) -> impl Fn(E) -> FileError + '_ {
    move |e| FileError::Engine {
        path: path.to_path_buf(),
        source: Box::new(e.into()),
    }
}

/// A damaged container at `path`.
fn container_err(path: &Path) -> impl Fn(ContainerError) -> FileError + '_ {
    move |source| FileError::Container {
        path: path.to_path_buf(),
        source,
    }
}

fn out_dir(output: &Path) -> PathBuf {
    match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The output file's metadata: its schema, the input's codec, and the input's user
/// metadata (fieldcrypt's own entries are dropped; encryption adds fresh ones).
fn output_metadata<R: Read>(
    schema: &serde_json::Value,
    reader: &ContainerReader<R>,
) -> Vec<(String, Vec<u8>)> {
    let mut metadata = vec![
        ("avro.schema".to_string(), schema.to_string().into_bytes()),
        (
            "avro.codec".to_string(),
            reader.codec_name.clone().into_bytes(),
        ),
    ];
    metadata.extend(
        reader
            .metadata
            .iter()
            .filter(|(k, _)| !k.starts_with("avro.") && !k.starts_with("fieldcrypt."))
            .cloned(),
    );
    metadata
}

/// Opens `input` for a transform into `output`, refusing to overwrite the input.
fn open_distinct(
    input: &Path,
    output: &Path,
) -> Result<ContainerReader<Counting<BufReader<File>>>, FileError> {
    if same_file(input, output) {
        return Err(FileError::Invalid {
            path: input.to_path_buf(),
            msg: "input and output are the same file".into(),
        });
    }
    open_input(input)
}

fn same_file(input: &Path, output: &Path) -> bool {
    match (input.canonicalize(), output.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// How `encrypt-file` treats a schema with nothing to encrypt.
#[derive(Debug, Clone, Default)]
pub struct EncryptOptions {
    /// Write the file even when its schema encrypts nothing (default: refuse,
    /// since that is most often a misspelled rule or marking and the output
    /// would be plaintext).
    pub allow_unencrypted: bool,
    /// Stops the command at its next block (default: never cancelled).
    pub cancel: CancellationToken,
}

/// Encrypts `input` into `output`; a schema with nothing to encrypt is refused.
pub async fn encrypt_file(
    engine: &Engine,
    input: &Path,
    output: &Path,
    progress: Progress<'_>,
) -> Result<FileReport, FileError> {
    encrypt_file_with(engine, input, output, EncryptOptions::default(), progress).await
}

/// [`encrypt_file`] with options.
pub async fn encrypt_file_with(
    engine: &Engine,
    input: &Path,
    output: &Path,
    options: EncryptOptions,
    progress: Progress<'_>,
) -> Result<FileReport, FileError> {
    let started = Instant::now();
    let invalid = |msg: String| FileError::Invalid {
        path: input.to_path_buf(),
        msg,
    };
    let mut reader = open_distinct(input, output)?;
    if reader.meta(META_DEKS).is_some() {
        return Err(invalid(
            "already encrypted by fieldcrypt (it has fieldcrypt.deks metadata)".into(),
        ));
    }
    let schema = parse_schema_json(&reader.schema).map_err(engine_err(input))?;
    if is_encrypted_schema(&schema) {
        return Err(invalid(
            "its schema is already an encrypted (fieldcrypt) schema".into(),
        ));
    }
    // The error already names the file.
    let label = "its schema";
    let enc = engine
        .encryptor(&schema, label)
        .map_err(engine_err(input))?;
    if enc.plan().is_passthrough() && !options.allow_unencrypted {
        return Err(invalid(format!(
            "nothing in its schema would be encrypted ({}), so {} would be plaintext; mark the \
             sensitive fields (\"sensitive\": true), map their confluent:tags under [tags.NAME] \
             or select them with [[rules]] in the config given with --config; or pass \
             --allow-unencrypted if the file holds nothing sensitive",
            crate::schema::policy::why_nothing_selected(
                &enc.plan().tree,
                &engine.config().plan_config().selection
            ),
            output.display()
        )));
    }

    let dir = out_dir(output);
    let body = tempfile::tempfile_in(&dir).map_err(io_err(&dir))?;
    let mut sync = [0u8; 16];
    rand::rng().fill_bytes(&mut sync);
    let mut blocks = BlockWriter::new(
        BufWriter::with_capacity(1 << 20, body),
        reader.codec(),
        sync,
    );

    let mut used: HashMap<KeyId, WrappedDek> = HashMap::new();
    let mut report = FileReport::default();
    let mut block_index = 0u64;
    while let Some(block) = reader.next_block().map_err(container_err(input))? {
        check_interrupted(output, &options.cancel)?;
        let min = enc.plan().tree.min_size(enc.plan().tree.root);
        block_count_plausible(input, block_index, block.count, block.data.len(), min)?;
        let mut out = Vec::with_capacity(block.data.len() + block.data.len() / 2 + 64);
        let mut cur = Cursor::new(&block.data);
        for _ in 0..block.count {
            let done = engine
                .encrypt_next(&enc, FILE_SCOPE, &mut cur, &mut out)
                .await
                .map_err(|e| match e {
                    EncryptFailure::Kms(e) => engine_err(input)(e),
                    EncryptFailure::Record(source) => FileError::Record {
                        path: input.to_path_buf(),
                        index: report.records,
                        block: block_index,
                        source,
                    },
                    e @ EncryptFailure::TooManyFields { .. } => FileError::Invalid {
                        path: input.to_path_buf(),
                        msg: format!("record {}: {e}", report.records),
                    },
                })?;
            report.fields += done.counts;
            if let Some(d) = done.dek {
                used.entry(*d.id()).or_insert_with(|| d.wrapped().clone());
            }
            report.records += 1;
        }
        block_fully_read(input, block_index, &cur, block.count)?;
        blocks
            .write_block(block.count, out)
            .map_err(io_err(output))?;
        block_index += 1;
        progress(reader_bytes(&reader), report.records);
    }
    report.blocks = block_index;
    report.deks = used.len();

    let mut metadata = output_metadata(&enc.plan().output_json, &reader);
    let meta = DekMeta::of(used.values());
    metadata.push((META_FORMAT.into(), b"1".to_vec()));
    metadata.push((
        META_DEKS.into(),
        serde_json::to_vec(&meta).map_err(|e| invalid(e.to_string()))?,
    ));

    let mut body = blocks
        .into_inner()
        .into_inner()
        .map_err(|e| io_err(output)(e.into_error()))?;
    body.seek(SeekFrom::Start(0)).map_err(io_err(output))?;
    let mut tmp = Staged::new_in(&dir).map_err(io_err(&dir))?;
    {
        let mut w = BufWriter::new(tmp.file_mut());
        write_header(&mut w, &metadata, &sync).map_err(io_err(output))?;
        std::io::copy(&mut body, &mut w).map_err(io_err(output))?;
        w.flush().map_err(io_err(output))?;
    }
    check_interrupted(output, &options.cancel)?;
    finish(tmp, output, &mut report, reader_bytes(&reader))?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// A record count the block's bytes cannot hold is damaged (and, with zero-size
/// records, would otherwise spin for up to 2^63 iterations).
fn block_count_plausible(
    input: &Path,
    block: u64,
    count: u64,
    data_len: usize,
    min: usize,
) -> Result<(), FileError> {
    let fits = if min == 0 {
        count <= (crate::avro::binary::MAX_ZERO_SIZE_ITEMS as u64).max(data_len as u64)
    } else {
        count.saturating_mul(min as u64) <= data_len as u64
    };
    if fits {
        return Ok(());
    }
    Err(FileError::Container {
        path: input.to_path_buf(),
        source: ContainerError::BadBlock {
            block,
            msg: format!("its record count {count} cannot fit in its {data_len} bytes"),
        },
    })
}

/// A block whose record count ends before its data does is damaged, not padding.
fn block_fully_read(
    input: &Path,
    block: u64,
    cur: &Cursor<'_>,
    count: u64,
) -> Result<(), FileError> {
    if cur.remaining() == 0 {
        return Ok(());
    }
    Err(FileError::Container {
        path: input.to_path_buf(),
        source: ContainerError::BadBlock {
            block,
            msg: format!("{} bytes left after its {count} records", cur.remaining()),
        },
    })
}

fn reader_bytes<R: Read>(r: &ContainerReader<Counting<R>>) -> u64 {
    r.inner_ref().n
}

fn finish(
    tmp: Staged,
    output: &Path,
    report: &mut FileReport,
    bytes_in: u64,
) -> Result<(), FileError> {
    report.bytes_out = tmp.file().metadata().map(|m| m.len()).unwrap_or(0);
    report.bytes_in = bytes_in;
    tmp.persist(output).map_err(io_err(output))?;
    Ok(())
}

/// Decrypts `input` (written by [`encrypt_file`]) into `output`.
pub async fn decrypt_file(
    engine: &Engine,
    input: &Path,
    output: &Path,
    progress: Progress<'_>,
) -> Result<FileReport, FileError> {
    decrypt_file_with(engine, input, output, &CancellationToken::new(), progress).await
}

/// [`decrypt_file`], stopped at the next block when `cancel` is cancelled.
pub async fn decrypt_file_with(
    engine: &Engine,
    input: &Path,
    output: &Path,
    cancel: &CancellationToken,
    progress: Progress<'_>,
) -> Result<FileReport, FileError> {
    let started = Instant::now();
    let invalid = |msg: String| FileError::Invalid {
        path: input.to_path_buf(),
        msg,
    };
    let mut reader = open_distinct(input, output)?;
    let meta = reader.meta(META_DEKS).ok_or_else(|| {
        invalid("not encrypted by fieldcrypt (no fieldcrypt.deks metadata)".into())
    })?;
    let meta: DekMeta = serde_json::from_slice(meta)
        .map_err(|e| invalid(format!("fieldcrypt.deks metadata is damaged: {e}")))?;
    if meta.v != 1 {
        return Err(invalid(format!(
            "fieldcrypt.deks version {} is not supported; upgrade fieldcrypt",
            meta.v
        )));
    }
    let mut deks = DekSet::new();
    for e in &meta.deks {
        let w = e
            .wrapped_dek()
            .ok_or_else(|| invalid(format!("fieldcrypt.deks entry {} is damaged", e.id)))?;
        let key = engine.unwrap_dek(&w).await.map_err(engine_err(input))?;
        deks.insert(w.id, key);
    }
    let schema = parse_schema_json(&reader.schema).map_err(engine_err(input))?;
    let dec = engine
        // The error already names the file.
        .decryptor(&schema, "its schema")
        .map_err(engine_err(input))?;

    let dir = out_dir(output);
    let mut tmp = Staged::new_in(&dir).map_err(io_err(&dir))?;
    let metadata = output_metadata(&dec.plan().original_json, &reader);
    let mut sync = [0u8; 16];
    rand::rng().fill_bytes(&mut sync);
    let mut report = FileReport {
        deks: deks.len(),
        ..Default::default()
    };
    {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.file_mut());
        write_header(&mut w, &metadata, &sync).map_err(io_err(output))?;
        let mut blocks = BlockWriter::new(w, reader.codec(), sync);
        let mut block_index = 0u64;
        while let Some(block) = reader.next_block().map_err(container_err(input))? {
            check_interrupted(output, cancel)?;
            let min = dec.plan().tree.min_size(dec.plan().tree.root);
            block_count_plausible(input, block_index, block.count, block.data.len(), min)?;
            let mut out = Vec::with_capacity(block.data.len());
            let mut cur = Cursor::new(&block.data);
            for _ in 0..block.count {
                let c = dec
                    .decrypt_next(&mut cur, &deks, &mut out)
                    .map_err(|source| FileError::Record {
                        path: input.to_path_buf(),
                        index: report.records,
                        block: block_index,
                        source,
                    })?;
                report.fields += c;
                report.records += 1;
            }
            block_fully_read(input, block_index, &cur, block.count)?;
            blocks
                .write_block(block.count, out)
                .map_err(io_err(output))?;
            block_index += 1;
            progress(reader_bytes(&reader), report.records);
        }
        report.blocks = block_index;
        blocks.into_inner().flush().map_err(io_err(output))?;
    }
    check_interrupted(output, cancel)?;
    finish(tmp, output, &mut report, reader_bytes(&reader))?;
    report.elapsed = started.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests;
