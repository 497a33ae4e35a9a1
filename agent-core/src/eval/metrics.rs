//! The deterministic metrics, with Ragas' names and arithmetic (Ragas 0.4.3,
//! `ragas.metrics.collections`): the same inputs give the same `f64`, which
//! `tests/python/ragas_parity.py` checks against Ragas itself.
//!
//! Ragas compares argument values as Python strings (`str(value)`), and tool calls in
//! `tool_call_f1` as Python values in sets (so `1 == 1.0 == True`, and a repeated call counts
//! once). [`py_str`] and [`py_eq`] reproduce those rules for JSON values. One difference remains:
//! an argument that is itself an object prints its keys sorted here, in insertion order in
//! Python, so two such objects with the same members in different orders match here and not
//! in Ragas. Two more are at the edges of JSON numbers: `-0` (an integer in Python, printed `0`;
//! `-0.0` here) and integers beyond 64 bits (exact in Python, a float here).

use serde_json::{Map, Value};

use super::dataset::ToolCall;

/// How argument values are compared by [`tool_call_accuracy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ArgComparison {
    /// Ragas' default (`ExactMatch` on `str(value)`): `"Lisbon"` and `"lisbon"` differ, as do
    /// `1` and `1.0`.
    #[default]
    Exact,
    /// Strings trimmed, with runs of white space as one space, compared case-insensitively;
    /// numbers compared by value (`1` equals `1.0`); anything else as in `Exact`.
    Normalised,
}

/// Ragas' `tool_call_accuracy`: 0 unless the call names line up (in order with
/// `strict_order`, as multisets otherwise, after sorting both lists by name and arguments); then
/// the mean, over the reference calls, of the share of each reference call's arguments the
/// paired call matches, times the share of reference calls that have a pair. Both lists empty
/// is 1; exactly one empty is 0.
pub fn tool_call_accuracy(
    predicted: &[ToolCall],
    reference: &[ToolCall],
    strict_order: bool,
    comparison: ArgComparison,
) -> f64 {
    if predicted.is_empty() && reference.is_empty() {
        return 1.0;
    }
    if predicted.is_empty() || reference.is_empty() {
        return 0.0;
    }
    let mut predicted: Vec<&ToolCall> = predicted.iter().collect();
    let mut reference: Vec<&ToolCall> = reference.iter().collect();
    if !strict_order {
        predicted.sort_by_cached_key(|c| sort_key(c));
        reference.sort_by_cached_key(|c| sort_key(c));
    }
    let aligned = if strict_order {
        predicted
            .iter()
            .map(|c| &c.name)
            .eq(reference.iter().map(|c| &c.name))
    } else {
        let mut p: Vec<&String> = predicted.iter().map(|c| &c.name).collect();
        let mut r: Vec<&String> = reference.iter().map(|c| &c.name).collect();
        p.sort();
        r.sort();
        p == r
    };
    // The same operations in the same order as Ragas, so the floats are equal bit for bit.
    let mut score = 0.0_f64;
    for (r, p) in reference.iter().zip(&predicted) {
        if r.name == p.name {
            score += arg_score(&p.args, &r.args, comparison);
        }
    }
    score /= reference.len() as f64;
    let compared = predicted.len().min(reference.len());
    if compared < reference.len() {
        score *= compared as f64 / reference.len() as f64;
    }
    if aligned { score } else { 0.0 }
}

/// The share of the reference arguments the predicted ones match.
fn arg_score(
    predicted: &Map<String, Value>,
    reference: &Map<String, Value>,
    comparison: ArgComparison,
) -> f64 {
    if reference.is_empty() && predicted.is_empty() {
        return 1.0;
    }
    if reference.is_empty() {
        return 0.0;
    }
    let mut score = 0.0;
    for (name, want) in reference {
        if let Some(got) = predicted.get(name)
            && args_equal(got, want, comparison)
        {
            score += 1.0;
        }
    }
    score / reference.len() as f64
}

