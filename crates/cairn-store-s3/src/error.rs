//! What went wrong talking to S3, decided once: every SDK failure becomes an
//! [`S3Error`] naming the object, and every `S3Error` maps onto the
//! [`StoreError`] variant that tells callers (and the retry wrapper) what to
//! do: throttling, 5xx, timeouts and broken connections are transient;
//! missing objects, refused conditions, denied access and everything else
//! are not.

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use cairn_store::{DisplaySafe, StoreError};

/// A failed S3 call (or bad S3 settings), with the object it concerned.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("invalid S3 location {url}: {reason}")]
    InvalidUrl { url: DisplaySafe, reason: String },

    #[error("invalid S3 settings for {location}: {reason}")]
    InvalidConfig { location: String, reason: String },

    #[error("{path} does not exist")]
    NotFound { path: String },

    #[error(
        "bucket {bucket} does not exist (check the bucket name, region and endpoint; `cairn init` creates it)"
    )]
    NoSuchBucket { bucket: String },

    /// A create-new write found the object already there (HTTP 412).
    #[error("{path} already exists")]
    AlreadyExists { path: String },

    #[error(
        "{operation} on {path} was refused ({code}): check the AWS credentials (AWS_ACCESS_KEY_ID/\
         AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the pod's IAM role) and that their policy allows \
         {operation} on this bucket and prefix"
    )]
    AccessDenied { path: String, operation: &'static str, code: String },

    #[error("no usable AWS credentials for {path}: {message}")]
    Credentials { path: String, message: String },

    #[error(
        "bucket {bucket} is in another region{}; set region=… in the location or AWS_REGION",
        region.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
    )]
    WrongRegion { bucket: String, region: Option<String> },

    #[error("{path}: object is {actual} bytes, the read asked for bytes {start}..{end}")]
    ShortRead { path: String, start: u64, end: u64, actual: u64 },

    /// A delete refused because the object is under S3 Object Lock retention.
    #[error(
        "{path} is protected by S3 Object Lock ({mode} mode) until {until}; it can be deleted after that"
    )]
    Retained { path: String, mode: String, until: String },

    /// `object_lock=…` was asked for, but the bucket has no Object Lock.
    #[error(
        "bucket {bucket} does not have S3 Object Lock enabled, which object_lock=… needs; let `cairn init` \
         create a new bucket (it enables Object Lock), or enable it on this one \
         (aws s3api put-object-lock-configuration)"
    )]
    ObjectLockUnavailable { bucket: String },

    /// Worth retrying: throttling, server errors, timeouts, broken connections.
    #[error("{operation} on {path}: {message}")]
    Transient { path: String, operation: &'static str, message: String },

    /// Anything else, permanent. (The message leaves out `path`: converted
    /// into a [`StoreError`] the path leads the message already.)
    #[error("S3 {operation} failed: {message}")]
    Request { path: String, operation: &'static str, message: String },
}

impl From<S3Error> for StoreError {
    fn from(e: S3Error) -> Self {
        match e {
            S3Error::InvalidUrl { url, reason } => {
                StoreError::UnsupportedLocation { location: url, hint: reason }
            }
            S3Error::InvalidConfig { location, reason } => {
                StoreError::UnsupportedLocation { location: DisplaySafe::new(location), hint: reason }
            }
            S3Error::NotFound { path } => StoreError::NotFound { path },
            // "bucket s3://b does not exist": the repository is missing, which
            // callers already handle as "not found".
            S3Error::NoSuchBucket { bucket } => {
                StoreError::NotFound { path: format!("bucket s3://{bucket}") }
            }
            S3Error::AlreadyExists { path } => StoreError::AlreadyExists { path },
            // `PermissionDenied` only carries a path; the hint rides along in it
            // so the one-line message still says what to check.
            S3Error::AccessDenied { ref path, .. } | S3Error::Credentials { ref path, .. } => {
                StoreError::PermissionDenied { path: format!("{path} ({})", e.hint()) }
            }
            S3Error::ShortRead { path, start, end, actual } => {
                StoreError::ShortRead { path, start, end, actual }
            }
            // Not a credentials problem: the message must say so, and when.
            S3Error::Retained { ref path, .. } => {
                StoreError::PermissionDenied { path: format!("{path} ({})", e.hint()) }
            }
            S3Error::ObjectLockUnavailable { ref bucket } => StoreError::UnsupportedLocation {
                location: DisplaySafe::new(format!("s3://{bucket}")),
                hint: e.hint(),
            },
            S3Error::Transient { path, operation, message } => {
                StoreError::Transient { path, message: format!("{operation}: {message}") }
            }
            S3Error::WrongRegion { ref bucket, .. } => {
                let path = format!("s3://{bucket}");
                StoreError::Io { path, source: std::io::Error::other(e) }
            }
            S3Error::Request { ref path, .. } => {
                let path = path.clone();
                StoreError::Io { path, source: std::io::Error::other(e) }
            }
        }
    }
}

impl S3Error {
    /// The part of the message after the object's name, for errors folded
    /// into a variant that only carries a path.
    fn hint(&self) -> String {
        match self {
            S3Error::AccessDenied { operation, code, .. } => format!(
                "S3 refused {operation} with {code}; check the AWS credentials (AWS_ACCESS_KEY_ID/\
                 AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the pod's IAM role) and that their policy \
                 allows it on this bucket and prefix"
            ),
            S3Error::Credentials { message, .. } => format!(
                "no usable AWS credentials: {message}; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY \
                 or AWS_PROFILE, or run with an IAM role"
            ),
            S3Error::Retained { mode, until, .. } => format!(
                "protected by S3 Object Lock ({mode} mode) until {until}; it can be deleted after that"
            ),
            S3Error::ObjectLockUnavailable { .. } => "the bucket does not have S3 Object Lock enabled, \
                 which object_lock=… needs; let `cairn init` create a new bucket (it enables Object Lock), \
                 or enable it on this one (aws s3api put-object-lock-configuration)"
                .to_string(),
            other => other.to_string(),
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, S3Error::Transient { .. })
    }
}

/// How a failed call is to be understood, from the HTTP status and S3 error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    NotFound,
    NoSuchBucket,
    PreconditionFailed,
    AccessDenied,
    WrongRegion,
    InvalidRange,
    Transient,
    Other,
}

