//! Health-check pings (`--ping URL`), in the convention of healthchecks.io and Uptime Kuma:
//! `GET URL/start` when a run starts, `POST URL` with a short summary when it went well,
//! `POST URL/fail` with the summary when it did not. A monitor that stops hearing from us,
//! or hears `fail`, tells a person.
//!
//! A ping that fails is a warning for the log, never a failed backup. The URL is a secret of
//! sorts (whoever has it can report success for us), so messages name only its scheme and
//! host.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use snafu::Snafu;

/// How long one ping may take before it counts as failed.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a ping is tried.
const ATTEMPTS: u32 = 2;
/// The most of a summary that is sent (healthchecks.io keeps 100 kB).
const MAX_BODY: usize = 10_000;

/// Where pings go.
#[derive(Clone)]
pub struct Pinger {
    base: String,
    query: Option<String>,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for Pinger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pinger")
            .field("url", &redact(&self.base))
            .finish_non_exhaustive()
    }
}

/// Why a ping URL cannot be used, or a ping failed.
#[derive(Debug, Snafu)]
pub enum PingError {
    /// The URL is not an `http` or `https` URL.
    #[snafu(display("--ping {shown}: not an http:// or https:// URL"))]
    BadUrl {
        /// The URL as it may be shown.
        shown: String,
    },
    /// The system's certificates could not be read.
    #[snafu(display("cannot read the system's CA certificates for pings: {source}"))]
    Certificates {
        /// Why.
        source: std::io::Error,
    },
    /// The monitor did not answer, or not with success.
    #[snafu(display("ping to {shown} failed: {message}"))]
    Failed {
        /// The URL as it may be shown.
        shown: String,
        /// What happened.
        message: String,
    },
}

/// What a ping says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// A run starts.
    Start,
    /// A run went well.
    Success,
    /// A run failed.
    Fail,
}

impl Pinger {
    /// A pinger for `url` (`https://hc-ping.com/<uuid>`; a query is kept after the suffix).
    pub fn new(url: &str) -> Result<Pinger, PingError> {
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, Some(query.to_owned())),
            None => (url, None),
        };
        let base = base.trim_end_matches('/').to_owned();
        let valid = (base.starts_with("http://") || base.starts_with("https://"))
            && base
                .parse::<http::Uri>()
                .is_ok_and(|uri| uri.host().is_some());
        if !valid {
            return Err(PingError::BadUrl {
                shown: redact(&base),
            });
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(Arc::clone(&provider))
        {
            Ok(builder) => builder,
            // Plain HTTP needs no certificates (a machine may have none installed).
            Err(_) if base.starts_with("http://") => {
                let tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|error| PingError::Certificates {
                        source: std::io::Error::other(error),
                    })?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls)
            }
            Err(source) => return Err(PingError::Certificates { source }),
        };
        let connector = builder.https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Pinger {
            base,
            query,
            client,
        })
    }

    /// The URL a signal goes to.
    fn url(&self, signal: Signal) -> String {
        let suffix = match signal {
            Signal::Start => "/start",
            Signal::Success => "",
            Signal::Fail => "/fail",
        };
        match &self.query {
            Some(query) => format!("{}{suffix}?{query}", self.base),
            None => format!("{}{suffix}", self.base),
        }
    }

    /// Sends `signal`, with `summary` as the body of a POST (success and failure).
    pub async fn send(&self, signal: Signal, summary: &str) -> Result<(), PingError> {
        let url = self.url(signal);
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            match tokio::time::timeout(TIMEOUT, self.request(&url, signal, summary)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(message)) => last = message,
                Err(_) => last = format!("no answer within {} s", TIMEOUT.as_secs()),
            }
        }
        Err(PingError::Failed {
            shown: redact(&self.base),
            message: last,
        })
    }

    async fn request(&self, url: &str, signal: Signal, summary: &str) -> Result<(), String> {
        let (method, body) = match signal {
            Signal::Start => (http::Method::GET, Bytes::new()),
            Signal::Success | Signal::Fail => {
                let mut end = summary.len().min(MAX_BODY);
                while !summary.is_char_boundary(end) {
                    end -= 1;
                }
                (
                    http::Method::POST,
                    Bytes::copy_from_slice(&summary.as_bytes()[..end]),
                )
            }
        };
        let request = http::Request::builder()
            .method(method)
            .uri(url)
            .header(http::header::USER_AGENT, "btrfs2s3")
            .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(body))
            .map_err(|error| error.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|error| crate::error_chain(&error))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("it answered {status}"))
        }
    }
}

/// A URL as it may be shown: scheme and host only (the path holds the check's secret).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(the URL)".to_owned();
    };
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = host.rsplit('@').next().unwrap_or_default();
    format!("{scheme}://{host}/…")
}

#[cfg(test)]
mod tests {
    use btrfs2s3_tests::http::Recorder;

    use super::*;

    #[test]
    fn urls_get_their_suffix_before_the_query() {
        let pinger = Pinger::new("https://hc-ping.com/abc/").unwrap();
        assert_eq!(pinger.url(Signal::Start), "https://hc-ping.com/abc/start");
        assert_eq!(pinger.url(Signal::Success), "https://hc-ping.com/abc");
        assert_eq!(pinger.url(Signal::Fail), "https://hc-ping.com/abc/fail");
        let kuma = Pinger::new("http://kuma:3001/api/push/tok?status=up").unwrap();
        assert_eq!(
            kuma.url(Signal::Fail),
            "http://kuma:3001/api/push/tok/fail?status=up"
        );
    }

    #[test]
    fn bad_urls_are_refused_without_showing_their_secret() {
        for url in ["ftp://host/secret", "hc-ping.com/secret", "https:///secret"] {
            let error = Pinger::new(url).unwrap_err().to_string();
            assert!(!error.contains("secret"), "{error}");
        }
        assert_eq!(
            redact("https://user:pw@host:8000/uuid"),
            "https://host:8000/…"
        );
    }

    #[tokio::test]
    async fn pings_reach_a_listener() {
        let server = Recorder::start(200);
        let pinger = Pinger::new(server.url()).unwrap();
        pinger.send(Signal::Start, "ignored").await.unwrap();
        pinger
            .send(Signal::Success, "3 actions done")
            .await
            .unwrap();
        pinger.send(Signal::Fail, "upload failed").await.unwrap();
        assert_eq!(
            server.requests(),
            [
                "GET /ping/check-uuid/start ",
                "POST /ping/check-uuid 3 actions done",
                "POST /ping/check-uuid/fail upload failed",
            ]
        );
    }

    #[tokio::test]
    async fn an_error_status_is_a_failed_ping() {
        let server = Recorder::start(404);
        let error = Pinger::new(server.url())
            .unwrap()
            .send(Signal::Success, "done")
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("404"), "{error}");
        assert!(!error.contains("uuid"), "{error}");
        assert_eq!(server.requests().len(), 2, "tried twice");
    }
}