pub(crate) fn args_equal(got: &Value, want: &Value, comparison: ArgComparison) -> bool {
    match comparison {
        ArgComparison::Exact => py_str(got) == py_str(want),
        ArgComparison::Normalised => match (got, want) {
            (Value::String(a), Value::String(b)) => normalise(a) == normalise(b),
            (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
            _ => py_str(got) == py_str(want),
        },
    }
}

fn normalise(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Ragas' sort key of a call: its name, then each argument name (sorted) and `str(value)`.
fn sort_key(call: &ToolCall) -> Vec<String> {
    let mut key = vec![call.name.clone()];
    let mut names: Vec<&String> = call.args.keys().collect();
    names.sort();
    for name in names {
        key.push(name.clone());
        key.push(call.args.get(name).map(py_str).unwrap_or_default());
    }
    key
}

/// Ragas' `tool_call_f1`: the F1 of the predicted calls against the reference calls as sets
/// (a call matches only with the same name and equal arguments), rounded to 4 decimals.
pub fn tool_call_f1(predicted: &[ToolCall], reference: &[ToolCall]) -> f64 {
    let actual = dedup(predicted);
    let expected = dedup(reference);
    let contains = |set: &[&ToolCall], c: &ToolCall| set.iter().any(|o| calls_equal(o, c));
    let tp = actual.iter().filter(|c| contains(&expected, c)).count();
    let fp = actual.len() - tp;
    let fn_ = expected.iter().filter(|c| !contains(&actual, c)).count();
    let ratio = |a: usize, b: usize| {
        if a + b > 0 {
            a as f64 / (a + b) as f64
        } else {
            0.0
        }
    };
    let precision = ratio(tp, fp);
    let recall = ratio(tp, fn_);
    let f1 = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    round4(f1)
}

fn dedup(calls: &[ToolCall]) -> Vec<&ToolCall> {
    let mut out: Vec<&ToolCall> = Vec::with_capacity(calls.len());
    for c in calls {
        if !out.iter().any(|o| calls_equal(o, c)) {
            out.push(c);
        }
    }
    out
}

fn calls_equal(a: &ToolCall, b: &ToolCall) -> bool {
    a.name == b.name
        && a.args.len() == b.args.len()
        && a.args
            .iter()
            .all(|(k, v)| b.args.get(k).is_some_and(|w| py_eq(v, w)))
}

/// Python's `round(x, 4)`: the nearest 4-decimal value, ties to even.
fn round4(x: f64) -> f64 {
    format!("{x:.4}").parse().unwrap_or(x)
}

/// Ragas' `exact_match`: 1 when the response is the reference, character for character.
pub fn exact_match(reference: &str, response: &str) -> f64 {
    f64::from(u8::from(reference == response))
}

/// Ragas' `string_present`: 1 when the reference occurs in the response (case-sensitive).
pub fn string_present(reference: &str, response: &str) -> f64 {
    f64::from(u8::from(response.contains(reference)))
}

/// Python's equality of the values JSON decodes to: numbers by value, `true == 1`,
/// `false == 0`, lists element-wise, objects by their members.
pub fn py_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| py_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| py_eq(v, w)))
        }
        (Value::Bool(_) | Value::Number(_), Value::Bool(_) | Value::Number(_)) => {
            match (as_int(a), as_int(b), as_float(a), as_float(b)) {
                (Some(x), Some(y), _, _) => x == y,
                // Python compares an int with a float exactly, not through a rounded float.
                (Some(i), None, _, Some(f)) | (None, Some(i), Some(f), _) => int_equals_float(i, f),
                (_, _, x, y) => x == y,
            }
        }
        _ => false,
    }
}

fn int_equals_float(i: i128, f: f64) -> bool {
    // Every integer a float holds exactly is below 2^1024; those within i128 compare as i128.
    f.fract() == 0.0 && f.abs() < 1.7e38 && (f as i128) == i
}

fn as_int(v: &Value) -> Option<i128> {
    match v {
        Value::Bool(b) => Some(i128::from(*b)),
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from)),
        _ => None,
    }
}

fn as_float(v: &Value) -> Option<f64> {
    match v {
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

/// Python's `str()` of the value JSON decodes to: `True`, `None`, `1.0`, `['a', 1]`,
/// `{'k': 'v'}`.
pub fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => {
            let mut out = String::new();
            py_repr(other, &mut out);
            out
        }
    }
}

fn py_repr(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => out.push_str(&i.to_string()),
            (None, Some(u)) => out.push_str(&u.to_string()),
            _ => out.push_str(&py_float(n.as_f64().unwrap_or(f64::NAN))),
        },
        Value::String(s) => py_str_repr(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_str_repr(k, out);
                out.push_str(": ");
                py_repr(item, out);
            }
            out.push('}');
        }
    }
}

