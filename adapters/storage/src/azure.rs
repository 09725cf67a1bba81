//! `az://container/blob` objects through the official Azure SDK (`azure_storage_blob`; Blob
//! service REST API: Get Blob, Put Blob / Put Block List, List Blobs, Get Blob Properties).
//!
//! Where a container lives and how requests are authorised, in order:
//!
//! - `AZURE_STORAGE_CONNECTION_STRING`, the portal's and the emulators' connection string
//!   (`AccountName=..;AccountKey=..;BlobEndpoint=..` or `..;SharedAccessSignature=..`). The
//!   container is `<blob endpoint>/<container>`; the blob endpoint is `BlobEndpoint`, or
//!   `<DefaultEndpointsProtocol>://<AccountName>.blob.<EndpointSuffix>`. This is how Azurite is
//!   reached.
//! - Otherwise `AZURE_STORAGE_ACCOUNT` names the account, the endpoint is
//!   `https://<account>.blob.core.windows.net`, and requests carry an Entra ID token: workload
//!   identity when `AZURE_FEDERATED_TOKEN_FILE` is set (AKS; `AZURE_CLIENT_ID`,
//!   `AZURE_TENANT_ID`), else managed identity (Container Apps, VMs; `AZURE_CLIENT_ID` picks a
//!   user-assigned identity).
//!
//! Why a SAS for account keys: the new official SDK authorises with Entra ID tokens or a SAS
//! already in the URL only; it has no Shared Key credential (Azure/azure-sdk-for-rust#2975),
//! and Azurite accepts no Entra ID token over plain HTTP. A connection string with an
//! `AccountKey` is therefore turned into an account SAS (blob service; service, container and
//! object resources; read, write, delete, list, add, create), signed here with HMAC-SHA256 of
//! the key by `azure_core::hmac` as the SAS specification says, and appended to the container
//! URL; the SDK keeps that query on every request it builds. The SAS is valid for
//! [`SAS_LIFETIME`] from the store's creation: a store serves one model fetch or one batch job.

use std::sync::Arc;

use azure_core::credentials::{Secret, TokenCredential};
use azure_core::error::ErrorKind;
use azure_core::http::{StatusCode, Url};
use azure_core::time::{Duration, OffsetDateTime};
use azure_identity::{
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
};
use azure_storage_blob::models::{
    BlobClientDownloadOptions, BlobClientGetPropertiesResultHeaders, BlobContainerClientListBlobsOptions, HttpRange,
};
use azure_storage_blob::{BlobClient, BlobContainerClient};
use bytes::Bytes;
use futures_util::TryStreamExt;

use crate::{ObjectMeta, StorageError};

pub const CONNECTION_STRING_ENV: &str = "AZURE_STORAGE_CONNECTION_STRING";
pub const ACCOUNT_ENV: &str = "AZURE_STORAGE_ACCOUNT";
/// How long the SAS signed for an account key stays valid.
pub const SAS_LIFETIME: Duration = Duration::hours(24);
/// The SAS version signed: the first whose string-to-sign has the encryption-scope line.
const SAS_VERSION: &str = "2020-12-06";

/// The blobs of one container.
#[derive(Clone)]
pub struct AzureStore {
    client: Arc<BlobContainerClient>,
    container: String,
}

impl std::fmt::Debug for AzureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client's URL may hold a SAS.
        f.debug_struct("AzureStore").field("container", &self.container).finish_non_exhaustive()
    }
}

/// The parts of a connection string this store uses.
struct ConnectionString {
    account: Option<String>,
    key: Option<Secret>,
    sas: Option<String>,
    blob_endpoint: Option<String>,
    protocol: String,
    suffix: String,
}

