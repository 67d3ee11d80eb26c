//! S3-compatible object storage through `object_store`.
//! (Placeholder: the client is not built yet.)

use super::{ByteStream, ObjectInfo, ObjectWriter, Store};
use crate::error::{Error, Result};

/// An S3 bucket and prefix.
#[derive(Debug)]
pub struct S3Store {
    label: String,
}

impl S3Store {
    /// The bucket and prefix `spec` names; credentials from the environment.
    pub fn new(spec: &lockstep_proto::agent::S3Sink, label: String) -> Result<S3Store> {
        let _ = spec;
        Err(Error::Config(format!(
            "{label}: s3 sinks are not built yet"
        )))
    }
}

#[async_trait::async_trait]
impl Store for S3Store {
    fn describe(&self) -> String {
        self.label.clone()
    }
    async fn create(&self, _key: &str) -> Result<Box<dyn ObjectWriter>> {
        unreachable!("never constructed")
    }
    async fn read(&self, _key: &str, _offset: u64) -> Result<ByteStream> {
        unreachable!("never constructed")
    }
    async fn size(&self, _key: &str) -> Result<Option<u64>> {
        unreachable!("never constructed")
    }
    async fn list(&self, _prefix: &str) -> Result<Vec<ObjectInfo>> {
        unreachable!("never constructed")
    }
    async fn delete_prefix(&self, _prefix: &str) -> Result<u64> {
        unreachable!("never constructed")
    }
}