/// Python's `repr()` of a string: single quotes unless it holds a `'` and no `"`.
fn py_str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !py_printable(c) => {
                let n = c as u32;
                if n < 0x100 {
                    out.push_str(&format!("\\x{n:02x}"));
                } else if n < 0x10000 {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `str.isprintable()` for one character, for the characters text arguments hold:
/// controls, separators other than the space (U+00A0, U+2028, U+3000 ...), and the common
/// format characters (soft hyphen, zero-width and direction marks, the BOM) are not printable.
/// Unassigned and private-use code points, which Python also escapes, are printed as they are.
fn py_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    !matches!(c as u32, 0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x180e | 0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x2064 | 0x2066..=0x206f | 0xfeff | 0xfff9..=0xfffb)
}

/// Python's `repr()` of a float: the shortest digits that round-trip, positional for decimal
/// exponents from -4 to 15 (with `.0` when whole), scientific (`1e+16`, `1.5e-05`) otherwise.
pub fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    // `{:e}` gives the shortest round-trip digits: "1.5e-5", "-2e16".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if negative { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let body = if exp >= 0 {
            let int_len = exp + 1;
            if n <= int_len {
                format!("{digits}{}.0", "0".repeat((int_len - n) as usize))
            } else {
                format!(
                    "{}.{}",
                    &digits[..int_len as usize],
                    &digits[int_len as usize..]
                )
            }
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        };
        format!("{sign}{body}")
    } else {
        let mantissa = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{esign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(name: &str, args: Value) -> ToolCall {
        ToolCall::new(name, args)
    }

    #[test]
    fn python_str_of_json_values() {
        for (v, s) in [
            (json!(true), "True"),
            (json!(null), "None"),
            (json!(2), "2"),
            (json!(2.0), "2.0"),
            (json!(0.1), "0.1"),
            (json!(1e16), "1e+16"),
            (json!(1e15), "1000000000000000.0"),
            (json!(0.0001), "0.0001"),
            (json!(0.00001), "1e-05"),
            (json!(-1.5e-7), "-1.5e-07"),
            (json!(123.456), "123.456"),
            (json!(["a", 1, "it's"]), "['a', 1, \"it's\"]"),
            (
                json!({"b": [true], "a": "x\ny"}),
                "{'a': 'x\\ny', 'b': [True]}",
            ),
            (json!("plain"), "plain"),
            (
                json!(["a\u{a0}b\u{200b}", "\u{1}"]),
                "['a\\xa0b\\u200b', '\\x01']",
            ),
        ] {
            assert_eq!(py_str(&v), s, "{v}");
        }
    }

    #[test]
    fn accuracy_follows_ragas() {
        let w = |c: &str| call("get_weather", json!({"city": c}));
        let f = call(
            "search_flights",
            json!({"from_city": "London", "to_city": "Lisbon"}),
        );
        let exact = ArgComparison::Exact;
        assert_eq!(tool_call_accuracy(&[], &[], true, exact), 1.0);
        assert_eq!(tool_call_accuracy(&[w("Paris")], &[], true, exact), 0.0);
        assert_eq!(
            tool_call_accuracy(
                &[w("Paris"), f.clone()],
                &[w("Paris"), f.clone()],
                true,
                exact
            ),
            1.0
        );
        // Out of order: 0 in order, 1 in any order.
        assert_eq!(
            tool_call_accuracy(
                &[f.clone(), w("Paris")],
                &[w("Paris"), f.clone()],
                true,
                exact
            ),
            0.0
        );
        assert_eq!(
            tool_call_accuracy(
                &[f.clone(), w("Paris")],
                &[w("Paris"), f.clone()],
                false,
                exact
            ),
            1.0
        );
        // One of two arguments right.
        let half = call(
            "search_flights",
            json!({"from_city": "London", "to_city": "Porto"}),
        );
        assert_eq!(
            tool_call_accuracy(&[half], std::slice::from_ref(&f), true, exact),
            0.5
        );
        // A missing call: names misaligned, so 0; an extra call likewise.
        assert_eq!(
            tool_call_accuracy(&[w("Paris")], &[w("Paris"), f.clone()], true, exact),
            0.0
        );
        // Case differs: exact says no, normalised says yes.
        assert_eq!(
            tool_call_accuracy(&[w(" lisbon")], &[w("Lisbon")], true, exact),
            0.0
        );
        assert_eq!(
            tool_call_accuracy(
                &[w(" lisbon")],
                &[w("Lisbon")],
                true,
                ArgComparison::Normalised
            ),
            1.0
        );
        let n = |v: Value| call("f", json!({"n": v}));
        assert_eq!(
            tool_call_accuracy(&[n(json!(1))], &[n(json!(1.0))], true, exact),
            0.0
        );
        assert_eq!(
            tool_call_accuracy(
                &[n(json!(1))],
                &[n(json!(1.0))],
                true,
                ArgComparison::Normalised
            ),
            1.0
        );
    }

    #[test]
    fn f1_is_over_sets_with_python_equality() {
        let w = |c: &str| call("get_weather", json!({"city": c}));
        assert_eq!(
            tool_call_f1(&[w("Paris"), w("Rome")], &[w("Paris")]),
            0.6667
        );
        assert_eq!(tool_call_f1(&[w("Paris"), w("Paris")], &[w("Paris")]), 1.0);
        assert_eq!(tool_call_f1(&[], &[]), 0.0);
        let n = |v: Value| call("f", json!({"n": v}));
        assert_eq!(tool_call_f1(&[n(json!(true))], &[n(json!(1.0))]), 1.0);
        assert_eq!(tool_call_f1(&[n(json!("1"))], &[n(json!(1))]), 0.0);
        // Exact int-float equality, as Python's: 2^53 + 1 is not the float 2^53.
        assert!(py_eq(&json!(3), &json!(3.0)));
        assert!(!py_eq(
            &json!(9_007_199_254_740_993_u64),
            &json!(9_007_199_254_740_992.0)
        ));
        assert!(!py_eq(&json!(3), &json!(3.5)));
    }

    #[test]
    fn strings() {
        assert_eq!(exact_match("Paris", "Paris"), 1.0);
        assert_eq!(exact_match("Paris", "paris"), 0.0);
        assert_eq!(string_present("Paris", "It is Paris."), 1.0);
        assert_eq!(string_present("paris", "It is Paris."), 0.0);
    }
}
