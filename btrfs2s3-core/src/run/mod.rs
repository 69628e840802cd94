//! Every command as one call that returns a report: [`update()`] (and its world-generic
//! [`cycle`]), and the read side — [`list`], [`prepare_restore`] and [`restore`], [`verify`].
//! The binary parses arguments, renders reports through the `Ui` traits and maps them to exit
//! codes; it never touches btrfs or S3 itself.

mod archive;
mod check;
mod extract;
mod ls;
mod plain;
mod read;
mod status;
mod update;

pub use archive::{ArchiveOptions, ArchiveStatus, ArchiveUi, RestoreTier};
pub use btrfs2s3_stream::receive::Notes;
pub use check::{CheckLine, check};
pub use extract::{ExtractError, ExtractOptions, ExtractReport, extract};
pub use ls::{LsEntry, LsError, LsOptions, LsReport, ls};
pub use read::{
    BackupLabel, Plain, ReadError, ReceiveFailure, RestoreOptions, RestorePlan, RestoreReport,
    StreamParser, Target, TargetError, Transfer, TransferUi, Verdict, VerifyOptions, VerifyReport,
    VerifyUi, list, make_restorable, prepare_restore, restore, verify,
};
pub use status::{NewestBackup, PairStatus, StatusOptions, StatusReport, status};
pub use update::{
    Choice, Interruption, Mode, NewestSnapshot, Ui, Undone, UpdateEnd, UpdateError, UpdateOptions,
    UpdateReport, cycle, needs_snapshot, update, update_cached,
};
