//! Reading a schedule spec's arguments: a JSON object with "type" and the class's own argument
//! names. `null` counts as absent (Python's `None`), so the default applies.

use super::util::py_repr;
use crate::error::{Error, Result};
use serde_json::{Map, Value};

/// One scalar for every group, or a list with one value per group.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum PerGroup {
    /// A number, broadcast to every group.
    One(f64),
    /// One number per group.
    Many(Vec<f64>),
}

impl PerGroup {
    /// PyTorch's `_format_param`: the list must have one value per group.
    pub(crate) fn format(&self, name: &str, groups: usize) -> Result<Vec<f64>> {
        match self {
            PerGroup::One(x) => Ok(vec![*x; groups]),
            PerGroup::Many(v) if v.len() == groups => Ok(v.clone()),
            PerGroup::Many(v) => Err(Error::InvalidHyperparameter(format!(
                "{name} must have the same length as optimizer.param_groups. {name} has {} values, param_groups has {groups}.",
                v.len()
            ))),
        }
    }

    /// The list's length, if it is a list.
    pub(crate) fn len(&self) -> Option<usize> {
        match self {
            PerGroup::One(_) => None,
            PerGroup::Many(v) => Some(v.len()),
        }
    }
}

/// A spec's arguments, with the spec's type name for error messages.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Args<'a> {
    /// The "type" string.
    pub(crate) ty: &'a str,
    map: &'a Map<String, Value>,
}

impl<'a> Args<'a> {
    /// Checks that the spec is an object with a "type" string.
    pub(crate) fn new(spec: &'a Value) -> Result<Self> {
        let map = spec.as_object().ok_or_else(|| {
            Error::Input(format!("a schedule spec must be a JSON object, got {spec}"))
        })?;
        let ty = match map.get("type") {
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                return Err(Error::Input(format!(
                    "schedule spec: \"type\" must be a string, got {other}"
                )));
            }
            None => {
                return Err(Error::Input(
                    "schedule spec: missing \"type\" (the schedule's class name)".into(),
                ));
            }
        };
        Ok(Self { ty, map })
    }

    /// Fails on any key other than "type" and `known`.
    pub(crate) fn allow(&self, known: &[&str]) -> Result<()> {
        for key in self.map.keys() {
            if key != "type" && !known.contains(&key.as_str()) {
                return Err(Error::Input(format!(
                    "{}: unknown argument {key} (it takes {})",
                    self.ty,
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The raw value, `None` when absent or null.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// Whether the key is given (and not null).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn missing(&self, key: &str) -> Error {
        Error::Input(format!("{}: missing argument {key}", self.ty))
    }

    fn wrong(&self, key: &str, what: &str, v: &Value) -> Error {
        Error::Input(format!(
            "{}: argument {key} must be {what}, got {v}",
            self.ty
        ))
    }

    /// A required value.
    pub(crate) fn req(&self, key: &str) -> Result<&'a Value> {
        self.get(key).ok_or_else(|| self.missing(key))
    }

    fn num(&self, key: &str, v: &Value) -> Result<f64> {
        v.as_f64().ok_or_else(|| self.wrong(key, "a number", v))
    }

    fn int(&self, key: &str, v: &Value) -> Result<i64> {
        if let Some(i) = v.as_i64() {
            return Ok(i);
        }
        match v.as_f64() {
            Some(x) if x.fract() == 0.0 && x.abs() <= super::util::MAX_COUNT as f64 => Ok(x as i64),
            _ => Err(self.wrong(key, "an integer", v)),
        }
    }

    /// A required number.
    pub(crate) fn f64(&self, key: &str) -> Result<f64> {
        self.num(key, self.req(key)?)
    }

    /// A number with a default.
    pub(crate) fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        self.get(key).map_or(Ok(default), |v| self.num(key, v))
    }

    /// An optional number.
    pub(crate) fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|v| self.num(key, v)).transpose()
    }

    /// A required integer (a float with an integral value counts).
    pub(crate) fn i64(&self, key: &str) -> Result<i64> {
        self.int(key, self.req(key)?)
    }

    /// An integer with a default.
    pub(crate) fn i64_or(&self, key: &str, default: i64) -> Result<i64> {
        self.get(key).map_or(Ok(default), |v| self.int(key, v))
    }

    /// A list of integers.
    pub(crate) fn i64_list(&self, key: &str) -> Result<Vec<i64>> {
        let v = self.req(key)?;
        let items = v
            .as_array()
            .ok_or_else(|| self.wrong(key, "a list of integers", v))?;
        items.iter().map(|x| self.int(key, x)).collect()
    }

    /// A list of numbers.
    pub(crate) fn f64_list(&self, key: &str) -> Result<Vec<f64>> {
        let v = self.req(key)?;
        let items = v
            .as_array()
            .ok_or_else(|| self.wrong(key, "a list of numbers", v))?;
        items.iter().map(|x| self.num(key, x)).collect()
    }

    /// A boolean with a default.
    pub(crate) fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.wrong(key, "true or false", v)),
        }
    }

    /// A string with a default.
    pub(crate) fn str_or(&self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::String(s)) => Ok(s),
            Some(v) => Err(self.wrong(key, "a string", v)),
        }
    }

    /// A number or a list of numbers (one per parameter group); `None` when absent.
    pub(crate) fn per_group(&self, key: &str) -> Result<Option<PerGroup>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        if let Some(items) = v.as_array() {
            if items.is_empty() {
                return Err(Error::Input(format!(
                    "{}: argument {key} must not be an empty list",
                    self.ty
                )));
            }
            let xs = items
                .iter()
                .map(|x| self.num(key, x))
                .collect::<Result<Vec<_>>>()?;
            Ok(Some(PerGroup::Many(xs)))
        } else {
            Ok(Some(PerGroup::One(self.num(key, v)?)))
        }
    }

    /// The per-group learning rates of "lr": one number for each of `hint` groups (at least
    /// one), or a list of `hint` numbers (any length when `hint` is 0); `None` when absent.
    pub(crate) fn group_lrs(&self, hint: usize) -> Result<Option<Vec<f64>>> {
        Ok(match self.per_group("lr")? {
            None => None,
            Some(PerGroup::One(x)) => Some(vec![x; hint.max(1)]),
            Some(PerGroup::Many(v)) => {
                if hint != 0 && v.len() != hint {
                    return Err(Error::Input(format!(
                        "{}: lr has {} values but {hint} parameter groups were asked for",
                        self.ty,
                        v.len()
                    )));
                }
                Some(v)
            }
        })
    }

    /// The value as Python would print it (for PyTorch's and Keras' messages).
    pub(crate) fn repr(&self, key: &str) -> String {
        self.get(key).map_or_else(|| "None".into(), py_repr)
    }
}
