//! The simulator's flash: a file of the flash's size. Writes go out in
//! 256-byte program units, one system call each, as a board programs its
//! flash, so a simulator killed in the middle of an update leaves a partly
//! written slot behind: the case the flash store's checksum is there for.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use lnpd_signer_firmware::flash::{Flash, FlashError};

/// Bytes programmed at once.
const PROGRAM_UNIT: usize = 256;

/// Flash in a file.
pub struct FileFlash {
    file: File,
    size: usize,
    page: usize,
}

impl FileFlash {
    /// Opens (or creates, erased) a flash file of `size` bytes in `page`-byte pages.
    pub fn open(path: &Path, size: usize, page: usize) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len() as usize;
        if len != size {
            if len != 0 {
                return Err(std::io::Error::other(format!(
                    "{} is {len} bytes, not a {size}-byte flash",
                    path.display()
                )));
            }
            let erased = vec![0xFF; page];
            for offset in (0..size).step_by(page) {
                file.write_all_at(&erased, offset as u64)?;
            }
            file.sync_all()?;
        }
        Ok(FileFlash { file, size, page })
    }
}

impl Flash for FileFlash {
    fn size(&self) -> usize {
        self.size
    }
    fn page_size(&self) -> usize {
        self.page
    }
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), FlashError> {
        if offset.saturating_add(buf.len()) > self.size {
            return Err(FlashError("read out of range"));
        }
        self.file
            .read_exact_at(buf, offset as u64)
            .map_err(|_| FlashError("flash file read failed"))
    }
    fn erase(&mut self, offset: usize) -> Result<(), FlashError> {
        if offset.saturating_add(self.page) > self.size || !offset.is_multiple_of(self.page) {
            return Err(FlashError("erase out of range"));
        }
        self.file
            .write_all_at(&vec![0xFF; self.page], offset as u64)
            .map_err(|_| FlashError("flash file write failed"))
    }
    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), FlashError> {
        if offset.saturating_add(data.len()) > self.size {
            return Err(FlashError("write out of range"));
        }
        for (i, chunk) in data.chunks(PROGRAM_UNIT).enumerate() {
            self.file
                .write_all_at(chunk, (offset + i * PROGRAM_UNIT) as u64)
                .map_err(|_| FlashError("flash file write failed"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lnpd_signer_core::store::{Store, Write};
    use lnpd_signer_firmware::flash::FlashStore;

    #[test]
    fn a_store_in_a_file_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("lnpd-sim-flash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flash.bin");
        let _ = std::fs::remove_file(&path);
        let mut store = FlashStore::open(FileFlash::open(&path, 64 * 1024, 4096).unwrap()).unwrap();
        store.commit(vec![Write::Meta(vec![1, 2, 3])]).unwrap();
        store.commit(vec![Write::Meta(vec![4, 5])]).unwrap();
        drop(store);
        let store = FlashStore::open(FileFlash::open(&path, 64 * 1024, 4096).unwrap()).unwrap();
        assert_eq!(store.load().unwrap().meta, Some(vec![4, 5]));
        assert!(
            FileFlash::open(&path, 32 * 1024, 4096).is_err(),
            "size mismatch"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