impl ConnectionString {
    /// `Key=Value` pairs separated by `;`. Values are never echoed in errors: they hold secrets.
    fn parse(text: &str) -> Result<Self, String> {
        let mut cs = ConnectionString {
            account: None,
            key: None,
            sas: None,
            blob_endpoint: None,
            protocol: "https".to_string(),
            suffix: "core.windows.net".to_string(),
        };
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                return Err(format!("a part of {CONNECTION_STRING_ENV} is not Key=Value"));
            };
            let value = value.trim().to_string();
            match name.trim() {
                "AccountName" => cs.account = Some(value),
                "AccountKey" => cs.key = Some(Secret::new(value)),
                "SharedAccessSignature" => cs.sas = Some(value.trim_start_matches('?').to_string()),
                "BlobEndpoint" => cs.blob_endpoint = Some(value),
                "DefaultEndpointsProtocol" => cs.protocol = value,
                "EndpointSuffix" => cs.suffix = value,
                // Other services' endpoints and settings do not concern blobs.
                _ => {}
            }
        }
        Ok(cs)
    }

    fn endpoint(&self) -> Result<String, String> {
        if let Some(e) = &self.blob_endpoint {
            return Ok(e.clone());
        }
        let account = self
            .account
            .as_deref()
            .ok_or(format!("{CONNECTION_STRING_ENV} has neither BlobEndpoint nor AccountName"))?;
        Ok(format!("{}://{account}.blob.{}", self.protocol, self.suffix))
    }
}

/// An account SAS over `account`'s blob service, signed with its key, as a URL query.
fn account_sas(account: &str, key: &Secret, now: OffsetDateTime) -> Result<String, String> {
    let expiry = now + SAS_LIFETIME;
    let expiry = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        expiry.year(),
        u8::from(expiry.month()),
        expiry.day(),
        expiry.hour(),
        expiry.minute(),
        expiry.second()
    );
    let (permissions, services, resource_types, protocol) = ("rwdlac", "b", "sco", "https,http");
    // Account SAS string-to-sign (version 2020-12-06 on): account, permissions, services,
    // resource types, start, expiry, IP range, protocol, version, encryption scope, each
    // followed by a newline.
    let to_sign =
        format!("{account}\n{permissions}\n{services}\n{resource_types}\n\n{expiry}\n\n{protocol}\n{SAS_VERSION}\n\n");
    let signature = azure_core::hmac::hmac_sha256(&to_sign, key)
        .map_err(|e| format!("signing a SAS with the AccountKey of {CONNECTION_STRING_ENV}: {e}"))?;
    let mut query = Url::parse("http://sas/").map_err(|e| e.to_string())?;
    query
        .query_pairs_mut()
        .append_pair("sv", SAS_VERSION)
        .append_pair("ss", services)
        .append_pair("srt", resource_types)
        .append_pair("sp", permissions)
        .append_pair("se", &expiry)
        .append_pair("spr", protocol)
        .append_pair("sig", &signature);
    Ok(query.query().unwrap_or_default().to_string())
}

/// `<endpoint>/<container>?<sas>`.
fn container_url(endpoint: &str, container: &str, sas: Option<&str>) -> Result<Url, String> {
    let mut url = Url::parse(endpoint).map_err(|e| format!("blob endpoint {endpoint:?}: {e}"))?;
    url.path_segments_mut()
        .map_err(|()| format!("blob endpoint {endpoint:?} cannot hold a path"))?
        .pop_if_empty()
        .push(container);
    if let Some(sas) = sas {
        url.set_query(Some(sas));
    }
    Ok(url)
}

/// An Entra ID credential from the environment: workload identity where its token file is set,
/// else managed identity.
fn token_credential() -> azure_core::Result<Arc<dyn TokenCredential>> {
    if std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").is_some() {
        return Ok(WorkloadIdentityCredential::new(None)?);
    }
    let user_assigned_id =
        std::env::var("AZURE_CLIENT_ID").ok().filter(|id| !id.is_empty()).map(UserAssignedId::ClientId);
    Ok(ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
        user_assigned_id,
        ..Default::default()
    }))?)
}

