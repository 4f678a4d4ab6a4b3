//! The function library's replies as typed values (see the reply shapes in
//! `lua/sessions.lua`), parsed the way redis-rs parses its own reply types:
//! by implementing [`FromRedisValue`]. Blobs are moved out of the reply, not
//! copied.

use deadpool_redis::redis::{FromRedisValue, ParsingError, Value};

use crate::store::core::{Raw, RawRetire, RawSave};

/// The reply of `load`: nil (no live session) or `{version, blob, last seen}`.
pub(crate) struct Loaded(pub(crate) Option<Raw>);

/// One row of `list`: `{session key, version, blob, last seen}`.
pub(crate) struct Listed(pub(crate) String, pub(crate) Raw);

fn shape(what: &str) -> ParsingError {
    ParsingError::from(format!("unexpected reply from the session {what} function"))
}

/// `version, blob, last seen`, the tail of a load, list or conflict reply.
fn raw(items: &mut impl Iterator<Item = Value>, what: &str) -> Result<Raw, ParsingError> {
    let mut next = || items.next().ok_or_else(|| shape(what));
    let version = u64::from_redis_value(next()?)?;
    let blob = match next()? {
        Value::BulkString(blob) => blob,
        _ => return Err(shape(what)),
    };
    let last_seen = u64::from_redis_value(next()?)?;
    Ok(Raw {
        version,
        blob,
        last_seen,
        wrote: false,
        tracked: false,
    })
}

/// The items of an array reply, and its first one as a tag.
fn tagged(v: Value, what: &str) -> Result<(String, std::vec::IntoIter<Value>), ParsingError> {
    let Value::Array(items) = v else {
        return Err(shape(what));
    };
    let mut items = items.into_iter();
    let tag = String::from_redis_value(items.next().ok_or_else(|| shape(what))?)?;
    Ok((tag, items))
}

impl FromRedisValue for Loaded {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        match v {
            Value::Nil => Ok(Loaded(None)),
            Value::Array(items) => {
                let mut items = items.into_iter();
                let mut raw = raw(&mut items, "load")?;
                // A fourth item: the load wrote the key (moved the deadline).
                raw.wrote = items.next().is_some();
                Ok(Loaded(Some(raw)))
            }
            _ => Err(shape("load")),
        }
    }
}

impl FromRedisValue for Listed {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let (key, mut items) = tagged(v, "list")?;
        Ok(Listed(key, raw(&mut items, "list")?))
    }
}

/// `{'saved', v}`, `{'conflict', v, blob, last seen}`, `{'gone'}` or
/// `{'taken'}`.
impl FromRedisValue for RawSave {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let (tag, mut items) = tagged(v, "save")?;
        match tag.as_str() {
            "saved" => {
                let version = u64::from_redis_value(items.next().ok_or_else(|| shape("save"))?)?;
                // The keys of the other sessions the save ended, if any.
                let ended = items
                    .map(String::from_redis_value)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(RawSave::Saved(version, ended, false))
            }
            "conflict" => Ok(RawSave::Conflict(raw(&mut items, "save")?)),
            "gone" => Ok(RawSave::Gone),
            "taken" => Ok(RawSave::Taken),
            _ => Err(shape("save")),
        }
    }
}

/// `{'deleted'}`, `{'conflict', v, blob, last seen}` or `{'gone'}`.
impl FromRedisValue for RawRetire {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let (tag, mut items) = tagged(v, "retire")?;
        match tag.as_str() {
            "deleted" => Ok(RawRetire::Deleted),
            "conflict" => Ok(RawRetire::Conflict(raw(&mut items, "retire")?)),
            "gone" => Ok(RawRetire::Gone),
            _ => Err(shape("retire")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(b: &[u8]) -> Value {
        Value::BulkString(b.to_vec())
    }

    #[test]
    fn replies_parse_into_their_types() {
        let loaded = Loaded::from_redis_value(Value::Array(vec![
            Value::Int(3),
            bulk(b"blob"),
            Value::Int(17),
        ]))
        .unwrap();
        let raw = loaded.0.unwrap();
        assert_eq!(
            (raw.version, raw.blob.as_slice(), raw.last_seen),
            (3, &b"blob"[..], 17)
        );
        assert!(Loaded::from_redis_value(Value::Nil).unwrap().0.is_none());
        assert!(matches!(
            RawSave::from_redis_value(Value::Array(vec![bulk(b"saved"), Value::Int(4)])),
            Ok(RawSave::Saved(4, _, false))
        ));
        assert!(matches!(
            RawSave::from_redis_value(Value::Array(vec![
                bulk(b"conflict"),
                Value::Int(5),
                bulk(b"b"),
                Value::Int(1)
            ])),
            Ok(RawSave::Conflict(Raw { version: 5, .. }))
        ));
        assert!(matches!(
            RawRetire::from_redis_value(Value::Array(vec![bulk(b"deleted")])),
            Ok(RawRetire::Deleted)
        ));
        let row = Listed::from_redis_value(Value::Array(vec![
            bulk(b"p{t}:s:x"),
            Value::Int(2),
            bulk(b"b"),
            Value::Int(9),
        ]))
        .unwrap();
        assert_eq!((row.0.as_str(), row.1.version), ("p{t}:s:x", 2));
    }

    #[test]
    fn other_shapes_are_refused() {
        for bad in [
            Value::Int(1),
            Value::Array(vec![]),
            Value::Array(vec![bulk(b"saved")]),
            Value::Array(vec![bulk(b"what"), Value::Int(1)]),
            Value::Array(vec![
                bulk(b"conflict"),
                Value::Int(1),
                Value::Int(2),
                Value::Int(3),
            ]),
        ] {
            assert!(RawSave::from_redis_value(bad.clone()).is_err(), "{bad:?}");
            assert!(RawRetire::from_redis_value(bad).is_err());
        }
        assert!(Loaded::from_redis_value(Value::Array(vec![Value::Int(1)])).is_err());
    }
}