/// Classifies an S3 error response. `code` is S3's error code when the
/// response had a body (HEAD responses have none).
pub(crate) fn classify_response(status: u16, code: Option<&str>) -> Class {
    match code {
        Some("NoSuchBucket") => return Class::NoSuchBucket,
        Some("NoSuchKey") => return Class::NotFound,
        Some(
            "SlowDown"
            | "Throttling"
            | "ThrottlingException"
            | "TooManyRequests"
            | "TooManyRequestsException"
            | "RequestLimitExceeded"
            | "RequestThrottled"
            | "InternalError"
            | "ServiceUnavailable"
            | "RequestTimeout"
            | "RequestTimeoutException"
            | "PriorRequestNotComplete"
            | "ConditionalRequestConflict"
            | "OperationAborted"
            | "ExpiredToken"
            | "TokenRefreshRequired"
            | "IDPCommunicationError"
            | "EC2ThrottledException",
        ) => return Class::Transient,
        // A signature made with a skewed clock is refused with 403; it is not a
        // credentials problem and the message from S3 says what is wrong.
        Some("RequestTimeTooSkewed") => return Class::Other,
        Some("PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException") => {
            return Class::WrongRegion;
        }
        Some("InvalidRange") => return Class::InvalidRange,
        Some("PreconditionFailed") => return Class::PreconditionFailed,
        _ => {}
    }
    match status {
        404 => Class::NotFound,
        412 => Class::PreconditionFailed,
        401 | 403 => Class::AccessDenied,
        301 => Class::WrongRegion,
        416 => Class::InvalidRange,
        // A bare 409 is a conditional write that raced another (S3's
        // ConditionalRequestConflict, matched by code above): the race is
        // decided by now, and another attempt tells who won. Other 409 codes
        // (BucketNotEmpty, InvalidBucketState, …) are permanent.
        409 if code.is_none() => Class::Transient,
        408 | 429 | 500 | 502 | 503 | 504 => Class::Transient,
        _ => Class::Other,
    }
}

