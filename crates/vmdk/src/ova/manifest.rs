//! The manifest (`.mf`) of an OVA: one `ALG(file)= hexdigest` line per file, and checking
//! it against the members. Members are hashed on worker threads, each fed by its own
//! reader thread, so hashing and reading overlap and several members are checked at once.
//! Each member is hashed at most once per algorithm however many lines name it: 10,000
//! lines naming one 64 MiB member (a 340 KB archive) would otherwise hash 640 GB.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};

use sha2::digest::DynDigest;

use super::archive::Archive;
use super::tar::{Member, MemberKind, TarIndex};
use crate::error::{Error, Result};

/// Largest manifest read.
pub(crate) const MAX_MANIFEST_SIZE: u64 = 1 << 20;
const CHUNK: u64 = 1 << 20;

/// A digest algorithm a manifest may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// SHA-1 (OVF 1.x, ovftool's default for years).
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Algorithm {
    /// The algorithm a manifest line names (`SHA1`, `SHA256`, `SHA512`).
    pub fn parse(s: &str) -> Option<Algorithm> {
        match s.to_ascii_uppercase().as_str() {
            "SHA1" => Some(Algorithm::Sha1),
            "SHA256" => Some(Algorithm::Sha256),
            "SHA512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
    /// Its name as manifests write it.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
            Algorithm::Sha512 => "SHA512",
        }
    }
    /// A fresh hasher.
    pub(crate) fn hasher(self) -> Box<dyn DynDigest + Send> {
        match self {
            Algorithm::Sha1 => Box::new(sha1::Sha1::default()),
            Algorithm::Sha256 => Box::new(sha2::Sha256::default()),
            Algorithm::Sha512 => Box::new(sha2::Sha512::default()),
        }
    }
}

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One manifest line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The algorithm's name as written.
    pub algorithm: String,
    /// The file it covers.
    pub file: String,
    /// The expected digest, lowercase hex.
    pub digest: String,
}

/// Parse manifest text (`path` names it in errors).
pub fn parse(text: &[u8], path: &Path) -> Result<Vec<Entry>> {
    let text = String::from_utf8_lossy(text);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = || {
            Error::corrupt(format!(
                "manifest line {} is not \"ALGORITHM(file)= digest\": {:?}",
                i + 1,
                line.chars().take(80).collect::<String>()
            ))
            .with_path(path)
        };
        let open = line.find('(').ok_or_else(bad)?;
        let close = line.rfind(')').filter(|&c| c > open).ok_or_else(bad)?;
        let rest = line[close + 1..].trim_start();
        let digest = rest.strip_prefix('=').ok_or_else(bad)?.trim();
        if digest.is_empty() || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        out.push(Entry {
            algorithm: line[..open].trim().to_string(),
            file: line[open + 1..close].to_string(),
            digest: digest.to_ascii_lowercase(),
        });
        if out.len() > super::tar::MAX_MEMBERS {
            return Err(Error::corrupt("manifest has too many lines").with_path(path));
        }
    }
    Ok(out)
}

/// What checking one manifest line found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// The member's digest is the one listed.
    Match,
    /// It is not: the digest computed.
    Mismatch(String),
    /// The archive has no such member.
    Missing,
    /// The member is not a regular file: what it is ("a symbolic link", ...).
    NotAFile(String),
    /// The algorithm is not one this library computes.
    UnknownAlgorithm,
    /// The member could not be read.
    Unreadable(String),
}

/// One manifest line and what checking it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The line.
    pub entry: Entry,
    /// The result.
    pub status: Status,
}

/// The member a manifest line names and its algorithm, or why the line cannot be checked.
fn line_target<'a>(index: &'a TarIndex, e: &Entry) -> Result<(&'a Member, Algorithm), Status> {
    let alg = Algorithm::parse(&e.algorithm).ok_or(Status::UnknownAlgorithm)?;
    let m = index.member(&e.file).ok_or(Status::Missing)?;
    if m.kind != MemberKind::File {
        return Err(Status::NotAFile(m.kind.describe()));
    }
    Ok((m, alg))
}

