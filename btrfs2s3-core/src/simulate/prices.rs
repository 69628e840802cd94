//! Price tables: what storing, uploading and deleting early cost with a provider.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What one storage class costs.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassPrice {
    /// Per GB (10^9 bytes) stored for a month.
    pub storage_gb_month: f64,
    /// Per 1000 upload requests (`PutObject`, `UploadPart`...).
    #[serde(default)]
    pub put_per_1000: f64,
    /// The minimum storage duration: an object deleted earlier is billed as if it stayed
    /// that long.
    #[serde(default)]
    pub min_days: u32,
    /// Per GB read back (a restore).
    #[serde(default)]
    pub retrieval_gb: f64,
}

/// A provider's prices.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// The provider and region.
    pub name: String,
    /// When the prices were taken from the provider's price list.
    pub taken: String,
    /// Their currency.
    #[serde(default = "usd")]
    pub currency: String,
    /// The class of objects uploaded without one (the bucket's default).
    #[serde(default = "standard")]
    pub default_class: String,
    /// Per 1000 listing requests.
    #[serde(default)]
    pub list_per_1000: f64,
    /// The classes.
    pub classes: BTreeMap<String, ClassPrice>,
}

fn usd() -> String {
    "USD".to_owned()
}

fn standard() -> String {
    crate::storage::STANDARD.to_owned()
}

/// A price table that cannot be used.
#[derive(Debug)]
pub enum PriceError {
    /// Neither a built-in table nor a readable file.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a price table.
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
}

impl std::fmt::Display for PriceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PriceError::Read { path, source } => write!(
                f,
                "--prices {}: not aws, b2 or wasabi, and not a readable file: {source}",
                path.display()
            ),
            PriceError::Parse { path, message } => {
                write!(f, "--prices {}: {message}", path.display())
            }
        }
    }
}

impl std::error::Error for PriceError {}

/// AWS S3 in us-east-1, every storage class with its minimum duration and retrieval fee.
const AWS: &str = "
name: AWS S3 us-east-1
taken: 2025-06, aws.amazon.com/s3/pricing, first 50 TB tier
list_per_1000: 0.005
classes:
  STANDARD: {storage_gb_month: 0.023, put_per_1000: 0.005}
  INTELLIGENT_TIERING: {storage_gb_month: 0.023, put_per_1000: 0.005}
  STANDARD_IA: {storage_gb_month: 0.0125, put_per_1000: 0.01, min_days: 30, retrieval_gb: 0.01}
  ONEZONE_IA: {storage_gb_month: 0.01, put_per_1000: 0.01, min_days: 30, retrieval_gb: 0.01}
  GLACIER_IR: {storage_gb_month: 0.004, put_per_1000: 0.02, min_days: 90, retrieval_gb: 0.03}
  GLACIER: {storage_gb_month: 0.0036, put_per_1000: 0.03, min_days: 90, retrieval_gb: 0.01}
  DEEP_ARCHIVE: {storage_gb_month: 0.00099, put_per_1000: 0.05, min_days: 180, retrieval_gb: 0.02}
";

/// Backblaze B2: one class, uploads free, no minimum duration.
const B2: &str = "
name: Backblaze B2
taken: 2025-06, backblaze.com/cloud-storage/pricing
classes:
  STANDARD: {storage_gb_month: 0.006}
";

/// Wasabi: one class, no request fees, a 90-day minimum.
const WASABI: &str = "
name: Wasabi
taken: 2025-06, wasabi.com/pricing, pay as you go
classes:
  STANDARD: {storage_gb_month: 0.00699, min_days: 90}
";

impl Prices {
    /// `aws`, `b2`, `wasabi`, or a YAML file of the same shape.
    pub fn load(name: &str) -> Result<Prices, PriceError> {
        let builtin = match name {
            "aws" => Some(AWS),
            "b2" => Some(B2),
            "wasabi" => Some(WASABI),
            _ => None,
        };
        let path = Path::new(name);
        let text = match builtin {
            Some(text) => text.to_owned(),
            None => std::fs::read_to_string(path).map_err(|source| PriceError::Read {
                path: path.to_path_buf(),
                source,
            })?,
        };
        Prices::parse(&text).map_err(|message| PriceError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// A table from YAML.
    pub fn parse(text: &str) -> Result<Prices, String> {
        let prices: Prices = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        if !prices.classes.contains_key(&prices.default_class) {
            return Err(format!(
                "default_class {:?} is not one of the classes",
                prices.default_class
            ));
        }
        for (class, price) in &prices.classes {
            let figures = [
                price.storage_gb_month,
                price.put_per_1000,
                price.retrieval_gb,
            ];
            if figures.iter().any(|f| !f.is_finite() || *f < 0.0) {
                return Err(format!("{class}: prices must be numbers of 0 or more"));
            }
        }
        Ok(prices)
    }

    /// The price of `class`: the default class's for a class the table does not know.
    #[must_use]
    pub fn class(&self, class: &str) -> ClassPrice {
        self.classes
            .get(class)
            .or_else(|| self.classes.get(&self.default_class))
            .copied()
            .unwrap_or(ClassPrice {
                storage_gb_month: 0.0,
                put_per_1000: 0.0,
                min_days: 0,
                retrieval_gb: 0.0,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_tables_load() {
        for name in ["aws", "b2", "wasabi"] {
            let prices = Prices::load(name).unwrap();
            assert!(prices.class("STANDARD").storage_gb_month > 0.0, "{name}");
            assert!(!prices.taken.is_empty());
        }
        let aws = Prices::load("aws").unwrap();
        assert_eq!(aws.class("DEEP_ARCHIVE").min_days, 180);
        assert_eq!(
            Prices::load("wasabi").unwrap().class("STANDARD").min_days,
            90
        );
        // A class the table does not know costs what the default class does.
        assert_eq!(aws.class("REDUCED_REDUNDANCY"), aws.class("STANDARD"));
    }

    #[test]
    fn bad_tables_are_refused_with_a_reason() {
        for (text, fragment) in [
            (
                "name: x\ntaken: y\nclasses: {}\n",
                "default_class \"STANDARD\"",
            ),
            (
                "name: x\ntaken: y\nclasses:\n  STANDARD: {storage_gb_month: -1}\n",
                "0 or more",
            ),
            (
                "name: x\ntaken: y\nclasses:\n  STANDARD: {storage_gb_month: 1, colour: red}\n",
                "colour",
            ),
            (
                "name: x\nclasses:\n  STANDARD: {storage_gb_month: 1}\n",
                "taken",
            ),
        ] {
            let error = Prices::parse(text).unwrap_err();
            assert!(error.contains(fragment), "{text}: {error}");
        }
        let missing = Prices::load("/nonexistent/prices.yaml").unwrap_err();
        assert!(
            missing.to_string().contains("not aws, b2 or wasabi"),
            "{missing}"
        );
    }
}