/// What one failed SDK call amounted to.
pub(crate) struct Failure {
    pub class: Class,
    pub status: Option<u16>,
    pub code: Option<String>,
    /// The region S3 says the bucket is in, on a redirect.
    pub bucket_region: Option<String>,
    pub message: String,
    credentials: bool,
}

impl Failure {
    pub(crate) fn from_sdk<E>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let message = DisplayErrorContext(err).to_string();
        let mut failure = Failure {
            class: Class::Other,
            status: None,
            code: None,
            bucket_region: None,
            message,
            credentials: false,
        };
        match err {
            SdkError::ServiceError(service) => {
                let raw = service.raw();
                let status = raw.status().as_u16();
                let code = service.err().code().map(str::to_owned);
                failure.class = classify_response(status, code.as_deref());
                failure.bucket_region = raw.headers().get("x-amz-bucket-region").map(str::to_owned);
                failure.message = describe(status, code.as_deref(), service.err().message());
                failure.status = Some(status);
                failure.code = code;
            }
            // No answer in time, or a truncated/garbled one: both may go
            // better on another attempt.
            SdkError::TimeoutError(_) => failure.class = Class::Transient,
            SdkError::ResponseError(_) => failure.class = Class::Transient,
            SdkError::DispatchFailure(dispatch) => {
                if let Some(cred) = find_credentials_error(err) {
                    // Missing or misconfigured credentials will not appear by
                    // retrying; a provider that timed out or failed (STS,
                    // instance metadata) may recover.
                    failure.credentials = true;
                    failure.class = match cred {
                        CredentialsError::CredentialsNotLoaded(_)
                        | CredentialsError::InvalidConfiguration(_) => Class::AccessDenied,
                        _ => Class::Transient,
                    };
                } else if dispatch.is_user() {
                    failure.class = Class::Other;
                } else {
                    // I/O errors, connection resets, refused connections,
                    // timeouts and unclassified transport failures.
                    failure.class = Class::Transient;
                }
            }
            _ => failure.class = Class::Other,
        }
        failure
    }

    /// The [`S3Error`] this failure is, for `operation` on the object at `path`.
    pub(crate) fn into_error(self, operation: &'static str, path: &str, bucket: &str) -> S3Error {
        let path = path.to_string();
        match self.class {
            Class::NotFound => S3Error::NotFound { path },
            Class::NoSuchBucket => S3Error::NoSuchBucket { bucket: bucket.to_string() },
            Class::PreconditionFailed => S3Error::AlreadyExists { path },
            Class::AccessDenied if self.credentials => S3Error::Credentials { path, message: self.message },
            Class::AccessDenied => S3Error::AccessDenied {
                path,
                operation,
                code: self.code.unwrap_or_else(|| format!("HTTP {}", self.status.unwrap_or(403))),
            },
            Class::WrongRegion => {
                S3Error::WrongRegion { bucket: bucket.to_string(), region: self.bucket_region }
            }
            // Callers that can name the object's size turn this into a ShortRead.
            Class::InvalidRange => S3Error::Request { path, operation, message: self.message },
            Class::Transient => S3Error::Transient { path, operation, message: self.message },
            Class::Other => S3Error::Request { path, operation, message: self.message },
        }
    }
}

fn describe(status: u16, code: Option<&str>, message: Option<&str>) -> String {
    match (code, message) {
        (Some(c), Some(m)) if !m.is_empty() => format!("HTTP {status} {c}: {m}"),
        (Some(c), _) => format!("HTTP {status} {c}"),
        (None, _) => format!("HTTP {status}"),
    }
}

