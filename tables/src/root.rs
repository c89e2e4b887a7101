//! Opening a data root: a local directory or an S3 location (`gridmeter_core::store`), seen
//! as object stores for the Delta tables under it and as URLs for scans.
//!
//! On a local directory every object written is fsync'd, with its directories, before the
//! write returns ([`SyncedLocal`]): a Delta commit that returned is on disk, so a collector
//! may confirm what it committed. On S3 a PUT that returned is durable.

use std::fmt;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use gridmeter_core::store::DataRoot;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use url::Url;

use crate::TableError;

/// An opened data root.
#[derive(Clone, Debug)]
pub struct Root {
    /// The storage root: `/` of the local file system, or the S3 bucket.
    storage: Arc<dyn ObjectStore>,
    /// The URL `storage` is addressed by: `file:///` or `s3://bucket`.
    storage_url: Url,
    /// The data root's key prefix inside `storage` (no leading or trailing `/`).
    prefix: String,
    /// The local directory, for a local data root.
    local: Option<PathBuf>,
}

impl Root {
    /// Opens (a local directory: creates) the data root a config names.
    pub fn open(data_root: &DataRoot) -> Result<Root, TableError> {
        match data_root {
            DataRoot::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| TableError::Io {
                    path: dir.clone(),
                    source,
                })?;
                let dir = dir.canonicalize().map_err(|source| TableError::Io {
                    path: dir.clone(),
                    source,
                })?;
                let prefix = dir
                    .to_str()
                    .ok_or_else(|| {
                        TableError::Invalid(format!(
                            "data_root {} is not valid UTF-8",
                            dir.display()
                        ))
                    })?
                    .trim_matches('/')
                    .to_string();
                Ok(Root {
                    storage: Arc::new(SyncedLocal(LocalFileSystem::new())),
                    storage_url: Url::parse("file:///")
                        .map_err(|e| TableError::Invalid(e.to_string()))?,
                    prefix,
                    local: Some(dir),
                })
            }
            DataRoot::ObjectStore(os) => {
                let loc = os.location()?;
                let storage_url = Url::parse(&loc.bucket_url()).map_err(|e| {
                    TableError::Invalid(format!("object_store.url {:?}: {e}", os.url))
                })?;
                Ok(Root {
                    storage: os.bucket_store()?,
                    storage_url,
                    prefix: loc.prefix,
                    local: None,
                })
            }
        }
    }

    /// The storage root (file system root or bucket): paths are [`Root::key`]s.
    pub fn storage(&self) -> &Arc<dyn ObjectStore> {
        &self.storage
    }

    /// The URL the storage root is registered under for scans: `file:///` or `s3://bucket`.
    pub fn storage_url(&self) -> &Url {
        &self.storage_url
    }

    /// The store seen from the data root: paths relative to it (`raw/_delta_log/…`).
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.under("")
    }

    /// The store seen from `rel` under the data root.
    pub fn under(&self, rel: &str) -> Arc<dyn ObjectStore> {
        let key = self.key(rel);
        if key.is_empty() {
            self.storage.clone()
        } else {
            Arc::new(PrefixStore::new(self.storage.clone(), key))
        }
    }

    /// The storage key of `rel` (a `/`-separated path under the data root).
    pub fn key(&self, rel: &str) -> String {
        let rel = rel.trim_matches('/');
        match (self.prefix.is_empty(), rel.is_empty()) {
            (true, _) => rel.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{rel}", self.prefix),
        }
    }

    /// The URL of `rel` under the data root (`file:///var/lib/gridmeter/raw`,
    /// `s3://bucket/prefix/raw`), without a trailing `/`.
    pub fn url(&self, rel: &str) -> String {
        let key = self.key(rel);
        let base = self.storage_url.as_str().trim_end_matches('/');
        if self.local.is_some() {
            format!("file:///{key}")
        } else {
            format!("{base}/{key}")
        }
    }

    /// The local directory of a local data root.
    pub fn local_dir(&self) -> Option<&FsPath> {
        self.local.as_deref()
    }

    /// How to name a table in a message: its local path or URL.
    pub fn display(&self, rel: &str) -> String {
        match &self.local {
            Some(dir) => dir.join(rel).display().to_string(),
            None => self.url(rel),
        }
    }
}

/// A local file system store that fsyncs every object it writes, and its directories.
#[derive(Debug)]
pub struct SyncedLocal(pub LocalFileSystem);

impl fmt::Display for SyncedLocal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SyncedLocal({})", self.0)
    }
}

/// The deepest ancestor directory of `file` that exists now.
fn existing_ancestor(file: &FsPath) -> Option<PathBuf> {
    file.ancestors()
        .skip(1)
        .find(|d| d.is_dir())
        .map(FsPath::to_path_buf)
}

/// Fsyncs `file`, then every directory from its parent up to `upto` (the deepest one that
/// existed before the file was written: the directories below it are new, and each new entry
/// must reach the disk).
fn sync_file(file: &FsPath, upto: Option<&FsPath>) -> object_store::Result<()> {
    let fail = |source: std::io::Error, p: &FsPath| object_store::Error::Generic {
        store: "SyncedLocal",
        source: format!("fsync {}: {source}", p.display()).into(),
    };
    std::fs::File::open(file)
        .and_then(|f| f.sync_all())
        .map_err(|e| fail(e, file))?;
    for d in file.ancestors().skip(1) {
        std::fs::File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(|e| fail(e, d))?;
        if upto.is_none_or(|u| d == u) || d.as_os_str().is_empty() {
            break;
        }
    }
    Ok(())
}

fn join_error(e: tokio::task::JoinError) -> object_store::Error {
    object_store::Error::Generic {
        store: "SyncedLocal",
        source: e.to_string().into(),
    }
}

#[async_trait]
impl ObjectStore for SyncedLocal {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let file = self.0.path_to_filesystem(location)?;
        let existed = existing_ancestor(&file);
        let r = self.0.put_opts(location, payload, opts).await?;
        tokio::task::spawn_blocking(move || sync_file(&file, existed.as_deref()))
            .await
            .map_err(join_error)??;
        Ok(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.0.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.0.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.0.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        let file = self.0.path_to_filesystem(to)?;
        let existed = existing_ancestor(&file);
        self.0.copy_opts(from, to, options).await?;
        tokio::task::spawn_blocking(move || sync_file(&file, existed.as_deref()))
            .await
            .map_err(join_error)?
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        let file = self.0.path_to_filesystem(to)?;
        let existed = existing_ancestor(&file);
        self.0.rename_opts(from, to, options).await?;
        tokio::task::spawn_blocking(move || sync_file(&file, existed.as_deref()))
            .await
            .map_err(join_error)?
    }
}