impl AzureStore {
    /// A client for `container`, from the environment (see the module docs). Nothing is sent
    /// until the first request.
    pub fn new(container: &str) -> Result<Self, StorageError> {
        crate::install_crypto_provider();
        let fail = |message: String| StorageError::Io { op: "configure", uri: format!("az://{container}/"), message };
        let client = if let Ok(text) = std::env::var(CONNECTION_STRING_ENV) {
            let cs = ConnectionString::parse(&text).map_err(fail)?;
            let sas = match (&cs.sas, &cs.key, &cs.account) {
                (Some(sas), _, _) => sas.clone(),
                (None, Some(key), Some(account)) => {
                    account_sas(account, key, OffsetDateTime::now_utc()).map_err(fail)?
                }
                _ => {
                    return Err(fail(format!(
                        "{CONNECTION_STRING_ENV} has neither SharedAccessSignature nor AccountName and AccountKey"
                    )));
                }
            };
            let url = container_url(&cs.endpoint().map_err(fail)?, container, Some(&sas)).map_err(fail)?;
            BlobContainerClient::new(url, None, None).map_err(|e| fail(e.to_string()))?
        } else {
            let account = std::env::var(ACCOUNT_ENV).map_err(|_| {
                fail(format!("set {ACCOUNT_ENV} (with a managed or workload identity) or {CONNECTION_STRING_ENV}"))
            })?;
            let endpoint = format!("https://{account}.blob.core.windows.net");
            let url = container_url(&endpoint, container, None).map_err(fail)?;
            let credential = token_credential().map_err(|e| fail(e.to_string()))?;
            BlobContainerClient::new(url, Some(credential), None).map_err(|e| fail(e.to_string()))?
        };
        Ok(Self { client: Arc::new(client), container: container.to_string() })
    }

    pub fn container(&self) -> &str {
        &self.container
    }

    /// The SDK's client for the container, authorised as the store is: for what this seam does
    /// not do, such as creating the container.
    pub fn client(&self) -> &BlobContainerClient {
        &self.client
    }

    fn uri(&self, key: &str) -> String {
        format!("az://{}/{key}", self.container)
    }

    fn blob(&self, key: &str) -> BlobClient {
        self.client.blob_client(key)
    }

    fn err(&self, op: &'static str, key: &str, e: azure_core::Error) -> StorageError {
        // A missing container is a configuration error, not a missing blob: both answer 404,
        // told apart by the error code (the `x-ms-error-code` header, so HEAD has it too).
        let code = match e.kind() {
            ErrorKind::HttpResponse { error_code, .. } => error_code.as_deref(),
            _ => None,
        };
        if e.http_status() == Some(StatusCode::NotFound) && code != Some("ContainerNotFound") {
            return StorageError::NotFound { uri: self.uri(key) };
        }
        let text = e.to_string();
        // A HEAD answer has no body: its error code comes only in a header, which the SDK's
        // message leaves out.
        let message = match code {
            Some(code) if !text.contains(code) => format!("{code}: {text}"),
            _ => text,
        };
        StorageError::Io { op, uri: self.uri(key), message }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        let out = self.blob(key).download(None).await.map_err(|e| self.err("get", key, e))?;
        out.body.collect().await.map_err(|e| self.err("read", key, e))
    }

    /// `len` bytes from offset `start` (fewer at the end of the blob), in one request.
    pub async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StorageError> {
        let Some(partition) = usize::try_from(len).ok().and_then(std::num::NonZero::new) else {
            return if len == 0 {
                Ok(Bytes::new())
            } else {
                Err(StorageError::Io {
                    op: "get range",
                    uri: self.uri(key),
                    message: format!("{len} bytes do not fit in memory"),
                })
            };
        };
        let options = BlobClientDownloadOptions {
            range: Some(HttpRange::new(start, len)),
            parallel: Some(std::num::NonZero::<usize>::MIN),
            partition_size: Some(partition),
            ..Default::default()
        };
        let out = self.blob(key).download(Some(options)).await.map_err(|e| self.err("get range", key, e))?;
        let bytes = out.body.collect().await.map_err(|e| self.err("read", key, e))?;
        if bytes.len() as u64 > len {
            return Err(StorageError::Io {
                op: "get range",
                uri: self.uri(key),
                message: format!("asked for {len} bytes at {start}, the store sent {}", bytes.len()),
            });
        }
        Ok(bytes)
    }

