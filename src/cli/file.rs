//! `fieldcrypt encrypt-file` and `decrypt-file`: an Avro container file
//! transformed into another, with a progress view, a summary, and cancellation on
//! a signal (the pipeline's `CancellationToken`).

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Result;

use fieldcrypt::engine::Engine;
use fieldcrypt::file::{decrypt_file_with, encrypt_file_with};

use super::signal::cancel_on_signal;
use super::{load_config, log};

/// `fieldcrypt encrypt-file` and `decrypt-file`: an Avro container file
/// transformed into another, with a progress view and a summary.
pub(super) async fn file_cmd(
    config: Option<&Path>,
    input: &Path,
    output: &Path,
    encrypting: Option<fieldcrypt::file::EncryptOptions>,
) -> Result<()> {
    let cancel = cancel_on_signal();
    let engine = Engine::start(load_config(config)?).await?;
    let bar = ProgressView::new(input);
    let mut progress = |b, r| bar.update(b, r);
    let encrypts = encrypting.is_some();
    let report = if let Some(opts) = encrypting {
        let opts = fieldcrypt::file::EncryptOptions { cancel, ..opts };
        encrypt_file_with(&engine, input, output, opts, &mut progress).await
    } else {
        decrypt_file_with(&engine, input, output, &cancel, &mut progress).await
    };
    bar.finish();
    let r = report?;
    let rate = format!(
        "in {:.2}s ({:.0} records/s) -> {}",
        r.elapsed.as_secs_f64(),
        r.records_per_sec(),
        output.display()
    );
    let f = &r.fields;
    let summary = if encrypts {
        format!(
            "encrypted {} records ({} randomized, {} deterministic, {} blind indexes, {} null) \
             with {} data key(s) {rate}",
            r.records, f.randomized, f.deterministic, f.indexes, f.nulls, r.deks
        )
    } else {
        let fields = f.randomized + f.deterministic;
        format!("decrypted {} records ({fields} fields) {rate}", r.records)
    };
    log::line(tracing::Level::INFO, &summary);
    Ok(())
}

/// A progress bar over input bytes with a records/s message, drawn only on a terminal.
pub(super) struct ProgressView {
    bar: indicatif::ProgressBar,
    start: std::time::Instant,
}

impl ProgressView {
    pub(super) fn new(input: &Path) -> Self {
        let total = std::fs::metadata(input).map(|m| m.len()).unwrap_or(0);
        let bar = if std::io::stderr().is_terminal() {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        ProgressView {
            bar,
            start: std::time::Instant::now(),
        }
    }

    pub(super) fn update(&self, bytes: u64, records: u64) {
        self.bar.set_position(bytes);
        let rate = records as f64 / self.start.elapsed().as_secs_f64().max(1e-6);
        self.bar
            .set_message(format!("{records} records, {rate:.0} records/s"));
    }

    pub(super) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
