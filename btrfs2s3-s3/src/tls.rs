//! HTTP clients for the config's `verify` setting: a CA bundle, or no verification at all.
//!
//! The SDK's own client takes a custom trust store, so a CA bundle is simple. It has no switch
//! to turn verification off, which the Python tool's configs allow (`verify: false`, for
//! self-hosted servers with self-signed certificates), so for that we plug in a small
//! connector of our own: hyper with a rustls configuration whose certificate verifier accepts
//! any certificate but still checks the handshake signatures.

use std::fmt;
use std::sync::Arc;

use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// An HTTPS client that trusts the certificates of a PEM bundle (instead of the system's).
pub(crate) fn client_trusting(pem: Vec<u8>) -> Result<SharedHttpClient, String> {
    let context = TlsContext::builder()
        .with_trust_store(TrustStore::empty().with_pem_certificate(pem))
        .build()
        .map_err(|e| format!("invalid CA bundle: {e}"))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(context)
        .build_https())
}

/// An HTTP(S) client that does not verify server certificates (`verify: false`).
pub(crate) fn client_without_verification() -> SharedHttpClient {
    SharedHttpClient::new(InsecureClient)
}

#[derive(Debug)]
struct InsecureClient;

impl HttpClient for InsecureClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map(|builder| {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                    .with_no_client_auth()
            });
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(settings.connect_timeout());
        http.set_nodelay(true);
        let connector = tls.map(|tls| {
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http);
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build(https);
            InsecureConnector {
                client,
                read_timeout: settings.read_timeout(),
            }
        });
        match connector {
            Ok(connector) => SharedHttpConnector::new(connector),
            Err(e) => SharedHttpConnector::new(FailingConnector(e.to_string())),
        }
    }
}

type HyperClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    SdkBody,
>;

struct InsecureConnector {
    client: HyperClient,
    read_timeout: Option<std::time::Duration>,
}

impl fmt::Debug for InsecureConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InsecureConnector")
    }
}

impl HttpConnector for InsecureConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.client.clone();
        let read_timeout = self.read_timeout;
        HttpConnectorFuture::new(async move {
            let request = request
                .try_into_http1x()
                .map_err(|e| ConnectorError::user(e.into()))?;
            let pending = client.request(request);
            let response = match read_timeout {
                Some(limit) => tokio::time::timeout(limit, pending)
                    .await
                    .map_err(|e| ConnectorError::timeout(e.into()))?,
                None => pending.await,
            }
            .map_err(|e| ConnectorError::io(e.into()))?;
            HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                .map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// Reports why the insecure connector could not be built, on every request.
#[derive(Debug)]
struct FailingConnector(String);

impl HttpConnector for FailingConnector {
    fn call(&self, _request: HttpRequest) -> HttpConnectorFuture {
        let message = self.0.clone();
        HttpConnectorFuture::ready(Err(ConnectorError::user(message.into())))
    }
}

/// Accepts any server certificate; handshake signatures are still verified, so the
/// connection is encrypted with the key of whoever answered, just not authenticated.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