    /// A block blob upload: large bodies go up as blocks, and the blob changes only when the
    /// block list is committed, so readers see the old blob or the new one.
    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), StorageError> {
        self.blob(key).upload(body.into(), None).await.map_err(|e| self.err("put", key, e))?;
        Ok(())
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let options = BlobContainerClientListBlobsOptions { prefix: Some(prefix.to_string()), ..Default::default() };
        let mut pages = self.client.list_blobs(Some(options)).map_err(|e| self.err("list", prefix, e))?.into_pages();
        let mut keys = Vec::new();
        while let Some(page) = pages.try_next().await.map_err(|e| self.err("list", prefix, e))? {
            let page = page.into_model().map_err(|e| self.err("list", prefix, e))?;
            keys.extend(page.blob_items.into_iter().filter_map(|b| b.name));
        }
        // The service lists in UTF-8 binary order already; emulators may not.
        keys.sort();
        Ok(keys)
    }

    pub async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        Ok(self.stat(key).await?.map(|m| m.size))
    }

    /// Get Blob Properties: size and ETag.
    pub async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let props = match self.blob(key).get_properties(None).await {
            Ok(props) => props,
            Err(e) => {
                return match self.err("stat", key, e) {
                    StorageError::NotFound { .. } => Ok(None),
                    other => Err(other),
                };
            }
        };
        let size = props.content_length().map_err(|e| self.err("stat", key, e))?.ok_or_else(|| StorageError::Io {
            op: "stat",
            uri: self.uri(key),
            message: "the store sent no Content-Length".to_string(),
        })?;
        let version = props.etag().map_err(|e| self.err("stat", key, e))?.map(|e| e.to_string());
        Ok(Some(ObjectMeta { size, version }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_give_an_endpoint_and_a_sas() {
        let cs = ConnectionString::parse(
            "DefaultEndpointsProtocol=http;AccountName=dev;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:1/dev;",
        )
        .expect("parse");
        assert_eq!(cs.endpoint().expect("endpoint"), "http://127.0.0.1:1/dev");
        let cs = ConnectionString::parse("AccountName=acct;EndpointSuffix=core.chinacloudapi.cn").expect("parse");
        assert_eq!(cs.endpoint().expect("endpoint"), "https://acct.blob.core.chinacloudapi.cn");
        assert!(ConnectionString::parse("AccountName").is_err());
        assert!(ConnectionString::parse("AccountKey=x").expect("parse").endpoint().is_err());
        let url = container_url("http://127.0.0.1:1/dev/", "models", Some("sv=1&sig=a%2Bb")).expect("url");
        assert_eq!(url.as_str(), "http://127.0.0.1:1/dev/models?sv=1&sig=a%2Bb");
    }

    #[test]
    fn account_sas_matches_the_specification() {
        // A signature computed independently (Python: hmac.new(b64decode(key), to_sign,
        // sha256)) over the same string-to-sign.
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
        let sas = account_sas("dev", &Secret::new("a2V5"), now).expect("sas");
        assert_eq!(
            sas,
            "sv=2020-12-06&ss=b&srt=sco&sp=rwdlac&se=2023-11-15T22%3A13%3A20Z&spr=https%2Chttp\
             &sig=k2GJ32KoMkmkoHYrLelywLM5NsPx43ApFmYRJSEW1kA%3D"
        );
    }
}
