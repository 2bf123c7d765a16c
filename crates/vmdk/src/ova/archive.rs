//! An open OVA: the archive file, its member index, and which member is "the disk" when
//! the archive itself is named as an image.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::member_storage::{member_id, MemberStorage};
use super::ovf::{self, Envelope};
use super::tar::{self, Member, MemberKind, TarIndex};
use crate::error::{Error, ErrorKind, Result};
use crate::lock::LockRequest;
use crate::namespace::{Namespace, OpenMode};
use crate::storage::{FileId, FileStorage, Storage};

/// An OVA archive opened for reading.
#[derive(Debug)]
pub struct Archive {
    path: PathBuf,
    storage: Arc<dyn Storage>,
    index: TarIndex,
    id: Option<FileId>,
}

impl Archive {
    /// Open the host file `path` read-only, holding `lock` (the read lock QEMU takes on a
    /// read-only image, so nobody rewrites the archive under its readers), and index it.
    pub fn open(path: &Path, lock: Option<LockRequest>) -> Result<Archive> {
        let storage: Arc<dyn Storage> = Arc::new(FileStorage::open_locked(path, false, lock)?);
        Self::from_storage(path, storage)
    }

    /// Open the file `path` of `ns` read-only as it is stored ([`Namespace::open_whole`]),
    /// holding `lock` where `ns` has locks, and index it.
    pub fn open_in(ns: &dyn Namespace, path: &Path, lock: Option<LockRequest>) -> Result<Archive> {
        let mode = OpenMode {
            lock,
            ..OpenMode::read_only()
        };
        Self::from_storage(path, ns.open_whole(path, mode)?)
    }

    /// Index the archive held in `storage` (named `path`).
    pub fn from_storage(path: &Path, storage: Arc<dyn Storage>) -> Result<Archive> {
        let index = tar::read_index(&*storage, path)?;
        Ok(Archive {
            path: path.to_path_buf(),
            id: storage.file_id(),
            storage,
            index,
        })
    }

    /// The archive's name.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The archive's storage.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Its members.
    pub fn index(&self) -> &TarIndex {
        &self.index
    }

    /// The identity of member `m`.
    pub fn member_id(&self, m: &Member) -> Option<FileId> {
        self.id.map(|id| member_id(id, m.offset))
    }

    /// The regular file `name`, with a clear error when it is missing, not a regular file,
    /// or split into ovftool chunks (`name.000000000`, ...).
    pub fn file(&self, name: &str) -> Result<&Member> {
        if let Some(m) = self.index.file(name) {
            return Ok(m);
        }
        let at = |m: String| {
            Error::new(ErrorKind::Io, m).with_path(self.path.join(name.trim_start_matches("./")))
        };
        if let Some(m) = self.index.member(name) {
            let what = match m.kind {
                MemberKind::Directory => "a directory".to_string(),
                MemberKind::Other(t) => format!("not a regular file (tar type '{}')", t as char),
                MemberKind::File => unreachable!("found above"),
            };
            return Err(at(format!("this member of the archive is {what}")));
        }
        let chunk0 = format!("{}.000000000", name.trim_start_matches("./"));
        if self.index.file(&chunk0).is_some() {
            return Err(split_error(name).with_path(&self.path));
        }
        Err(at(format!(
            "cannot open: no member of that name in the archive (members: {})",
            self.member_list()
        )))
    }

    fn member_list(&self) -> String {
        let names: Vec<&str> = self
            .index
            .members
            .iter()
            .filter(|m| m.kind == MemberKind::File)
            .map(|m| m.name.as_str())
            .take(20)
            .collect();
        names.join(", ")
    }

    /// Member `m` as read-only storage. Its [`Storage::file_id`] is the archive's: the
    /// host file whose bytes it is, so an output about to replace the archive is refused
    /// as one of the inputs whichever member was read (lock or no lock).
    pub fn member_storage(&self, m: &Member) -> Arc<dyn Storage> {
        Arc::new(MemberStorage::new(
            self.storage.clone(),
            m.offset,
            m.size,
            self.id,
        ))
    }

    /// All of member `m`, at most `max` bytes.
    pub fn read_member(&self, m: &Member, max: u64) -> Result<Vec<u8>> {
        let name = self.path.join(&m.name);
        if m.size > max {
            return Err(Error::corrupt(format!(
                "member is {} bytes (at most {max} expected)",
                m.size
            ))
            .with_path(name));
        }
        let mut buf = vec![0u8; m.size as usize];
        self.storage
            .read_exact_at(&mut buf, m.offset)
            .map_err(|e| Error::io(e, "reading archive member").with_path(name))?;
        Ok(buf)
    }

    /// The OVF descriptor member (the first `.ovf` file), if any.
    pub fn ovf_member(&self) -> Option<&Member> {
        self.index.files_ending(".ovf").next()
    }

    /// The parsed OVF descriptor, if the archive has one.
    pub fn envelope(&self) -> Result<Option<Envelope>> {
        let Some(m) = self.ovf_member() else {
            return Ok(None);
        };
        let text = self.read_member(m, ovf::MAX_OVF_SIZE)?;
        ovf::parse(&text, &self.path.join(&m.name)).map(Some)
    }

    /// The member an image name that is just the archive stands for: the first disk in
    /// the OVF's `DiskSection` (or `References`) order, else the first `.vmdk` member.
    pub fn first_disk(&self) -> Result<String> {
        if let Some(env) = self.envelope()? {
            if let Some(f) = env.first_disk_file() {
                if f.chunk_size.is_some() {
                    return Err(split_error(&f.href).with_path(&self.path));
                }
                if f.compression.as_deref().is_some_and(|c| c != "identity") {
                    return Err(Error::unsupported(format!(
                        "disk \"{}\" is stored {}-compressed inside the archive \
                         (ovf:compression); it cannot be read in place",
                        f.href,
                        f.compression.as_deref().unwrap_or_default()
                    ))
                    .with_path(&self.path));
                }
                return Ok(self.file(&f.href)?.name.clone());
            }
        }
        self.index
            .files_ending(".vmdk")
            .next()
            .map(|m| m.name.clone())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotVmdk,
                    "the archive holds no disk (no OVF disk and no .vmdk member)",
                )
                .with_path(&self.path)
            })
    }
}

fn split_error(name: &str) -> Error {
    Error::unsupported(format!(
        "disk \"{name}\" is split over several archive members ({name}.000000000, ...; \
         ovftool's ovf:chunkSize); it cannot be read in place: extract the members and join \
         them in order (cat) first"
    ))
}
