//! Building pool metadata from the XML model through the engine's raw restore API.

use std::io;
use std::sync::Arc;

use super::{parse, Metadata, XmlError};
use crate::io::BlockDevice;
use crate::pdata::disk::DeviceDetails;
use crate::pool::{self, Pool};
use crate::units::{Sectors, TransactionId};

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Xml(#[from] XmlError),
    #[error("device {dev}: {what}")]
    Pool {
        dev: u64,
        what: &'static str,
        #[source]
        source: pool::Error,
    },
    #[error("{what}")]
    Format {
        what: String,
        #[source]
        source: pool::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Formats a pool on `meta` / `data` and fills it with everything `md` describes, committed.
/// The data device must hold `md.nr_data_blocks` blocks; its contents are not touched.
pub fn restore_into(
    md: &Metadata,
    meta: Arc<dyn BlockDevice>,
    data: Arc<dyn BlockDevice>,
) -> Result<Pool, RestoreError> {
    let bs = Sectors(u64::from(md.data_block_size));
    let need = md.nr_data_blocks.saturating_mul(bs.bytes());
    if data.size() / bs.bytes().max(1) != md.nr_data_blocks {
        return Err(RestoreError::Invalid(format!(
            "data device {} holds {} bytes; the XML describes {} blocks of {} bytes ({need} bytes)",
            data.describe(),
            data.size(),
            md.nr_data_blocks,
            bs.bytes()
        )));
    }
    let fmt = |what: &str| {
        let what = what.to_owned();
        move |source| RestoreError::Format { what, source }
    };
    let pool = Pool::format(meta, data, bs).map_err(fmt("formatting the metadata"))?;
    pool.set_transaction_id(TransactionId(0), TransactionId(md.transaction))
        .map_err(fmt("setting the transaction id"))?;
    pool.set_time(md.time).map_err(fmt("setting the pool time"))?;
    for d in &md.devices {
        let err =
            |what: &'static str| move |source| RestoreError::Pool { dev: d.dev_id.0, what, source };
        pool.create_thin(d.dev_id).map_err(err("creating the device"))?;
        for (vb, block, time) in d.blocks() {
            pool.insert_mapping(d.dev_id, vb, block, time).map_err(err("inserting a mapping"))?;
        }
        let details = DeviceDetails {
            mapped_blocks: d.mapped_blocks,
            transaction_id: d.transaction,
            creation_time: d.creation_time,
            snapshotted_time: d.snap_time,
        };
        pool.set_details(d.dev_id, details).map_err(err("setting its details"))?;
    }
    pool.commit().map_err(fmt("committing"))?;
    Ok(pool)
}

/// Restores `xml` onto the metadata device `meta`, like thin_restore: only metadata is
/// written. `data_nr_blocks` overrides the XML's `nr_data_blocks` when given.
pub fn restore(
    xml: &str,
    meta: Arc<dyn BlockDevice>,
    data_nr_blocks: Option<u64>,
) -> Result<(), RestoreError> {
    let mut md = parse(xml)?;
    if let Some(n) = data_nr_blocks {
        md.nr_data_blocks = n;
    }
    let bytes = md.nr_data_blocks.checked_mul(Sectors(u64::from(md.data_block_size)).bytes());
    let size =
        bytes.ok_or_else(|| RestoreError::Invalid("the data device size overflows".into()))?;
    restore_into(&md, meta, Arc::new(NoData { size }))?;
    Ok(())
}

/// Builds metadata for `md` on `meta` alone (the data device is only sized, never touched).
pub fn restore_metadata(md: &Metadata, meta: Arc<dyn BlockDevice>) -> Result<(), RestoreError> {
    let bytes = md.nr_data_blocks.checked_mul(Sectors(u64::from(md.data_block_size)).bytes());
    let size =
        bytes.ok_or_else(|| RestoreError::Invalid("the data device size overflows".into()))?;
    restore_into(md, meta, Arc::new(NoData { size }))?;
    Ok(())
}

/// A data device of a given size that is never read or written: restoring builds metadata only.
struct NoData {
    size: u64,
}

impl BlockDevice for NoData {
    fn read_at(&self, _buf: &mut [u8], _offset: u64) -> io::Result<()> {
        Err(io::Error::other("restore does not read data"))
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(io::Error::other("restore does not write data"))
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn grow(&self, _new_size: u64) -> io::Result<()> {
        Err(io::Error::other("restore does not grow data"))
    }
    fn describe(&self) -> String {
        "data device (not touched by restore)".to_owned()
    }
}
