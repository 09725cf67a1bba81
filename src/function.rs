//! `realm function validate FILE` and `realm function schema`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use realm_functions::{Manifest, ManifestError};

#[derive(clap::Subcommand)]
pub enum FunctionCmd {
    /// Check a manifest; every problem is printed with its path, and the exit code is 1.
    Validate { file: PathBuf },
    /// Print the manifest's JSON Schema (for editors and CI).
    Schema,
}

pub fn run(cmd: FunctionCmd) -> Result<()> {
    match cmd {
        FunctionCmd::Validate { file } => match Manifest::from_file(&file) {
            Ok(m) => {
                let events = m.triggers.events.len();
                println!(
                    "{}: ok (function {:?}, model {}, http {}, {events} event trigger{})",
                    file.display(),
                    m.name,
                    m.model.uri,
                    if m.triggers.http { "on" } else { "off" },
                    if events == 1 { "" } else { "s" }
                );
                Ok(())
            }
            Err(ManifestError::Invalid { problems }) => {
                for p in &problems {
                    eprintln!("{}: {p}", file.display());
                }
                bail!("{}: {} problem{}", file.display(), problems.len(), if problems.len() == 1 { "" } else { "s" })
            }
            Err(e) => Err(e.into()),
        },
        FunctionCmd::Schema => {
            println!("{}", serde_json::to_string_pretty(&realm_functions::json_schema())?);
            Ok(())
        }
    }
}
