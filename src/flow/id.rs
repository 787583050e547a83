//! [`FlowId`]: a flow's id, 16 bytes, printed as 32 lowercase hex characters.

use std::fmt;
use std::str::FromStr;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes in a flow id.
const FLOW_ID_LEN: usize = 16;

/// A flow's id: the first 16 bytes of its genesis change hash ([`FlowId::of_genesis`]). `Copy`:
/// the bytes and their printed form (lowercase hex) are kept inline, so passing one around or
/// keying a map by one allocates nothing and printing it encodes nothing. It prints, parses,
/// serializes and is stored (SQLite `TEXT`) as that hex; on the wire it is the 16 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId {
    // First, so the derived order is the bytes' order, which is also the hex text's order.
    bytes: [u8; FLOW_ID_LEN],
    text: [u8; 2 * FLOW_ID_LEN],
}

impl FlowId {
    /// The id of the flow whose genesis change has this hash.
    pub fn of_genesis(hash: &automerge::ChangeHash) -> FlowId {
        let mut bytes = [0u8; FLOW_ID_LEN];
        bytes.copy_from_slice(&hash.0[..FLOW_ID_LEN]);
        FlowId::from_array(bytes)
    }

    pub fn from_array(bytes: [u8; FLOW_ID_LEN]) -> FlowId {
        let mut text = [0u8; 2 * FLOW_ID_LEN];
        data_encoding::HEXLOWER.encode_mut(&bytes, &mut text);
        FlowId { bytes, text }
    }

    /// The flow id of 16 bytes (as a wire message carries it); `None` for any other length.
    pub fn from_bytes(bytes: &[u8]) -> Option<FlowId> {
        Some(FlowId::from_array(bytes.try_into().ok()?))
    }

    pub fn as_bytes(&self) -> &[u8; FLOW_ID_LEN] {
        &self.bytes
    }

    /// The printed id: 32 lowercase hex characters.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text).expect("hex is ASCII")
    }
}

impl FromStr for FlowId {
    type Err = String;

    /// Parses a printed flow id: exactly 32 lowercase hex characters.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; FLOW_ID_LEN];
        // `HEXLOWER` refuses upper case; the length check keeps `decode_mut` in bounds.
        if s.len() != 2 * FLOW_ID_LEN
            || data_encoding::HEXLOWER
                .decode_mut(s.as_bytes(), &mut bytes)
                .is_err()
        {
            return Err(format!(
                "'{}' is not a flow id (32 lowercase hex characters)",
                crate::text::clip(s, 64)
            ));
        }
        Ok(FlowId::from_array(bytes))
    }
}

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FlowId({})", self.as_str())
    }
}

impl Serialize for FlowId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FlowId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Stored as the store has always held flow ids: the hex text.
impl ToSql for FlowId {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(&self.text)))
    }
}

impl FromSql for FlowId {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|e: String| FromSqlError::Other(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_id_prints_parses_and_serializes_as_lowercase_hex() {
        let hash = automerge::ChangeHash(std::array::from_fn(|i| (i as u8).wrapping_mul(17)));
        let id = FlowId::of_genesis(&hash);
        let text = "00112233445566778899aabbccddeeff";
        assert_eq!(id.as_str(), text);
        assert_eq!(id.to_string(), text);
        assert_eq!(format!("{id:?}"), format!("FlowId({text})"));
        assert_eq!(text.parse::<FlowId>(), Ok(id));
        assert_eq!(id.as_bytes(), &hash.0[..16]);
        assert_eq!(FlowId::from_bytes(&hash.0[..16]), Some(id));
        assert_eq!(FlowId::from_bytes(&hash.0[..15]), None);
        assert_eq!(FlowId::from_bytes(&[]), None);
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<FlowId>(&format!("\"{text}\"")).unwrap(), id);
        for bad in ["", "0011", "00112233445566778899AABBCCDDEEFF", &format!("{text}00"), "zz112233445566778899aabbccddeeff"] {
            assert!(bad.parse::<FlowId>().is_err(), "{bad}");
            assert!(serde_json::from_str::<FlowId>(&format!("\"{bad}\"")).is_err(), "{bad}");
        }
    }

    #[test]
    fn flow_ids_sort_as_their_text() {
        let a: FlowId = "0f000000000000000000000000000000".parse().unwrap();
        let b: FlowId = "a0000000000000000000000000000000".parse().unwrap();
        assert!(a < b && a.as_str() < b.as_str());
    }

    #[test]
    fn a_flow_id_is_stored_as_its_text() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        let id: FlowId = "00112233445566778899aabbccddeeff".parse().unwrap();
        let (text, back): (String, FlowId) = db
            .query_row("SELECT ?1, ?1", [id], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!((text.as_str(), back), (id.as_str(), id));
        let bad: rusqlite::Result<FlowId> = db.query_row("SELECT 'nope'", [], |r| r.get(0));
        assert!(bad.is_err());
    }
}
