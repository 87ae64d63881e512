//! `keel audit`: verify the ledger against the journal, print inclusion proofs, and check a
//! proof offline with nothing but the proof file and the public key.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use keel_ledger::ProofDocument;

use crate::DataArgs;

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Recompute every leaf and the tree, check every checkpoint's signature and that each is
    /// consistent with the next. Exit 1 and name the first bad leaf on tampering.
    Verify {
        #[command(flatten)]
        data: DataArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print an inclusion proof for leaf N against the latest checkpoint (JSON, the API's shape).
    Prove {
        #[arg(long)]
        index: u64,
        /// Prove against the checkpoint at this tree size instead of the latest.
        #[arg(long)]
        size: Option<u64>,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Print the ledger's public verifier key (give it to auditors).
    Key {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Verify an inclusion or consistency proof file offline, against its checkpoint and the
    /// public key. Needs no database.
    CheckProof {
        /// A proof document as served by GET /v1/audit/proof/… or printed by `keel audit prove`.
        file: PathBuf,
        /// The verifier key (`name+keyid+base64`), from `keel audit key` or GET /v1/audit/checkpoint.
        #[arg(long, env = "KEEL_VERIFIER_KEY")]
        key: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify { data, json } => verify(data, json).await,
        AuditCommand::Prove { index, size, data } => {
            let store = open(&data).await?;
            let document = keel_engine::audit::inclusion(&store, index, size).await?;
            println!("{}", serde_json::to_string_pretty(&document)?);
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Key { data } => {
            let store = open(&data).await?;
            let key = store
                .meta("ledger_verifier_key")
                .await?
                .context("this database has no ledger key yet; start `keel serve` once")?;
            println!("{key}");
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::CheckProof { file, key, json } => check_proof(file, &key, json),
    }
}

async fn open(data: &DataArgs) -> anyhow::Result<keel_store::Store> {
    let url = data.database_url();
    if !url.starts_with("postgres") && !std::path::Path::new(&url).exists() {
        anyhow::bail!(
            "no database at {url}; run `keel serve` first or pass --data-dir / --database"
        );
    }
    keel_store::Store::open(&url)
        .await
        .with_context(|| format!("cannot open the database {url}"))
}

async fn verify(data: DataArgs, json: bool) -> anyhow::Result<ExitCode> {
    let store = open(&data).await?;
    let key = store
        .meta("ledger_verifier_key")
        .await?
        .context("this database has no ledger key yet; start `keel serve` once")?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("verifying {bar:40} {pos}/{len} leaves ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let report = keel_engine::audit::verify(&store, &key, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await?;
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.ok {
        println!(
            "ledger OK: {} leaves, {} checkpoint(s) verified, {} consistency proof(s) verified, root {}",
            report.leaves, report.checkpoints_verified, report.consistency_proofs_verified, report.root
        );
        let unsequenced = report.journal_entries - report.leaves as i64;
        if unsequenced > 0 {
            println!("{unsequenced} newer journal entries are not sequenced yet (the sequencer runs inside keel serve)");
        }
    } else {
        println!("ledger TAMPERED: {} problem(s)", report.findings_total);
        if let Some(first) = report.findings.first() {
            println!(
                "first bad leaf: {} (journal seq {}): {}",
                first.leaf_index,
                first.seq.map_or("-".into(), |s| s.to_string()),
                first.problem
            );
        }
        for finding in report.findings.iter().skip(1).take(20) {
            println!("  leaf {}: {}", finding.leaf_index, finding.problem);
        }
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn check_proof(file: PathBuf, key: &str, json: bool) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let document: ProofDocument = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a proof document (see README: Proof documents)",
            file.display()
        )
    })?;
    match document.check(key) {
        Ok(checked) => {
            let checkpoint = checked.checkpoint();
            let what = match &checked {
                keel_ledger::CheckedProof::Inclusion { leaf_index, .. } => {
                    format!(
                        "leaf {leaf_index} is included in the tree of size {}",
                        checkpoint.size
                    )
                }
                keel_ledger::CheckedProof::Consistency { from_size, .. } => {
                    format!(
                        "the tree of size {from_size} is a prefix of the tree of size {}",
                        checkpoint.size
                    )
                }
            };
            let root = hex::encode(checkpoint.root);
            if json {
                let report = serde_json::json!({ "ok": true, "statement": what, "origin": checkpoint.origin, "tree_size": checkpoint.size, "root": root });
                println!("{report}");
            } else {
                println!(
                    "proof OK: {what}, signed by {} (root {root})",
                    checkpoint.origin
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "error": error.to_string() })
                );
            } else {
                println!("proof INVALID: {error}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
