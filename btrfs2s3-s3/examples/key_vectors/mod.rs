//! The object-key vector format recorded from the Python tool (SPEC section 9) and a checker.
//! Shared by the tests and the `check-key-vectors` example.

use btrfs2s3_s3::BackupMeta;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Deserialize;
use uuid::Uuid;

#[derive(Debug, Deserialize)]
pub struct Vectors {
    pub encode: Vec<EncodeCase>,
    pub decode: Vec<DecodeCase>,
}

#[derive(Debug, Deserialize)]
pub struct EncodeCase {
    pub timezone: String,
    pub uuid: Uuid,
    pub parent_uuid: Uuid,
    pub send_parent_uuid: Option<Uuid>,
    pub ctransid: i64,
    pub ctime: i64,
    pub key_suffix: String,
}

#[derive(Debug, Deserialize)]
pub struct DecodeCase {
    pub key: String,
    pub ok: bool,
    pub error: Option<String>,
    pub uuid: Option<Uuid>,
    pub parent_uuid: Option<Uuid>,
    pub send_parent_uuid: Option<Uuid>,
    pub ctransid: Option<i64>,
    pub ctime: Option<i64>,
}

/// Checks one encode case; `Err` describes the difference.
pub fn check_encode(case: &EncodeCase) -> Result<(), String> {
    let tz = TimeZone::get(&case.timezone).map_err(|e| e.to_string())?;
    let meta = BackupMeta {
        uuid: case.uuid,
        parent_uuid: case.parent_uuid,
        // The Python tool writes the zero uuid for "no send parent".
        send_parent_uuid: case.send_parent_uuid.filter(|uuid| !uuid.is_nil()),
        ctransid: case.ctransid,
        ctime: Timestamp::from_second(case.ctime).map_err(|e| e.to_string())?,
    };
    let actual = meta.key_suffix(&tz);
    if actual == case.key_suffix {
        Ok(())
    } else {
        Err(format!(
            "encode in {}: expected {:?}, got {actual:?}",
            case.timezone, case.key_suffix
        ))
    }
}

/// Checks one decode case; `Err` describes the difference.
pub fn check_decode(case: &DecodeCase) -> Result<(), String> {
    let actual = BackupMeta::parse_key(&case.key);
    match (case.ok, actual) {
        (true, Ok(meta)) => {
            let expected = (
                case.uuid,
                case.parent_uuid,
                case.send_parent_uuid.filter(|uuid| !uuid.is_nil()),
                case.ctransid,
                case.ctime,
            );
            let actual = (
                Some(meta.uuid),
                Some(meta.parent_uuid),
                meta.send_parent_uuid,
                Some(meta.ctransid),
                Some(meta.ctime.as_second()),
            );
            if expected == actual {
                Ok(())
            } else {
                Err(format!(
                    "decode {:?}: expected {expected:?}, got {actual:?}",
                    case.key
                ))
            }
        }
        (false, Err(error)) if case.error.as_deref() == Some(&error.to_string()) => Ok(()),
        (_, actual) => Err(format!(
            "decode {:?}: expected {}, got {actual:?}",
            case.key,
            case.error.as_deref().unwrap_or("success")
        )),
    }
}

/// Checks every case of a vector file: (passed, failure descriptions).
pub fn check_all(vectors: &Vectors) -> (usize, Vec<String>) {
    let results = vectors
        .encode
        .iter()
        .map(check_encode)
        .chain(vectors.decode.iter().map(check_decode));
    let mut passed = 0;
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(()) => passed += 1,
            Err(description) => failures.push(description),
        }
    }
    (passed, failures)
}
