//! import, export.

use std::process::ExitCode;

use anyhow::bail;

use super::{ExportArgs, ImportArgs};

pub(super) fn import(_a: &ImportArgs) -> anyhow::Result<ExitCode> {
    bail!("import needs the pool engine, which is not merged yet")
}
pub(super) fn export(_a: &ExportArgs) -> anyhow::Result<ExitCode> {
    bail!("export needs the pool engine, which is not merged yet")
}
