//! The snapshot file: what `sovctl cluster snapshot save` writes and `sov-scheduler restore`
//! reads. It is the `ClusterService.Snapshot` stream laid end to end:
//!
//! ```text
//! b"SOVSNAP1" | header length: u32 big-endian | ClusterSnapshotHeader (protobuf) | data
//! ```
//!
//! The data is the scheduler's Raft snapshot, exactly as openraft installs it. Owns the framing
//! and the integrity checks that need nothing but the bytes (magic, lengths, the data's
//! SHA-256); what the data means is the scheduler's business.

use sha2::{Digest, Sha256};

use crate::v1::ClusterSnapshotHeader;
use prost::Message;

/// First bytes of every snapshot file; the digit is the format version.
pub const MAGIC: &[u8; 8] = b"SOVSNAP1";
/// Headers are a few hundred bytes; a larger length field means a corrupt or foreign file.
pub const HEADER_BYTES_MAX: usize = 64 * 1024;
/// The largest snapshot data sov writes or reads: the same cap schedulers put on a snapshot
/// received from their leader.
pub const DATA_BYTES_MAX: u64 = 1 << 30;

/// Why bytes are not a usable snapshot file. Every message says what to do next.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("not a sov snapshot file (it does not start with SOVSNAP1)")]
    NotASnapshot,
    #[error("the file is truncated: {0}; save the snapshot again")]
    Truncated(String),
    #[error("the header is corrupt ({0}); save the snapshot again")]
    BadHeader(String),
    #[error(
        "the data is {actual} bytes but the header says {expected}; the file is damaged, save the snapshot again"
    )]
    WrongLength { expected: u64, actual: u64 },
    #[error(
        "the data's SHA-256 is {actual} but the header says {expected}; the file is damaged, save the snapshot again"
    )]
    WrongChecksum { expected: String, actual: String },
    #[error("the snapshot is {0} bytes; the limit is {DATA_BYTES_MAX}")]
    TooLarge(u64),
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The bytes that precede the data in a file: magic, header length, header.
pub fn encode_prefix(header: &ClusterSnapshotHeader) -> Vec<u8> {
    let body = header.encode_to_vec();
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + body.len());
    out.extend_from_slice(MAGIC);
    // Headers are bounded far below u32::MAX (HEADER_BYTES_MAX).
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Checks that the data matches what its header promises: length and SHA-256.
pub fn check_data(header: &ClusterSnapshotHeader, data: &[u8]) -> Result<(), SnapshotFileError> {
    if header.data_bytes > DATA_BYTES_MAX {
        return Err(SnapshotFileError::TooLarge(header.data_bytes));
    }
    if data.len() as u64 != header.data_bytes {
        return Err(SnapshotFileError::WrongLength {
            expected: header.data_bytes,
            actual: data.len() as u64,
        });
    }
    let actual = sha256_hex(data);
    if actual != header.data_sha256 {
        return Err(SnapshotFileError::WrongChecksum {
            expected: header.data_sha256.clone(),
            actual,
        });
    }
    Ok(())
}

/// Splits a whole file into its header and data, checking the framing and the data's checksum.
pub fn parse(file: &[u8]) -> Result<(ClusterSnapshotHeader, &[u8]), SnapshotFileError> {
    let rest = file
        .strip_prefix(MAGIC.as_slice())
        .ok_or(SnapshotFileError::NotASnapshot)?;
    let (len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| SnapshotFileError::Truncated("no header length".into()))?;
    let len = u32::from_be_bytes(*len) as usize;
    if len > HEADER_BYTES_MAX {
        return Err(SnapshotFileError::BadHeader(format!(
            "its length field says {len} bytes; the limit is {HEADER_BYTES_MAX}"
        )));
    }
    if rest.len() < len {
        return Err(SnapshotFileError::Truncated(format!(
            "the header needs {len} bytes, {} are left",
            rest.len()
        )));
    }
    let (header, data) = rest.split_at(len);
    let header = ClusterSnapshotHeader::decode(header)
        .map_err(|e| SnapshotFileError::BadHeader(e.to_string()))?;
    check_data(&header, data)?;
    Ok((header, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_for(data: &[u8]) -> ClusterSnapshotHeader {
        ClusterSnapshotHeader {
            cluster_id: "sov-1".into(),
            node_id: 2,
            last_log_index: 42,
            data_bytes: data.len() as u64,
            data_sha256: sha256_hex(data),
            ..Default::default()
        }
    }

    #[test]
    fn a_file_round_trips() {
        let data = b"{\"state\":{}}";
        let header = header_for(data);
        let mut file = encode_prefix(&header);
        file.extend_from_slice(data);
        let (back, back_data) = parse(&file).unwrap();
        assert_eq!(back, header);
        assert_eq!(back_data, data);
    }

    #[test]
    fn damage_is_named() {
        let data = b"some snapshot bytes";
        let mut file = encode_prefix(&header_for(data));
        file.extend_from_slice(data);

        assert_eq!(
            parse(b"PK\x03\x04zip"),
            Err(SnapshotFileError::NotASnapshot)
        );
        assert!(matches!(
            parse(&file[..10]),
            Err(SnapshotFileError::Truncated(_))
        ));
        assert!(matches!(
            parse(&file[..file.len() - 1]),
            Err(SnapshotFileError::WrongLength { .. })
        ));
        let mut flipped = file.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let err = parse(&flipped).unwrap_err();
        assert!(matches!(err, SnapshotFileError::WrongChecksum { .. }));
        assert!(err.to_string().contains("save the snapshot again"), "{err}");
        let mut huge = file.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(parse(&huge), Err(SnapshotFileError::BadHeader(_))));
    }
}
