//! The command line's grammar: every command, its flags and their defaults
//! (clap derive). Parsing only; the commands run in their own modules.

use std::path::PathBuf;

use fieldcrypt::keys::keyset::Purpose;

use clap::{Parser, Subcommand, ValueEnum};

use super::log::LogFormat;

/// Field-level encryption for Avro records: Kafka streams and Avro files.
#[derive(Debug, Parser)]
#[command(name = "fieldcrypt", version, about, long_about = None)]
pub(super) struct Cli {
    /// Log filter: a level (error, warn, info, debug, trace) or a tracing filter
    /// such as "info,librdkafka=debug". Default: FIELDCRYPT_LOG, then RUST_LOG,
    /// then info for run (warn for the other commands).
    #[arg(long, global = true, value_name = "FILTER")]
    pub(super) log: Option<String>,
    /// Format of everything written to stderr: pretty, or json (one object per line).
    #[arg(long, global = true, value_enum, env = "FIELDCRYPT_LOG_FORMAT", default_value_t = LogFormat::Pretty)]
    pub(super) log_format: LogFormat,
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
    /// Manage the KEK file and the keyset.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Show which fields a schema's records get encrypted and how, and write the
    /// derived output schema.
    Plan {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Avro schema file (.avsc).
        schema: PathBuf,
        /// A schema file defining named types the schema uses without defining
        /// them (a Confluent schema reference); repeat for several. Adds to the
        /// config's schema.reference_files.
        #[arg(long = "schema-path", value_name = "FILE.avsc")]
        schema_paths: Vec<PathBuf>,
        /// Write the derived (encrypted) output schema here.
        #[arg(long)]
        output_schema: Option<PathBuf>,
    },
    /// Encrypt an Avro container file.
    EncryptFile {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Write the output even if the schema encrypts nothing (it is then
        /// plaintext); without it, such a file is an error.
        #[arg(long)]
        allow_unencrypted: bool,
        /// The Avro container file to encrypt.
        #[arg(value_name = "INPUT")]
        input: PathBuf,
        /// Where the encrypted file goes (written only when complete; never INPUT).
        #[arg(value_name = "OUTPUT")]
        output: PathBuf,
    },
    /// Decrypt an Avro container file written by `encrypt-file`.
    DecryptFile {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// The encrypted Avro container file.
        #[arg(value_name = "INPUT")]
        input: PathBuf,
        /// Where the decrypted file goes (written only when complete; never INPUT).
        #[arg(value_name = "OUTPUT")]
        output: PathBuf,
    },
    /// Check a config without running it: the config itself, the keys, each
    /// route's schema and plan, and (with a metadata request only, never joining
    /// the group) the brokers, topics and Schema Registry. One line per check;
    /// exit status 0 only when every check passes.
    Validate {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Skip the checks that need the network (brokers, registry).
        #[arg(long)]
        offline: bool,
    },
    /// Run the Kafka stream processor (consume, encrypt or decrypt, produce) until
    /// SIGINT/SIGTERM, then drain in-flight records and commit.
    Run {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// The benchmark floor: forward the routes' records unchanged (consume, produce
    /// the same bytes, store offsets after delivery), serving the same /metrics.
    #[command(hide = true)]
    Forward {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Produce synthetic records to a route's source topic at a target rate (plain
    /// events, or Debezium-style change events for envelope schemas), and with
    /// --verify read the route's target topic at the same time and report missing,
    /// duplicated and unencrypted records and end-to-end latency.
    Loadgen(LoadgenArgs),
    /// Verify a finished load run: read the route's target topic from the
    /// beginning and report missing, duplicated and unencrypted records of the run.
    Check {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// The run's source topic (its route gives the target topic).
        #[arg(long)]
        topic: String,
        /// Avro schema the run produced (default: the route's value_schema).
        #[arg(long)]
        schema: Option<PathBuf>,
        /// The run id loadgen printed.
        #[arg(long)]
        run_id: String,
        /// Records the run produced.
        #[arg(long)]
        expect: u64,
        /// Give up on missing records after this many seconds.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
        /// Write the summary as JSON to this file.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Print records of an Avro container file as JSON lines (bytes as base64).
    Cat {
        /// The Avro container file.
        file: PathBuf,
        /// Print at most this many records.
        #[arg(long, short = 'n')]
        limit: Option<usize>,
    },
    /// Write random records of a schema to an Avro container file.
    Sample {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Avro schema file (.avsc).
        #[arg(long)]
        schema: PathBuf,
        /// A schema file defining named types the schema uses without defining
        /// them (a Confluent schema reference); repeat for several. The records'
        /// file carries the schema with those types defined in it.
        #[arg(long = "schema-path", value_name = "FILE.avsc")]
        schema_paths: Vec<PathBuf>,
        /// Number of records.
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Random seed (same seed, same records).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Block codec: null, deflate, snappy, zstandard.
        #[arg(long, default_value = "deflate")]
        codec: String,
        /// The Avro container file to write.
        #[arg(value_name = "OUTPUT")]
        output: PathBuf,
    },
    /// Measure encrypt/decrypt throughput on one core against a plain apache-avro
    /// round trip of the same records. Uses a throwaway KEK and keyset.
    Bench {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Avro schema file (.avsc).
        #[arg(long, default_value = "schemas/customer.avsc")]
        schema: PathBuf,
        /// Records generated and cycled through.
        #[arg(long, default_value_t = 20_000)]
        records: usize,
        /// Rounds per measurement (the best is reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Minimum seconds per round.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum CdcChoice {
    Auto,
    On,
    Off,
}

#[derive(Debug, Subcommand)]
pub(super) enum KeysCommand {
    /// Create the local KEK file (32 random bytes, mode 0600). Refuses to overwrite.
    Init {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Create a deterministic or blind-index key (a new version if the domain exists).
    Create {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long, value_enum)]
        purpose: Purpose,
        /// Key domain, e.g. `default` or `email`.
        #[arg(long)]
        domain: String,
    },
    /// List the keyset's keys (ids and metadata only, never key material).
    List {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Add a new active version of a domain's deterministic and/or blind-index
    /// keys; older versions stay for decrypting older data.
    Rotate {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Key domain to rotate.
        #[arg(long)]
        domain: String,
        /// Only this purpose (default: every purpose the domain has).
        #[arg(long, value_enum)]
        purpose: Option<Purpose>,
    },
    /// Re-encrypt every wrapped key of the keyset under another KEK (AWS
    /// ReEncrypt where possible). Data is not touched.
    Rewrap {
        /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
        #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// The new KEK: AWS key id, alias/NAME or ARN; or a KEK file (local).
        #[arg(long)]
        to_kek: String,
    },
}

/// `fieldcrypt loadgen`'s options.
#[derive(Debug, clap::Args)]
pub(super) struct LoadgenArgs {
    /// The config file (TOML; default: the embedded defaults). Also FIELDCRYPT_CONFIG.
    #[arg(long, short, env = "FIELDCRYPT_CONFIG", value_name = "FILE")]
    pub(super) config: Option<PathBuf>,
    /// Source topic to produce to (a route's source, for --verify).
    #[arg(long)]
    pub(super) topic: String,
    /// Avro schema of the records (default: the route's value_schema).
    #[arg(long)]
    pub(super) schema: Option<PathBuf>,
    /// Records per second (0: as fast as possible).
    #[arg(long, default_value_t = 1000.0)]
    pub(super) rate: f64,
    /// Stop after this many records (tombstones included).
    #[arg(long, conflicts_with = "duration")]
    pub(super) count: Option<u64>,
    /// Stop after this many seconds (default 10 unless --count is given).
    #[arg(long)]
    pub(super) duration: Option<f64>,
    /// Distinct record keys (and people behind names and e-mails), so
    /// deterministic encryption and blind indexes see repeats.
    #[arg(long, default_value_t = 1000)]
    pub(super) keys: u64,
    /// Change events (inserts, updates, deletes with tombstones): auto = when
    /// the schema is a Debezium-style envelope.
    #[arg(long, value_enum, default_value_t = CdcChoice::Auto)]
    pub(super) cdc: CdcChoice,
    /// Random seed (same seed, same keys, operations and values; timestamps
    /// are the clock's).
    #[arg(long, default_value_t = 1)]
    pub(super) seed: u64,
    /// Read the route's target topic while producing and check every record.
    #[arg(long)]
    pub(super) verify: bool,
    /// Seconds the verifier waits for missing records after producing ends.
    #[arg(long, default_value_t = 60.0)]
    pub(super) verify_timeout: f64,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    pub(super) report: Option<PathBuf>,
    /// Run id carried in each record's header (default: random).
    #[arg(long)]
    pub(super) run_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::{CommandFactory, Parser};

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("fieldcrypt").chain(args.iter().copied()))
    }

    fn refused(args: &[&str]) -> String {
        parse(args).expect_err("refused").to_string()
    }

    #[test]
    fn the_grammar_is_consistent() {
        // clap's own checks: no duplicate flags, conflicts that name real flags.
        Cli::command().debug_assert();
    }

    #[test]
    fn commands_take_their_flags_and_positionals() {
        match parse(&["encrypt-file", "-c", "fc.toml", "in.avro", "out.avro"])
            .unwrap()
            .command
        {
            Command::EncryptFile {
                config,
                allow_unencrypted,
                input,
                output,
            } => {
                assert_eq!(config.as_deref(), Some(Path::new("fc.toml")));
                assert!(!allow_unencrypted, "plaintext output is opt-in");
                assert_eq!(
                    (input.as_path(), output.as_path()),
                    (Path::new("in.avro"), Path::new("out.avro"))
                );
            }
            other => panic!("{other:?}"),
        }
        match parse(&[
            "plan",
            "s.avsc",
            "--schema-path",
            "a.avsc",
            "--schema-path",
            "b.avsc",
        ])
        .unwrap()
        .command
        {
            Command::Plan {
                schema,
                schema_paths,
                output_schema,
                ..
            } => {
                assert_eq!(schema, Path::new("s.avsc"));
                assert_eq!(schema_paths.len(), 2, "--schema-path repeats");
                assert!(output_schema.is_none());
            }
            other => panic!("{other:?}"),
        }
        match parse(&["keys", "rotate", "--domain", "email"])
            .unwrap()
            .command
        {
            Command::Keys(KeysCommand::Rotate {
                domain, purpose, ..
            }) => {
                assert_eq!(domain, "email");
                assert!(purpose.is_none(), "every purpose of the domain by default");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn global_flags_go_before_or_after_the_command() {
        for args in [
            &["--log", "debug", "--log-format", "json", "run"][..],
            &["run", "--log", "debug", "--log-format", "json"][..],
        ] {
            let cli = parse(args).unwrap();
            assert_eq!(cli.log.as_deref(), Some("debug"));
            assert!(matches!(cli.log_format, LogFormat::Json));
            assert!(matches!(cli.command, Command::Run { .. }));
        }
    }

    #[test]
    fn loadgen_defaults_and_limits() {
        let Command::Loadgen(a) = parse(&["loadgen", "--topic", "orders"]).unwrap().command else {
            panic!("loadgen");
        };
        assert_eq!(a.topic, "orders");
        assert_eq!((a.rate, a.keys, a.seed), (1000.0, 1000, 1));
        assert!(a.count.is_none() && a.duration.is_none() && !a.verify);
        assert!(matches!(a.cdc, CdcChoice::Auto));
        let e = refused(&["loadgen", "--topic", "t", "--count", "5", "--duration", "2"]);
        assert!(e.contains("--count") && e.contains("--duration"), "{e}");
    }

    #[test]
    fn mistakes_name_the_flag_and_what_it_takes() {
        let e = refused(&["keys", "create", "--domain", "d"]);
        assert!(
            e.contains("--purpose"),
            "a missing required flag is named: {e}"
        );
        let e = refused(&["keys", "create", "--domain", "d", "--purpose", "secret"]);
        assert!(e.contains("secret") && e.contains("possible values"), "{e}");
        let e = refused(&["loadgen", "--topic", "t", "--cdc", "maybe"]);
        assert!(
            e.contains("auto") && e.contains("on") && e.contains("off"),
            "{e}"
        );
        let e = refused(&["encrypt-file", "only-input.avro"]);
        assert!(e.contains("OUTPUT"), "{e}");
        let e = refused(&["check", "--topic", "t", "--run-id", "r", "--expect", "many"]);
        assert!(e.contains("--expect") && e.contains("many"), "{e}");
        let e = refused(&["encryptfile"]);
        assert!(e.contains("encrypt-file"), "a near miss is suggested: {e}");
    }
}