fn find_credentials_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a CredentialsError> {
    let mut next = err.source();
    while let Some(e) = next {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            return Some(c);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_classified() {
        use Class::*;
        for (status, code, want) in [
            (404, Some("NoSuchKey"), NotFound),
            (404, None, NotFound),
            (404, Some("NoSuchBucket"), NoSuchBucket),
            (412, Some("PreconditionFailed"), PreconditionFailed),
            (412, None, PreconditionFailed),
            (409, Some("ConditionalRequestConflict"), Transient),
            (409, None, Transient),
            (409, Some("BucketNotEmpty"), Other),
            (503, Some("SlowDown"), Transient),
            (429, None, Transient),
            (500, Some("InternalError"), Transient),
            (502, None, Transient),
            (504, None, Transient),
            (400, Some("RequestTimeout"), Transient),
            (403, Some("AccessDenied"), AccessDenied),
            (403, Some("SignatureDoesNotMatch"), AccessDenied),
            (403, Some("InvalidAccessKeyId"), AccessDenied),
            (403, None, AccessDenied),
            (403, Some("RequestTimeTooSkewed"), Other),
            (301, None, WrongRegion),
            (400, Some("AuthorizationHeaderMalformed"), WrongRegion),
            (416, Some("InvalidRange"), InvalidRange),
            (400, Some("BadDigest"), Other),
            (400, Some("InvalidArgument"), Other),
            (501, Some("NotImplemented"), Other),
        ] {
            assert_eq!(classify_response(status, code), want, "{status} {code:?}");
        }
    }

    /// A provider with no credentials to give: what the standard chain
    /// reports when nothing is configured.
    #[derive(Debug)]
    struct NoCredentials;

    impl aws_credential_types::provider::ProvideCredentials for NoCredentials {
        fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            aws_credential_types::provider::future::ProvideCredentials::ready(Err(
                CredentialsError::not_loaded("no providers in chain provided credentials"),
            ))
        }
    }

    #[tokio::test]
    async fn missing_credentials_are_permanent_and_say_so() {
        use aws_sdk_s3::config::{BehaviorVersion, Region, SharedCredentialsProvider};
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            // Nothing listens there, and nothing is sent: signing fails first.
            .endpoint_url("http://127.0.0.1:1")
            .credentials_provider(SharedCredentialsProvider::new(NoCredentials))
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .build();
        let client = aws_sdk_s3::Client::from_conf(config);
        let err = client.head_object().bucket("b").key("p/config").send().await.unwrap_err();
        let e = Failure::from_sdk(&err).into_error("HeadObject", "s3://b/p/config", "b");
        assert!(matches!(e, S3Error::Credentials { .. }), "{e:?}");
        let e = StoreError::from(e);
        assert!(matches!(e, StoreError::PermissionDenied { .. }) && !e.is_transient(), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("s3://b/p/config") && msg.contains("no usable AWS credentials"), "{msg}");
    }

    #[test]
    fn errors_map_onto_store_errors() {
        let e: StoreError = S3Error::Transient {
            path: "s3://b/p/config".into(),
            operation: "PutObject",
            message: "HTTP 503 SlowDown".into(),
        }
        .into();
        assert!(e.is_transient());
        assert!(e.to_string().contains("s3://b/p/config"), "{e}");

        let e: StoreError = S3Error::AccessDenied {
            path: "s3://b/p/config".into(),
            operation: "GetObject",
            code: "AccessDenied".into(),
        }
        .into();
        assert!(matches!(e, StoreError::PermissionDenied { .. }));
        assert!(!e.is_transient());
        let msg = e.to_string();
        assert!(msg.contains("s3://b/p/config") && msg.contains("AWS_ACCESS_KEY_ID"), "{msg}");

        let e: StoreError = S3Error::Retained {
            path: "s3://b/p/data/ab/abcd".into(),
            mode: "GOVERNANCE".into(),
            until: "2030-01-02T03:04:05Z".into(),
        }
        .into();
        assert!(matches!(e, StoreError::PermissionDenied { .. }) && !e.is_transient());
        assert_eq!(
            e.to_string(),
            "permission denied on s3://b/p/data/ab/abcd (protected by S3 Object Lock (GOVERNANCE mode) \
             until 2030-01-02T03:04:05Z; it can be deleted after that)"
        );

        let e: StoreError = S3Error::NoSuchBucket { bucket: "b".into() }.into();
        assert!(e.is_not_found());
        assert_eq!(e.to_string(), "bucket s3://b does not exist");

        let e: StoreError = S3Error::Request {
            path: "s3://b/p/keys/ab".into(),
            operation: "PutObject",
            message: "HTTP 400 BadDigest".into(),
        }
        .into();
        assert!(!e.is_transient());
        let msg = e.to_string();
        assert!(msg.contains("s3://b/p/keys/ab") && msg.contains("BadDigest"), "{msg}");
    }
}
