//! Python's arithmetic where it differs from Rust's (floor division, modulo, `**`, division by
//! zero), Python-style value formatting for error messages, and exact f64 serialization.

use crate::error::{Error, Result};
use serde_json::Value;

pub(crate) use crate::optim::py_float;

/// Largest magnitude accepted for step counters and epochs: every integer up to it is exact in
/// f64, and adding small offsets to it cannot overflow an i64.
pub(crate) const MAX_COUNT: i64 = 1 << 53;

/// Python's `a / b` on floats: `ZeroDivisionError` when `b` is zero.
pub(crate) fn div(a: f64, b: f64) -> Result<f64> {
    if b == 0.0 {
        Err(Error::Input("float division by zero".into()))
    } else {
        Ok(a / b)
    }
}

/// Python's `a % b` on ints (the result takes the sign of `b`).
pub(crate) fn imod(a: i64, b: i64) -> Result<i64> {
    let r = a
        .checked_rem(b)
        .ok_or_else(|| Error::Input("integer modulo by zero".into()))?;
    Ok(if r != 0 && ((r < 0) != (b < 0)) {
        r + b
    } else {
        r
    })
}

/// Python's `a // b` on ints (rounds toward negative infinity).
pub(crate) fn ifloordiv(a: i64, b: i64) -> Result<i64> {
    let q = a
        .checked_div(b)
        .ok_or_else(|| Error::Input("integer division or modulo by zero".into()))?;
    Ok(if a % b != 0 && ((a < 0) != (b < 0)) {
        q - 1
    } else {
        q
    })
}

/// Python's `a % b` on floats (the result takes the sign of `b`).
pub(crate) fn fmod(a: f64, b: f64) -> Result<f64> {
    if b == 0.0 {
        return Err(Error::Input("float modulo".into()));
    }
    let mut r = a % b;
    if r != 0.0 {
        if (b < 0.0) != (r < 0.0) {
            r += b;
        }
    } else {
        r = 0.0f64.copysign(b);
    }
    Ok(r)
}

/// Python's `x ** y` on floats: C's `pow`, with Python's errors for a zero base and a negative
/// exponent, for a negative base and a non-integer exponent (Python returns a complex number),
/// and for overflow.
pub(crate) fn pow(x: f64, y: f64) -> Result<f64> {
    if x == 0.0 && y < 0.0 {
        return Err(Error::Input(
            "0.0 cannot be raised to a negative power".into(),
        ));
    }
    if x < 0.0 && x.is_finite() && y.is_finite() && y.fract() != 0.0 {
        return Err(Error::Input(format!(
            "{} ** {} is a complex number",
            py_float(x),
            py_float(y)
        )));
    }
    let r = x.powf(y);
    if r.is_infinite() && x.is_finite() && y.is_finite() {
        return Err(Error::Input("(34, 'Numerical result out of range')".into()));
    }
    Ok(r)
}

/// Python's `bisect.bisect_right(a, x)`, the same binary search, so that it gives Python's
/// answer on unsorted lists too.
pub(crate) fn bisect_right(a: &[i64], x: i64) -> usize {
    let (mut lo, mut hi) = (0, a.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if x < a[mid] {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// A JSON value written the way Python's `repr` writes the value `json.loads` gives.
pub(crate) fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::Number(n) => {
            if n.is_f64() {
                n.as_f64().map_or_else(|| n.to_string(), py_float)
            } else {
                n.to_string()
            }
        }
        Value::String(s) => format!("'{s}'"),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(py_repr).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("'{k}': {}", py_repr(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

/// Serde for f64 that survives a JSON round trip bit for bit, infinities and NaN included: the
/// value is written as a string of Rust's shortest round-trip form (`"0.1"`, `"1e-8"`, `"inf"`).
/// Reading also accepts a plain JSON number.
pub(crate) mod exact {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Number(f64),
    }

    fn parse<E: serde::de::Error>(r: Repr) -> Result<f64, E> {
        match r {
            Repr::Number(x) => Ok(x),
            Repr::Text(s) => s
                .parse()
                .map_err(|_| E::custom(format!("not a number: {s:?}"))),
        }
    }

    pub(crate) fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{x:?}"))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        parse(Repr::deserialize(d)?)
    }

    /// The same for `Vec<f64>`.
    pub(crate) mod vec {
        use super::{Repr, parse};
        use serde::ser::SerializeSeq;
        use serde::{Deserialize, Deserializer, Serializer};

        pub(crate) fn serialize<S: Serializer>(x: &[f64], s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(x.len()))?;
            for v in x {
                seq.serialize_element(&format!("{v:?}"))?;
            }
            seq.end()
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
            Vec::<Repr>::deserialize(d)?
                .into_iter()
                .map(parse)
                .collect()
        }
    }

    /// The same for `Option<f64>` (`null` for `None`).
    pub(crate) mod opt {
        use super::{Repr, parse};
        use serde::{Deserialize, Deserializer, Serializer};

        pub(crate) fn serialize<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            match x {
                Some(v) => s.serialize_some(&format!("{v:?}")),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<f64>, D::Error> {
            Option::<Repr>::deserialize(d)?.map(parse).transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_arithmetic() {
        assert_eq!(imod(-7, 3).unwrap(), 2);
        assert_eq!(imod(7, -3).unwrap(), -2);
        assert_eq!(ifloordiv(-7, 3).unwrap(), -3);
        assert_eq!(ifloordiv(7, 3).unwrap(), 2);
        assert_eq!(fmod(-1.5, 1.0).unwrap(), 0.5);
        assert!(imod(1, 0).is_err());
        assert!(div(1.0, 0.0).is_err());
        assert!(pow(0.0, -1.0).is_err());
        assert!(pow(-2.0, 0.5).is_err());
        assert_eq!(pow(-2.0, 3.0).unwrap(), -8.0);
        assert_eq!(bisect_right(&[1, 2, 2, 5], 2), 3);
        assert_eq!(bisect_right(&[5, 3], 1), 0);
        assert_eq!(bisect_right(&[5, 3], 4), 2);
    }
}
