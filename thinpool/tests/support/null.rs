//! A device that reads zeros and forgets writes: a pool can be formatted on a huge data
//! device without storing it. Also used by the pool benchmark (`benches/pool.rs`).

use thinpool::io::BlockDevice;

/// `NullDevice(size)`.
pub struct NullDevice(pub u64);

impl BlockDevice for NullDevice {
    fn read_at(&self, buf: &mut [u8], _: u64) -> std::io::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn write_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn size(&self) -> u64 {
        self.0
    }
    fn grow(&self, n: u64) -> std::io::Result<()> {
        if n > self.0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("null device of {} bytes cannot grow to {n}", self.0),
            ));
        }
        Ok(())
    }
    fn describe(&self) -> String {
        "null".into()
    }
}