/// Every line of `entries` against the members of `index`, without computing a digest: a
/// line whose member exists as a regular file counts as [`Status::Match`]. For a vetter
/// whose reads must stay bounded (what the manifest covers, not whether it is right).
pub(crate) fn check_listing(index: &TarIndex, entries: &[Entry]) -> Vec<Check> {
    entries
        .iter()
        .map(|e| Check {
            entry: e.clone(),
            status: line_target(index, e).map_or_else(|s| s, |_| Status::Match),
        })
        .collect()
}

/// Check every line of `entries` against `arch`'s members, on up to `threads` workers (0:
/// one per CPU).
/// A name held by several members is checked against the last, the one tar extracts.
pub fn verify(arch: &Archive, entries: &[Entry], threads: usize) -> Vec<Check> {
    // The digests to compute, one per (member, algorithm), and which one each line needs.
    let mut jobs: Vec<(&Member, Algorithm)> = Vec::new();
    let mut job_of: HashMap<(u64, Algorithm), usize> = HashMap::new();
    let plan: Vec<Result<usize, Status>> = entries
        .iter()
        .map(|e| {
            let (m, alg) = line_target(arch.index(), e)?;
            Ok(*job_of.entry((m.header_offset, alg)).or_insert_with(|| {
                jobs.push((m, alg));
                jobs.len() - 1
            }))
        })
        .collect();
    let digests = compute(arch, &jobs, threads);
    entries
        .iter()
        .zip(plan)
        .map(|(e, p)| Check {
            entry: e.clone(),
            status: match p {
                Err(s) => s,
                Ok(j) => match &digests[j] {
                    Ok(d) if *d == e.digest => Status::Match,
                    Ok(d) => Status::Mismatch(d.clone()),
                    Err(err) => Status::Unreadable(format!("{err:#}")),
                },
            },
        })
        .collect()
}

/// The digest of each `(member, algorithm)` of `jobs`, on up to `threads` workers.
fn compute(
    arch: &Archive,
    jobs: &[(&Member, Algorithm)],
    threads: usize,
) -> Vec<std::io::Result<String>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<std::io::Result<String>>>> =
        Mutex::new((0..jobs.len()).map(|_| None).collect());
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let workers = threads.clamp(1, jobs.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(m, alg)) = jobs.get(i) else { break };
                let d = digest_member(arch, m, alg);
                results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(d);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(std::io::Error::other("not checked"))))
        .collect()
}

/// The digest of member `m`: a reader thread reads ahead while this one hashes.
pub(crate) fn digest_member(arch: &Archive, m: &Member, alg: Algorithm) -> std::io::Result<String> {
    let storage = arch.storage();
    let (tx, rx) = mpsc::sync_channel::<std::io::Result<Vec<u8>>>(4);
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut off = 0;
            while off < m.size {
                let n = CHUNK.min(m.size - off);
                let mut buf = vec![0u8; n as usize];
                let r = storage.read_exact_at(&mut buf, m.offset + off);
                let failed = r.is_err();
                if tx.send(r.map(|_| buf)).is_err() || failed {
                    return;
                }
                off += n;
            }
        });
        let mut h = alg.hasher();
        for chunk in rx {
            h.update(&chunk?);
        }
        Ok(hex(&h.finalize()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ovftool_and_ova_compose_lines() {
        let t = b"SHA1(a.ovf)= 0123abcd\nSHA256 (disk 1.vmdk) = ABCDEF\n\n";
        let v = parse(t, Path::new("x.mf")).unwrap();
        assert_eq!(v[0].file, "a.ovf");
        assert_eq!(v[1].file, "disk 1.vmdk");
        assert_eq!(v[1].digest, "abcdef");
        assert_eq!(v[1].algorithm, "SHA256");
        assert!(parse(b"garbage", Path::new("x.mf")).is_err());
        assert!(parse(b"SHA1(x)= zz", Path::new("x.mf")).is_err());
    }
}
