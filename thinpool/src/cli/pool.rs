//! init, create, snapshot, remove, list, status.

use std::process::ExitCode;

use anyhow::bail;

use super::{CreateArgs, InitArgs, ListArgs, RemoveArgs, SnapshotArgs, StatusArgs};

fn pending() -> anyhow::Result<ExitCode> {
    bail!("this verb needs the pool engine, which is not merged yet")
}

pub(super) fn init(_a: &InitArgs) -> anyhow::Result<ExitCode> {
    pending()
}
pub(super) fn create(_a: &CreateArgs) -> anyhow::Result<ExitCode> {
    pending()
}
pub(super) fn snapshot(_a: &SnapshotArgs) -> anyhow::Result<ExitCode> {
    pending()
}
pub(super) fn remove(_a: &RemoveArgs) -> anyhow::Result<ExitCode> {
    pending()
}
pub(super) fn list(_a: &ListArgs) -> anyhow::Result<ExitCode> {
    pending()
}
pub(super) fn status(_a: &StatusArgs) -> anyhow::Result<ExitCode> {
    pending()
}
