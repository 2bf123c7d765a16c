//! An open OVA: the archive file, its member index, and which member is "the disk" when
//! the archive itself is named as an image. The OVF and the first disk are worked out once
//! per open archive, however many names are looked up in it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::member_storage::{member_id, MemberStorage};
use super::ovf::{self, Envelope};
use super::tar::{self, Member, MemberKind, TarIndex};
use crate::error::{Error, ErrorKind, Result};
use crate::storage::lock::LockRequest;
use crate::storage::namespace::{Namespace, OpenMode};
use crate::storage::{FileId, FileStorage, Storage};
use crate::text::escape;

/// An OVA archive opened for reading.
#[derive(Debug)]
pub struct Archive {
    path: PathBuf,
    storage: Arc<dyn Storage>,
    index: TarIndex,
    id: Option<FileId>,
    /// The archive's length when it was indexed: an archive found changed is not reused.
    indexed_len: u64,
    /// The parsed OVF (`None`: the archive has none), once read.
    envelope: OnceLock<Option<Envelope>>,
    /// [`Archive::first_disk`], once worked out.
    first_disk: OnceLock<String>,
}

impl Archive {
    /// Open the host file `path` read-only, holding `lock` (the read lock QEMU takes on a
    /// read-only image, so nobody rewrites the archive under its readers), and index it.
    pub fn open(path: &Path, lock: Option<LockRequest>) -> Result<Archive> {
        let storage: Arc<dyn Storage> = Arc::new(FileStorage::open_locked(path, false, lock)?);
        Self::from_storage(path, storage)
    }

    /// Open the file `path` of `ns` read-only, holding `lock` where `ns` has locks, and
    /// index it. `ns` is a namespace the archive is a file of (the host's, object
    /// storage's), not one that serves the archive's name as its first disk: for a router,
    /// open the archive with [`RouterNamespace::open_file`] and index it with
    /// [`Archive::from_storage`].
    ///
    /// [`RouterNamespace::open_file`]: crate::storage::namespace::RouterNamespace::open_file
    pub(crate) fn open_in(
        ns: &dyn Namespace,
        path: &Path,
        lock: Option<LockRequest>,
    ) -> Result<Archive> {
        let mode = OpenMode {
            lock,
            ..OpenMode::read_only()
        };
        Self::from_storage(path, ns.open(path, mode)?)
    }

    /// Index the archive held in `storage` (named `path`).
    pub fn from_storage(path: &Path, storage: Arc<dyn Storage>) -> Result<Archive> {
        let indexed_len = storage
            .len()
            .map_err(|e| Error::io(e, "getting archive size").with_path(path))?;
        let index = tar::read_index(&*storage, path)?;
        Ok(Archive {
            path: path.to_path_buf(),
            id: storage.file_id(),
            storage,
            index,
            indexed_len,
            envelope: OnceLock::new(),
            first_disk: OnceLock::new(),
        })
    }

    /// Whether the file still has the length it was indexed at (a cheap sign that nobody
    /// rewrote it since; our readers' locks keep writers out).
    pub(super) fn unchanged(&self) -> bool {
        self.storage.len().is_ok_and(|l| l == self.indexed_len)
    }

    /// The archive's identity ([`Storage::file_id`]).
    pub(super) fn file_id(&self) -> Option<FileId> {
        self.id
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
    pub(crate) fn member_id(&self, m: &Member) -> Option<FileId> {
        self.id.map(|id| member_id(id, m.offset))
    }

    /// The regular file `name`, with a clear error when it is missing, not a regular file,
    /// or split into ovftool chunks (`name.000000000`, ...), or when the archive names some
    /// member twice: tar extracts the last of a name, a reader taking the first would check
    /// or serve other bytes than an importer gets, so nothing is read out of such an archive.
    pub fn file(&self, name: &str) -> Result<&Member> {
        if let Some(dups) = self.index.duplicates().first() {
            let offsets: Vec<String> = dups.iter().map(|m| m.header_offset.to_string()).collect();
            return Err(Error::corrupt(format!(
                "the archive holds {} members named \"{}\" (headers at offsets {}): tar \
                 extracts the last, other readers may take another; refusing to read from \
                 an archive whose members are ambiguous",
                dups.len(),
                escape(&dups[0].name),
                offsets.join(", ")
            ))
            .with_path(&self.path));
        }
        if let Some(m) = self.index.file(name) {
            return Ok(m);
        }
        let at = |m: String| {
            Error::new(ErrorKind::Io, m).with_path(self.path.join(tar::member_path(name)))
        };
        if let Some(m) = self.index.member(name) {
            return Err(at(format!(
                "this member of the archive is {}",
                m.kind.describe()
            )));
        }
        let chunk0 = format!("{name}.000000000");
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

    /// [`Archive::member_storage`] that keeps this archive (index, OVF) alive while it is
    /// open, so later opens of names in it reuse it ([`super::open_archives`]).
    pub(super) fn shared_member_storage(self: &Arc<Self>, m: &Member) -> Arc<dyn Storage> {
        Arc::new(
            MemberStorage::new(self.storage.clone(), m.offset, m.size, self.id)
                .keeping(self.clone()),
        )
    }

    /// All of member `m`, at most `max` bytes.
    pub(crate) fn read_member(&self, m: &Member, max: u64) -> Result<Vec<u8>> {
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
    pub(crate) fn ovf_member(&self) -> Option<&Member> {
        self.index.files_ending(".ovf").next()
    }

    /// The parsed OVF descriptor, if the archive has one (parsed on the first call).
    pub fn envelope(&self) -> Result<Option<&Envelope>> {
        if let Some(env) = self.envelope.get() {
            return Ok(env.as_ref());
        }
        let env = match self.ovf_member() {
            None => None,
            Some(m) => {
                let text = self.read_member(m, ovf::MAX_OVF_SIZE)?;
                Some(ovf::parse(&text, &self.path.join(&m.name))?)
            }
        };
        // Another thread may have got there first: either result is the same.
        Ok(self.envelope.get_or_init(|| env).as_ref())
    }

    /// The member an image name that is just the archive stands for: the first disk in
    /// the OVF's `DiskSection` (or `References`) order, else the first `.vmdk` member.
    /// Worked out on the first call (a descriptor names the archive once per extent line).
    pub fn first_disk(&self) -> Result<String> {
        if let Some(d) = self.first_disk.get() {
            return Ok(d.clone());
        }
        let d = self.find_first_disk()?;
        Ok(self.first_disk.get_or_init(|| d).clone())
    }

    fn find_first_disk(&self) -> Result<String> {
        if let Some(env) = self.envelope()? {
            if let Some(f) = env.first_disk_file() {
                if f.chunk_size.is_some() {
                    return Err(split_error(&f.href).with_path(&self.path));
                }
                if f.compression.as_deref().is_some_and(|c| c != "identity") {
                    return Err(Error::unsupported(format!(
                        "disk \"{}\" is stored {}-compressed inside the archive \
                         (ovf:compression); it cannot be read in place",
                        escape(&f.href),
                        escape(f.compression.as_deref().unwrap_or_default())
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
    let name = escape(name);
    Error::unsupported(format!(
        "disk \"{name}\" is split over several archive members ({name}.000000000, ...; \
         ovftool's ovf:chunkSize); it cannot be read in place: extract the members and join \
         them in order (cat) first"
    ))
}
